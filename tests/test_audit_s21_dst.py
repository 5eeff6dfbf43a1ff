"""Audit (s21) of the notifier's scheduling across daylight-saving changes and time zones.

What a case manager expects: a reminder N days before a plan review and a notice on the day,
each at 09:00 on that day as their own clock reads it (08:00 in a digest), whether or not the
clocks changed in between; overdue notices and step nudges likewise; quiet hours kept for the
whole night they cover; one digest a day; every notice mailed exactly once; and the schedule
and notification listings (`GET /v1/schedule`, `GET /v1/notifications`) saying when the mail
went, or will go, as it really does.

Each test drives a real notifier (real PostgreSQL, a real SMTP server: aiosmtpd in this event
loop) with the injected clock, running the service's two jobs (dispatch, then digests) step by
step. Tests already in `test_notifier_time.py` and `test_audit_s19_timing.py` (the night New
York falls back with the schedule there, Lord Howe's quiet hours and digests, quiet hours
ending in a skipped hour, readers moving zones while a digest waits) are not repeated."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of

Went = list[tuple[datetime, Message]]


async def run_jobs(
    rig: NotifierRig,
    smtp: SmtpServer,
    clock: FakeClock,
    until: datetime,
    step: timedelta = timedelta(minutes=15),
    each: Callable[[datetime], Awaitable[None]] | None = None,
) -> Went:
    """Run dispatch and the digest job from now until ``until``, every ``step``: each message
    as it went, with the moment. ``each(now)`` runs first at every step."""
    seen = len(smtp.received)
    went: Went = []
    while clock.now < until:
        if each is not None:
            await each(clock.now)
        await rig.dispatch()
        await rig.notifier.dispatcher.send_digests()
        went += [(clock.now, m) for m in smtp.received[seen:]]
        seen = len(smtp.received)
        clock.advance(seconds=step.total_seconds())
    return went


def local(moment: datetime, zone: str) -> datetime:
    return moment.astimezone(ZoneInfo(zone))


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


async def listed(client: TestClient, who: str, **query: str) -> list[dict[str, Any]]:
    """``GET /v1/notifications`` as ``who``'s bearer token sees it (every page)."""
    found: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            "/v1/notifications",
            headers=bearer(who),
            params={**query, "limit": "500", "offset": str(len(found))},
        )
        assert response.status == 200, await response.text()
        page = (await response.json())["notifications"]
        found += page
        if len(page) < 500:
            return found


def of_day(rows: list[dict[str, Any]], kind: str, day: date) -> list[dict[str, Any]]:
    """The rows of ``kind`` about ``day`` (a review moved there leaves cancelled rows behind
    for its earlier date)."""
    return [r for r in rows if r["kind"] == kind and f":{day}" in r["key"]]


