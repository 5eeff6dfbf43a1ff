"""The notifier's transport security: implicit TLS (SMTP_TLS) and STARTTLS against real
aiosmtpd peers whose certificate comes from an authority made here (SMTP_CA_FILE), logins
only inside TLS, an untrusted certificate retried as a failed attempt, and the settings that
would send a password in clear refused at start."""

from __future__ import annotations

import asyncio
import email
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from services import cli
from services.notifier.settings import NotifierSettings
from tests.conftest import FakeClock, TokenFactory, free_port
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, notifier_settings

USERNAME, PASSWORD = "casetrail", "correct horse battery staple"
PYTHON_WORDS = ("Error", "Exception", "Errno", "_ssl.c", "[SSL")


@dataclass(frozen=True)
class Authority:
    """A certificate authority and a server certificate it signed for 127.0.0.1 and
    localhost, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_authority(folder: Path) -> Authority:
    now = datetime.now(UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Test mail CA"))
          .issuer_name(_name("Test mail CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = (x509.CertificateBuilder().subject_name(_name("localhost"))
              .issuer_name(ca.subject).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(hours=1))
              .not_valid_after(now + timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    authority = Authority(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    authority.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    authority.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    authority.key_file.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return authority


@dataclass
class TlsPeer:
    """An aiosmtpd server speaking TLS from the first byte (``implicit``) or requiring
    STARTTLS before anything else. It takes a login (and records whether it came inside TLS);
    over STARTTLS it offers AUTH only once TLS is up (aiosmtpd's ``auth_require_tls``, which
    does not see implicit TLS: there every byte is inside TLS anyway)."""

    context: ssl.SSLContext
    implicit: bool
    port: int = field(default_factory=free_port)
    received: list[Message] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (username, inside TLS)
    _server: asyncio.Server | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(email.message_from_bytes(envelope.original_content))
        return "250 OK"

    def _authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        inside_tls = server.transport is not None and server.transport.get_extra_info(
            "sslcontext") is not None
        self.logins.append((auth_data.login.decode(), inside_tls))
        right = (auth_data.login.decode(), auth_data.password.decode()) == (USERNAME, PASSWORD)
        return AuthResult(success=right)

    def _session(self) -> SMTP:
        return SMTP(self, hostname="tls-peer", authenticator=self._authenticate,
                    tls_context=None if self.implicit else self.context,
                    require_starttls=not self.implicit, auth_require_tls=not self.implicit)

    async def start(self) -> TlsPeer:
        self._server = await asyncio.get_running_loop().create_server(
            self._session, "127.0.0.1", self.port, ssl=self.context if self.implicit else None)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path)


async def tls_rig(aiohttp_client: Callable[..., Awaitable[TestClient]], database_url: str,
                  records: Records, peer: TlsPeer, clock: FakeClock, token: TokenFactory,
                  **overrides: object) -> NotifierRig:
    rig = await make_rig(aiohttp_client, database_url, records.client,
                         SmtpServer(port=peer.port), clock, SMTP_TIMEOUT=2, **overrides)
    await rig.set_prefs("cm-1", token())
    return rig


async def small_win_notice(records: Records, rig: NotifierRig) -> dict[str, Any]:
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal))
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(kind="small_win")
    return row


def tls_setting(implicit: bool) -> dict[str, object]:
    return {"SMTP_TLS": True} if implicit else {"SMTP_STARTTLS": True}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit TLS", "STARTTLS"])
async def test_a_notice_goes_inside_tls_and_the_login_with_it(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, authority: Authority,
        implicit: bool) -> None:
    """There was no implicit TLS (SMTPS, port 465), and no way to trust a private
    authority's certificate."""
    peer = await TlsPeer(authority.server_context(), implicit).start()
    try:
        rig = await tls_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                            SMTP_CA_FILE=str(authority.ca_file), SMTP_USERNAME=USERNAME,
                            SMTP_PASSWORD=PASSWORD, **tls_setting(implicit))
        row = await small_win_notice(records, rig)
    finally:
        await peer.stop()
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    assert [m["Message-ID"] for m in peer.received] == [row["message_id"]]
    assert peer.logins == [(USERNAME, True)]


async def test_a_server_that_takes_a_login_only_inside_tls_gets_none_over_plain_smtp(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory,
        authority: Authority) -> None:
    """A local relay may take a login without TLS (SMTP_HOST on loopback); a server that
    requires STARTTLS first gets no login and no message, and the notice is retried."""
    peer = await TlsPeer(authority.server_context(), implicit=False).start()
    try:
        rig = await tls_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                            SMTP_USERNAME=USERNAME, SMTP_PASSWORD=PASSWORD)
        row = await small_win_notice(records, rig)
    finally:
        await peer.stop()
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["not_before"] is not None
    assert (peer.logins, peer.received) == ([], [])


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit TLS", "STARTTLS"])
async def test_a_certificate_not_trusted_is_a_tls_failure_in_words_retried_never_sent(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, authority: Authority,
        implicit: bool) -> None:
    """Without SMTP_CA_FILE the system's authorities are trusted, and this server's is not
    one of them: no login, no message; the attempt fails, is said to be TLS's, and is tried
    again (the operator fixes the configuration; the notice is not lost)."""
    peer = await TlsPeer(authority.server_context(), implicit).start()
    try:
        rig = await tls_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                            SMTP_USERNAME=USERNAME, SMTP_PASSWORD=PASSWORD,
                            **tls_setting(implicit))
        row = await small_win_notice(records, rig)
        expected = (f"no reply: TLS with the mail server 127.0.0.1:{peer.port} failed: its"
                    " certificate is not trusted")
        assert (row["status"], row["attempts"], row["last_code"]) == ("failed", 1, None)
        assert str(row["last_error"]).startswith(expected), row["last_error"]
        assert "SMTP_CA_FILE" in row["last_error"]
        assert not any(word in row["last_error"] for word in PYTHON_WORDS), row["last_error"]
        clock.now = row["not_before"]
        await rig.dispatch()
        [again] = await rig.rows(kind="small_win")
    finally:
        await peer.stop()
    assert (again["status"], again["attempts"]) == ("failed", 2)
    assert str(again["last_error"]).startswith(expected)
    assert (peer.logins, peer.received) == ([], [])


