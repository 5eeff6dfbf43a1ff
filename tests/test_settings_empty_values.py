"""The records service's and the CLI's settings as an env file or a compose file writes them:
a setting left blank (`CASETRAIL_POLICY_DIR=`) is one not set, and takes its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import cli
from services.common.settings import Settings
from tests.conftest import JWT_SECRET

SETTINGS = Settings.model_fields
NEVER_BLANK = ["CASETRAIL_JWT_AUDIENCE", "CASETRAIL_JWT_ISSUER"]
OPTIONAL = sorted(str(f.alias) for f in SETTINGS.values() if f.default is None)


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """None of the caller's settings reach the test; its working folder is its own, empty
    (a blank folder setting was read as the working folder)."""
    for setting in SETTINGS.values():
        monkeypatch.delenv(str(setting.alias), raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize("name", sorted(set(OPTIONAL) - set(NEVER_BLANK)))
def test_an_optional_setting_left_blank_is_unset(
        no_environment: pytest.MonkeyPatch, name: str) -> None:
    """A blank key file or folder was the working folder: CASETRAIL_POLICY_DIR and
    CASETRAIL_LANGUAGE_GUIDE_DIR read every .json file there as an agency's, and a key file
    stopped the start with "Is a directory: '.'"."""
    no_environment.setenv(name, "")
    settings = Settings()
    assert {str(f.alias): getattr(settings, n) for n, f in SETTINGS.items()
            if f.default is None} == dict.fromkeys(OPTIONAL)


@pytest.mark.parametrize("name", sorted(str(f.alias) for f in SETTINGS.values()
                                        if f.default is not None))
def test_any_setting_left_blank_takes_its_default(
        no_environment: pytest.MonkeyPatch, name: str) -> None:
    """A blank port, size or log level was refused as no number or level; a blank
    CASETRAIL_DEV_DIR put dev's database and keys in the working folder, a blank RECORDS_HOST
    listened on every interface."""
    no_environment.setenv(name, "")
    [field] = [n for n, f in SETTINGS.items() if f.alias == name]
    assert getattr(Settings(), field) == SETTINGS[field].default


@pytest.mark.parametrize("name", NEVER_BLANK)
def test_a_blank_audience_or_issuer_stops_the_start(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        name: str) -> None:
    """Blank, it was checked as an empty one and every token was refused; taken for unset it
    would check none, so a secret store that lost the value would accept any token's
    audience or issuer. It is refused, naming the variable, before anything starts."""
    no_environment.setenv("CASETRAIL_JWT_SECRET", JWT_SECRET)
    no_environment.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/none")
    no_environment.setenv(name, " ")
    assert cli.main(["records"]) == 2
    error = capsys.readouterr().err
    assert f"{name} is set but blank" in error
    assert f"or leave {name} out to check none" in error


@pytest.mark.parametrize("name", NEVER_BLANK)
def test_an_audience_or_issuer_given_in_code_is_taken_though_the_environment_is_blank(
        no_environment: pytest.MonkeyPatch, name: str) -> None:
    no_environment.setenv(name, "")
    assert getattr(Settings.model_validate({name: "casetrail"}), name[10:].lower()) == (
        "casetrail")


def test_a_blank_key_file_is_no_key_at_start(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """`casetrail records` with a blank CASETRAIL_JWT_PUBLIC_KEY_FILE and nothing else to
    verify tokens with said "could not start: [Errno 21] Is a directory: '.'"; now it says
    what to set, before it connects to anything."""
    no_environment.setenv("CASETRAIL_DEV_DIR", str(tmp_path))  # no development secret there
    no_environment.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/none")
    no_environment.setenv("CASETRAIL_JWT_PUBLIC_KEY_FILE", "")
    assert cli.main(["records"]) == 2
    assert capsys.readouterr().err == ("casetrail: set CASETRAIL_JWT_SECRET,"
                                       " CASETRAIL_JWT_PUBLIC_KEY_FILE or CASETRAIL_JWKS_FILE\n")
