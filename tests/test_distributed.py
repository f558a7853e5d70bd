"""Multi-host training: host/rank/shard computation in process, and two `container/train` processes
on 127.0.0.1 as two hosts (two /opt/ml roots, the rendezvous address overridden)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.training import distributed

from .conftest import IMAGE, REPO, SDK_PYTHON, TRAIN, OptMl, entrypoint_env, run_train, standard_job
from .helpers import free_port

HOSTS = ["algo-1-ab12c", "algo-2-xy34z"]  # SDK local mode's names: never compare with "algo-1"


# ---------------------------------------------------------------- unit


@pytest.mark.unit
def test_ranks_follow_the_order_of_hosts_and_the_leader_is_first():
    hosts = ["algo-1", "algo-10", "algo-2"]  # SageMaker's lexicographic order
    clusters = [distributed.cluster_from_resource_config({"current_host": h, "hosts": hosts}, env={}) for h in hosts]
    assert [c.rank for c in clusters] == [0, 1, 2]
    assert [c.is_leader for c in clusters] == [True, False, False]
    assert {c.master_addr for c in clusters} == {"algo-1"}
    assert {c.master_port for c in clusters} == {distributed.DEFAULT_MASTER_PORT}
    assert all(c.world_size == 3 and c.is_distributed for c in clusters)


@pytest.mark.unit
def test_resource_config_extras_and_overrides():
    config = {
        "current_host": "algo-2",
        "hosts": ["algo-1", "algo-2"],
        "network_interface_name": "eth1",
        "current_instance_type": "ml.c5.xlarge",
        "instance_groups": [{"instance_group_name": "g", "hosts": ["algo-1", "algo-2"]}],
    }
    env = {distributed.ENV_MASTER_ADDR: "127.0.0.1", distributed.ENV_MASTER_PORT: "4000"}
    cluster = distributed.cluster_from_resource_config(config, env=env)
    assert (cluster.master_addr, cluster.master_port, cluster.store_port) == ("127.0.0.1", 4000, 4001)
    assert cluster.network_interface == "eth1" and cluster.leader == "algo-1"
    single = distributed.cluster_from_resource_config({"current_host": "algo-1", "hosts": ["algo-1"]}, env={})
    assert not single.is_distributed and single.is_leader


@pytest.mark.unit
@pytest.mark.parametrize(
    "config, words",
    [
        ({"current_host": "algo-3", "hosts": ["algo-1", "algo-2"]}, "not one of the hosts"),
        ({"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}, "twice"),
        ({"current_host": "algo-1", "hosts": "algo-1"}, "list of host names"),
    ],
)
def test_bad_resource_config_is_a_client_error(config, words):
    with pytest.raises(UserError, match=words):
        distributed.cluster_from_resource_config(config, env={})


@pytest.mark.unit
@pytest.mark.parametrize("num_series, world_size", [(10, 2), (7, 3), (3, 3), (100, 4)])
def test_shards_cover_every_series_once(num_series, world_size):
    shards = [distributed.shard_indices(num_series, rank, world_size) for rank in range(world_size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(num_series))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        distributed.shard_indices(num_series, world_size, world_size)


@pytest.mark.unit
def test_shard_entries_and_batches_per_host():
    cluster = distributed.cluster_from_resource_config({"current_host": "b", "hosts": ["a", "b"]}, env={})
    entries = [{"i": i} for i in range(5)]
    assert [e["i"] for e in distributed.shard_entries(entries, cluster)] == [1, 3]
    with pytest.raises(UserError, match="1 series for 2 hosts"):
        distributed.shard_entries(entries[:1], cluster)
    assert [distributed.batches_per_host(n, 2) for n in (1, 2, 3, 100)] == [1, 1, 2, 50]


@pytest.mark.unit
def test_mxnet_refuses_several_hosts_and_sharded_data_needs_a_batch_count():
    two = distributed.cluster_from_resource_config({"current_host": "a", "hosts": ["a", "b"]}, env={})
    with pytest.raises(UserError, match="backend=mxnet trains on one host only.*2 hosts"):
        distributed.check_backend("mxnet", two)
    distributed.check_backend("torch", two)
    distributed.check_backend("mxnet", distributed.single_host())
    sharded = {"train": {"S3DistributionType": "ShardedByS3Key"}}
    with pytest.raises(UserError, match="num_batches_per_epoch"):
        distributed.check_data_distribution(sharded, None)
    assert distributed.check_data_distribution(sharded, 10)
    assert not distributed.check_data_distribution({"train": {"S3DistributionType": "FullyReplicated"}}, None)


@pytest.mark.unit
def test_failure_reasons_name_the_host():
    assert distributed._name_host("ClientError: bad", "algo-2") == "ClientError: host algo-2: bad"
    assert distributed._name_host("boom", "algo-2") == "host algo-2: boom"


# ---------------------------------------------------------------- two hosts on 127.0.0.1


def two_hosts(tmp_path: Path, with_test: bool = True, **hyperparameters) -> list[OptMl]:
    roots = []
    for host in HOSTS:
        opt_ml = OptMl(tmp_path / host)
        opt_ml.root.mkdir()
        standard_job(opt_ml, with_test=with_test, n_series=6, **hyperparameters)
        opt_ml.config("resourceconfig.json", {"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"})
        roots.append(opt_ml)
    return roots


def run_hosts(roots: list[OptMl], faults: dict[int, str] | None = None, timeout: float = 240) -> list[tuple[int, str]]:
    env = {
        distributed.ENV_MASTER_ADDR: "127.0.0.1",
        distributed.ENV_MASTER_PORT: str(free_port()),
        distributed.ENV_PEER_TIMEOUT: "120",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(TRAIN)],
            env=entrypoint_env(r.root, **env, **({"DEEPAR_FAULT": faults[i]} if faults and i in faults else {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, r in enumerate(roots)
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out))
    return results


def test_two_hosts_train_one_model_with_one_metric_set_and_a_follower_sigterm_stops_both(tmp_path):
    """Both hosts run 2 epochs of 2 batches; the follower gets SIGTERM after its 3rd batch (epoch 2):
    every host stops after that batch and checkpoints, the leader alone writes the model."""
    leader, follower = two_hosts(tmp_path, epochs="3", num_batches_per_epoch="4")
    (leader_rc, leader_log), (follower_rc, follower_log) = run_hosts([leader, follower], faults={1: "sigterm@batch:3"})
    assert leader_rc == 0, leader_log
    assert follower_rc == 0, follower_log
    train = leader.metadata["train"]
    assert (train["epochs_run"], train["interrupted"], train["num_batches_per_epoch"]) == (2, True, 2)
    assert leader.metadata["test_metrics"] is None  # a stopped job skips scoring: on every host
    assert "another host stops the training" in leader_log
    assert not (follower.root / "model" / "deepar-metadata.json").exists()
    assert not (follower.root / "model" / "predictor").exists()
    assert not (follower.root / "output" / "data" / "metrics.json").exists()
    for opt_ml in (leader, follower):  # every host can resume: its own checkpoint after 2 epochs
        state = json.loads((opt_ml.root / "checkpoints" / "deepar-checkpoint.json").read_text())
        assert state["epochs_done"] == 2 and not state.get("completed")
    assert leader_log.count(f"#quality_metric: host={HOSTS[0]}, epoch=") == 2
    assert "#quality_metric" not in follower_log
    assert "rank 1 of 2" in follower_log and "trains on 3 of 6 series, 2 batches per epoch" in follower_log
    assert "published the model" in follower_log
    losses = [re.findall(r"epoch 2/3: train loss ([0-9.]+)", text) for text in (leader_log, follower_log)]
    assert losses[0] and losses[0] == losses[1]  # one loss: the mean over both hosts' shards
    assert leader.failure is None and follower.failure is None


def test_a_failing_follower_fails_the_job_with_its_reason(tmp_path):
    leader, follower = two_hosts(tmp_path, with_test=False, epochs="2", num_batches_per_epoch="4")
    (leader_rc, leader_log), (follower_rc, follower_log) = run_hosts([leader, follower], faults={1: "error@batch:1"})
    assert follower_rc != 0, follower_log
    assert leader_rc != 0, leader_log
    assert f"host {HOSTS[1]}" in leader.failure and "fault injected at batch:1" in leader.failure
    assert f"host {HOSTS[1]}" in follower.failure
    assert not (leader.root / "model" / "deepar-metadata.json").exists()


def test_mxnet_with_two_hosts_is_a_client_error(opt_ml):
    standard_job(opt_ml, backend="mxnet")
    opt_ml.config("resourceconfig.json", {"current_host": HOSTS[0], "hosts": HOSTS})
    result = run_train(opt_ml, timeout=60)
    assert result.returncode == 1
    assert opt_ml.failure.startswith(
        "ClientError: backend=mxnet trains on one host only, but resourceconfig.json lists 2"
    )


# ---------------------------------------------------------------- SDK v2 local mode, instance_count=2


def test_sdk_v2_local_mode_trains_on_two_hosts(sdk_ready, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [str(SDK_PYTHON), "-m", "tests.sdk.v2_multihost", "--image", IMAGE, "--workdir", str(tmp_path)],
        cwd=REPO,
        env={**env, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["network_violations"] == []
    assert {"deepar-metadata.json", "predictor/predictor.json"} <= set(summary["model_files"])
    assert summary["train"]["epochs_run"] == 2 and summary["test_metrics"]["RMSE"] > 0
    epoch_lines = re.findall(r"#quality_metric: host=(algo-\d-\w+), epoch=", output)
    assert len(epoch_lines) == 2 and {h.split("-")[1] for h in epoch_lines} == {"1"}  # the leader's only
    assert re.search(r"algo-2-\w+ is rank 1 of 2", output) and "published the model" in output
