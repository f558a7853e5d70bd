"""Where an approved model is served: SageMaker endpoints (blue/green with alarm rollback) or, offline,
local containers of our image behind a name -> URL map. Both roll out the same way: the new fleet must
be healthy before it takes traffic, and when it is not the old one keeps serving untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

from sagemaker_deepar.contract import UnsafeArchiveError, extract_model_tarball

from . import settings
from .events import DeployFailed

if TYPE_CHECKING:
    from evaluation.deploy import Fleet


@dataclass(frozen=True)
class Rollout:
    endpoint: str
    created: bool  # a new endpoint (else an update of a serving one)
    target: str  # the endpoint config (SageMaker) or URL (local) now serving


class Endpoints(Protocol):
    def roll_out(self, endpoint: str, model_data: str, image: str) -> Rollout: ...


# --- SageMaker -----------------------------------------------------------------------------------


def alarm_name(endpoint: str) -> str:
    """The CloudWatch alarm (mlops/template.yaml) that rolls an update of ``endpoint`` back."""
    return f"{endpoint}-errors"


def blue_green(alarm: str, wait_seconds: int = 300, timeout_seconds: int = 3600) -> dict:
    """All capacity at once to the new (green) fleet, kept ``wait_seconds`` beside the old (blue) one
    while the alarm watches; the alarm firing in that window rolls traffic back to blue."""
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": wait_seconds},
            "TerminationWaitInSeconds": wait_seconds,
            "MaximumExecutionTimeoutInSeconds": timeout_seconds,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]},
    }


@dataclass
class SageMakerEndpoints:
    """Real endpoints through the SageMaker API (evaluation.deploy's create/retire helpers)."""

    client: Any
    role: str
    instance_type: str = "ml.c5.xlarge"
    timeout: float = 3600
    poll: float = 15
    bake_seconds: int = 300

    def _fleet(self) -> "Fleet":
        from evaluation.deploy import Fleet

        return Fleet(instance_type=self.instance_type, instance_count=1, timeout=self.timeout)

    def roll_out(self, endpoint: str, model_data: str, image: str) -> Rollout:
        from evaluation import deploy as sm_deploy

        exists = sm_deploy.endpoint_exists(self.client, endpoint)
        old_config = self.client.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] if exists else None
        model = sm_deploy.create_model(self.client, endpoint, image, model_data, self.role, {})
        config = sm_deploy.create_config(self.client, endpoint, [sm_deploy.variant("variant-1", model, self._fleet())])
        if old_config is None:
            self.client.create_endpoint(EndpointName=endpoint, EndpointConfigName=config)
        else:
            self.client.update_endpoint(
                EndpointName=endpoint,
                EndpointConfigName=config,
                DeploymentConfig=blue_green(alarm_name(endpoint), self.bake_seconds, int(self.timeout)),
            )
        description = self._settle(endpoint, updating=old_config is not None)
        serving = description.get("EndpointConfigName")
        if description["EndpointStatus"] != "InService" or serving != config:
            # Failed create, or the update rolled back (alarm or unhealthy green): blue still serves.
            sm_deploy.retire(self.client, config, keep=set())
            reason = description.get("FailureReason") or "the new fleet did not become healthy"
            still = f"; {endpoint} keeps serving {serving}" if old_config else ""
            raise DeployFailed(f"endpoint {endpoint}: rollout of {model_data} failed: {reason}{still}")
        if old_config and old_config != config:
            sm_deploy.retire(self.client, old_config, keep={model})
        return Rollout(endpoint, old_config is None, config)

    def _settle(self, endpoint: str, updating: bool) -> dict:
        deadline = time.monotonic() + self.timeout
        if updating:
            time.sleep(min(self.poll, 1))  # the status turns Updating shortly after the call returns
        while True:
            description = self.client.describe_endpoint(EndpointName=endpoint)
            if description["EndpointStatus"] in ("InService", "Failed", "OutOfService", "UpdateRollbackFailed"):
                return description
            if time.monotonic() > deadline:
                raise DeployFailed(
                    f"endpoint {endpoint} still {description['EndpointStatus']} after {self.timeout:.0f} s"
                )
            time.sleep(self.poll)


