"""A real mosquitto broker on 127.0.0.1 standing in for AWS IoT Core's mutual-TLS endpoint.

Certificates are made here with openssl: a CA, the broker's certificate (localhost/127.0.0.1), one
client certificate per device (CN = thing name) and a relay certificate; another CA signs a rogue
device. `use_identity_as_username` makes the CN the MQTT user, and the ACL is the IoT policy's
publish rule: a device writes only <prefix>/<its CN>/telemetry; the relay reads <prefix>/#.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import free_port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        cwd=folder,
    )
    return key, cert


def make_cert(folder: Path, name: str, ca: tuple[Path, Path], server: bool = False) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        cwd=folder,
    )
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        if server
        else "extendedKeyUsage=clientAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[1]),
        "-CAkey",
        str(ca[0]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(extensions),
        "-out",
        str(cert),
        cwd=folder,
    )
    os.chmod(key, 0o600)
    return cert, key


@dataclass
class Broker:
    folder: Path
    port: int
    ca: Path
    prefix: str
    process: subprocess.Popen | None = None

    def client(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.pem", self.folder / f"{name}.key"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.folder / "mosquitto.conf")],
            stdout=open(self.folder / "mosquitto.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError((self.folder / "mosquitto.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def log(self) -> str:
        return (self.folder / "mosquitto.log").read_text(errors="replace")


def start_broker(folder: Path, prefix: str, things: list[str]) -> Broker:
    if shutil.which("mosquitto") is None and Path("/usr/sbin/mosquitto").exists():
        os.environ["PATH"] += ":/usr/sbin"
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "test-ca")
    make_cert(folder, "broker", ca, server=True)
    for name in [*things, "relay"]:
        make_cert(folder, name, ca)
    rogue_ca = make_ca(folder, "rogue-ca")
    make_cert(folder, "rogue-device", rogue_ca)
    port = free_port()
    (folder / "acl").write_text(f"pattern write {prefix}/%u/telemetry\n\nuser relay\ntopic read {prefix}/#\n")
    run_as = "user root\n" if os.geteuid() == 0 else ""
    (folder / "mosquitto.conf").write_text(
        f"{run_as}per_listener_settings false\nallow_anonymous false\nacl_file {folder / 'acl'}\n"
        f"persistence false\nlog_type error\nlog_type warning\nlog_type notice\nlog_dest stdout\n"
        f"listener {port} 127.0.0.1\ncafile {ca[1]}\ncertfile {folder / 'broker.pem'}\nkeyfile {folder / 'broker.key'}\n"
        f"require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"
    )
    broker = Broker(folder, port, ca[1], prefix)
    broker.start()
    return broker
