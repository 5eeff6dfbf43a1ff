"""Durations in the environment are bounded, and inf and nan are refused: each stops the start
(exit 2, naming the variable) instead of starting a service that then fails. A retry base of
0 turned an SMTP outage into hundreds of attempts a second, each recorded and logged, until
the 24 h horizon; a lease or dispatch interval of 1e12 or inf overflowed the date arithmetic
at every dispatch round of a notifier that said it was ready, so nothing was ever sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient

from services import cli
from services.common.settings import Settings
from tests.conftest import JWT_SECRET, FakeClock, TokenFactory
from tests.notifier_helpers import Records, SmtpServer, make_rig
from tests.test_notifier_settings_empty import no_environment, start_notifier

__all__ = ["no_environment"]  # a fixture, found by name


@pytest.fixture
def no_records_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """None of the caller's records settings reach the test."""
    for setting in Settings.model_fields.values():
        monkeypatch.delenv(str(setting.alias), raising=False)
    return monkeypatch

NOTIFIER_REFUSED = [
    ("NOTIFIER_RETRY_BASE_SECONDS", "0"), ("NOTIFIER_RETRY_BASE_SECONDS", "0.5"),
    ("NOTIFIER_RETRY_MAX_SECONDS", "0"), ("NOTIFIER_DISPATCH_INTERVAL", "1e12"),
    ("NOTIFIER_DISPATCH_INTERVAL", "inf"), ("NOTIFIER_LEASE_SECONDS", "inf"),
    ("NOTIFIER_LEASE_SECONDS", "1e12"), ("NOTIFIER_STALE_AFTER_HOURS", "inf"),
    ("NOTIFIER_STALE_AFTER_HOURS", "1e9"), ("NOTIFIER_RETRY_HORIZON_SECONDS", "1e12"),
    ("NOTIFIER_RETRY_HORIZON_SECONDS", "inf"), ("SMTP_TIMEOUT", "nan"),
    ("SMTP_TIMEOUT", "1e12"), ("NOTIFIER_DB_COMMAND_TIMEOUT", "inf"),
]


@pytest.mark.parametrize(("name", "value"), NOTIFIER_REFUSED)
def test_a_notifier_duration_out_of_bounds_stops_the_start(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch, name: str,
        value: str) -> None:
    no_environment.setenv(name, value)
    error = start_notifier(capsys)
    assert error.startswith(f"casetrail: configuration: {name}:"), error
    assert "Traceback" not in error


@pytest.mark.parametrize(("name", "value"), [
    ("NOTIFIER_RETRY_BASE_SECONDS", "1"), ("NOTIFIER_RETRY_MAX_SECONDS", "604800"),
    ("NOTIFIER_DISPATCH_INTERVAL", "3600"), ("NOTIFIER_LEASE_SECONDS", "86400"),
    ("NOTIFIER_STALE_AFTER_HOURS", "8784"), ("NOTIFIER_RETRY_HORIZON_SECONDS", "2592000"),
])
def test_a_notifier_duration_at_its_bound_is_taken(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch, name: str,
        value: str) -> None:
    """Taken: the start goes on to the next thing it needs, the database (not set here)."""
    no_environment.setenv(name, value)
    error = start_notifier(capsys)
    assert name not in error, error
    assert "DATABASE_URL" in error, error


@pytest.mark.parametrize(("name", "value"), [
    ("CASETRAIL_DB_COMMAND_TIMEOUT", "inf"), ("CASETRAIL_DB_COMMAND_TIMEOUT", "nan"),
    ("CASETRAIL_DB_COMMAND_TIMEOUT", "1e12"), ("CASETRAIL_FEED_MAX_WAIT", "1e12"),
    ("CASETRAIL_FEED_MAX_WAIT", "inf"),
])
def test_a_records_duration_out_of_bounds_stops_the_start(
        capsys: pytest.CaptureFixture[str], no_records_environment: pytest.MonkeyPatch,
        name: str, value: str) -> None:
    no_records_environment.setenv("CASETRAIL_JWT_SECRET", JWT_SECRET)
    no_records_environment.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/none")
    no_records_environment.setenv(name, value)
    assert cli.main(["records"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"casetrail: configuration: {name}:"), error


async def test_the_shortest_retry_base_ends_a_dispatch_round_during_an_outage(
        fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
        records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock) -> None:
    """With the clock standing still, a round makes one attempt and gives the notice back for
    later: its retry is at least half a second away. With a base of 0 the round never ended."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_RETRY_BASE_SECONDS=1, NOTIFIER_RETRY_ATTEMPTS=None)
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    step = await records.step(case, await records.goal(case))
    await records.complete(case, step)
    await rig.catch_up()
    await smtp.stop()
    async with asyncio.timeout(30):
        await rig.dispatch()
    [row] = await rig.rows(kind="small_win")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["not_before"] >= clock.now + timedelta(seconds=0.5)
