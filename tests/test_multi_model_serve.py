"""Multi-model endpoints through `container/serve` (SAGEMAKER_MULTI_MODEL=true) and through the image.

Models sit where SageMaker puts them, `/opt/ml/models/<name>/model` (copies of the session's tiny
torch model); two gunicorn workers, so a load, an invoke and an unload may each reach a different one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .conftest import running_server
from .test_image import container_names, docker, image, start_server  # noqa: F401 - fixtures

BODY = {
    "instances": [
        {"start": "2024-01-01 00:00:00", "target": [1.0, 2.0, 3.0] * 8},
        {"start": "2024-01-01 00:00:00", "target": [5.0, 4.0] * 10},
    ],
    "configuration": {"num_samples": 20, "output_types": ["mean", "quantiles"], "quantiles": ["0.1", "0.9"]},
}


def models_root(trained: Path, root: Path, names: list[str], big: str = "") -> Path:
    for name in names:
        shutil.copytree(trained / "model", root / "models" / name / "model")
    if big:  # a model whose files count ~64 MB (sparse: no disk used), over a 32 MB budget
        shutil.copytree(trained / "model", root / "models" / big / "model")
        with open(root / "models" / big / "model" / "padding.bin", "wb") as f:
            f.truncate(64 * 2**20)
    return root


@pytest.fixture(scope="module")
def mme(torch_model, tmp_path_factory):
    root = models_root(torch_model, tmp_path_factory.mktemp("mme"), ["a", "b", "c"], big="huge")
    with running_server(
        root,
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        DEEPAR_MME_MEMORY_MB="32",
        DEEPAR_MME_MAX_MODELS="2",
    ) as server:
        server.root = root
        yield server


def load(server, name: str, url: str | None = None) -> requests.Response:
    url = url or str(server.root / "models" / name / "model")
    return requests.post(server.url + "/models", json={"model_name": name, "url": url}, timeout=60)


def invoke(server, name: str, body=BODY, **headers) -> requests.Response:
    headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz", **headers}
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(f"{server.url}/models/{name}/invoke", data=data, headers=headers, timeout=60)


def assert_forecasts(response: requests.Response, series: int = 2) -> None:
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == series
    for p in predictions:
        assert set(p) == {"mean", "quantiles"} and len(p["mean"]) == 6 and set(p["quantiles"]) == {"0.1", "0.9"}


def test_ping_and_list_with_zero_models_then_load_list_describe(mme):
    assert requests.get(mme.url + "/ping", timeout=5).status_code == 200
    assert requests.get(mme.url + "/models", timeout=5).json() == {"models": []}
    assert load(mme, "a").status_code == 200
    duplicate = load(mme, "a")
    assert duplicate.status_code == 409 and "already loaded" in duplicate.json()["error"]
    missing = load(mme, "x", str(mme.root / "models" / "x" / "model"))
    assert missing.status_code == 404 and "models/x/model" in missing.json()["error"]
    (mme.root / "models" / "empty").mkdir(exist_ok=True)
    not_a_model = load(mme, "y", str(mme.root / "models" / "empty"))
    assert not_a_model.status_code == 400 and "deepar-metadata.json" in not_a_model.json()["error"]
    bad_body = requests.post(mme.url + "/models", data="nope", timeout=5)
    assert bad_body.status_code == 400
    url = str(mme.root / "models" / "a" / "model")
    assert requests.get(mme.url + "/models", timeout=5).json() == {"models": [{"modelName": "a", "modelUrl": url}]}
    assert requests.get(mme.url + "/models/a", timeout=5).json() == {"modelName": "a", "modelUrl": url}
    assert requests.get(mme.url + "/models/x", timeout=5).status_code == 404


def test_bad_names_and_urls_are_400_with_the_reason(mme, tmp_path):
    """#23 item 12 through container/serve: `.`/`..` named shared folders, 251-1,024 characters gave a 500,
    and the url of POST /models could name any folder of the container."""
    url = str(mme.root / "models" / "a" / "model")
    for name in (".", ".."):
        answer = load(mme, name, url)
        assert answer.status_code == 400 and "names a folder" in answer.json()["error"], answer.text
    for size in (251, 600, 1024):
        answer = load(mme, "n" * size, url)
        assert answer.status_code == 400 and f"{size} characters" in answer.json()["error"], answer.text
        assert requests.get(f"{mme.url}/models/{'n' * size}", timeout=5).status_code == 400
    for encoded in ("%2E%2E", "%2E"):  # what a raw client can send past URL normalisation
        assert requests.get(f"{mme.url}/models/{encoded}", timeout=5).status_code == 400
        assert requests.delete(f"{mme.url}/models/{encoded}", timeout=5).status_code == 400
        assert invoke(mme, encoded).status_code == 400
    outside = tmp_path / "model"
    shutil.copytree(mme.root / "models" / "a" / "model", outside)
    for bad in (str(outside), str(mme.root / "models" / ".." / "models" / ".." / "model"), "/etc"):
        answer = load(mme, "elsewhere", bad)
        assert answer.status_code == 400 and "not below the models folder" in answer.json()["error"], answer.text
    assert "elsewhere" not in [m["modelName"] for m in requests.get(mme.url + "/models", timeout=5).json()["models"]]
    assert "Traceback" not in mme.output(tail=None)


def test_invoke_answers_as_the_single_model_server_from_every_worker(mme):
    load(mme, "a")
    with ThreadPoolExecutor(8) as pool:  # enough concurrent requests that both workers answer
        responses = list(pool.map(lambda _: invoke(mme, "a"), range(16)))
    for r in responses:
        assert_forecasts(r)
    lines = invoke(
        mme,
        "a",
        "\n".join(json.dumps(i) for i in BODY["instances"]),
        **{"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"},
    )
    assert lines.status_code == 200 and len(lines.text.splitlines()) == 2
    bad = invoke(mme, "a", {"instances": [{"start": "2024-01-01", "target": [1, "x"]}]})
    assert bad.status_code == 400 and bad.json()["error"].startswith("instances[0].target[1]")
    assert invoke(mme, "nope").status_code == 404
    assert requests.post(mme.url + "/invocations", json=BODY, timeout=5).status_code == 404


def test_models_over_the_resident_cap_are_evicted_and_reloaded(mme):
    for name in "abc":
        assert load(mme, name).status_code in (200, 409)
    # At most 2 resident per worker: a worker that answers all three models must evict one. Which worker
    # answers a request is the front's choice, so go on (bounded) until some worker has had to.
    for name in "abc" * 10:
        assert_forecasts(invoke(mme, name))
        if "evicting idle model" in mme.output():
            break
    assert "evicting idle model" in mme.output()


def test_507_when_the_model_exceeds_the_memory_budget(mme):
    r = load(mme, "huge")
    assert r.status_code == 507 and "DEEPAR_MME_MEMORY_MB" in r.json()["error"]
    assert requests.get(mme.url + "/models/huge", timeout=5).status_code == 404  # not left registered


def test_unload_frees_every_workers_copy_before_answering(mme):
    load(mme, "b")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: invoke(mme, "b"), range(16)))
    r = requests.delete(mme.url + "/models/b", timeout=30)
    assert r.status_code == 200
    log = mme.output()
    workers_with_b = set(re.findall(r"model 'b' resident in worker (\d+)", log))
    freed = set(re.findall(r"model 'b' unloaded from worker (\d+)", log))
    assert workers_with_b and workers_with_b <= freed
    assert all(invoke(mme, "b").status_code == 404 for _ in range(6))
    assert requests.get(mme.url + "/models/b", timeout=5).status_code == 404
    assert requests.delete(mme.url + "/models/b", timeout=5).status_code == 404
    assert load(mme, "b").status_code == 200  # loadable again


def test_image_has_the_label_and_serves_multi_model(image, torch_model, tmp_path, container_names):  # noqa: F811
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", image).stdout)
    assert labels.get("com.amazonaws.sagemaker.capabilities.multi-models") == "true"
    root = models_root(torch_model, tmp_path, ["site-1", "site-2"])
    os.chmod(tmp_path, 0o755)
    url = start_server(image, root, container_names, "SAGEMAKER_MULTI_MODEL=true")
    assert requests.get(url + "/models", timeout=5).json() == {"models": []}
    for name in ("site-1", "site-2"):
        r = requests.post(url + "/models", json={"model_name": name, "url": f"/opt/ml/models/{name}/model"}, timeout=60)
        assert r.status_code == 200, r.text
    listed = requests.get(url + "/models", timeout=5).json()["models"]
    assert [m["modelName"] for m in listed] == ["site-1", "site-2"]
    r = requests.post(url + "/models/site-2/invoke", json=BODY, timeout=60)
    assert_forecasts(r)
    assert requests.delete(url + "/models/site-2", timeout=30).status_code == 200
    assert requests.post(url + "/models/site-2/invoke", json=BODY, timeout=60).status_code == 404
    assert_forecasts(requests.post(url + "/models/site-1/invoke", json=BODY, timeout=60))


def test_evaluation_deploy_multi_model_and_invoke_target_model_requests():
    """tests/sdk/multi_model_check.py under pytest in .venv-sdk: requests checked with botocore's Stubber."""
    from .conftest import SDK_PYTHON, run_nested_pytest

    if not SDK_PYTHON.exists():
        pytest.skip("needs .venv-sdk")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    run_nested_pytest(SDK_PYTHON, "tests/sdk/multi_model_check.py", env)
