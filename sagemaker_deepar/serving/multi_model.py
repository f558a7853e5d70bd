"""Multi-model endpoints: SageMaker's MME container contract (``SAGEMAKER_MULTI_MODEL=true``).

SageMaker loads a model with ``POST /models {"model_name", "url"}`` (``url`` is the extracted
artifact under ``/opt/ml/models/<name>/model``), lists, describes and unloads it under ``/models``
and invokes it with ``POST /models/<name>/invoke``. gunicorn runs several workers and any of them may
receive any of these requests, so the set of loaded models cannot live in one worker's memory.

Design (SAGEMAKER_MORE.md §1, option (b), chosen because it keeps one forward-pass thread per worker
per model, i.e. the single-model server's multi-worker speed, which option (a), one worker, gives up):

- The **registration** of a model is a marker file ``<shared>/models/<quoted name>.json`` written with
  an exclusive hard link, so two loads of one name (in any workers) register it once: the second gets 409.
- Each worker holds a **resident** copy of the models it served recently, loaded lazily from the
  registered url on its first invoke, one load per model per worker however many requests ask at once.
  Residency is a per-worker LRU cache under a memory budget: idle models (no request in flight) are
  evicted to make room and loaded again from disk on their next invoke; 507 only when the budget
  cannot hold the model even after evicting every idle one (SageMaker then unloads models and retries).
- Each worker marks what it holds in ``<shared>/resident/<quoted name>/<pid>``. ``DELETE`` removes the
  registration; every worker's sweeper thread drops copies whose registration is gone within
  ``SWEEP_INTERVAL_S``, and the DELETE answers once no live worker holds the model any more.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol
from urllib.parse import quote, unquote

from ..contract import METADATA_FILE
from ..errors import RequestError, UserError

log = logging.getLogger("sagemaker_deepar.multi_model")

SWEEP_INTERVAL_S = 0.1
UNLOAD_WAIT_S = 10.0
LIST_PAGE_MAX = 100  # MMS's default and largest page
# A model name becomes file names (registry marker ``<quoted name>.json``, resident folder ``<quoted name>``):
# the quoted name plus ".json" must fit one file name (255 bytes on Linux file systems), else the load
# failed with a 500 (#23 item 12). SageMaker's names are 32-hex hashes (SAGEMAKER_MORE.md section 1).
MAX_QUOTED_NAME_CHARS = 250
DEFAULT_MODELS_DIR = "/opt/ml/models"  # where SageMaker extracts each model (url = <here>/<name>/model)
# What one resident DeepAR costs beyond its files: the Python objects of the network, the input
# transformation, the batcher thread's stack. Measured with bench/multi_model.py (RSS over 50 resident).
MODEL_OVERHEAD_BYTES = 3 * 2**20
# Per worker, before any model: interpreter, torch, GluonTS, Flask (bench/serve_throughput.py: ~0.45 GB).
WORKER_BASE_BYTES = 512 * 2**20
# Kept free on the instance whatever the budget says: a load must not push the instance into the OOM killer.
HEADROOM_RESERVE_BYTES = 128 * 2**20
TARGET_MODEL_HEADERS = ("X-Amzn-SageMaker-Target-Model", "X-Amzn-Target-Model")


def multi_model_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """SageMaker sets this in containers whose image has the multi-models capability label."""
    return env.get("SAGEMAKER_MULTI_MODEL", "").strip().lower() == "true"


# ---------------------------------------------------------------- configuration


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"environment variable {name}={raw!r} must be a positive integer")
    return int(raw)


def instance_memory_bytes() -> int:
    """The container's memory limit (cgroup v2/v1), else the machine's MemTotal."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with suppress(OSError, ValueError):
            raw = Path(path).read_text().strip()
            if raw.isdigit() and int(raw) < 1 << 60:
                return int(raw)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_headroom_bytes() -> int:
    """Bytes the instance can still give: cgroup limit minus usage when limited, else MemAvailable."""
    with suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    with suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


