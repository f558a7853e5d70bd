"""Image size, cold start and layer costs: `docker run IMAGE serve` until /ping answers 200, with the
model on a read-only /opt/ml mount (median of --runs), then the image's layers from `docker history`
with what each one holds (the Dockerfile's COPY lines and the image's /opt/venv/layers.json).

    .venv/bin/python -m bench.image_cold_start [--image sagemaker-deepar:latest] [--runs 5]
        [--baseline OTHER_IMAGE]     # measured in the same run, runs interleaved; prints ratios
        [--json PATH]                # also write the result for bench.report (bench/_results.py)

Trains a small model in the image first (the same container path SageMaker uses).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from bench._paired import Paired, machine
from bench._results import JSON_HELP, Result
from devtools.serving import free_port, serve_container_args

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
PING_DEADLINE_S = 120


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=600).stdout


def image_size(image: str) -> int:
    return int(docker("image", "inspect", image, "--format", "{{.Size}}"))


def train_model(image: str, root: Path) -> None:
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(
        json.dumps(
            {
                "time_freq": "H",
                "prediction_length": "24",
                "context_length": "72",
                "epochs": "1",
                "num_layers": "3",
                "num_batches_per_epoch": "2",
            }
        )
    )
    (root / "input/data/train").mkdir(parents=True)
    (root / "input/data/train/train.json").write_text(
        json.dumps({"start": "2024-01-01 00:00:00", "target": [float(i % 24) for i in range(500)]}) + "\n"
    )
    subprocess.run(
        ["docker", "run", "--rm", "-v", f"{root}:/opt/ml", image, "train"], check=True, capture_output=True, timeout=600
    )


@contextmanager
def serving_container(image: str, model_root: Path, run_args: Sequence[str] = ()) -> Iterator[tuple[str, float]]:
    """`docker run [run_args] IMAGE serve` on a read-only /opt/ml: yields (the container's name, seconds
    from `docker run` to /ping 200, at most PING_DEADLINE_S); the container is removed on exit."""
    port, name = free_port(), f"deepar-bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    subprocess.run(
        ["docker", *serve_container_args(image, model_root, port, name, *run_args)], check=True, capture_output=True
    )
    try:
        yield name, _seconds_to_ping(port, start, f"{image} {list(run_args)}" if run_args else image)
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)


def _seconds_to_ping(port: int, start: float, what: str) -> float:
    while time.perf_counter() - start < PING_DEADLINE_S:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200:
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what}: /ping did not answer 200 within {PING_DEADLINE_S} s")


def seconds_to_ping(image: str, model_root: Path) -> float:
    with serving_container(image, model_root) as (_, seconds):
        return seconds


@dataclass
class Layer:
    size: int
    created_by: str


def history(image: str) -> list[Layer]:
    """The image's history rows, oldest first (`docker history` lists newest first)."""
    out = docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
    rows = [line.split("\t", 1) for line in out.splitlines() if line]
    return [Layer(int(size), created_by.strip()) for size, created_by in reversed(rows)]


