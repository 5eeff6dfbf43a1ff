"""A case's whole life as its case manager, their supervisor and the participant live it (an
audit, twentieth session): the records service and the notifier end to end (real PostgreSQL,
a real SMTP server, one injected clock), the clock moved day by day with the notifier's
dispatch and digest jobs run at 08:00 and 09:00 each day, and at each step of the story
what each person's mailbox holds by then, and what it must not.

design.md, Notifier rules: "ReviewScheduled → reminder to the case manager N days before
(default 3) and on the day; review not held by due date + grace → overdue notice to case
manager and supervisor; ActionStepCompleted → small-win celebration; GoalStatusChanged
(achieved) → milestone celebration (to the participant too, if they opted in with an
address); step past due → gentle nudge; CaseTransferred → pending notices move to the new case
manager; CaseClosed → pending ones cancelled; a revised target date reschedules."

Each story asserts the exact list of mail that arrived over each stretch of days (day,
reader, subject): anything sent that the person should not get fails it as surely as
anything missing."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from email.message import Message
from typing import Any
from uuid import UUID

from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of

CM1, CM2, SUP, JO = ("cm-1@example.org", "cm-2@example.org", "sup-1@example.org",
                     "jo@example.org")
NUDGE = "Checking in on a step in Jo's plan"
HANDOVER = "A case has been transferred to you: Jo"
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
ASSUMED_PRONOUN = re.compile(r"\b(he|she|his|her|hers|him|they|them|their|theirs)\b", re.I)
DEFICIT_WORDS = re.compile(r"offender|non-compliant|failed to|refused", re.I)
TICKS = (time(8, 0), time(9, 0))  # the digest time, then the send time of dated notices

Arrival = tuple[str, str, str]  # (day, To, Subject)


def at(day: str, hour: int = 10, minute: int = 0) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(hour, minute), UTC)


def words(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Mail:
    day: str
    to: str
    subject: str
    text: str
    message: Message


@dataclass
class Story:
    """The notifier and the records service on one clock, moved forward tick by tick."""

    rig: NotifierRig
    records: Records
    smtp: SmtpServer
    clock: FakeClock
    ticks: tuple[time, ...] = TICKS
    log: list[Mail] = field(default_factory=list)
    seen: int = 0

    async def _tick(self) -> None:
        await self.rig.catch_up()
        await self.rig.notifier.dispatcher.send_digests()
        await self.rig.dispatch()
        await self.rig.dispatch()  # the supervisors' copies handed on by the first round
        for message in self.smtp.received[self.seen:]:
            self.log.append(Mail(self.clock.now.date().isoformat(), str(message["To"]),
                                 words(str(message["Subject"])), words(text_of(message)),
                                 message))
        self.seen = len(self.smtp.received)

    def _next_tick(self) -> datetime:
        now = self.clock.now
        for day in (now.date(), now.date() + timedelta(days=1)):
            for moment in self.ticks:
                candidate = datetime.combine(day, moment, UTC)
                if candidate > now:
                    return candidate
        raise AssertionError("unreachable")

    async def until(self, moment: datetime) -> list[Arrival]:
        """Every 08:00 and 09:00 up to ``moment``, the jobs run at each; the mail that
        arrived meanwhile."""
        start = len(self.log)
        assert moment >= self.clock.now
        while (tick := self._next_tick()) < moment:
            self.clock.now = tick
            await self._tick()
        self.clock.now = moment
        await self._tick()
        return [(m.day, m.to, m.subject) for m in self.log[start:]]

    async def now(self) -> list[Arrival]:
        """What arrives right after something was written (celebrations, handovers)."""
        return await self.until(self.clock.now)

    def mail(self, to: str, subject: str) -> list[Mail]:
        return [m for m in self.log if m.to == to and m.subject == subject]

    def one(self, to: str, subject: str) -> Mail:
        [found] = self.mail(to, subject)
        return found

    async def ids_stay_unique_and_match_their_rows(self) -> None:
        """Every message has its own Message-ID, the one its row holds."""
        ids = [str(m.message["Message-ID"]) for m in self.log]
        assert len(ids) == len(set(ids)), ids
        rows = {str(r["id"]): r for r in await self.rig.rows()}
        for mail in self.log:
            row = rows[str(mail.message["X-Casetrail-Notification"])]
            assert row["message_id"] == mail.message["Message-ID"], (mail.subject, row["key"])
            assert row["status"] == "sent", (mail.subject, row["key"], row["status"])


def staff_words_are_person_first(mail: Mail, case: str) -> None:
    """Staff mail names Jo as Jo asked to be called, with no pronoun guessed, no deficit
    word, and no internal id but the documented case line."""
    text = mail.text.replace(f"Case {UUID(case)}", "")
    assert f"Case {UUID(case)}" in mail.text, mail.text
    assert not UUID_TEXT.search(text + mail.subject), (mail.subject, text)
    assert "Jordan" not in text + mail.subject
    assert "Jo" in mail.subject
    assert not ASSUMED_PRONOUN.search(text + mail.subject), (mail.subject, text)
    assert not DEFICIT_WORDS.search(text + mail.subject), (mail.subject, text)


def participant_words_are_theirs(mail: Mail, case: str) -> None:
    """A participant's own mail carries no staff record link or id of any kind."""
    assert not UUID_TEXT.search(mail.text + mail.subject), mail.text
    assert "Case " not in mail.text
    assert case not in str(mail.message)
    assert not DEFICIT_WORDS.search(mail.text + mail.subject)


