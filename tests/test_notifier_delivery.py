"""Delivery against a real SMTP server (aiosmtpd in this process): success, 4xx then success,
5xx, server down then back, dead letters, preferences, digests and two instances at once."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
import structlog
from aiohttp.test_utils import TestClient

from services.common.logs import mask_addresses
from services.notifier.http.app import NOTIFIER, create_app
from services.notifier.rules import Kind, Notice, RecipientRole
from services.notifier.settings import NotifierSettings
from services.notifier.store import directory
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import (
    Outcome,
    Row,
    claim_due,
    confirm_claim,
    fan_out,
    insert_notices,
    record_outcomes,
)
from tests.conftest import FakeClock, TokenFactory, bearer, wait_until
from tests.notifier_helpers import (
    NotifierRig,
    Records,
    SmtpServer,
    make_rig,
    notifier_settings,
    text_of,
)

WAITING_ON_ROWS = ("SELECT count(*) >= $1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()")


async def small_win(records: Records, description: str = "Visit the job centre") -> str:
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, description))
    return case


def without_handovers(messages: list[email.message.Message]) -> list[email.message.Message]:
    """The mail but the handover a transfer sends the new case manager."""
    return [m for m in messages
            if not str(m["Subject"]).startswith("A case has been transferred to you")]


async def only_row(rig: NotifierRig, kind: str = "small_win") -> dict[str, object]:
    [row] = await rig.rows(kind=kind)
    return row


async def attempt_codes(rig: NotifierRig, row_id: object) -> list[int | None]:
    rows = await rig.notifier.pool.fetch(
        "SELECT smtp_code FROM notifier.attempts WHERE notification_id = $1 ORDER BY attempt",
        row_id)
    return [r["smtp_code"] for r in rows]


async def test_a_small_win_is_sent_once_with_text_html_and_a_stable_message_id(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    assert await rig.dispatch() == 1
    assert await rig.dispatch() == 0
    row = await only_row(rig)
    [message] = smtp.received
    assert row["status"] == "sent"
    assert message["Message-ID"] == row["message_id"]
    assert message["To"] == "cm-1@example.org"
    assert message["Subject"] == "A small win for Jo: Visit the job centre"
    kinds = [part.get_content_type() for part in message.walk()]
    assert "text/plain" in kinds
    assert "text/html" in kinds
    assert await attempt_codes(rig, row["id"]) == [250]
    metrics = await (await rig.client.get("/metrics")).text()
    assert 'casetrail_notifications_sent_total{kind="small_win"} 1.0' in metrics


async def test_a_4xx_is_retried_later_with_the_same_message_id(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    smtp.replies = ["451 4.3.0 mailbox busy, try later"]
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"], row["last_code"]) == ("failed", 1, 451)
    assert row["not_before"] > clock()
    assert await rig.dispatch() == 0  # backing off
    clock.now = row["not_before"]  # type: ignore[assignment]
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert await attempt_codes(rig, row["id"]) == [451, 250]
    [(_, refused)] = smtp.refused
    assert refused["Message-ID"] == smtp.received[0]["Message-ID"] == row["message_id"]


async def test_a_5xx_is_a_dead_letter_that_an_operator_can_retry(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    smtp.replies = ["550 5.1.1 <cm-1@example.org>: no such mailbox"]
    # as the configured log writes them: one processor masks every line's addresses
    # (tests/test_audit_privacy_notifier.py reads a running notifier's own output)
    with structlog.testing.capture_logs([mask_addresses]) as logs:
        await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"], row["last_code"]) == ("dead", 1, 550)
    assert "refused permanently" in str(row["last_error"])
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert (warning["event"], warning["notification"], warning["smtp_code"]) == (
        "notification dead-lettered", str(row["id"]), 550)
    assert "5.1.1 <[address]>: no such mailbox" in warning["reason"]
    assert "example.org" not in str(logs)  # a participant's address stays out of the logs
    assert await rig.dispatch() == 0
    supervisor = token(role="supervisor", sub="sup-1")
    # a retry takes no options: a body is refused, not ignored while the retry goes ahead
    refused = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                    json={"to": "other@example.org"}, headers=bearer(supervisor))
    assert (refused.status, (await refused.json())["type"].rsplit("/", 1)[1]) == (
        400, "unexpected-body")
    assert (await only_row(rig))["status"] == "dead"
    response = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                     headers=bearer(supervisor))
    assert response.status == 202
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert smtp.received[0]["Message-ID"] == smtp.refused[0][1]["Message-ID"]
    again = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                  headers=bearer(supervisor))
    assert again.status == 409


async def test_server_down_then_back(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory) -> None:
    down = SmtpServer()  # not started: connections are refused
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, down, clock)
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["last_code"]) == ("failed", None)
    assert "Connect" in str(row["last_error"]) or "refused" in str(row["last_error"]).lower()
    await down.start()
    try:
        clock.now = row["not_before"]  # type: ignore[assignment]
        await rig.dispatch()
    finally:
        await down.stop()
    row = await only_row(rig)
    assert row["status"] == "sent"
    assert len(down.received) == 1
    assert await attempt_codes(rig, row["id"]) == [None, 250]


async def test_retries_end_in_a_dead_letter_when_attempts_run_out(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_RETRY_ATTEMPTS=2)
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    smtp.replies = ["421 4.7.0 slow down", "452 4.2.2 over quota"]
    await rig.dispatch()
    clock.now = (await only_row(rig))["not_before"]  # type: ignore[assignment]
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"], row["last_code"]) == ("dead", 2, 452)
    assert "gave up after 2 attempt(s)" in str(row["last_error"])
    metrics = await (await rig.client.get("/metrics")).text()
    assert 'casetrail_notifications_dead_total{kind="small_win"} 1.0' in metrics
    assert 'casetrail_notifications_failed_total{kind="small_win"} 1.0' in metrics


async def test_a_manual_retry_sends_a_dead_letter_however_late_with_a_fresh_budget(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_RETRY_ATTEMPTS=2)
    await rig.set_prefs("cm-1", token())
    # refused by the server: one dead for want of an address is sent by the PUT giving it
    smtp.replies = ["550 5.2.1 mailbox disabled"]
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    assert (await only_row(rig))["status"] == "dead"  # refused
    clock.advance(days=5)  # well past the 72 h after which an untried notice is too late
    smtp.replies = ["421 4.7.0 slow down"]
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    row = await only_row(rig)
    assert (await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                  headers=supervisor)).status == 202
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("failed", 2)
    smtp.replies = ["452 4.2.2 over quota"]
    clock.now = row["not_before"]  # type: ignore[assignment]
    await rig.dispatch()
    assert (await only_row(rig))["status"] == "dead"  # two attempts: the budget ran out
    clock.advance(days=5)
    assert (await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                  headers=supervisor)).status == 202
    smtp.replies = ["421 4.7.0 slow down"]
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("failed", 4)  # a fresh budget, not dead
    clock.now = row["not_before"]  # type: ignore[assignment]
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("sent", 5)
    assert {m["Message-ID"] for m in smtp.received} == {row["message_id"]}


async def test_an_address_stored_before_addresses_were_checked_is_not_mailed(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """"jo,smith@example.com" went to the mailbox "jo": such an entry, from before the check,
    ends as a dead letter saying so, and nothing is sent."""
    await rig.set_prefs("cm-1", token())
    await rig.notifier.pool.execute("UPDATE notifier.directory SET email = $1",
                                    "jo,smith@example.com")
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await only_row(rig)
    assert row["status"] == "dead"
    assert "not a plain address" in str(row["last_error"])
    assert smtp.received == []


async def test_a_missing_address_is_reported_on_the_notification(
        rig: NotifierRig, records: Records, smtp: SmtpServer) -> None:
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await only_row(rig)
    assert row["status"] == "dead"
    assert "no email address on file for cm-1" in str(row["last_error"])
    assert smtp.received == []


async def test_milestones_reach_the_participant_only_when_they_opted_in(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    opted_in, silent = await records.open_case(), await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[opted_in]),
                        email=None)
    for case in (opted_in, silent):
        await records.achieve(case, await records.goal(case, "Find steady work",
                                                       "A job where I use my hands"))
    await rig.catch_up()
    await rig.dispatch()
    to_jo = smtp.to("jo@example.org")
    assert len(to_jo) == 1
    assert "Congratulations, Jo" in str(to_jo[0]["Subject"])
    assert len(smtp.to("cm-1@example.org")) == 2
    assert 'achieved "A job where I use my hands"' in " ".join(smtp.subjects())
    [cancelled] = await rig.rows(status="cancelled")
    assert cancelled["recipient"] == f"participant:{silent}"
    assert "not opted in" in str(cancelled["last_error"])


async def test_turning_celebrations_off_cancels_them(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token(), celebrations=False)
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    assert (await only_row(rig))["status"] == "cancelled"
    assert smtp.received == []


async def test_overdue_reviews_reach_the_case_manager_and_every_supervisor_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token())
    boss = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("sup-1", boss)
    await rig.set_prefs("sup-2", boss, role="supervisor")
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    clock.advance(days=62)  # two days past the due date: the overdue moment
    await rig.dispatch()
    await rig.dispatch()
    overdue = [m["To"] for m in smtp.received if "not yet recorded" in str(m["Subject"])]
    assert sorted(overdue) == ["cm-1@example.org", "sup-1@example.org", "sup-2@example.org"]
    statuses = {r["key"].split(":")[0]: r["status"] for r in await rig.rows()
                if r["parent_id"] is None}
    assert statuses["review_reminder"] == "cancelled"  # five days late: no longer useful
    assert statuses["review_due_today"] == "sent"


async def test_daily_digest_recipients_get_one_email_at_their_local_time(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="America/New_York")
    await small_win(records, "Call the landlord")
    await small_win(records, "Open a bank account")
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    [digest] = await rig.rows(kind="daily_digest")
    assert str(digest["due_at"]) == "2026-03-02 13:00:00+00:00"  # 08:00 in New York
    assert await rig.notifier.dispatcher.send_digests() == 0
    clock.now = digest["due_at"]  # type: ignore[assignment]
    assert await rig.notifier.dispatcher.send_digests() == 1
    [message] = smtp.received
    body = message.get_payload()[0].get_payload(decode=True).decode()  # type: ignore[index,union-attr]
    assert "Call the landlord" in body
    assert "Open a bank account" in body
    assert {r["status"] for r in await rig.rows(kind="small_win")} == {"sent"}


async def test_quiet_hours_hold_a_message_until_they_end(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "08:00", "end": "10:00"})
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    clock.advance(hours=1)
    await rig.dispatch()
    assert len(smtp.received) == 1


async def test_a_digest_falling_in_quiet_hours_waits_until_they_end(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="America/New_York",
                        quiet_hours={"start": "07:00", "end": "09:30"})
    await small_win(records, "Call the landlord")
    await rig.catch_up()
    await rig.dispatch()
    [digest] = await rig.rows(kind="daily_digest")
    clock.now = digest["due_at"]  # type: ignore[assignment]  (08:00 in New York: quiet)
    await rig.notifier.dispatcher.send_digests()
    assert smtp.received == []
    [digest] = await rig.rows(kind="daily_digest")
    assert (digest["status"], str(digest["not_before"])) == (
        "scheduled", "2026-03-02 14:30:00+00:00")  # 09:30 in New York
    clock.now = digest["not_before"]  # type: ignore[assignment]
    assert await rig.notifier.dispatcher.send_digests() == 1
    assert len(smtp.received) == 1


async def test_a_message_that_cannot_be_rendered_is_a_counted_and_logged_dead_letter(
        rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    [notice] = due_notices(1)
    async with rig.notifier.pool.acquire() as conn:  # a context its template cannot fill
        await insert_notices(conn, [replace(notice, context={"due_date": "the 2nd"})], "test",
                             clock(), cause_recorded_at=clock())
    with structlog.testing.capture_logs() as logs:
        assert await rig.dispatch() == 1
    [row] = await rig.rows()
    assert (row["status"], smtp.received) == ("dead", [])
    assert "could not render the message" in str(row["last_error"])
    assert [entry["notification"] for entry in logs if entry["log_level"] == "warning"] == [
        str(row["id"])]
    metrics = await (await rig.client.get("/metrics")).text()
    assert 'casetrail_notifications_dead_total{kind="review_due_today"} 1.0' in metrics


def due_notices(count: int, due: datetime | None = None) -> list[Notice]:
    case_id = uuid4()
    return [Notice(f"test:{case_id}:{n}", Kind.REVIEW_DUE_TODAY, case_id, "agency-a",
                   RecipientRole.CASE_MANAGER, "cm-1",
                   due or FakeClock().now,
                   {"participant": f"Person {n}", "due_date": "2026-03-02"})
            for n in range(count)]


async def test_two_instances_send_each_notice_once(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    other = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                           NOTIFIER_DISPATCH_BATCH=7)
    await rig.set_prefs("cm-1", token())
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, due_notices(150), "test", clock(),
                             cause_recorded_at=clock())
    handled = await asyncio.gather(rig.dispatch(), other.dispatch(), rig.dispatch())
    assert sum(handled) == 150
    ids = [m["Message-ID"] for m in smtp.received]
    assert len(ids) == 150
    assert len(set(ids)) == 150
    attempts = await rig.notifier.pool.fetch("SELECT attempts FROM notifier.notifications")
    assert {r["attempts"] for r in attempts} == {1}


async def test_a_claim_passes_over_rows_another_claim_holds_without_waiting(
        rig: NotifierRig, clock: FakeClock) -> None:
    """FOR UPDATE SKIP LOCKED: while one instance's claim is still open, another takes the
    rows it does not hold, at once, and none that it does."""
    pool = rig.notifier.pool
    async with pool.acquire() as conn:
        await insert_notices(conn, due_notices(50), "test", clock(), cause_recorded_at=clock())
    async with pool.acquire() as holder, holder.transaction():
        first = await claim_due(holder, owner="first", now=clock(), limit=30,
                                lease=timedelta(minutes=2), digests=False)
        async with asyncio.timeout(5):  # plain FOR UPDATE would wait for the holder
            second = await claim_due(pool, owner="second", now=clock(), limit=30,
                                     lease=timedelta(minutes=2), digests=False)
    assert {r.id for r in first}.isdisjoint({r.id for r in second})
    assert (len(first), len(second)) == (30, 20)


async def test_a_lease_left_by_a_crashed_instance_is_taken_over_when_it_expires(
        rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    pool = rig.notifier.pool
    async with pool.acquire() as conn:
        await insert_notices(conn, due_notices(1), "test", clock(),
                             cause_recorded_at=clock())
    [claimed] = await claim_due(pool, owner="crashed", now=clock(), limit=10,
                                lease=timedelta(minutes=2), digests=False)
    assert await rig.dispatch() == 0
    clock.advance(minutes=3)
    assert await rig.dispatch() == 1
    assert smtp.received[0]["X-Casetrail-Notification"] == str(claimed.id)
    assert isinstance(claimed.id, UUID)


async def test_a_slow_mail_server_never_lets_a_second_instance_send_the_same_notice(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, token: TokenFactory) -> None:
    """Real time: one instance claims every row, the server takes 1 s a message over one
    connection, so the batch (8 s) outlasts the 4 s lease twice over while a second instance
    keeps looking for due work. (A 1 s lease, renewed every third of it, failed here once in a
    full run on a loaded 2-core machine: a stall of over 0.67 s let the lease lapse; with two
    test workers, 2 s left a margin of 1.33 s, now 2.67 s.)"""
    slow = await SmtpServer(delay=1.0).start()
    try:
        settings = notifier_settings(
            fresh_database_url, str(records.client.make_url("")).rstrip("/"), slow.port,
            NOTIFIER_LEASE_SECONDS=4, NOTIFIER_SMTP_CONNECTIONS=1)
        first, second = [(await aiohttp_client(create_app(settings, background=False)))
                         .app[NOTIFIER].notifier for _ in range(2)]
        await directory.upsert(first.pool, Preferences(
            "agency-a", "cm-1", "case_manager", "cm-1@example.org", "immediate", "UTC", None,
            None, True), "test", datetime.now(UTC))
        async with first.pool.acquire() as conn:
            now = datetime.now(UTC)
            await insert_notices(conn, due_notices(8, due=now), "test", now, cause_recorded_at=now)
        done = asyncio.Event()

        async def keep_dispatching() -> int:
            # The second looks only once the first holds the rows: what is tested is the lease,
            # not which instance happens to claim first (the second won that race once in CI).
            async with asyncio.timeout(10):
                while not await first.pool.fetchval(  # noqa: ASYNC110  (polling the database)
                        "SELECT count(*) FROM notifier.notifications WHERE lease_owner = $1",
                        first.instance):
                    await asyncio.sleep(0.01)
            handled = 0
            while not done.is_set():
                handled += await second.dispatcher.dispatch_due()
                await asyncio.sleep(0.05)
            return handled

        async def first_batch() -> int:
            try:
                return await first.dispatcher.dispatch_due()
            finally:
                done.set()

        handled = await asyncio.gather(first_batch(), keep_dispatching())
        assert handled[0] == 8
        ids = [m["Message-ID"] for m in slow.received]
        assert sorted(ids) == sorted(set(ids))
        assert len(ids) == 8
        rows = await first.pool.fetch("SELECT status, attempts FROM notifier.notifications")
        assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}
    finally:
        await slow.stop()


async def test_an_instance_whose_lease_ran_out_can_neither_send_nor_record(
        rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    pool = rig.notifier.pool
    async with pool.acquire() as conn:
        await insert_notices(conn, due_notices(1), "test", clock(),
                             cause_recorded_at=clock())
    [late] = await claim_due(pool, owner="late", now=clock(), limit=10,
                             lease=timedelta(minutes=2), digests=False)
    clock.advance(minutes=3)
    assert await rig.dispatch() == 1
    assert late.claim_token is not None
    assert not await confirm_claim(pool, late.id, late.claim_token, clock() + timedelta(1))
    outcome = Outcome(late.id, "dead", True, 1, 550, "refused", attempt_outcome="permanent")
    assert (await record_outcomes(pool, [outcome], clock(), late.claim_token)).lost == [late.id]
    [row] = await rig.rows()
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert len(smtp.received) == 1


async def test_a_transfer_takes_a_notice_out_of_the_old_managers_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    assert (await only_row(rig))["digest_id"] is not None
    await records.transfer(case, "cm-2")
    await rig.catch_up()
    await rig.dispatch()
    [message] = without_handovers(smtp.received)
    assert message["To"] == "cm-2@example.org"
    assert (await only_row(rig))["status"] == "sent"
    assert await rig.notifier.dispatcher.send_digests() == 0


async def test_a_transfer_takes_a_review_reminder_out_of_the_old_managers_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """A dated notice is re-addressed by the schedule's own reconciling, not only by the
    transfer's move of celebrations: it too must leave the old manager's digest."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await records.open_case()
    await records.agree(case)  # review due Friday 1 May: the reminder on Tuesday 28 April
    await rig.catch_up()
    clock.now = datetime(2026, 4, 28, 9, 0, tzinfo=UTC)
    await rig.dispatch()  # into cm-1's digest of Wednesday
    assert (await only_row(rig, "review_reminder"))["digest_id"] is not None
    await records.transfer(case, "cm-2")
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 4, 29, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    assert [m["To"] for m in without_handovers(smtp.received)] == ["cm-2@example.org"]
    reminder = await only_row(rig, "review_reminder")
    assert (reminder["recipient"], reminder["status"]) == ("cm-2", "sent")


