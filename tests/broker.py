"""A real Mosquitto broker for tests: started on a free port with a config the test writes.

Usage::

    broker = Broker(tmp_path)                  # plain, anonymous
    broker = Broker(tmp_path, users={"dev": "secret"})           # password file (mosquitto_passwd)
    broker = Broker(tmp_path, tls=make_tls(tmp_path))            # TLS with generated certificates
    broker.start(); ...; broker.stop(); broker.start()   # same port and persistence across restarts
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_seg.demo.broker import free_port, wait_listening

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
requires_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (make install adds it)")


@dataclass
class TLSFiles:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path, hostname: str = "localhost") -> TLSFiles:
    """A CA, a server certificate for ``hostname``/127.0.0.1 and a client certificate (cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(key, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def cert(subject: str, key, issuer_name, issuer_key, ca: bool, sans=None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-seg test CA")])
    ca_cert = cert("edge-seg test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = cert(hostname, server_key, ca_name, ca_key, ca=False, sans=sans)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = cert("edge-device", client_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.crt").write_bytes(server_cert.public_bytes(pem))
    (directory / "client.crt").write_bytes(client_cert.public_bytes(pem))
    return TLSFiles(ca=directory / "ca.crt", cert=directory / "server.crt",
                    key=write_key(server_key, directory / "server.key"),
                    client_cert=directory / "client.crt", client_key=write_key(client_key, directory / "client.key"))


class Broker:
    """One Mosquitto process; ``stop()``/``start()`` keep its port, config and persistence file."""

    def __init__(self, directory: Path, users: dict[str, str] | None = None, tls: TLSFiles | None = None,
                 persistence: bool = True):
        if MOSQUITTO is None:
            pytest.skip("mosquitto not installed (make install adds it)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", f"persistence {'true' if persistence else 'false'}",
                 f"persistence_location {self.directory}/", "autosave_interval 1", "set_tcp_nodelay true",
                 "max_queued_messages 100000", f"log_dest file {self.directory / 'mosquitto.log'}",
                 "log_type error", "log_type warning", "log_type notice"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user, which cannot read tmp files
        if users:
            passwd = self.directory / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                               capture_output=True)
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        self.config = self.directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_listening(self.proc, self.port, timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""
