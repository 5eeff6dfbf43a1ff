"""Time as case managers and participants live it: a reader's day, their clock, their
preferences changing while notices wait (audit of the notifier's handling of time).

Each test drives a real notifier against real PostgreSQL and a real SMTP server with an
injected clock, the way the service's jobs do: dispatch, then the digest run, step by step."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.notifier.store import directory
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import claim_due
from tests.conftest import FakeClock, TokenFactory, bearer, wait_until
from tests.notifier_helpers import (
    NotifierRig,
    Records,
    SmtpServer,
    make_rig,
    notifier_settings,
    text_of,
)
from tests.pg_waits import until_waiters_queued

DUE_TODAY = "due today (Friday 1 May 2026)"  # the review agreed on 2 March, due 60 days later


async def first_arrival(rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, words: str,
                        until: datetime, step: timedelta = timedelta(hours=1)) -> datetime | None:
    """Run the service's jobs (dispatch, then digests) from now until ``until``, step by step;
    the moment the first message holding ``words`` went out, if one did."""
    while clock.now < until:
        await rig.dispatch()
        await rig.notifier.dispatcher.send_digests()
        if any(words in text_of(m) for m in smtp.received):
            return clock.now
        clock.advance(seconds=step.total_seconds())
    return None


async def review_due_on_1_may(rig: NotifierRig, records: Records, smtp: SmtpServer,
                              clock: FakeClock) -> None:
    """A review agreed now (2 March) and due on Friday 1 May; its reminder of Tuesday 28 April
    has gone out (and is forgotten here)."""
    await records.agree(await records.open_case())
    await rig.catch_up()
    [due_today] = await rig.rows(kind="review_due_today")
    assert str(due_today["due_at"]) == "2026-05-01 09:00:00+00:00"
    clock.now = datetime(2026, 4, 29, tzinfo=UTC)  # its 09:00 has passed in every zone here
    await rig.dispatch()
    assert [r["status"] for r in await rig.rows(kind="review_reminder")] == ["sent"]
    smtp.received.clear()


# --------------------------------------------------------------------------------------------
# preferences changed while a notice waits
# --------------------------------------------------------------------------------------------


async def test_a_reader_who_moves_to_digests_gets_a_waiting_notice_in_that_days_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A case manager in Honolulu: "due today" waits for 09:00 there. Before it comes they
    choose a daily digest; that morning's digest (08:00 in Honolulu) carries it. It used to
    keep waiting for 09:00, then go to the next day's digest: "was due yesterday"."""
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Honolulu")
    await review_due_on_1_may(rig, records, smtp, clock)
    clock.now = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)  # 23:00 on Thursday in Honolulu
    await rig.dispatch()
    clock.now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)  # 02:00 on Friday in Honolulu
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Honolulu", delivery="daily_digest")
    arrived = await first_arrival(rig, smtp, clock, "Plan review with Jo is due today",
                                  datetime(2026, 5, 3, tzinfo=UTC))
    assert arrived == datetime(2026, 5, 1, 18, 0, tzinfo=UTC)  # 08:00 on Friday in Honolulu
    [message] = smtp.received
    assert message["Subject"] == "Your Casetrail summary: 1 update"
    [due_today] = await rig.rows(kind="review_due_today")
    assert due_today["status"] == "sent"


async def test_a_reader_who_moves_east_gets_a_waiting_notice_on_its_day_in_the_new_zone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Put off to 09:00 in Honolulu, then the reader sets Berlin (quiet from 20:00 to 07:00):
    09:00 has passed in Berlin, so it goes now, on its day. It used to wait for 09:00 in
    Honolulu (21:00 in Berlin, quiet), and went on Saturday morning."""
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Honolulu")
    await review_due_on_1_may(rig, records, smtp, clock)
    clock.now = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    await rig.dispatch()
    clock.now = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)  # 12:00 in Berlin
    await rig.set_prefs("cm-1", token(), timezone="Europe/Berlin",
                        quiet_hours={"start": "20:00", "end": "07:00"})
    arrived = await first_arrival(rig, smtp, clock, DUE_TODAY,
                                  datetime(2026, 5, 3, tzinfo=UTC))
    assert arrived == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert "Plan review with Jo is due today" in smtp.subjects()


async def test_a_reader_who_leaves_digests_gets_what_waits_in_the_next_one_now(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A small win waits in tomorrow morning's digest; the reader chooses immediate mail and
    hears of it now, once. It used to wait for the digest, which then still went."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await rig.dispatch()
    [win] = await rig.rows(kind="small_win")
    assert win["digest_id"] is not None
    clock.advance(hours=1)
    await rig.set_prefs("cm-1", token())
    arrived = await first_arrival(rig, smtp, clock, "Call the landlord",
                                  datetime(2026, 3, 4, tzinfo=UTC))
    assert arrived == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    clock.now = datetime(2026, 3, 4, tzinfo=UTC)
    await rig.dispatch()
    await rig.notifier.dispatcher.send_digests()
    assert len(smtp.received) == 1
    [win] = await rig.rows(kind="small_win")
    assert (win["status"], win["digest_id"]) == ("sent", None)
    # the digest it left, empty, was removed (decide_afresh), not left to be given up
    assert await rig.rows(kind="daily_digest") == []


async def test_a_reader_who_ends_their_quiet_hours_gets_what_waited_for_them_now(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Quiet from 22:00 to 07:00, a small win at 23:00 waits; the reader clears their quiet
    hours at 23:30 and hears of it then. It used to wait for 07:00 all the same."""
    clock.now = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "22:00", "end": "07:00"})
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await rig.dispatch()
    clock.advance(minutes=30)
    await rig.set_prefs("cm-1", token(), quiet_hours=None)
    arrived = await first_arrival(rig, smtp, clock, "Call the landlord",
                                  datetime(2026, 3, 3, 12, 0, tzinfo=UTC))
    assert arrived == datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    assert len(smtp.received) == 1


