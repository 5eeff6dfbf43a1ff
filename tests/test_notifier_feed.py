"""Following the records feed: the schedule it builds, idempotent replays, crash recovery and
two instances reading at once. Real records service over HTTP, real PostgreSQL."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.notifier.feed import FeedError
from services.notifier.schedule import FEED_CHECKPOINT, apply_page
from services.notifier.service import rule_settings
from services.notifier.store.cases import load_checkpoint, reset_checkpoint
from services.records.store.events import EventStore, NewEvent
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, free_port, make_rig


def pending(rows: list[dict[str, object]]) -> dict[str, str]:
    return {str(r["key"]).split(":")[0] + ":" + str(r["recipient"]): str(r["status"])
            for r in rows}


async def test_agreeing_a_plan_schedules_reminders_from_the_feed(rig: NotifierRig,
                                                                 records: Records) -> None:
    case = await records.open_case()
    review_id = await records.agree(case)
    assert await rig.catch_up() >= 3
    rows = await rig.rows(case_id=UUID(case))
    assert pending(rows) == {"review_reminder:cm-1": "scheduled",
                             "review_due_today:cm-1": "scheduled",
                             "review_overdue:cm-1": "scheduled",
                             "review_overdue:supervisors": "scheduled"}
    assert all(review_id in str(r["key"]) for r in rows)
    assert str(rows[0]["due_at"]).startswith("2026-04-28 09:00")


async def test_review_held_cancels_and_the_next_review_starts_new_reminders(
        rig: NotifierRig, records: Records, clock: FakeClock) -> None:
    case = await records.open_case()
    first = await records.agree(case)
    await rig.catch_up()
    clock.advance(days=50)
    second = await records.hold_review(case, first)
    await rig.catch_up()
    rows = await rig.rows()
    old = [r for r in rows if first in r["key"]]
    new = [r for r in rows if second in r["key"]]
    assert {r["status"] for r in old} == {"cancelled"}
    assert all("ReviewHeld" in r["last_error"] for r in old)
    assert len(new) == 4
    assert {r["status"] for r in new} == {"scheduled"}


async def test_rescheduling_a_review_over_http_moves_its_reminder_end_to_end(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: Callable[..., str]) -> None:
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    review = await records.agree(case)  # due 2026-05-01: reminder on 2026-04-28
    await rig.catch_up()
    [old] = await rig.rows(kind="review_reminder")
    await records.call("POST", f"/v1/cases/{case}/reviews/{review}/reschedule",
                       {"due_date": "2026-05-20", "reason": "Jo asked for a later date"})
    await rig.catch_up()
    reminders = {r["key"]: r for r in await rig.rows(kind="review_reminder")}
    assert reminders[old["key"]]["status"] == "cancelled"
    [new] = [r for k, r in reminders.items() if k != old["key"]]
    assert (new["status"], str(new["due_at"])) == ("scheduled", "2026-05-17 09:00:00+00:00")
    clock.now = old["due_at"]  # type: ignore[assignment]
    await rig.dispatch()
    assert smtp.received == []
    clock.now = new["due_at"]  # type: ignore[assignment]
    await rig.dispatch()
    [message] = smtp.received
    assert message["Message-ID"] == new["message_id"]
    assert "20 May 2026" in message.get_payload()[0].get_payload(decode=True).decode()  # type: ignore[index,union-attr]


async def test_an_unschedulable_date_in_the_feed_leaves_out_its_notices_not_the_feed(
        rig: NotifierRig, records: Records, fresh_database_url: str) -> None:
    """The records API refuses such dates, but the feed may carry one from elsewhere (an older
    service, an import): the notices it would need are left out and the feed goes on."""
    case = await records.open_case()
    review = await records.agree(case)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    try:
        store = EventStore(pool)
        head = await store.head(UUID(case))
        assert head is not None
        await store.append(UUID(case), [NewEvent(uuid4(), "ReviewScheduled", 1, {
            "review_id": review, "due_date": "9999-12-31", "basis": "rescheduled",
            "risk_level": "moderate", "reason": "typed in another system"})],
            expected_version=head.version, agency=head.agency, metadata={})
    finally:
        await pool.close()
    second = await records.open_case()
    await records.agree(second)
    assert await rig.catch_up() >= 5
    assert {r["status"] for r in await rig.rows(case_id=UUID(case))} == {"cancelled"}
    assert len(await rig.rows(case_id=UUID(second))) == 4  # the feed went on past it


async def test_transfer_moves_pending_notices_and_closing_cancels_them(
        rig: NotifierRig, records: Records, token: Callable[..., str]) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    step = await records.step(case, goal, due_date="2026-03-20")
    await records.agree(case)
    await records.complete(case, step)  # a celebration still pending at transfer time
    await records.transfer(case, "cm-2")
    await rig.catch_up()
    rows = await rig.rows()
    by_role = {(r["recipient_role"], r["recipient"]) for r in rows if r["status"] == "scheduled"}
    # and the handover, addressed to cm-2 by name (a later transfer withdraws it)
    assert by_role == {("case_manager", "cm-2"), ("supervisors", "supervisors"),
                       ("user", "cm-2")}
    assert any(r["kind"] == "small_win" and r["recipient"] == "cm-2" for r in rows)
    await records.call("POST", f"/v1/cases/{case}/close", {"reason": "plan completed"},
                       token=token(sub="cm-2"))
    await rig.catch_up()
    assert {r["status"] for r in await rig.rows()} == {"cancelled"}


async def test_reopening_revives_the_open_steps_notices_but_not_the_cancelled_review(
        rig: NotifierRig, records: Records) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, due_date="2026-03-20")
    await records.agree(case)
    await rig.catch_up()
    await records.close(case)
    await records.reopen(case)
    await rig.catch_up()
    status = {(row["kind"], row["status"]) for row in await rig.rows(case_id=UUID(case))}
    assert status == {("step_nudge", "scheduled"), ("review_reminder", "cancelled"),
                      ("review_due_today", "cancelled"), ("review_overdue", "cancelled")}


async def test_a_revised_step_date_reschedules_its_nudge(rig: NotifierRig,
                                                         records: Records) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    step = await records.step(case, goal, due_date="2026-03-20")
    await rig.catch_up()
    await records.revise_step(case, step, "2026-04-10")
    await rig.catch_up()
    nudges = {r["key"].split(":")[-1]: r["status"] for r in await rig.rows(kind="step_nudge")}
    assert nudges == {"2026-03-20": "cancelled", "2026-04-10": "scheduled"}


async def _story(records: Records, clock: FakeClock) -> None:
    """A case history touching every rule."""
    case = await records.open_case()
    goal = await records.goal(case, target_date="2026-08-01")
    steps = [await records.step(case, goal, f"Step {n}", due_date="2026-03-20")
             for n in range(3)]
    first = await records.agree(case)
    await records.complete(case, steps[0])
    await records.revise_step(case, steps[1], "2026-04-01")
    clock.advance(days=30)
    await records.hold_review(case, first)
    await records.transfer(case, "cm-1b")
    other = await records.open_case(case_manager="cm-1")
    await records.agree(other)
    await records.close(other)


async def test_replaying_the_feed_from_zero_rebuilds_exactly_the_same_schedule(
        rig: NotifierRig, records: Records, clock: FakeClock) -> None:
    await _story(records, clock)
    await rig.catch_up()
    built = await rig.snapshot()
    assert len(built) > 10
    pool = rig.notifier.pool
    # the same feed again from the start, over the existing schema: nothing changes
    await reset_checkpoint(pool, FEED_CHECKPOINT, clock())
    await rig.catch_up()
    assert await rig.snapshot() == built
    # and into an empty notifier schema: the same schedule, row for row
    await pool.execute("TRUNCATE notifier.attempts, notifier.notifications, notifier.reviews,"
                       " notifier.steps, notifier.goals, notifier.cases")
    await reset_checkpoint(pool, FEED_CHECKPOINT, clock())
    clock.advance(days=3)  # replay time must not matter
    await rig.catch_up()
    assert await rig.snapshot() == built


async def test_a_crash_before_the_checkpoint_moved_replays_without_a_second_email(
        rig: NotifierRig, records: Records, smtp: SmtpServer,
        token: Callable[..., str]) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    step = await records.step(case, goal)
    await records.complete(case, step)
    await rig.set_prefs("cm-1", token())
    await rig.catch_up()
    await rig.dispatch()
    assert len(smtp.received) == 1
    # the checkpoint is lost (as if the transaction that moved it never committed)
    await reset_checkpoint(rig.notifier.pool, FEED_CHECKPOINT, rig.clock())
    await rig.catch_up()
    await rig.dispatch()
    assert len(smtp.received) == 1
    assert len(await rig.rows(kind="small_win")) == 1


async def test_a_wiped_schema_rebuilt_from_the_feed_sends_nothing_already_due_again(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: Callable[..., str]) -> None:
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await records.agree(case)
    await rig.set_prefs("cm-1", token())
    await rig.catch_up()
    await rig.dispatch()
    assert len(smtp.received) == 1  # the small win; the review reminders are still to come
    # a notice keeps its id and Message-ID however often the feed is replayed
    schedule = {(r["key"], r["due_at"], r["id"], r["message_id"]) for r in await rig.rows()}
    # the notifier's schema is lost and rebuilt an hour later by replaying the feed
    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.advance(hours=1)
    rebuilt = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await rebuilt.set_prefs("cm-1", token())
    await rebuilt.catch_up()
    assert {(r["key"], r["due_at"], r["id"], r["message_id"])
            for r in await rebuilt.rows()} == schedule
    await rebuilt.dispatch()
    assert len(smtp.received) == 1
    [win] = await rebuilt.rows(kind="small_win")
    assert win["status"] == "cancelled"
    assert "fell due before this notifier's record" in str(win["last_error"])
    # what falls due after the rebuild is sent as usual, once
    [reminder] = await rebuilt.rows(kind="review_reminder")
    clock.now = reminder["due_at"]  # type: ignore[assignment]
    await rebuilt.dispatch()
    assert [m["Message-ID"] for m in smtp.received[1:]] == [reminder["message_id"]]


async def test_a_notice_first_called_for_after_history_began_is_sent_though_its_day_is_past(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: Callable[..., str]) -> None:
    """A step written today with yesterday's date (as `casetrail dev` loads its demo just
    after the notifier starts): no earlier notifier can have nudged about it, so it is sent."""
    clock.advance(minutes=5)
    case = await records.open_case()
    goal = await records.goal(case)
    two_days_ago = (clock.now.date() - timedelta(days=2)).isoformat()
    await records.step(case, goal, due_date=two_days_ago)
    await rig.set_prefs("cm-1", token())
    await rig.catch_up()
    [nudge] = await rig.rows(kind="step_nudge")
    assert nudge["due_at"] < clock.now - timedelta(minutes=5)  # due before history began
    await rig.dispatch()
    assert [m["Message-ID"] for m in smtp.received] == [nudge["message_id"]]
    [sent] = await rig.rows(kind="step_nudge")
    assert sent["status"] == "sent"


async def test_a_page_whose_checkpoint_moved_meanwhile_writes_nothing(
        rig: NotifierRig, records: Records) -> None:
    case = await records.open_case()
    await records.agree(case)
    page = await rig.notifier.subscriber.fetch("", 0)
    pool = rig.notifier.pool
    await pool.execute("UPDATE notifier.checkpoint SET position = 'elsewhere'")
    result = await apply_page(pool, page.items, after="", checkpoint=page.checkpoint,
                              rules=rule_settings(rig.notifier.settings), domain="x",
                              now=rig.clock())
    assert result is None
    assert await pool.fetchval("SELECT count(*) FROM notifier.notifications") == 0
    assert await load_checkpoint(pool, FEED_CHECKPOINT) == "elsewhere"


async def test_two_instances_following_the_feed_build_one_schedule(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    other = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                           NOTIFIER_FEED_PAGE_SIZE=3)
    for _ in range(4):
        case = await records.open_case()
        goal = await records.goal(case)
        await records.complete(case, await records.step(case, goal))
        await records.agree(case)
    await asyncio.gather(rig.catch_up(), other.catch_up())
    snapshot = await rig.snapshot()
    assert len([s for s in snapshot if s[1] == "small_win"]) == 4
    assert len(snapshot) == 4 * 5
    assert await rig.catch_up() == 0
    assert await other.catch_up() == 0


def test_the_notifier_imports_nothing_from_records_and_reads_no_records_table() -> None:
    root = Path(__file__).resolve().parent.parent / "services" / "notifier"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("services.records"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("services.records") for a in node.names), path
        assert "records." not in path.read_text().replace("records.client", ""), path


async def test_an_unreachable_or_refusing_feed_is_a_feed_error_not_a_crash(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    refused = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                             RECORDS_TOKEN="not-a-token")
    with pytest.raises(FeedError, match="401"):
        await refused.notifier.subscriber.step(0)
    nowhere = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                             RECORDS_URL=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FeedError, match="unreachable"):
        await nowhere.notifier.subscriber.step(0)
    ready = await nowhere.client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["feed"].startswith("last read failed")


async def _feed_lag(rig: NotifierRig) -> float:
    metrics = await (await rig.client.get("/metrics")).text()
    [line] = [m for m in metrics.splitlines()
              if m.startswith("casetrail_notifier_feed_lag_seconds ")]
    return float(line.split()[1])


async def test_feed_lag_counts_what_an_open_transaction_holds_back(
        rig: NotifierRig, records: Records, clock: FakeClock) -> None:
    """Held back behind another transaction, the feed answers no events; the lag must not read
    as caught up meanwhile."""
    await records.open_case()
    await rig.catch_up()
    assert await _feed_lag(rig) == 0
    async with rig.notifier.pool.acquire() as other, other.transaction():
        await other.execute("SELECT pg_current_xact_id()")  # an open write transaction
        await records.open_case()  # committed, behind the horizon
        clock.advance(seconds=30)
        assert await rig.notifier.subscriber.step(0) == 0
        assert await _feed_lag(rig) >= 30
    await rig.catch_up()
    assert await rig.notifier.subscriber.step(0) == 0
    assert await _feed_lag(rig) == 0


async def test_feed_lag_grows_while_the_feed_cannot_be_read(
        rig: NotifierRig, records: Records, clock: FakeClock) -> None:
    """The lag gauge said 0 (caught up) for as long as the records service was down."""
    await rig.catch_up()
    await records.open_case()  # an event the notifier has not read
    await records.client.server.close()
    clock.advance(hours=2)
    with pytest.raises(FeedError):
        await rig.notifier.subscriber.step(0)
    assert await _feed_lag(rig) >= 2 * 3600
    clock.advance(minutes=30)
    with pytest.raises(FeedError):
        await rig.notifier.subscriber.step(0)
    assert await _feed_lag(rig) >= 2.5 * 3600


async def test_the_feed_token_is_read_from_a_file_again_when_it_changes(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory,
        tmp_path: Path) -> None:
    """Tokens expire; RECORDS_TOKEN was read once at start, so a running notifier lost the feed
    when its token did. RECORDS_TOKEN_FILE (a mounted Secret) is read again when it changes,
    and wins over the token the notifier could sign itself."""
    token_file = tmp_path / "records-token"
    service = {"role": "service", "sub": "notifier", "agency": "casetrail"}
    token_file.write_text(token(**service) + "\n")
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         RECORDS_TOKEN_FILE=str(token_file))
    await records.open_case()
    assert await rig.catch_up() == 1
    token_file.write_text(token(**service, ttl_seconds=-3600))  # the Secret now holds an old one
    with pytest.raises(FeedError, match="401"):
        await rig.notifier.subscriber.step(0)
    token_file.write_text(token(**service))  # renewed, no restart
    await records.open_case()
    assert await rig.catch_up() == 1
    token_file.write_text("")
    with pytest.raises(FeedError, match="empty"):
        await rig.notifier.subscriber.step(0)
