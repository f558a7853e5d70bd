"""Multi-host training: the hosts of ``resourceconfig.json`` train one torch DeepAR data-parallel.

Every host reads the whole ``train`` channel (FullyReplicated) and keeps its share of the series
(series ``i`` goes to host ``i % hosts``); Lightning's DDP strategy over torch distributed (gloo, CPU)
averages the gradients, so every host holds the same weights after every step. The first host of
``hosts`` is the leader: the rendezvous (``MASTER_ADDR``), and the only host that prints metric
lines, scores the test channel and writes ``/opt/ml/model`` and ``/opt/ml/output/data``.

Besides torch's own process group, the leader serves a small key-value store (torch's ``TCPStore``,
on ``MASTER_PORT + 1``) for what DDP cannot say: "the model is published" (followers wait for it
before they exit 0, because in SDK local mode the first container to exit stops the others) and
"host X failed: reason" (so the leader's failure file names the host that broke the job).

mxnet trains on one host only: more hosts are a ClientError before any data is read (see
``check_backend``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 7777  # as AWS's PyTorch training toolkit
# Test and special-network overrides: the rendezvous address (e.g. 127.0.0.1 when several host names
# map to one machine) and port; how long a host waits for its peers (resolve, connect, collectives).
ENV_MASTER_ADDR = "DEEPAR_MASTER_ADDR"
ENV_MASTER_PORT = "DEEPAR_MASTER_PORT"
ENV_PEER_TIMEOUT = "DEEPAR_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 900.0  # AWS's PyTorch toolkit waits up to 15 minutes for peers' DNS names
# How long followers wait for the leader to publish the model (it may still be scoring the test channel).
PUBLISH_TIMEOUT = timedelta(days=5)  # SageMaker's longest MaxRuntimeInSeconds
# How long the leader, after a collective broke, waits for the failed host's reason to arrive.
FAILURE_REPORT_WAIT = 10.0

OUTCOME_KEY = "outcome"
OUTCOME_PUBLISHED = "published"
FAILURE_PREFIX = "failure/"
ACK_PREFIX = "ack/"
ACK_TIMEOUT = 60
REASON_KINDS = ("ClientError", "AlgorithmError")


@dataclass(frozen=True)
class Cluster:
    """The hosts of the job, this host among them, and where they meet."""

    hosts: tuple[str, ...]
    current_host: str
    master_addr: str
    master_port: int
    network_interface: Optional[str] = None
    peer_timeout: float = DEFAULT_PEER_TIMEOUT

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def leader(self) -> str:
        return self.hosts[0]

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def store_port(self) -> int:
        return self.master_port + 1


def single_host(host: str = "algo-1") -> Cluster:
    return Cluster(hosts=(host,), current_host=host, master_addr="127.0.0.1", master_port=DEFAULT_MASTER_PORT)


def cluster_from_resource_config(config: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster of SageMaker's ``resourceconfig.json`` (tolerant: unknown keys are ignored).

    The order of ``hosts`` is SageMaker's (lexicographic: algo-1, algo-10, algo-2): every host
    computes the same ranks from it, which is all that matters.
    """
    current = config.get("current_host", "algo-1")
    hosts = config.get("hosts") or [current]
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise UserError(f"resourceconfig.json: 'hosts' must be a list of host names, got {hosts!r}")
    if len(set(hosts)) != len(hosts):
        raise UserError(f"resourceconfig.json: 'hosts' lists a host twice: {hosts}")
    if current not in hosts:
        raise UserError(f"resourceconfig.json: current_host {current!r} is not one of the hosts {hosts}")
    port_text = env.get(ENV_MASTER_PORT, str(DEFAULT_MASTER_PORT))
    timeout_text = env.get(ENV_PEER_TIMEOUT, str(DEFAULT_PEER_TIMEOUT))
    try:
        port, timeout = int(port_text), float(timeout_text)
    except ValueError:
        raise UserError(f"{ENV_MASTER_PORT}={port_text!r} / {ENV_PEER_TIMEOUT}={timeout_text!r}: not numbers") from None
    return Cluster(
        hosts=tuple(hosts),
        current_host=current,
        master_addr=env.get(ENV_MASTER_ADDR) or hosts[0],
        master_port=port,
        network_interface=config.get("network_interface_name"),
        peer_timeout=timeout,
    )