async def test_a_participant_who_moves_to_a_zone_where_it_is_day_hears_of_their_milestone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Jo's milestone waits out their quiet hours (21:00 to 08:00 in Honolulu); Jo moves to
    London, where it is mid-morning, and hears of it at once, not at 18:00 London time."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    jo = token(role="participant", sub="jo", cases=[case])
    quiet = {"start": "21:00", "end": "08:00"}
    await rig.set_prefs("jo", jo, email=None, timezone="Pacific/Honolulu", quiet_hours=quiet)
    clock.now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # 00:00 in Honolulu, 10:00 in London
    await records.achieve(case, await records.goal(case, "Find steady work"))
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.to("jo@example.org") == []
    await rig.set_prefs("jo", jo, email=None, timezone="Europe/London", quiet_hours=quiet)
    await rig.dispatch()
    assert len(smtp.to("jo@example.org")) == 1


async def test_a_reader_who_turns_celebrations_off_is_not_sent_the_one_in_their_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await rig.dispatch()
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", celebrations=False)
    assert await first_arrival(rig, smtp, clock, "Call the landlord",
                               datetime(2026, 3, 4, tzinfo=UTC)) is None
    assert smtp.received == []
    [win] = await rig.rows(kind="small_win")
    assert (win["status"], win["last_error"]) == (
        "cancelled", "celebrations are turned off in cm-1's preferences")


async def test_a_digest_already_being_sent_keeps_what_it_holds_and_sends_it_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Another instance holds the digest (it is being sent) when the reader leaves digests:
    its items stay in it and go once, with it."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    [held] = await claim_due(rig.notifier.pool, owner="another-instance", now=clock(),
                             limit=10, lease=timedelta(minutes=2), digests=True)
    await rig.set_prefs("cm-1", token())
    assert await rig.dispatch() == 0
    [win] = await rig.rows(kind="small_win")
    assert win["digest_id"] == held.id
    clock.advance(minutes=3)  # the other instance's lease ran out: this one sends the digest
    assert await rig.notifier.dispatcher.send_digests() == 1
    await rig.dispatch()
    [message] = smtp.received
    assert "Call the landlord" in text_of(message)
    [win] = await rig.rows(kind="small_win")
    assert win["status"] == "sent"


async def test_changing_only_an_address_leaves_waiting_notices_where_they_are(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Honolulu")
    await review_due_on_1_may(rig, records, smtp, clock)
    clock.now = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    await rig.dispatch()
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Honolulu",
                        email="cm-1@elsewhere.example.org")
    [due_today] = await rig.rows(kind="review_due_today")
    assert str(due_today["not_before"]) == "2026-05-01 19:00:00+00:00"  # 09:00 in Honolulu
    assert await rig.dispatch() == 0



