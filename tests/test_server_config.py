"""Serving settings derived from SageMaker's environment variables (one place for every timeout)."""

import pytest

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.server_config import ServerConfig, default_workers


@pytest.mark.parametrize("cpus,memory_gb,expected", [(2, 24, 1), (8, 32, 4), (8, 3, 2), (4, 1, 1), (1, 0.5, 1),
                                                     (2, 2, 1), (4, 4, 2), (16, 16, 8)])
def test_default_workers_follow_cpus_and_memory(cpus, memory_gb, expected):
    assert default_workers(cpus, memory_gb) == expected


def test_one_torch_thread_per_worker_unless_set():
    assert ServerConfig.from_env({}).torch_threads == 1
    assert ServerConfig.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}).torch_threads == 1
    assert ServerConfig.from_env({"DEEPAR_TORCH_THREADS": "2"}).torch_threads == 2


def test_prefixed_variables_win():
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "3", "MODEL_SERVER_WORKERS": "5",
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120", "MODEL_SERVER_TIMEOUT": "10"}
    config = ServerConfig.from_env(env)
    assert (config.workers, config.request_timeout) == (3, 120)
    assert config.graceful_timeout == 25  # under SageMaker's 30 s SIGKILL whatever the request timeout
    assert ServerConfig.from_env({"MODEL_SERVER_WORKERS": "5"}).workers == 5


def test_realtime_and_batch_defaults():
    realtime = ServerConfig.from_env({})
    assert (realtime.port, realtime.request_timeout, realtime.max_payload_bytes) == (8080, 60, 6 * 2**20)
    assert not realtime.batch_mode and realtime.max_sample_paths == 200_000
    batch = ServerConfig.from_env({"SAGEMAKER_BATCH": "true", "SAGEMAKER_BIND_TO_PORT": "9000",
                                   "SAGEMAKER_BATCH_STRATEGY": "SingleRecord"})
    assert (batch.port, batch.max_payload_bytes, batch.batch_strategy) == (9000, 100 * 2**20, "SINGLE_RECORD")
    assert batch.max_sample_paths == 2_000_000


@pytest.mark.parametrize("env,fragment", [
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, "SAGEMAKER_MODEL_SERVER_WORKERS='many' is not an integer"),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "500"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB='500' must be between 1 and 100"),
    ({"SAGEMAKER_BIND_TO_PORT": "0"}, "SAGEMAKER_BIND_TO_PORT='0' must be between 1 and 65535"),
])
def test_bad_values_name_the_variable(env, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        ServerConfig.from_env(env)
