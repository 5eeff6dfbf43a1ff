"""Signed case exports: the formats, their Ed25519 signature, and their offline verification.

Pure code (no I/O but the key files), shared by the service that writes exports and by
``casetrail verify``, so both compute exactly the same digest and chain.
"""
