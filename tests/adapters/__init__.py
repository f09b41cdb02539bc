"""Adapter tests: real npm client libraries, run headless in Node against a real sidecar."""
