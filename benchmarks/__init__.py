"""Benchmark harness comparing redsync with its predecessor and other Redis locks.

Run ``python -m benchmarks`` (see benchmarks/README.md).
"""
