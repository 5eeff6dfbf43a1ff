"""`casetrail token` prints only tokens the services accept and that reach something: a
subject or agency the services refuse, or a participant or auditor token naming no case, is
refused with one line and exit 2."""

from __future__ import annotations

import jwt
import pytest

from services.common.auth import principal_from_claims
from tests.conftest import JWT_SECRET
from tests.test_cli import run

ENV = {"CASETRAIL_JWT_SECRET": JWT_SECRET}
CASE = "7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e"
WINDOW = ("--window-to", "2026-03-31")


def _refused(*flags: str) -> str:
    result = run("token", *flags, env=ENV)
    assert (result.returncode, result.stdout) == (2, ""), result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("value", [" x", "x ", "", "a\tb", "x" * 201, "\x7f"])
@pytest.mark.parametrize("flag", ["--sub", "--agency"])
def test_a_subject_or_agency_the_services_refuse_is_refused(flag: str, value: str) -> None:
    flags = {"--sub": "cm-1", "--agency": "agency-a"} | {flag: value}
    line = _refused("--role", "case_manager", *[part for pair in flags.items() for part in pair])
    assert line.startswith(f"casetrail: {flag} must be an identifier"), line


@pytest.mark.parametrize("role", ["participant", "auditor"])
def test_a_token_for_named_cases_only_needs_cases(role: str) -> None:
    window = WINDOW if role == "auditor" else ()
    line = _refused("--sub", "p-1", "--role", role, "--agency", "agency-a", *window)
    assert "--cases" in line, line
    line = _refused("--sub", "p-1", "--role", role, "--agency", "agency-a", "--cases", ",",
                    *window)
    assert "--cases" in line, line


@pytest.mark.parametrize("role", ["case_manager", "supervisor", "analyst", "service"])
def test_cases_are_for_participant_and_auditor_tokens(role: str) -> None:
    line = _refused("--sub", "x-1", "--role", role, "--agency", "agency-a", "--cases", CASE)
    assert line.startswith("casetrail: --cases names the cases of participant"), line


@pytest.mark.parametrize(("role", "flags"), [
    ("participant", ("--cases", CASE)),
    ("auditor", ("--cases", CASE, *WINDOW)),
    ("case_manager", ()),
])
def test_a_token_it_prints_is_one_the_services_read(role: str, flags: tuple[str, ...]) -> None:
    result = run("token", "--sub", "someone-1", "--role", role, "--agency", "agency-a", *flags,
                 env=ENV)
    assert result.returncode == 0, result.stderr
    principal = principal_from_claims(
        jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"]))
    assert (principal.sub, principal.role, principal.agency) == ("someone-1", role, "agency-a")
    assert [str(c) for c in principal.cases] == ([CASE] if flags else [])
