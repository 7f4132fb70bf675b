"""Real MQTT brokers for tests: Mosquitto when installed, else an embedded amqtt broker (child process).

With MES_REQUIRE_SERVICES=1 (CI) a missing Mosquitto is an error instead of a fallback. Every broker started
is recorded, so the run's summary can say which one the tests used (`summary_line()`, for the lead's
pytest_terminal_summary). Each broker runs as its own process so a test can stop it, restart it on the same
port, or SIGKILL it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests import services

MOSQUITTO = os.environ.get("MES_TEST_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
# "mosquitto" or "amqtt" forces one kind (the fallback is tested that way); empty = the best available.
FORCE = os.environ.get("MES_TEST_BROKER", "")

USED: Counter[str] = Counter()


def mosquitto_available() -> bool:
    return os.path.isfile(MOSQUITTO) and os.access(MOSQUITTO, os.X_OK)


def default_kind() -> str:
    if FORCE:
        return FORCE
    if mosquitto_available():
        return "mosquitto"
    if services.REQUIRE:
        raise RuntimeError(f"MES_REQUIRE_SERVICES=1 but Mosquitto is not installed (looked for {MOSQUITTO})")
    return "amqtt"


def summary_line() -> str:
    """One line for the test summary: which brokers the run started, and how often."""
    if not USED:
        return "MQTT brokers used: none"
    used = ", ".join(f"{k} ×{n}" for k, n in sorted(USED.items()))
    fallback = "" if "mosquitto" in USED or not USED else " (Mosquitto not installed: embedded fallback)"
    return f"MQTT brokers used: {used}{fallback}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A server certificate (and its key) signed by `ca`, for a TLS listener."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class User:
    name: str
    password: str


class Broker:
    """One broker process on 127.0.0.1:port; `start()` again after `stop()`/`kill()` reuses the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        kind: str | None = None,
        tls: Tls | None = None,
        users: list[User] | None = None,
        acl_file: Path | None = None,
    ) -> None:
        self.kind = kind or default_kind()
        if acl_file is not None and self.kind != "mosquitto":
            raise RuntimeError("a topic ACL file is a Mosquitto feature")
        if self.kind == "mosquitto" and not mosquitto_available():
            raise RuntimeError(f"Mosquitto requested but not installed at {MOSQUITTO}")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.users = users or []
        self.acl_file = acl_file
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._config = self._write_config()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def _write_config(self) -> Path:
        if self.kind == "mosquitto":
            return self._mosquitto_config()
        if self.kind == "amqtt":
            return self._amqtt_config()
        raise ValueError(f"unknown broker kind {self.kind!r}")

    def _mosquitto_config(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            # As root, Mosquitto would switch to its own user, which cannot read the test's private tmp files.
            lines.append("user root")
        if self.users:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for u in self.users:
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pw), u.name, u.password], check=True, capture_output=True
                )
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _amqtt_config(self) -> Path:
        listener: dict[str, Any] = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        if self.tls:
            listener.update(ssl=True, certfile=str(self.tls.cert), keyfile=str(self.tls.key))
        plugins: dict[str, Any] = {}
        if self.users:
            with warnings.catch_warnings():  # amqtt verifies sha512-crypt hashes with it (Python ≤ 3.12)
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt

            pw = self.workdir / "passwd"
            pw.write_text(
                "".join(
                    f"{u.name}:{crypt.crypt(u.password, crypt.mksalt(crypt.METHOD_SHA512))}\n"
                    for u in self.users
                )
            )
            plugins["amqtt.plugins.authentication.FileAuthPlugin"] = {"password_file": str(pw)}
        else:
            plugins["amqtt.plugins.authentication.AnonymousAuthPlugin"] = {"allow_anonymous": True}
        config = {"listeners": {"default": listener}, "plugins": plugins}
        path = self.workdir / "amqtt.json"
        path.write_text(json.dumps(config))
        return path

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        if self.kind == "mosquitto":
            cmd = [MOSQUITTO, "-c", str(self._config)]
        else:
            cmd = [sys.executable, "-m", "tests.brokers", "amqtt", str(self._config)]
        self._log = open(self.log_path, "ab")  # kept open for the process's lifetime
        root = Path(__file__).resolve().parents[1]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=root)
        USED[self.kind] += 1
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:  # poll with a deadline until the listener accepts connections
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited at start:\n{self.log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind} did not listen on {self.port} within {timeout} s")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt death (SIGKILL): no goodbye to any client."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: int) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def make_tls(workdir: Path, hostname: str = "127.0.0.1") -> Tls:
    """A throwaway CA and a server certificate for `hostname` (an IP address or a DNS name)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("mes test CA"))
        .issuer_name(name("mes test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    srv_key = key()
    srv = (
        x509.CertificateBuilder()
        .subject_name(name(hostname))
        .issuer_name(ca.subject)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    workdir.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    tls = Tls(ca=workdir / "ca.pem", cert=workdir / "server.pem", key=workdir / "server.key")
    tls.ca.write_bytes(ca.public_bytes(pem))
    tls.cert.write_bytes(srv.public_bytes(pem))
    tls.key.write_bytes(
        srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tls


def _run_amqtt(config_path: str) -> None:
    """The embedded broker's child process: serve until SIGTERM."""
    import asyncio
    import logging

    from amqtt.broker import Broker as AmqttBroker

    logging.basicConfig(level=logging.WARNING)
    config = json.loads(Path(config_path).read_text())

    async def serve() -> None:
        broker = AmqttBroker(config)
        await broker.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "amqtt":
        _run_amqtt(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.brokers amqtt CONFIG.json")