async def schedule_of(client: TestClient, who: str, case_id: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/schedule", params={"case_id": case_id}, headers=bearer(who))
    assert response.status == 200, await response.text()
    return list((await response.json())["pending"])


async def case_with_review(
    records: Records, due: date, step_due: date | None = None, case_manager: str = "cm-1"
) -> str:
    """A case of ``case_manager`` (writing with ``records``' token) whose plan is agreed and
    whose review is moved to ``due``; with a step of an active goal hoped for on
    ``step_due``."""
    case = await records.open_case(case_manager=case_manager)
    review = await records.agree(case)
    response = await records.client.post(
        f"/v1/cases/{case}/reviews/{review}/reschedule",
        json={"due_date": due.isoformat(), "reason": "a date that suits Jo"},
        headers=bearer(records.token),
    )
    body = await response.json()
    # 409 no-change: agreeing the plan already scheduled it for that day
    assert response.status == 200 or body["type"].endswith("/no-change"), body
    if step_due is not None:
        goal = await records.goal(case, "Find steady work")
        await records.step(case, goal, "Visit the job centre", due_date=step_due.isoformat())
    return case


# --------------------------------------------------------------------------------------------
# dated notices when the clocks change between the reminder and the day
# --------------------------------------------------------------------------------------------

READERS = [
    ("America/New_York", "immediate"),
    ("Europe/London", "immediate"),
    ("Australia/Lord_Howe", "immediate"),
    ("Asia/Tokyo", "immediate"),
    ("Pacific/Kiritimati", "immediate"),
    ("Pacific/Pago_Pago", "immediate"),
    ("America/New_York", "daily_digest"),
    ("Australia/Lord_Howe", "daily_digest"),
    ("Pacific/Kiritimati", "daily_digest"),
]

# (the schedule's zone, the Sunday some readers' clocks change, the review's day after it)
CHANGES = [
    pytest.param("UTC", date(2026, 3, 8), id="new-york-springs-forward"),
    pytest.param("Europe/London", date(2026, 3, 29), id="london-springs-forward"),
    pytest.param("Australia/Lord_Howe", date(2026, 10, 4), id="lord-howe-half-hour-forward"),
    pytest.param("America/New_York", date(2026, 4, 5), id="lord-howe-half-hour-back"),
]


@pytest.mark.parametrize(("schedule_zone", "change_day"), CHANGES)
async def test_each_reader_hears_at_nine_on_their_day_when_clocks_change_in_between(
    aiohttp_client: Any,
    fresh_database_url: str,
    records: Records,
    smtp: SmtpServer,
    token: TokenFactory,
    clock: FakeClock,
    schedule_zone: str,
    change_day: date,
) -> None:
    """A review due on the Monday after a Sunday the clocks change (its reminder on the
    Friday before, its overdue notice on the Wednesday after) and a step hoped for on that
    Sunday (its nudge on the Monday). Case managers from UTC+14 to UTC-11, with and without
    daylight saving: each notice reaches each of them once, at 09:00 on its day by their own
    clock (08:00 in a digest), and the listing says it was sent when the mail went."""
    review_day = change_day + timedelta(days=1)
    clock.now = datetime.combine(review_day - timedelta(days=20), time(12), tzinfo=UTC)
    rig = await make_rig(
        aiohttp_client,
        fresh_database_url,
        records.client,
        smtp,
        clock,
        NOTIFIER_TIMEZONE=schedule_zone,
    )
    for n, (zone, delivery) in enumerate(READERS, 1):
        user = f"cm-{n}"
        await rig.set_prefs(user, token(sub=user), timezone=zone, delivery=delivery)
        await case_with_review(
            Records(records.client, token(sub=user)),
            review_day,
            step_due=change_day,
            case_manager=user,
        )
    await rig.catch_up()
    start = datetime.combine(review_day - timedelta(days=4), time(0), tzinfo=UTC)
    clock.now = start
    went = await run_jobs(rig, smtp, clock, start + timedelta(days=8))
    expected_days = {
        "review_reminder": review_day - timedelta(days=3),
        "review_due_today": review_day,
        "step_nudge": review_day,
        "review_overdue": review_day + timedelta(days=2),
    }
    problems = []
    for n, (zone, delivery) in enumerate(READERS, 1):
        user = f"cm-{n}"
        hour = time(8) if delivery == "daily_digest" else time(9)
        mail = [when for when, m in went if m["To"] == f"{user}@example.org"]
        rows = [
            r
            for r in await listed(rig.client, token(sub=user), recipient=user)
            if r["kind"] != "daily_digest"
            and (f":{review_day}" in r["key"] or f":{change_day}" in r["key"])
        ]
        for row in rows:
            day = expected_days[row["kind"]]
            sent = at(row["sent_at"]) if row["sent_at"] else None
            if row["status"] != "sent" or sent is None:
                problems.append((zone, delivery, row["kind"], row["status"], row["last_error"]))
                continue
            if (local(sent, zone).date(), local(sent, zone).time()) != (day, hour):
                problems.append((zone, delivery, row["kind"], local(sent, zone).isoformat()))
            if sent not in mail:
                problems.append(
                    (
                        zone,
                        delivery,
                        row["kind"],
                        "listed as sent when no mail went to the reader",
                        sent.isoformat(),
                    )
                )
        kinds = sorted(r["kind"] for r in rows)
        if kinds != sorted(expected_days):
            problems.append((zone, delivery, "notices", kinds))
        messages = 3 if delivery == "daily_digest" else 4
        if len(mail) != messages:
            problems.append(
                (zone, delivery, "messages", [local(w, zone).isoformat() for w in mail])
            )
    assert problems == []


# --------------------------------------------------------------------------------------------
# a zone whose offset changed: the day Samoa skipped
# --------------------------------------------------------------------------------------------


async def test_a_review_due_on_the_day_samoa_skipped_reaches_its_reader_once(
    aiohttp_client: Any,
    fresh_database_url: str,
    records: Records,
    smtp: SmtpServer,
    token: TokenFactory,
    clock: FakeClock,
) -> None:
    """Samoa moved across the date line at the end of Thursday 29 December 2011: Friday 30
    December never came there. A review due that Friday, for case managers in Apia (one
    reading mail as it comes, one a daily digest): its "due today" notice is not lost and
    not sent twice, it comes once, on the first morning after (Saturday 31 December), and the
    reminder and the overdue notice come once each at 09:00 (08:00) their time."""
    clock.now = datetime(2011, 11, 1, 12, 0, tzinfo=UTC)
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    zone = "Pacific/Apia"
    for user, delivery in (("cm-1", "immediate"), ("cm-2", "daily_digest")):
        await rig.set_prefs(user, token(sub=user), timezone=zone, delivery=delivery)
        await case_with_review(
            Records(records.client, token(sub=user)), date(2011, 12, 30), case_manager=user
        )
    await rig.catch_up()
    clock.now = datetime(2011, 12, 25, tzinfo=UTC)
    went = await run_jobs(rig, smtp, clock, datetime(2012, 1, 4, tzinfo=UTC))
    for user, hour in (("cm-1", time(9)), ("cm-2", time(8))):
        mail = [local(w, zone) for w, m in went if m["To"] == f"{user}@example.org"]
        assert [(m.date().isoformat(), m.time()) for m in mail] == [
            ("2011-12-27", hour),
            ("2011-12-31", hour),
            ("2012-01-01", hour),
        ], (user, mail)
        sent = sorted(
            (r["kind"], r["status"])
            for r in await listed(rig.client, token(sub=user), recipient=user)
            if ":2011-12-30" in r["key"]
        )
        assert sent == [
            ("review_due_today", "sent"),
            ("review_overdue", "sent"),
            ("review_reminder", "sent"),
        ], (user, sent)


# --------------------------------------------------------------------------------------------
# a digest whose time is in the hour clocks skip or repeat
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digest_time", "night"),
    [
        pytest.param("02:30", date(2026, 3, 8), id="skipped-hour"),
        pytest.param("01:30", date(2026, 11, 1), id="repeated-hour"),
    ],
)
async def test_a_digest_timed_in_a_skipped_or_repeated_hour_goes_once_that_day(
    aiohttp_client: Any,
    fresh_database_url: str,
    records: Records,
    smtp: SmtpServer,
    token: TokenFactory,
    clock: FakeClock,
    digest_time: str,
    night: date,
) -> None:
    """A night-shift agency sends digests at 02:30 (01:30) New York time. On the night that
    hour is skipped (repeated), a case manager there still gets one digest that day, not
    none and not two, and every small win of the three days arrives exactly once. The
    digest's row in the listing says it went when it did."""
    zone = "America/New_York"
    clock.now = datetime.combine(night - timedelta(days=1), time(0), tzinfo=UTC)
    rig = await make_rig(
        aiohttp_client,
        fresh_database_url,
        records.client,
        smtp,
        clock,
        NOTIFIER_DIGEST_TIME=digest_time,
    )
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone=zone)
    case = await records.open_case()
    goal = await records.goal(case)
    names: list[str] = []

    async def a_win_every_40_minutes(now: datetime) -> None:
        if now.minute in (0, 40) and now < wins_end:
            name = f"Step at {now.isoformat()}"
            await records.complete(case, await records.step(case, goal, name))
            names.append(name)
            await rig.catch_up()

    wins_end = clock.now + timedelta(days=2)
    clock_end = clock.now + timedelta(days=2, hours=12)
    went = await run_jobs(
        rig, smtp, clock, clock_end, timedelta(minutes=10), each=a_win_every_40_minutes
    )
    days = Counter(local(w, zone).date() for w, _ in went)
    assert days[night] == 1, days
    assert all(n == 1 for n in days.values()), days
    texts = "\n".join(text_of(m) for _, m in went)
    assert [name for name in names if texts.count(name + '"') != 1] == []
    digests = [r for r in await listed(rig.client, token(), recipient="cm-1", kind="daily_digest")]
    sent_at = sorted(at(r["sent_at"]) for r in digests if r["status"] == "sent")
    assert sent_at == sorted(w for w, _ in went)


