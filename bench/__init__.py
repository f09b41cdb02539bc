"""Benchmarks: each prints its ratio against a reference measured in the same run."""
