"""Benchmarks that print ratios against baselines run side by side (see bench/README.md)."""
