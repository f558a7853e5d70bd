"""The serverless handlers in process: no torch/GluonTS import, object formats, request splitting and
bad-instance isolation, Lambda/API Gateway event shapes, throttling, 502/504, the template resolver."""

from __future__ import annotations

import gzip
import io
import json
import socket
import subprocess
import sys

import pytest

from sagemaker_deepar.settings import SettingsError
from serverless import emulate, stack
from serverless.handlers import batch_forecast, forecast_api, forecasting, inputs

from .helpers import StubHandler, http_stub

pytestmark = pytest.mark.unit


def test_handlers_import_neither_torch_nor_gluonts():
    blocked = "import sys\nfor m in ('torch', 'gluonts', 'mxnet', 'pandas', 'lightning'): sys.modules[m] = None\n"
    code = (
        blocked
        + "import serverless.handlers.batch_forecast, serverless.handlers.forecast_api, serverless.handlers.inputs\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_json_lines_gzip_and_bad_lines_keep_their_numbers():
    body = b'{"start": "2024-01-01", "target": [1, null, "NaN"]}\n\nnot json\n[1]\n{"start": "2024-01-01", "target": "x"}\n'
    lines = inputs.read_object("incoming/a.json.gz", gzip.compress(body))
    assert [(line.number, line.record is not None) for line in lines] == [(1, True), (3, False), (4, False), (5, False)]
    assert "not JSON" in lines[1].problem and "target" in lines[3].problem
    with pytest.raises(inputs.UnreadableObject, match="gzip"):
        inputs.read_object("incoming/a.json.gz", b"\x1f\x8bbroken")


def test_parquet_and_long_csv():
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(
        pa.table({"start": ["2024-01-01 00:00:00", None], "target": [[1.0, 2.0], [3.0]], "id": ["a", "b"]}), out
    )
    lines = inputs.read_object("incoming/x.parquet", out.getvalue())
    assert lines[0].record == {"start": "2024-01-01 00:00:00", "target": [1.0, 2.0], "id": "a"}
    assert lines[1].number == 2 and "start" in lines[1].problem
    with pytest.raises(inputs.UnreadableObject, match="Parquet"):
        inputs.read_object("incoming/x.parquet", b"PAR1 nope")
    csv_body = b"item_id,timestamp,value\nb,2024-01-01 02:00:00,3\na,2024-01-01 00:00:00,1\na,2024-01-01 03:00:00,4\nb,oops,1\nc,2024-01-01 00:00:00,\n"
    got = inputs._long_csv(csv_body, "H")
    assert got[0].number == 5 and "'b'" in got[0].problem and got[0].record is None  # the bad row names its line
    assert got[1].record == {"item_id": "a", "start": "2024-01-01 00:00:00", "target": [1.0, "NaN", "NaN", 4.0]}
    assert got[2].record["target"] == ["NaN"]
    with pytest.raises(inputs.UnreadableObject, match="header"):
        inputs.read_object("incoming/x.csv", b"a,b\n1,2\n")


class Fake:
    name = "fake"

    def __init__(self, bad: set[int]):
        self.bad, self.calls = bad, 0

    def forecast(self, instances, configuration=None):
        self.calls += 1
        for i, instance in enumerate(instances):
            if instance["n"] in self.bad:
                raise forecasting.RequestRejected(f"instances[{i}].target: bad number {instance['n']}")
        return [{"mean": [instance["n"]]} for instance in instances]


def test_bad_instances_are_isolated_and_neighbours_forecast():
    fake = Fake({1, 3})
    results = forecasting.forecast_isolating(fake, [{"n": n} for n in range(5)])
    assert results == [{"mean": [0]}, "target: bad number 1", {"mean": [2]}, "target: bad number 3", {"mean": [4]}]
    assert fake.calls == 3


def test_requests_stay_under_the_payload_limit():
    lines = [b"x" * 400] * 10
    spans = forecasting.chunks(lines, max_bytes=1000, max_count=100)
    assert [len(s) for s in spans] == [2, 2, 2, 2, 2] and spans[-1].stop == 10
    assert [len(s) for s in forecasting.chunks(lines, max_bytes=10**6, max_count=3)] == [3, 3, 3, 1]


def test_sqs_event_shape_and_sns_envelopes():
    message = {
        "MessageId": "m1",
        "ReceiptHandle": "r",
        "Body": '{"Records": []}',
        "Attributes": {"ApproximateReceiveCount": "2"},
        "MD5OfBody": "x",
    }
    event = emulate.sqs_event([message], "arn:aws:sqs:eu-west-1:1:q", "eu-west-1")
    record = event["Records"][0]
    assert record["eventSource"] == "aws:sqs" and record["attributes"]["ApproximateReceiveCount"] == "2"
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    s3_event = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}, {"eventName": "ObjectRemoved:Delete"}]}
    envelope = {"Type": "Notification", "Message": json.dumps(s3_event)}
    assert len(list(batch_forecast.s3_records(json.dumps(envelope)))) == 1
    assert list(batch_forecast.s3_records(json.dumps({"Event": "s3:TestEvent"}))) == []


