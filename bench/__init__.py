"""The twisted-chat benchmark: see docs/benchmark.md."""
