"""Audit (s19) of the notifier's timing as case managers and participants in different time
zones live it: digests, quiet hours and dated notices across daylight-saving changes, zones
with odd offsets, and a reader whose zone changes while a notice waits.

A person expects: nothing lost, nothing sent twice, nothing sent inside their quiet hours, a
digest once per local day at the digest hour, and a notice about a date not before that date
has passed where they are. Each test drives a real notifier (real PostgreSQL, real SMTP) with
the injected clock, running the service's two jobs (dispatch, then digests) step by step."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.notifier.delivery import quiet_until
from services.notifier.store.directory import Preferences
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of


def prefs(zone: str, start: time | None = None, end: time | None = None) -> Preferences:
    return Preferences("agency-a", "cm-1", "case_manager", "cm-1@example.org", "immediate",
                       zone, start, end, True)


async def run_jobs(rig: NotifierRig, smtp: SmtpServer, clock: FakeClock, until: datetime,
                   step: timedelta = timedelta(minutes=15),
                   each: Any = None) -> list[tuple[datetime, str]]:
    """Run dispatch and the digest job from now until ``until``, every ``step``; each message
    as it went: (the moment, its plain text). ``each(now)`` runs first at every step."""
    seen = len(smtp.received)
    went: list[tuple[datetime, str]] = []
    while clock.now < until:
        if each is not None:
            await each(clock.now)
        await rig.dispatch()
        await rig.notifier.dispatcher.send_digests()
        went += [(clock.now, text_of(m)) for m in smtp.received[seen:]]
        seen = len(smtp.received)
        clock.advance(seconds=step.total_seconds())
    return went


def local(moment: datetime, zone: str) -> datetime:
    return moment.astimezone(ZoneInfo(zone))


# --------------------------------------------------------------------------------------------
# a reader whose zone changes while a notice waits in a digest
# --------------------------------------------------------------------------------------------


async def test_a_digest_reader_who_corrects_their_zone_gets_it_at_08_00_in_the_new_zone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A case manager in New York left their zone at London (say, copied from a colleague).
    At 20:00 London time a small win joins tomorrow's digest (08:00 in London). At 16:00 in
    New York they set New York: the small win is decided afresh and goes to "the next 08:00
    in New York", 3 March. That digest is keyed by the day name only, so it is the London
    digest of 3 March, still due at 08:00 UTC: it reaches them at 03:00 in New York."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="Europe/London")
    clock.now = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 20:00 in London
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)  # 16:00 in New York
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="America/New_York")
    went = await run_jobs(rig, smtp, clock, datetime(2026, 3, 4, tzinfo=UTC))
    arrived = [local(at, "America/New_York").isoformat() for at, text in went
               if "Call the landlord" in text]
    assert arrived == ["2026-03-03T08:00:00-05:00"], "the digest came at 03:00 in New York"
    assert len(went) == 1


async def test_a_digest_emptied_after_one_of_its_cases_closed_still_frees_its_day(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """As above, with a second case whose small win sat in the same London digest and was
    cancelled there when the case closed. The cancelled notice still pointed at the digest,
    so the digest, emptied by the change of zone, could not be removed: it kept the day, and
    the small win still reached the reader at 03:00 in New York (a known limit of the
    nineteenth session)."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="Europe/London")
    clock.now = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 20:00 in London
    staying, closing = await records.open_case(), await records.open_case()
    for case, step in ((staying, "Call the landlord"), (closing, "Visit the library")):
        await records.complete(case, await records.step(case, await records.goal(case), step))
    await rig.catch_up()
    await rig.dispatch()
    [digest] = await rig.rows(kind="daily_digest")
    await records.close(closing)
    await rig.catch_up()
    [cancelled] = await rig.rows(kind="small_win", status="cancelled")
    assert cancelled["digest_id"] == digest["id"]  # the shape this test is about
    clock.now = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)  # 16:00 in New York
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="America/New_York")
    went = await run_jobs(rig, smtp, clock, datetime(2026, 3, 4, tzinfo=UTC))
    arrived = [local(at, "America/New_York").isoformat() for at, text in went
               if "Call the landlord" in text]
    assert arrived == ["2026-03-03T08:00:00-05:00"], "the digest came at 03:00 in New York"
    assert not [text for _, text in went if "Visit the library" in text]


async def test_a_review_due_today_is_in_that_mornings_digest_after_a_move_west(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A case manager reading digests in Tokyo, with a plan review due on Friday 1 May. On
    Thursday evening in Tokyo a small win joins Friday's Tokyo digest; then they move to Los
    Angeles (06:00 on Thursday there). The small win goes to Thursday's digest in Los Angeles;
    the emptied Tokyo digest "of 1 May" is given up. On Friday the review's "due today" looks
    for the Los Angeles digest of 1 May, finds that given-up Tokyo row under the same key, and
    goes on to Saturday's: "was due yesterday", never on its day."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="Asia/Tokyo")
    case = await records.open_case()
    await records.agree(case)  # due Friday 1 May
    clock.now = datetime(2026, 4, 30, 12, 0, tzinfo=UTC)  # 21:00 on Thursday in Tokyo
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await run_jobs(rig, smtp, clock, datetime(2026, 4, 30, 13, 0, tzinfo=UTC))
    zone = "America/Los_Angeles"
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone=zone)
    went = await run_jobs(rig, smtp, clock, datetime(2026, 5, 3, tzinfo=UTC))
    due_today = [local(at, zone).isoformat() for at, text in went
                 if "Plan review with Jo" in text and "(Friday 1 May 2026)" in text]
    assert due_today == ["2026-05-01T08:00:00-07:00"], (
        "the review's notice reached the reader only after its day, in Saturday's digest")


