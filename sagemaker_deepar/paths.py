"""The SageMaker /opt/ml layout; ``SAGEMAKER_BASE_DIR`` relocates it for local runs and tests."""

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .contract import METADATA_FILE  # noqa: F401 - part of the layout, stated in the contract
from .errors import OutputError

PROBE_FILE = ".deepar-write-probe"
PROBE_BYTES = 64 * 1024

# Inside /opt/ml/model: the serialized GluonTS predictor and our metadata beside it.
PREDICTOR_DIR = "predictor"


class _Below:
    """A path at fixed parts below ``SageMakerPaths.root`` (a read-only attribute)."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, paths: "SageMakerPaths", owner: type) -> Path:
        return paths.root.joinpath(*self.parts)


@dataclass(frozen=True)
class SageMakerPaths:
    root: Path

    config_dir = _Below("input", "config")
    hyperparameters = _Below("input", "config", "hyperparameters.json")
    input_data_config = _Below("input", "config", "inputdataconfig.json")
    resource_config = _Below("input", "config", "resourceconfig.json")
    checkpoint_config = _Below("input", "config", "checkpointconfig.json")
    model_dir = _Below("model")
    output_data_dir = _Below("output", "data")
    failure_file = _Below("output", "failure")
    default_checkpoint_dir = _Below("checkpoints")

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name


def _probe_dir(role: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"the {role} {path} is a file, not a folder; the job cannot write its results there")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"the {role} {path} cannot be created: {error.strerror}") from None
    probe = path / PROBE_FILE
    try:
        with open(probe, "wb") as f:  # a real write of some size: a full disk fails here, not at mkdir
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise OutputError(f"the {role} {path} is not writable: {error.strerror}") from None
    finally:
        with contextlib.suppress(OSError):  # on a read-only folder unlink fails too; keep the first error
            probe.unlink()


def probe_output_dirs(dirs: dict[str, Path], needed_bytes: int) -> None:
    """Before training: each folder exists (or is created), takes a write, and its disk has room.

    ``dirs`` maps a role ("model folder") to its path; folders on one file system share ``needed_bytes``
    per folder. Raises ``OutputError`` naming the folder, so a doomed job fails in seconds, not after training.
    """
    for role, path in dirs.items():
        _probe_dir(role, path)
    by_device: dict[int, list[tuple[str, Path]]] = {}
    for role, path in dirs.items():
        by_device.setdefault(path.stat().st_dev, []).append((role, path))
    for members in by_device.values():
        free = shutil.disk_usage(members[0][1]).free
        needed = needed_bytes * len(members)
        if free < needed:
            names = ", ".join(f"{role} {path}" for role, path in members)
            raise OutputError(
                f"not enough disk space for the {names}: {free / 2**20:.1f} MB free, the model and "
                f"checkpoints need about {needed / 2**20:.0f} MB; use a larger volume (VolumeSizeInGB)"
            )