def test_proxy_event_and_throttle():
    event = emulate.proxy_event(
        "GET", "/forecast/dev%201?pollutant=no2&horizon=3", {"x-api-key": "k"}, None, "v1", "api"
    )
    assert event["resource"] == "/forecast/{device_id}" and event["pathParameters"] == {"device_id": "dev 1"}
    assert (
        event["queryStringParameters"] == {"pollutant": "no2", "horizon": "3"}
        and event["requestContext"]["stage"] == "v1"
    )
    assert emulate.proxy_event("DELETE", "/forecast", {}, None, "v1", "api") is None
    bucket = emulate.TokenBucket(rate=0.001, burst=3)
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]


def _api(monkeypatch, endpoint: str, timeout: str = "2") -> dict:
    monkeypatch.setenv("FORECAST_ENDPOINT", endpoint)
    monkeypatch.setenv("FORECAST_TIMEOUT", timeout)
    monkeypatch.delenv("FORECAST_MODEL", raising=False)
    forecasting._cached.clear()
    event = {
        "httpMethod": "POST",
        "resource": "/forecast",
        "body": json.dumps({"instances": [{"start": "2024-01-01", "target": [1]}]}),
    }
    answer = forecast_api.handler(event)
    return {"status": answer["statusCode"], **json.loads(answer["body"])}


