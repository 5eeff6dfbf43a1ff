"""Audit (session 22) of the notifier against the brief's "Notifier service" section, line by
line, with decisions 0200-0203 and docs/notifier.md for what the brief leaves open: the rules
(reviews, overdue notices, celebrations, nudges, transfers, closing and reopening), the
preferences route, the listing and the schedule, delivery (retries, dead letters, Message-ID,
bodies and words) and replaying the feed. Real records service, real PostgreSQL, real SMTP
(aiosmtpd); only time is injected.

The clock starts on Monday 2 March 2026, 09:00 UTC. A plan agreed then at moderate risk has its
review due on Friday 1 May (60 days): reminder 28 April, due today 1 May, overdue 3 May, each
at 09:00 UTC (NOTIFIER_SEND_TIME, NOTIFIER_TIMEZONE UTC)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import Message
from typing import Any
from uuid import UUID

from aiohttp.test_utils import TestClient

from services.notifier.schedule import FEED_CHECKPOINT
from services.notifier.store.cases import reset_checkpoint
from services.records.domain import load_base_guide
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(day: str, hour: int = 9, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=UTC)


def parts(message: Message) -> dict[str, str]:
    """The decoded bodies of a message by content type."""
    found = {}
    for part in message.walk():
        if part.get_content_maintype() == "multipart":
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[part.get_content_type()] = payload.decode(part.get_content_charset() or "utf-8")
    return found


# words the brief's "person-first" rules out in staff and participant mail alike
DEFICIT_WORDS = ("offender", "client", "compliance", "non-compliant", "noncompliant",
                 "failed to", "failure", "delinquen", "violation", "the subject", "missed")


def assert_person_first(message: Message) -> None:
    """Text AND HTML, each in person-first, strengths-based words (the records service's
    language guide, and the words the brief names)."""
    bodies = parts(message)
    assert set(bodies) == {"text/plain", "text/html"}, (message["Subject"], set(bodies))
    assert message.get_content_type() == "multipart/alternative"
    guide = load_base_guide()
    for kind, body in [*bodies.items(), ("subject", str(message["Subject"]))]:
        lowered = body.lower()
        found = [w for w in DEFICIT_WORDS if w in lowered]
        assert not found, (kind, found, body)
        assert guide.check("mail", body) == [], (kind, body)


async def staff(rig: NotifierRig, token: TokenFactory, **body: Any) -> None:
    """cm-1 and cm-2 (case managers) and sup-1 (supervisor) with addresses, UTC, at once."""
    await rig.set_prefs("cm-1", token(), **body)
    await rig.set_prefs("cm-2", token(sub="cm-2"), **body)
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"), **body)


async def send(rig: NotifierRig, now: datetime) -> None:
    rig.clock.now = now
    await rig.catch_up()
    await rig.dispatch()


async def listing(rig: NotifierRig, token: str, query: str = "") -> list[dict[str, Any]]:
    response = await rig.client.get(f"/v1/notifications{query}", headers=bearer(token))
    assert response.status == 200, await response.text()
    return list((await response.json())["notifications"])


async def step_status(records: Records, case: str, step: str, status: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                       {"status": status, "reason": "talked it through"})


async def reschedule(records: Records, case: str, review: str, due: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/reviews/{review}/reschedule",
                       {"due_date": due, "reason": "Jo starts a new job that week"})


def ctx(row: dict[str, Any]) -> dict[str, Any]:
    """A row's context (jsonb, as text from the pool)."""
    value = row["context"]
    return dict(json.loads(value) if isinstance(value, str) else value)


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


# --------------------------------------------------------------------------------------------
# ReviewScheduled: a reminder N days before and on the day; overdue after the grace days
# --------------------------------------------------------------------------------------------


