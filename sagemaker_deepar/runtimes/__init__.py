"""The inference runtimes seam: what draws a model's sample paths (onnxruntime, torch or GluonTS's mxnet).

One protocol (``Runtime``: ``name``, ``prewarm()``, ``sample(entries, num_samples, rng)``), one module per
runtime (``onnx.py``, ``torch.py``, ``mxnet.py``) and ONE loader, ``load()``, that tries them in order of
preference (``DEEPAR_INFERENCE_RUNTIME`` first, then the registry's order), falls back with the reason and
logs ``inference runtime: X (why)``. The single-model server, its gunicorn-master preload, the multi-model
server and the serverless in-function forecaster all come here; none of them names a runtime.

Importing this package imports neither torch, GluonTS, pandas nor onnxruntime (the serverless bundle holds
it; ``tests/test_runtimes.py`` checks): each runtime module imports its library inside its functions.

Adding a runtime (one new file plus one registration line):

1. ``runtimes/<name>.py`` defines, at module level (see ``RuntimeModule``):
   ``available(model_dir, artifact, options)`` (cheap: raise ``RuntimeUnavailable(reason)`` when it cannot
   serve this artifact, without loading anything), ``prepare(options)`` (the imports a load needs, run
   before the server is ready), ``LOAD_BEFORE_FORK`` (whether the gunicorn master may load the model and
   fork it to the workers), and ``load(model_dir, artifact, options) -> Runtime`` (raises
   ``RuntimeUnavailable`` too, e.g. a damaged file: the loader then tries the next runtime).
2. One line in ``RUNTIMES`` below, at its place in the order of preference.

Wrapping forecasters (the hook for the ensemble, issue #22): after the DeepAR runtime is loaded, the loader
looks up the artifact's forecaster (``forecaster_of(artifact)``: the ``forecaster`` field of
``deepar-metadata.json``, "deepar" when absent) in ``FORECASTERS``. "deepar" serves the runtime itself; any
other name maps to a module in this package with ``wrap(runtime, model_dir, artifact, options) -> Runtime``,
whose result is served instead (its ``sample`` keeps the shape and dtype contract). So an ensemble adds

- ``runtimes/ensemble.py`` with ``wrap(...)`` (it may call ``runtime.sample`` for the DeepAR paths), and
- one line in ``FORECASTERS``: ``"ensemble": "ensemble",``
- plus the ``forecaster`` field in ``contract.ModelArtifact`` (absent = "deepar", older artifacts unchanged).

An artifact naming a forecaster that is not registered is refused with a ``UserError`` naming it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, cast

import numpy as np

from ..contract import ModelArtifact
from ..errors import RequestError, UserError

log = logging.getLogger(__name__)

# An entry: GluonTS's dict fields, pandas-free at this seam. ``start``: a pandas Period (the server's
# parsed requests) or a numpy datetime64 / timestamp string; ``target`` float32; ``feat_static_cat``;
# ``feat_dynamic_real`` (features, len(target) + prediction_length). Each runtime converts what it needs.
Entry = Mapping[str, Any]


class Runtime(Protocol):
    """What draws the sample paths of one loaded model."""

    name: str  # "onnx", "torch", "mxnet": the registry's name, in logs and /execution-parameters
    why: str  # why the loader chose it (set by ``load``, logged)

    def prewarm(self) -> None:
        """One tiny draw, so the first request does not pay for lazy initialisation."""

    def sample(self, entries: Sequence[Entry], num_samples: int, rng: Optional[np.random.Generator]) -> np.ndarray:
        """Sample paths, shape (series, num_samples, prediction_length), float32.

        ``rng``: a seeded request's own generator (``configuration.seed``); None draws from the runtime's
        stream. A runtime that cannot draw reproducibly raises ``SeedUnsupported`` (answered 400)."""
        ...


class RuntimeUnavailable(Exception):
    """This runtime cannot serve this artifact; ``reason`` says why (logged when the loader falls back)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NoRuntime(UserError):
    """No runtime allowed for this model can serve it; the message lists each one's reason."""


class SeedUnsupported(RequestError):
    """``configuration.seed`` asked of a runtime whose draws cannot be seeded (answered 400)."""


@dataclass(frozen=True)
class LoadOptions:
    preferred: str = "onnx"  # DEEPAR_INFERENCE_RUNTIME: tried first
    max_batch_series: int = 256  # series per forward pass
    threads: Optional[int] = None  # intra-op threads of the runtime (None: leave its default)