def test_api_answers_502_when_the_forecaster_is_down_and_504_when_it_hangs(monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = _api(monkeypatch, f"http://127.0.0.1:{port}")
    assert down["status"] == 502 and down["error"] == "forecaster_failed"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hung = _api(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout="0.5")
    assert hung["status"] == 504 and hung["error"] == "forecaster_timeout"
    bad = forecast_api.handler({"httpMethod": "POST", "resource": "/forecast", "body": "{"})
    assert bad["statusCode"] == 400 and "not JSON" in json.loads(bad["body"])["message"]


def test_template_resolver_evaluates_the_intrinsics_deploy_needs():
    template = stack.load_template()
    physical = {"UploadTopic": "arn:topic", "UploadQueue": "https://q"}
    resolver = stack.Resolver(
        template,
        {
            "ForecastModel": "s3://m/k/model.tar.gz",
            "EndpointName": "ep",
            "ForecastEndpoint": "",
            "LakeBucket": "",
            "EventSourceMapping": "false",
        },
        physical,
        {"AWS::StackName": "st", "AWS::AccountId": "1", "AWS::Partition": "aws", "AWS::Region": "r"},
        lambda logical, kind, name: f"{logical}.{name}",
    )
    subscription = resolver.value(template["Resources"]["UploadSubscription"]["Properties"])
    assert subscription == {
        "TopicArn": "arn:topic",
        "Protocol": "sqs",
        "Endpoint": "UploadQueue.Arn",
        "RawMessageDelivery": True,
    }
    assert not resolver.condition("WithEventSourceMapping") and resolver.condition("WithModel")
    statements = resolver.value(
        template["Resources"]["BatchRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    )
    assert statements[-1]["Resource"] == "arn:aws:s3:::m/k/model.tar.gz"
    by_action = {json.dumps(s["Action"]): s["Resource"] for s in statements}
    assert (
        by_action['["sagemaker:InvokeEndpoint", "sagemaker:DescribeEndpoint"]'] == "arn:aws:sagemaker:r:1:endpoint/ep"
    )
    assert by_action['["sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob"]'].endswith(
        ":transform-job/st-*"
    )


class Budget(Fake):
    def forecast(self, instances, configuration=None):
        if len(instances) > 2:
            self.calls += 1
            raise forecasting.RequestRejected(f"request too large: {len(instances)} series")
        return super().forecast(instances, configuration)


def test_an_unlocated_rejection_halves_the_request():
    results = forecasting.forecast_isolating(Budget({5}), [{"n": n} for n in range(8)])
    assert (
        results[:5] == [{"mean": [n]} for n in range(5)]
        and results[5] == "target: bad number 5"
        and results[7] == {"mean": [7]}
    )


def test_a_forecaster_outage_fails_the_message_and_reports_why(monkeypatch, buckets):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("FORECAST_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    s3 = buckets
    line = b'{"start": "2024-01-01", "target": [1]}\n'
    etag = s3.put_object(Bucket="in-bucket", Key="incoming/a.jsonl", Body=line)["ETag"]
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": "incoming%2Fa.jsonl", "eTag": etag.strip('"')}},
    }
    message = {
        "messageId": "m1",
        "body": json.dumps({"Records": [record]}),
        "attributes": {"ApproximateReceiveCount": "2"},
    }
    answer = batch_forecast.handler({"Records": [message]}, None, s3=s3)
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    report = json.loads(s3.get_object(Bucket="out-bucket", Key="errors/a.jsonl.jsonl")["Body"].read())
    assert "unreachable" in report["error"] and report["receive_count"] == 2
    assert "Contents" not in s3.list_objects_v2(Bucket="out-bucket", Prefix="forecasts/")


@pytest.fixture
def answering_429():
    """A serving container over its capacity: every /invocations answers 429 with Retry-After: 7."""

    class Busy(StubHandler):
        calls = 0

        def do_POST(self):  # noqa: N802 - http.server's name
            Busy.calls += 1
            self.request_body()
            self.answer(429, b'{"message": "too many requests in flight"}', {"Retry-After": "7"})

    with http_stub(Busy) as url:
        yield url, Busy


def test_api_answers_429_with_retry_after_for_a_throttling_container_and_endpoint(monkeypatch, answering_429, caplog):
    from botocore.stub import Stubber

    url, _ = answering_429
    throttled = _api(monkeypatch, url)
    assert throttled["status"] == 429 and throttled["error"] == "throttled" and throttled["retry_after_s"] == 7
    # The SageMaker endpoint: botocore's retries are spent and InvokeEndpoint still raises ThrottlingException.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("FORECAST_ENDPOINT", "deepar")
    monkeypatch.delenv("FORECAST_MODEL", raising=False)
    forecasting._cached.clear()
    endpoint = forecasting.from_environment()
    with Stubber(endpoint.client()) as stub:
        stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded", 400)
        answer = forecast_api.handler(
            {
                "httpMethod": "POST",
                "resource": "/forecast",
                "body": json.dumps({"instances": [{"start": "x", "target": [1]}]}),
            }
        )
        stub.assert_no_pending_responses()
    assert answer["statusCode"] == 429 and answer["headers"]["Retry-After"] == str(forecasting.DEFAULT_RETRY_AFTER_S)
    body = json.loads(answer["body"])
    # #23 (low): the backend's own text is logged with the request id, never answered.
    assert (
        body["error"] == "throttled" and "Rate exceeded" not in answer["body"] and body["request_id"] in body["message"]
    )
    assert any("Rate exceeded" in r.getMessage() and body["request_id"] in r.getMessage() for r in caplog.records)


def _upload_event(s3, body: bytes, key: str = "incoming/a.jsonl", receive_count: int = 1) -> dict:
    etag = s3.put_object(Bucket="in-bucket", Key=key, Body=body)["ETag"]
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": key, "eTag": etag.strip('"')}},
    }
    return {
        "messageId": "m1",
        "body": json.dumps({"Records": [record]}),
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
    }


THREE_SERIES = b"".join(json.dumps({"start": "2024-01-01", "target": [i, 2, 3]}).encode() + b"\n" for i in range(3))


def test_unusable_settings_fail_each_object_with_a_report_naming_the_variable(monkeypatch, buckets):
    monkeypatch.setenv("FORECAST_ENDPOINT", "deepar")
    monkeypatch.setenv("BATCH_TRANSFORM_MIN_SERIES", "many")
    answer = batch_forecast.handler({"Records": [_upload_event(buckets, THREE_SERIES)]}, None, s3=buckets)
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}  # redriven, then dead-lettered
    report = json.loads(buckets.get_object(Bucket="out-bucket", Key="errors/a.jsonl.jsonl")["Body"].read())
    assert report["location"] == "incoming/a.jsonl"
    assert report["error"].startswith(
        "the function's settings: environment variable BATCH_TRANSFORM_MIN_SERIES='many': "
    )
    assert "Contents" not in buckets.list_objects_v2(Bucket="out-bucket", Prefix="forecasts/")


def test_the_api_answers_an_unusable_setting_with_its_name(monkeypatch):
    monkeypatch.setenv("FORECAST_TIMEOUT", "never")
    event = {"httpMethod": "POST", "resource": "/forecast", "body": json.dumps({"instances": [{"target": [1]}]})}
    answer = forecast_api.handler(event)
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 500 and body["error"] == "misconfigured"
    assert body["message"].startswith("environment variable FORECAST_TIMEOUT='never': input should be a valid number")


def _assert_left_for_redrive(s3, answer: dict, receive_count: int) -> None:
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}  # SQS redelivers it later
    report = [
        json.loads(line) for line in s3.get_object(Bucket="out-bucket", Key="errors/a.jsonl.jsonl")["Body"].iter_lines()
    ]
    assert len(report) == 1 and report[0]["throttled"] is True and report[0]["receive_count"] == receive_count
    assert report[0]["location"] == "incoming/a.jsonl"  # the object, not one error line per series
    assert "Contents" not in s3.list_objects_v2(Bucket="out-bucket", Prefix="forecasts/")


