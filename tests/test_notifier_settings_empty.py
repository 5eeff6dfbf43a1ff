"""The notifier's settings as an env file or a compose file writes them: a setting left blank
(`SMTP_USERNAME=`) is one not set, a login of blanks is no login, and a private authority's
bundle (SMTP_CA_FILE) without TLS stops the start instead of being ignored while mail goes in
clear. `casetrail dev` keeps mailing its own catcher whatever the environment says of a real
mail server."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from services import cli
from services.notifier.settings import NotifierPorts, NotifierSettings
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import Records, SmtpServer, make_rig
from tests.test_dev_lifecycle import Dev, _flags
from tests.test_notifier_smtp_tls import make_authority, small_win_notice

SETTINGS = NotifierSettings.model_fields
OPTIONAL = sorted(str(f.alias) for f in SETTINGS.values() if f.default is None)
CA_WITHOUT_TLS = ("SMTP_CA_FILE", "neither SMTP_TLS nor SMTP_STARTTLS", "in clear",
                  "SMTP_TLS=true", "465", "SMTP_STARTTLS=true", "587", "remove SMTP_CA_FILE")


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """None of the caller's notifier settings reach the test (with them, a notifier would
    really start); the development folder is the test's own."""
    for setting in SETTINGS.values():
        monkeypatch.delenv(str(setting.alias), raising=False)
    monkeypatch.setenv("CASETRAIL_DEV_DIR", str(tmp_path))
    return monkeypatch


def start_notifier(capsys: pytest.CaptureFixture[str]) -> str:
    """`casetrail notifier` with no DATABASE_URL: it exits 2, and says why (the settings
    refused, or, once they are accepted, the database missing)."""
    assert cli.main(["notifier"]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("environment", [
    {"SMTP_HOST": "smtp.example.org", "SMTP_USERNAME": "", "SMTP_PASSWORD": ""},
    {"SMTP_STARTTLS": "true", "SMTP_PASSWORD": ""},
    {"SMTP_TLS": "true", "SMTP_USERNAME": ""},
    {"SMTP_HOST": "smtp.example.org", "SMTP_USERNAME": "  ", "SMTP_PASSWORD": "\t"}],
    ids=["both blank", "password blank", "username blank", "both whitespace"])
def test_a_login_left_blank_is_no_login(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        environment: dict[str, str]) -> None:
    """A blank login counted as set: both blank were a login of empty strings (refused as a
    password in clear to another host), one blank was refused as half a login though the
    operator had set neither."""
    for name, value in environment.items():
        no_environment.setenv(name, value)
    assert start_notifier(capsys) == "casetrail: set DATABASE_URL\n"
    settings = NotifierSettings()
    assert (settings.smtp_username, settings.smtp_password) == (None, None)


@pytest.mark.parametrize("password", ["", " "], ids=["blank", "whitespace"])
def test_a_username_with_a_blank_password_is_half_a_login(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        password: str) -> None:
    """Not a login with an empty password: the operator is told to set both or neither."""
    for name, value in {"SMTP_TLS": "true", "SMTP_USERNAME": "casetrail",
                        "SMTP_PASSWORD": password}.items():
        no_environment.setenv(name, value)
    error = start_notifier(capsys)
    assert error.startswith("casetrail: configuration:"), error
    assert "SMTP_USERNAME and SMTP_PASSWORD go together" in error, error


@dataclass
class LoginPeer(SmtpServer):
    """An SMTP server on loopback that offers AUTH without TLS (a local relay) and records
    every login tried."""

    logins: list[tuple[str, str]] = field(default_factory=list)

    def _authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=False)

    def _session(self) -> SMTP:
        return SMTP(self, hostname="login-peer", authenticator=self._authenticate,
                    auth_require_tls=False)


async def test_a_notifier_with_a_blank_login_sends_without_auth(
        aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
        fresh_database_url: str, records: Records, clock: FakeClock,
        token: TokenFactory) -> None:
    """It logged in with an empty username and password, which a server offering AUTH
    refuses: the notice was retried and never sent."""
    peer = LoginPeer()
    await peer.start()
    try:
        rig = await make_rig(aiohttp_client, fresh_database_url, records.client, peer, clock,
                             SMTP_USERNAME="", SMTP_PASSWORD=" ")
        await rig.set_prefs("cm-1", token())
        row = await small_win_notice(records, rig)
    finally:
        await peer.stop()
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    assert [m["Message-ID"] for m in peer.received] == [row["message_id"]]
    assert peer.logins == []


