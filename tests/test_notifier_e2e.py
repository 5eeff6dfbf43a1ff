"""End to end with every loop running: an append on the records service becomes an email
in the development mail catcher, listed by `casetrail mail` and the /mail page.

A test that runs the notifier's loops asks for `fresh_database_url` before `aiohttp_client`:
fixtures are torn down in reverse, so the notifier stops before its database is dropped (the
other way round its jobs met a dropped database for the stop's grace, seconds a test, with
misleading connection errors in the log)."""

from __future__ import annotations

import asyncio
import email
import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services import cli
from services.notifier.cli import print_caught_mail, run_notifier, start_dev_notifier
from services.notifier.http.app import NOTIFIER, create_app
from services.notifier.mailbox import list_caught
from services.notifier.settings import NotifierSettings
from tests.conftest import JWT_SECRET, ClientFactory, FakeClock, TokenFactory, bearer, free_port
from tests.notifier_helpers import Records, SmtpServer, notifier_settings


async def wait_for_mail(folder: Path, count: int) -> None:
    async with asyncio.timeout(30):
        # the catcher writes files from another component: nothing to await but the folder
        while len(list_caught(folder)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_completed_step_arrives_as_mail_in_the_dev_catcher(
        make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records_client = await make_records_client(fresh_database_url)
    records = Records(records_client, token())
    dev = await start_dev_notifier(
        database_url=fresh_database_url, jwt_secret=JWT_SECRET,
        records_url=str(records_client.make_url("")).rstrip("/"), mail_dir=tmp_path / "mail",
        link_secret_file=cli.dev_link_secret(tmp_path), port=free_port(),
        smtp_port=free_port(), recipients=[("agency-a", "cm-1", "case_manager")])
    try:
        async with aiohttp.ClientSession(dev.url) as http:
            case = await records.open_case()
            goal = await records.goal(case)
            await records.complete(case, await records.step(case, goal, "Call the landlord"))
            await wait_for_mail(dev.mail_dir, 1)
            page = await (await http.get("/mail")).text()
            assert "A small win for Jo: Call the landlord" in page
            [caught] = list_caught(dev.mail_dir)
            raw = await (await http.get(f"/mail?file={caught.file}&raw=1")).text()
            assert "Message-ID: " + caught.message_id in raw
            # the message as a person reads it: decoded, not base64
            readable = await (await http.get(f"/mail?file={caught.file}")).text()
            assert "Jo completed the step &quot;Call the landlord&quot;." in readable
            assert html.escape(caught.message_id) in readable
            assert (await http.get("/mail?file=../../etc/passwd")).status == 404
    finally:
        await dev.stop()
    assert print_caught_mail(dev.mail_dir) == 0
    assert "cm-1@casetrail.local" in capsys.readouterr().out


async def test_a_participants_mail_in_dev_carries_an_unsubscribe_link_that_works(
        make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
        tmp_path: Path) -> None:
    """`casetrail dev` showed no unsubscribe link (NOTIFIER_PUBLIC_URL was unset): a newcomer
    never saw what a participant's mail carries. It links to the dev notifier, signed with a
    secret kept, owner-only, beside the dev data."""
    records_client = await make_records_client(fresh_database_url)
    records = Records(records_client, token())
    secret = cli.dev_link_secret(tmp_path)
    assert cli.dev_link_secret(tmp_path) == secret  # kept across runs
    assert secret.stat().st_mode & 0o777 == 0o600
    dev = await start_dev_notifier(
        database_url=fresh_database_url, jwt_secret=JWT_SECRET,
        records_url=str(records_client.make_url("")).rstrip("/"), mail_dir=tmp_path / "mail",
        link_secret_file=secret, port=free_port(), smtp_port=free_port())
    try:
        async with aiohttp.ClientSession() as http:
            case = await records.open_case()
            jo = bearer(token(role="participant", sub="jo", cases=[case]))
            prefs = {"email": "jo@example.org", "delivery": "immediate", "timezone": "UTC",
                     "celebrations": True}
            put = await http.put(f"{dev.url}/v1/preferences/jo", json=prefs, headers=jo)
            assert put.status == 200, await put.text()
            await records.achieve(case, await records.goal(case))
            await wait_for_mail(dev.mail_dir, 1)
            [caught] = list_caught(dev.mail_dir)
            with (dev.mail_dir / caught.file).open("rb") as handle:
                mail = email.message_from_binary_file(handle)
            link = " ".join(str(mail["List-Unsubscribe"]).split())
            assert link.startswith(f"<{dev.url}/v1/unsubscribe/"), link
            clicked = await http.post(link[1:-1], data="List-Unsubscribe=One-Click",
                                      headers={"Content-Type":
                                               "application/x-www-form-urlencoded"})
            assert clicked.status == 200, await clicked.text()
            stored = await http.get(f"{dev.url}/v1/preferences/jo", headers=jo)
            assert (await stored.json())["celebrations"] is False
    finally:
        await dev.stop()


def test_run_notifier_explains_missing_configuration(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # whatever the caller's environment holds (the suite honours DATABASE_URL), none of it may
    # reach these settings: with it, run_notifier would really start a notifier
    for field in NotifierSettings.model_fields.values():
        assert field.alias is not None
        monkeypatch.delenv(field.alias, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/never")
    settings = NotifierSettings.model_validate({"CASETRAIL_JWT_SECRET": JWT_SECRET})
    monkeypatch.delenv("DATABASE_URL")
    assert settings.database_url is not None  # settings do read the environment
    for missing, names in [({"CASETRAIL_JWT_SECRET": JWT_SECRET}, "DATABASE_URL"),
                           ({"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
                            "CASETRAIL_JWT_SECRET")]:
        assert run_notifier(NotifierSettings.model_validate(missing)) == 2
        assert names in capsys.readouterr().err


def _no_notifier_settings_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """None of the caller's environment reaches the settings (with it, a notifier would
    really start)."""
    for field in NotifierSettings.model_fields.values():
        assert field.alias is not None
        monkeypatch.delenv(field.alias, raising=False)
    monkeypatch.setenv("CASETRAIL_DEV_DIR", str(tmp_path))


def test_a_misspelt_notifier_timezone_stops_the_notifier_from_starting(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """With NOTIFIER_TIMEZONE=Europe/Berln the notifier started and said it was ready, and every
    event with a date was skipped past the checkpoint for good."""
    _no_notifier_settings_from(monkeypatch, tmp_path)
    monkeypatch.setenv("NOTIFIER_TIMEZONE", "Europe/Berln")
    assert cli.main(["notifier"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("casetrail: configuration:")
    assert "NOTIFIER_TIMEZONE" in error
    assert "not an IANA time zone name" in error
    assert "'Europe/Berln'" in error


def test_run_notifier_refuses_a_records_token_file_that_is_not_there(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    _no_notifier_settings_from(monkeypatch, tmp_path)
    missing = tmp_path / "records-token"
    settings = NotifierSettings.model_validate({
        "DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "CASETRAIL_JWKS_FILE": "/no/jwks",
        "RECORDS_TOKEN_FILE": str(missing)})
    assert run_notifier(settings) == 2
    assert f"RECORDS_TOKEN_FILE {missing} is not a file" in capsys.readouterr().err


async def sent_small_wins(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM notifier.notifications"
                                   " WHERE kind = 'small_win' AND status = 'sent'"))


async def test_two_running_notifiers_send_each_celebration_once(
        fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
        make_records_client: ClientFactory, token: TokenFactory) -> None:
    records_client = await make_records_client(fresh_database_url)
    records = Records(records_client, token())
    smtp = await SmtpServer().start()
    try:
        settings = notifier_settings(fresh_database_url,
                                     str(records_client.make_url("")).rstrip("/"), smtp.port,
                                     NOTIFIER_FEED_WAIT=1)
        apps = [await aiohttp_client(create_app(settings)) for _ in range(2)]
        response = await apps[0].put("/v1/preferences/cm-1", json={
            "email": "sam@example.org", "delivery": "immediate", "timezone": "UTC",
            "celebrations": True}, headers=bearer(token()))
        assert response.status == 200
        case = await records.open_case()
        goal = await records.goal(case)
        for n in range(12):
            await records.complete(case, await records.step(case, goal, f"Step {n}"))
        pool = apps[0].app[NOTIFIER].pool
        async with asyncio.timeout(30):
            while await sent_small_wins(pool) < 12:  # noqa: ASYNC110  (polling the database)
                await asyncio.sleep(0.05)
        ids = [m["Message-ID"] for m in smtp.received]
        assert len(ids) == 12
        assert len(set(ids)) == 12
    finally:
        await smtp.stop()


async def test_a_new_event_wakes_the_notifier_long_before_its_long_poll_ends(
        fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
        make_records_client: ClientFactory, token: TokenFactory) -> None:
    """The feed is long-polled for 60 s and dispatch runs every 60 s: only the long-poll
    answering as soon as the event is visible, and the page poking dispatch, can bring the mail
    within the 20 s allowed (it takes about a second or less)."""
    records_client = await make_records_client(fresh_database_url)
    records = Records(records_client, token())
    smtp = await SmtpServer().start()
    try:
        settings = notifier_settings(fresh_database_url,
                                     str(records_client.make_url("")).rstrip("/"), smtp.port,
                                     NOTIFIER_FEED_WAIT=60, NOTIFIER_DISPATCH_INTERVAL=60)
        notifier = await aiohttp_client(create_app(settings))
        response = await notifier.put("/v1/preferences/cm-1", json={
            "email": "sam@example.org", "delivery": "immediate", "timezone": "UTC",
            "celebrations": True}, headers=bearer(token()))
        assert response.status == 200
        async with asyncio.timeout(20):
            # the first read is immediate (readiness); polling the notifier's own answer
            while (await notifier.get("/readyz")).status != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # now waiting inside a 60 s long-poll
            case = await records.open_case()
            goal = await records.goal(case)
            await records.complete(case, await records.step(case, goal, "Call the landlord"))
            await smtp.arrived.wait()
        assert smtp.subjects() == ["A small win for Jo: Call the landlord"]
    finally:
        await smtp.stop()


async def test_the_scheduled_digest_job_sends_what_a_digest_reader_is_owed(
        fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
        make_records_client: ClientFactory, token: TokenFactory, clock: FakeClock) -> None:
    """Digests go out through the job APScheduler runs every minute; here it is run at once
    through the scheduler, once the injected clock (both services') reaches the digest time.
    The digest time was a few seconds ahead on the real clock: a notice that reached the
    notifier later than that (a loaded machine, or another run's open transaction holding the
    feed back) went into tomorrow's digest and the test failed."""
    records_client = await make_records_client(fresh_database_url, clock=clock)
    records = Records(records_client, token())
    smtp = await SmtpServer().start()
    try:
        digest_time = (clock.now + timedelta(hours=1)).time()
        settings = notifier_settings(fresh_database_url,
                                     str(records_client.make_url("")).rstrip("/"), smtp.port,
                                     NOTIFIER_FEED_WAIT=1, NOTIFIER_DISPATCH_INTERVAL=0.2,
                                     NOTIFIER_DIGEST_TIME=digest_time.isoformat())
        notifier = await aiohttp_client(create_app(settings, clock=clock))
        response = await notifier.put("/v1/preferences/cm-1", json={
            "email": "sam@example.org", "delivery": "daily_digest", "timezone": "UTC",
            "celebrations": True}, headers=bearer(token()))
        assert response.status == 200
        case = await records.open_case()
        goal = await records.goal(case)
        await records.complete(case, await records.step(case, goal, "Call the landlord"))
        pool = notifier.app[NOTIFIER].pool
        async with asyncio.timeout(60):  # the feed waits out other runs' open transactions
            while (due := await pool.fetchval(  # noqa: ASYNC110  (polling the database)
                    "SELECT due_at FROM notifier.notifications"
                    " WHERE kind = 'daily_digest'")) is None:
                await asyncio.sleep(0.05)
        assert due == datetime.combine(clock.now.date(), digest_time, UTC)  # today's
        assert smtp.received == []
        scheduler = notifier.app[NOTIFIER].notifier._scheduler
        assert scheduler is not None
        job = scheduler.get_job("digests")
        assert str(job.trigger) == "cron[second='0']"  # every minute
        clock.now = due
        job.modify(next_run_time=datetime.now(UTC))  # the scheduler runs on the real clock
        async with asyncio.timeout(60):
            await smtp.arrived.wait()
        assert smtp.subjects() == ["Your Casetrail summary: 1 update"]
        [message] = smtp.received
        assert message["To"] == "sam@example.org"
        text = message.get_payload()[0].get_payload(decode=True).decode()  # type: ignore[index,union-attr]
        assert "A small win for Jo: Call the landlord" in text
    finally:
        await smtp.stop()