# --------------------------------------------------------------------------------------------
# quiet hours that begin in the hour clocks skip or repeat
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "quiet", "evening", "begins", "ends"),
    [
        pytest.param(
            "America/New_York",
            ("01:30", "06:00"),
            "2026-11-01T00:00:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T06:00:00-05:00",
            id="new-york-repeated-hour",
        ),
        pytest.param(
            "Australia/Lord_Howe",
            ("01:40", "06:00"),
            "2026-04-05T00:00:00+11:00",
            "2026-04-05T01:40:00+11:00",
            "2026-04-05T06:00:00+10:30",
            id="lord-howe-repeated-half-hour",
        ),
        pytest.param(
            "America/New_York",
            ("02:30", "06:00"),
            "2026-03-08T00:00:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-08T06:00:00-04:00",
            id="new-york-skipped-hour",
        ),
    ],
)
async def test_quiet_hours_that_begin_in_a_changing_hour_hold_until_their_end(
    rig: NotifierRig,
    records: Records,
    smtp: SmtpServer,
    token: TokenFactory,
    clock: FakeClock,
    zone: str,
    quiet: tuple[str, str],
    evening: str,
    begins: str,
    ends: str,
) -> None:
    """Quiet hours that begin at 01:30 on the night New York's clocks go back (01:40 on Lord
    Howe's, whose go back half an hour) or at 02:30 on the night they jump. Once they have
    begun, the night is quiet until they end: small wins recorded every ten minutes all night
    arrive once each, none after the quiet hours began and before they ended. With the
    clocks going back, the reader's clock reads 01:00-01:30 (01:30-01:40) a second time, after
    their quiet hours began: that half hour is still their night."""
    clock.now = at(evening).astimezone(UTC)
    await rig.set_prefs(
        "cm-1", token(), timezone=zone, quiet_hours={"start": quiet[0], "end": quiet[1]}
    )
    case = await records.open_case()
    goal = await records.goal(case)
    names: list[str] = []

    async def a_win_every_10_minutes(now: datetime) -> None:
        if now < at(ends):
            name = f"Step at {now.isoformat()}"
            await records.complete(case, await records.step(case, goal, name))
            names.append(name)
            await rig.catch_up()

    went = await run_jobs(
        rig,
        smtp,
        clock,
        at(ends) + timedelta(hours=2),
        timedelta(minutes=10),
        each=a_win_every_10_minutes,
    )
    in_quiet = [local(w, zone).isoformat() for w, _ in went if at(begins) <= w < at(ends)]
    assert in_quiet == [], "mail went while the reader's quiet hours held"
    texts = "\n".join(text_of(m) for _, m in went)
    assert [name for name in names if texts.count(name + '"') != 1] == []