@dataclass(frozen=True)
class MultiModelConfig:
    shared_dir: Path
    memory_budget_bytes: int  # per worker, for resident models
    max_resident: Optional[int] = None  # per worker; None: only the memory budget counts
    models_dir: Path = Path(DEFAULT_MODELS_DIR)  # every load's url must lie below it (#23 item 12)

    @classmethod
    def from_env(cls, workers: int, env: Mapping[str, str] = os.environ) -> "MultiModelConfig":
        shared = env.get("DEEPAR_MME_DIR") or os.path.join("/tmp", f"deepar-mme-{os.getppid()}")
        budget_mb = _env_int(env, "DEEPAR_MME_MEMORY_MB")
        if budget_mb is not None:
            budget = budget_mb * 2**20
        else:  # the instance's memory less each worker's base, shared by the workers, 80 % of it
            budget = int(max(0, instance_memory_bytes() - workers * WORKER_BASE_BYTES) * 0.8 / max(1, workers))
        models = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "models"  # SAGEMAKER_BASE_DIR: as paths.py
        return cls(Path(shared), budget, _env_int(env, "DEEPAR_MME_MAX_MODELS"), models.absolute())


# ---------------------------------------------------------------- loaded models


class LoadedModel(Protocol):
    """What the registry holds per resident model (server.py: a ForecastService and its batcher)."""

    service: Any

    def close(self) -> None: ...


Loader = Callable[[Path], LoadedModel]


def check_model_name(name: Any) -> str:
    """A model name usable as a registry key and file name, else a 400 saying why (#23 item 12)."""
    if not isinstance(name, str) or not name.strip():
        raise RequestError('"model_name": expected a non-empty string')
    if name in (".", ".."):  # quote() keeps dots: these would name the registry's own folders
        raise RequestError(f'"model_name": {name!r} is not a usable name (it names a folder)')
    quoted = len(quote(name, safe=""))
    if quoted > MAX_QUOTED_NAME_CHARS:
        raise RequestError(
            f'"model_name": {len(name)} characters ({quoted} once URL-quoted); at most {MAX_QUOTED_NAME_CHARS} '
            "once quoted: each model is a file named by it"
        )
    return name


def _below(path: Path, models_dir: Path, url: str) -> Path:
    """``path`` with links resolved, when it lies strictly below ``models_dir``; else a 400 (#23 item 12)."""
    resolved, root = path.resolve(), models_dir.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise RequestError(f"url {url!r}: not below the models folder {models_dir} (SageMaker's <folder>/<name>/model)")
    return resolved


def model_dir_of(url: str, models_dir: Path = Path(DEFAULT_MODELS_DIR)) -> Path:
    """The artifact folder under ``url``: its root, or tolerantly the one folder below it (an extra tarball level).

    ``url`` must lie below ``models_dir`` (links resolved, checked before the disk is asked whether it exists,
    so no folder elsewhere is loaded or even probed)."""
    if not url or not isinstance(url, str):
        raise RequestError('"url": expected the folder of an extracted model, e.g. /opt/ml/models/<name>/model')
    if "\0" in url or not os.path.isabs(url):
        raise RequestError(f"url {url!r}: expected an absolute path below the models folder {models_dir}")
    path = _below(Path(url), models_dir, url)
    if not path.exists():
        raise RequestError(f"url {url!r}: no such folder", status=404)
    if not path.is_dir():
        raise RequestError(f"url {url!r}: not a folder (SageMaker passes the folder of the extracted model.tar.gz)")
    if (path / METADATA_FILE).is_file():
        return path
    below = [d for d in path.iterdir() if d.is_dir() and (d / METADATA_FILE).is_file()]
    if len(below) == 1:
        return _below(below[0], models_dir, url)  # a link one level down must not lead out either
    raise RequestError(
        f"url {url!r}: no DeepAR model there ({METADATA_FILE} not found at its root or one folder below); "
        "pack model.tar.gz from the training job's /opt/ml/model"
    )