async def test_a_change_is_measured_against_the_entry_it_replaces_not_an_older_one(
        aiohttp_client: Any, fresh_database_url: str, records: Records, smtp: SmtpServer,
        token: TokenFactory, clock: FakeClock) -> None:
    """Two notifier instances. One takes a PUT giving cm-1 a new address and no quiet hours
    (``null``, as stored) and reads the stored entry; the other then sets quiet hours, and its
    dispatcher puts a small win off to their end. The first PUT, stored last, clears the quiet
    hours again, and must hand the small win back: it compared with the entry it had read before
    (no quiet hours either), saw no change, and the win waited for quiet hours the reader no
    longer had. The first instance's pool has one connection, which orders the steps."""
    first = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                           NOTIFIER_DB_POOL_MAX=1)
    second = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await first.set_prefs("cm-1", token())
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await first.catch_up()
    pool = first.notifier.pool
    only_connection = await pool.acquire()
    prefs = {"email": "cm-1@elsewhere.example.org", "delivery": "immediate",
             "timezone": "UTC", "celebrations": True, "quiet_hours": None}
    put = asyncio.create_task(first.client.put("/v1/preferences/cm-1", json=prefs,
                                               headers=bearer(token())))
    await until_waiters_queued(pool, 1)  # the PUT's read of the stored entry
    between = asyncio.ensure_future(pool.acquire())
    await until_waiters_queued(pool, 2)
    await pool.release(only_connection)
    connection = await between  # the PUT has read the entry, and waits to store its own
    await second.set_prefs("cm-1", token(), quiet_hours={"start": "08:00", "end": "12:00"})
    assert await second.dispatch() == 1  # 09:00: quiet, put off to 12:00
    await pool.release(connection)
    response = await put
    assert response.status == 200, await response.text()
    assert await first.dispatch() == 1
    assert len(smtp.received) == 1, "the small win still waits for the quiet hours' end"


async def test_a_first_entry_stored_while_another_request_stores_one_replaces_it(
        rig: NotifierRig, token: TokenFactory, fresh_pool: Any) -> None:
    """Two first entries for one reader at once: the PUT finds no entry to lock, waits for
    the other one to be stored, and then replaces it as any change does."""
    async with fresh_pool.acquire() as other, other.transaction():
        await directory.upsert(other, Preferences(
            "agency-a", "cm-1", "case_manager", "cm-1@example.org", "daily_digest", "UTC",
            None, None, True), "sup-1", rig.clock.now)
        put = asyncio.create_task(rig.client.put(
            "/v1/preferences/cm-1", headers=bearer(token()),
            json={"email": "cm-1@elsewhere.example.org", "delivery": "immediate",
                  "timezone": "UTC", "celebrations": True}))
        await wait_until(fresh_pool, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE"
                         " datname = current_database() AND wait_event_type = 'Lock')")
    response = await put
    assert response.status == 200, await response.text()
    stored = await directory.entries(fresh_pool, "agency-a", "cm-1")
    assert (stored["staff"].email, stored["staff"].delivery) == (
        "cm-1@elsewhere.example.org", "immediate")

# --------------------------------------------------------------------------------------------
# overdue notices and nudges: after the day, as the reader counts days
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["NOTIFIER_OVERDUE_GRACE_DAYS", "NOTIFIER_NUDGE_DAYS_AFTER"])
def test_overdue_and_nudges_come_a_day_after_the_date_at_the_earliest(setting: str) -> None:
    """With 0, a case manager heard at 09:00 on the review's own day, in the same minute as
    "due today", that it "has not been recorded yet", and a step "had" its date that morning.
    The service refuses to start so configured, naming the setting."""
    with pytest.raises(ValidationError, match=setting):
        notifier_settings("postgresql://x@127.0.0.1/x", "http://127.0.0.1:1", 25,
                          **{setting: 0})


async def test_a_review_due_in_honolulu_is_overdue_only_after_its_day_there(
        aiohttp_client: Any, fresh_database_url: str, records: Records, smtp: SmtpServer,
        token: TokenFactory, clock: FakeClock) -> None:
    """The shortest grace there is: the overdue notice comes at 09:00 on the next day in
    Honolulu, never while the review's own day runs there (nor in its evening)."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_OVERDUE_GRACE_DAYS=1)
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Honolulu")
    await review_due_on_1_may(rig, records, smtp, clock)
    arrived = await first_arrival(rig, smtp, clock, "has not been recorded yet",
                                  datetime(2026, 5, 4, tzinfo=UTC), timedelta(minutes=30))
    assert arrived == datetime(2026, 5, 2, 19, 0, tzinfo=UTC)  # Saturday 09:00 in Honolulu


async def test_a_notice_put_off_to_its_own_due_time_is_left_alone_until_then(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """In Berlin, quiet until 11:00, which is the schedule's 09:00 UTC: "due today", claimed
    early at 09:00 Berlin time and put off to 11:00, was claimed and put off again by every
    dispatch (each second) for two hours; it is sent once, at 11:00."""
    await rig.set_prefs("cm-1", token(), timezone="Europe/Berlin",
                        quiet_hours={"start": "08:00", "end": "11:00"})
    await review_due_on_1_may(rig, records, smtp, clock)
    clock.now = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)  # 09:00 in Berlin: quiet
    assert await rig.dispatch() == 1
    clock.advance(seconds=1)
    assert await rig.dispatch() == 0
    arrived = await first_arrival(rig, smtp, clock, DUE_TODAY,
                                  datetime(2026, 5, 2, tzinfo=UTC), timedelta(minutes=15))
    assert arrived == datetime(2026, 5, 1, 9, 0, 1, tzinfo=UTC)  # 11:00 in Berlin
    assert len(smtp.received) == 1
