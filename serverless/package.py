"""``python -m serverless package``: the function bundles and the pyarrow layer, checked against
Lambda's limits (50 MB zipped per upload, 250 MB unzipped for a function with its layers), and the
cold start of each handler (import + first forecaster) measured in a fresh interpreter.

Bundles carry our handlers, ``sagemaker_deepar/contract.py``, ``ingestion/glue_job.py`` (the lake's
schema) and numpy (the Lambda runtime has boto3
but not numpy); pyarrow (Parquet inputs, the lake) is a layer because with numpy it would be one
bundle of > 50 MB zipped. Test folders, headers and Cython sources are left out."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ZIPPED_LIMIT = 50 * 2**20
UNZIPPED_LIMIT = 250 * 2**20
FUNCTIONS = ("batch_forecast", "forecast_api")
LAYER = "pyarrow-layer"
_SKIP_DIRS = {"tests", "test", "include", "__pycache__", "benchmarks", "testing"}
_SKIP_SUFFIXES = (".pyc", ".pxd", ".pyx", ".pxi", ".h", ".hpp", ".a", ".cmake")


class PackageError(Exception):
    """A bundle breaks a Lambda limit or a dependency is missing."""


@dataclass
class Bundle:
    name: str
    path: str
    zipped_bytes: int
    unzipped_bytes: int


def _distribution_dir(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise PackageError(f"{module} is not installed in {sys.executable}")
    package = Path(spec.origin).parent
    libs = package.parent / f"{module}.libs"  # auditwheel's vendored shared libraries
    return [package, *([libs] if libs.is_dir() else [])]


def _files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not _SKIP_DIRS.intersection(p.relative_to(root).parts)
        and not p.name.endswith(_SKIP_SUFFIXES)
    )


def _write_zip(target: Path, entries: list[tuple[Path, str]]) -> Bundle:
    target.parent.mkdir(parents=True, exist_ok=True)
    # The same files (names, sizes, mtimes) as the last build: reuse its zip (a re-deploy then skips ~10 s).
    stamp = target.with_suffix(".sources")
    sources = json.dumps([[name, p.stat().st_size, p.stat().st_mtime_ns] for p, name in entries])
    if target.exists() and stamp.exists() and stamp.read_text() == sources:
        unzipped = sum(p.stat().st_size for p, _ in entries)
        return Bundle(target.stem, str(target), target.stat().st_size, unzipped)
    stamp.unlink(missing_ok=True)
    unzipped = 0
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for source, name in entries:
            archive.write(source, name)
            unzipped += source.stat().st_size
    stamp.write_text(sources)
    return Bundle(target.stem, str(target), target.stat().st_size, unzipped)


def function_entries() -> list[tuple[Path, str]]:
    ours = [REPO / "serverless" / "__init__.py", *sorted((REPO / "serverless" / "handlers").glob("*.py"))]
    ours += [REPO / "sagemaker_deepar" / "__init__.py", REPO / "sagemaker_deepar" / "contract.py"]
    # The lake's measured columns (forecast_api's pollutant allow-list) come from the Glue job's schema;
    # glue_job.py imports only the standard library at module level (pyspark inside its Spark functions).
    ours += [REPO / "ingestion" / "__init__.py", REPO / "ingestion" / "glue_job.py"]
    ours += [REPO / "awsinfra" / name for name in ("__init__.py", "clients.py", "errors.py")]  # one client factory
    # The in-function model (FORECAST_MODEL) through the runtimes seam; onnxruntime itself would be another layer.
    ours += [REPO / "sagemaker_deepar" / "errors.py"]
    ours += [REPO / "sagemaker_deepar" / "runtimes" / name for name in ("__init__.py", "onnx.py", "onnx_forecast.py")]
    entries = [(p, str(p.relative_to(REPO))) for p in ours]
    for folder in _distribution_dir("numpy"):
        entries += [(p, str(p.relative_to(folder.parent))) for p in _files(folder)]
    return entries


def layer_entries() -> list[tuple[Path, str]]:
    entries = []
    for folder in _distribution_dir("pyarrow"):
        entries += [(p, "python/" + str(p.relative_to(folder.parent))) for p in _files(folder)]
    return entries


def build(out: Path) -> list[Bundle]:
    """Write the bundles into ``out``; raise ``PackageError`` naming every limit broken."""
    function_files = function_entries()
    first = _write_zip(out / f"{FUNCTIONS[0]}.zip", function_files)
    bundles = [first]
    for name in FUNCTIONS[1:]:  # the same files (each function has its own handler): copy, don't recompress
        shutil.copyfile(first.path, out / f"{name}.zip")
        bundles.append(Bundle(name, str(out / f"{name}.zip"), first.zipped_bytes, first.unzipped_bytes))
    layer = _write_zip(out / f"{LAYER}.zip", layer_entries())
    problems = [
        f"{b.name}: {b.zipped_bytes / 2**20:.1f} MB zipped > 50 MB"
        for b in [*bundles, layer]
        if b.zipped_bytes > ZIPPED_LIMIT
    ]
    problems += [
        f"{b.name} + {LAYER}: {(b.unzipped_bytes + layer.unzipped_bytes) / 2**20:.1f} MB unzipped > 250 MB"
        for b in bundles
        if b.unzipped_bytes + layer.unzipped_bytes > UNZIPPED_LIMIT
    ]
    if problems:
        raise PackageError("Lambda limits exceeded: " + "; ".join(problems))
    return [*bundles, layer]


_COLD_START = """
import json, sys, time, zipfile, tempfile, os
started = time.perf_counter()
import importlib
module = importlib.import_module(sys.argv[1])
imported = time.perf_counter() - started
from serverless.handlers import forecasting
t = time.perf_counter()
forecaster = forecasting.from_environment() if (os.environ.get("FORECAST_MODEL") or os.environ.get("FORECAST_ENDPOINT")) else None
if forecaster is not None and hasattr(forecaster, "model"):
    forecaster.model()