async def status(records: Records, case: str, what: str, status_: str, reason: str,
                 token: str | None = None) -> None:
    await records.call("POST", f"/v1/cases/{case}/{what}/status",
                       {"status": status_, "reason": reason}, token=token)


async def agree(records: Records, case: str, statement: str) -> str:
    result = await records.call("POST", f"/v1/cases/{case}/agreements", {
        "participation": "in_person", "present": ["Jo"], "participant_statement": statement},
        201)
    return next(e["data"]["review_id"] for e in result["events"]
                if e["type"] == "ReviewScheduled")


async def reschedule(records: Records, case: str, review: str, due: str, reason: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/reviews/{review}/reschedule",
                       {"due_date": due, "reason": reason})


async def next_review(records: Records, case: str) -> dict[str, Any]:
    plan = await records.call("GET", f"/v1/cases/{case}")
    return dict(plan["next_review"])


# --------------------------------------------------------------------------------------------
# story A: a first review cycle, with wins, a take-back, a digest month and a restart
# --------------------------------------------------------------------------------------------


async def test_a_plans_first_three_months_as_case_manager_supervisor_and_participant_read_them(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Agreed on Monday 2 March (moderate risk: review Friday 1 May). A step completed, taken
    back (its small win had gone: nothing unsaid, and a nudge once its date passed), done
    again; a month on daily digest with a small win withdrawn before the digest; the notifier
    restarted; a goal achieved late in the evening while Jo's quiet hours hold Jo's copy,
    taken back, achieved again; the review held a day early with the risk raised (the next
    one 30 days on, its reminders, its overdue notice to the supervisor too)."""
    story = Story(rig, records, smtp, clock)
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"))
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]),
                        quiet_hours={"start": "20:00", "end": "08:00"})
    work = await records.goal(case, "Find steady work", "A job where I use my hands")
    cv = await records.step(case, work, "Update my CV", due_date="2026-03-10")
    agency = await records.step(case, work, "Call the staffing agency", due_date="2026-03-20")
    flat = await records.goal(case, "Keep my flat", "A home of my own")
    first_review = await agree(records, case, "This is my plan, in my words")
    assert (await next_review(records, case))["due_date"] == "2026-05-01"
    assert await story.now() == []

    # a step done on Saturday, then taken back on Sunday: the small win already went
    clock.now = at("2026-03-07", 11)
    await records.complete(case, cv, note="Sent it to three places")
    assert await story.now() == [("2026-03-07", CM1, "A small win for Jo: Update my CV")]
    win = story.one(CM1, "A small win for Jo: Update my CV")
    assert 'Jo completed the step "Update my CV". It is a step toward "A job where I use my' \
        ' hands". Note: Sent it to three places.' in win.text
    staff_words_are_person_first(win, case)
    assert await story.until(at("2026-03-08", 10)) == []
    await status(records, case, f"steps/{cv}", "in_progress", "the CV still needs references")
    assert await story.now() == []
    # open again and past its date (Tuesday 10 March): one gentle nudge, the day after
    assert await story.until(at("2026-03-12", 10)) == [("2026-03-11", CM1, NUDGE)]
    nudge = story.one(CM1, NUDGE)
    assert 'The step "Update my CV" had a hoped-for date of Tuesday 10 March 2026.' in nudge.text
    assert "a quick check-in with Jo can show what support would help" in nudge.text
    staff_words_are_person_first(nudge, case)
    # done again: a new completion in the record, celebrated (the first went out already)
    await records.complete(case, cv, note="References added")
    assert await story.now() == [("2026-03-12", CM1, "A small win for Jo: Update my CV")]
    assert "Note: References added." in story.log[-1].text

    # a month on the daily digest: a small win withdrawn before the digest leaves no digest
    assert await story.until(at("2026-03-16", 10)) == []
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    assert await story.until(at("2026-03-17", 10)) == []
    await records.complete(case, agency)
    assert await story.now() == []  # waits for Wednesday's digest
    assert await story.until(at("2026-03-17", 15)) == []
    await status(records, case, f"steps/{agency}", "in_progress", "no answer from the agency")
    assert await story.now() == []
    # no empty digest on Wednesday; Saturday's digest carries the nudge of the step it is
    # past its date (Friday 20 March) on the morning of its day
    assert await story.until(at("2026-03-21", 10)) == [
        ("2026-03-21", CM1, "Your Casetrail summary: 1 update")]
    digest = story.log[-1].text
    assert f"- {NUDGE}" in digest
    assert 'The step "Call the staffing agency" had a hoped-for date of Friday 20 March 2026.' \
        in digest
    assert "A small win" not in digest
    assert f"Case {UUID(case)}" in digest
    # Sunday afternoon: done after all, into Monday's digest; back on immediate mail an hour
    # later, the small win goes then (a change of delivery applies to what waits), once
    assert await story.until(at("2026-03-22", 15)) == []
    await records.complete(case, agency, note="Starts on Monday")
    assert await story.now() == []
    assert await story.until(at("2026-03-22", 16)) == []
    await rig.set_prefs("cm-1", token(), delivery="immediate")
    assert await story.now() == [
        ("2026-03-22", CM1, "A small win for Jo: Call the staffing agency")]
    assert "Note: Starts on Monday." in story.log[-1].text
    assert await story.until(at("2026-03-24", 10)) == []

    # the notifier restarts: the schedule, its ids and Message-IDs are the same rows
    assert await story.until(at("2026-04-10", 12)) == []
    before = {r["key"]: (r["id"], r["message_id"], r["due_at"], r["status"])
              for r in await rig.rows()}
    reminder_key = f"review_reminder:{first_review}:2026-05-01:3d"
    assert before[reminder_key][3] == "scheduled"
    story.rig = rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp,
                                     clock)
    assert await story.now() == []
    assert {r["key"]: (r["id"], r["message_id"], r["due_at"], r["status"])
            for r in await rig.rows()} == before

    # a goal achieved at 21:00: the case manager hears at once, Jo's copy waits out Jo's
    # quiet hours (until 08:00) and is withdrawn when the achievement is taken back at 22:00
    assert await story.until(at("2026-04-15", 21)) == []
    await records.achieve(case, flat)
    milestone = 'Milestone: Jo achieved "A home of my own"'
    assert await story.now() == [("2026-04-15", CM1, milestone)]
    staff_words_are_person_first(story.log[-1], case)
    assert 'Jo achieved the goal "Keep my flat". In Jo\'s words: "A home of my own".' \
        in story.log[-1].text
    assert await story.until(at("2026-04-15", 22)) == []
    await status(records, case, f"goals/{flat}", "active", "recorded on the wrong goal")
    assert await story.until(at("2026-04-16", 10)) == []  # Jo is not congratulated
    # achieved for real on Monday: both hear, Jo in Jo's own words
    assert await story.until(at("2026-04-20", 11)) == []
    await records.achieve(case, flat)
    assert sorted(await story.now()) == [("2026-04-20", CM1, milestone),
                                         ("2026-04-20", JO, "Congratulations, Jo: you did it!")]
    to_jo = story.one(JO, "Congratulations, Jo: you did it!")
    assert to_jo.text.startswith("Hello Jo, You reached your goal: \"A home of my own\".")
    assert "You are receiving this because you asked to hear about your milestones." \
        in to_jo.text
    participant_words_are_theirs(to_jo, case)

    # the review: a reminder 3 days before (under the Message-ID its row had before the
    # restart), then held a day early with the risk raised
    assert await story.until(at("2026-04-30", 10)) == [
        ("2026-04-28", CM1, "Plan review with Jo is due on Friday 1 May 2026 (in 3 days)")]
    reminder = story.log[-1]
    assert reminder.message["Message-ID"] == before[reminder_key][1]
    assert "Jo's plan review is due on Friday 1 May 2026, in 3 days." in reminder.text
    staff_words_are_person_first(reminder, case)
    await records.call("POST", f"/v1/cases/{case}/reviews/{first_review}/held", {
        "summary": "Work is going well; housing needs more support", "risk_level": "high",
        "participant_statement": "I want to meet more often for now"})
    following = await next_review(records, case)
    assert (following["due_date"], following["interval_days"]) == ("2026-05-30", 30)
    assert await story.now() == []
    # nothing on Friday 1 May nor an overdue notice on 3 May; the next review's reminders,
    # and, when it is not recorded by Monday 1 June, the overdue notice to both
    overdue = "Plan review with Jo not yet recorded (due Saturday 30 May 2026)"
    assert await story.until(at("2026-06-02", 10)) == [
        ("2026-05-27", CM1, "Plan review with Jo is due on Saturday 30 May 2026 (in 3 days)"),
        ("2026-05-30", CM1, "Plan review with Jo is due today"),
        ("2026-06-01", CM1, overdue), ("2026-06-01", SUP, overdue)]
    for reader in (CM1, SUP):
        notice = story.one(reader, overdue)
        assert "The plan review with Jo was due on Saturday 30 May 2026 and has not been" \
            " recorded yet (case manager: cm-1)." in notice.text
        staff_words_are_person_first(notice, case)
    staff_words_are_person_first(story.one(CM1, "Plan review with Jo is due today"), case)
    assert not story.mail(JO, milestone)
    assert [m.to for m in story.log].count(JO) == 1
    await story.ids_stay_unique_and_match_their_rows()


# --------------------------------------------------------------------------------------------
# story B: dates moved, and the case handed over and back around a reminder
# --------------------------------------------------------------------------------------------


async def test_a_case_handed_over_and_back_around_its_review_as_each_reader_lives_it(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The review is moved twice and a step's date once earlier and once later (each time
    one nudge, never two for the step); the supervisor hands the case to cm-2 the day before
    the reminder, cm-2 hands it back two days later; the review is held late."""
    story = Story(rig, records, smtp, clock)
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    await rig.set_prefs("sup-1", supervisor)
    case = await records.open_case()
    flat = await records.goal(case, "Keep my flat", "A home of my own")
    housing = await records.step(case, flat, "Call the housing office", due_date="2026-03-18")
    await records.step(case, flat, "Ask the landlord about the repairs", owner="case_manager",
                       due_date="2026-04-02")
    review = await agree(records, case, "I want to stay where I am")
    assert await story.now() == []

    # the review moved to 20 March, then to 25 March; the step's date to 12, then 16 March
    assert await story.until(at("2026-03-03")) == []
    await reschedule(records, case, review, "2026-03-20", "Jo asked to meet before renewal")
    assert await story.until(at("2026-03-05")) == []
    await records.revise_step(case, housing, "2026-03-12")
    assert await story.until(at("2026-03-10")) == []
    await records.revise_step(case, housing, "2026-03-16")
    assert await story.until(at("2026-03-12")) == []
    await reschedule(records, case, review, "2026-03-25", "the housing officer comes then")
    # one nudge, the day after the date the step now has; no reminder of 20 March
    assert await story.until(at("2026-03-21")) == [("2026-03-17", CM1, NUDGE)]
    nudge = story.one(CM1, NUDGE)
    assert 'The step "Call the housing office" had a hoped-for date of Monday 16 March 2026.' \
        in nudge.text
    assert 'It is a step toward "A home of my own".' in nudge.text
    staff_words_are_person_first(nudge, case)

    # Saturday: the supervisor hands the case to cm-2, the day before the reminder
    await records.call("POST", f"/v1/cases/{case}/transfer",
                       {"case_manager": "cm-2", "reason": "cm-2 knows the housing team"},
                       token=supervisor)
    assert await story.now() == [("2026-03-21", CM2, HANDOVER)]
    handover = story.one(CM2, HANDOVER).text
    assert "You are now the case manager for Jo: the case was transferred to you from cm-1" \
        " by sup-1. The reason given: cm-2 knows the housing team." in handover
    assert "The next plan review with Jo is due on Wednesday 25 March 2026 (in 4 days)." \
        in handover
    assert '- "Call the housing office" (hoped-for date: Monday 16 March 2026)' in handover
    assert "Ask the landlord about the repairs" not in handover  # its date is ahead
    staff_words_are_person_first(story.one(CM2, HANDOVER), case)
    # Sunday's reminder is cm-2's, not cm-1's
    reminder = "Plan review with Jo is due on Wednesday 25 March 2026 (in 3 days)"
    assert await story.until(at("2026-03-23")) == [("2026-03-22", CM2, reminder)]

    # Monday: cm-2 hands it back
    await records.call("POST", f"/v1/cases/{case}/transfer",
                       {"case_manager": "cm-1", "reason": "the housing team is full"},
                       token=token(sub="cm-2"))
    assert await story.now() == [("2026-03-23", CM1, HANDOVER)]
    back = story.one(CM1, HANDOVER).text
    assert "the case was transferred to you from cm-2. The reason given: the housing team is" \
        " full." in back
    assert "by cm-2" not in back
    assert "The next plan review with Jo is due on Wednesday 25 March 2026 (in 2 days)." in back
    assert '- "Call the housing office" (hoped-for date: Monday 16 March 2026)' in back
    # due today and, not held, overdue: to cm-1 (and the supervisor, naming cm-1); cm-2
    # hears nothing more of a case no longer theirs
    overdue = "Plan review with Jo not yet recorded (due Wednesday 25 March 2026)"
    assert await story.until(at("2026-03-28")) == [
        ("2026-03-25", CM1, "Plan review with Jo is due today"),
        ("2026-03-27", CM1, overdue), ("2026-03-27", SUP, overdue)]
    assert "(case manager: cm-1)" in story.one(SUP, overdue).text

    # held late on Saturday: the next review in 60 days; the case manager's own step nudged
    await records.hold_review(case, review)
    assert (await next_review(records, case))["due_date"] == "2026-05-27"
    assert await story.until(at("2026-04-05")) == [("2026-04-03", CM1, NUDGE)]
    own = story.mail(CM1, NUDGE)[-1].text
    assert 'The step "Ask the landlord about the repairs" had a hoped-for date of Thursday' \
        ' 2 April 2026. It is a step toward "A home of my own". The case manager took this' \
        " step on." in own
    assert "if the date no longer fits, agree a new one with Jo." in own
    assert sum("Call the housing office" in m.text for m in story.log
               if m.subject == NUDGE) == 1
    assert not [m for m in story.log if m.to == CM2 and m.subject != HANDOVER
                and m.subject != reminder]
    await story.ids_stay_unique_and_match_their_rows()


# --------------------------------------------------------------------------------------------
# story C: closed with notices waiting, reopened, agreed again; a supervisor added late
# --------------------------------------------------------------------------------------------


async def test_a_case_closed_with_mail_waiting_and_reopened_sends_only_what_the_new_plan_calls_for(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """cm-1 reads a daily digest. The case (high risk: review Wednesday 1 April) is closed
    with a small win in tomorrow's digest, a nudge and the review's reminders waiting: none
    is sent, then or after. Reopened and agreed again, only the new review's notices come.
    The agency has no supervisor in the directory when the new review goes overdue; one is
    added that morning and gets the notice."""
    story = Story(rig, records, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case(risk="high")
    licence = await records.goal(case, "Get my driving licence back", "Driving to work again",
                                 target_date="2026-03-30")
    await records.step(case, licence, "Book the eyesight test", due_date="2026-03-12")
    papers = await records.step(case, licence, "Find the old paperwork", due_date="2026-03-20")
    await records.step(case, licence, "Take a practice drive", due_date="2026-04-15")
    first_review = await agree(records, case, "Yes, this is what I want")
    assert (await next_review(records, case))["due_date"] == "2026-04-01"

    assert await story.until(at("2026-03-11")) == []
    await records.complete(case, papers, note="Found them in a shoebox")
    assert await story.now() == []  # into Thursday's digest
    assert await story.until(at("2026-03-11", 16)) == []
    await records.close(case)
    assert await story.now() == []
    waiting = await rig.rows(case_id=UUID(case), status="scheduled")
    assert waiting == [], [(r["key"], r["status"]) for r in waiting]
    schedule = await rig.client.get(f"/v1/schedule?case_id={case}", headers=bearer(token()))
    assert schedule.status == 200, await schedule.text()
    assert (await schedule.json())["pending"] == []
    # no digest on Thursday, no nudge on Friday: nothing at all while the case is closed
    assert await story.until(at("2026-03-16")) == []

    # reopened on Monday and agreed again on Tuesday: a new review, 30 days on
    assert await story.until(at("2026-03-16", 10)) == []
    await records.reopen(case)
    assert await story.now() == []
    # the eyesight test's nudge (its date was 12 March) came back with the reopening, and
    # comes in the next morning's digest (0201: counted from the reopening, not stale)
    assert await story.until(at("2026-03-17")) == [
        ("2026-03-17", CM1, "Your Casetrail summary: 1 update")]
    assert 'The step "Book the eyesight test" had a hoped-for date of Thursday 12 March' \
        ' 2026.' in story.log[-1].text
    second_review = await agree(records, case, "I still want my licence back")
    assert second_review != first_review
    assert (await next_review(records, case))["due_date"] == "2026-04-16"
    # the goal's target date (30 March) came back with the reopening (0201); the old
    # review's reminder (29 March), day (1 April) and overdue notice (3 April) never come;
    # the new review's reminder and day come in the digest of their morning, the day with
    # the practice drive's nudge (its date was 15 April)
    assert await story.until(at("2026-04-17")) == [
        ("2026-03-30", CM1, "Your Casetrail summary: 1 update"),
        ("2026-04-13", CM1, "Your Casetrail summary: 1 update"),
        ("2026-04-16", CM1, "Your Casetrail summary: 2 updates")]
    target, first, second = story.log[-3:]
    assert "- Target date today for Jo's goal \"Get my driving licence back\"" in target.text
    assert "Plan review with Jo is due on Thursday 16 April 2026 (in 3 days)" in first.text
    assert "Plan review with Jo is due today" in second.text
    assert 'The step "Take a practice drive" had a hoped-for date of Wednesday 15 April 2026.' \
        in second.text
    assert "Wednesday 1 April" not in target.text + first.text + second.text
    # the win closing cancelled is not sent; the eyesight test's nudge came once, above
    assert "Find the old paperwork" not in target.text + first.text + second.text
    assert "Book the eyesight test" not in target.text + first.text + second.text

    # not held: the overdue notice on Saturday in cm-1's digest; no supervisor is in the
    # directory, so the supervisors' copy waits as a dead letter saying what to do
    overdue = "Plan review with Jo not yet recorded (due Thursday 16 April 2026)"
    assert await story.until(at("2026-04-18")) == [
        ("2026-04-18", CM1, "Your Casetrail summary: 1 update")]
    assert overdue in story.log[-1].text
    [group] = await rig.rows(key=f"review_overdue:{second_review}:2026-04-16:supervisors")
    assert group["status"] == "dead"
    assert "in the directory" in str(group["last_error"])
    # the supervisor is added at 11:00 and hears of it then, naming the case manager
    assert await story.until(at("2026-04-18", 11)) == []
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"))
    assert await story.now() == [("2026-04-18", SUP, overdue)]
    notice = story.one(SUP, overdue)
    assert "(case manager: cm-1)" in notice.text
    staff_words_are_person_first(notice, case)
    assert await story.until(at("2026-04-21")) == []
    await story.ids_stay_unique_and_match_their_rows()



# --------------------------------------------------------------------------------------------
# story D: a case manager in Los Angeles, a supervisor on a digest, a new name, moved dates
# --------------------------------------------------------------------------------------------


async def test_a_case_read_from_los_angeles_and_a_supervisors_digest_across_a_restart(
        fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """cm-1 works in Los Angeles (the clocks go forward on 8 March): every dated notice
    comes at 09:00 there (16:00 UTC once summer time began). A goal's target date is moved
    earlier and then later (one note, on the date it now has); Jo asks to be called Joey,
    and every notice after says Joey; a support's step is nudged naming the support. sup-1
    reads a daily digest: the overdue notice reaches them the next morning (0203, "Not
    covered"), under the Message-ID its digest had before the notifier restarted."""
    story = Story(rig, records, smtp, clock, ticks=(time(8), time(9), time(16), time(17)))
    await rig.set_prefs("cm-1", token(), timezone="America/Los_Angeles")
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"), delivery="daily_digest")
    case = await records.open_case(risk="high")
    may = (await records.call("POST", f"/v1/cases/{case}/supports", {"name": "Aunt May"},
                              201))["id"]
    home = await records.goal(case, "Move into my own place", "Keys to my own front door",
                              target_date="2026-03-20")
    await records.step(case, home, "Visit two flats", owner="support", support_id=may,
                       due_date="2026-03-13")
    review = await agree(records, case, "I am ready to move")
    assert (await next_review(records, case))["due_date"] == "2026-04-01"

    assert await story.until(at("2026-03-04", 17)) == []
    await records.call("PATCH", f"/v1/cases/{case}/goals/{home}",
                       {"target_date": "2026-03-16", "reason": "a flat came up sooner"})
    assert await story.until(at("2026-03-10", 17)) == []
    await records.call("PATCH", f"/v1/cases/{case}/goals/{home}",
                       {"target_date": "2026-03-24", "reason": "the flat fell through"})
    assert await story.until(at("2026-03-12", 17)) == []
    await records.call("PATCH", f"/v1/cases/{case}/participant",
                       {"preferred_name": "Joey", "reason": "asked to be called Joey"})
    target = 'Target date today for Joey\'s goal "Move into my own place"'
    nudge = "Checking in on a step in Joey's plan"
    assert await story.until(at("2026-04-02")) == [
        ("2026-03-14", CM1, nudge), ("2026-03-24", CM1, target),
        ("2026-03-29", CM1, "Plan review with Joey is due on Wednesday 1 April 2026 (in 3 days)"),
        ("2026-04-01", CM1, "Plan review with Joey is due today")]
    for mail in story.log:
        assert mail.message["Date"].endswith("16:00:00 +0000"), (mail.subject, mail.message)
        assert not re.search(r"\bJo\b", mail.subject + mail.text), mail.text
        staff_words_are_person_first(mail, case)
    assert ('Aunt May, one of Joey\'s supports, took this step on. Plans change, and that is'
            " fine: a quick check-in with Joey and Aunt May can show what would help"
            ) in story.one(CM1, nudge).text
    assert ("The target date for the goal \"Move into my own place\" in Joey's plan is today"
            ' (Tuesday 24 March 2026). In Joey\'s words: "Keys to my own front door".'
            ) in story.one(CM1, target).text

    # Friday 3 April, 09:00 UTC: the supervisors' copy is handed on to sup-1's digest of
    # Saturday; the notifier restarts at noon
    assert await story.until(at("2026-04-03", 12)) == []
    [waiting] = await rig.rows(recipient="sup-1", kind="daily_digest")
    assert waiting["due_at"] == at("2026-04-04", 8)
    story.rig = rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp,
                                     clock)
    overdue = "Plan review with Joey not yet recorded (due Wednesday 1 April 2026)"
    assert await story.until(at("2026-04-04", 10)) == [
        ("2026-04-03", CM1, overdue),
        ("2026-04-04", SUP, "Your Casetrail summary: 1 update")]
    digest = story.log[-1]
    assert digest.message["Message-ID"] == waiting["message_id"]
    assert f"- {overdue}" in digest.text
    assert "(case manager: cm-1)" in digest.text
    assert f"Case {UUID(case)}" in digest.text
    await records.hold_review(case, review)
    assert await story.until(at("2026-04-08")) == []
    await story.ids_stay_unique_and_match_their_rows()


# --------------------------------------------------------------------------------------------
# story E: a caseload on a digest, one case handed to a colleague not yet in the directory
# --------------------------------------------------------------------------------------------


async def test_a_case_handed_to_a_new_colleague_before_their_entry_exists_reaches_them_later(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """cm-1 reads a daily digest over two cases, Jo's and Sam's. With small wins of both
    waiting in Tuesday's digest, Jo's case goes to cm-3, who joined this week and has no
    entry yet: cm-1's digest holds Sam's win only. What waits for cm-3 (the handover, Jo's
    win, the review's reminder) cannot be sent until cm-3's entry is added on Wednesday,
    and then goes at once (0203), the reminder saying "in 2 days" as read that day."""
    story = Story(rig, records, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"))
    jo = await records.open_case()
    sam = await records.open_case(participant={"name": "Sam Okafor", "preferred_name": "Sam"})
    jo_goal = await records.goal(jo, "Keep my flat", "A home of my own")
    jo_step = await records.step(jo, jo_goal, "Pay the first rent instalment")
    sam_goal = await records.goal(sam, "Get back to college", "Finish what I started")
    sam_step = await records.step(sam, sam_goal, "Ask for the enrolment form")
    jo_review = await agree(records, jo, "This plan is mine")
    await agree(records, sam, "I agree with this plan")
    await reschedule(records, jo, jo_review, "2026-03-20", "Jo's tenancy review is then")
    assert await story.until(at("2026-03-16")) == []

    await records.complete(jo, jo_step)
    await records.complete(sam, sam_step)
    assert await story.now() == []  # both wait for Tuesday's digest
    assert await story.until(at("2026-03-16", 12)) == []
    await records.call("POST", f"/v1/cases/{jo}/transfer",
                       {"case_manager": "cm-3", "reason": "cm-3 joins the housing team"},
                       token=token(role="supervisor", sub="sup-1"))
    assert await story.now() == []  # cm-3 has no entry: nowhere to send
    assert await story.until(at("2026-03-18", 10)) == [
        ("2026-03-17", CM1, "Your Casetrail summary: 1 update")]
    digest = story.log[-1].text
    assert "A small win for Sam: Ask for the enrolment form" in digest
    assert "Jo" not in digest  # no longer cm-1's case

    await rig.set_prefs("cm-3", token(sub="cm-3"))
    arrived = await story.now()
    assert sorted(arrived) == sorted([
        ("2026-03-18", "cm-3@example.org", HANDOVER),
        ("2026-03-18", "cm-3@example.org", "A small win for Jo: Pay the first rent instalment"),
        ("2026-03-18", "cm-3@example.org",
         "Plan review with Jo is due on Friday 20 March 2026 (in 2 days)")])
    handover = story.one("cm-3@example.org", HANDOVER)
    assert "transferred to you from cm-1 by sup-1. The reason given: cm-3 joins the housing" \
        " team." in handover.text
    assert "The next plan review with Jo is due on Friday 20 March 2026" in handover.text
    reminder = story.mail("cm-3@example.org",
                          "Plan review with Jo is due on Friday 20 March 2026 (in 2 days)")[0]
    assert "Jo's plan review is due on Friday 20 March 2026, in 2 days." in reminder.text
    assert await story.until(at("2026-03-20", 10)) == [
        ("2026-03-20", "cm-3@example.org", "Plan review with Jo is due today")]
    await records.call(
        "POST", f"/v1/cases/{jo}/reviews/{jo_review}/held", {"summary": "Rent is paid"},
        token=token(sub="cm-3"))
    assert await story.until(at("2026-03-24", 10)) == []
    assert not [m for m in story.log if m.to == CM1 and "Jo" in m.subject + m.text]
    await story.ids_stay_unique_and_match_their_rows()


# --------------------------------------------------------------------------------------------
# story F: quiet mornings, a goal paused and resumed, a milestone waiting across a restart
# --------------------------------------------------------------------------------------------


async def test_quiet_mornings_a_paused_goal_and_a_milestone_waiting_across_a_restart(
        fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """cm-1 keeps 08:00-12:00 free of mail; Jo opted in, with quiet evenings (20:00-08:00).
    A step done while its nudge waits out the quiet morning is celebrated, not nudged. A
    goal paused loses its step's nudge; resumed the day after the nudge's date, the nudge
    comes. A goal achieved at 21:00: cm-1 hears at once, Jo at 08:00, after a restart at
    night, under the Message-ID the row had before it."""
    story = Story(rig, records, smtp, clock, ticks=(time(8), time(9), time(12)))
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "08:00", "end": "12:00"})
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]),
                        quiet_hours={"start": "20:00", "end": "08:00"})
    walk = await records.goal(case, "Walk to the shops on my own", "Going out without help")
    corner = await records.step(case, walk, "Walk to the corner shop", due_date="2026-03-09")
    await records.step(case, walk, "Walk to the market", due_date="2026-03-16")
    cook = await records.goal(case, "Cook a meal a week", "Cooking for my friends")
    await records.step(case, cook, "Buy a cookbook", due_date="2026-03-12")
    await agree(records, case, "I want to get out more")
    assert await story.until(at("2026-03-10")) == []  # the nudge waits for 12:00

    await records.complete(case, corner, note="Went with a friend the first time")
    assert await story.until(at("2026-03-10", 13)) == [
        ("2026-03-10", CM1, "A small win for Jo: Walk to the corner shop")]
    [nudge] = await rig.rows(kind="step_nudge", key=f"step_nudge:{corner}:2026-03-09")
    assert nudge["status"] == "cancelled"

    assert await story.until(at("2026-03-11")) == []
    await status(records, case, f"goals/{cook}", "paused", "Jo's kitchen is being repaired")
    assert await story.until(at("2026-03-14")) == []  # no nudge on 13 March
    await status(records, case, f"goals/{cook}", "active", "the kitchen is ready")
    assert await story.until(at("2026-03-14", 13)) == [("2026-03-14", CM1, NUDGE)]
    assert 'The step "Buy a cookbook" had a hoped-for date of Thursday 12 March 2026.' \
        in story.log[-1].text

    assert await story.until(at("2026-03-16", 21)) == []
    await records.achieve(case, walk)
    milestone = 'Milestone: Jo achieved "Going out without help"'
    assert await story.now() == [("2026-03-16", CM1, milestone)]
    [to_jo] = await rig.rows(kind="milestone", recipient=f"participant:{case}")
    assert to_jo["status"] == "scheduled"
    assert await story.until(at("2026-03-16", 23)) == []
    story.rig = rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp,
                                     clock)
    # the market walk's goal is achieved: no nudge for it on the 17th
    assert await story.until(at("2026-03-20")) == [
        ("2026-03-17", JO, "Congratulations, Jo: you did it!")]
    congratulations = story.log[-1]
    assert congratulations.message["Message-ID"] == to_jo["message_id"]
    assert 'You reached your goal: "Going out without help".' in congratulations.text
    participant_words_are_theirs(congratulations, case)
    await story.ids_stay_unique_and_match_their_rows()