# --------------------------------------------------------------------------------------------
# a dated notice for a digest reader far behind the schedule's zone
# --------------------------------------------------------------------------------------------


async def test_a_nudge_does_not_reach_a_digest_reader_on_the_steps_own_day(
        aiohttp_client: Any, fresh_database_url: str, records: Records, smtp: SmtpServer,
        token: TokenFactory, clock: FakeClock) -> None:
    """An agency in Sydney (NOTIFIER_TIMEZONE) with an end-of-day digest at 17:00; one case
    manager works from Los Angeles. A step hoped for on Tuesday 10 March: the nudge is due at
    09:00 on Wednesday in Sydney, 15:00 on Tuesday in Los Angeles. A dated notice's digest is
    that of its day where the reader is (0201), and a step is not past its date while its day
    runs for the reader: Wednesday's 17:00 digest. It went in Tuesday's, at 17:00 on the
    step's own day, saying the step "had" its date."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_TIMEZONE="Australia/Sydney", NOTIFIER_DIGEST_TIME="17:00")
    zone = "America/Los_Angeles"
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone=zone)
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Visit the job centre", due_date="2026-03-10")
    await rig.catch_up()
    [nudge] = await rig.rows(kind="step_nudge")
    assert local(nudge["due_at"], zone).isoformat() == "2026-03-10T15:00:00-07:00"
    clock.now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    went = await run_jobs(rig, smtp, clock, datetime(2026, 3, 13, tzinfo=UTC))
    nudged = [local(at, zone) for at, text in went if "Visit the job centre" in text]
    assert [at.isoformat() for at in nudged] == ["2026-03-11T17:00:00-07:00"], (
        "the nudge came on the step's own day (Tuesday 10 March) where the reader is")


# --------------------------------------------------------------------------------------------
# quiet hours ending in the hour clocks skip
# --------------------------------------------------------------------------------------------


def test_quiet_hours_ending_in_the_skipped_hour_end_when_the_clock_passes_their_end() -> None:
    """Quiet until 02:30 on the night New York's clocks jump from 02:00 to 03:00 (8 March
    2026), and until 02:15 on the night Lord Howe's jump from 02:00 to 02:30 (4 October 2026):
    the end does not exist that night, and the first moment past it is 03:00 (02:30 on Lord
    Howe). They ended half an hour (a quarter) later: the end was read with the offset from
    before the change."""
    new_york = prefs("America/New_York", time(22), time(2, 30))
    at_01_50 = datetime(2026, 3, 8, 6, 50, tzinfo=UTC)  # 01:50 EST
    lord_howe = prefs("Australia/Lord_Howe", time(22), time(2, 15))
    at_01_50_lh = datetime(2026, 10, 3, 15, 20, tzinfo=UTC)  # 01:50 at +10:30
    ends = [quiet_until(new_york, at_01_50), quiet_until(lord_howe, at_01_50_lh)]
    assert [local(e, p.timezone).isoformat() for e, p in zip(ends, (new_york, lord_howe),
                                                            strict=True) if e] == [
        "2026-03-08T03:00:00-04:00", "2026-10-04T02:30:00+11:00"], "ended 30 (15) min late"


# --------------------------------------------------------------------------------------------
# guards: what behaved as a person expects (non-obvious, kept)
# --------------------------------------------------------------------------------------------


async def completing_steps_every(records: Records, case: str, goal: str,
                                 names: list[str]) -> Any:
    async def complete(now: datetime) -> None:
        name = f"Step at {now.isoformat()}"
        await records.complete(case, await records.step(case, goal, name))
        names.append(name)
    return complete


async def test_one_digest_per_local_day_at_08_00_across_both_changes_on_lord_howe(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Lord Howe moves its clocks by half an hour. Small wins every 45 minutes over the night
    clocks go back (5 April 2026) and the one they go forward (4 October): every one arrives
    once, each digest at 08:00 local, one a day, and none in quiet hours 22:00-07:00."""
    zone = "Australia/Lord_Howe"
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone=zone,
                        quiet_hours={"start": "22:00", "end": "07:00"})
    case = await records.open_case()
    goal = await records.goal(case)
    names: list[str] = []
    went: list[tuple[datetime, str]] = []
    for start in (datetime(2026, 4, 3, 12, 0, tzinfo=UTC), datetime(2026, 10, 2, 12, 0,
                                                                    tzinfo=UTC)):
        clock.now = start
        wins = await completing_steps_every(records, case, goal, names)

        async def each(now: datetime, wins: Any = wins, start: datetime = start) -> None:
            if now < start + timedelta(days=2) and now.minute % 45 == 0:
                await wins(now)
                await rig.catch_up()
        went += await run_jobs(rig, smtp, clock, start + timedelta(days=3), each=each)
    sent_at = [local(at, zone) for at, _ in went]
    assert all(at.time() == time(8) for at in sent_at), sent_at
    days = Counter(at.date() for at in sent_at)
    assert all(n == 1 for n in days.values()), days
    texts = "\n".join(text for _, text in went)
    assert all(texts.count(name + '"') == 1 for name in names)
    assert date(2026, 4, 5) in days
    assert date(2026, 10, 4) in days


