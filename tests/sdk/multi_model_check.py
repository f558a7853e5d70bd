"""evaluation/'s multi-model path, checked with botocore's Stubber (no AWS): CreateModel Mode=MultiModel, TargetModel.

Run in .venv-sdk by tests/test_multi_model_serve.py:
    .venv-sdk/bin/python -m pytest --noconftest tests/sdk/multi_model_check.py   (from the repository root)
"""

from __future__ import annotations

import argparse
import io
import json

import pytest

from .offline import ROLE
from .requests_check import ARN, DEPLOY, IMAGE, endpoint, not_found, offline, stubbed  # noqa: F401 - fixtures


def test_deploy_create_multi_model_registers_the_prefix_in_multi_model_mode(stubbed, capsys):  # noqa: F811
    from botocore.stub import ANY

    from evaluation import deploy

    not_found(stubbed, "describe_endpoint")
    stubbed.add_response(
        "create_model",
        {"ModelArn": ARN + "model/m"},
        {
            "ModelName": ANY,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {
                "Image": IMAGE,
                "ModelDataUrl": "s3://b/fleet/",
                "Environment": {},
                "Mode": "MultiModel",
            },
        },
    )
    stubbed.add_response("create_endpoint_config", {"EndpointConfigArn": ARN + "endpoint-config/c"}, None)
    stubbed.add_response("create_endpoint", {"EndpointArn": ARN + "endpoint/e"}, None)
    stubbed.add_response("describe_endpoint", endpoint("InService", "c1"))
    deploy.main(["create", *DEPLOY, "--multi-model", "--model-data", "s3://b/fleet"])
    assert "multi-model" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model-data", "s3://b/fleet/site-1/model.tar.gz"], "not one model.tar.gz"),
        (["--model-data", "s3://b/a/", "s3://b/b/"], "one --model-data"),
        (["--model-data", "s3://b/fleet/", "--local"], "needs SageMaker"),
    ],
)
def test_deploy_multi_model_refuses_what_sagemaker_would_not_serve(stubbed, capsys, extra, message):  # noqa: F811
    from evaluation import common, deploy

    assert common.run_command(deploy.main, ["create", *DEPLOY, "--multi-model", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_invoke_sends_target_model(stubbed, monkeypatch):  # noqa: F811
    from botocore.response import StreamingBody
    from botocore.stub import ANY, Stubber

    from evaluation import common, invoke

    runtime = common.runtime_client(common.open_session(None), argparse.Namespace(local=False))
    monkeypatch.setattr(common, "runtime_client", lambda session, args: runtime)
    answer = json.dumps({"predictions": [{"mean": [1.0] * 24, "quantiles": {}}]}).encode()
    with Stubber(runtime) as runtime_stub:
        runtime_stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
            {
                "EndpointName": "fleet",
                "Body": ANY,
                "ContentType": "application/json",
                "Accept": "application/json",
                "TargetModel": "site-7/model.tar.gz",
            },
        )
        body = invoke.request_body([{"start": "2024-01-01 00:00:00", "target": [1.0]}], 10, ("0.5",))
        predictions = invoke.invoke(runtime, "fleet", body, target_model="site-7/model.tar.gz")
        runtime_stub.assert_no_pending_responses()
    assert len(predictions) == 1
