"""Test-only helpers shared by several suites: store implementations and operations only
tests use (`stores.py`), and small in-memory fakes of the core's interfaces."""
