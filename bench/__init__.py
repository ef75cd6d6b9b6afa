"""Throughput and latency benchmarks (not tests): `.venv/bin/python -m bench.run`."""