def test_batch_leaves_a_throttled_container_s_message_for_redrive(monkeypatch, buckets, answering_429):
    import boto3

    url, busy = answering_429
    monkeypatch.setenv("FORECAST_ENDPOINT", url)
    # A real queue (moto) whose own visibility timeout is 0: only the handler's back-off hides the message.
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="uploads", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=_upload_event(buckets, THREE_SERIES)["body"])
    received = sqs.receive_message(QueueUrl=queue, AttributeNames=["All"])["Messages"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    event = emulate.sqs_event(received, arn, "us-east-1")
    event["Records"][0]["messageId"] = "m1"
    answer = batch_forecast.handler(event, None, s3=buckets)
    _assert_left_for_redrive(buckets, answer, 1)
    assert busy.calls == 1  # the first 429 stops the object: no request per series, no bisection
    assert "Messages" not in sqs.receive_message(QueueUrl=queue)  # back in 30 s, not at once, not in 90 min
    assert [batch_forecast.throttle_backoff_s(n, 7) for n in (1, 2, 3, 9)] == [30, 60, 120, 900]
    assert batch_forecast.throttle_backoff_s(1, 45) == 45  # the forecaster's Retry-After when longer
    # The queue dead-letters only after 3 receives, so a first throttle is retried, not a poison message.
    queue = stack.load_template()["Resources"]["UploadQueue"]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 3


def test_batch_leaves_a_throttled_endpoint_s_message_for_redrive(monkeypatch, buckets):
    from botocore.stub import Stubber

    monkeypatch.setenv("FORECAST_ENDPOINT", "deepar")
    endpoint = forecasting.from_environment()
    with Stubber(endpoint.client()) as stub:
        stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded", 400)
        answer = batch_forecast.handler(
            {"Records": [_upload_event(buckets, THREE_SERIES, receive_count=2)]}, None, s3=buckets
        )
        stub.assert_no_pending_responses()
    _assert_left_for_redrive(buckets, answer, 2)
    # Once the endpoint has capacity again the redelivered message is forecast and the report is gone.
    with Stubber(endpoint.client()) as stub:
        predictions = {"predictions": [{"mean": [float(i)]} for i in range(3)]}
        stub.add_response(
            "invoke_endpoint", {"Body": io.BytesIO(json.dumps(predictions).encode()), "ContentType": "application/json"}
        )
        answer = batch_forecast.handler(
            {"Records": [_upload_event(buckets, THREE_SERIES, receive_count=3)]}, None, s3=buckets
        )
    assert answer == {"batchItemFailures": []}
    lines = buckets.get_object(Bucket="out-bucket", Key="forecasts/a.jsonl.jsonl")["Body"].read().splitlines()
    assert [json.loads(line)["mean"] for line in lines] == [[0.0], [1.0], [2.0]]
    assert "Contents" not in buckets.list_objects_v2(Bucket="out-bucket", Prefix="errors/")


LARGE = (
    b"".join(
        json.dumps({"id": f"s{i}", "start": "2024-01-01 00:00:00", "target": [i, 2, 3]}).encode() + b"\n"
        for i in range(3)
    )
    + b"not json\n"
)


def _stub_model_lookup(stub) -> None:
    from datetime import datetime

    when = datetime(2024, 1, 1)
    stub.add_response(
        "describe_endpoint",
        {
            "EndpointName": "deepar",
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/deepar",
            "EndpointConfigName": "deepar-config",
            "EndpointStatus": "InService",
            "CreationTime": when,
            "LastModifiedTime": when,
        },
        {"EndpointName": "deepar"},
    )
    stub.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": "deepar-config",
            "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/deepar-config",
            "ProductionVariants": [{"VariantName": "all", "ModelName": "deepar-model-7"}],
            "CreationTime": when,
        },
        {"EndpointConfigName": "deepar-config"},
    )


