"""Property-based fuzz of /invocations: odd and malformed payloads never get a 5xx, and every 4xx is JSON."""

from __future__ import annotations

import json

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

starts = (
    st.sampled_from(
        ["2024-01-01", "2024-01-01 00:00:00", "2024-13-01", "2024-01-01T00:00:00Z", "", "yesterday", "1677-01-01"]
    )
    | json_scalars
)
numbers = (
    st.floats(-1e6, 1e6, allow_nan=False)
    | st.integers(-(10**6), 10**6)
    | st.sampled_from([None, "NaN", "1.5", "x", True, [1], 1e39])
)
targets = st.lists(numbers, max_size=40) | json_values
instances = st.fixed_dictionaries(
    {"start": starts, "target": targets},
    optional={
        "cat": json_values | st.lists(st.integers(-2, 3), max_size=3),
        "dynamic_feat": json_values,
        "extra": json_values,
    },
)
configurations = (
    st.fixed_dictionaries(
        {},
        optional={
            "num_samples": st.integers(-3, 40) | json_values,
            "output_types": st.lists(st.sampled_from(["mean", "quantiles", "samples", "median", ""]), max_size=4)
            | json_values,
            "quantiles": st.lists(st.floats(-1, 2) | st.sampled_from(["0.5", "0.9", "a", "1"]), max_size=4)
            | json_values,
        },
    )
    | json_values
)
requests_ = (
    st.fixed_dictionaries(
        {"instances": st.lists(instances, max_size=4) | json_values}, optional={"configuration": configurations}
    )
    | json_values
)

# Valid shapes with odd values: empty or all-missing targets, extreme magnitudes, odd start dates.
good_numbers = st.floats(-1e30, 1e30, allow_nan=False) | st.integers(-(10**9), 10**9) | st.sampled_from([None, "NaN"])
good_instances = st.fixed_dictionaries(
    {
        "start": st.sampled_from(["2024-01-01", "2024-02-29 23:00:00", "1970-01-01 00:00:00", "2262-01-01"]),
        "target": st.lists(good_numbers, max_size=60),
    }
)
good_requests = st.fixed_dictionaries(
    {"instances": st.lists(good_instances, min_size=1, max_size=5)},
    optional={
        "configuration": st.fixed_dictionaries(
            {},
            optional={
                "num_samples": st.integers(1, 50),
                "output_types": st.lists(st.sampled_from(["mean", "quantiles", "samples"]), min_size=1, max_size=3),
                "quantiles": st.lists(
                    st.floats(0.001, 0.999) | st.sampled_from(["0.5", "0.05"]), min_size=1, max_size=4
                ),
            },
        )
    },
)

bodies = (
    good_requests.map(lambda r: json.dumps(r).encode())
    | good_requests.map(lambda r: json.dumps(r).encode())
    | requests_.map(lambda r: json.dumps(r).encode())
    | st.binary(max_size=200)
    | st.lists(instances, min_size=1, max_size=4).map(lambda xs: b"\n".join(json.dumps(x).encode() for x in xs))
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/jsonlines",
        "application/json; charset=utf-8",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ]
)
accepts = st.sampled_from(
    ["application/json", "application/json", "application/jsonlines", "*/*", "", "text/csv", "application/*"]
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies, content_type=content_types, accept=accepts)
def check_payload(server: Server, body: bytes, content_type: str, accept: str) -> None:
    headers = {"Content-Type": content_type, "Accept": accept}
    r = requests.post(server.url + "/invocations", data=body, headers=headers, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text, body, headers)
    if r.status_code >= 400:  # the error schema: exactly {"error": "<what and where>"}
        assert r.headers["Content-Type"].startswith("application/json")
        payload = r.json()
        assert list(payload) == ["error"] and isinstance(payload["error"], str) and payload["error"].strip()
        assert "Traceback" not in r.text and "<html" not in r.text.lower()
        return
    assert r.status_code == 200
    if r.headers["Content-Type"] == "application/jsonlines":
        predictions = [json.loads(line) for line in r.text.splitlines()]
    else:
        assert r.headers["Content-Type"] == "application/json"
        predictions = r.json()["predictions"]
    assert predictions and "null" not in r.text  # a forecast is finite numbers, never nulls
    for p in predictions:
        assert p and set(p) <= {"mean", "quantiles", "samples"}
        for values in [p.get("mean", []), *p.get("quantiles", {}).values(), *p.get("samples", [])]:
            assert all(isinstance(v, (int, float)) for v in values)


def test_fuzzed_payloads_never_break_the_server(server: Server):
    check_payload(server)
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    assert server.process.poll() is None
    assert "Traceback" not in server.output()
