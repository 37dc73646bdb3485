"""The performance suite: `python -m benchmarks [--quick] [--json FILE]` (see README)."""
