"""Serving and deploying through mlflow (issue #24, items 3 and 4), through the real entrypoints.

- ``container/serve`` on an mlflow model folder answers mlflow's scoring formats and DeepAR's request;
  the forecasts equal the pyfunc's (``mlflow.pyfunc.load_model(...).predict``) for the same frame and seed;
  a folder without this project's artifact stops ``serve`` at start with the reason in the log.
- mlflow's SageMaker deployment client (what ``mlflow deployments create -t sagemaker`` runs) against moto server (offline): the SageMaker model has this
  image's URI and mlflow's environment, the endpoint config and endpoint exist; ``delete`` removes them.
- The image (``docker run … serve``) on the very ``model.tar.gz`` mlflow uploaded answers both formats.
- ``mlflow models serve --env-manager local`` on the registered model (SQLite tracking store) answers
  the same as this project's server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.utils.proto_json_utils import dump_input_data

from sagemaker_deepar.contract import extract_model_tarball

from .conftest import IMAGE, REPO, Server, running_server
from .helpers import free_port

MODEL_NAME = "deepar-pollution"
ENDPOINT = "deepar-mlflow"
REGION = "us-east-1"  # the brief's region: mlflow's default bucket needs no LocationConstraint there
IMAGE_URI = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/sagemaker-deepar:mlflow"
MLFLOW_CLI = Path(sys.executable).parent / "mlflow"
PARAMS = {"num_samples": 40, "quantiles": [0.1, 0.5, 0.9], "seed": 11}
MLFLOW_ENVIRONMENT = {"MLFLOW_DEPLOYMENT_FLAVOR_NAME": "python_function", "SERVING_ENVIRONMENT": "SageMaker"}


def answer_records(forecast: pd.DataFrame) -> list[dict[str, Any]]:
    """A pyfunc's answer frame as mlflow's scoring server writes it: records, ISO 8601 timestamps."""
    forecast = forecast.copy()
    forecast["timestamp"] = forecast["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return forecast.to_dict(orient="records")


def checkout_env(**extra: str) -> dict[str, str]:
    """`container/serve`'s supervisor imports the package from this checkout (not another editable install)."""
    return {"PYTHONPATH": str(REPO), **extra}


def frame() -> pd.DataFrame:
    """Two sensors, 30 hourly points each plus the 6-step horizon (the feature model has a dynamic feature)."""
    blocks = []
    for item in range(2):
        points = 36
        target = 10.0 + item + np.sin(np.arange(points) / 3.0)
        target[3] = np.nan  # a missing value
        target[30:] = np.nan  # the horizon
        blocks.append(
            pd.DataFrame(
                {
                    "item_id": f"sensor-{item}",
                    "timestamp": pd.date_range("2024-03-01", periods=points, freq="h"),
                    "target": target,
                    "feat_static_cat_0": item,
                    "feat_dynamic_real_0": np.arange(points, dtype=float) % 24,
                }
            )
        )
    return pd.concat(blocks, ignore_index=True)


def json_rows(data: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as a client sends them (ISO timestamps, null for NaN)."""
    data = data.copy()
    data["timestamp"] = data["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return json.loads(data.to_json(orient="records"))


def requests_in_every_format(data: pd.DataFrame, params: dict) -> dict[str, dict]:
    """The same frame and params as each of mlflow's scoring formats (rows, split, columns)."""
    rows = json_rows(data)
    columns = list(rows[0])
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}},
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "inputs": {"inputs": {c: [r[c] for r in rows] for c in columns}},
    }
    return {name: {**body, "params": params} for name, body in bodies.items()}


DEEPAR_REQUEST = {
    "instances": [
        {"start": "2024-03-01 00:00:00", "target": [1.0, None, 3.0] * 10, "cat": [1], "dynamic_feat": [[0.5] * 36]}
    ],
    "configuration": {"num_samples": 20, "quantiles": ["0.5"]},
}


def check_deepar_answer(response: requests.Response) -> None:
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert len(prediction["mean"]) == 6 and list(prediction["quantiles"]) == ["0.5"]