loaded = time.perf_counter() - t
heavy = sorted(m for m in ("torch", "gluonts", "pandas", "mxnet") if m in sys.modules)
print(json.dumps({"import_s": round(imported, 3), "model_load_s": round(loaded, 3), "heavy_modules": heavy}))
"""


def cold_start(bundle: Path, layer: Path, function: str, env: dict[str, str] | None = None) -> dict:
    """Import the handler from the unpacked bundle + layer in a fresh interpreter, as Lambda does
    (``-S``: nothing from our virtualenv's site-packages), plus the forecaster's model load."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        code, opt = Path(root) / "task", Path(root) / "opt"
        zipfile.ZipFile(bundle).extractall(code)
        zipfile.ZipFile(layer).extractall(opt)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-S", "-c", _COLD_START, f"serverless.handlers.{function}"],
            env={"PYTHONPATH": f"{code}:{opt / 'python'}", "PATH": os.environ.get("PATH", ""), **(env or {})},
            capture_output=True,
            text=True,
            cwd=root,
            timeout=300,
        )
        if result.returncode:
            raise PackageError(f"{function}: the bundle does not import: {result.stderr[-2000:]}")
        return {"function": function, "process_s": round(time.perf_counter() - started, 3), **json.loads(result.stdout)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless package", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "serverless")
    parser.add_argument("--cold-start", action="store_true", help="also measure each handler's cold start")
    args = parser.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    bundles = build(args.out)
    for b in bundles:
        print(
            f"{b.name}: {b.zipped_bytes / 2**20:.1f} MB zipped, {b.unzipped_bytes / 2**20:.1f} MB unzipped -> {b.path}"
        )
    if args.cold_start:
        layer = Path(bundles[-1].path)
        for b in bundles[:-1]:
            print(json.dumps(cold_start(Path(b.path), layer, b.name)))
    print(json.dumps({b.name: asdict(b) for b in bundles}))
    return 0
