"""Every benchmark still imports: bench/ scripts run in no other test, so a renamed helper they import
(``bench.multi_model`` once imported a function ``bench.serve_throughput`` no longer had) would
otherwise only show when someone next measures."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parent.parent / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))  # _name: shared helpers


def test_the_benchmarks_are_found():
    assert {"serve_throughput", "multi_model", "data_memory", "train_speed"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_and_has_a_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"


def test_no_benchmark_imports_the_tests():
    """bench/ and tests/ share helpers through devtools/ (and awsinfra/): nothing imports tests/."""
    import ast

    offenders = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert offenders == []
