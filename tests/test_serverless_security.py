"""Issue #23, the serverless part, in process: the upload topic's key (item 4), bad lines that used to
fail a whole object or answer a 502 (item 10), rejections that name no series (item 11), bounded
streamed reads (item 13), and the low items (TLS-only buckets, log retention, no backend text to API
callers, the pollutant allow-list). The same behaviours through deploy/emulate on moto server and a
real `container/serve` are in test_serverless.py."""

from __future__ import annotations

import gzip
import io
import json
import math
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from sagemaker_deepar import contract
from serverless import stack
from serverless.handlers import batch_forecast, forecast_api, forecasting, inputs

pytestmark = pytest.mark.unit

PSEUDO = {"AWS::StackName": "st", "AWS::AccountId": "111122223333", "AWS::Partition": "aws", "AWS::Region": "r"}
PARAMS = {"ForecastModel": "", "EndpointName": "ep", "ForecastEndpoint": "", "LakeBucket": "", "LogRetentionDays": 30}


def resolved(logical: str) -> dict:
    """A template resource's properties with its intrinsics evaluated for stack "st" in account 111122223333."""
    template = stack.load_template()
    physical = {name: name for name in template["Resources"]}
    resolver = stack.Resolver(template, PARAMS, physical, PSEUDO, lambda logical, kind, name: f"{logical}.{name}")
    return resolver.value(template["Resources"][logical]["Properties"])


# ---------------------------------------------------------------- item 4: can S3 publish to the topic?


def test_item4_the_upload_topic_uses_a_customer_managed_key_whose_policy_lets_the_input_bucket_publish():
    template = stack.load_template()
    resources = template["Resources"]
    topic_key = resources["UploadTopic"]["Properties"]["KmsMasterKeyId"]
    # Not an AWS-managed alias: a key of this template (whose policy the stack controls).
    assert not (isinstance(topic_key, str) and topic_key.startswith("alias/aws/")), topic_key
    key_logical = topic_key.get("Fn::GetAtt", [None])[0] or topic_key.get("Ref")
    assert resources[key_logical]["Type"] == "AWS::KMS::Key"
    assert resources[key_logical]["Properties"]["EnableKeyRotation"] is True
    bucket = resolved("InputBucket")["BucketName"]
    notified = [
        t["Topic"] for t in resources["InputBucket"]["Properties"]["NotificationConfiguration"]["TopicConfigurations"]
    ]
    assert notified == [{"Ref": "UploadTopic"}]
    statements = resolved(key_logical)["KeyPolicy"]["Statement"]
    from_s3 = [s for s in statements if s.get("Principal") == {"Service": "s3.amazonaws.com"}]
    assert len(from_s3) == 1, statements
    (s3,) = from_s3
    assert s3["Effect"] == "Allow" and set(s3["Action"]) == {"kms:GenerateDataKey*", "kms:Decrypt"}
    # Only this stack's input bucket in this account: the confused-deputy conditions.
    assert s3["Condition"]["StringEquals"] == {"aws:SourceAccount": "111122223333"}
    assert s3["Condition"]["ArnEquals"] == {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}
    # The account keeps administering its key (else the key could become unmanageable).
    assert any(s.get("Principal") == {"AWS": "arn:aws:iam::111122223333:root"} for s in statements)
    # The queues SNS and EventBridge send to use SSE-SQS: no key policy to get wrong.
    for queue in ("UploadQueue", "DeadLetterQueue"):
        props = resources[queue]["Properties"]
        assert props.get("SqsManagedSseEnabled") is True and "KmsMasterKeyId" not in props


# ---------------------------------------------------------------- low items in the template