def final_stage_copies(dockerfile: Path) -> list[str]:
    """The COPY instructions of the Dockerfile's last stage, in order (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages = re.split(r"(?im)^FROM\s", text)
    return [" ".join(line.split()) for line in stages[-1].splitlines() if re.match(r"(?i)COPY\s", line)]


def layer_manifest(image: str) -> dict:
    """What split_venv.py put in each venv layer; empty for an image built without it."""
    try:
        return json.loads(docker("run", "--rm", "--entrypoint", "cat", image, "/opt/venv/layers.json"))
    except subprocess.CalledProcessError:
        return {}


def describe(created_by: str, copy_line: str | None, manifest: dict) -> str:
    if copy_line:
        match = re.search(r"/layers/([^/\s]+)/", copy_line)
        layer = manifest.get("layers", {}).get(match.group(1)) if match else None
        if layer:
            sizes = sorted(((manifest["distributions"].get(d, 0), d) for d in layer["distributions"]), reverse=True)
            shown = ", ".join(f"{d} {size / 1e6:.1f}" for size, d in sizes[:6])
            more = f" + {len(sizes) - 6} smaller" if len(sizes) > 6 else ""
            return f"{match.group(1)} layer: {shown}{more}"
        return copy_line
    # Classic builder: "|2 ARG=v ARG=v /bin/sh -c CMD" or "/bin/sh -c #(nop) ..."; BuildKit: "RUN /bin/sh -c CMD # buildkit".
    command = re.sub(r"^(\|\d+ (\S+=\S* )*)?(RUN )?/bin/sh -c (#\(nop\) )?", "", created_by)
    command = command.removesuffix("# buildkit").strip()
    return command if len(command) <= 90 else command[:87] + "..."


def layer_table(image: str, base_image: str) -> list[tuple[int, str]]:
    layers = history(image)
    try:
        base_rows = len(history(base_image)) if base_image else 0
    except subprocess.CalledProcessError:
        base_rows = 0
    own = layers[base_rows:]
    copies = final_stage_copies(DOCKERFILE)
    copy_rows = [i for i, layer in enumerate(own) if re.match(r"(COPY |/bin/sh -c #\(nop\) COPY )", layer.created_by)]
    # Align from the end: the last COPY rows of the image are the last stage's COPY lines.
    aligned = dict(zip(reversed(copy_rows), reversed(copies))) if len(copy_rows) >= len(copies) else {}
    manifest = layer_manifest(image)
    table = [(sum(layer.size for layer in layers[:base_rows]), f"base image {base_image}")] if base_rows else []
    table += [
        (layer.size, describe(layer.created_by, aligned.get(i), manifest))
        for i, layer in enumerate(own)
        if layer.size > 0
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="sagemaker-deepar:latest")
    parser.add_argument("--baseline", help="another image measured in the same run (e.g. the main branch's)")
    parser.add_argument("--base-image", default="debian:bookworm-slim", help="the Dockerfile's BASE_IMAGE")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args()
    result = Result("image_cold_start", sys.argv[1:])
    print(machine(), flush=True)
    images = [args.image] + ([args.baseline] if args.baseline else [])
    times: dict[str, list[float]] = {image: [] for image in images}
    with tempfile.TemporaryDirectory() as tmp:
        train_model(args.image, Path(tmp))
        for _ in range(args.runs):
            for image in images:  # interleaved, so machine noise hits both alike
                times[image].append(seconds_to_ping(image, Path(tmp)))
    for image in images:
        size_line = f"image {image}: {image_size(image) / 1e9:.2f} GB"
        ping_line = (
            f"  docker run ... serve -> /ping 200: median {statistics.median(times[image]):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in times[image])})"
        )
        print(size_line)
        print(ping_line)
        if image == args.image:
            result.figure("image size", image_size(image) / 1e9, "GB", size_line, target="<= 1.7 GB")
            result.figure("docker run -> /ping 200", statistics.median(times[image]), "s", ping_line.strip(), "<= 3 s")
        for run, seconds in enumerate(times[image], 1):
            result.row(kind="cold_start", image=image, run=run, seconds_to_ping=seconds)
    if args.baseline:
        print(
            f"ratio {args.image} / {args.baseline}: size {image_size(args.image) / image_size(args.baseline):.2f}, "
            f"/ping {statistics.median(times[args.image]) / statistics.median(times[args.baseline]):.2f}"
        )
        paired = Paired(f"{args.baseline} / {args.image} seconds to /ping", higher_is_better=False)
        for ours, base in zip(times[args.image], times[args.baseline]):
            paired.add(ours, base)
        print(paired.headline())
        result.headline(paired)
    print(f"\nlayers of {args.image} (docker history), oldest first:")
    for size, what in layer_table(args.image, args.base_image):
        print(f"  {size / 1e6:8.1f} MB  {what}")
        result.row(kind="layer", image=args.image, megabytes=size / 1e6, layer=what)
    result.write(args.json)


if __name__ == "__main__":
    main()
