"""Black-box tests of `container/serve`: request variants, errors, batch transform, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from sagemaker_deepar.serving.server_config import batch_payload_mb

from .conftest import Server, running_server
from .helpers import gunicorn_workers

PL = 6
DEFAULT_QUANTILES = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


def instance(n: int = 24, **extra) -> dict:
    return {"start": "2024-01-01 00:00:00", "target": [10.0 + (i % 5) for i in range(n)], **extra}


def feature_instance(n: int = 24, dyn_len: int | None = None, **extra) -> dict:
    dynamic_feat = [[float(i % 24) for i in range(dyn_len if dyn_len is not None else n + PL)]]
    return instance(n, **{"cat": [1], "dynamic_feat": dynamic_feat, **extra})


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()["error"]


# ---------------------------------------------------------------- requests and defaults


def test_default_configuration_is_the_builtins(server: Server):
    r = server.post({"instances": [instance(), instance(30)]})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    predictions = r.json()["predictions"]
    assert len(predictions) == 2
    for p in predictions:
        assert set(p) == {"mean", "quantiles"} and len(p["mean"]) == PL
        assert list(p["quantiles"]) == DEFAULT_QUANTILES and all(len(v) == PL for v in p["quantiles"].values())
        for step in range(PL):  # quantiles are ordered
            column = [p["quantiles"][q][step] for q in DEFAULT_QUANTILES]
            assert column == sorted(column)


def test_output_types_and_quantile_keys_as_sent(server: Server):
    cfg = {"num_samples": 7, "output_types": ["samples", "quantiles"], "quantiles": [0.5, "0.90", 0.25]}
    p = server.post({"instances": [instance()], "configuration": cfg}).json()["predictions"][0]
    assert set(p) == {"samples", "quantiles"} and list(p["quantiles"]) == ["0.5", "0.90", "0.25"]
    assert len(p["samples"]) == 7 and all(len(s) == PL for s in p["samples"])
    only_mean = server.post({"instances": [instance()], "configuration": {"output_types": ["mean"]}}).json()
    assert set(only_mean["predictions"][0]) == {"mean"}


def test_quantiles_follow_the_samples(server: Server):
    import numpy as np

    cfg = {"num_samples": 200, "output_types": ["samples", "quantiles", "mean"], "quantiles": ["0.2", "0.8"]}
    p = server.post({"instances": [instance()], "configuration": cfg}).json()["predictions"][0]
    samples = np.array(p["samples"])
    assert np.allclose(p["mean"], samples.mean(axis=0), rtol=1e-4)
    assert np.allclose(p["quantiles"]["0.2"], np.quantile(samples, 0.2, axis=0), rtol=1e-4)


def test_charset_parameter_and_jsonlines_in_and_out(server: Server):
    r = server.post({"instances": [instance()]}, content_type="application/json; charset=utf-8")
    assert r.status_code == 200
    body = "\n".join(json.dumps(instance(n)) for n in (10, 20, 30)) + "\n\n"
    r = server.post(body, content_type="application/jsonlines", Accept="application/jsonlines")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/jsonlines"
    lines = r.text.splitlines()
    assert len(lines) == 3 and all(set(json.loads(line)) == {"mean", "quantiles"} for line in lines)
    r = server.post({"instances": [instance()]}, Accept="application/json, text/plain;q=0.5")
    assert r.status_code == 200


def test_cold_start_and_missing_values(server: Server):
    cases = [instance(0), {"start": "2024-01-01", "target": [None, "NaN", 3.0, None]}, instance(1)]
    p = server.post({"instances": cases, "configuration": {"output_types": ["mean"]}}).json()["predictions"]
    assert [len(x["mean"]) for x in p] == [PL] * 3


def test_features_are_used_and_checked(feature_server: Server):
    r = feature_server.post({"instances": [feature_instance(), feature_instance(0)]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    bad = [feature_instance(), feature_instance(24, dyn_len=24)]
    assert (
        error_of(feature_server.post({"instances": bad}), 400)
        == "instances[1].dynamic_feat[0]: length 24, expected 30 (len(target) + prediction_length)"
    )
    assert "instances[0].cat: required" in error_of(feature_server.post({"instances": [instance()]}), 400)
    assert "instances[0].cat[0]: 2 is out of range" in error_of(
        feature_server.post({"instances": [feature_instance(cat=[2])]}), 400
    )
    no_dyn = {k: v for k, v in feature_instance().items() if k != "dynamic_feat"}
    assert "instances[0].dynamic_feat: required" in error_of(feature_server.post({"instances": [no_dyn]}), 400)


def test_mxnet_model_is_served(mxnet_model: Path):
    s = Server(mxnet_model)
    try:
        s.wait_ready()
        cfg = {"num_samples": 150, "output_types": ["samples", "mean"]}
        p = s.post({"instances": [instance(), instance(0)], "configuration": cfg}).json()["predictions"]
        assert len(p) == 2 and len(p[0]["samples"]) == 150 and len(p[1]["mean"]) == PL
    finally:
        s.stop()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body,status,expected",
    [
        (b"{not json", 400, "body: not valid JSON"),
        (b'{"instances": []}', 400, "instances: expected a non-empty list"),
        (b"[1, 2]", 400, 'body: expected a JSON object {"instances"'),
        (b'{"instances": [{"start": "2024-01-01"}]}', 400, "instances[0].target: missing"),
        (
            b'{"instances": [{"start": "2024-01-01T00:00:00Z", "target": [1]}]}',
            400,
            "instances[0].start: '2024-01-01T00:00:00Z' has a time zone",
        ),
        (
            b'{"instances": [{"start": "2024-01-01", "target": [1, "x"]}]}',
            400,
            "instances[0].target[1]: 'x' is not a number",
        ),
        (
            b'{"instances": [{"start": "2024-01-01", "target": [1]}], "configuration": {"num_samples": 0}}',
            400,
            "configuration.num_samples: 0",
        ),
        (
            b'{"instances": [{"start": "2024-01-01", "target": [1]}], "configuration": {"output_types": ["median"]}}',
            400,
            "configuration.output_types",
        ),
        (
            b'{"instances": [{"start": "2024-01-01", "target": [1]}], "configuration": {"quantiles": [1.5]}}',
            400,
            "configuration.quantiles[0]: 1.5",
        ),
        (
            b'{"instances": [{"start": "2024-01-01", "target": [1]}], "configuration": {"output_type": ["mean"]}}',
            400,
            "configuration: unknown field(s) output_type",
        ),
        (b'{"instances": [{"start": "2024-01-01", "target": [1]}], "extra": 1}', 400, "body: unknown field(s) extra"),
    ],
)
def test_bad_requests_say_what_and_where(server: Server, body, status, expected):
    message = error_of(server.post(body), status)
    assert message.startswith(expected), message


def test_unsupported_content_type_is_415_with_the_builtins_wording(server: Server):
    r = server.post("a,b\n1,2", content_type="text/csv")
    assert error_of(r, 415) == "Customer Error: Content-Type header value 'text/csv' not supported"


def test_unsupported_accept_is_406(server: Server):
    assert "Accept header value 'text/csv' not supported" in error_of(
        server.post({"instances": [instance()]}, Accept="text/csv"), 406
    )


def test_unknown_path_and_method(server: Server):
    assert error_of(requests.get(server.url + "/nope", timeout=5), 404).startswith("Not Found")
    assert error_of(requests.get(server.url + "/invocations", timeout=5), 405).startswith("Method Not Allowed")


def test_request_over_the_budget_is_refused(server: Server):
    body = {"instances": [instance(5)] * 30, "configuration": {"num_samples": 10_000}}
    assert "request too large: 30 series x 10000 samples" in error_of(server.post(body), 400)


def test_body_over_the_limit_is_413(torch_model: Path):
    s = Server(torch_model, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    try:
        s.wait_ready()
        big = {"instances": [instance(20_000)] * 10}
        assert "body larger than 1 MB" in error_of(s.post(big), 413)
        assert s.post({"instances": [instance()]}).status_code == 200
    finally:
        s.stop()


def test_invalid_server_settings_fail_at_start(torch_model: Path):
    s = Server(torch_model, DEEPAR_INFERENCE_CONFIG="{bad")
    try:
        assert s.process.wait(timeout=60) == 1
        assert "DEEPAR_INFERENCE_CONFIG is not valid JSON" in s.output()
    finally:
        s.stop()


# ---------------------------------------------------------------- batch transform


@pytest.fixture(scope="module")
def batch_server(torch_model):
    config = json.dumps({"num_samples": 30, "output_types": ["mean", "quantiles"], "quantiles": ["0.5"]})
    with running_server(
        torch_model,
        SAGEMAKER_BATCH="true",
        SAGEMAKER_MAX_CONCURRENT_TRANSFORMS="3",
        DEEPAR_INFERENCE_CONFIG=config,
        DEEPAR_FORWARD_FIELDS="item_id",
    ) as s:
        yield s


def test_execution_parameters(batch_server: Server):
    r = requests.get(batch_server.url + "/execution-parameters", timeout=5)
    # The default body limit is what one worker forecasts inside the default 60 s timeout (docs/reliability.md).
    assert r.json() == {
        "MaxConcurrentTransforms": 3,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": batch_payload_mb(60),
    }


def test_batch_single_record(batch_server: Server):
    r = batch_server.post(json.dumps(instance(item_id="sensor-1")) + "\n", content_type="application/jsonlines")
    lines = r.text.splitlines()
    assert r.status_code == 200 and len(lines) == 1
    assert json.loads(lines[0])["item_id"] == "sensor-1" and list(json.loads(lines[0])["quantiles"]) == ["0.5"]


def test_batch_multi_record_keeps_one_line_per_input_line(batch_server: Server):
    inputs = [json.dumps(instance(10 + i, item_id=f"s{i}")) for i in range(7)]
    inputs[3] = '{"start": "2024-01-01", "target": [1, "bad"], "item_id": "s3"}'
    inputs[5] = "not json"
    body = "\n".join(inputs[:2]) + "\n\n" + "\n".join(inputs[2:]) + "\n"
    r = batch_server.post(body, content_type="application/jsonlines")
    assert r.status_code == 200
    out = [json.loads(line) for line in r.text.splitlines()]
    assert len(out) == 7
    assert out[3] == {"error": "line 5: target[1]: 'bad' is not a number (missing values are null or \"NaN\")"}
    assert out[5]["error"].startswith("line 7: not valid JSON")
    assert [o.get("item_id") for o in out] == ["s0", "s1", "s2", None, "s4", None, "s6"]
    assert all(set(o) == {"item_id", "mean", "quantiles"} for i, o in enumerate(out) if i not in (3, 5))


def test_batch_accepts_a_whole_instances_request(batch_server: Server):
    r = batch_server.post({"instances": [instance(), instance()]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


# ---------------------------------------------------------------- lifecycle


def snapshot(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if "serve-" not in p.name}


def test_ping_503_until_loaded_and_nothing_written_under_opt_ml(torch_model: Path):
    before = snapshot(torch_model)
    s = Server(torch_model)
    try:
        seen = s.wait_ready()
        assert seen[0] == 503 and set(seen[:-1]) == {503} and seen[-1] == 200
        assert s.post({"instances": [instance()]}).status_code == 200
        # Served by its ONNX network: the master imports onnxruntime, the forked worker opens its own session.
        # (A torch-served model is loaded once, in the master: tests/test_onnx.py checks both runtimes.)
        output = s.output(tail=None)
        assert "onnx runtime imported in the gunicorn master" in output
        assert "model loaded (torch backend, onnx runtime" in output
    finally:
        s.stop()
    assert snapshot(torch_model) == before


def test_sigterm_lets_the_request_in_flight_finish(torch_model: Path):
    s = Server(torch_model)
    try:
        s.wait_ready()
        result: dict = {}
        slow = {"instances": [instance(200)] * 100, "configuration": {"num_samples": 100}}
        thread = threading.Thread(target=lambda: result.setdefault("r", s.post(slow)))
        thread.start()
        time.sleep(1.0)
        sent = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        assert s.process.wait(timeout=30) == 0 and time.monotonic() - sent < 30
        assert result["r"].status_code == 200 and len(result["r"].json()["predictions"]) == 100
    finally:
        s.stop()


def test_a_killed_worker_is_replaced(torch_model: Path):
    s = Server(torch_model)
    try:
        s.wait_ready()
        before = gunicorn_workers(s.process.pid)
        worker = before[0]
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            pids = gunicorn_workers(s.process.pid)
            if len(pids) == len(before) and worker not in pids:
                break
            time.sleep(0.2)
        assert len(pids) == len(before) and worker not in pids, (before, pids)
        s.wait_ready()
        assert s.post({"instances": [instance()]}).status_code == 200
        assert s.process.poll() is None
    finally:
        s.stop()


def test_a_model_that_cannot_load_stops_the_server_with_the_reason(tmp_path: Path):
    (tmp_path / "model").mkdir()  # an empty model folder: no metadata, no predictor
    s = Server(tmp_path)
    try:
        assert s.process.wait(timeout=120) != 0
        output = s.output()
        assert "the model could not be loaded from" in output and "deepar-metadata.json not found" in output
    finally:
        s.stop()


def test_a_400_names_every_bad_instance_one_per_line(server: Server):
    """Issue #23 item 11: a client (serverless batch_forecast) removes them all and resends once."""
    bad = [instance(), instance(target=[1.0, "x"]), instance(), instance(start="yesterday"), instance()]
    lines = error_of(server.post({"instances": bad}), 400).splitlines()
    assert [line.split(".", 1)[0] for line in lines] == ["instances[1]", "instances[3]"], lines
    assert lines[0] == "instances[1].target[1]: 'x' is not a number (missing values are null or \"NaN\")"
    many = [instance(target=["x"])] * 150
    assert len(error_of(server.post({"instances": many}), 400).splitlines()) == 100  # a bounded answer