def test_low_items_tls_only_bucket_policies_and_log_retention():
    resources = stack.load_template()["Resources"]
    policies = {r["Properties"]["Bucket"]["Ref"]: r for r in resources.values() if r["Type"] == "AWS::S3::BucketPolicy"}
    buckets = [k for k, r in resources.items() if r["Type"] == "AWS::S3::Bucket"]
    assert sorted(policies) == sorted(buckets) == ["InputBucket", "OutputBucket"]
    for bucket in buckets:
        (statement,) = resolved(f"{bucket}Policy")["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert statement["Resource"] == [f"{bucket}.Arn", f"{bucket}.Arn/*"]
    functions = {
        r["Properties"]["FunctionName"]["Fn::Sub"] for r in resources.values() if r["Type"] == "AWS::Lambda::Function"
    }
    groups = {
        r["Properties"]["LogGroupName"]["Fn::Sub"]: r["Properties"]["RetentionInDays"]
        for r in resources.values()
        if r["Type"] == "AWS::Logs::LogGroup"
    }
    assert groups == {f"/aws/lambda/{name}": {"Ref": "LogRetentionDays"} for name in functions}


# ---------------------------------------------------------------- a forecaster that counts its calls


class CheckingForecaster:
    """Answers like the serving container: the configuration first (the contract's check), then every
    instance, naming each bad one on a line of its 400 (``instances[i]. ...``; ``first_only``: only the
    first, as a container before #23 item 11 did); counts its calls."""

    name = "checking"

    def __init__(self, first_only: bool = False) -> None:
        self.calls, self.first_only = 0, first_only

    def forecast(self, instances: list[dict], configuration: Any = None) -> list[dict]:
        self.calls += 1
        try:
            contract.parse_configuration(configuration)
        except contract.ContractError as error:
            raise forecasting.RequestRejected(str(error)) from None
        bad = [
            f"instances[{i}].cat: expected a list of integers" for i, s in enumerate(instances) if s.get("cat") == "x"
        ]
        if bad:
            raise forecasting.RequestRejected(bad[0] if self.first_only else "\n".join(bad))
        return [{"mean": [float(len(instance["target"]))]} for instance in instances]


def series(i: int, **extra: Any) -> dict:
    return {"start": "2024-01-01 00:00:00", "target": [float(i), 2.0, 3.0], **extra}


def test_item11_a_rejection_naming_no_instance_fails_the_request_once():
    fake = CheckingForecaster()
    with pytest.raises(forecasting.RequestRejected, match="num_samples"):
        forecasting.forecast_isolating(fake, [series(i) for i in range(1000)], {"num_samples": 0})
    assert fake.calls == 1  # today: 1,999 calls, down to one series per request


def test_item11_bad_instances_are_found_by_index_in_one_pass():
    bad = {10, 500, 999}
    instances = [series(i, **({"cat": "x"} if i in bad else {})) for i in range(1000)]
    for fake, calls in ((CheckingForecaster(), 2), (CheckingForecaster(first_only=True), len(bad) + 1)):
        results = forecasting.forecast_isolating(fake, instances)
        assert fake.calls == calls  # every bad one named at once: 2 calls; only the first: one call each
        assert [i for i, r in enumerate(results) if isinstance(r, str)] == sorted(bad)
        assert results[10] == "cat: expected a list of integers" and results[11] == {"mean": [3.0]}


def test_item11_only_size_refusals_split_and_they_are_the_container_s_own_messages():
    from sagemaker_deepar.serving import codec as inference

    refusals = []
    for check, args in ((inference.check_budget, (1000, 100, 10)), (inference.check_response_size, (10, 10**6, 10))):
        with pytest.raises(inference.RequestError) as caught:
            check(*args)
        refusals.append(forecasting.RequestRejected(str(caught.value)))
    assert all(forecasting.splitting_helps(r) for r in refusals)
    assert forecasting.splitting_helps(forecasting.RequestRejected("body larger than 6 MB", 413))
    assert not forecasting.splitting_helps(forecasting.RequestRejected("configuration.num_samples: 0 is not ..."))


def test_item11_an_endpoint_s_model_error_is_read_from_the_container_s_own_message(monkeypatch):
    """SageMaker wraps the container's 400 in prose ("Received client error (400) from primary with
    message ..."); OriginalMessage is the container's body: the bad instance is found by index, no halving."""
    from botocore.stub import Stubber

    for name, value in (
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "x"),
    ):
        monkeypatch.setenv(name, value)
    endpoint = forecasting.EndpointForecaster("deepar")
    container = json.dumps({"error": "instances[2].target: 'x' is not a number"})
    with Stubber(endpoint.client()) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            "ModelError",
            f'Received client error (400) from primary with message "{container}". See the log.',
            424,
            modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": container},
        )
        answer = {"predictions": [{"mean": [1.0]}] * 3}
        stub.add_response(
            "invoke_endpoint", {"Body": io.BytesIO(json.dumps(answer).encode()), "ContentType": "application/json"}
        )
        results = forecasting.forecast_isolating(endpoint, [series(i) for i in range(4)])
        stub.assert_no_pending_responses()
    assert results[2] == "target: 'x' is not a number" and results[3] == {"mean": [1.0]}


# ---------------------------------------------------------------- items 10 and 13 in the batch function


@pytest.fixture
def buckets(monkeypatch, offline_aws):
    import boto3

    monkeypatch.setenv("OUTPUT_BUCKET", "out-bucket")
    monkeypatch.delenv("FORECAST_MODEL", raising=False)
    monkeypatch.delenv("DEEPAR_INFERENCE_CONFIG", raising=False)
    forecasting._cached.clear()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="in-bucket")
    s3.create_bucket(Bucket="out-bucket")
    yield s3
    forecasting._cached.clear()


@pytest.fixture
def container() -> Iterator[tuple[str, list]]:
    """A stand-in serving container: parses each request as the real one does (orjson: 64-bit integers,
    255 levels) and answers one prediction per instance; records every request body."""
    import orjson

    bodies: list = []

    class Serve(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            bodies.append(body)
            try:
                instances = orjson.loads(body)["instances"]
                status, answer = 200, {"predictions": [{"mean": [float(len(i["target"]))]} for i in instances]}
            except orjson.JSONDecodeError as error:
                status, answer = 400, {"error": f"body: not valid JSON ({error})"}
            out = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def upload(s3, body: bytes, key: str = "incoming/a.jsonl") -> dict:
    etag = s3.put_object(Bucket="in-bucket", Key=key, Body=body)["ETag"]
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": key, "eTag": etag.strip('"')}},
    }
    return {
        "Records": [
            {
                "messageId": "m1",
                "body": json.dumps({"Records": [record]}),
                "attributes": {"ApproximateReceiveCount": "1"},
            }
        ]
    }


def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


def read_lines(s3, key: str) -> list[dict]:
    return [json.loads(line) for line in s3.get_object(Bucket="out-bucket", Key=key)["Body"].read().splitlines()]


def test_item10_a_huge_integer_or_deep_nesting_is_one_named_bad_line(monkeypatch, buckets, container):
    url, bodies = container
    monkeypatch.setenv("FORECAST_ENDPOINT", url)
    lines = [
        json.dumps(series(0, id="a")),
        '{"start": "2024-01-01 00:00:00", "target": [1, ' + "9" * 400 + ", 3]}",  # 2: 400 digits
        "[" * 100_000 + "]" * 100_000,  # 3: Python's parser gives up (RecursionError)
        json.dumps(series(3, id={"a": nested(40)})),  # 4: deeper than 32 levels, inside a forwarded id
        '{"start": "2024-01-01 00:00:00", "target": [1, Infinity]}',  # 5: not JSON
        '{"start": "2024-01-01 00:00:00", "target": [1, 1e400]}',  # 6: parses to inf
        '{"start": "2024-01-01 00:00:00", "target": [1], "cat": [' + "1" * 30 + "]}",  # 7: past 64 bits
        json.dumps(series(7, id="b")),
    ]
    answer = batch_forecast.handler(upload(buckets, "\n".join(lines).encode()), None, s3=buckets)
    assert answer == {"batchItemFailures": []}  # today: the whole object fails, 3 times, then the DLQ
    out = read_lines(buckets, "forecasts/a.jsonl.jsonl")
    assert len(out) == 8 and out[0] == {"id": "a", "mean": [3.0]} and out[7] == {"id": "b", "mean": [3.0]}
    errors = {e["location"]: e["error"] for e in read_lines(buckets, "errors/a.jsonl.jsonl")}
    assert list(errors) == [f"incoming/a.jsonl:{n}" for n in range(2, 8)]
    assert errors["incoming/a.jsonl:2"].startswith("target[1]: an integer of 400 digits is out of range")
    assert "nested deeper than 32 levels" in errors["incoming/a.jsonl:3"]
    assert errors["incoming/a.jsonl:4"].startswith("id.a") and "nested deeper" in errors["incoming/a.jsonl:4"]
    assert "Infinity is not JSON" in errors["incoming/a.jsonl:5"]
    assert errors["incoming/a.jsonl:6"] == "target[1]: inf is not a finite number"
    assert errors["incoming/a.jsonl:7"].startswith("cat[0]: an integer of 30 digits")
    assert len(bodies) == 1  # one request, holding only the two good series
    manifest = json.loads(buckets.get_object(Bucket="out-bucket", Key="forecasts/a.jsonl.manifest.json")["Body"].read())
    assert manifest["counts"] == {"series": 8, "forecast": 2, "errors": 6}


def test_item11_a_bad_inference_configuration_fails_the_object_once_without_a_request(monkeypatch, buckets, container):
    url, bodies = container
    monkeypatch.setenv("FORECAST_ENDPOINT", url)
    monkeypatch.setenv("DEEPAR_INFERENCE_CONFIG", json.dumps({"num_samples": 0}))
    body = b"".join(json.dumps(series(i)).encode() + b"\n" for i in range(1000))
    answer = batch_forecast.handler(upload(buckets, body), None, s3=buckets)
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}  # left for redrive, then the DLQ
    assert bodies == []  # today: 1,999 requests, one error line per series
    (report,) = read_lines(buckets, "errors/a.jsonl.jsonl")
    assert report["location"] == "incoming/a.jsonl" and "DEEPAR_INFERENCE_CONFIG.num_samples" in report["error"]
    assert "Contents" not in buckets.list_objects_v2(Bucket="out-bucket", Prefix="forecasts/")


def test_item13_a_gzip_bomb_stops_at_the_named_limit(monkeypatch, buckets, container):
    url, bodies = container
    monkeypatch.setenv("FORECAST_ENDPOINT", url)
    monkeypatch.setenv("BATCH_MAX_INPUT_MB", "1")
    bomb = gzip.compress(b" " * (64 * 2**20), compresslevel=9)  # 64 MB of blanks in ~64 KB
    assert len(bomb) < 2**20
    tracemalloc.start()
    try:
        answer = batch_forecast.handler(upload(buckets, bomb, "incoming/bomb.jsonl.gz"), None, s3=buckets)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert peak < 16 * 2**20, peak  # never the 64 MB: reading stopped at the limit
    (report,) = read_lines(buckets, "errors/bomb.jsonl.gz.jsonl")
    assert report["setting"] == "BATCH_MAX_INPUT_MB" and report["limit_bytes"] == 2**20
    assert "BATCH_MAX_INPUT_MB=1" in report["error"] and "after decompression" in report["error"]
    assert bodies == []


def test_item13_objects_are_read_as_streams_line_by_line():
    class Chunks(io.RawIOBase):
        """An S3 body that says how much was read from it."""

        def __init__(self, data: bytes):
            self.data, self.read_bytes = io.BytesIO(data), 0

        def read(self, n: int = -1) -> bytes:
            chunk = self.data.read(n)
            self.read_bytes += len(chunk)
            return chunk

    good = b"".join(json.dumps(series(i)).encode() + b"\n" for i in range(3))
    stream = Chunks(gzip.compress(good + b"x" * (8 * 2**20)))
    with pytest.raises(inputs.InputTooLarge):
        inputs.read_object("incoming/a.jsonl.gz", stream, limit=len(good) + 100)
    assert stream.read_bytes < 2**20  # the compressed body was not read whole before refusing
    lines = inputs.read_object("incoming/a.jsonl.gz", gzip.compress(good), limit=len(good))
    assert [line.record for line in lines] == [series(i) for i in range(3)]
    csv_body = b"item_id,timestamp,value\na,2024-01-01 00:00:00,1\na,2024-01-01 01:00:00,1e400\n"
    (line,) = inputs.read_object("incoming/a.csv", csv_body)
    assert line.number == 3 and "not a finite number" in line.problem
    with pytest.raises(inputs.UnreadableObject, match="gzip"):
        inputs.read_object("incoming/a.jsonl.gz", gzip.compress(good)[:-20])
    # Parquet: a NaN target value is a missing value (null), an infinite one names its row.
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"start": ["2024-01-01 00:00:00"] * 2, "target": [[1.0, math.nan], [1.0, math.inf]]}), out)
    first, second = inputs.read_object("incoming/a.parquet", out.getvalue())
    assert first.record is not None and first.record["target"] == [1.0, None]
    assert second.number == 2 and second.problem == "target[1]: inf is not a finite number"
    with pytest.raises(ValueError, match="BATCH_MAX_INPUT_MB"):
        inputs.max_input_bytes({"BATCH_MAX_INPUT_MB": "0"})


# ---------------------------------------------------------------- the forecast API


def api(body: str, request_id: str = "req-1") -> tuple[int, dict]:
    event = {"httpMethod": "POST", "resource": "/forecast", "body": body, "requestContext": {"requestId": request_id}}
    answer = forecast_api.handler(event)
    return answer["statusCode"], json.loads(answer["body"])


def test_item10_the_api_answers_400_naming_the_place_not_502(monkeypatch, container):
    url, bodies = container
    monkeypatch.setenv("FORECAST_ENDPOINT", url)
    monkeypatch.delenv("FORECAST_MODEL", raising=False)
    forecasting._cached.clear()
    huge = '{"instances": [{"start": "2024-01-01", "target": [1, ' + "7" * 400 + "]}]}"
    status, body = api(huge)
    assert status == 400 and body["parameter"] == "instances[0]", body
    assert body["message"].startswith("instances[0].target[1]: an integer of 400 digits")
    status, body = api('{"instances": ' + "[" * 50_000 + "]" * 50_000 + "}")
    assert status == 400 and "nested deeper" in body["message"], body
    status, body = api(json.dumps({"instances": [series(1)], "configuration": {"num_samples": -1}}))
    assert status == 400 and body["parameter"] == "configuration" and "num_samples" in body["message"]
    assert bodies == []  # none of these reached the forecaster
    status, body = api(json.dumps({"instances": [series(1)]}))
    assert status == 200 and len(bodies) == 1


def test_low_the_api_hides_backend_text_behind_a_request_id(monkeypatch, caplog):
    class Broken(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            out = b'{"error": "Traceback: /opt/ml/model secret-internal-path"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("FORECAST_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.delenv("FORECAST_MODEL", raising=False)
        forecasting._cached.clear()
        status, body = api(json.dumps({"instances": [series(1)]}), request_id="req-42")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 502 and body["error"] == "forecaster_failed" and body["request_id"] == "req-42"
    assert "secret" not in json.dumps(body) and "req-42" in body["message"]
    assert any("req-42" in r.getMessage() and "secret-internal-path" in r.getMessage() for r in caplog.records)
    # A bug in the function itself: a 500 with the id, not API Gateway's bare 502.
    monkeypatch.setattr(forecast_api, "post_forecast", lambda event: 1 / 0)
    status, body = api("{}", request_id="req-43")
    assert status == 500 and body == {
        "error": "internal_error",
        "message": "internal error (request id req-43)",
        "request_id": "req-43",
    }


def test_low_the_api_forecasts_measured_pollutants_only(monkeypatch, tmp_path):
    """latitude/longitude are lake columns but not measurements: refused before any read or forecast."""
    from ingestion.glue_job import POLLUTANTS

    monkeypatch.setenv("LAKE_URI", str(tmp_path))
    monkeypatch.setenv("FORECAST_ENDPOINT", "http://127.0.0.1:9")  # never called
    forecasting._cached.clear()
    for column in ("latitude", "longitude", "timestamp", "received_at"):
        event = {"httpMethod": "GET", "resource": "/forecast/{device_id}", "pathParameters": {"device_id": "d"}}
        answer = forecast_api.handler({**event, "queryStringParameters": {"pollutant": column}})
        body = json.loads(answer["body"])
        assert answer["statusCode"] == 400 and body["parameter"] == "pollutant", (column, body)
        assert all(p in body["message"] for p in POLLUTANTS)


def test_item10_the_line_check_finds_every_kind_of_bad_value_on_its_quick_path_too():
    """json_problem checks plain float/int lists in C (fsum, min/max): the quick path must miss nothing."""
    cases = {
        "[1.0, null, 2.5]": None,
        "[1e308, 1e308, -1e308]": None,  # fsum's intermediate overflow: checked one by one, all finite
        "[1.0, null, 1e400]": "[2]: inf is not a finite number",
        "[0, null, 18446744073709551615, -9223372036854775808]": None,  # orjson's own bounds
        "[0, null, 18446744073709551616]": "[2]: an integer of 20 digits is out of range (64-bit integers)",
        "[1, 2.0, -9223372036854775809]": "[2]: an integer of 19 digits is out of range (64-bit integers)",
        '{"a": [true, false, "NaN", null]}': None,
        '{"a": {"b": [[1e999]]}}': "a.b[0][0]: inf is not a finite number",
    }
    for text, expected in cases.items():
        assert inputs.json_problem(inputs.loads_line(text)) == expected, text
    assert inputs.json_problem(inputs.loads_line(json.dumps(nested(32)))) is None
    assert inputs.json_problem(inputs.loads_line(json.dumps(nested(33)))).endswith("nested deeper than 32 levels")
