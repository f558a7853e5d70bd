"""nginx in front of gunicorn: the configuration, rendered from the server settings.

nginx reads every request (headers and body) before gunicorn sees it, so slow or stalled clients
cost a file descriptor, never one of gunicorn's threads; it enforces the body limit (413, chunked
bodies included), the header/body timeouts, and answers malformed HTTP with JSON. Like
SageMaker's own framework containers, but with every error answer in this server's JSON schema.
bench/serve_throughput.py --stalled measures it against gunicorn alone (README, Reliability).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import orjson

from .server_config import ServerConfig

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> Optional[str]:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in NGINX_CANDIDATES if Path(path).exists()), None)


def _json_body(message: str) -> str:
    # nginx string literal: single-quoted, so escape backslashes and single quotes.
    return orjson.dumps({"error": message}).decode().replace("\\", "\\\\").replace("'", "\\'")


def nginx_conf(config: ServerConfig, run_dir: Path, upstream_socket: Path) -> str:
    mb = config.max_payload_bytes // 2**20
    errors = {
        400: "bad request: malformed HTTP (request line, headers or chunked encoding)",
        408: "request timed out: the client did not send the request in time",
        411: "length required",
        413: f"body larger than {mb} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
        414: "request URI too long",
        494: "request headers too large",
        502: "the model server is not answering (starting, restarting or shutting down); retry",
        504: f"the model server did not answer within {config.request_timeout + 35} s",
    }
    status_of = {494: 400, 502: 503, 504: 503}
    # URI error pages, not named locations: a malformed request line cannot be redirected to a named location.
    pages = "\n".join(
        f"        error_page {code} ={status_of.get(code, code)} /_deepar_error/{code};" for code in errors
    )
    locations = "\n".join(
        f"        location = /_deepar_error/{code} {{ internal; default_type application/json; "
        f"return {status_of.get(code, code)} '{_json_body(text)}'; }}"
        for code, text in errors.items()
    )
    temp = "\n".join(
        f"    {kind}_temp_path {run_dir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# rendered by sagemaker_deepar/front.py
daemon off;
worker_processes 1;
pid {run_dir / "nginx.pid"};
error_log stderr error;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    server_tokens off;
{temp}
    client_max_body_size {config.max_payload_bytes};
    client_body_buffer_size 1m;
    client_header_timeout {config.body_timeout}s;
    client_body_timeout {config.body_timeout}s;
    keepalive_timeout {config.keepalive}s;
    send_timeout {config.request_timeout}s;
    proxy_connect_timeout 5s;
    proxy_send_timeout {config.request_timeout + 35}s;
    proxy_read_timeout {config.request_timeout + 35}s;
    proxy_buffering on;
    proxy_request_buffering on;
    upstream model_server {{
        server unix:{upstream_socket};
    }}
    server {{
        listen {config.host}:{config.port} default_server backlog=1024;
{pages}
        location / {{
            proxy_pass http://model_server;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
{locations}
    }}
}}
"""
