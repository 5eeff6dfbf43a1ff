"""Case routes (the plan API) register themselves on ``api`` here."""
