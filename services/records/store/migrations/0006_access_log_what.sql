-- Which read it was, with its parameters ("diff from_version=2 to_version=5", "export
-- format=pdf"): the action alone ("audit") did not say which versions a reader saw, and the
-- request log leaves query strings out. Entries written before this column have none.
ALTER TABLE records.access_log ADD COLUMN what text;
