"""``python -m ecs local``: N replicas of the image behind one nginx load balancer on one machine.

What ECS does with the stack, on Docker: every replica is the image's ``serve`` (one container, its
own CPU limit, a Docker health check on /ping); a load-balancer container (nginx from the same
image) on one published port forwards to them over a private Docker network. Every container and
the network carry the label ``deepar.ecs.local=<name>``, so ``--down`` removes exactly what was
started, and a second ``local`` call finds the running set.

Scaling never fails a request: new replicas start first and join the balancer only once their
/ping says 200; leaving replicas are taken out of the balancer's configuration, nginx reloads
(its old workers finish the requests they hold), and only then are they stopped (SIGTERM: the
server drains). A replica whose image or model differs from the request is replaced the same way,
a rolling update.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from sagemaker_deepar.contract import METADATA_FILE
from sagemaker_deepar.errors import UserError

LABEL = "deepar.ecs.local"  # = the set's name, on every container and the network
ROLE = "deepar.ecs.role"  # replica | lb
SPEC = "deepar.ecs.spec"  # a replica's image id and model, to tell a stale one from a current one
IMAGE = "deepar.ecs.image"  # the image and model as asked for: what a later call without them reuses
MODEL = "deepar.ecs.model"
INDEX = "deepar.ecs.index"  # replicas are numbered in start order
LB_PORT = 8080  # inside the balancer container
LB_DIR = "/tmp/lb"  # the balancer's configuration and pid, inside its container
READY_TIMEOUT_S = 180.0
RELOAD_TIMEOUT_S = 120.0  # old nginx workers finish their requests (a forecast may take up to 60 s)
DEFAULT_IMAGE = "sagemaker-deepar:latest"
DEFAULT_PORT = 8080
STOP_TIMEOUT_S = 30  # docker stop's grace: the server drains within 25 s


class LocalError(UserError):
    """The local set could not be started, scaled or removed; the message says which container and why."""


# ---------------------------------------------------------------- docker


def docker(*args: str, stdin: Optional[str] = None, check: bool = True, timeout: float = 120) -> str:
    try:
        result = subprocess.run(
            ["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LocalError("docker is not installed (the local replicas are Docker containers)") from None
    except subprocess.TimeoutExpired:
        raise LocalError(f"docker {' '.join(args[:2])}: no answer in {timeout:.0f} s") from None
    if check and result.returncode != 0:
        raise LocalError(f"docker {' '.join(args[:2])}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    role: str
    index: int
    spec: str
    running: bool
    image: str
    model: str


def containers(name: str) -> list[Container]:
    """Every container of the set ``name`` (running or not), replicas in start order."""
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}={name}").split()
    if not ids:
        return []
    found = []
    for item in json.loads(docker("inspect", *ids)):
        labels = item["Config"]["Labels"] or {}
        found.append(
            Container(
                id=item["Id"],
                name=item["Name"].lstrip("/"),
                role=labels.get(ROLE, ""),
                index=int(labels.get(INDEX, "0")),
                spec=labels.get(SPEC, ""),
                running=bool(item["State"]["Running"]),
                image=labels.get(IMAGE, ""),
                model=labels.get(MODEL, ""),
            )
        )
    return sorted(found, key=lambda c: c.index)


# ---------------------------------------------------------------- what a replica runs


@dataclass(frozen=True)
class Model:
    """How a replica gets the model: a folder mounted read-only as /opt/ml/model, or a model.tar.gz
    mounted read-only and fetched by the server itself (DEEPAR_MODEL_URL)."""

    path: Path

    @classmethod
    def of(cls, where: str) -> "Model":
        path = Path(where).expanduser().resolve()
        if path.is_dir() and not (path / METADATA_FILE).is_file() and (path / "model" / METADATA_FILE).is_file():
            path = path / "model"  # an /opt/ml-style root
        if path.is_dir() and not (path / METADATA_FILE).is_file():
            raise LocalError(f"--model {where}: no {METADATA_FILE} in this folder (or in its model/ folder)")
        if not path.exists():
            raise LocalError(f"--model {where}: no such folder or model.tar.gz")
        return cls(path)

    def docker_args(self) -> list[str]:
        if self.path.is_dir():
            return ["-v", f"{self.path}:/opt/ml/model:ro"]
        return ["-v", f"{self.path}:/model/model.tar.gz:ro", "-e", "DEEPAR_MODEL_URL=/model/model.tar.gz"]


def image_id(image: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", image).strip()


def start_replica(
    name: str, index: int, image: str, model: Model, spec: str, cpus: Optional[float], memory: str
) -> str:
    container = f"{name}-replica-{index}"
    limits = ["--cpus", str(cpus)] if cpus else []
    docker(
        "run", "-d", "--name", container, "--network", network_name(name), "--network-alias", container,
        "--label", f"{LABEL}={name}", "--label", f"{ROLE}=replica", "--label", f"{INDEX}={index}",
        "--label", f"{SPEC}={spec}", "--label", f"{IMAGE}={image}", "--label", f"{MODEL}={model.path}",
        *limits, "--memory", memory,
        "--health-cmd", "/opt/program/container/healthcheck", "--health-interval", "5s",
        "--health-timeout", "5s", "--health-retries", "3", "--health-start-period", "60s",
        "--stop-timeout", str(STOP_TIMEOUT_S),
        *model.docker_args(), image, "serve",
    )  # fmt: skip
    return container


def wait_replica_ready(container: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Until the replica's own /ping says 200 (asked inside it: replicas publish no port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = docker("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", container).split()
        if state[0] != "true":
            logs = subprocess.run(
                ["docker", "logs", "--tail", "3", container], capture_output=True, text=True, timeout=30
            )
            last = " | ".join(line for line in (logs.stdout + logs.stderr).splitlines() if line.strip())
            raise LocalError(f"replica {container} exited with code {state[1]} before /ping said 200: {last}")
        probe = subprocess.run(
            ["docker", "exec", container, "/opt/program/container/healthcheck"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return
        time.sleep(0.3)
    raise LocalError(f"replica {container}: /ping did not say 200 within {timeout:.0f} s")


# ---------------------------------------------------------------- the balancer


def network_name(name: str) -> str:
    return f"{name}-net"


def lb_name(name: str) -> str:
    return f"{name}-lb"


def nginx_conf(replicas: Sequence[str], generation: str) -> str:
    """The balancer: least connections over the ready replicas, bodies streamed through (each
    replica's own nginx enforces the limits and answers 413/408 as JSON). A forecast has no side
    effect, so a request refused by a replica that is going away (connection error, 502, 503) is
    passed to another one, POSTs included."""
    servers = "\n".join(f"    server {replica}:8080 max_fails=2 fail_timeout=5s;" for replica in replicas)
    return f"""# deepar ecs local balancer, generation {generation}
worker_processes 1;
pid {LB_DIR}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {LB_DIR}/body;
  proxy_temp_path {LB_DIR}/proxy;
  fastcgi_temp_path {LB_DIR}/fastcgi;
  uwsgi_temp_path {LB_DIR}/uwsgi;
  scgi_temp_path {LB_DIR}/scgi;
  client_max_body_size 0;
  upstream replicas {{
    least_conn;
{servers}
    keepalive 64;
  }}
  server {{
    listen {LB_PORT};
    # No idle client connections: a reload closes those of the old workers, and a request a client
    # sends on one at that moment would be lost (RemoteDisconnected). Each request has its own.
    keepalive_timeout 0;
    location = /lb-generation {{ return 200 "{generation}"; }}
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 3700s;
      proxy_send_timeout 3700s;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 3;
    }}
  }}
}}
"""


def start_lb(name: str, image: str, host: str, port: int, conf: str) -> None:
    # The image ships nginx (the server's front): the balancer needs no other image.
    boot = f"mkdir -p {LB_DIR} && printf '%s' \"$LB_CONF\" > {LB_DIR}/nginx.conf && exec nginx -c {LB_DIR}/nginx.conf -g 'daemon off;'"
    docker(
        "run", "-d", "--name", lb_name(name), "--network", network_name(name),
        "--label", f"{LABEL}={name}", "--label", f"{ROLE}=lb", "--label", f"deepar.ecs.port={port}",
        "-p", f"{host}:{port}:{LB_PORT}", "-e", f"LB_CONF={conf}",
        "--entrypoint", "sh", image, "-c", boot,
    )  # fmt: skip


def reload_lb(name: str, conf: str, generation: str, url: str) -> None:
    """New configuration in, checked, reloaded; returns once the new workers answer and the old
    ones have finished every request they held."""
    script = (
        f"cat > {LB_DIR}/next.conf && nginx -t -q -c {LB_DIR}/next.conf "
        f"&& mv {LB_DIR}/next.conf {LB_DIR}/nginx.conf && nginx -s reload -c {LB_DIR}/nginx.conf"
    )
    docker("exec", "-i", lb_name(name), "sh", "-c", script, stdin=conf)
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while time.monotonic() < deadline:
        if get(f"{url}/lb-generation") == (200, generation) and not old_workers(name):
            return
        time.sleep(0.1)
    raise LocalError(
        f"balancer {lb_name(name)}: the new configuration was not in place within {RELOAD_TIMEOUT_S:.0f} s"
    )


def old_workers(name: str) -> int:
    """nginx workers of a previous configuration still finishing requests."""
    titles = docker(
        "exec", lb_name(name), "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; true", timeout=30
    )
    return titles.count("is shutting down")


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (OSError, urllib.error.URLError):
        return 0, ""


def wait_url(url: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(f"{url}/ping")[0] == 200:
            return
        time.sleep(0.2)
    raise LocalError(f"{url}/ping did not say 200 within {timeout:.0f} s")


# ---------------------------------------------------------------- the commands


@dataclass(frozen=True)
class Request:
    name: str
    replicas: int
    image: Optional[str]  # None: the running set's, else sagemaker-deepar:latest
    model: Optional[Model]  # None: the running set's
    host: str
    port: Optional[int]  # None: the running set's, else DEFAULT_PORT
    cpus: Optional[float]
    memory: str


def up(request: Request, say: Callable[[str], None] = print) -> str:
    """Start the set, or scale / roll the running one to ``request``; the balancer's URL."""
    found = containers(request.name)
    newest = next((c for c in reversed(found) if c.role == "replica" and c.running), None)
    model = request.model or (Model.of(newest.model) if newest else None)
    image = request.image or (newest.image if newest else DEFAULT_IMAGE)
    if model is None:
        raise LocalError(f"--model DIR is required: no replica of {request.name!r} is running to take it from")
    lb = next((c for c in found if c.role == "lb"), None)
    if lb is not None and not lb.running:
        raise LocalError(f"balancer {lb.name} is not running: `python -m ecs local --down --name {request.name}` first")
    host, port = request.host, request.port or DEFAULT_PORT
    if lb is not None:  # a running set keeps its address
        published = docker("port", lb.name, f"{LB_PORT}/tcp").strip().splitlines()[0]
        host, _, listening = published.rpartition(":")
        if request.port and int(listening) != request.port:
            raise LocalError(
                f"the set {request.name!r} listens on {published}, not port {request.port}: "
                "leave --port out to scale it, or --down first"
            )
        port = int(listening)
    url = f"http://{host}:{port}"
    spec = f"{image_id(image)}|{model.path}"
    replicas = [c for c in found if c.role == "replica"]
    for dead in (c for c in replicas if not c.running):
        say(f"removing stopped replica {dead.name}")
        docker("rm", "-f", dead.id)
    running = [c for c in replicas if c.running]
    keep = [c for c in running if c.spec == spec][-request.replicas :] if request.replicas else []
    leaving = [c for c in running if c not in keep]
    if not found:
        docker("network", "create", "--label", f"{LABEL}={request.name}", network_name(request.name))
    next_index = max((c.index for c in found), default=0) + 1
    started = []
    for offset in range(request.replicas - len(keep)):
        container = start_replica(request.name, next_index + offset, image, model, spec, request.cpus, request.memory)
        say(f"started {container}")
        started.append(container)
    try:
        for container in started:
            wait_replica_ready(container)
            say(f"{container}: /ping 200")
    except LocalError:
        for container in started:
            docker("rm", "-f", container, check=False)
        raise
    members = [c.name for c in keep] + started
    generation = uuid.uuid4().hex[:12]
    conf = nginx_conf(members, generation)
    if lb is None:
        start_lb(request.name, image, host, port, conf)
        say(f"started {lb_name(request.name)} on {url}")
    elif started or leaving:
        reload_lb(request.name, conf, generation, url)
        say(f"balancer now forwards to {', '.join(members)}")
    for container in leaving:
        # out of the balancer, its requests finished: SIGTERM, the server drains, then it goes
        docker("stop", "-t", str(STOP_TIMEOUT_S), container.id, timeout=STOP_TIMEOUT_S + 30)
        docker("rm", container.id)
        say(f"stopped {container.name}")
    wait_url(url)
    return url


