"""The performance suite: `python -m benchmarks [--quick] [--json FILE]` (see README)."""
import engine  # noqa: F401  (first: one XLA host device per core, see engine/__init__.py)
