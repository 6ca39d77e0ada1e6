"""Benchmarks run by ``make bench``: speed ratios measured in one process on the same inputs."""