@pytest.mark.parametrize("kind", ["small_win", "review_reminder"])
async def test_a_notice_claimed_before_a_transfer_goes_to_the_new_manager_not_the_old(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory, kind: str) -> None:
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    if kind == "small_win":
        case = await small_win(records)
    else:
        case = await records.open_case()
        await records.agree(case)  # the reminder: Tuesday 28 April, 09:00
        clock.now = datetime(2026, 4, 28, 9, 0, tzinfo=UTC)
    await rig.catch_up()
    pool = rig.notifier.pool
    [held] = await claim_due(pool, owner="slow", now=clock(), limit=10,
                             lease=timedelta(minutes=2), digests=False)
    await records.transfer(case, "cm-2")  # while "slow" waits for a free SMTP slot
    await rig.catch_up()
    assert not await confirm_claim(pool, held.id, held.claim_token, clock() + timedelta(1))
    # no need to wait out the old claim's lease (the other one is the handover)
    assert await rig.dispatch() == 2
    assert [m["To"] for m in without_handovers(smtp.received)] == ["cm-2@example.org"]
    row = await only_row(rig, kind)
    assert (row["recipient"], row["status"]) == ("cm-2", "sent")


async def supervisors_overdue_notice_held(
        rig: NotifierRig, records: Records, clock: FakeClock,
        token: TokenFactory) -> tuple[str, str, Row]:
    """A case whose review went overdue on 3 May, and the supervisors' overdue notice as a
    slow instance claimed it (sup-1 and cm-2 have addresses); the supervisor's token."""
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("sup-1", supervisor)
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await records.open_case()
    await records.agree(case)  # review due Friday 1 May, overdue on 3 May
    await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)
    [held] = [row for row in await claim_due(rig.notifier.pool, owner="slow", now=clock(),
                                             limit=10, lease=timedelta(minutes=2),
                                             digests=False)
              if row.recipient_role == "supervisors"]
    return supervisor, case, held


