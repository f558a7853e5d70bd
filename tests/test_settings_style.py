"""One settings style (issue #26 item 4): the environment is read by settings models only.

Outside the settings modules and the entry points, no package file touches ``os.environ`` or
``os.getenv``; the few writes that configure a library or a child process through its environment are
listed here, each with its reason. A new read fails this test naming its file:line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("sagemaker_deepar", "serverless", "mlops", "ingestion", "ecs", "awsinfra", "evaluation", "devtools")
PACKAGES += ("mlflow_local", "local_test", "container")
# The modules whose job is reading the environment into settings models (a module that merely defines a
# model, such as server_config.py, is checked like any other).
SETTINGS_FILES = {
    "sagemaker_deepar/settings.py",
    "serverless/handlers/settings.py",
    "mlops/settings.py",
    "awsinfra/settings.py",
    "ingestion/config.py",
    "evaluation/settings.py",
}
# Entry points hand the environment to settings: the container's scripts, `python -m` modules (__main__.py)
# and any function named main (what `train`, `serve` and each command run first).
ENTRY_FUNCTIONS = {"main"}
# (file, enclosing function or "<module>") -> why it may touch the environment.
ALLOWED = {
    ("sagemaker_deepar/serving/gunicorn.py", "on_starting"): "gunicorn's hook: the master's entry point",
    ("sagemaker_deepar/mlflow_pyfunc.py", "load_context"): "mlflow's entry into the pyfunc model",
    ("sagemaker_deepar/cli.py", "run_command"): "runs every command's main; its debug variable is the caller's",
    (
        "sagemaker_deepar/training/tracking.py",
        "_configure_client",
    ): "writes: mlflow's client reads its timeouts from there",
    ("sagemaker_deepar/training/distributed.py", "connect"): "writes: Lightning's and gloo's rendezvous variables",
    ("awsinfra/clients.py", "offline_credentials"): "writes: throwaway credentials botocore and the SDKs read",
    ("awsinfra/clients.py", "moto_server"): "writes: AWS_ENDPOINT_URL for every client while moto runs",
    ("mlops/aws.py", "<module>"): "writes: SAGEMAKER_SUPPRESS_V2_WARNING for the SageMaker SDK",
    ("ingestion/glue_job.py", "spark_session"): "writes: PYSPARK_PYTHON for Spark's Python workers",
    ("serverless/emulate.py", "function_environment"): "writes: a function's Lambda environment while it is emulated",
    ("serverless/package.py", "cold_start"): "a child interpreter's PATH",
    ("evaluation/common.py", "<module>"): "writes: SAGEMAKER_SUPPRESS_V2_WARNING for the SageMaker SDK",
    ("evaluation/common.py", "local_environment"): "writes: the SDK's config override",
}


def _is_environment(node: ast.AST) -> bool:
    """``os.environ`` or ``os.getenv``."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def environment_uses(path: Path) -> list[tuple[int, str]]:
    """(line, enclosing function or "<module>") of every ``os.environ`` / ``os.getenv`` in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
            elif _is_environment(child):
                found.append((child.lineno, function))
            else:
                visit(child, function)

    visit(tree, "<module>")
    return found


def package_files() -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    return files + [p for p in sorted((REPO / "container").iterdir()) if p.is_file() and p.suffix == ""]


def test_the_environment_is_read_only_by_settings_modules_and_entry_points():
    problems, used = [], set()
    for path in package_files():
        relative = str(path.relative_to(REPO))
        if relative in SETTINGS_FILES or path.name == "__main__.py" or relative.startswith("container/"):
            continue
        try:
            uses = environment_uses(path)
        except SyntaxError:  # container scripts in another language (none today)
            continue
        for line, function in uses:
            if function in ENTRY_FUNCTIONS:
                continue
            if (relative, function) in ALLOWED:
                used.add((relative, function))
                continue
            problems.append(f"{relative}:{line} ({function}): os.environ outside a settings model")
    assert not problems, "read it through a settings model (sagemaker_deepar/settings.py):\n" + "\n".join(problems)
    assert not set(ALLOWED) - used, f"allowed but no longer used (remove them): {sorted(set(ALLOWED) - used)}"


def test_the_check_finds_a_read_and_its_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nX = os.getenv('A')\n\ndef f():\n    return os.environ['B']\n")
    assert environment_uses(module) == [(2, "<module>"), (5, "f")]