def _no_notifier_settings_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """None of the caller's environment reaches the settings (with it, a notifier would
    really start)."""
    for setting in NotifierSettings.model_fields.values():
        assert setting.alias is not None
        monkeypatch.delenv(setting.alias, raising=False)
    monkeypatch.setenv("CASETRAIL_DEV_DIR", str(tmp_path))


def _bundle(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "bundle.pem"
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(("environment", "named"), [
    ({"SMTP_TLS": "true", "SMTP_STARTTLS": "true"}, ("SMTP_TLS", "SMTP_STARTTLS")),
    ({"SMTP_HOST": "smtp.example.org", "SMTP_USERNAME": USERNAME, "SMTP_PASSWORD": PASSWORD},
     ("SMTP_TLS", "SMTP_STARTTLS", "smtp.example.org", "in clear")),
    ({"SMTP_HOST": "192.0.2.7", "SMTP_USERNAME": USERNAME, "SMTP_PASSWORD": PASSWORD,
      "SMTP_STARTTLS": "false"}, ("SMTP_TLS", "SMTP_STARTTLS", "in clear")),
    ({"SMTP_USERNAME": USERNAME, "SMTP_STARTTLS": "true"}, ("SMTP_USERNAME", "SMTP_PASSWORD")),
    ({"SMTP_PASSWORD": PASSWORD, "SMTP_TLS": "true"}, ("SMTP_USERNAME", "SMTP_PASSWORD")),
    ({"SMTP_CA_FILE": "{tmp}/no-such.pem"}, ("SMTP_CA_FILE", "cannot be read")),
    ({"SMTP_CA_FILE": "{tmp}"}, ("SMTP_CA_FILE", "cannot be read")),
    ({"SMTP_CA_FILE": "{empty}"}, ("SMTP_CA_FILE", "no certificate")),
    ({"SMTP_CA_FILE": "{key}"}, ("SMTP_CA_FILE", "no certificate"))],
    ids=["both kinds of TLS", "login in clear to a name", "login in clear to an address",
         "username alone", "password alone", "bundle missing", "bundle a folder",
         "bundle empty", "bundle a private key"])
def test_settings_that_cannot_be_kept_safe_stop_the_notifier_at_start(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        authority: Authority, environment: dict[str, str], named: tuple[str, ...]) -> None:
    """With a login and no TLS setting the password went in clear to any server offering
    AUTH; both TLS settings, or a bundle that could not be used, are refused too."""
    _no_notifier_settings_from(monkeypatch, tmp_path)
    places = {"tmp": str(tmp_path), "empty": _bundle(tmp_path, b""),
              "key": str(authority.key_file)}
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(**places))
    assert cli.main(["notifier"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("casetrail: configuration:"), error
    for words in named:
        assert words in error, (words, error)
    assert PASSWORD not in error


@pytest.mark.parametrize(("host", "tls"), [
    ("127.0.0.1", {}), ("127.0.0.53", {}), ("::1", {}), ("localhost", {}), ("LocalHost", {}),
    ("smtp.example.org", {"SMTP_STARTTLS": True}), ("smtp.example.org", {"SMTP_TLS": True})])
def test_a_login_is_allowed_inside_tls_or_to_a_relay_on_this_host(
        host: str, tls: dict[str, object], authority: Authority) -> None:
    if tls:  # a private authority's bundle goes with TLS only
        tls = {**tls, "SMTP_CA_FILE": str(authority.ca_file)}
    settings = notifier_settings("postgresql://127.0.0.1/none", "http://127.0.0.1:1", 465,
                                 SMTP_HOST=host, SMTP_USERNAME=USERNAME,
                                 SMTP_PASSWORD=PASSWORD, **tls)
    assert (settings.smtp_username, settings.smtp_password) == (USERNAME, PASSWORD)


@pytest.mark.parametrize("host", ["localhost.example.org", "10.0.0.1", "mailpit"])
def test_a_name_merely_like_loopback_is_not_loopback(host: str) -> None:
    with pytest.raises(ValidationError, match="in clear"):
        notifier_settings("postgresql://127.0.0.1/none", "http://127.0.0.1:1", 25,
                          SMTP_HOST=host, SMTP_USERNAME=USERNAME, SMTP_PASSWORD=PASSWORD)