@pytest.mark.parametrize("quiet", [("22:00", "22:00"), ("00:00", "00:00")])
async def test_quiet_hours_with_no_length_are_refused_and_change_nothing(
    rig: NotifierRig, token: TokenFactory, quiet: tuple[str, str]
) -> None:
    """Quiet hours starting and ending at the same minute say nothing a person could mean
    (no quiet, or never any mail): refused (422), and what was stored stays."""
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "22:00", "end": "07:00"})
    response = await rig.client.put(
        "/v1/preferences/cm-1",
        headers=bearer(token()),
        json={
            "email": "cm-1@example.org",
            "delivery": "immediate",
            "timezone": "UTC",
            "celebrations": True,
            "quiet_hours": {"start": quiet[0], "end": quiet[1]},
        },
    )
    assert response.status == 422, await response.text()
    stored = await rig.client.get("/v1/preferences/cm-1", headers=bearer(token()))
    assert (await stored.json())["quiet_hours"] == {"start": "22:00", "end": "07:00"}


# --------------------------------------------------------------------------------------------
# a digest reader far east of the schedule's zone
# --------------------------------------------------------------------------------------------


async def test_a_due_today_reaches_a_kiritimati_digest_reader_in_that_mornings_digest(
    aiohttp_client: Any,
    fresh_database_url: str,
    records: Records,
    smtp: SmtpServer,
    token: TokenFactory,
    clock: FakeClock,
) -> None:
    """An agency in Hawaii (the schedule in Honolulu) sends digests at 06:00; one case
    manager works on Kiritimati, the Line Islands south of Hawaii, a day ahead (UTC+14). A
    review due on Friday 1 May: "a digest reader gets it in the digest of its day" (0203):
    the reminder in Tuesday's 06:00 digest there, "due today" in Friday's, which also
    carries a small win from Thursday evening. Each digest is 27 hours before 09:00 on its
    day in Honolulu, and the early claim looks only 26 hours ahead (`EARLY_CLAIM_SPAN`): the
    reminder waited for an hour and went alone, and "due today", left out of Friday's digest
    that went without it, waited for its due time and went on Sunday ("was due 2 days
    ago")."""
    clock.now = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    rig = await make_rig(
        aiohttp_client,
        fresh_database_url,
        records.client,
        smtp,
        clock,
        NOTIFIER_TIMEZONE="Pacific/Honolulu",
        NOTIFIER_DIGEST_TIME="06:00",
    )
    zone = "Pacific/Kiritimati"
    await rig.set_prefs("cm-1", token(), timezone=zone, delivery="daily_digest")
    case = await case_with_review(records, date(2026, 5, 1))
    await rig.catch_up()
    clock.now = datetime(2026, 4, 27, tzinfo=UTC)
    went = await run_jobs(rig, smtp, clock, at("2026-04-30T20:00:00+14:00"))
    reminded = [(local(w, zone).isoformat(), text_of(m).splitlines()[4]) for w, m in went]
    goal = await records.goal(case, "Find steady work")  # Thursday evening there
    await records.complete(case, await records.step(case, goal, "Call the bakery"))
    await rig.catch_up()
    went = await run_jobs(rig, smtp, clock, at("2026-05-04T00:00:00+14:00"))
    # the "due today" notice, as a digest words it: "is due today (Friday 1 May 2026)"
    carrying = [local(w, zone).isoformat() for w, m in went if "(Friday 1 May 2026)" in text_of(m)]
    assert (reminded, carrying) == (
        [
            (
                "2026-04-28T06:00:00+14:00",
                "- Plan review with Jo is due on Friday 1 May 2026 (in 3 days)",
            )
        ],
        ["2026-05-01T06:00:00+14:00"],
    ), "not in the digests of their days on Kiritimati"


