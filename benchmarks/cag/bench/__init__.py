"""Benchmarks of the platform (`cag bench ...`); results are written as JSON under benchmarks/results/."""
