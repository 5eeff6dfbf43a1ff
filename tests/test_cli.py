"""The ``casetrail`` command line, run as a real process."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from services.common.auth import issue_token, principal_from_claims
from services.common.settings import Settings
from tests.conftest import JWT_SECRET, free_port

CASETRAIL = [sys.executable, "-m", "services.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CASETRAIL, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def test_token_prints_a_bare_signed_token() -> None:
    case = "7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e"
    result = run("token", "--sub", "p-1", "--role", "participant", "--agency", "agency-a",
                 "--cases", case, "--ttl", "60", env={"CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "p-1"
    assert claims["role"] == "participant"
    assert claims["cases"] == [case]
    assert claims["exp"] - claims["iat"] == 60


def test_token_refuses_bad_input(tmp_path: Path) -> None:
    env = {"CASETRAIL_JWT_SECRET": JWT_SECRET}
    assert run("token", "--sub", "x", "--role", "warden", "--agency", "a", env=env).returncode == 2
    bad_case = run("token", "--sub", "x", "--role", "participant", "--agency", "a",
                   "--cases", "not-a-uuid", env=env)
    assert bad_case.returncode == 2
    assert "--cases" in bad_case.stderr
    for ttl in ("0", "-100"):  # a token that is born expired is a mistake, not a token
        born_expired = run("token", "--sub", "x", "--role", "supervisor", "--agency", "a",
                           "--ttl", ttl, env=env)
        assert born_expired.returncode == 2
        assert "--ttl" in born_expired.stderr
    no_secret = run("token", "--sub", "x", "--role", "supervisor", "--agency", "a",
                    env={"CASETRAIL_JWT_SECRET": "", "CASETRAIL_DEV_DIR": str(tmp_path)})
    assert no_secret.returncode == 2
    assert "CASETRAIL_JWT_SECRET" in no_secret.stderr


def test_token_refuses_a_secret_the_services_would_refuse() -> None:
    result = run("token", "--sub", "x", "--role", "supervisor", "--agency", "a",
                 env={"CASETRAIL_JWT_SECRET": "s3cret-but-short"})
    assert (result.returncode, result.stdout, result.stderr.strip()) == (
        2, "", "casetrail: configuration: CASETRAIL_JWT_SECRET must be at least 32 bytes"
               " (RFC 7518 3.2)")


AUDITOR = ("token", "--sub", "court-1", "--role", "auditor", "--agency", "agency-a",
           "--cases", "7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e")


@pytest.mark.parametrize(("flags", "window_from", "window_to"), [
    (["--window-from", "2026-03-01", "--window-to", "2026-03-31"],
     "2026-03-01T00:00:00+00:00", "2026-03-31T23:59:59.999999+00:00"),
    (["--window-from", "2026-03-01T09:30:00+02:00"], "2026-03-01T07:30:00+00:00", None),
    (["--window-to", "2026-03-31T17:00:00Z"], None, "2026-03-31T17:00:00+00:00"),
])
def test_token_issues_an_auditor_window(flags: list[str], window_from: str | None,
                                        window_to: str | None) -> None:
    result = run(*AUDITOR, *flags, env={"CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    for name, expected in (("window_from", window_from), ("window_to", window_to)):
        if expected is None:
            assert name not in claims
        else:
            assert datetime.fromtimestamp(claims[name], UTC) == datetime.fromisoformat(expected)
    principal = principal_from_claims(claims)  # the services read back the same window
    assert (principal.window_from.isoformat() if principal.window_from else None) == window_from
    assert (principal.window_to.isoformat() if principal.window_to else None) == window_to


@pytest.mark.parametrize(("flags", "message"), [
    (["--window-from", "yesterday"], "--window-from must be an RFC 3339"),
    (["--window-to", "2026-13-01"], "--window-to must be an RFC 3339"),
    (["--window-from", "2026-03-01T09:00:00"], "needs a time zone"),
    (["--window-from", "2026-04-01", "--window-to", "2026-03-01"], "not be later"),
])
def test_token_refuses_bad_windows(flags: list[str], message: str) -> None:
    result = run(*AUDITOR, *flags, env={"CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_token_windows_are_for_auditors() -> None:
    result = run("token", "--sub", "sup-1", "--role", "supervisor", "--agency", "agency-a",
                 "--window-from", "2026-03-01", env={"CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2
    assert "auditor" in result.stderr


def test_an_auditor_token_needs_a_window() -> None:
    result = run(*AUDITOR, env={"CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2
    assert "--window-to" in result.stderr
    assert result.stdout == ""


def test_migrate_applies_then_reports_current(fresh_database_url: str) -> None:
    result = run("migrate", env={"DATABASE_URL": fresh_database_url})
    assert result.returncode == 0, result.stderr
    assert "already current" in result.stdout


def test_dev_starts_its_own_database_when_none_is_given(dev_dir: Path) -> None:
    """The fresh-machine path: no DATABASE_URL, an embedded PostgreSQL, a working service."""
    port, notifier_port, smtp_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "CASETRAIL_JWT_SECRET"}}
    env["CASETRAIL_DEV_DIR"] = str(dev_dir)
    env["RECORDS_PORT"] = str(port)  # ports come from the environment when no flag says
    process = subprocess.Popen([*CASETRAIL, "dev", "--notifier-port",
                                str(notifier_port), "--smtp-port", str(smtp_port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        output = ""
        deadline = time.monotonic() + 90
        while "Stop with Ctrl-C" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output += line
        assert "embedded PostgreSQL" in output, output
        assert "export TOKEN=" in output, output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
            assert answer.status == 200
        token = output.split("export TOKEN=")[1].split()[0]
        secret = (dev_dir / "jwt-secret").read_text().strip()
        assert jwt.decode(token, secret, algorithms=["HS256"])["role"] == "case_manager"
        assert "Loaded the demo caseload" in output
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/cases",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            caseload = json.loads(answer.read())
        by_name = {c["participant_name"]: c for c in caseload["cases"]}
        assert set(by_name) == {"Jordan Rivera", "Ana Lopez", "Sam Chen", "Marcus Bell"}
        assert by_name["Jordan Rivera"]["overdue_steps"] == 1
        assert by_name["Marcus Bell"]["status"] == "closed"
        # The notifier celebrates the demo's small wins and nudges about its overdue step
        # (written after the notifier started, so no earlier notifier can have sent it); the
        # local catcher keeps the mail.
        mail_dir = dev_dir / "mail"
        deadline = time.monotonic() + 60
        expected = ("A small win for", "Checking in on a step in")
        while not _caught(mail_dir, expected) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _caught(mail_dir, expected), (_subjects(mail_dir), output)
        assert any("cm-demo@casetrail.local" in p.read_text() for p in mail_dir.glob("*.eml"))
        with urllib.request.urlopen(f"http://127.0.0.1:{notifier_port}/mail",
                                    timeout=10) as page:
            assert page.status == 200
        assert list((dev_dir / "pgdata").rglob("postmaster.pid"))
    finally:
        process.terminate()  # SIGTERM, as `kill` or a closing terminal sends
        process.wait(timeout=30)
    # the embedded PostgreSQL stopped with it, instead of running on, orphaned
    assert not list((dev_dir / "pgdata").rglob("postmaster.pid"))


def _caught(mail_dir: Path, subject_starts: tuple[str, ...]) -> bool:
    subjects = _subjects(mail_dir)
    return all(any(s.startswith(start) for s in subjects) for start in subject_starts)


def _subjects(mail_dir: Path) -> list[str]:
    return [str(email.message_from_bytes(path.read_bytes())["Subject"])
            for path in mail_dir.glob("*.eml")]


def _ready(port: int, deadline: float, path: str = "/readyz") -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def test_records_processes_share_a_port_with_reuse_port(fresh_database_url: str) -> None:
    """Several processes use a machine's cores; the port stays served while one stops."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "warning"}
    command = [*CASETRAIL, "records", "--port", str(port), "--reuse-port"]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    second: subprocess.Popen[str] | None = None
    try:
        assert _ready(port, time.monotonic() + 60)
        second = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert second.poll() is None, second.stderr.read() if second.stderr else ""
        first.terminate()
        first.wait(timeout=30)
        assert _ready(port, time.monotonic() + 30)  # answered by the second process
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def test_without_reuse_port_a_second_process_cannot_take_the_port(
        fresh_database_url: str) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "warning"}
    command = [*CASETRAIL, "records", "--port", str(port)]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert _ready(port, time.monotonic() + 60)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert second.returncode == 2
        assert "could not start" in second.stderr
        assert "address already in use" in second.stderr.lower()
        assert "choose another port with --port" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_database_that_cannot_be_reached_is_said_in_one_line() -> None:
    result = run("records", "--port", "0", env={
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
        "CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2
    assert "casetrail: could not start:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("setting", "value", "said"), [
    ("RECORDS_PORT", "eighty", "configuration: RECORDS_PORT: Input should be a valid integer,"
                               " unable to parse string as an integer (given 'eighty')"),
    ("CASETRAIL_JWT_SECRET", "s3cret-but-short",
     "configuration: CASETRAIL_JWT_SECRET must be at least 32 bytes (RFC 7518 3.2)"),
])
def test_a_setting_the_service_cannot_start_with_is_said_in_one_line(
        setting: str, value: str, said: str) -> None:
    result = run("records", "--port", "0", env={
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
        "CASETRAIL_JWT_SECRET": JWT_SECRET, setting: value})
    assert (result.returncode, result.stderr.strip()) == (2, f"casetrail: {said}")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(("command", "flag", "value", "said"), [
    ("records", "--port", "70000", "a port is 0 to 65535, not 70000"),
    ("notifier", "--port", "70000", "a port is 0 to 65535, not 70000"),
    ("dev", "--port", "70000", "a port is 1 to 65535, not 70000"),
    ("dev", "--notifier-port", "70000", "a port is 1 to 65535, not 70000"),
    ("dev", "--smtp-port", "70000", "a port is 1 to 65535, not 70000"),
    # dev names its ports in the URLs it gives the services: "any free port" cannot be named
    ("dev", "--notifier-port", "0", "a port is 1 to 65535, not 0"),
])
def test_a_port_flag_out_of_range_is_refused_not_taken_modulo(
        command: str, flag: str, value: str, said: str) -> None:
    """--port 70000 used to listen on 4464 (70000 modulo 65536), saying nothing."""
    result = run(command, flag, value, env={
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
        "CASETRAIL_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2
    assert f"argument {flag}: {said}" in result.stderr


@pytest.mark.parametrize("command", ["records", "notifier", "dev"])
def test_a_log_level_nobody_knows_is_said_in_one_line(command: str, tmp_path: Path) -> None:
    port = "0" if command != "dev" else str(free_port())  # dev names its port in its URLs
    result = run(command, "--port", port, env={
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
        "CASETRAIL_JWT_SECRET": JWT_SECRET, "CASETRAIL_DEV_DIR": str(tmp_path),
        "CASETRAIL_LOG_LEVEL": "verbose"})
    assert (result.returncode, result.stderr.strip()) == (
        2, "casetrail: configuration: CASETRAIL_LOG_LEVEL: Input should be 'debug', 'info',"
           " 'warning', 'error' or 'critical' (given 'verbose')")


def test_the_log_level_is_read_in_any_case() -> None:
    assert Settings.model_validate({"CASETRAIL_LOG_LEVEL": "WARNING"}).log_level == "warning"


def test_an_auditor_token_naming_many_cases_reaches_the_service(
        fresh_database_url: str) -> None:
    """A court order may name hundreds of cases: its token is a header of some 15 kB, which
    aiohttp's default limit refused with a plain-text 400 before the service saw it."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "warning"}
    cases = [str(uuid.uuid4()) for _ in range(300)]
    token = issue_token(JWT_SECRET, sub="court-1", role="auditor", agency="agency-a",
                        cases=cases, window_to=datetime(2100, 1, 1, tzinfo=UTC))
    assert len(token) > 12_000
    process = subprocess.Popen([*CASETRAIL, "records", "--port", str(port)], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert _ready(port, time.monotonic() + 60)
        asked = urllib.request.Request(f"http://127.0.0.1:{port}/v1/cases/{cases[0]}",
                                       headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(asked, timeout=10)
        assert answer.value.code == 404  # no such case yet: the service read the token
        assert answer.value.headers["Content-Type"].startswith("application/problem+json")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(("service", "query_path"), [
    ("records", "/v1/cases?case_manager=Pat+Doe"),
    ("notifier", "/v1/notifications?recipient=Pat+Doe")])
def test_every_log_line_is_json_and_each_request_carries_its_request_id(
        fresh_database_url: str, service: str, query_path: str) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "info", "RECORDS_URL": f"http://127.0.0.1:{free_port()}",
           "RECORDS_PORT": str(free_port()), "NOTIFIER_PORT": str(free_port())}
    # the flag overrides the environment's port
    process = subprocess.Popen([*CASETRAIL, service, "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # /healthz: the notifier is not ready while its feed is unreachable, but it answers
        assert _ready(port, time.monotonic() + 60, path="/healthz")
        traced = urllib.request.Request(f"http://127.0.0.1:{port}/healthz",
                                        headers={"X-Request-Id": "trace-123"})
        with urllib.request.urlopen(traced, timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{query_path}", timeout=10)
        assert refused.value.code == 401
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    lines = [json.loads(line) for line in output.splitlines()]  # each one JSON, or this fails
    requests = [line for line in lines if line["event"] == "request"]
    assert {"request_id": "trace-123", "method": "GET", "path": "/healthz",
            "status": 200, "level": "info"}.items() <= requests[-2].items()
    assert requests[-1]["status"] == 401
    assert requests[-1]["path"] == query_path.partition("?")[0]
    assert requests[-1]["request_id"] not in ("", None, "trace-123")
    assert "Pat" not in output  # a query's values stay out of the log


def test_what_libraries_log_comes_out_as_json_too() -> None:
    program = """if True:
        import logging
        from services.common.logs import configure_logging
        configure_logging("info")
        logging.getLogger("aiohttp.server").debug("not at this level")
        try:
            raise ValueError("the cause")
        except ValueError:
            logging.getLogger("aiohttp.server").error("Error handling request", exc_info=True)
    """
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60, check=True)
    (line,) = [json.loads(text) for text in ran.stdout.splitlines()]
    assert {"event": "Error handling request", "level": "error",
            "logger": "aiohttp.server"}.items() <= line.items()
    assert "ValueError: the cause" in line["exception"]
    assert ran.stderr == ""


def test_openapi_where_the_file_cannot_be_written_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # an installed package in a read-only image is not a checkout: no traceback
    from schemas import generate
    from services.cli import main
    monkeypatch.setattr(generate, "OPENAPI_FILE", tmp_path / "no-such-folder" / "openapi.json")
    assert main(["openapi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("casetrail: cannot write ")
    assert "/openapi.json" in err
    assert "Traceback" not in err


def test_a_database_url_that_is_not_one_is_a_one_line_configuration_error() -> None:
    result = run("migrate", env={"DATABASE_URL": "nonsense:secret@db"})
    assert result.returncode == 2
    assert result.stderr.startswith("casetrail: configuration: DATABASE_URL: ")
    assert "postgresql://" in result.stderr
    assert "secret" not in result.stderr  # a URL may hold a password: never echoed
    assert "Traceback" not in result.stderr
