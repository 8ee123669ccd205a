"""Benchmarks that compare murmurate with the ways people serve models today, in one process.

Every benchmark runs its baselines in the same run and prints ratios: this machine is noisy, so only
numbers measured side by side are compared.
"""
