"""Custos benchmarks: `python -m bench` runs them all, `python -m bench.<name>` one (README.md).

Each benchmark measures a baseline in the same run and prints a table with the ratio:
machines are noisy, so absolute numbers from different runs are not compared.
"""