def down(name: str, say: Callable[[str], None] = print) -> int:
    """Remove every container and the network of the set; how many containers went."""
    found = containers(name)
    for container in sorted(found, key=lambda c: c.role != "lb"):  # the balancer first: no new requests
        docker("rm", "-f", container.id)
        say(f"removed {container.name}")
    networks = docker("network", "ls", "-q", "--filter", f"label={LABEL}={name}").split()
    for network in networks:
        docker("network", "rm", network)
    return len(found)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, help="how many replicas to run (start, or scale the running set)")
    parser.add_argument("--model", help="the model: a folder with deepar-metadata.json, or a model.tar.gz")
    parser.add_argument("--image", help=f"the image (default: the running set's, else {DEFAULT_IMAGE})")
    parser.add_argument("--name", default="deepar-local", help="the set's name (container names and label)")
    parser.add_argument("--host", default="127.0.0.1", help="the address the balancer's port is published on")
    parser.add_argument(
        "--port", type=int, help=f"the balancer's port (default: the running set's, else {DEFAULT_PORT})"
    )
    parser.add_argument("--cpus", type=float, help="CPU limit of each replica (docker --cpus); default none")
    parser.add_argument("--memory", default="2g", help="memory limit of each replica (docker --memory)")
    parser.add_argument("--down", action="store_true", help="remove every container of the set")


def run(args: argparse.Namespace) -> int:
    if args.down:
        removed = down(args.name)
        print(f"removed {removed} container(s) of {args.name}")
        return 0
    if args.replicas is None or args.replicas < 1:
        raise LocalError("--replicas N (at least 1) is required, or --down")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise LocalError(f"--port {args.port}: not a TCP port")
    request = Request(
        name=args.name,
        replicas=args.replicas,
        image=args.image,
        model=Model.of(args.model) if args.model else None,
        host=args.host,
        port=args.port,
        cpus=args.cpus,
        memory=args.memory,
    )
    print(up(request))
    return 0