# --------------------------------------------------------------------------------------------
# story G: a review brought forward inside the reminder window; closed with the supervisor's
# copy in a digest; reopened the same afternoon
# --------------------------------------------------------------------------------------------


async def test_a_review_brought_forward_then_a_closing_before_the_supervisors_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """On Wednesday the review is brought forward to Friday: no "in 3 days" reminder after
    its day, the day's notice on Friday. Not held, the overdue notice goes to cm-1 on
    Sunday, and the supervisors' copy into sup-1's Monday digest; the case is closed on
    Sunday afternoon and reopened an hour later: sup-1's Monday digest does not tell of a
    review the closing cancelled, and nothing of it comes back."""
    story = Story(rig, records, smtp, clock)
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"), delivery="daily_digest")
    case = await records.open_case()
    await records.goal(case, "Keep my flat", "A home of my own")
    review = await agree(records, case, "Let's do this")
    assert await story.until(at("2026-03-04")) == []
    await reschedule(records, case, review, "2026-03-06", "Jo moves house next week")
    assert await story.now() == []
    overdue = "Plan review with Jo not yet recorded (due Friday 6 March 2026)"
    assert await story.until(at("2026-03-08", 15)) == [
        ("2026-03-06", CM1, "Plan review with Jo is due today"),
        ("2026-03-08", CM1, overdue)]
    [copy] = await rig.rows(recipient="sup-1", kind="review_overdue")
    assert copy["status"] == "scheduled"
    await records.close(case)
    assert await story.until(at("2026-03-08", 16)) == []
    await records.reopen(case)
    assert await story.until(at("2026-03-10")) == []  # no digest on Monday
    [copy] = await rig.rows(recipient="sup-1", kind="review_overdue")
    assert copy["status"] == "cancelled"
    await agree(records, case, "Same plan, new flat")
    assert (await next_review(records, case))["due_date"] == "2026-05-09"
    assert await story.until(at("2026-03-20")) == []
    await story.ids_stay_unique_and_match_their_rows()
