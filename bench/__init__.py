"""Benchmarks against peer tools, run in the same process tree (make bench)."""
