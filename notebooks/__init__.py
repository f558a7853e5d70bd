"""Walkthrough notebooks, executed in CI by tests/test_notebooks.py (runner: notebooks/run.py)."""
