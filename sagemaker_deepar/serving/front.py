"""nginx in front of gunicorn: the configuration, rendered from the server settings.

nginx reads every request (headers and body) before gunicorn sees it, so slow or stalled clients
cost a file descriptor, never one of gunicorn's threads; it enforces the body limit (413, chunked
bodies included), the header/body timeouts, and answers malformed HTTP with JSON. Like
SageMaker's own framework containers, but with every error answer in this server's JSON schema.
bench/serve_throughput.py --stalled measures it against gunicorn alone (README, Reliability).

Two server blocks in the one nginx process, because nginx never answers a body that times out: it
logs 408 and closes the connection (ngx_http_finalize_request terminates requests that end in 408).
The *edge* server, on the port, streams the body on unbuffered to the *buffer* server on a unix
socket, which buffers it whole and enforces ``client_body_timeout`` before gunicorn is involved.
When the client stalls, the buffer server closes its side; the edge server still holds the client's
connection and answers that closed upstream as 408 with a JSON body. The buffer server answers
everything else itself (its errors reach the client unchanged), so the edge's own 502 can only mean
that closed upstream.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import orjson

from .server_config import ServerConfig

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
# The edge's own body timeout is only a backstop: the buffer server's must fire first.
EDGE_BODY_TIMEOUT_MARGIN_S = 5


def find_nginx() -> Optional[str]:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in NGINX_CANDIDATES if Path(path).exists()), None)


def _json_body(message: str) -> str:
    # nginx string literal: single-quoted, so escape backslashes and single quotes.
    return orjson.dumps({"error": message}).decode().replace("\\", "\\\\").replace("'", "\\'")


def _error_pages(errors: dict[int, tuple[int, str]]) -> str:
    """error_page lines and their internal locations: nginx's error ``code`` answered as (status, message) JSON."""
    # URI error pages, not named locations: a malformed request line cannot be redirected to a named location.
    pages = [f"        error_page {code} ={status} /_deepar_error/{code};" for code, (status, _) in errors.items()]
    locations = [
        f"        location = /_deepar_error/{code} {{ internal; default_type application/json; "
        f"return {status} '{_json_body(text)}'; }}"
        for code, (status, text) in errors.items()
    ]
    return "\n".join(pages + locations)


def nginx_conf(config: ServerConfig, run_dir: Path, upstream_socket: Path) -> str:
    mb = config.max_payload_bytes // 2**20
    upstream_timeout = config.request_timeout + 35
    http_errors = {
        400: (400, "bad request: malformed HTTP (request line, headers or chunked encoding)"),
        411: (411, "length required"),
        413: (413, f"body larger than {mb} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"),
        414: (414, "request URI too long"),
        494: (400, "request headers too large"),
    }
    edge_errors = {
        **http_errors,
        502: (
            408,
            f"request timed out: the body did not arrive within {config.body_timeout} s of its last bytes "
            "(DEEPAR_BODY_TIMEOUT)",
        ),
    }
    buffer_errors = {
        **http_errors,
        502: (503, "the model server is not answering (starting, restarting or shutting down); retry"),
        504: (503, f"the model server did not answer within {upstream_timeout} s"),
    }
    buffer_socket = run_dir / "buffer.sock"
    temp = "\n".join(
        f"    {kind}_temp_path {run_dir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# rendered by sagemaker_deepar/serving/front.py
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
    keepalive_timeout {config.keepalive}s;
    send_timeout {config.request_timeout}s;
    proxy_connect_timeout 5s;
    proxy_send_timeout {upstream_timeout}s;
    proxy_read_timeout {upstream_timeout}s;
    proxy_buffering on;
    upstream model_server {{
        server unix:{upstream_socket};
    }}
    upstream buffer_server {{
        server unix:{buffer_socket};
    }}
    # edge: the port; passes the body on as it arrives and turns a stalled body into a JSON 408
    server {{
        listen {config.host}:{config.port} default_server backlog=1024;
        client_body_timeout {config.body_timeout + EDGE_BODY_TIMEOUT_MARGIN_S}s;
        location / {{
            proxy_pass http://buffer_server;
            proxy_http_version 1.1;  # chunked bodies stream unbuffered only over HTTP/1.1
            proxy_request_buffering off;
            proxy_next_upstream off;
            proxy_read_timeout {upstream_timeout + 5}s;
            proxy_send_timeout {upstream_timeout + 5}s;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
{_error_pages(edge_errors)}
    }}
    # buffer: reads each request whole (timeouts, body limit) before gunicorn sees it
    server {{
        listen unix:{buffer_socket} backlog=1024;
        client_body_timeout {config.body_timeout}s;
        location / {{
            proxy_pass http://model_server;
            proxy_request_buffering on;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $http_x_forwarded_for;
        }}
{_error_pages(buffer_errors)}
    }}
}}
"""
