"""Benchmarks: one module per benchmark; results go to bench/results/."""