@pytest.fixture(scope="module")
def mlflow_folder(feature_model: Path, tmp_path_factory) -> Path:
    """An mlflow model folder made by the pyfunc's save_model, as SAGEMAKER_BASE_DIR/model."""
    from sagemaker_deepar.mlflow_pyfunc import save_model

    root = tmp_path_factory.mktemp("mlflow_opt_ml")
    save_model(feature_model / "model", root / "model")
    return root


@pytest.fixture(scope="module")
def pyfunc_answer(mlflow_folder: Path) -> list[dict[str, Any]]:
    """What mlflow's own loader forecasts for frame() with PARAMS, as mlflow's scoring server writes it."""
    import mlflow.pyfunc

    forecast = mlflow.pyfunc.load_model(str(mlflow_folder / "model")).predict(frame(), params=PARAMS)
    return answer_records(forecast)


# ---------------------------------------------------------------- container/serve on the host


def test_serve_answers_every_mlflow_format_like_the_pyfunc_and_deepar_requests_too(mlflow_folder, pyfunc_answer):
    with running_server(mlflow_folder, **checkout_env()) as server:
        for name, body in requests_in_every_format(frame(), PARAMS).items():
            response = server.post(body)
            assert response.status_code == 200, (name, response.text)
            assert response.json() == {"predictions": pyfunc_answer}, name
        check_deepar_answer(server.post(DEEPAR_REQUEST))
        # What mlflow's clients send (`mlflow deployments predict`, SageMakerDeploymentClient.predict): a split
        # frame with its index, ISO timestamps, and bare NaN tokens for missing values.
        response = server.post(dump_input_data(frame(), params=PARAMS))
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": pyfunc_answer}
        lines = server.post(requests_in_every_format(frame(), PARAMS)["inputs"], Accept="application/jsonlines")
        assert [json.loads(line) for line in lines.text.splitlines()] == pyfunc_answer

        unsorted = json_rows(frame())
        unsorted[1], unsorted[2] = unsorted[2], unsorted[1]
        response = server.post({"dataframe_records": unsorted})
        assert response.status_code == 400
        assert response.json()["error"].startswith("item 'sensor-0', row 2: timestamp 2024-03-01 01:00:00 comes before")
        response = server.post({"inputs": json_rows(frame()), "params": {"num_samples": 0}})
        assert response.status_code == 400 and "params.num_samples" in response.json()["error"]
        unknown = [dict(row, feat_static_cat_0=7) for row in json_rows(frame())]
        response = server.post({"dataframe_records": unknown, "params": {"seed": 1}})
        assert response.status_code == 400 and response.json()["error"].startswith("item 'sensor-0': cat[0]")
        log = server.output(tail=None)
    assert "mlflow model (flavors: python_function" in log and "artifacts/deepar" in log


def test_a_batch_transform_body_of_one_mlflow_request_is_answered_like_a_realtime_one(mlflow_folder, pyfunc_answer):
    with running_server(mlflow_folder, **checkout_env(SAGEMAKER_BATCH="true")) as server:
        response = server.post(requests_in_every_format(frame(), PARAMS)["dataframe_records"])
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": pyfunc_answer}


# A fresh interpreter in which torch, GluonTS, mxnet, Lightning and mlflow cannot be imported: the mlflow
# folder is found, its artifact loaded (ONNX runtime) and an mlflow request answered as a worker does.
NO_TORCH_NO_MLFLOW = """
import importlib.abc, json, sys
from pathlib import Path

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "gluonts", "mxnet", "lightning", "pytorch_lightning", "mlflow"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Blocked())
from sagemaker_deepar.serving.batcher import Batcher
from sagemaker_deepar.runtimes.model import Model
from sagemaker_deepar.serving.mlflow_folder import find_artifact
from sagemaker_deepar.serving.server_config import ServerConfig
from sagemaker_deepar.serving.service import JSON, ForecastService

config = ServerConfig.from_env({"SAGEMAKER_BASE_DIR": sys.argv[1]})
model = Model.load(find_artifact(Path(config.model_dir)).artifact_dir, 256, "onnx", 1)
service = ForecastService(model, config, Batcher(model.sample, 6400, 256))
answer = json.loads(service.realtime(sys.argv[2].encode(), JSON, JSON, service.deadline()))
print(model.runtime, len(answer["predictions"]))
"""