def test_a_large_upload_starts_one_transform_job_on_the_endpoint_s_model(monkeypatch, buckets):
    import boto3
    from botocore.stub import Stubber

    from serverless.handlers import transform

    monkeypatch.setenv("FORECAST_ENDPOINT", "deepar")
    monkeypatch.setenv("BATCH_TRANSFORM_MIN_SERIES", "3")
    monkeypatch.setenv("TRANSFORM_JOB_PREFIX", "fc")
    sagemaker = boto3.client("sagemaker")
    monkeypatch.setattr(batch_forecast, "_sagemaker", lambda: sagemaker)
    message = _upload_event(buckets, LARGE, key="incoming/big.jsonl")
    etag = json.loads(message["body"])["Records"][0]["s3"]["object"]["eTag"]
    source = {"bucket": "in-bucket", "key": "incoming/big.jsonl", "etag": etag, "version_id": None}
    job = transform.job_name(source, "fc")
    timeout = transform.contract.batch_payload_timeout(6)
    expected = {
        "TransformJobName": job,
        "ModelName": "deepar-model-7",
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": timeout, "InvocationsMaxRetries": 1},
        "Environment": {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout)},
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://out-bucket/staging/big.jsonl.jsonl"}
            },
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
        },
        "TransformOutput": {
            "S3OutputPath": f"s3://out-bucket/transform/{job}/",
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
    }
    with Stubber(sagemaker) as stub:
        _stub_model_lookup(stub)
        stub.add_response(
            "create_transform_job", {"TransformJobArn": f"arn:aws:sagemaker:::transform-job/{job}"}, expected
        )
        assert batch_forecast.handler({"Records": [message]}, None, s3=buckets) == {"batchItemFailures": []}
        # Redelivery of the same upload event: the "transforming" manifest answers, no second job.
        assert batch_forecast.handler({"Records": [message]}, None, s3=buckets) == {"batchItemFailures": []}
        stub.assert_no_pending_responses()
    staged = buckets.get_object(Bucket="out-bucket", Key="staging/big.jsonl.jsonl")["Body"].read().splitlines()
    assert [json.loads(line) for line in staged] == [
        {"start": "2024-01-01 00:00:00", "target": [i, 2, 3]} for i in range(3)
    ]
    manifest_key = "forecasts/big.jsonl.manifest.json"
    manifest = json.loads(buckets.get_object(Bucket="out-bucket", Key=manifest_key)["Body"].read())
    assert (
        manifest["status"] == "transforming"
        and manifest["transform_job"] == job
        and manifest["model"] == "deepar-model-7"
    )
    assert manifest["counts"] == {"series": 4, "staged": 3, "invalid": 1}
    assert "Contents" not in buckets.list_objects_v2(Bucket="out-bucket", Prefix="forecasts/big.jsonl.jsonl")

    # The job started but the manifest was lost (the function stopped): redelivery finds the job, not a 2nd one.
    buckets.delete_object(Bucket="out-bucket", Key=manifest_key)
    with Stubber(sagemaker) as stub:
        _stub_model_lookup(stub)
        stub.add_client_error(
            "create_transform_job", "ValidationException", "Job name must be unique within an AWS account and region"
        )
        assert batch_forecast.handler({"Records": [message]}, None, s3=buckets) == {"batchItemFailures": []}
    assert json.loads(buckets.get_object(Bucket="out-bucket", Key=manifest_key)["Body"].read())["transform_job"] == job

    transforming = buckets.get_object(Bucket="out-bucket", Key=manifest_key)["Body"].read()

    def ended_event(status: str, reason: str = "") -> dict:
        detail = {"TransformJobName": job, "TransformJobStatus": status, "TransformInput": expected["TransformInput"]}
        body = {
            "detail-type": transform.STATE_CHANGE,
            "source": "aws.sagemaker",
            "detail": {**detail, "FailureReason": reason},
        }
        return {
            "Records": [{"messageId": "m2", "body": json.dumps(body), "attributes": {"ApproximateReceiveCount": "1"}}]
        }

    # A job whose .out lacks lines cannot be joined back: a failed manifest saying so, never a shifted forecast.
    buckets.put_object(
        Bucket="out-bucket", Key=f"transform/{job}/big.jsonl.jsonl.out", Body=b'{"mean": [1]}\n{"mean": [2]}\n'
    )
    assert batch_forecast.handler(ended_event("Completed"), None, s3=buckets) == {"batchItemFailures": []}
    short = json.loads(buckets.get_object(Bucket="out-bucket", Key=manifest_key)["Body"].read())
    assert short["status"] == "failed" and "2 output lines for 3 staged series" in short["error"]
    buckets.put_object(Bucket="out-bucket", Key=manifest_key, Body=transforming)

    # The job fails: its end (EventBridge -> the queue) gives a failed manifest and a report with SageMaker's reason.
    ended = {
        "detail-type": transform.STATE_CHANGE,
        "source": "aws.sagemaker",
        "detail": {
            "TransformJobName": job,
            "TransformJobStatus": "Failed",
            "FailureReason": "ClientError: out of memory",
            "TransformInput": expected["TransformInput"],
        },
    }
    event = {
        "Records": [{"messageId": "m2", "body": json.dumps(ended), "attributes": {"ApproximateReceiveCount": "1"}}]
    }
    assert batch_forecast.handler(event, None, s3=buckets) == {"batchItemFailures": []}
    failed = json.loads(buckets.get_object(Bucket="out-bucket", Key=manifest_key)["Body"].read())
    assert failed["status"] == "failed" and "out of memory" in failed["error"]
    report = json.loads(buckets.get_object(Bucket="out-bucket", Key="errors/big.jsonl.jsonl")["Body"].read())
    assert report["location"] == "incoming/big.jsonl" and job in report["error"]


