"""Serving settings derived from SageMaker's environment variables (one place for every timeout)."""

import pytest

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.serving.server_config import ServerConfig, batch_payload_mb, cpu_quota, default_workers

pytestmark = pytest.mark.unit  # in-process: the fast tier (scripts/test.sh --fast)


@pytest.mark.parametrize(
    "cpus,memory_gb,expected",
    [(2, 24, 2), (8, 32, 8), (8, 3, 2), (4, 1, 1), (1, 0.5, 1), (2, 2, 1), (4, 4, 2), (16, 16, 10), (8, 16, 8)],
)
def test_default_workers_follow_cpus_and_memory(cpus, memory_gb, expected):
    assert default_workers(cpus, memory_gb) == expected


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "cpu" / "cpu.cfs_quota_us"
    assert cpu_quota(str(v2), str(v1)) is None  # neither file: no limit
    v1.parent.mkdir()
    v1.write_text("-1\n")
    (v1.parent / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(str(v2), str(v1)) is None
    v1.write_text("150000\n")
    assert cpu_quota(str(v2), str(v1)) == 1.5
    v2.write_text("max 100000\n")
    assert cpu_quota(str(v2), str(v1)) is None  # v2 wins when present
    v2.write_text("100000 100000\n")
    assert cpu_quota(str(v2), str(v1)) == 1.0


def test_workers_follow_the_cpu_quota(monkeypatch):
    """``docker run --cpus 1`` (an ECS task's cpu) on an 8-core host: one worker, not eight sharing one CPU."""
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("sagemaker_deepar.serving.server_config.available_memory_gb", lambda: 64.0)
    monkeypatch.setattr("sagemaker_deepar.serving.server_config.cpu_quota", lambda: 1.0)
    assert ServerConfig.from_env({}).workers == 1
    monkeypatch.setattr("sagemaker_deepar.serving.server_config.cpu_quota", lambda: 2.5)
    assert ServerConfig.from_env({}).workers == 3
    monkeypatch.setattr("sagemaker_deepar.serving.server_config.cpu_quota", lambda: None)
    assert ServerConfig.from_env({}).workers == 8


def test_one_inference_thread_per_worker_unless_set():
    assert ServerConfig.from_env({}).inference_threads == 1
    assert ServerConfig.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}).inference_threads == 1
    assert ServerConfig.from_env({"DEEPAR_TORCH_THREADS": "2"}).inference_threads == 2  # the former name
    both = ServerConfig.from_env({"DEEPAR_TORCH_THREADS": "2", "DEEPAR_INFERENCE_THREADS": "3"})
    assert both.inference_threads == both.torch_threads == 3


def test_inference_runtime_defaults_to_onnx_and_names_a_bad_value():
    assert ServerConfig.from_env({}).inference_runtime == "onnx"
    assert ServerConfig.from_env({"DEEPAR_INFERENCE_RUNTIME": "Torch"}).inference_runtime == "torch"
    with pytest.raises(UserError, match=r"DEEPAR_INFERENCE_RUNTIME='tensorrt' must be one of onnx, torch"):
        ServerConfig.from_env({"DEEPAR_INFERENCE_RUNTIME": "tensorrt"})


def test_prefixed_variables_win():
    env = {
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "MODEL_SERVER_WORKERS": "5",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
        "MODEL_SERVER_TIMEOUT": "10",
    }
    config = ServerConfig.from_env(env)
    assert (config.workers, config.request_timeout) == (3, 120)
    assert config.graceful_timeout == 25  # under SageMaker's 30 s SIGKILL whatever the request timeout
    assert ServerConfig.from_env({"MODEL_SERVER_WORKERS": "5"}).workers == 5


def test_realtime_and_batch_defaults():
    realtime = ServerConfig.from_env({})
    assert (realtime.port, realtime.request_timeout, realtime.max_payload_bytes) == (8080, 60, 6 * 2**20)
    assert not realtime.batch_mode and realtime.max_sample_paths == 200_000
    batch = ServerConfig.from_env(
        {"SAGEMAKER_BATCH": "true", "SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_BATCH_STRATEGY": "SingleRecord"}
    )
    assert (batch.port, batch.batch_strategy) == (9000, "SINGLE_RECORD")
    assert batch.max_sample_paths == 2_000_000 and batch.max_response_bytes == 1024 * 2**20
    # The default batch body is what one worker forecasts inside the timeout; an explicit limit wins.
    assert batch.max_payload_bytes == batch_payload_mb(60) * 2**20 < batch_payload_mb(600) * 2**20
    assert batch_payload_mb(3600) == 100
    explicit = ServerConfig.from_env({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"})
    assert explicit.max_payload_bytes == 100 * 2**20
    assert realtime.max_response_bytes == 6 * 2**20 and realtime.front == "nginx"


def test_inference_config_is_parsed_once_into_settings():
    config = ServerConfig.from_env({"DEEPAR_INFERENCE_CONFIG": '{"num_samples": 7, "quantiles": ["0.5"]}'})
    assert config.inference_defaults.num_samples == 7 and config.inference_defaults.quantile_keys == ("0.5",)


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, "SAGEMAKER_MODEL_SERVER_WORKERS='many' is not an integer"),
        ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "500"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB='500' must be between 1 and 100"),
        ({"SAGEMAKER_BIND_TO_PORT": "0"}, "SAGEMAKER_BIND_TO_PORT='0' must be between 1 and 65535"),
        ({"DEEPAR_FRONT": "apache"}, "DEEPAR_FRONT='apache' must be nginx or gunicorn"),
        ({"DEEPAR_INFERENCE_CONFIG": "{bad"}, "DEEPAR_INFERENCE_CONFIG is not valid JSON"),
        ({"DEEPAR_INFERENCE_CONFIG": '{"quantiles": [2]}'}, "2 is not a number strictly between 0 and 1"),
    ],
)
def test_bad_values_name_the_variable(env, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        ServerConfig.from_env(env)


def test_nginx_configuration_is_valid_and_answers_errors_in_json(tmp_path):
    import subprocess

    from sagemaker_deepar.serving.front import find_nginx, nginx_conf

    config = ServerConfig.from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "3", "DEEPAR_BIND_HOST": "127.0.0.1"})
    text = nginx_conf(config, tmp_path, tmp_path / "gunicorn.sock")
    assert "client_max_body_size 3145728;" in text and "error_page 502 =503 /_deepar_error/502;" in text
    assert """return 413 '{"error":"body larger than 3 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"}'""" in text
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx not installed")
    (tmp_path / "nginx.conf").write_text(text)
    check = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