def test_a_private_authority_without_tls_stops_the_start(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The bundle was ignored without a word: the operator believed the certificate was
    checked against their authority while mail went in clear."""
    no_environment.setenv("SMTP_CA_FILE", str(make_authority(tmp_path).ca_file))
    no_environment.setenv("SMTP_HOST", "smtp.example.org")
    error = start_notifier(capsys)
    assert error.startswith("casetrail: configuration: SMTP_CA_FILE:"), error
    for words in CA_WITHOUT_TLS:
        assert words in error, (words, error)


@pytest.mark.parametrize("tls", ["SMTP_TLS", "SMTP_STARTTLS"])
def test_a_private_authority_with_tls_is_taken(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        tmp_path: Path, tls: str) -> None:
    ca_file = make_authority(tmp_path).ca_file
    no_environment.setenv("SMTP_CA_FILE", str(ca_file))
    no_environment.setenv(tls, "true")
    assert start_notifier(capsys) == "casetrail: set DATABASE_URL\n"
    assert NotifierSettings().smtp_ca_file == ca_file


# refused when blank, as in the records service (tests/test_settings_empty_values.py)
NEVER_BLANK = {"CASETRAIL_JWT_AUDIENCE", "CASETRAIL_JWT_ISSUER"}


@pytest.mark.parametrize("name", sorted(set(OPTIONAL) - NEVER_BLANK))
def test_an_optional_setting_left_blank_is_unset(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        name: str) -> None:
    """A blank file setting was the working folder (RECORDS_TOKEN_FILE "." is not a file,
    SMTP_CA_FILE "." cannot be read, NOTIFIER_DEV_MAIL_DIR served the working folder's mail at
    /mail); a blank NOTIFIER_PLAN_URL or NOTIFIER_RETRY_ATTEMPTS stopped the start."""
    no_environment.setenv(name, "")
    assert "configuration" not in start_notifier(capsys)
    settings = NotifierSettings()
    assert [alias for alias, value in _by_alias(settings).items()
            if value is not None and alias in OPTIONAL] == []


@pytest.mark.parametrize("name", sorted(set(map(str, (f.alias for f in SETTINGS.values())))
                                        - set(OPTIONAL)))
def test_any_setting_left_blank_takes_its_default(
        no_environment: pytest.MonkeyPatch, name: str) -> None:
    """A blank number, flag or time was refused as no number; a blank SMTP_HOST or
    NOTIFIER_HOST was an empty host (for the notifier's address: every interface)."""
    no_environment.setenv(name, "")
    assert _by_alias(NotifierSettings())[name] == SETTINGS[_field_named(name)].default


@pytest.mark.parametrize("name", ["NOTIFIER_PORT", "SMTP_PORT"])
def test_dev_ports_left_blank_take_their_defaults(
        no_environment: pytest.MonkeyPatch, name: str) -> None:
    no_environment.setenv(name, "")
    assert (NotifierPorts().port, NotifierPorts().smtp_port) == (8081, 1025)


def test_dev_notifier_mails_its_catcher_whatever_the_environment_says(
        no_environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`casetrail dev` built its notifier's settings over the environment's: a real mail
    server's TLS, login, bundle or timeout there were taken for its catcher's."""
    real_server = {"SMTP_TLS": "true", "SMTP_CA_FILE": str(make_authority(tmp_path).ca_file),
                   "SMTP_USERNAME": "casetrail", "SMTP_PASSWORD": "not-for-the-catcher",
                   "SMTP_TIMEOUT": "0"}
    for name, value in real_server.items():
        no_environment.setenv(name, value)
    settings = NotifierSettings.for_mail_catcher({
        "DATABASE_URL": "postgresql://127.0.0.1/none", "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": 1025})
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_tls, settings.smtp_starttls,
            settings.smtp_ca_file, settings.smtp_username, settings.smtp_password,
            settings.smtp_timeout_seconds) == ("127.0.0.1", 1025, False, False, None, None,
                                               None, SETTINGS["smtp_timeout_seconds"].default)


def test_dev_starts_its_notifier_beside_a_real_mail_servers_settings(
        dev_dir: Path, tmp_path: Path) -> None:
    """Here dev gets as far as the notifier's port, taken on purpose, so its notifier's
    settings were built: blank ports stopped it at start, and a bundle without TLS (refused
    for `casetrail notifier`) or a real server's timeout of 0 stopped its notifier."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dev = Dev(dev_dir, *_flags(notifier_port=taken.getsockname()[1]),
                  SMTP_CA_FILE=str(make_authority(tmp_path).ca_file), SMTP_USERNAME="",
                  SMTP_PASSWORD="", SMTP_TIMEOUT="0", NOTIFIER_PORT="", SMTP_PORT="",
                  RECORDS_PORT="")
        code = dev.finish(seconds=90)
    assert code == 2, dev.output
    assert "address already in use" in dev.output.lower(), dev.output
    assert "(choose another port with --notifier-port, or NOTIFIER_PORT)" in dev.output
    assert "SMTP_" not in dev.output, dev.output


def _by_alias(settings: NotifierSettings) -> dict[str, object]:
    return {str(f.alias): getattr(settings, name) for name, f in SETTINGS.items()}


def _field_named(alias: str) -> str:
    [name] = [name for name, f in SETTINGS.items() if f.alias == alias]
    return name


@pytest.mark.parametrize("name", sorted(NEVER_BLANK))
def test_a_blank_audience_or_issuer_stops_the_notifier_too(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        name: str) -> None:
    no_environment.setenv(name, "")
    assert f"{name} is set but blank" in start_notifier(capsys)