async def test_an_overdue_notice_claimed_before_a_transfer_is_handed_on_naming_the_new_manager(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """An instance held the supervisors' overdue notice when the transfer landed: what it then
    hands on to each supervisor must not carry the earlier case manager's name."""
    supervisor, case, held = await supervisors_overdue_notice_held(rig, records, clock, token)
    pool = rig.notifier.pool
    await records.transfer(case, "cm-2", token=supervisor)
    await rig.catch_up()
    # what the slow instance does next with the row it loaded: hand it on to each supervisor
    await fan_out(pool, held, [Notice(f"{held.key}:sup-1", Kind(held.kind), held.case_id,
                                      held.agency, RecipientRole.USER, "sup-1", held.due_at,
                                      held.context)], "test", clock())
    await rig.dispatch()
    [to_supervisor] = smtp.to("sup-1@example.org")
    assert "(case manager: cm-2)" in text_of(to_supervisor)


@pytest.mark.parametrize(("change", "read"), [("transfer", "(case manager: cm-2)"),
                                              ("new name", "review with Sam ")])
async def test_a_change_landing_while_a_notice_is_handed_on_reaches_the_copies_it_writes(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory, change: str, read: str) -> None:
    """An instance was handing the supervisors' overdue notice on (writing a copy for each
    supervisor as the notice then read) while the feed applied a transfer or a new name, which
    waited for it: the change must still reach those copies, written after it began."""
    supervisor, case, held = await supervisors_overdue_notice_held(rig, records, clock, token)
    pool = rig.notifier.pool
    if change == "transfer":
        await records.transfer(case, "cm-2", token=supervisor)
    else:
        await records.call("PATCH", f"/v1/cases/{case}/participant",
                           {"preferred_name": "Sam", "reason": "Sam asked to be called Sam"})
    await rig.feed_shows_every_event()
    children = [Notice(f"{held.key}:sup-1", Kind(held.kind), held.case_id, held.agency,
                       RecipientRole.USER, "sup-1", held.due_at, held.context)]
    async with pool.acquire() as blocker:
        parent_held = blocker.transaction()  # so that the hand-on is under way when the feed
        await parent_held.start()            # comes to the notice
        await blocker.execute("SELECT FROM notifier.notifications WHERE id = $1 FOR UPDATE",
                              held.id)
        handing_on = asyncio.create_task(fan_out(pool, held, children, "test", clock()))
        await wait_until(pool, WAITING_ON_ROWS, 1)
        applying = asyncio.create_task(rig.notifier.subscriber.catch_up())
        await wait_until(pool, WAITING_ON_ROWS, 2)  # the feed waits behind the hand-on
        await parent_held.commit()
    await asyncio.gather(handing_on, applying)
    await rig.dispatch()
    [to_supervisor] = smtp.to("sup-1@example.org")
    assert read in text_of(to_supervisor)




@pytest.mark.parametrize(("delivery", "zone", "sent_at"), [
    # the schedule's zone is UTC: the review's notice is due at 09:00 UTC on Friday 1 May
    ("immediate", "UTC", "2026-05-01 09:00:00+00:00"),
    ("immediate", "Europe/Berlin", "2026-05-01 07:00:00+00:00"),  # 09:00 in Berlin
    ("immediate", "Pacific/Honolulu", "2026-05-01 19:00:00+00:00"),  # 09:00 in Honolulu
    ("daily_digest", "UTC", "2026-05-01 08:00:00+00:00"),  # that morning's digest
    ("daily_digest", "Europe/Berlin", "2026-05-01 06:00:00+00:00"),  # 08:00 in Berlin
    ("daily_digest", "Pacific/Honolulu", "2026-05-01 18:00:00+00:00"),  # 08:00 in Honolulu
])
async def test_a_review_due_today_reaches_its_reader_that_day_at_their_local_time(
        delivery: str, zone: str, sent_at: str, rig: NotifierRig, records: Records,
        smtp: SmtpServer, token: TokenFactory, clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery=delivery, timezone=zone)
    await records.agree(await records.open_case())
    await rig.catch_up()
    [due_today] = await rig.rows(kind="review_due_today")
    assert str(due_today["due_at"]) == "2026-05-01 09:00:00+00:00"
    clock.now = datetime(2026, 4, 30, tzinfo=UTC)
    arrived = None
    while arrived is None and clock.now < datetime(2026, 5, 3, tzinfo=UTC):
        await rig.dispatch()  # what the service's jobs do, hour by hour
        await rig.notifier.dispatcher.send_digests()
        if any("due today (Friday 1 May 2026)" in text_of(m) for m in smtp.received):
            arrived = clock.now
        clock.advance(hours=1)
    assert str(arrived) == sent_at
    [due_today] = await rig.rows(kind="review_due_today")
    assert due_today["status"] == "sent"


async def test_a_notice_scheduled_after_that_days_digest_went_waits_for_the_next_one(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    assert await rig.notifier.dispatcher.send_digests() == 1
    clock.now = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, due_notices(1, datetime(2026, 3, 3, 9, 0, tzinfo=UTC)),
                             "test", clock(),
                             cause_recorded_at=clock())
    assert await rig.notifier.dispatcher.send_digests() == 0  # and it returns
    [late] = await rig.rows(kind="review_due_today")
    assert (late["status"], late["digest_id"], late["claim_token"]) == ("scheduled", None, None)
    clock.now = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    await rig.dispatch()
    digests = {r["id"]: str(r["due_at"]) for r in await rig.rows(kind="daily_digest")}
    [late] = await rig.rows(kind="review_due_today")
    assert digests[late["digest_id"]] == "2026-03-04 08:00:00+00:00"


async def test_a_dated_notice_claimed_early_and_put_off_by_quiet_hours_waits_for_their_end(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), timezone="Europe/Berlin",
                        quiet_hours={"start": "08:30", "end": "10:00"})
    await records.agree(await records.open_case())
    await rig.catch_up()
    clock.now = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)  # 09:00 in Berlin: quiet
    # today's notice, claimed early, and 28 April's late reminder: both put off
    assert await rig.dispatch() == 2
    assert await rig.dispatch() == 0  # and left alone until then
    [due_today] = await rig.rows(kind="review_due_today")
    assert (due_today["status"], str(due_today["not_before"])) == (
        "scheduled", "2026-05-01 08:00:00+00:00")  # 10:00 in Berlin
    clock.now = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    assert await rig.dispatch() == 2
    assert "Plan review with Jo is due today" in [m["Subject"] for m in smtp.received]


