"""Benchmarks: one script per figure group; `make bench` runs them all (see run.py)."""