async def test_a_review_is_reminded_three_days_before_on_the_day_and_reported_overdue(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Brief: "ReviewScheduled → reminder to the case manager N days before (default 3) and on
    the day; review not held by due date + grace → overdue notice to case manager and
    supervisor"."""
    await staff(rig, token)
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    rows = {(r["kind"], r["recipient"]): r["due_at"]
            for r in await rig.rows(case_id=UUID(case))}
    assert rows == {("review_reminder", "cm-1"): at("2026-04-28"),
                    ("review_due_today", "cm-1"): at("2026-05-01"),
                    ("review_overdue", "cm-1"): at("2026-05-03"),
                    ("review_overdue", "supervisors"): at("2026-05-03")}
    assert all(review in r["key"] for r in await rig.rows(case_id=UUID(case)))

    await send(rig, at("2026-04-28", 8, 59))
    assert smtp.received == []
    await send(rig, at("2026-04-28"))
    [reminder] = smtp.received
    assert reminder["To"] == "cm-1@example.org"
    assert "Jo" in str(reminder["Subject"])
    assert "Friday 1 May 2026" in parts(reminder)["text/plain"]
    await send(rig, at("2026-05-01"))
    assert [m["To"] for m in smtp.received] == ["cm-1@example.org"] * 2
    await send(rig, at("2026-05-03"))
    await rig.dispatch()  # the supervisors' copies, handed on when the group's row fell due
    overdue = smtp.received[2:]
    assert sorted(m["To"] for m in overdue) == ["cm-1@example.org", "sup-1@example.org"]
    for message in smtp.received:
        assert_person_first(message)


async def test_a_review_held_on_time_cancels_its_overdue_notices(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    await send(rig, at("2026-05-02", 15))  # a day late, within the grace days
    smtp.received.clear()
    nxt = await records.hold_review(case, review)
    await send(rig, at("2026-05-03"))
    await rig.dispatch()
    assert smtp.received == []
    rows = by_key(await rig.rows(case_id=UUID(case)))
    overdue = [r for k, r in rows.items() if k.startswith(f"review_overdue:{review}")]
    assert [(r["recipient_role"], r["status"]) for r in overdue] == [
        ("case_manager", "cancelled"), ("supervisors", "cancelled")]
    assert all("ReviewHeld" in r["last_error"] for r in overdue)
    # the next review (held 2 May, moderate: 60 days, due 1 July) has its own notices
    assert {r["kind"] for k, r in rows.items() if nxt in k and r["status"] == "scheduled"} == {
        "review_reminder", "review_due_today", "review_overdue"}


async def test_a_review_held_after_its_overdue_notice_went_keeps_it_sent(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    case = await records.open_case()
    review = await records.agree(case)
    await send(rig, at("2026-05-03"))
    await rig.dispatch()
    sent_before = len(smtp.received)
    assert sorted(m["To"] for m in smtp.received if "overdue" in str(m["Subject"]).lower()
                  or "was due" in str(m["Subject"]).lower()) != []
    await records.hold_review(case, review)
    await send(rig, at("2026-05-04"))
    assert len(smtp.received) == sent_before  # nothing new, nothing twice
    statuses = {(r["kind"], r["recipient"]): r["status"]
                for r in await rig.rows(case_id=UUID(case)) if review in r["key"]}
    assert statuses[("review_overdue", "cm-1")] == "sent"
    assert statuses[("review_overdue", "sup-1")] == "sent"


async def test_a_review_less_than_three_days_ahead_gets_no_late_reminder_but_its_day(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """A review moved (on Monday 2 March, 09:00) to Wednesday 4 March: the reminder's moment,
    Sunday 1 March, had passed everywhere, so none is scheduled (0201); "due today" on
    Wednesday and the overdue notice on Friday are; the old date's notices are cancelled."""
    await staff(rig, token)
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    await reschedule(records, case, review, "2026-03-04")
    await rig.catch_up()
    rows = await rig.rows(case_id=UUID(case))
    pending = {(r["kind"], r["recipient"]): r["due_at"] for r in rows
               if r["status"] == "scheduled"}
    assert pending == {("review_due_today", "cm-1"): at("2026-03-04"),
                       ("review_overdue", "cm-1"): at("2026-03-06"),
                       ("review_overdue", "supervisors"): at("2026-03-06")}
    old = [r for r in rows if "2026-05-01" in r["key"]]
    assert [r["status"] for r in old] == ["cancelled"] * 4
    await send(rig, at("2026-03-02", 10))
    assert smtp.received == []  # no reminder sent late, "in 2 days"
    await send(rig, at("2026-03-04"))
    [today] = smtp.received
    assert "Wednesday 4 March 2026" in parts(today)["text/plain"]


async def test_a_review_moved_back_to_a_date_whose_reminder_moment_had_passed_gets_none(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """0201: "A reminder (or due-today notice) whose moment had already passed when the review
    was scheduled is not sent … delivery cancels it for a reader whose own moment had passed
    before the event that called for it was recorded (cause_recorded_at)". The review due
    1 May is moved to 10 May on 20 April, and back to 1 May on 28 April at 15:00 UTC: the
    reminder of 28 April 09:00 was cancelled by the first move, and the move back calls for it
    after its moment (09:00 UTC) had passed for this UTC reader."""
    await staff(rig, token)
    case = await records.open_case()
    review = await records.agree(case)
    rig.clock.now = at("2026-04-20")
    await reschedule(records, case, review, "2026-05-10")
    await send(rig, at("2026-04-20"))
    rig.clock.now = at("2026-04-28", 15)
    await reschedule(records, case, review, "2026-05-01")
    await send(rig, at("2026-04-28", 15))
    assert [str(m["Subject"]) for m in smtp.received] == []
    [reminder] = [r for r in await rig.rows(kind="review_reminder")
                  if "2026-05-01" in r["key"]]
    assert reminder["status"] == "cancelled", reminder
    assert "had passed" in reminder["last_error"]


async def test_a_review_scheduled_already_past_its_grace_days_is_reported_overdue(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """A review held on 3 March is recorded on 1 June (risk now high: next review after 30
    days, due 2 April). That next review is not held by its due date + grace the moment it is
    scheduled; the brief: "review not held by due date + grace → overdue notice to case
    manager and supervisor". The supervisor must hear of it: the case manager who recorded it
    late may not notice the next one is already two months overdue."""
    await staff(rig, token)
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    rig.clock.now = at("2026-06-01", 10)
    result = await records.call("POST", f"/v1/cases/{case}/reviews/{review}/held", {
        "held_on": "2026-03-03", "summary": "We met and looked at what is working",
        "risk_level": "high"})
    nxt = next(e["data"] for e in result["events"] if e["type"] == "ReviewScheduled")
    assert nxt["due_date"] == "2026-04-02"
    await send(rig, at("2026-06-01", 10))
    await rig.dispatch()
    rows = [r for r in await rig.rows(case_id=UUID(case), kind="review_overdue")
            if nxt["review_id"] in r["key"] and r["parent_id"] is None]
    assert {r["recipient_role"] for r in rows} == {"case_manager", "supervisors"}
    assert [(r["recipient_role"], r["status"], r["last_error"]) for r in rows
            if r["status"] not in ("sent", "handed_on")] == []
    assert sorted(m["To"] for m in smtp.received) == ["cm-1@example.org", "sup-1@example.org"]


async def test_the_reminder_days_follow_the_setting(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """"N days before (default 3)": NOTIFIER_REMINDER_DAYS=5 and a grace of 4 days."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_REMINDER_DAYS=5, NOTIFIER_OVERDUE_GRACE_DAYS=4)
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    due = {r["key"]: r["due_at"] for r in await rig.rows(case_id=UUID(case))}
    assert due == {f"review_reminder:{review}:2026-05-01:5d": at("2026-04-26"),
                   f"review_due_today:{review}:2026-05-01": at("2026-05-01"),
                   f"review_overdue:{review}:2026-05-01:case_manager": at("2026-05-05"),
                   f"review_overdue:{review}:2026-05-01:supervisors": at("2026-05-05")}


# --------------------------------------------------------------------------------------------
# celebrations
# --------------------------------------------------------------------------------------------


async def test_a_small_win_and_a_milestone_reach_the_manager_and_the_opted_in_participant(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Brief: "ActionStepCompleted → small-win celebration; GoalStatusChanged(achieved) →
    milestone celebration (to the participant too, if they opted in with an address)"; their
    address is the one they give, else the one on the case (0203)."""
    await staff(rig, token)
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]), email=None)
    goal = await records.goal(case, "Find steady work", "A job where I use my hands")
    step = await records.step(case, goal, "Visit the job centre")
    await records.complete(case, step)
    await records.achieve(case, goal)
    await send(rig, START)
    got = sorted((m["To"], str(m["Subject"])) for m in smtp.received)
    assert [to for to, _ in got] == ["cm-1@example.org", "cm-1@example.org", "jo@example.org"]
    participant = next(m for m in smtp.received if m["To"] == "jo@example.org")
    assert "A job where I use my hands" in parts(participant)["text/plain"]
    assert case not in parts(participant)["text/plain"]  # never the case id (0201)
    for message in smtp.received:
        assert_person_first(message)


async def test_a_participant_who_did_not_opt_in_or_has_no_address_gets_no_milestone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    quiet = await records.open_case()
    no_address = await records.open_case(participant={"name": "Sam Lee"})
    await rig.set_prefs("sam", token(role="participant", sub="sam", cases=[no_address]),
                        email=None)
    for case in (quiet, no_address):
        await records.achieve(case, await records.goal(case))
    await send(rig, START)
    assert [m["To"] for m in smtp.received] == ["cm-1@example.org"] * 2
    rows = {r["case_id"]: r for r in await rig.rows(recipient_role="participant")}
    assert rows[UUID(quiet)]["status"] == "cancelled"
    assert "not opted in" in rows[UUID(quiet)]["last_error"]
    assert rows[UUID(no_address)]["status"] in ("dead", "cancelled")
    assert "address" in rows[UUID(no_address)]["last_error"]


async def test_celebrations_off_cancels_celebrations_but_not_the_work_notices(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token, celebrations=False)
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]),
                        celebrations=False)
    goal = await records.goal(case)
    step = await records.step(case, goal, "Call the landlord", due_date="2026-03-03")
    await records.step(case, goal, "Visit the job centre", due_date="2026-03-03")
    await records.complete(case, step)
    await records.achieve(case, await records.goal(case, "Keep my flat", "A home of my own"))
    await send(rig, START)
    assert smtp.received == []
    celebrations = [r for r in await rig.rows(case_id=UUID(case))
                    if r["kind"] in ("small_win", "milestone")]
    assert len(celebrations) == 3
    assert {r["status"] for r in celebrations} == {"cancelled"}
    assert all("celebrations" in r["last_error"] for r in celebrations)
    await send(rig, at("2026-03-04"))
    [nudge] = smtp.received
    assert "Visit the job centre" in parts(nudge)["text/plain"]
    assert_person_first(nudge)


# --------------------------------------------------------------------------------------------
# steps past due; revised dates
# --------------------------------------------------------------------------------------------


async def test_a_step_past_its_date_gets_a_nudge_the_day_after(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Visit the job centre", due_date="2026-03-05")
    await send(rig, at("2026-03-05", 20))
    assert smtp.received == []  # its own day is not past due
    await send(rig, at("2026-03-06"))
    [nudge] = smtp.received
    assert nudge["To"] == "cm-1@example.org"
    assert "Visit the job centre" in parts(nudge)["text/plain"]
    assert_person_first(nudge)


async def test_a_step_done_or_no_longer_needed_before_its_date_is_not_nudged(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token, celebrations=False)
    case = await records.open_case()
    goal = await records.goal(case)
    done = await records.step(case, goal, "Call the landlord", due_date="2026-03-05")
    dropped = await records.step(case, goal, "Fill in the form", due_date="2026-03-05")
    paused_goal = await records.goal(case, "Keep my flat", "A home of my own")
    waiting = await records.step(case, paused_goal, "Ask about rent help",
                                 due_date="2026-03-05")
    await rig.catch_up()
    rig.clock.now = at("2026-03-04")
    await records.complete(case, done)
    await step_status(records, case, dropped, "no_longer_needed")
    await records.call("POST", f"/v1/cases/{case}/goals/{paused_goal}/status",
                       {"status": "paused", "reason": "Jo wants to focus on work first"})
    await send(rig, at("2026-03-07"))
    assert smtp.received == []
    nudges = {ctx(r)["step_id"]: r for r in await rig.rows(kind="step_nudge")}
    for step in (done, dropped, waiting):
        assert nudges[step]["status"] == "cancelled", nudges[step]
        assert nudges[step]["last_error"].startswith("no longer called for"), nudges[step]


async def test_revised_step_and_goal_dates_reschedule_their_notices(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case, target_date="2026-03-10")
    step = await records.step(case, goal, "Visit the job centre", due_date="2026-03-05")
    await rig.catch_up()
    await records.revise_step(case, step, "2026-03-12")
    await records.call("PATCH", f"/v1/cases/{case}/goals/{goal}",
                       {"target_date": "2026-03-20", "reason": "agreed a new date"})
    await rig.catch_up()
    dated = {r["key"].split(":", 1)[0] + ":" + r["key"].rsplit(":", 1)[1]: r["status"]
             for r in await rig.rows(case_id=UUID(case))}
    assert dated == {"step_nudge:2026-03-05": "cancelled", "step_nudge:2026-03-12": "scheduled",
                     "goal_target_date:2026-03-10": "cancelled",
                     "goal_target_date:2026-03-20": "scheduled"}
    await send(rig, at("2026-03-11"))
    assert smtp.received == []
    await send(rig, at("2026-03-13"))
    await send(rig, at("2026-03-20"))
    assert len(smtp.received) == 2
    for message in smtp.received:
        assert_person_first(message)


# --------------------------------------------------------------------------------------------
# transfer, close, reopen
# --------------------------------------------------------------------------------------------


async def test_a_transfer_moves_waiting_notices_and_leaves_sent_ones(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Brief: "CaseTransferred → pending notices move to the new case manager". A small win
    sent stays cm-1's; one waiting on a retry (451) moves and goes to cm-2 with its
    Message-ID; the review's notices move; the overdue notice names cm-2."""
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case)
    first = await records.step(case, goal, "Call the landlord")
    second = await records.step(case, goal, "Visit the job centre")
    await records.complete(case, first)
    await records.agree(case)
    await send(rig, START)
    [sent] = smtp.received
    smtp.replies = ["451 4.3.0 try again later"]
    await records.complete(case, second)
    await send(rig, START)
    [retrying] = [r for r in await rig.rows(kind="small_win") if r["status"] == "failed"]
    await records.transfer(case, "cm-2")
    await rig.catch_up()
    rows = await rig.rows(case_id=UUID(case))
    wins = {ctx(r)["step_id"]: r for r in rows if r["kind"] == "small_win"}
    assert (wins[first]["recipient"], wins[first]["status"]) == ("cm-1", "sent")
    assert (wins[second]["recipient"], wins[second]["status"]) == ("cm-2", "failed")
    review_rows = [r for r in rows if r["kind"].startswith("review_")]
    assert {r["recipient"] for r in review_rows} == {"cm-2", "supervisors"}
    assert {ctx(r)["case_manager"] for r in review_rows
            if r["kind"] == "review_overdue"} == {"cm-2"}
    listed = await listing(rig, token(sub="cm-1"), "?recipient=cm-1")
    assert [n["kind"] for n in listed] == ["small_win"]
    rig.clock.now = START.replace(hour=10)
    await rig.dispatch()
    to_cm2 = [m for m in smtp.received if m["To"] == "cm-2@example.org"]
    assert len(to_cm2) == 2  # the handover and the small win retried
    again = next(m for m in to_cm2 if "small win" in str(m["Subject"]).lower())
    [(_, refused)] = smtp.refused
    assert again["Message-ID"] == refused["Message-ID"] == retrying["message_id"]
    assert sent["To"] == "cm-1@example.org"


async def test_closing_cancels_every_waiting_notice_retries_included(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case, target_date="2026-04-01")
    await records.step(case, goal, "Call the landlord", due_date="2026-03-05")
    await records.agree(case)
    smtp.replies = ["451 4.3.0 try again later"]
    await records.complete(case, await records.step(case, goal, "Visit the job centre"))
    await send(rig, START)
    await records.close(case)
    await send(rig, at("2026-05-10"))
    assert smtp.received == []
    rows = await rig.rows(case_id=UUID(case))
    assert {r["status"] for r in rows} == {"cancelled"}, [(r["key"], r["status"]) for r in rows]
    assert [(r["key"], r["last_error"]) for r in rows if "closed" not in r["last_error"].lower()] \
        == []
    response = await rig.client.get(f"/v1/schedule?case_id={case}", headers=bearer(token()))
    body = await response.json()
    assert (response.status, body["status"], body["pending"]) == (200, "closed", [])


async def test_reopening_brings_back_nudges_and_target_dates_and_a_new_agreement_its_review(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """0201: "CaseReopened → those the case again calls for come back: the nudges of its open
    steps and its goals' target dates, but not the review closing cancelled … agreeing the
    plan again schedules a new one". A nudge sent before the closing is not sent again, nor is
    a celebration cancelled by it."""
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case, target_date="2026-03-20")
    early = await records.step(case, goal, "Call the landlord", due_date="2026-03-03")
    late = await records.step(case, goal, "Visit the job centre", due_date="2026-03-10")
    await records.agree(case)
    await send(rig, at("2026-03-04"))
    assert [m["To"] for m in smtp.received] == ["cm-1@example.org"]  # the early step's nudge
    rig.clock.now = at("2026-03-05")
    await records.close(case)
    await rig.catch_up()
    rig.clock.now = at("2026-03-06")
    await records.reopen(case)
    await rig.catch_up()
    rows = await rig.rows(case_id=UUID(case))
    state = {(r["kind"], ctx(r).get("step_id")): r["status"] for r in rows}
    assert state[("step_nudge", early)] == "sent"
    assert state[("step_nudge", late)] == "scheduled"
    assert state[("goal_target_date", None)] == "scheduled"
    assert {s for (k, _), s in state.items() if k.startswith("review_")} == {"cancelled"}
    new_review = await records.agree(case, add_goal=False)
    await rig.catch_up()
    fresh = [r for r in await rig.rows(case_id=UUID(case)) if new_review in r["key"]]
    assert {r["kind"] for r in fresh if r["status"] == "scheduled"} == {
        "review_reminder", "review_due_today", "review_overdue"}
    await send(rig, at("2026-03-11"))
    await send(rig, at("2026-03-20"))
    assert len(smtp.received) == 3


async def test_a_step_past_its_date_while_the_case_was_closed_is_nudged_when_it_reopens(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Closed on 5 March with a step due on the 10th, reopened on the 20th with the step still
    open and its date past: the brief's "step past due → gentle nudge" holds for the reopened
    case; 0201 says reopening brings back "the nudges of its open steps"."""
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case)
    step = await records.step(case, goal, "Visit the job centre", due_date="2026-03-10")
    await rig.catch_up()
    rig.clock.now = at("2026-03-05")
    await records.close(case)
    await rig.catch_up()
    rig.clock.now = at("2026-03-20")
    await records.reopen(case)
    await send(rig, at("2026-03-20"))
    [nudge] = await rig.rows(kind="step_nudge")
    assert ctx(nudge)["step_id"] == step
    assert (nudge["status"], nudge["last_error"]) == ("sent", None)
    assert [m["To"] for m in smtp.received] == ["cm-1@example.org"]


async def test_a_step_recorded_with_a_date_already_past_is_nudged(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """A step written today that was due on 20 February: it is past due as it is recorded
    (brief: "step past due → gentle nudge"). Decision 0200 keeps `cause_recorded_at` so that
    such a step, which no earlier notifier could have seen, is nudged."""
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Visit the job centre", due_date="2026-02-20")
    await send(rig, START)
    [nudge] = await rig.rows(kind="step_nudge")
    assert (nudge["status"], nudge["last_error"]) == ("sent", None)
    assert [m["To"] for m in smtp.received] == ["cm-1@example.org"]


# --------------------------------------------------------------------------------------------
# preferences
# --------------------------------------------------------------------------------------------

GOOD = {"email": "cm-1@example.org", "delivery": "immediate", "timezone": "Europe/Berlin",
        "celebrations": True}


async def put(rig: NotifierRig, user: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await rig.client.put(f"/v1/preferences/{user}", json=body,
                                    headers=bearer(token))
    return response.status, await response.json()


BAD_BODIES = [
    {**GOOD, "timezone": "Europe/Berln"},
    {**GOOD, "timezone": "localtime"},
    {**GOOD, "timezone": "+02:00"},
    {**GOOD, "timezone": ""},
    {**GOOD, "delivery": "weekly"},
    {**GOOD, "delivery": None},
    {**GOOD, "celebrations": "yes"},
    {**GOOD, "celebrations": 1},
    {**GOOD, "email": "not an address"},
    {**GOOD, "email": "Jo <jo@example.org>"},
    {**GOOD, "quiet_hours": {"start": "9:00", "end": "07:00"}},
    {**GOOD, "quiet_hours": {"start": "24:00", "end": "07:00"}},
    {**GOOD, "quiet_hours": {"start": "22:60", "end": "07:00"}},
    {**GOOD, "quiet_hours": {"start": "22:00:00", "end": "07:00"}},
    {**GOOD, "quiet_hours": {"start": "22:00", "end": "22:00"}},
    {**GOOD, "quiet_hours": {"start": "22:00"}},
    {**GOOD, "quiet_hours": {"start": "22:00", "end": "07:00", "days": "weekdays"}},
    {**GOOD, "quiet_hours": "22:00-07:00"},
    {**GOOD, "extra": 1},
    {k: v for k, v in GOOD.items() if k != "timezone"},
    {k: v for k, v in GOOD.items() if k != "celebrations"},
    {k: v for k, v in GOOD.items() if k != "delivery"},
]


async def test_every_bad_preference_is_a_clear_4xx_and_a_good_one_is_stored_as_given(
        rig: NotifierRig, token: TokenFactory) -> None:
    assert (await put(rig, "cm-1", token(), GOOD))[0] == 200
    for body in BAD_BODIES:
        status, problem = await put(rig, "cm-1", token(), body)
        assert 400 <= status < 500, (body, status, problem)
        assert problem.get("detail"), (body, problem)
    response = await rig.client.get("/v1/preferences/cm-1", headers=bearer(token()))
    stored = await response.json()
    assert {k: stored[k] for k in GOOD} == GOOD
    assert stored["quiet_hours"] is None
    # and each field, given well, is stored as given
    body = {"email": "cm-1@example.org", "delivery": "daily_digest",
            "timezone": "America/Los_Angeles", "celebrations": False,
            "quiet_hours": {"start": "21:30", "end": "06:45"}}
    status, saved = await put(rig, "cm-1", token(), body)
    assert status == 200, saved
    assert {k: saved[k] for k in body} == body
    assert (saved["user"], saved["agency"], saved["role"]) == ("cm-1", "agency-a",
                                                               "case_manager")
    status, saved = await put(rig, "cm-1", token(), {**body, "quiet_hours": None})
    assert (status, saved["quiet_hours"]) == (200, None)


async def test_who_may_set_whose_preferences(rig: NotifierRig, token: TokenFactory) -> None:
    """Brief: "a user sets their own, a supervisor those of their agency"; others refused, and
    no request ever reaches another agency's entry."""
    body = {**GOOD, "email": "cm-2@example.org"}
    assert (await put(rig, "cm-2", token(sub="cm-2"), body))[0] == 200
    assert (await put(rig, "cm-2", token(sub="cm-1"), {**body, "email": "x@example.org"}))[0] \
        == 403
    assert (await put(rig, "cm-2", token(role="participant", sub="jo"),
                      {**body, "email": "x@example.org"}))[0] == 403
    assert (await put(rig, "cm-2", token(role="analyst", sub="an-1"),
                      {**body, "email": "x@example.org"}))[0] == 403
    assert (await put(rig, "cm-2", token(role="service", sub="notifier"),
                      {**body, "email": "x@example.org"}))[0] == 403
    # their own, but not a role their token does not give them
    status, problem = await put(rig, "cm-2", token(sub="cm-2"), {**body, "role": "supervisor"})
    assert (status, problem["errors"][0]["field"]) == (422, "body.role"), problem
    status, _ = await put(rig, "cm-2", token(role="supervisor", sub="sup-1"),
                          {**body, "email": "cm-2.new@example.org"})
    assert status == 200
    # a supervisor of another agency writes, at most, an entry of their own agency
    await put(rig, "cm-2", token(role="supervisor", sub="sup-b", agency="agency-b"),
              {**body, "email": "elsewhere@example.org"})
    response = await rig.client.get("/v1/preferences/cm-2", headers=bearer(token(sub="cm-2")))
    assert (await response.json())["email"] == "cm-2.new@example.org"


async def test_quiet_hours_hold_a_notice_until_they_end(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "08:00", "end": "12:00"})
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await send(rig, START)
    assert smtp.received == []
    [win] = await listing(rig, token(), f"?case_id={case}")
    assert (win["status"], win["deliver_after"]) == ("scheduled", at("2026-03-02", 12)
                                                     .isoformat())
    await send(rig, at("2026-03-02", 12))
    assert len(smtp.received) == 1


async def test_a_daily_digest_reader_gets_one_mail_at_the_digest_time(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    for n in range(2):
        await records.complete(case, await records.step(case, goal, f"Step {n}"))
    await send(rig, START)
    await rig.notifier.dispatcher.send_digests()
    assert smtp.received == []
    rig.clock.now = at("2026-03-03", 8)
    await rig.dispatch()
    await rig.notifier.dispatcher.send_digests()
    [digest] = smtp.received
    assert digest["To"] == "cm-1@example.org"
    text = parts(digest)["text/plain"]
    assert [n for n in ("Step 0", "Step 1") if n not in text] == []
    assert_person_first(digest)
    wins = await rig.rows(kind="small_win")
    assert {w["status"] for w in wins} == {"sent"}


# --------------------------------------------------------------------------------------------
# the listing and the schedule
# --------------------------------------------------------------------------------------------

FIELDS = {"kind", "recipient", "case_id", "due_at", "status", "attempts", "last_error"}


async def test_the_listing_filters_and_carries_what_the_brief_names(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    one = await records.open_case()
    two = (await records.call("POST", "/v1/cases", {
        "participant": {"name": "Sam Lee"}, "case_manager": "cm-2", "risk_level": "low"}, 201,
        token=token(sub="cm-2")))["case_id"]
    cm2 = token(sub="cm-2")
    goal = (await records.call("POST", f"/v1/cases/{two}/goals", {
        "title": "Find work", "domain": "employment", "source": "participant",
        "in_their_words": "Work I enjoy"}, 201,
        token=cm2))["id"]
    step = (await records.call("POST", f"/v1/cases/{two}/goals/{goal}/steps", {
        "description": "Call the bakery", "owner": "participant"}, 201, token=cm2))["id"]
    await records.agree(one)
    await records.call("POST", f"/v1/cases/{two}/steps/{step}/complete", {}, token=cm2)
    smtp.replies = ["550 5.1.1 mailbox unavailable"]
    await send(rig, START)
    sup = token(role="supervisor", sub="sup-1")
    everything = await listing(rig, sup)
    assert everything
    for item in everything:
        assert set(item) >= FIELDS, item
        assert item["status"] in {"scheduled", "sent", "failed", "dead", "cancelled"}
        assert isinstance(item["attempts"], int)
        datetime.fromisoformat(item["due_at"])
    assert {n["case_id"] for n in await listing(rig, sup, f"?case_id={one}")} == {one}
    assert {n["recipient"] for n in await listing(rig, sup, "?recipient=cm-2")} == {"cm-2"}
    [dead] = await listing(rig, sup, "?status=dead")
    assert (dead["kind"], dead["recipient"], dead["case_id"], dead["attempts"]) == (
        "small_win", "cm-2", two, 1)
    assert "550" in dead["last_error"], dead
    assert "mailbox unavailable" in dead["last_error"]
    scheduled = await listing(rig, sup, f"?status=scheduled&case_id={one}&recipient=cm-1")
    assert {n["kind"] for n in scheduled} == {"review_reminder", "review_due_today",
                                              "review_overdue"}
    response = await rig.client.get("/v1/notifications?status=lost", headers=bearer(sup))
    assert response.status == 422
    # a case manager lists only their own cases' notices
    assert {n["case_id"] for n in await listing(rig, token(), "")} == {one}


async def test_the_schedule_lists_what_is_still_to_be_sent_and_when(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await staff(rig, token)
    case = await records.open_case()
    goal = await records.goal(case)
    await records.agree(case)
    smtp.replies = ["451 4.3.0 try again later"]
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await send(rig, START)
    response = await rig.client.get(f"/v1/schedule?case_id={case}", headers=bearer(token()))
    assert response.status == 200
    body = await response.json()
    assert (body["case_id"], body["case_manager"], body["status"]) == (case, "cm-1", "open")
    pending = {(p["kind"], p["status"]) for p in body["pending"]}
    assert pending == {("review_reminder", "scheduled"), ("review_due_today", "scheduled"),
                       ("review_overdue", "scheduled"), ("small_win", "failed")}
    win = next(p for p in body["pending"] if p["kind"] == "small_win")
    assert datetime.fromisoformat(win["deliver_after"]) > START
    when = {p["kind"]: p["deliver_after"] for p in body["pending"]
            if p["recipient"] == "cm-1" and p["kind"] != "small_win"}
    assert when == {"review_reminder": at("2026-04-28").isoformat(),
                    "review_due_today": at("2026-05-01").isoformat(),
                    "review_overdue": at("2026-05-03").isoformat()}
    other = await rig.client.get(f"/v1/schedule?case_id={case}",
                                 headers=bearer(token(sub="cm-2")))
    assert other.status == 403
    elsewhere = await rig.client.get(
        f"/v1/schedule?case_id={case}",
        headers=bearer(token(role="supervisor", sub="sup-b", agency="agency-b")))
    assert elsewhere.status == 404


# --------------------------------------------------------------------------------------------
# delivery
# --------------------------------------------------------------------------------------------


async def test_4xx_is_retried_with_growing_waits_then_dead_with_one_message_id(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Brief: "retry with backoff on 4xx … dead-letter with the reason, a stable Message-ID per
    notification". The rig allows 4 attempts, 60 s base."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await rig.catch_up()
    smtp.replies = ["451 4.3.0 try again later"] * 3 + ["452 4.2.2 mailbox full"]
    waits = []
    for _ in range(4):
        await rig.dispatch()
        [row] = await rig.rows(kind="small_win")
        if row["status"] == "failed":
            waits.append(row["not_before"] - clock())
            clock.now = row["not_before"]
    assert (row["status"], row["attempts"], row["last_code"]) == ("dead", 4, 452), row
    assert "mailbox full" in row["last_error"]
    assert len(waits) == 3, waits
    assert waits[0] < waits[2], waits
    ids = {m["Message-ID"] for _, m in smtp.refused}
    assert ids == {row["message_id"]}
    response = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                     headers=bearer(token()))
    assert response.status == 202
    await rig.dispatch()
    [message] = smtp.received
    assert message["Message-ID"] == row["message_id"]


async def test_5xx_or_no_address_is_a_dead_letter_at_once_with_the_reason(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    smtp.replies = ["554 5.7.1 message refused by policy"]
    await send(rig, START)
    [row] = await rig.rows(kind="small_win")
    assert (row["status"], row["attempts"], row["last_code"]) == ("dead", 1, 554)
    assert "message refused by policy" in row["last_error"]
    clock_later = START.replace(hour=12)
    await send(rig, clock_later)
    assert (len(smtp.refused), smtp.received) == (1, [])
    # a case manager with no address on file: a dead letter saying what to set
    other = await records.open_case(case_manager="cm-1")
    await records.call("POST", f"/v1/cases/{other}/transfer",
                       {"case_manager": "cm-9", "reason": "caseload balancing"})
    cm9 = token(sub="cm-9")
    goal = (await records.call("POST", f"/v1/cases/{other}/goals", {
        "title": "Find work", "domain": "employment", "source": "participant",
        "in_their_words": "Work I enjoy"}, 201, token=cm9))["id"]
    step = (await records.call("POST", f"/v1/cases/{other}/goals/{goal}/steps", {
        "description": "Call the bakery", "owner": "participant"}, 201, token=cm9))["id"]
    await records.call("POST", f"/v1/cases/{other}/steps/{step}/complete", {}, token=cm9)
    await send(rig, clock_later)
    [row] = [r for r in await rig.rows(kind="small_win") if r["recipient"] == "cm-9"]
    assert row["status"] == "dead"
    assert "PUT /v1/preferences/cm-9" in row["last_error"]


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------


async def _story(records: Records, clock: FakeClock, token: TokenFactory) -> None:
    """Every rule the brief names, and the paths earlier replays did not walk: a review moved
    and moved back, a step reversed, a goal paused and resumed, a name changed, two transfers,
    a case closed and reopened and agreed again, a goal target revised and cleared."""
    case = await records.open_case()
    goal = await records.goal(case, target_date="2026-05-01")
    steps = [await records.step(case, goal, f"Step {n}", due_date="2026-03-10")
             for n in range(3)]
    review = await records.agree(case)
    await records.complete(case, steps[0])
    await step_status(records, case, steps[0], "in_progress")
    await reschedule(records, case, review, "2026-03-20")
    await reschedule(records, case, review, "2026-05-01")
    await records.call("POST", f"/v1/cases/{case}/goals/{goal}/status",
                       {"status": "paused", "reason": "Jo wants a break"})
    await records.call("POST", f"/v1/cases/{case}/goals/{goal}/status", {"status": "active"})
    await records.call("PATCH", f"/v1/cases/{case}/participant",
                       {"preferred_name": "Jojo", "reason": "asked to be called Jojo"})
    await records.call("PATCH", f"/v1/cases/{case}/goals/{goal}",
                       {"target_date": "2026-06-01", "reason": "agreed a new date"})
    clock.advance(days=10)
    await records.transfer(case, "cm-2")
    cm2, cm3 = token(sub="cm-2"), token(sub="cm-3")
    await records.transfer(case, "cm-3", token=cm2)
    other_goal = (await records.call("POST", f"/v1/cases/{case}/goals", {
        "title": "Keep my flat", "domain": "housing", "source": "participant",
        "in_their_words": "A home of my own"}, 201, token=cm3))["id"]
    await records.call("POST", f"/v1/cases/{case}/goals/{other_goal}/status",
                       {"status": "achieved"}, token=cm3)
    await records.call("POST", f"/v1/cases/{case}/close", {"reason": "moved away"}, token=cm3)
    clock.advance(days=2)
    await records.call("POST", f"/v1/cases/{case}/reopen", {"reason": "came back"}, token=cm3)
    await records.call("POST", f"/v1/cases/{case}/agreements", {
        "participation": "in_person", "present": ["Jojo"],
        "participant_statement": "Still my plan"}, 201, token=cm3)


async def test_replaying_the_feed_from_zero_rebuilds_the_same_schedule(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    await _story(records, clock, token)
    await rig.catch_up()
    built = await rig.snapshot()
    assert len(built) > 15
    await reset_checkpoint(rig.notifier.pool, FEED_CHECKPOINT, clock())
    await rig.catch_up()
    assert await rig.snapshot() == built
    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.advance(days=5)
    rebuilt = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await rebuilt.catch_up()
    assert await rebuilt.snapshot() == built
