"""notebooks/byoc_walkthrough.ipynb: executed end to end (image, local train/serve, push, SDK local mode)
by notebooks/run.py in .venv-sdk, and the committed copy checked to carry the outputs of its current code.

The execution needs Docker with the image, docker-compose and docker-registry: it skips without them
on a laptop and fails under CI=true. It runs in tmp_path and must leave no container behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from notebooks.run import DIGEST_KEY, NOTEBOOK, code_digest

from .conftest import IMAGE, REPO, SDK_PYTHON


def cell_text(cell: dict) -> str:
    """Everything a code cell printed (streams and text results)."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append("".join(output["text"]))
        elif "text/plain" in output.get("data", {}):
            parts.append("".join(output["data"]["text/plain"]))
    return "".join(parts)


def code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def assert_complete_run(notebook: dict) -> None:
    """Every code cell ran without error, in order, and the walkthrough's results are in its outputs."""
    cells = code_cells(notebook)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, errors
    text = "\n".join(cell_text(c) for c in cells)
    assert "mode       offline (moto, local registry, SDK local mode)" in text
    assert re.search(r"train: 10 series of 480 points; test: 10 series of 504 points", text)
    assert re.search(r"train job: exit 0 in \d+ s", text)
    assert "#quality_metric: host=algo-1, test RMSE <loss>=" in text
    assert re.search(r"forecast: 24 steps, keys \['mean', 'quantiles'\], quantiles \['0.1', '0.5', '0.9'\]", text)
    assert re.search(r"bad request -> 400 \{'error': '.*target\[1\]", text)
    assert len([o for c in cells for o in c["outputs"] if "image/png" in o.get("data", {})]) == 1
    assert "created ECR repository" in text and re.search(r"scanOnPush True", text)
    assert re.search(r"pushed 127\.0\.0\.1:\d+/[\w.-]+:[\w.-]+ in \d+ s", text)
    assert re.search(r"registry 127\.0\.0\.1:\d+ holds [\w.-]+: \['[\w.-]+'\]", text)
    assert re.search(r"model\.tar\.gz: \[.*'deepar-metadata\.json'.*'predictor'", text)
    assert re.search(r"endpoint \S+: 24 steps", text)
    assert re.search(r"endpoint \S+ deleted", text)
    assert "containers left behind: none" in text


def test_committed_notebook_carries_the_outputs_of_its_code():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["metadata"].get(DIGEST_KEY) == code_digest(notebook), (
        "the committed outputs come from other code: refresh them with .venv-sdk/bin/python -m notebooks.run --write"
    )
    assert_complete_run(notebook)


def helpers_running(folder: Path) -> str:
    """Command lines of processes that name ``folder`` (servers, registry, moto the notebook started)."""
    return subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout


def helpers_gone(folder: Path, grace_s: float = 15.0) -> bool:
    """True once no such process is left; a stopped helper may take a moment to exit on a busy machine."""
    deadline = time.monotonic() + grace_s
    while helpers_running(folder):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def containers_mounting(folder: Path) -> list[str]:
    ids = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout.split()
    found = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout if ids else ""
    return [
        c["Id"][:12]
        for c in json.loads(found or "[]")
        if any(m.get("Source", "").startswith(str(folder)) for m in c.get("Mounts") or [])
    ]


def require(ok: bool, what: str) -> None:
    if not ok:
        pytest.skip(f"not available: {what}")


