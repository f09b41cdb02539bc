"""Stores: where captured rows, their scopes and versions are kept (SQLite by default)."""