# --------------------------------------------------------------------------------------------
# faults met while sending (audit of the notifier, eighth session)
# --------------------------------------------------------------------------------------------


async def test_an_address_the_mail_server_cannot_take_is_a_dead_letter_that_says_why(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The API accepts a non-ASCII address; a server without SMTPUTF8 cannot take it. It was
    an exception nobody caught: never recorded, claimed again at every lease until "too late",
    and every try left an SMTP connection open."""
    await rig.set_prefs("cm-1", token(), email="jörg@example.org")
    await small_win(records)
    await rig.catch_up()
    for _ in range(3):
        await rig.dispatch()
        clock.advance(minutes=3)  # past the lease: an unrecorded row would be claimed again
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("dead", 1)
    assert "not plain ASCII" in str(row["last_error"])
    assert "SMTPUTF8" in str(row["last_error"])
    assert await attempt_codes(rig, row["id"]) == [None]
    assert smtp.received == []
    assert smtp.open_connections() <= 1  # the pooled one, kept for the next message


async def test_a_non_ascii_address_is_sent_with_smtputf8_when_the_server_offers_it(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory) -> None:
    utf8 = await SmtpServer(smtputf8=True).start()
    try:
        rig = await make_rig(aiohttp_client, fresh_database_url, records.client, utf8, clock)
        await rig.set_prefs("cm-1", token(), email="jörg@example.org")
        await small_win(records)
        await rig.catch_up()
        await rig.dispatch()
    finally:
        await utf8.stop()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert utf8.recipients == [["jörg@example.org"]]
    # RFC 6532: the address itself in To, not an encoded word a mail client cannot reply to
    assert "\r\nTo: jörg@example.org\r\n".encode() in utf8.raw[0]


async def test_a_reader_zone_this_notifier_cannot_load_is_a_dead_letter_that_says_why(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    """A directory entry written before time zone names were checked names no zone: it will
    not mend itself, so the notice is a dead letter at once, saying what to set."""
    await rig.notifier.pool.execute(
        "INSERT INTO notifier.directory (agency, user_id, role, email, delivery, timezone,"
        " celebrations, updated_by, updated_at) VALUES ('agency-a', 'cm-1', 'case_manager',"
        " 'cm-1@example.org', 'immediate', 'Mars/Olympus', true, 'old version', $1)",
        clock())
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await only_row(rig)
    assert (row["status"], row["attempts"]) == ("dead", 0)
    assert "the time zone 'Mars/Olympus' in cm-1's preferences" in str(row["last_error"])
    assert smtp.received == []


async def test_a_fault_while_handling_a_row_is_a_failed_attempt_retried_until_dead(
        rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """Any exception while a row is handled is recorded like a lost connection (retried with
    backoff, then a dead letter), never left to come back silently at every lease. Here a
    digest holds a notice whose stored context has a shape rendering does not expect (a bug;
    a text that cannot be rendered, such as a date that is not one, is a dead letter of its
    own, and the digest goes without it: 0202); its notice shares the digest's fate."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    [notice] = due_notices(1)
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, [replace(notice, context={"overdue_steps": 5})], "test",
                             clock(), cause_recorded_at=clock())
    await rig.dispatch()  # into the digest
    [digest] = await rig.rows(kind="daily_digest")
    clock.now = digest["due_at"]  # type: ignore[assignment]
    await rig.notifier.dispatcher.send_digests()
    [digest] = await rig.rows(kind="daily_digest")
    assert (digest["status"], digest["attempts"]) == ("failed", 1)
    assert "delivery failed: TypeError" in str(digest["last_error"])
    assert digest["not_before"] > clock()
    assert await rig.notifier.dispatcher.send_digests() == 0  # backing off
    for _ in range(3):  # the test rig allows four attempts
        clock.now = digest["not_before"]  # type: ignore[assignment]
        await rig.notifier.dispatcher.send_digests()
        [digest] = await rig.rows(kind="daily_digest")
    assert (digest["status"], digest["attempts"]) == ("dead", 4)
    assert str(digest["last_error"]).startswith("gave up after 4 attempt(s)")
    [item] = [r for r in await rig.rows() if r["digest_id"] == digest["id"]]
    assert item["status"] == "dead"
    assert str(item["last_error"]).startswith("digest not delivered: gave up after 4")
    assert smtp.received == []


