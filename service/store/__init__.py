"""Persistence: database tables and queries (db.py), blob store (blobs.py)."""
