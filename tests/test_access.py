"""Access tokens, TLS certificates and metrics: the pieces, without a server."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from server.errors import AvatarError, ConfigError
from server.metrics import Metrics
from server.tls import given, self_signed, ssl_context
from server.tokens import AccessError, TokenIssuer, is_loopback, load_secret

SECRET = b"s" * 48


def test_roles_and_stages() -> None:
    issuer = TokenIssuer(SECRET)
    viewer = issuer.verify(issuer.create("viewer", stage="abc", ttl_s=60))
    assert viewer.allows("viewer", "abc") and not viewer.allows("viewer", "other") and not viewer.allows("presenter")
    presenter = issuer.verify(issuer.create("presenter"))
    assert presenter.allows("presenter") and presenter.allows("viewer", "any") and not presenter.allows("admin")
    admin = issuer.verify(issuer.create("admin"))
    assert admin.allows("admin") and admin.allows("presenter") and admin.allows("viewer", "x")
    with pytest.raises(AvatarError, match="role must be one of"):
        issuer.create("root")
    with pytest.raises(AvatarError, match="only viewer tokens name a stage"):
        issuer.create("presenter", stage="abc")


def test_bad_tokens_are_refused_with_the_reason() -> None:
    issuer = TokenIssuer(SECRET)
    with pytest.raises(AccessError, match="needs an access token"):
        issuer.verify("")
    with pytest.raises(AccessError, match="not valid here"):
        TokenIssuer(b"t" * 48).verify(issuer.create("admin"))  # another server's secret
    expired = jwt.encode({"iss": "avatar-server", "iat": 1, "exp": int(time.time()) - 10, "role": "admin"}, SECRET, algorithm="HS256")
    with pytest.raises(AccessError, match="expired"):
        issuer.verify(expired)
    forged = issuer.create("viewer", stage="abc")[:-4] + "AAAA"  # a viewer token edited into something else
    with pytest.raises(AccessError, match="not valid here"):
        issuer.verify(forged)
    none_alg = jwt.encode({"iss": "avatar-server", "iat": 1, "exp": int(time.time()) + 60, "role": "admin"}, None, algorithm="none")
    with pytest.raises(AccessError):
        issuer.verify(none_alg)


def test_secret_is_kept_private(tmp_path: Path) -> None:
    a = load_secret("", tmp_path)
    assert load_secret("", tmp_path) == a and len(a) >= 32
    assert (tmp_path / "token_secret").stat().st_mode & 0o077 == 0
    with pytest.raises(AvatarError, match="at least 32"):
        load_secret("short", tmp_path)


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("198.18.0.1") and not is_loopback("example.org")


def test_self_signed_certificate(tmp_path: Path) -> None:
    names = ["localhost", "127.0.0.1", "198.18.0.1", "avatar.lan"]
    files = self_signed(tmp_path, names)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "198.18.0.1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "avatar.lan"}
    assert files.key.stat().st_mode & 0o077 == 0 and len(files.fingerprint.split(":")) == 32
    assert isinstance(ssl_context(files), ssl.SSLContext)
    assert self_signed(tmp_path, names).fingerprint == files.fingerprint  # kept
    assert self_signed(tmp_path, [*names, "10.1.2.3"]).fingerprint != files.fingerprint  # a new address: a new certificate
    with pytest.raises(ConfigError, match="not found"):
        given(tmp_path / "nope.pem", files.key)


def test_metrics_exposition() -> None:
    m = Metrics()
    part = {"sessions": [{"fps": 29.8, "latency_ms": {"p50": 61.0, "p95": 75.0}, "whole_path_ms": {"p50": 120.0, "p95": 150.0, "n": 90.0},
                          "audio_drops": 2, "viewers": 3,
                          "program": {"audio_delay_ms": 64.0, "per_viewer": [{"video_dropped": 4}]}}],
            "worker": 0, "worker_pid": __import__("os").getpid()}
    m.update([part], restarts=1)
    m.errors.labels(code="bad_offer").inc()
    text = m.render().decode()
    for line in ("avatar_sessions 1.0", "avatar_viewers 3.0", 'avatar_latency_ms{quantile="0.95"} 75.0', 'avatar_whole_path_ms{quantile="0.5"} 120.0',
                 "avatar_viewer_video_drops 4.0", 'avatar_errors_total{code="bad_offer"} 1.0', "avatar_worker_restarts 1.0"):
        assert line in text, text
    assert 'avatar_worker_rss_bytes{worker="0"}' in text
