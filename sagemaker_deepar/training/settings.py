"""The training job's environment (`train`), parsed once by ``training.job.main`` and handed down."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from ..settings import EnvironmentSettings
from .faults import FAULT_ENV

DEFAULT_MASTER_PORT = 7777  # as AWS's PyTorch training toolkit
# Test and special-network overrides: the rendezvous address (e.g. 127.0.0.1 when several host names
# map to one machine) and port; how long a host waits for its peers (resolve, connect, collectives).
ENV_MASTER_ADDR = "DEEPAR_MASTER_ADDR"
ENV_MASTER_PORT = "DEEPAR_MASTER_PORT"
ENV_PEER_TIMEOUT = "DEEPAR_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 900.0  # AWS's PyTorch toolkit waits up to 15 minutes for peers' DNS names


class TrainingEnvironment(EnvironmentSettings):
    """Training (`train`: a SageMaker training job, or `docker run IMAGE train`).

    The job's own configuration is SageMaker's files under /opt/ml/input/config (hyperparameters,
    channels, hosts); these variables only change where and how it runs."""

    base_dir: str = Field(
        "/opt/ml", validation_alias="SAGEMAKER_BASE_DIR", description="SageMaker's /opt/ml (tests move it)"
    )
    job_name: Optional[str] = Field(
        None,
        validation_alias="TRAINING_JOB_NAME",
        description="set by SageMaker: progress is logged for CloudWatch (no progress bar) and names the mlflow run",
    )
    master_addr: Optional[str] = Field(
        None,
        validation_alias=ENV_MASTER_ADDR,
        description="multi-host training: the rendezvous host; unset: the first host of resourceconfig.json",
    )
    master_port: int = Field(
        DEFAULT_MASTER_PORT,
        ge=1,
        le=65534,
        validation_alias=ENV_MASTER_PORT,
        description="multi-host training: the rendezvous port (the job's store listens on the next one)",
    )
    peer_timeout: float = Field(
        DEFAULT_PEER_TIMEOUT,
        gt=0,
        validation_alias=ENV_PEER_TIMEOUT,
        description="multi-host training: seconds to wait for the other hosts' names and for the rendezvous",
    )
    fault: Optional[str] = Field(
        None,
        validation_alias=FAULT_ENV,
        description="tests only: named points where the job receives SIGTERM or fails (sagemaker_deepar/training/faults.py)",
    )