class RuntimeModule(Protocol):
    """What each ``runtimes/<name>.py`` defines at module level."""

    LOAD_BEFORE_FORK: bool

    def available(self, model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> None: ...

    def prepare(self, options: LoadOptions) -> None: ...

    def load(self, model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> Runtime: ...


@dataclass(frozen=True)
class Registration:
    name: str
    module: str  # a module of this package
    selectable: bool = True  # may DEEPAR_INFERENCE_RUNTIME name it


# The runtimes, in order of preference after the one DEEPAR_INFERENCE_RUNTIME names: one line each.
RUNTIMES: tuple[Registration, ...] = (
    Registration("onnx", "onnx"),
    Registration("torch", "torch"),
    Registration("mxnet", "mxnet", selectable=False),  # models trained with backend=mxnet, and only those
)

# Forecasters that wrap the chosen DeepAR runtime, by the artifact's ``forecaster`` (see the docstring).
FORECASTERS: dict[str, Optional[str]] = {
    "deepar": None,  # the runtime itself
}

# What DEEPAR_INFERENCE_RUNTIME accepts.
INFERENCE_RUNTIMES: tuple[str, ...] = tuple(r.name for r in RUNTIMES if r.selectable)


def runtime_module(name: str) -> RuntimeModule:
    for registration in RUNTIMES:
        if registration.name == name:
            return cast(RuntimeModule, importlib.import_module(f"{__name__}.{registration.module}"))
    raise ValueError(f"inference runtime {name!r} must be one of {', '.join(r.name for r in RUNTIMES)}")


def order(preferred: str, only: Optional[Sequence[str]] = None) -> list[str]:
    """The runtimes to try: ``preferred`` first, then the registry's order (restricted to ``only``)."""
    if preferred not in INFERENCE_RUNTIMES:
        raise ValueError(f"inference runtime {preferred!r} must be one of {', '.join(INFERENCE_RUNTIMES)}")
    names = [preferred] + [r.name for r in RUNTIMES if r.name != preferred]
    return [name for name in names if only is None or name in only]


def choose(model_dir: Path, artifact: ModelArtifact, options: LoadOptions, only: Optional[Sequence[str]] = None) -> str:
    """The runtime ``load`` will try first for this artifact, from cheap checks only (nothing loaded).

    The gunicorn master uses it to import, or load, what the workers will need before it forks."""
    reasons = []
    for name in order(options.preferred, only):
        try:
            runtime_module(name).available(model_dir, artifact, options)
        except RuntimeUnavailable as unavailable:
            reasons.append(f"{name}: {unavailable.reason}")
            continue
        return name
    raise NoRuntime(f"{model_dir}: no inference runtime can serve this model ({'; '.join(reasons)})")


def prepare(name: str, options: LoadOptions) -> None:
    """Import what loading a model with runtime ``name`` needs (before a worker says it is ready)."""
    runtime_module(name).prepare(options)


def load(
    model_dir: Path,
    options: LoadOptions,
    artifact: Optional[ModelArtifact] = None,
    only: Optional[Sequence[str]] = None,
) -> Runtime:
    """The first runtime, in order of preference, that loads this model; logs which and why.

    ``only``: the runtimes this caller can run (the serverless function: onnx). Then the forecaster the
    artifact names wraps it (``FORECASTERS``)."""
    model_dir = Path(model_dir)
    artifact = artifact or ModelArtifact.read(model_dir)
    wrapper = _forecaster_module(artifact, model_dir)
    reasons: list[str] = []
    for name in order(options.preferred, only):
        module = runtime_module(name)
        try:
            module.available(model_dir, artifact, options)
        except RuntimeUnavailable as unavailable:
            reasons.append(f"{name}: {unavailable.reason}")
            continue
        try:
            runtime = module.load(model_dir, artifact, options)
        except RuntimeUnavailable as unavailable:  # e.g. a damaged file: the next runtime may still serve
            log.warning("%s: %s; trying the next inference runtime", name, unavailable.reason)
            reasons.append(f"{name}: {unavailable.reason}")
            continue
        if name == options.preferred and name != RUNTIMES[0].name:
            runtime.why = f"DEEPAR_INFERENCE_RUNTIME={name}"
        if reasons:
            runtime.why = f"{runtime.why}; {reasons[0]}"  # why the preferred one does not serve it
        log.info("inference runtime: %s (%s)", runtime.name, runtime.why)
        if wrapper is not None:
            runtime = wrapper.wrap(runtime, model_dir, artifact, options)
        return runtime
    raise NoRuntime(f"{model_dir}: no inference runtime can serve this model ({'; '.join(reasons)})")


def forecaster_of(artifact: ModelArtifact) -> str:
    """The forecaster an artifact asks for: ``deepar-metadata.json``'s ``forecaster``, "deepar" when absent."""
    return str(getattr(artifact, "forecaster", None) or "deepar")


def _forecaster_module(artifact: ModelArtifact, model_dir: Path) -> Any:
    name = forecaster_of(artifact)
    if name not in FORECASTERS:
        raise UserError(
            f"{model_dir}/deepar-metadata.json: forecaster {name!r} is not known to this image "
            f"(known: {', '.join(FORECASTERS)}); serve it with the image version that trained it"
        )
    module = FORECASTERS[name]
    return None if module is None else importlib.import_module(f"{__name__}.{module}")


def tiny_entry(artifact: ModelArtifact, start: Any) -> dict[str, Any]:
    """A three-point series with the artifact's features: what ``prewarm`` draws for."""
    entry: dict[str, Any] = {"start": start, "target": np.asarray([1.0, 2.0, 3.0], dtype=np.float32)}
    if artifact.cardinality:
        entry["feat_static_cat"] = np.zeros(len(artifact.cardinality), dtype=np.int64)
    if artifact.num_dynamic_feat:
        entry["feat_dynamic_real"] = np.zeros(
            (artifact.num_dynamic_feat, 3 + artifact.prediction_length), dtype=np.float32
        )
    return entry