def test_the_transform_threshold_comes_from_the_environment_and_the_template(monkeypatch):
    from serverless.handlers import settings

    monkeypatch.setenv("BATCH_TRANSFORM_MIN_SERIES", "5")
    assert settings.current().transform_min_series == 5
    monkeypatch.delenv("BATCH_TRANSFORM_MIN_SERIES")
    assert settings.current().transform_min_series == 12_000
    monkeypatch.setenv("BATCH_TRANSFORM_MIN_SERIES", "many")
    with pytest.raises(SettingsError, match="environment variable BATCH_TRANSFORM_MIN_SERIES='many': input should be"):
        settings.current()
    assert stack.load_template()["Parameters"]["TransformMinSeries"]["Default"] == 12_000


def test_the_function_bundle_holds_every_module_of_ours_the_handlers_import():
    """A handler importing one of our modules that the zip lacks would fail only in Lambda."""
    import ast

    from serverless import package

    bundled = {name for _, name in package.function_entries()}
    wanted, todo = (
        set(),
        [package.REPO / "serverless" / "handlers" / p.name for p in package.REPO.glob("serverless/handlers/*.py")],
    )
    while todo:
        path = todo.pop()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]  # a module or a name
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in ("awsinfra", "sagemaker_deepar"):
                    continue
                module = name.replace(".", "/") + ".py"
                if module not in wanted and (package.REPO / module).exists():
                    wanted.add(module)
                    todo.append(package.REPO / module)
    assert {"awsinfra/clients.py", "awsinfra/errors.py", "sagemaker_deepar/contract.py"} <= wanted
    assert sorted(wanted - bundled) == []


