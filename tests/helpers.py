"""The tests' helpers: they live in devtools.serving, which the benchmarks (bench/) import too."""

from __future__ import annotations

from devtools.serving import children, free_port, gunicorn_workers, serve_container_args

__all__ = ["children", "free_port", "gunicorn_workers", "serve_container_args"]
