"""Benchmarks of hexlabs-tasks against the alternatives a user would pick; see docs/performance.md."""