def read_cluster(resource_config: Path, env: Mapping[str, str] = os.environ) -> Cluster:
    import json

    if not resource_config.exists():
        return single_host()
    try:
        config = json.loads(resource_config.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{resource_config} (resource configuration) is not valid JSON: {error}") from None
    return cluster_from_resource_config(config, env)


def check_backend(backend: str, cluster: Cluster) -> None:
    """mxnet is single-host: refuse more hosts before any data is read.

    A ClientError rather than a fallback where every host trains alone: the fallback would bill the
    extra instances for nothing and hide that the job is not doing what was asked.
    """
    if backend == "mxnet" and cluster.is_distributed:
        log.error("backend mxnet trains on one host only; this job has %d hosts", cluster.world_size)
        raise UserError(
            f"backend=mxnet trains on one host only, but resourceconfig.json lists {cluster.world_size} hosts "
            f"({', '.join(cluster.hosts)}): use instance_count=1, or backend=torch for multi-host training"
        )


def check_data_distribution(channels: Mapping[str, Mapping[str, Any]], num_batches_per_epoch: Optional[int]) -> bool:
    """Whether the train channel is already split across hosts (ShardedByS3Key): then it is not sharded again.

    Every host must run the same number of batches per epoch (a collective per step), which
    replicated data gives for free; sharded data needs ``num_batches_per_epoch`` set.
    """
    sharded = channels.get("train", {}).get("S3DistributionType") == "ShardedByS3Key"
    if sharded and num_batches_per_epoch is None:
        raise UserError(
            "the train channel is ShardedByS3Key across several hosts: set the hyperparameter "
            "num_batches_per_epoch, so that every host runs the same number of batches per epoch "
            "(or use FullyReplicated: each host then takes its share of the series itself)"
        )
    return sharded


def shard_indices(num_series: int, rank: int, world_size: int) -> np.ndarray:
    """The series of host ``rank``: every ``world_size``-th from ``rank`` (balances series of similar sizes)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return np.arange(rank, num_series, world_size, dtype=np.int64)


def shard_entries(entries: Sequence[dict], cluster: Cluster) -> list[dict]:
    if cluster.world_size > len(entries):
        raise UserError(
            f"train: {len(entries)} series for {cluster.world_size} hosts; every host needs at least one "
            "series: use fewer instances"
        )
    return [entries[i] for i in shard_indices(len(entries), cluster.rank, cluster.world_size)]


def batches_per_host(total_batches: int, world_size: int) -> int:
    """An epoch's batches split over the hosts (rounded up): one epoch still sees the data once."""
    return max(1, -(-total_batches // world_size))


# ---------------------------------------------------------------- the job's coordination


def resolve(host: str, timeout: float) -> str:
    """The address of ``host``, retried: peers' names may not resolve until their containers start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError as error:
            if time.monotonic() > deadline:
                raise UserError(f"host {host} cannot be resolved after {timeout:.0f} s: {error}") from None
            time.sleep(1.0)


class Session:
    """One host's part in a multi-host job: rendezvous environment, the store, outcome and failures."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.store: Any = None
        self.training_error: Optional[BaseException] = None

    def connect(self) -> None:
        """Set Lightning's rendezvous environment and open the job's store (the leader serves it)."""
        from torch.distributed import TCPStore

        cluster = self.cluster
        address = resolve(cluster.master_addr, cluster.peer_timeout)
        os.environ.update(
            MASTER_ADDR=address,
            MASTER_PORT=str(cluster.master_port),
            NODE_RANK=str(cluster.rank),
        )
        for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK"):  # Lightning would think it was launched
            os.environ.pop(name, None)
        interface = cluster.network_interface
        if interface and Path("/sys/class/net", interface).exists():  # gloo picks its NIC from this name
            os.environ["GLOO_SOCKET_IFNAME"] = interface
        log.info(
            "multi-host training: host %s is rank %d of %d (%s), rendezvous %s:%d",
            cluster.current_host,
            cluster.rank,
            cluster.world_size,
            "leader" if cluster.is_leader else f"follower of {cluster.leader}",
            address,
            cluster.master_port,
        )
        self.store = TCPStore(
            address,
            cluster.store_port,
            cluster.world_size,
            cluster.is_leader,
            timeout=timedelta(seconds=cluster.peer_timeout),
            wait_for_workers=False,
        )

    def trainer_kwargs(self) -> dict[str, Any]:
        strategy = _every_host_checkpoints_strategy()(
            process_group_backend="gloo", timeout=timedelta(seconds=self.cluster.peer_timeout)
        )
        return {"strategy": strategy, "num_nodes": self.cluster.world_size, "devices": 1}

    def callbacks(self, control: Any) -> tuple[list[Any], list[Any]]:
        """The callbacks to put before and after the job's own epoch reporter (see ``_lightning_callbacks``)."""
        before, after = _lightning_callbacks(self, control)
        return [before], [after]

    def raise_if_training_failed(self) -> None:
        """GluonTS logs an exception raised inside ``fit`` and goes on with the last checkpoint; with a
        peer gone that would publish a model the job did not finish. Re-raise it."""
        if self.training_error is not None:
            raise self.training_error

    def publish(self) -> None:
        """Leader: the model is in place. Stay until every follower has read it (the store lives in
        this process), bounded: a follower gone by then is not waited for."""
        self.store.set(OUTCOME_KEY, OUTCOME_PUBLISHED)
        acks = [ACK_PREFIX + host for host in self.cluster.hosts[1:]]
        try:
            self.store.wait(acks, timedelta(seconds=ACK_TIMEOUT))
        except Exception as error:
            log.warning("not every follower confirmed the end of the job within %d s: %s", ACK_TIMEOUT, error)

    def wait_for_leader(self) -> None:
        """Followers: block until the leader published the model (or said it failed), then confirm."""
        log.info("waiting for the leader %s to write the model", self.cluster.leader)
        try:
            self.store.set_timeout(PUBLISH_TIMEOUT)
            outcome = self.store.get(OUTCOME_KEY).decode("utf-8", "replace")
        except Exception as error:  # the store lives in the leader's process: it died or left
            raise UserError(
                f"the leader host {self.cluster.leader} stopped before publishing the model ({error})"
            ) from None
        if outcome != OUTCOME_PUBLISHED:
            raise UserError(f"the leader host {self.cluster.leader} failed: {outcome}")
        _quietly(self.store.set, ACK_PREFIX + self.cluster.current_host, "done")
        log.info("the leader %s published the model; this host is done", self.cluster.leader)

    def failure_reason(self, reason: str) -> str:
        """The reason this host writes to its failure file; tells the other hosts, too."""
        cluster = self.cluster
        if self.store is None:
            return _name_host(reason, cluster.current_host)
        if cluster.is_leader:
            peer = self._peer_failure(wait=FAILURE_REPORT_WAIT if self.training_error is not None else 0.0)
            final = peer or _name_host(reason, cluster.current_host)
            _quietly(self.store.set, OUTCOME_KEY, final)
            return final
        final = _name_host(reason, cluster.current_host)
        _quietly(self.store.set, FAILURE_PREFIX + cluster.current_host, final)
        return final

    def _peer_failure(self, wait: float) -> Optional[str]:
        deadline = time.monotonic() + wait
        while True:
            for host in self.cluster.hosts[1:]:
                key = FAILURE_PREFIX + host
                if _quietly(self.store.check, [key]):
                    return self.store.get(key).decode("utf-8", "replace")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)


def _name_host(reason: str, host: str) -> str:
    """``ClientError: x`` -> ``ClientError: host algo-2: x`` (the kind stays first, as SageMaker shows it)."""
    kind, sep, rest = reason.partition(": ")
    if sep and kind in REASON_KINDS:
        return f"{kind}: host {host}: {rest}"
    return f"host {host}: {reason}"


def _quietly(call, *args):
    try:
        return call(*args)
    except Exception as error:  # the store is best effort once something failed: never hide the first error
        log.warning("could not reach the job's store: %s", error)
        return None


_active: Optional[Session] = None


def start(cluster: Cluster) -> Optional[Session]:
    """Join the job's hosts (no-op on one host); the session is process-wide, like the SIGTERM handler."""
    global _active
    if not cluster.is_distributed:
        return None
    session = Session(cluster)
    _active = session
    session.connect()
    return session


def active() -> Optional[Session]:
    return _active


def failure_reason(reason: str) -> str:
    """What this host's failure file says: on several hosts, which host failed (the leader's names the culprit)."""
    return _active.failure_reason(reason) if _active is not None else reason


# ---------------------------------------------------------------- Lightning


def _every_host_checkpoints_strategy():
    from lightning.pytorch.strategies import DDPStrategy

    class EveryHostCheckpointsDDP(DDPStrategy):
        """DDP whose checkpoints are written on every host, not rank 0's only.

        The weights and optimizer states are the same on every host, and each host resumes from its
        own checkpoint folder (GluonTS also reloads its best checkpoint on every host after fit).
        """

        def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

        def remove_checkpoint(self, filepath) -> None:
            self.checkpoint_io.remove_checkpoint(filepath)

    return EveryHostCheckpointsDDP


def _lightning_callbacks(session: Session, control: Any) -> tuple[Any, Any]:
    import lightning.pytorch as pl
    import torch

    class AgreeOnLossAndStart(pl.Callback):
        """Runs before the job's reporter: the epoch loss is the mean over hosts (one metric set, the
        same early-stopping and best-checkpoint decisions everywhere), and every host resumes from
        the same epoch."""

        def on_train_start(self, trainer, pl_module) -> None:
            epochs = trainer.strategy.all_gather(torch.tensor([control.start_epoch]))
            starts = sorted({int(e) for e in epochs.flatten()})
            if len(starts) > 1:
                raise UserError(
                    f"the hosts' checkpoint folders resume from different epochs {starts}: give every host "
                    "the same checkpoints, or none"
                )
            log_locally = pl_module.log

            # GluonTS logs the epoch's train_loss without sync_dist: each host would see its own shard's.
            def log_across_hosts(name, value, *args, **kwargs):
                return log_locally(name, value, *args, **{**kwargs, "sync_dist": True})

            pl_module.log = log_across_hosts

        def on_exception(self, trainer, pl_module, exception) -> None:
            session.training_error = exception

    class AgreeOnStop(pl.Callback):
        """Runs after the job's reporter: when one host stops (SIGTERM, early stopping) all stop at the
        same batch; a host that went on alone would wait for the others' gradients forever."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._agree(trainer)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._agree(trainer)

        def _agree(self, trainer) -> None:
            stop = trainer.strategy.reduce_boolean_decision(bool(trainer.should_stop), all=False)
            if stop and not trainer.should_stop:
                log.info("another host stops the training: stopping after this batch")
                control.stop_requested.set()
            trainer.should_stop = stop

    return AgreeOnLossAndStart(), AgreeOnStop()