async def test_a_connection_lost_after_the_server_took_the_message_is_not_resent_at_once(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """An idle pooled connection the server closed is replaced before a message is given to
    it; but a connection lost during the transaction may have delivered the message, so that
    attempt is recorded and retried later (it used to be resent at once, unrecorded)."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_SMTP_CONNECTIONS=1)
    await rig.set_prefs("cm-1", token())
    await small_win(records, "Call the landlord")
    await rig.catch_up()
    await rig.dispatch()
    smtp.close_connections()  # the pooled connection, closed while idle
    await small_win(records, "Open a bank account")
    await rig.catch_up()
    await rig.dispatch()
    assert [r["status"] for r in await rig.rows(kind="small_win")] == ["sent", "sent"]
    smtp.replies = ["drop"]
    await small_win(records, "Visit the job centre")
    await rig.catch_up()
    await rig.dispatch()
    [dropped] = [r for r in await rig.rows(kind="small_win") if r["status"] != "sent"]
    assert (dropped["status"], dropped["attempts"]) == ("failed", 1)
    assert await attempt_codes(rig, dropped["id"]) == [None]
    assert dropped["not_before"] > clock()
    assert await rig.dispatch() == 0
    assert len(smtp.received) == 3  # the server kept it once; no second copy at once
    clock.now = dropped["not_before"]  # type: ignore[assignment]
    await rig.dispatch()
    assert [m["Message-ID"] for m in smtp.received[2:]] == [dropped["message_id"]] * 2


async def test_quiet_hours_ending_in_the_repeated_hour_of_a_fall_back_night(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """01:15 EST on 1 November 2026, the second 01:15 of that night in New York: quiet hours
    until 01:30 end at the second 01:30 (06:30 UTC). The first 01:30 had passed, the row was
    put off to it, claimed again at once, and dispatch never returned."""
    clock.now = datetime(2026, 11, 1, 6, 15, tzinfo=UTC)
    await rig.set_prefs("cm-1", token(), timezone="America/New_York",
                        quiet_hours={"start": "22:00", "end": "01:30"})
    await small_win(records)
    await rig.catch_up()
    async with asyncio.timeout(10):
        assert await rig.dispatch() == 1
    row = await only_row(rig)
    assert (row["status"], str(row["not_before"])) == ("scheduled", "2026-11-01 06:30:00+00:00")
    clock.now = row["not_before"]  # type: ignore[assignment]
    await rig.dispatch()
    assert len(smtp.received) == 1


async def test_a_row_is_never_put_off_to_a_moment_that_has_come(
        rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, due_notices(1), "test", clock(),
                             cause_recorded_at=clock())
    [claimed] = await claim_due(rig.notifier.pool, owner=rig.notifier.instance, now=clock(),
                                limit=10, lease=timedelta(minutes=2), digests=False)
    await rig.notifier.dispatcher.release(claimed, clock() - timedelta(hours=1))
    [row] = await rig.rows()
    assert row["not_before"] > clock()
    assert await rig.dispatch() == 0


async def test_one_readers_unknown_time_zone_does_not_stop_anyone_elses_mail(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Looking for dated notices to send early read each reader's zone in SQL (AT TIME ZONE),
    so one zone the database server did not know failed the claim for everyone."""
    await rig.set_prefs("cm-1", token())
    await rig.notifier.pool.execute(
        "INSERT INTO notifier.directory (agency, user_id, role, email, delivery, timezone,"
        " celebrations, updated_by, updated_at) VALUES ('agency-a', 'cm-2', 'case_manager',"
        " 'cm-2@example.org', 'immediate', 'Mars/Olympus', true, 'old version', $1)", clock())
    other = Records(records.client, token(sub="cm-2"))
    await other.agree(await other.open_case(case_manager="cm-2"))  # reminder 28 April 09:00
    clock.now = datetime(2026, 4, 27, 12, 0, tzinfo=UTC)
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    assert [m["To"] for m in smtp.received] == ["cm-1@example.org"]
    [reminder] = await rig.rows(kind="review_reminder")
    assert reminder["status"] == "scheduled"


async def test_an_smtp_outage_is_retried_until_the_horizon_with_the_default_settings(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory) -> None:
    """8 attempts from 30 s (the old defaults) gave up after about an hour of an outage while
    the horizon said 24 h; now the horizon decides."""
    defaults = {field.alias: field.default for name, field in NotifierSettings.model_fields.items()
                if name.startswith("retry_")}
    down = SmtpServer()  # never started: every connection is refused
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, down, clock,
                         **defaults)
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    start = clock()
    while (row := await only_row(rig))["status"] in ("scheduled", "failed"):
        clock.now = max(clock(), row["not_before"])  # type: ignore[type-var]
        await rig.dispatch()
    assert row["status"] == "dead"
    assert clock() - start > timedelta(hours=23)
    assert clock() - start <= timedelta(hours=24)