def test_walkthrough_executes_end_to_end(tmp_path: Path):
    docker = (
        shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )
    require(docker, "a Docker engine")
    require(
        subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0, f"the image {IMAGE}"
    )
    require(shutil.which("docker-compose") is not None, "docker-compose (SDK local mode)")
    require(shutil.which("docker-registry") is not None, "docker-registry (Debian package)")
    require(
        SDK_PYTHON.exists() and subprocess.run([SDK_PYTHON, "-c", "import nbclient, ipykernel"]).returncode == 0,
        ".venv-sdk with nbclient and ipykernel (scripts/bootstrap.sh)",
    )
    tracked_before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    executed, workdir = tmp_path / "executed.ipynb", tmp_path / "work"

    try:
        result = subprocess.run(
            [SDK_PYTHON, "-m", "notebooks.run", "--output", executed, "--workdir", workdir],
            cwd=REPO,
            env={**os.environ, "DEEPAR_IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=2400,
        )
        leftovers = containers_mounting(workdir)
    finally:  # whatever happened, take away what the run left (only containers of this test's folder)
        if stray := containers_mounting(workdir):
            subprocess.run(["docker", "rm", "-f", *stray], capture_output=True)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    assert_complete_run(json.loads(executed.read_text()))
    assert not leftovers, f"containers left behind: {leftovers}"
    assert helpers_gone(workdir), "a helper still runs: " + helpers_running(workdir)
    tracked_after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert tracked_after == tracked_before, f"the run wrote into the checkout: {tracked_before!r} -> {tracked_after!r}"


# ---------------------------------------------------------------- notebooks/mlflow_walkthrough.ipynb

VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def assert_complete_mlflow_run(notebook: dict) -> None:
    """Every cell ran, in order, without error; the run, registry, forecast and deploy are in its outputs."""
    cells = code_cells(notebook)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, errors
    text = "\n".join(cell_text(c) for c in cells)
    assert "train job: exit 0" in text and "'complete': True" in text
    assert "'registered_model': {'name': 'deepar-pollution', 'version': '1'}" in text
    assert re.search(r"train_loss by epoch: \[\(0, [\d.]+\), \(1, [\d.]+\), \(2, [\d.]+\), \(3, [\d.]+\)\]", text)
    assert "registered: [('deepar-pollution', '1', True)]" in text and "alias champion -> 1" in text
    assert (
        "forecast: 72 rows (3 items x 24 steps), columns ['item_id', 'timestamp', 'mean', '0.1', '0.5', '0.9']" in text
    )
    assert "same seed, same forecast: True" in text
    assert "MlflowException: item 'sensor0-pollutant0', row 2: timestamp" in text
    assert "endpoint deepar-pollution: InService" in text and "model image: True" in text
    assert "after delete: []" in text and "tracking server stopped: True" in text


def test_committed_mlflow_notebook_carries_the_outputs_of_its_code():
    from notebooks.run import MLFLOW_NOTEBOOK

    notebook = json.loads(MLFLOW_NOTEBOOK.read_text())
    assert notebook["metadata"].get(DIGEST_KEY) == code_digest(notebook), (
        "the committed outputs come from other code: refresh them with .venv-sdk/bin/python -m notebooks.run "
        "--notebook notebooks/mlflow_walkthrough.ipynb --kernel-python .venv/bin/python --write"
    )
    assert_complete_mlflow_run(notebook)


def test_mlflow_walkthrough_executes_end_to_end(tmp_path: Path):
    """In a .venv kernel (mlflow, the training code), driven by nbclient from .venv-sdk; no Docker needed."""
    require(
        SDK_PYTHON.exists() and subprocess.run([SDK_PYTHON, "-c", "import nbclient"]).returncode == 0,
        ".venv-sdk with nbclient (scripts/bootstrap.sh)",
    )
    require(
        VENV_PYTHON.exists() and subprocess.run([VENV_PYTHON, "-c", "import ipykernel, mlflow"]).returncode == 0,
        ".venv with ipykernel and mlflow",
    )
    executed, workdir = tmp_path / "executed.ipynb", tmp_path / "work"
    result = subprocess.run(
        [SDK_PYTHON, "-m", "notebooks.run", "--notebook", "notebooks/mlflow_walkthrough.ipynb",
         "--kernel-python", VENV_PYTHON, "--output", executed, "--workdir", workdir],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    assert_complete_mlflow_run(json.loads(executed.read_text()))
    assert helpers_gone(workdir), "a helper still runs: " + helpers_running(workdir)
