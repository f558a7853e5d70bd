"""The multi-model registry in process: LRU under a budget, 404/409/400/507, one load per model, unload frees.

Models are fake (a loader that counts its calls), so these run in milliseconds; the real routes with
real models are in tests/test_multi_model_serve.py.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sagemaker_deepar.contract import METADATA_FILE
from sagemaker_deepar.serving.codec import RequestError
from sagemaker_deepar.serving.multi_model import ModelRegistry, MultiModelConfig, multi_model_enabled

pytestmark = pytest.mark.unit

COST = 10


class FakeModel:
    def __init__(self, path: Path):
        self.service = f"service of {path.parent.name}"
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[str] = []
        self.models: list[FakeModel] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> FakeModel:
        with self.lock:
            self.calls.append(path.parent.name)
        time.sleep(self.delay)
        model = FakeModel(path)
        self.models.append(model)
        return model


def model_url(root: Path, name: str) -> str:
    folder = root / "models" / name / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).write_text("{}")
    return str(folder)


def registry(
    tmp_path: Path, budget_models: int = 3, loader=None, headroom=lambda: 1 << 40, max_resident=None, **options
) -> ModelRegistry:
    config = MultiModelConfig(tmp_path / "shared", budget_models * COST, max_resident, tmp_path / "models")
    options.setdefault("sweep", False)
    return ModelRegistry(config, loader or Loader(), cost_of=lambda _: COST, headroom=headroom, **options)


def status(call) -> int:
    with pytest.raises(RequestError) as error:
        call()
    return error.value.status


def invoke(reg: ModelRegistry, name: str) -> bool:
    with reg.use(name) as (service, hit):
        assert service == f"service of {name}"
    return hit


def test_selected_by_sagemaker_multi_model():
    assert multi_model_enabled({"SAGEMAKER_MULTI_MODEL": "true"})
    assert multi_model_enabled({"SAGEMAKER_MULTI_MODEL": "TRUE"})
    assert not multi_model_enabled({})
    assert not multi_model_enabled({"SAGEMAKER_MULTI_MODEL": "false"})


def test_budget_from_env_override_and_from_instance_memory(tmp_path):
    config = MultiModelConfig.from_env(2, {"DEEPAR_MME_MEMORY_MB": "300", "DEEPAR_MME_DIR": str(tmp_path)})
    assert config.memory_budget_bytes == 300 * 2**20 and config.shared_dir == tmp_path
    derived = MultiModelConfig.from_env(2, {"DEEPAR_MME_DIR": str(tmp_path)})
    assert 0 < derived.memory_budget_bytes < MultiModelConfig.from_env(1, {}).memory_budget_bytes
    with pytest.raises(Exception, match="DEEPAR_MME_MEMORY_MB"):
        MultiModelConfig.from_env(1, {"DEEPAR_MME_MEMORY_MB": "lots"})


def test_least_recently_used_idle_model_is_evicted_and_reloaded_on_demand(tmp_path):
    loader = Loader()
    reg = registry(tmp_path, budget_models=3, loader=loader)
    for name in "abc":
        reg.load(name, model_url(tmp_path, name))
    assert invoke(reg, "a") is True  # a is now the most recently used
    reg.load("d", model_url(tmp_path, "d"))
    assert reg.resident_names() == ["c", "a", "d"]  # b was the least recently used
    assert loader.models[1].closed and not loader.models[0].closed
    assert reg.resident_bytes() <= 3 * COST
    assert [m["modelName"] for m in reg.listing()["models"]] == ["a", "b", "c", "d"]  # evicted != unloaded
    assert invoke(reg, "b") is False  # loaded again from its url
    assert loader.calls == ["a", "b", "c", "d", "b"]
    assert "c" not in reg.resident_names()


def test_resident_count_cap(tmp_path):
    reg = registry(tmp_path, budget_models=100, max_resident=2)
    for name in "abc":
        reg.load(name, model_url(tmp_path, name))
    assert reg.resident_names() == ["b", "c"]


def test_status_codes_404_409_400(tmp_path):
    reg = registry(tmp_path)
    url = model_url(tmp_path, "a")
    reg.load("a", url)
    assert status(lambda: reg.load("a", url)) == 409
    assert status(lambda: reg.describe("nope")) == 404
    assert status(lambda: reg.unload("nope")) == 404
    assert status(lambda: invoke(reg, "nope")) == 404
    assert status(lambda: reg.load("b", str(tmp_path / "models" / "missing"))) == 404
    empty = tmp_path / "models" / "empty"
    empty.mkdir()
    assert status(lambda: reg.load("b", str(empty))) == 400
    assert status(lambda: reg.load("", url)) == 400
    assert status(lambda: reg.load("b", None)) == 400
    assert status(lambda: reg.listing(limit="x")) == 400
    assert reg.describe("a") == {"modelName": "a", "modelUrl": url}


def test_artifact_one_folder_down_is_found(tmp_path):
    """A model.tar.gz packed with an extra top-level folder still loads."""
    url = tmp_path / "models" / "x" / "model"
    model_url(url, "inner")  # url/models/inner/model/deepar-metadata.json: two levels down, not found
    assert status(lambda: registry(tmp_path).load("x", str(url))) == 400
    nested = tmp_path / "models" / "nested"
    (nested / "top").mkdir(parents=True)
    (nested / "top" / METADATA_FILE).write_text("{}")
    reg = registry(tmp_path)
    reg.load("n", str(nested))
    assert reg.describe("n")["modelUrl"] == str(nested)


def test_507_when_every_resident_model_is_busy_and_the_model_is_not_registered(tmp_path):
    reg = registry(tmp_path, budget_models=1)
    reg.load("a", model_url(tmp_path, "a"))
    with reg.use("a"):
        assert status(lambda: reg.load("b", model_url(tmp_path, "b"))) == 507
    assert [m["modelName"] for m in reg.listing()["models"]] == ["a"]
    reg.load("b", model_url(tmp_path, "b"))  # a is idle now: evicted to make room
    assert reg.resident_names() == ["b"]


def test_507_when_the_model_is_larger_than_the_budget(tmp_path):
    config = MultiModelConfig(tmp_path / "shared", COST - 1, models_dir=tmp_path / "models")
    reg = ModelRegistry(config, Loader(), cost_of=lambda _: COST, sweep=False)
    with pytest.raises(RequestError, match="DEEPAR_MME_MEMORY_MB") as error:
        reg.load("a", model_url(tmp_path, "a"))
    assert error.value.status == 507


def test_low_instance_memory_evicts_idle_models_then_answers_507(tmp_path):
    free = {"bytes": 1 << 40}
    reg = registry(tmp_path, budget_models=10, headroom=lambda: free["bytes"])
    for name in "ab":
        reg.load(name, model_url(tmp_path, name))
    free["bytes"] = 0  # the instance is short whatever we evict
    assert status(lambda: reg.load("c", model_url(tmp_path, "c"))) == 507
    assert reg.resident_names() == []


def test_two_concurrent_loads_of_one_model_load_it_once(tmp_path):
    loader = Loader(delay=0.3)
    reg = registry(tmp_path, loader=loader)
    url = model_url(tmp_path, "a")
    outcomes: list[int] = []

    def load() -> None:
        try:
            reg.load("a", url)
            outcomes.append(200)
        except RequestError as error:
            outcomes.append(error.status)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [200, 409]
    assert loader.calls == ["a"]


def test_concurrent_invokes_of_a_cold_model_load_it_once(tmp_path):
    loader = Loader(delay=0.3)
    reg = registry(tmp_path, budget_models=1, loader=loader)
    for name in "ab":
        reg.load(name, model_url(tmp_path, name))  # a is registered but evicted
    hits: list[bool] = []
    threads = [threading.Thread(target=lambda: hits.append(invoke(reg, "a"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["a", "b", "a"] and hits == [False] * 6


def test_unload_frees_the_model_before_it_returns_even_with_a_request_in_flight(tmp_path):
    loader = Loader()
    reg = registry(tmp_path, loader=loader)
    reg.load("a", model_url(tmp_path, "a"))
    in_flight = threading.Event()

    def slow_request() -> None:
        with reg.use("a"):
            in_flight.set()
            time.sleep(0.3)

    request = threading.Thread(target=slow_request)
    request.start()
    in_flight.wait()
    reg.unload("a")  # deregistered at once, answered once the request in flight has released it
    assert loader.models[0].closed
    request.join()
    assert status(lambda: invoke(reg, "a")) == 404
    reg.load("b", model_url(tmp_path, "b"))
    reg.unload("b")
    assert loader.models[1].closed and reg.resident_names() == []
    assert reg.listing() == {"models": []}
    reg.load("b", model_url(tmp_path, "b"))  # loadable again after an unload


def test_list_pages_with_next_page_token(tmp_path):
    reg = registry(tmp_path, budget_models=10)
    assert reg.listing() == {"models": []}
    for name in ["e", "a", "d", "c", "b"]:
        reg.load(name, model_url(tmp_path, name))
    first = reg.listing(limit="2")
    assert [m["modelName"] for m in first["models"]] == ["a", "b"]
    second = reg.listing(limit="2", next_page_token=first["nextPageToken"])
    third = reg.listing(limit="2", next_page_token=second["nextPageToken"])
    assert [m["modelName"] for m in second["models"] + third["models"]] == ["c", "d", "e"]
    assert "nextPageToken" not in third


def test_unload_returns_once_every_worker_has_freed_the_model(tmp_path):
    """Two registries on one shared folder stand for two gunicorn workers (b marks with a live pid of its own)."""
    loader_a, loader_b = Loader(), Loader()
    worker_a = registry(tmp_path, loader=loader_a)
    worker_b = registry(tmp_path, loader=loader_b, sweep=True, pid=os.getppid())
    worker_a.load("m", model_url(tmp_path, "m"))
    assert invoke(worker_b, "m") is False  # lazily loaded from the shared registration
    assert status(lambda: worker_b.load("m", model_url(tmp_path, "m"))) == 409
    worker_a.unload("m")
    assert loader_b.models[0].closed and worker_b.resident_names() == []  # b's sweeper freed it first
    assert status(lambda: invoke(worker_b, "m")) == 404


def test_names_that_are_folders_or_too_long_are_400_with_the_reason(tmp_path):
    """#23 item 12: `.`/`..` named the registry's own folders; names over ~250 characters gave a 500."""
    reg = registry(tmp_path)
    url = model_url(tmp_path, "a")
    for name in (".", ".."):
        for call in (
            lambda name=name: reg.load(name, url),
            lambda name=name: reg.describe(name),
            lambda name=name: reg.unload(name),
            lambda name=name: invoke(reg, name),
        ):
            with pytest.raises(RequestError, match="names a folder") as error:
                call()
            assert error.value.status == 400
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["models", "resident"]
    long = "m" * 251
    with pytest.raises(RequestError, match=r"251 characters \(251 once URL-quoted\); at most 250") as error:
        reg.load(long, url)
    assert error.value.status == 400
    assert status(lambda: reg.describe("x" * 1024)) == 400 and status(lambda: invoke(reg, "/" * 100)) == 400
    reg.load("m" * 250, url)  # the longest name that fits a file name: loads
    reg.load("..a", url)  # dots inside a name are plain characters
    assert {m["modelName"] for m in reg.listing()["models"]} == {"m" * 250, "..a"}


def test_url_must_lie_below_the_models_folder(tmp_path):
    """#23 item 12: POST /models loaded any folder of the file system it was pointed at."""
    reg = registry(tmp_path)
    outside = tmp_path / "elsewhere" / "model"
    outside.mkdir(parents=True)
    (outside / METADATA_FILE).write_text("{}")
    link = tmp_path / "models" / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside.parent)
    inner = model_url(tmp_path, "inner")
    for url in (
        str(outside),  # absolute, elsewhere
        str(tmp_path / "models" / ".." / "elsewhere" / "model"),  # climbs out
        str(link / "model"),  # a link below the folder that leads out
        str(tmp_path / "models"),  # the folder itself
        "models/inner/model",  # relative: would depend on the worker's working folder
        "/nonexistent/x",  # refused before anything is probed: 400, not 404
    ):
        with pytest.raises(RequestError, match="url") as error:
            reg.load("x", url)
        assert error.value.status == 400, url
    reg.load("inner", inner)
    assert reg.listing()["models"] == [{"modelName": "inner", "modelUrl": inner}]
