"""Benchmarks: scripts that print a table and compare against the baseline in the same run (README, bench/RESULTS.md)."""
