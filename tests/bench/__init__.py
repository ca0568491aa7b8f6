"""Benchmarks (`make bench`): real processes, JSON results on stdout. Not collected by pytest."""
