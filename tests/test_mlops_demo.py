"""`python -m mlops demo --local` end to end through its entrypoint in the SDK's environment: the
whole loop on the sample data in containers of the image with moto for AWS (started by the demo
itself), its timeline's steps and outcomes, version 2 registered, and nothing of the image left
running. Docker: the fast tier skips it; under CI=true a missing engine fails (``sdk_ready``)."""

from __future__ import annotations

import json
import os
import subprocess

from .conftest import IMAGE, REPO, SDK_PYTHON

EXPECTED = [
    ("build", "registered"),
    ("register", "v1"),
    ("approve", "Approved"),
    ("staging", "InService"),
    ("prod", "InService"),
    ("monitor", "healthy"),
    ("drift", "injected"),
    ("monitor", "retrain-started"),
    ("retrain", "registered"),
    ("register", "v2"),
]


def test_demo_runs_the_loop_from_build_to_a_retrained_version_2(sdk_ready, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the demo starts its own moto
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run(
        [str(SDK_PYTHON), "-m", "mlops", "demo", "--local", "--image", IMAGE, "--workdir", str(tmp_path), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout[-4000:], run.stderr[-4000:])
    timeline = json.loads(run.stdout.strip().splitlines()[-1])
    assert [(step["step"], step["status"]) for step in timeline] == EXPECTED
    assert "deepar-demo-models/2" in timeline[-1]["metric"]
    healthy, breach = (wql_and_bar(step["metric"]) for step in timeline if step["step"] == "monitor")
    assert healthy[0] <= healthy[1] and breach[0] > breach[1]  # the drift is what crossed the bar
    table = run.stdout.strip().splitlines()
    assert table[-len(EXPECTED) - 2].split() == ["step", "status", "seconds", "metric"]
    # no endpoint container outlives the demo (by name: other jobs may run the image meanwhile); the
    # steps' containers are checked by sdk_ready, which fails nothing but removes what is left
    leftover = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"ancestor={IMAGE}", "--filter", "name=deepar-demo-", "--format", "{{.Names}}"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert leftover == []
    assert json.loads((tmp_path / "endpoints" / "endpoints.json").read_text()) == {}
    # the retrain started from the production model's weights (its Train step's model channel), v1 from scratch
    v1, v2 = (json.loads(path.read_text()) for path in sorted(tmp_path.glob("runs/*/models/deepar-metadata.json")))
    assert v1.get("warm_start") is None and v2["warm_start"]["source"] == "model.tar.gz"


def wql_and_bar(metric: str) -> tuple[float, float]:
    """``wQL 0.1002 / bar 0.135165[, ...]`` -> (0.1002, 0.135165)."""
    wql, bar = metric.split(",")[0].removeprefix("wQL ").split(" / bar ")
    return float(wql), float(bar)