async def test_a_stopping_notifier_claims_no_new_batch(
        aiohttp_client: Callable[..., Awaitable[TestClient]], records: Records,
        smtp: SmtpServer, fresh_database_url: str, clock: FakeClock,
        token: TokenFactory) -> None:
    """Told to stop while it sends, the dispatcher finishes that batch and claims no other:
    a batch begun after the stop's grace would be sent with nothing left to record it."""
    smtp.delay = 0.3
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_DISPATCH_BATCH=1)
    await rig.set_prefs("cm-1", token())
    for step in ("Call the landlord", "Open a bank account"):
        await small_win(records, step)
    await rig.catch_up()
    dispatching = asyncio.create_task(rig.dispatch())
    await smtp.arrived.wait()
    rig.notifier.dispatcher.shutting_down()
    assert await dispatching == 1
    statuses = sorted(str(r["status"]) for r in await rig.rows(kind="small_win"))
    assert statuses == ["scheduled", "sent"]
    assert len(smtp.received) == 1


async def test_a_message_is_marked_automatic_and_well_formed_as_mail_clients_read_it(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """RFC 3834: an out-of-office reply to a notice would go back to the notifier's sender;
    and a sender named outside ASCII encodes only the name (the address once went into the
    encoded word, which no client could read as an address)."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_FROM='"Équipe Casetrail, Nord" <notices@casetrail.local>')
    await rig.set_prefs("cm-1", token())
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    [message] = smtp.received
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"
    modern = email.message_from_bytes(smtp.raw[0], policy=email.policy.default)
    assert modern["From"].addresses[0].display_name == "Équipe Casetrail, Nord"
    assert modern["From"].addresses[0].addr_spec == "notices@casetrail.local"
    assert [p.get_content_type() for p in modern.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in modern.iter_parts())
    assert modern["Date"].datetime == clock.now


@pytest.mark.parametrize("description", ["Call the landlord\nabout the rent",
                                         "Read https://example.org/" + "a" * 1500])
async def test_a_subject_from_free_text_is_one_line_within_the_length_mail_allows(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        description: str) -> None:
    """A step written over two lines cut the subject at the line break and began the body
    with the rest; a long word (an address) made a header line longer than the 998 bytes
    SMTP allows (RFC 5322 2.1.1)."""
    await rig.set_prefs("cm-1", token())
    await small_win(records, description)
    await rig.catch_up()
    await rig.dispatch()
    [message] = smtp.received
    modern = email.message_from_bytes(smtp.raw[0], policy=email.policy.default)
    assert modern["Subject"] == "A small win for Jo: " + " ".join(description.split())
    assert text_of(message).startswith("Hello,")
    assert max(len(line) for line in smtp.raw[0].splitlines()) <= 998