@pytest.fixture
def slow_container():
    """A serving container with several workers: each request takes longer the earlier its first series
    (later requests finish first), bad series (target containing -1) are named in a 400 like the
    container's, and the most requests it held at once is recorded."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Workers(BaseHTTPRequestHandler):
        lock = threading.Lock()
        running = most = calls = 0

        def do_POST(self):  # noqa: N802 - http.server's name
            instances = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
            with Workers.lock:
                Workers.running += 1
                Workers.calls += 1
                Workers.most = max(Workers.most, Workers.running)
            try:
                time.sleep(0.02 * max(0, 10 - instances[0]["target"][0]))
                bad = [f"instances[{i}].target: bad value -1" for i, s in enumerate(instances) if -1 in s["target"]]
                status, body = (400, {"message": "\n".join(bad)}) if bad else (200, {"predictions": instances})
                answer = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            finally:
                with Workers.lock:
                    Workers.running -= 1

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Workers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Workers
    server.shutdown()
    server.server_close()


def test_batch_keeps_requests_in_flight_and_answers_in_order_with_per_line_errors(monkeypatch, buckets, slow_container):
    url, workers = slow_container
    monkeypatch.setenv("FORECAST_ENDPOINT", url)
    monkeypatch.setenv("BATCH_IN_FLIGHT", "3")
    monkeypatch.setattr(
        forecasting, "chunks", lambda lines: [range(i, min(i + 2, len(lines))) for i in range(0, len(lines), 2)]
    )
    series = [{"id": f"s{n}", "start": "2024-01-01", "target": [n, -1 if n in (3, 8) else 1]} for n in range(10)]
    body = b"".join(json.dumps(s).encode() + b"\n" for s in series[:5]) + b"not json\n"
    body += b"".join(json.dumps(s).encode() + b"\n" for s in series[5:])
    assert batch_forecast.handler({"Records": [_upload_event(buckets, body)]}, None, s3=buckets) == {
        "batchItemFailures": []
    }
    assert workers.most == 3  # 5 requests, never more than 3 at once, and 3 did run together
    lines = [
        json.loads(x)
        for x in buckets.get_object(Bucket="out-bucket", Key="forecasts/a.jsonl.jsonl")["Body"].iter_lines()
    ]
    assert len(lines) == 11  # one answer per input line, in the upload's order
    ids = [line.get("id") for line in lines]  # an error line carries only its error
    assert ids == ["s0", "s1", "s2", None, "s4", None, "s5", "s6", "s7", None, "s9"]
    assert [line["target"][0] for line in lines if "target" in line] == [0, 1, 2, 4, 5, 6, 7, 9]
    assert lines[3]["error"] == "incoming/a.jsonl:4: target: bad value -1"
    assert lines[5]["error"].startswith("incoming/a.jsonl:6: ") and "JSON" in lines[5]["error"]
    assert lines[9]["error"] == "incoming/a.jsonl:10: target: bad value -1"
    errors = [
        json.loads(x) for x in buckets.get_object(Bucket="out-bucket", Key="errors/a.jsonl.jsonl")["Body"].iter_lines()
    ]
    assert [e["location"] for e in errors] == ["incoming/a.jsonl:4", "incoming/a.jsonl:6", "incoming/a.jsonl:10"]
    manifest = json.loads(buckets.get_object(Bucket="out-bucket", Key="forecasts/a.jsonl.manifest.json")["Body"].read())
    assert manifest["counts"] == {"series": 11, "forecast": 8, "errors": 3} and manifest["requests"] == 5


def test_in_flight_raises_the_first_failure_in_order_and_starts_nothing_after_it():
    import threading
    import time

    started: list[int] = []
    lock = threading.Lock()

    def call(n: int) -> int:
        with lock:
            started.append(n)
        if n == 1:
            time.sleep(0.2)  # the later failure (n=2) is known first; n=1's is still the one raised
            raise forecasting.BackendError("first")
        if n == 2:
            raise forecasting.BackendThrottled("second")
        return n

    got = []
    with pytest.raises(forecasting.BackendError, match="first"):
        for value in batch_forecast.in_order(call, range(20), 3):
            got.append(value)
    assert got == [0] and max(started) <= 4  # a window of 3, moved on once after n=0: nothing beyond


def test_in_flight_setting_and_defaults(monkeypatch, buckets):
    from sagemaker_deepar.settings import SettingsError
    from serverless.handlers.settings import FunctionSettings

    unset = FunctionSettings.from_env({})
    http = forecasting.HttpForecaster("http://127.0.0.1:1")
    assert batch_forecast.in_flight(http, unset) == 2
    assert batch_forecast.in_flight(http, FunctionSettings.from_env({"BATCH_IN_FLIGHT": "5"})) == 5
    assert batch_forecast.in_flight(forecasting.InFunctionForecaster("s3://m/model.tar.gz"), unset) == 1
    for bad in ("0", "17", "two", "-1"):
        with pytest.raises(SettingsError, match=f"BATCH_IN_FLIGHT={bad!r}"):
            FunctionSettings.from_env({"BATCH_IN_FLIGHT": bad})

    class SageMaker:
        def describe_endpoint(self, EndpointName):  # noqa: N803 - boto3's name
            if EndpointName == "gone":
                raise RuntimeError("no such endpoint")
            return {"ProductionVariants": [{"CurrentInstanceCount": 3}, {"CurrentInstanceCount": 1}]}

    monkeypatch.setattr(batch_forecast, "_sagemaker", SageMaker)
    monkeypatch.setattr(batch_forecast, "_instances", {})
    assert batch_forecast.in_flight(forecasting.EndpointForecaster("four"), unset) == 8  # 2 per instance
    assert batch_forecast.in_flight(forecasting.EndpointForecaster("gone"), unset) == 2  # unreadable: as one instance
    # The template passes its parameter through; empty (the default) leaves the choice to the function.
    template = stack.load_template()
    variables = template["Resources"]["BatchFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["BATCH_IN_FLIGHT"] == {"Ref": "InFlightRequests"}
    assert template["Parameters"]["InFlightRequests"]["Default"] == ""
    assert batch_forecast.in_flight(http, FunctionSettings.from_env({"BATCH_IN_FLIGHT": ""})) == 2