READERS = [("Pacific/Kiritimati", "immediate"), ("Pacific/Pago_Pago", "immediate"),
           ("Asia/Kathmandu", "immediate"), ("Australia/Lord_Howe", "immediate"),
           ("America/New_York", "immediate"), ("Europe/London", "immediate"),
           ("Pacific/Kiritimati", "daily_digest"), ("Pacific/Pago_Pago", "daily_digest"),
           ("America/New_York", "daily_digest")]


async def test_a_review_due_on_the_night_new_york_falls_back_reaches_each_reader_on_their_day(
        aiohttp_client: Any, fresh_database_url: str, records: Records, smtp: SmtpServer,
        token: TokenFactory, clock: FakeClock) -> None:
    """The schedule in New York; a review due on Sunday 1 November 2026, the day its clocks go
    back. Case managers from UTC+14 to UTC-11: each hears "in 3 days", "due today" and "not
    yet recorded" once, at 09:00 their time (08:00 in a digest) on 29 October, 1 and 3
    November, though those days begin and end at different UTC moments for each."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_TIMEZONE="America/New_York")
    clock.now = datetime(2026, 9, 2, 14, 0, tzinfo=UTC)  # agreed now: due 60 days later
    for n, (zone, delivery) in enumerate(READERS, 1):
        user = f"cm-{n}"
        await rig.set_prefs(user, token(sub=user), timezone=zone, delivery=delivery)
        theirs = Records(records.client, token(sub=user))
        await theirs.agree(await theirs.open_case(case_manager=user))
    await rig.catch_up()
    [due] = {json.loads(r["context"])["due_date"] for r in await rig.rows(kind="review_due_today")}
    assert due == "2026-11-01"
    clock.now = datetime(2026, 10, 27, tzinfo=UTC)
    await run_jobs(rig, smtp, clock, datetime(2026, 11, 5, tzinfo=UTC))
    for n, (zone, delivery) in enumerate(READERS, 1):
        got = [m for m in smtp.received if m["To"] == f"cm-{n}@example.org"]
        at = [local(datetime.fromisoformat(str(r["sent_at"])), zone) for r in await rig.rows(
            recipient=f"cm-{n}", status="sent") if r["kind"] != "daily_digest"]
        hour = time(8) if delivery == "daily_digest" else time(9)
        assert sorted((a.date().isoformat(), a.time()) for a in at) == [
            ("2026-10-29", hour), ("2026-11-01", hour), ("2026-11-03", hour)], (zone, delivery)
        texts = [text_of(m) for m in got]
        assert len(texts) == 3, (zone, delivery)
        assert "in 3 days" in texts[0], (zone, texts)
        assert "due today" in texts[1], (zone, texts)
        assert "not been recorded yet" in texts[2], (zone, texts)


async def test_quiet_hours_across_midnight_hold_on_both_lord_howe_change_nights(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Quiet from 23:00 to 01:45 (in the half hour that comes twice on 5 April 2026) and from
    23:00 to 02:15 (in the half hour skipped on 4 October): small wins every 15 minutes all
    night; each arrives once, none while the reader's clock reads inside their quiet hours."""
    zone = "Australia/Lord_Howe"
    case = await records.open_case()
    goal = await records.goal(case)
    for night, end in ((datetime(2026, 4, 4, 11, 0, tzinfo=UTC), time(1, 45)),
                       (datetime(2026, 10, 3, 11, 0, tzinfo=UTC), time(2, 15))):
        clock.now = night  # 22:00 (or 21:30) in Lord Howe
        await rig.set_prefs("cm-1", token(), timezone=zone,
                            quiet_hours={"start": "23:00", "end": end.strftime("%H:%M")})
        names: list[str] = []
        wins = await completing_steps_every(records, case, goal, names)

        async def each(now: datetime, wins: Any = wins, night: datetime = night) -> None:
            if now < night + timedelta(hours=6):
                await wins(now)
                await rig.catch_up()
        went = await run_jobs(rig, smtp, clock, night + timedelta(hours=10), timedelta(minutes=5),
                              each=each)
        for at, _ in went:
            t = local(at, zone).time()
            assert time(23) > t >= end, (local(at, zone), end)
        texts = "\n".join(text for _, text in went)
        assert all(texts.count(name + '"') == 1 for name in names), names
        assert len(went) == len(names) > 60