# --- local containers ----------------------------------------------------------------------------


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class LocalEndpoints:
    """Offline endpoints: ``docker run IMAGE serve`` on a loopback port per rollout, and a JSON map
    ``<state>/endpoints.json`` {endpoint: {url, container, model_data}} that callers resolve names with.
    An update starts the new container beside the old one and switches the map only once it answers
    /ping and a forecast; otherwise it removes the new one and the old keeps serving."""

    state_dir: Path
    s3: Any = None  # to fetch s3:// model artifacts (moto offline)
    ready_timeout: float = 120
    smoke_instance: Optional[dict] = None

    @property
    def map_file(self) -> Path:
        return self.state_dir / "endpoints.json"

    def endpoints(self) -> dict[str, dict]:
        return json.loads(self.map_file.read_text()) if self.map_file.exists() else {}

    def url(self, endpoint: str) -> str:
        entry = self.endpoints().get(endpoint)
        if entry is None:
            raise DeployFailed(f"no local endpoint {endpoint} (known: {', '.join(self.endpoints()) or 'none'})")
        return entry["url"]

    def _save(self, endpoints: dict[str, dict]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.map_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(endpoints, indent=2))
        tmp.replace(self.map_file)  # readers never see half a map

    def _model_dir(self, model_data: str) -> Path:
        """The artifact unpacked into ``<state>/models/<id>/model`` (mounted as /opt/ml)."""
        root = self.state_dir / "models" / uuid.uuid4().hex[:12]
        (root / "model").mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.tar.gz"
            if model_data.startswith("s3://"):
                bucket, _, key = model_data[5:].partition("/")
                if self.s3 is None:
                    from awsinfra.clients import client

                    self.s3 = client("s3")
                self.s3.download_file(bucket, key, str(archive))
            else:
                shutil.copy(model_data.removeprefix("file://"), archive)
            try:
                extract_model_tarball(archive, root / "model")
            except UnsafeArchiveError as error:  # links, a bomb (#23 item 1): nothing was written
                shutil.rmtree(root, ignore_errors=True)
                raise DeployFailed(f"model artifact {model_data} was refused: {error}") from None
            except tarfile.TarError as error:
                shutil.rmtree(root, ignore_errors=True)
                raise DeployFailed(f"model artifact {model_data} is not a tar.gz: {error}") from None
        return root

    def roll_out(self, endpoint: str, model_data: str, image: str) -> Rollout:
        import requests

        endpoints = self.endpoints()
        old = endpoints.get(endpoint)
        root = self._model_dir(model_data)
        container = f"{endpoint}-{uuid.uuid4().hex[:6]}"
        started = docker(
            "run",
            "-d",
            "--name",
            container,
            "-p",
            "127.0.0.1::8080",
            "-v",
            f"{root}:/opt/ml:ro",
            image or settings.current().image,
            "serve",
        )
        if started.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise DeployFailed(f"endpoint {endpoint}: docker run failed: {started.stderr.strip()[-500:]}")
        port = docker("port", container, "8080/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        problem = self._health(container, url, requests)
        if problem:
            logs = docker("logs", "--tail", "40", container)
            docker("rm", "-f", container)
            shutil.rmtree(root, ignore_errors=True)
            still = f"; {endpoint} keeps serving {old['url']} ({old['model_data']})" if old else ""
            lines = (logs.stdout + logs.stderr).strip().splitlines()
            tail = [line for line in lines if "Error" in line][-1:] or lines[-3:]
            raise DeployFailed(
                f"endpoint {endpoint}: the new model {model_data} is unhealthy ({problem}); rolled back{still}. "
                f"Container log: {' | '.join(tail)}"
            )
        endpoints[endpoint] = {"url": url, "container": container, "model_data": model_data, "root": str(root)}
        self._save(endpoints)  # traffic switches here, atomically
        if old:
            self._remove(old)
        return Rollout(endpoint, old is None, url)

    def _health(self, container: str, url: str, requests: Any) -> Optional[str]:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip() != "true":
                return "the container exited"
            time.sleep(0.5)
        else:
            return f"/ping not 200 within {self.ready_timeout:.0f} s"
        if self.smoke_instance is not None:
            response = requests.post(url + "/invocations", json={"instances": [self.smoke_instance]}, timeout=60)
            if response.status_code != 200:
                return f"a test forecast answered {response.status_code}: {response.text[:200]}"
        return None

    def _remove(self, entry: dict) -> None:
        docker("rm", "-f", entry["container"])
        shutil.rmtree(entry.get("root", ""), ignore_errors=True)

    def delete(self, endpoint: str) -> bool:
        endpoints = self.endpoints()
        entry = endpoints.pop(endpoint, None)
        if entry:
            self._remove(entry)
            self._save(endpoints)
        return entry is not None

    def delete_all(self) -> list[str]:
        names = list(self.endpoints())
        for name in names:
            self.delete(name)
        return names