def estimated_cost_bytes(model_dir: Path) -> int:
    """Memory a resident copy takes: its files (weights, transformation) plus fixed overhead."""
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    return size + MODEL_OVERHEAD_BYTES


@dataclass(frozen=True)
class Registration:
    name: str
    url: str
    model_dir: str
    id: str

    def describe(self) -> dict:
        return {"modelName": self.name, "modelUrl": self.url}


@dataclass(eq=False)
class Resident:
    registration: Registration
    cost: int
    loaded: Optional[LoadedModel] = None
    in_flight: int = 0
    retired: bool = False  # evicted or unloaded while requests were in flight: closed by the last one


# ---------------------------------------------------------------- the registry


class ModelRegistry:
    def __init__(
        self,
        config: MultiModelConfig,
        loader: Loader,
        cost_of: Callable[[Path], int] = estimated_cost_bytes,
        headroom: Callable[[], int] = memory_headroom_bytes,
        sweep: bool = True,
        pid: Optional[int] = None,  # the worker's, in the marks of what it holds (tests stand in for workers)
    ):
        self.config = config
        self.loader = loader
        self.cost_of = cost_of
        self.headroom = headroom
        self.pid = pid or os.getpid()
        self.models_dir = config.shared_dir / "models"
        self.resident_dir = config.shared_dir / "resident"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.resident_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._resident: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._reserved = 0  # bytes of loads under way
        self._load_locks: dict[str, threading.Lock] = {}
        self.loads = 0  # models loaded by this worker (tests, logs)
        if sweep:
            threading.Thread(target=self._sweep_forever, name="deepar-mme-sweeper", daemon=True).start()

    # ------------------------------------------------------------ registrations (shared by workers)

    def _marker(self, name: str) -> Path:
        return self.models_dir / (quote(name, safe="") + ".json")

    def registration(self, name: str) -> Optional[Registration]:
        try:
            return Registration(**json.loads(self._marker(name).read_bytes()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _register(self, registration: Registration) -> None:
        """Exclusive: a second registration of the name, in any worker, gets 409."""
        temporary = self.models_dir / f".{uuid.uuid4().hex}.tmp"
        temporary.write_text(json.dumps(registration.__dict__))
        try:
            os.link(temporary, self._marker(registration.name))
        except FileExistsError:
            raise RequestError(f"model {registration.name!r} is already loaded", status=409) from None
        finally:
            temporary.unlink()

    def _deregister(self, registration: Registration) -> bool:
        current = self.registration(registration.name)
        if current is None or current.id != registration.id:
            return False
        with suppress(FileNotFoundError):
            self._marker(registration.name).unlink()
            return True
        return False

    # ------------------------------------------------------------ the routes' operations

    def load(self, name: Any, url: Any) -> dict:
        """POST /models: register and load in this worker (a model that cannot load is not registered)."""
        check_model_name(name)
        model_dir = model_dir_of(url, self.config.models_dir)
        registration = Registration(name, url, str(model_dir), uuid.uuid4().hex)
        self._register(registration)
        try:
            with self.use(name, registration) as _:
                pass
        except BaseException:
            self._deregister(registration)
            raise
        log.info("model %r loaded from %s", name, url)
        return {"status": f"model {name!r} loaded"}

    def listing(self, limit: Any = None, next_page_token: Any = None) -> dict:
        """GET /models: pages of at most ``limit`` (≤ 100) in name order; ``{"models": []}`` when none."""
        size = _page_number(limit, "limit", LIST_PAGE_MAX, low=1)
        start = _page_number(next_page_token, "next_page_token", 0, low=0)
        names = sorted(unquote(p.name[: -len(".json")]) for p in self.models_dir.glob("*.json"))
        page = [r.describe() for n in names[start : start + size] if (r := self.registration(n)) is not None]
        answer: dict[str, Any] = {"models": page}
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        return answer

    def describe(self, name: str) -> dict:
        registration = self.registration(check_model_name(name))
        if registration is None:
            raise _not_loaded(name)
        return registration.describe()

    def unload(self, name: str) -> dict:
        """DELETE /models/<name>: deregistered, and freed in every worker before this returns."""
        registration = self.registration(check_model_name(name))
        if registration is None or not self._deregister(registration):
            raise _not_loaded(name)
        self._evict_unregistered()
        deadline = time.monotonic() + UNLOAD_WAIT_S
        while self._holders(name) and time.monotonic() < deadline:
            time.sleep(SWEEP_INTERVAL_S / 2)
        holders = self._holders(name)
        if holders:
            log.warning("model %r unloaded but still held by busy worker(s) %s; freed when they finish", name, holders)
        gc.collect()
        log.info("model %r unloaded", name)
        return {"status": f"model {name!r} unloaded"}

    @contextmanager
    def use(self, name: str, registration: Optional[Registration] = None) -> Iterator[tuple[Any, bool]]:
        """(service, hit) for one invoke: the resident copy, loaded first if this worker has none."""
        registration = registration or self.registration(check_model_name(name))
        if registration is None:
            raise _not_loaded(name)
        resident, hit = self._acquire(registration)
        try:
            assert resident.loaded is not None
            yield resident.loaded.service, hit
        finally:
            self._release(resident)

    def resident_names(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def resident_bytes(self) -> int:
        with self._lock:
            return sum(r.cost for r in self._resident.values())

    def drain(self, deadline: float) -> None:
        with self._lock:
            residents = list(self._resident.values())
        for resident in residents:
            batcher = getattr(getattr(resident.loaded, "service", None), "batcher", None)
            if batcher is not None:
                batcher.drain(deadline)

    # ------------------------------------------------------------ residency (this worker)

    def _acquire(self, registration: Registration) -> tuple[Resident, bool]:
        name = registration.name
        with self._lock:
            resident = self._resident.get(name)
            if resident is not None and resident.registration.id == registration.id:
                resident.in_flight += 1
                self._resident.move_to_end(name)
                return resident, True
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:  # concurrent requests for one model in this worker: one load, the others wait for it
            with self._lock:
                resident = self._resident.get(name)
                if resident is not None and resident.registration.id == registration.id:
                    resident.in_flight += 1
                    self._resident.move_to_end(name)
                    return resident, False
                stale = self._resident.pop(name, None)  # same name, older registration
            if stale is not None:
                self._retire(stale)
            return self._load_resident(registration), False

    def _load_resident(self, registration: Registration) -> Resident:
        cost = self.cost_of(Path(registration.model_dir))
        self._make_room(registration.name, cost)
        try:
            started = time.perf_counter()
            loaded = self.loader(Path(registration.model_dir))
        except BaseException:
            with self._lock:
                self._reserved -= cost
            raise
        resident = Resident(registration, cost, loaded, in_flight=1)
        with self._lock:
            self._reserved -= cost
            self._resident[registration.name] = resident
            self.loads += 1
        self._mark_resident(registration.name, True)
        log.info(
            "model %r resident in worker %d (%.2f s, ~%.1f MB)",
            registration.name,
            self.pid,
            time.perf_counter() - started,
            cost / 2**20,
        )
        if self.registration(registration.name) != registration:  # unloaded while it was loading
            with self._lock:
                if self._resident.get(registration.name) is resident:
                    del self._resident[registration.name]
            resident.retired = True
        return resident

    def _make_room(self, name: str, cost: int) -> None:
        """Evict idle models, least recently used first, until ``cost`` fits the budget and the instance; else 507."""
        budget = self.config.memory_budget_bytes
        if cost > budget:
            raise _out_of_memory(
                name, f"it needs ~{cost / 2**20:.0f} MB, the budget per worker is {budget / 2**20:.0f} MB"
            )
        while True:
            with self._lock:
                used = sum(r.cost for r in self._resident.values()) + self._reserved
                count = len(self._resident)
                over_budget = used + cost > budget
                over_count = self.config.max_resident is not None and count >= self.config.max_resident
                short = self.headroom() < cost + HEADROOM_RESERVE_BYTES
                if not (over_budget or over_count or short):
                    self._reserved += cost
                    return
                victim = next((r for r in self._resident.values() if r.in_flight == 0), None)
                if victim is None:
                    why = (
                        "the instance's free memory is too low"
                        if short and not (over_budget or over_count)
                        else f"{count} resident model(s) use {used / 2**20:.0f} of {budget / 2**20:.0f} MB"
                    )
                    raise _out_of_memory(name, f"{why} and every one is serving a request")
                del self._resident[victim.registration.name]
            log.info("evicting idle model %r from worker %d to make room", victim.registration.name, self.pid)
            self._retire(victim)
            if short and not (over_budget or over_count):
                gc.collect()

    def _release(self, resident: Resident) -> None:
        with self._lock:
            resident.in_flight -= 1
            close = resident.retired and resident.in_flight == 0
        if close:
            self._close(resident)

    def _retire(self, resident: Resident) -> None:
        """Out of the cache: closed now if idle, else by its last request."""
        with self._lock:
            resident.retired = True
            close = resident.in_flight == 0
        if close:
            self._close(resident)

    def _close(self, resident: Resident) -> None:
        # Reference counting frees the model here; a full gc.collect() (~0.1 s with torch loaded) is left
        # to unload(), which must free everything, so that evictions stay cheap for the miss they serve.
        loaded, resident.loaded = resident.loaded, None
        if loaded is not None:
            loaded.close()
        self._mark_resident(resident.registration.name, False)

    def _mark_resident(self, name: str, held: bool) -> None:
        folder = self.resident_dir / quote(name, safe="")
        if held:
            folder.mkdir(exist_ok=True)
            (folder / str(self.pid)).touch()
        else:
            with suppress(FileNotFoundError):
                (folder / str(self.pid)).unlink()

    def _holders(self, name: str) -> list[int]:
        """Live workers that still hold ``name`` (a dead worker's mark does not count)."""
        folder = self.resident_dir / quote(name, safe="")
        holders = []
        for mark in folder.glob("*") if folder.is_dir() else ():
            with suppress(ValueError, ProcessLookupError):
                os.kill(int(mark.name), 0)
                holders.append(int(mark.name))
        return holders

    def _evict_unregistered(self) -> None:
        with self._lock:
            gone = [r for r in self._resident.values() if self.registration(r.registration.name) != r.registration]
            for resident in gone:
                del self._resident[resident.registration.name]
        for resident in gone:
            log.info("model %r unloaded from worker %d", resident.registration.name, self.pid)
            self._retire(resident)
        if gone:  # unloaded models must leave nothing behind, reference cycles included
            gc.collect()

    def _sweep_forever(self) -> None:
        seen, full_sweep_at = None, 0.0
        while True:
            time.sleep(SWEEP_INTERVAL_S)
            try:
                # Registrations change only by link/unlink in the folder, which moves its mtime: skip idle sweeps
                # (but sweep fully each second: mtime ticks are coarse, two changes can share one).
                changed = self.models_dir.stat().st_mtime_ns
                if changed == seen and time.monotonic() < full_sweep_at:
                    continue
                seen, full_sweep_at = changed, time.monotonic() + 1.0
                self._evict_unregistered()
            except Exception:  # never let the sweeper die: unloads would stop freeing memory
                log.exception("multi-model sweeper: unexpected error")


def _page_number(raw: Any, what: str, default: int, low: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise RequestError(f"{what}: {raw!r} is not an integer") from None
    if value < low:
        raise RequestError(f"{what}: {raw!r} must be at least {low}")
    return min(value, LIST_PAGE_MAX) if what == "limit" else value


def _not_loaded(name: str) -> RequestError:
    return RequestError(f"model {name!r} is not loaded; load it with POST /models first", status=404)


def _out_of_memory(name: str, why: str) -> RequestError:
    return RequestError(
        f"model {name!r} cannot be loaded: memory budget exhausted ({why}); "
        "unload idle models or raise DEEPAR_MME_MEMORY_MB",
        status=507,
    )