# --------------------------------------------------------------------------------------------
# what the schedule says, and the mail
# --------------------------------------------------------------------------------------------


async def test_the_schedule_says_when_a_reader_east_of_its_zone_will_get_the_notice(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """`GET /v1/schedule` is "what is still to be sent, and when" (the brief). A case manager
    on Kiritimati (UTC+14) with a review due on Friday 1 May: an hour before it goes (08:00 on
    Friday there), the schedule lists the "due today" notice to be delivered after 09:00 UTC
    on Friday, and the mail goes an hour later, at 19:00 UTC on Thursday: fourteen hours
    before the time the schedule gave. Nothing in the listing says when it will really go."""
    zone = "Pacific/Kiritimati"
    await rig.set_prefs("cm-1", token(), timezone=zone)
    case = await case_with_review(records, date(2026, 5, 1))
    await rig.catch_up()
    clock.now = at("2026-05-01T08:00:00+14:00").astimezone(UTC)
    await rig.dispatch()
    [listed_due] = [
        r for r in await schedule_of(rig.client, token(), case) if r["kind"] == "review_due_today"
    ]
    went = await run_jobs(rig, smtp, clock, at("2026-05-02T12:00:00+14:00"))
    [(sent, _)] = [(w, m) for w, m in went if "due today" in text_of(m)]
    assert local(sent, zone).isoformat() == "2026-05-01T09:00:00+14:00"  # as the docs promise
    assert at(listed_due["deliver_after"]) <= sent, (
        f"the schedule said {listed_due['deliver_after']}; the mail went {sent.isoformat()}"
    )


async def test_a_reader_who_moves_west_on_the_day_new_york_springs_forward_hears_once(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """A review due on Sunday 8 March 2026, the day New York's clocks jump. The case
    manager is in New York: "due today" waits for 09:00 there (13:00 UTC, after the jump).
    At 06:00 New York time they set Los Angeles (its clocks jumped too): the notice is
    decided afresh and comes once, at 09:00 in Los Angeles; the schedule says so before it
    goes, the listing after it, and the mail's Date header agrees."""
    await rig.set_prefs("cm-1", token(), timezone="America/New_York")
    case = await case_with_review(records, date(2026, 3, 8))
    await rig.catch_up()
    clock.now = datetime(2026, 3, 8, 9, 0, tzinfo=UTC)  # 05:00 in New York, after the jump
    await rig.dispatch()
    [waiting] = [
        r for r in await schedule_of(rig.client, token(), case) if r["kind"] == "review_due_today"
    ]
    assert local(at(waiting["deliver_after"]), "America/New_York").isoformat() == (
        "2026-03-08T09:00:00-04:00"
    )
    clock.now = datetime(2026, 3, 8, 10, 0, tzinfo=UTC)  # 06:00 in New York
    zone = "America/Los_Angeles"
    await rig.set_prefs("cm-1", token(), timezone=zone)
    await rig.dispatch()
    [waiting] = [
        r for r in await schedule_of(rig.client, token(), case) if r["kind"] == "review_due_today"
    ]
    assert local(at(waiting["deliver_after"]), zone).isoformat() == "2026-03-08T09:00:00-07:00"
    went = await run_jobs(
        rig, smtp, clock, datetime(2026, 3, 9, 12, 0, tzinfo=UTC), timedelta(minutes=5)
    )
    mail = [(w, m) for w, m in went if "due today" in text_of(m)]
    assert [local(w, zone).isoformat() for w, _ in mail] == ["2026-03-08T09:00:00-07:00"]
    [(sent, message)] = mail
    assert parsedate_to_datetime(message["Date"]) == sent
    [row] = of_day(
        await listed(rig.client, token(), case_id=case), "review_due_today", date(2026, 3, 8)
    )
    assert (row["status"], at(row["sent_at"])) == ("sent", sent)


# --------------------------------------------------------------------------------------------
# a reader with no preferences
# --------------------------------------------------------------------------------------------


async def test_a_reader_with_no_preferences_is_told_on_their_day_once_they_set_them(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """A case manager with no entry in the directory: their "due today" for Sunday 8 March
    (the day New York's clocks jump) becomes a dead letter at its due time, saying what to
    set, and the listing shows it so. At 05:00 in New York they set their preferences (New
    York): the letter is mended and comes once, at 09:00 on that day by their clock."""
    case = await case_with_review(records, date(2026, 3, 8))
    await rig.catch_up()
    clock.now = datetime(2026, 3, 8, 9, 0, tzinfo=UTC)
    await rig.dispatch()
    [dead] = of_day(
        await listed(rig.client, token(), case_id=case), "review_due_today", date(2026, 3, 8)
    )
    assert dead["status"] == "dead"
    assert "no email address on file for cm-1" in dead["last_error"]
    assert "PUT /v1/preferences/cm-1" in dead["last_error"]
    assert smtp.received == []
    zone = "America/New_York"
    clock.now = at("2026-03-08T05:00:00-04:00").astimezone(UTC)
    await rig.set_prefs("cm-1", token(), timezone=zone)
    went = await run_jobs(
        rig, smtp, clock, datetime(2026, 3, 9, 12, 0, tzinfo=UTC), timedelta(minutes=5)
    )
    mail = [local(w, zone).isoformat() for w, m in went if "due today" in text_of(m)]
    assert mail == ["2026-03-08T09:00:00-04:00"]
    [row] = of_day(
        await listed(rig.client, token(), case_id=case), "review_due_today", date(2026, 3, 8)
    )
    assert row["status"] == "sent"
    assert local(at(row["sent_at"]), zone).isoformat() == "2026-03-08T09:00:00-04:00"


# --------------------------------------------------------------------------------------------
# the supervisors' overdue notice across a change of clocks
# --------------------------------------------------------------------------------------------


async def test_an_overdue_notice_nobody_was_mailed_is_not_listed_as_sent(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """A review due on Friday 6 March; its overdue notice falls due at 09:00 UTC on Sunday 8
    March, the day New York's clocks jump, for the case manager and the agency's supervisor,
    both in New York: each waits for 09:00 EDT (13:00 UTC). At 08:00 EDT the case manager
    records the review as held: both copies are cancelled, and no overdue mail goes to
    anyone. The listing's `sent` means "accepted by SMTP" (docs/notifier.md); the
    supervisors' row still reads `sent` at 09:00 UTC, though nothing was mailed then or
    after."""
    zone = "America/New_York"
    await rig.set_prefs("cm-1", token(), timezone=zone)
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"), timezone=zone)
    case = await case_with_review(records, date(2026, 3, 6))
    await rig.catch_up()
    [review] = {
        json.loads(r["context"])["review_id"] for r in await rig.rows(kind="review_overdue")
    }
    clock.now = datetime(2026, 3, 8, 0, 0, tzinfo=UTC)

    async def held_at_eight(now: datetime) -> None:
        if now == at("2026-03-08T08:00:00-04:00"):
            await records.call(
                "POST",
                f"/v1/cases/{case}/reviews/{review}/held",
                {"summary": "We looked at what is working", "held_on": "2026-03-06"},
            )
            await rig.catch_up()

    went = await run_jobs(
        rig,
        smtp,
        clock,
        datetime(2026, 3, 9, 0, 0, tzinfo=UTC),
        timedelta(minutes=5),
        each=held_at_eight,
    )
    assert [m["To"] for _, m in went if "not been recorded yet" in text_of(m)] == []
    rows = await listed(
        rig.client, token(role="supervisor", sub="sup-1"), case_id=case, kind="review_overdue"
    )
    assert {r["recipient"] for r in rows} >= {"cm-1", "supervisors"}
    said_sent = [
        (r["recipient"], r["sent_at"], r["last_error"]) for r in rows if r["status"] == "sent"
    ]
    assert said_sent == [], "listed as sent, though no overdue mail went to anyone"
