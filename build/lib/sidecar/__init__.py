"""Sidecar: offline-first sync beside an existing PostgreSQL database."""

__version__ = "0.1.0"
