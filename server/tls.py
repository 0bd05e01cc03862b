"""HTTPS: a certificate given by the operator, or a self-signed one for a LAN.

Browsers give the microphone only to ``https://`` pages (or ``http://localhost``), so a server
used from another machine needs TLS. ``avatar serve --tls-cert F --tls-key F`` uses a real
certificate; ``--self-signed`` makes one (the ``cryptography`` package, which aiortc already
needs for DTLS) for this host's names and addresses, keeps it in the data directory, reuses it
while it still covers them and has 30 days left, and prints its SHA-256 fingerprint so a person
can check it before trusting it on another device.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.errors import ConfigError

VALID_DAYS = 397  # the longest validity browsers accept for a server certificate
RENEW_DAYS = 30  # a kept certificate is replaced when it expires sooner than this


@dataclass(frozen=True)
class TlsFiles:
    """A certificate and its key, on disk, and the certificate's fingerprint."""

    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, colon-separated hex
    names: tuple[str, ...]  # the names and addresses it covers (self-signed ones)


def host_names(listen: str) -> list[str]:
    """This host's names and addresses for a certificate: its hostname (and FQDN), localhost,
    loopback, the address it listens on, and the addresses its name resolves to."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    try:
        names.add(socket.getfqdn())
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    if listen not in ("0.0.0.0", "::", ""):
        names.add(listen)
    return sorted(n for n in names if n)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as browsers show it (AA:BB:...)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _covers(cert: x509.Certificate, names: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return set(names) <= have and left > datetime.timedelta(days=RENEW_DAYS)


def self_signed(directory: Path, names: list[str]) -> TlsFiles:
    """The self-signed certificate in ``directory`` (tls/cert.pem, tls/key.pem), made anew
    when missing, expiring within 30 days, or not covering ``names``."""
    d = directory / "tls"
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _covers(cert, names):
            return TlsFiles(cert_path, key_path, fingerprint(cert), tuple(names))
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "avatar-server (self-signed)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(cert_path, key_path, fingerprint(cert), tuple(names))


def given(cert: Path, key: Path) -> TlsFiles:
    """An operator's certificate and key; ConfigError naming the file when unreadable."""
    for p in (cert, key):
        if not p.is_file():
            raise ConfigError(f"TLS file not found: {p}")
    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except ValueError as e:
        raise ConfigError(f"{cert} is not a PEM certificate: {e}") from e
    return TlsFiles(cert, key, fingerprint(c), ())


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) for aiohttp; ConfigError when the pair does not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cannot use the TLS certificate {files.cert} with key {files.key}: {e}") from e
    return ctx
