"""Helpers for the project's own tests and benchmarks (both may import them; nothing in the
product does): serving processes and containers (:mod:`devtools.serving`)."""
