"""The architecture contract (issue #26 item 5): pyproject's [tool.importlinter] layers and forbidden imports
hold, and the core has no import circle (function-local imports included: grimp reads them all)."""

from __future__ import annotations

import copy
from pathlib import Path

import grimp
import pytest
from importlinter.application.use_cases import _register_built_in_contract_types, create_report, read_user_options
from importlinter.configuration import configure

ROOT = Path(__file__).resolve().parents[1]


def _report(user_options):
    _register_built_in_contract_types()
    return create_report(user_options, cache_dir=None)


def _broken(report) -> list[str]:
    return [contract.name for contract, check in report.get_contracts_and_checks() if not check.kept]


@pytest.fixture(scope="module")
def user_options():
    configure()  # what the lint-imports command does first: its readers, graph builder, file system
    return read_user_options(str(ROOT / "pyproject.toml"))


@pytest.mark.unit
def test_every_import_contract_is_kept(user_options):
    report = _report(user_options)
    assert report.contains_failures is False, _broken(report)
    assert len(list(report.get_contracts_and_checks())) >= 5


@pytest.mark.unit
def test_the_layers_contract_can_fail(user_options):
    """The same graph under a wrong statement (serving below runtimes) is reported broken."""
    wrong = copy.deepcopy(user_options)
    layers = next(c for c in wrong.contracts_options if c["type"] == "layers")
    order = list(layers["layers"])
    i, j = order.index("serving"), order.index("runtimes")
    order[i], order[j] = order[j], order[i]
    layers["layers"] = order
    wrong.contracts_options = [layers]
    assert _broken(_report(wrong)) == [layers["name"]]


def cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module) & modules:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


@pytest.mark.unit
def test_the_core_has_no_import_circle():
    graph = grimp.build_graph("sagemaker_deepar", cache_dir=None)
    # A package's __init__ re-exporting its submodules is not a circle of the code: leave packages out.
    modules = {m for m in graph.modules if not graph.find_children(m)}
    assert cycles(graph, modules) == []
    assert len(modules) > 40


@pytest.mark.unit
def test_the_cycle_finder_finds_a_circle_hidden_in_a_function():
    graph = grimp.ImportGraph()
    for module in ("pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")  # what a function-local import adds
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert cycles(graph, {"pkg.a", "pkg.b", "pkg.c"}) == [["pkg.a", "pkg.b"]]
