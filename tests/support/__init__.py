"""Helpers shared by tests and benchmarks (importable as `support` from tests, where pytest puts
tests/ on sys.path next to conftest.py)."""