def test_the_mlflow_path_imports_neither_torch_nor_mlflow(mlflow_folder):
    body = json.dumps(requests_in_every_format(frame(), PARAMS)["dataframe_split"])
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_NO_MLFLOW, str(mlflow_folder), body],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["onnx", "12"]  # 2 items x prediction_length 6


@pytest.mark.parametrize("artifacts", [0, 2])
def test_serve_stops_at_start_when_the_mlflow_folder_has_no_single_artifact(mlflow_folder, tmp_path, artifacts):
    model = tmp_path / "model"
    shutil.copytree(mlflow_folder / "model", model)
    shutil.rmtree(model / "artifacts" / "deepar")
    for k in range(artifacts):
        shutil.copytree(mlflow_folder / "model" / "artifacts" / "deepar", model / "artifacts" / f"copy{k}")
    server = Server(tmp_path, **checkout_env())
    try:
        code = server.process.wait(timeout=60)
        log = server.output(tail=None)
    finally:
        server.stop()
    assert code == 1, log
    expected = "without a DeepAR artifact: no deepar-metadata.json" if artifacts == 0 else "with 2 DeepAR artifacts"
    assert f"serve: cannot serve {model}: {model} is an mlflow model" in log and expected in log, log


# ---------------------------------------------------------------- the registry, moto, mlflow's deployment client


@pytest.fixture(scope="module")
def registry(feature_model: Path, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A SQLite-backed tracking store with the model registered as MODEL_NAME version 1."""
    import mlflow

    from sagemaker_deepar.mlflow_pyfunc import log_model

    folder = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("deepar", artifact_location=(folder / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_model(feature_model / "model", registered_model_name=MODEL_NAME)
        assert info.registered_model_version == 1
        yield {"MLFLOW_TRACKING_URI": uri}
    finally:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI (for child processes): None unsets both, so
        # later tests find mlflow as this one did (setting get_tracking_uri()'s default back would pin it)
        mlflow.set_tracking_uri(exported)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def moto() -> Iterator[dict[str, str]]:
    """moto server on loopback; the environment that sends boto3 (and so mlflow's client) to it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10).raise_for_status()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    yield env
    server.stop()


def aws(moto: dict[str, str], service: str) -> Any:
    import boto3

    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=moto["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with ``env`` set (boto3 inside mlflow's client reads AWS_ENDPOINT_URL and the credentials)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def sagemaker_target() -> Any:
    """mlflow's SageMaker deployment client: what `mlflow deployments create/delete -t sagemaker:/REGION` runs."""
    from mlflow.deployments import get_deploy_client

    return get_deploy_client(f"sagemaker:/{REGION}")


@pytest.fixture(scope="module")
def deployment(registry, moto) -> dict[str, Any]:
    """`mlflow deployments create -t sagemaker` of models:/MODEL_NAME/1 with this image, against moto.

    Explicit execution role (created in moto's IAM) and bucket: without them mlflow asks STS for the caller
    and IAM for a role named after it, which is the account's business, not this image's.
    """
    iam, s3 = aws(moto, "iam"), aws(moto, "s3")
    role = iam.create_role(
        RoleName="deepar-mlflow-sagemaker",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
    )["Role"]["Arn"]
    s3.create_bucket(Bucket="deepar-mlflow-models")
    with environment(moto):  # = mlflow deployments create -t sagemaker:/us-east-1 --name ... -m ... -C ...
        sagemaker_target().create_deployment(
            ENDPOINT,
            f"models:/{MODEL_NAME}/1",
            config={
                "image_url": IMAGE_URI,
                "execution_role_arn": role,
                "bucket": "deepar-mlflow-models",
                "instance_type": "ml.m5.large",
            },
        )
    return {"role": role}


def test_mlflow_deploys_with_this_image_and_its_environment(deployment, moto):
    sagemaker, s3 = aws(moto, "sagemaker"), aws(moto, "s3")
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 1)
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE_URI
    assert container["Environment"] == MLFLOW_ENVIRONMENT
    assert model["ExecutionRoleArn"] == deployment["role"]
    tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=model["ModelArn"])["Tags"]}
    assert tags["model_uri"] == f"models:/{MODEL_NAME}/1"
    bucket, key = container["ModelDataUrl"].removeprefix("s3://").split("/", 1)
    assert (bucket, key) == ("deepar-mlflow-models", f"{variant['ModelName']}/model.tar.gz")
    with tarfile.open(fileobj=s3.get_object(Bucket=bucket, Key=key)["Body"]) as archive:
        names = set(archive.getnames())
    assert {"MLmodel", "artifacts/deepar/deepar-metadata.json", "artifacts/deepar/network.onnx"} <= names


def docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0


def test_the_image_serves_the_model_tarball_mlflow_uploaded(deployment, moto, tmp_path, pyfunc_answer):
    if not docker_ready():
        if os.environ.get("CI"):
            pytest.fail(f"a Docker engine with {IMAGE} is required in CI")
        pytest.skip(f"no Docker engine with {IMAGE}")
    sagemaker, s3 = aws(moto, "sagemaker"), aws(moto, "s3")
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    )
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
    bucket, key = model["ModelDataUrl"].removeprefix("s3://").split("/", 1)
    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    model_dir = tmp_path / "model"
    extract_model_tarball(tarball, model_dir)  # what SageMaker does with ModelDataUrl
    model_dir.chmod(0o755)
    port = free_port()
    name = f"deepar-mlflow-serve-{port}"
    env_flags = [flag for key, value in model["Environment"].items() for flag in ("-e", f"{key}={value}")]
    run = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080"]
        + ["-v", f"{model_dir}:/opt/ml/model:ro", *env_flags, IMAGE, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(url + "/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, docker_logs(name)
            time.sleep(0.2)
        for body_name, body in requests_in_every_format(frame(), PARAMS).items():
            response = requests.post(url + "/invocations", json=body, timeout=60)
            assert response.status_code == 200, (body_name, response.text)
            assert response.json() == {"predictions": pyfunc_answer}, body_name
        check_deepar_answer(requests.post(url + "/invocations", json=DEEPAR_REQUEST, timeout=60))
        assert "mlflow model (flavors: python_function" in docker_logs(name, tail=10**7)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def docker_logs(name: str, tail: int = 3000) -> str:
    out = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr)[-tail:]


def test_mlflow_delete_removes_the_endpoint_its_config_model_and_tarball(deployment, registry, moto):
    sagemaker, s3 = aws(moto, "sagemaker"), aws(moto, "s3")
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model_name = config["ProductionVariants"][0]["ModelName"]
    with environment(moto):  # = mlflow deployments delete -t sagemaker:/us-east-1 --name deepar-mlflow
        sagemaker_target().delete_deployment(ENDPOINT)
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert sagemaker.list_models()["Models"] == []
    assert s3.list_objects_v2(Bucket="deepar-mlflow-models", Prefix=model_name).get("KeyCount") == 0


# ---------------------------------------------------------------- mlflow's own server on the registered model


def test_mlflow_models_serve_answers_like_this_server(registry, pyfunc_answer):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | registry
    env["PATH"] = f"{MLFLOW_CLI.parent}{os.pathsep}{env.get('PATH', '')}"  # it runs `exec uvicorn ...` in a shell
    log = (Path(os.environ.get("TMPDIR", "/tmp")) / f"mlflow-models-serve-{port}.log").open("w+")
    process = subprocess.Popen(
        [str(MLFLOW_CLI), "models", "serve", "-m", f"models:/{MODEL_NAME}/1", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn workers are stopped with it, by this process group's id
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.2)
        body = requests_in_every_format(frame(), PARAMS)["dataframe_split"]
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": pyfunc_answer}
    finally:
        with suppress(ProcessLookupError):  # the group is gone when the server failed at start
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        Path(log.name).unlink()
