"""Benchmarks: speed, memory and accuracy sweeps that write reports under docs/ (never run in CI)."""
