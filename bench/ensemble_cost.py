"""``python -m bench.ensemble_cost``: what forecaster=ensemble costs beside forecaster=deepar (issue #22 goals).

On the bundled sample data (25 hourly air-quality series, train and test channels) with local_test's
hyperparameters (fewer epochs with ``--epochs``): both training jobs through ``container/train`` in
interleaved rounds (goal: the ensemble job at most 1.5x the DeepAR-only job's wall time), the ensemble
job's leaderboard, then one-series requests to ``container/serve`` (1 worker) on each model (goal: an
ensemble request answered in 150 ms median on an idle worker).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._paired import Paired, machine
from ._results import Result

REPO = Path(__file__).resolve().parent.parent
HYPERPARAMETERS = json.loads((REPO / "local_test/test_dir/input/config/hyperparameters.json").read_text())


def prepare(root: Path, forecaster: str, epochs: int) -> None:
    from sagemaker_deepar.contract import split_train_test, write_jsonl
    from sagemaker_deepar.training.sample_data import generate

    records = generate()
    train, test = split_train_test(records, int(HYPERPARAMETERS["prediction_length"]))
    write_jsonl(train, root / "input/data/train/train.json")
    write_jsonl(test, root / "input/data/test/test.json")
    config = root / "input/config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({**HYPERPARAMETERS, "epochs": str(epochs), "forecaster": forecaster})
    )


def train(root: Path) -> float:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "PYTHONPATH": str(REPO)}
    env.pop("TRAINING_JOB_NAME", None)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "container/train")], env=env, capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"training failed: {result.stderr[-3000:]}")
    return seconds


def request_latency(root: Path, requests_count: int) -> float:
    """Median seconds of one-series requests to container/serve on one worker, after a warm-up."""
    import requests

    from devtools.serving import free_port

    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(root),
        "PYTHONPATH": str(REPO),
        "DEEPAR_BIND_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
    }
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen([sys.executable, str(REPO / "container/serve")], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        test_file = sorted((root / "input/data/test").iterdir())[0]
        record = json.loads(test_file.read_text().splitlines()[0])
        instance = {key: record[key] for key in ("start", "target", "cat") if key in record}  # the model's features
        body = json.dumps({"instances": [instance]})
        url = f"http://127.0.0.1:{port}/invocations"
        headers = {"Content-Type": "application/json"}
        requests.post(url, data=body, headers=headers, timeout=60).raise_for_status()
        seconds = []
        for _ in range(requests_count):
            started = time.perf_counter()
            requests.post(url, data=body, headers=headers, timeout=60).raise_for_status()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=int(HYPERPARAMETERS["epochs"]))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the Result here (bench.report)")
    args = parser.parse_args(argv)
    result = Result("ensemble_cost", argv if argv is not None else sys.argv[1:])
    print(machine())
    print(f"sample data: 25 hourly series, local_test's hyperparameters, epochs {args.epochs}")
    wall = Paired("ensemble / deepar training job wall time", target="<= 1.5x")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in ("deepar", "ensemble")}
        for name, root in roots.items():
            prepare(root, name, args.epochs)
        for _ in range(args.rounds):
            base = train(roots["deepar"])
            ours = train(roots["ensemble"])
            wall.add(ours=ours, base=base, say=f"ensemble {ours:.1f} s, deepar {base:.1f} s")
            result.row(ensemble_s=round(ours, 2), deepar_s=round(base, 2))
        print(wall.headline())
        result.headline(wall)
        board: list[dict[str, Any]] = json.loads((roots["ensemble"] / "output/data/leaderboard.json").read_text())
        for row in board:
            print(json.dumps(row))
        latency = {name: request_latency(root, args.requests) for name, root in roots.items()}
        for name, seconds in latency.items():
            line = f"one-series {name} request: median {seconds * 1000:.0f} ms over {args.requests} (1 worker)"
            print(line)
            result.figure(f"one-series {name} request median", round(seconds * 1000, 1), "ms", line,
                          "<= 150 ms" if name == "ensemble" else "")  # fmt: skip
        print(machine())
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
