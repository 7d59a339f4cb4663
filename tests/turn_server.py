"""A real TURN server for tests: Debian's coturn (``turnserver``) on free loopback ports,
long-term credentials ``u``/``p``, realm ``showroom``, loopback peers allowed; UDP and TCP
on one port, TLS (``turns:``, a self-signed certificate made here) on another."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from server.embedded import free_port
from tests.certs import self_signed

USER, PASSWORD = "u", "p"


@dataclass
class TurnServer:
    port: int
    tls_port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def url_for(self, transport: str) -> str:
        """``udp``, ``tcp`` or ``tls`` (TURN over TLS: what gets through a network that only
        lets HTTPS out)."""
        if transport == "tls":
            return f"turns:127.0.0.1:{self.tls_port}?transport=tcp"
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_turn(tmp: Path) -> TurnServer:
    binary = shutil.which("turnserver")
    if binary is None:
        raise RuntimeError("coturn's turnserver is not installed: run `make system`")
    port, tls_port = free_port(), free_port()
    cert, key = certificate_files(tmp)
    low = random.randrange(20000, 60000, 100)  # relay ports: a small random range
    log = tmp / "turnserver.log"
    proc = subprocess.Popen(
        [
            binary,
            "-n",  # no config file: everything on the command line
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            f"--tls-listening-port={tls_port}",
            f"--cert={cert}",
            f"--pkey={key}",
            f"--min-port={low}",
            f"--max-port={low + 99}",
            "--lt-cred-mech",
            f"--user={USER}:{PASSWORD}",
            "--realm=showroom",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            f"--userdb={tmp / 'turndb'}",
            f"--pidfile={tmp / 'turnserver.pid'}",
            f"--log-file={log}",
            "--simple-log",
            "--no-stdout-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # it listens on TCP and UDP: TCP tells us it is up
        if proc.poll() is not None:
            raise RuntimeError(f"turnserver exited ({proc.returncode}); see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return TurnServer(port, tls_port, proc, log)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"turnserver did not listen on {port} within 10 s; see {log}")


def certificate_files(tmp: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (clients in the tests do not verify it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "127.0.0.1", ip="127.0.0.1")
    cert_path, key_path = tmp / "turn-cert.pem", tmp / "turn-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
