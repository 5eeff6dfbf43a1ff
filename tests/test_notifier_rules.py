"""The notifier's pure parts: the case fold, the notice rules, retry policy and delivery
decisions. No I/O: each case is a sequence of feed items in, notices out."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas import events as ev
from services.notifier.casemodel import CaseModel, FeedItem, evolve
from services.notifier.delivery import (
    Cancel,
    DatedTiming,
    Dead,
    Defer,
    FanOut,
    Recipient,
    RetryPolicy,
    Send,
    ToDigest,
    classify,
    decide,
    next_local_time,
    quiet_until,
)
from services.notifier.rules import (
    Kind,
    RuleSettings,
    event_notices,
    reworded_celebrations,
    timed_notices,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import Row
from services.notifier.templates import FOOTER, render

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RULES = RuleSettings()


class Case:
    """Builds a case event by event, like the feed would deliver it."""

    def __init__(self) -> None:
        self.case_id = uuid4()
        self.version = 0
        self.state: CaseModel | None = None
        self.notices: list[Any] = []
        self.at = T0

    def add(self, payload: ev.EventPayload) -> Case:
        self.version += 1
        item = FeedItem("cp", self.case_id, self.version, uuid4(), payload.event_type,
                        payload.schema_version, ev.dump_event(payload), "agency-a", self.at)
        self.state = evolve(self.state, item, payload)
        assert self.state is not None
        self.notices += event_notices(self.state, item, payload)
        return self

    def timed(self, rules: RuleSettings = RULES) -> dict[str, datetime]:
        assert self.state is not None
        return {n.key.split(":")[0] + ":" + n.recipient: n.due_at
                for n in timed_notices(self.state, rules)}


def opened(email: str | None = "jo@example.org") -> Case:
    return Case().add(ev.CaseOpened(
        participant=ev.Participant(name="Jordan Rivera", preferred_name="Jo", email=email),
        case_manager="cm-1", risk_level="moderate", agency="agency-a"))


def review(review_id: UUID, due: date) -> ev.ReviewScheduled:
    return ev.ReviewScheduled(review_id=review_id, due_date=due, basis="plan_agreed",
                              risk_level="moderate")


def at9(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(9), tzinfo=UTC)


def test_a_scheduled_review_gets_a_reminder_before_on_the_day_and_overdue_notices() -> None:
    case = opened().add(review(uuid4(), date(2026, 5, 1)))
    assert case.timed() == {
        "review_reminder:cm-1": at9("2026-04-28"),
        "review_due_today:cm-1": at9("2026-05-01"),
        "review_overdue:cm-1": at9("2026-05-03"),
        "review_overdue:supervisors": at9("2026-05-03"),
    }


def test_reminder_days_grace_and_send_time_are_configurable() -> None:
    rules = RuleSettings(reminder_days_before=7, overdue_grace_days=0, send_time=time(8, 30),
                         timezone="America/Chicago")
    case = opened().add(review(uuid4(), date(2026, 5, 1)))
    due = case.timed(rules)
    assert due["review_reminder:cm-1"] == datetime(2026, 4, 24, 13, 30, tzinfo=UTC)
    assert due["review_overdue:cm-1"] == datetime(2026, 5, 1, 13, 30, tzinfo=UTC)


def test_a_reminder_whose_moment_had_passed_when_scheduled_is_left_out() -> None:
    case = opened().add(review(uuid4(), date(2026, 3, 3)))
    assert "review_reminder:cm-1" not in case.timed()
    assert "review_due_today:cm-1" in case.timed()


def test_a_reminder_still_ahead_for_readers_west_of_the_schedule_zone_is_kept() -> None:
    """Scheduled at 10:00 UTC for 13 March: the UTC reminder moment (10 March 09:00 UTC) has
    passed, but 09:00 in Los Angeles that day has not; delivery decides per reader. Only
    once 09:00 has passed at UTC-12 too (21:00 UTC) is it left out."""
    for scheduled_at, kept in [(datetime(2026, 3, 10, 10, 0, tzinfo=UTC), True),
                               (datetime(2026, 3, 10, 20, 59, tzinfo=UTC), True),
                               (datetime(2026, 3, 10, 21, 1, tzinfo=UTC), False)]:
        case = opened()
        case.at = scheduled_at
        case.add(review(uuid4(), date(2026, 3, 13)))
        assert ("review_reminder:cm-1" in case.timed()) is kept, scheduled_at
        if kept:
            assert case.timed()["review_reminder:cm-1"] == at9("2026-03-10")


def test_a_heads_up_is_cancelled_for_a_reader_whose_moment_passed_before_it_was_called_for(
        ) -> None:
    called_for = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
    reminder = replace(row("review_reminder", due=at9("2026-03-10")),
                       cause_recorded_at=called_for)
    later = called_for + timedelta(minutes=1)
    west = prefs(timezone="America/Los_Angeles")  # 09:00 there is 16:00 UTC (PDT)
    assert decide(reminder, Recipient(west, "a@b"), later, stale_after=STALE,
                  timing=DatedTiming()) == Defer(datetime(2026, 3, 10, 16, 0, tzinfo=UTC))
    here = prefs()
    passed = decide(reminder, Recipient(here, "a@b"), later, stale_after=STALE,
                    timing=DatedTiming())
    assert isinstance(passed, Cancel)
    assert "had passed when it was called for" in passed.reason
    digest = prefs(delivery="daily_digest")
    assert isinstance(decide(reminder, Recipient(digest, "a@b"), later, stale_after=STALE,
                             timing=DatedTiming()), Cancel)
    # a nudge about a date gone by is still worth sending
    nudge = replace(reminder, kind="step_nudge")
    assert decide(nudge, Recipient(here, "a@b"), later, stale_after=STALE,
                  timing=DatedTiming()) == Send("a@b")


def test_holding_a_review_ends_its_notices_and_the_next_review_starts_new_ones() -> None:
    first, second = uuid4(), uuid4()
    case = opened().add(review(first, date(2026, 5, 1)))
    case.add(ev.ReviewHeld(review_id=first, held_on=date(2026, 4, 30), due_date=date(2026, 5, 1)))
    assert case.timed() == {}
    case.add(review(second, date(2026, 6, 29)))
    assert case.timed()["review_due_today:cm-1"] == at9("2026-06-29")


def test_rescheduling_a_review_moves_its_notices_under_new_keys() -> None:
    review_id = uuid4()
    case = opened().add(review(review_id, date(2026, 5, 1)))
    before = {n.key for n in timed_notices(case.state, RULES)}  # type: ignore[arg-type]
    case.add(review(review_id, date(2026, 5, 15)))
    after = {n.key for n in timed_notices(case.state, RULES)}  # type: ignore[arg-type]
    assert before.isdisjoint(after)
    assert case.timed()["review_due_today:cm-1"] == at9("2026-05-15")


def test_transfer_readdresses_and_closing_ends_every_timed_notice() -> None:
    case = opened().add(review(uuid4(), date(2026, 5, 1)))
    _goal_and_step(case)
    case.add(ev.CaseTransferred(from_case_manager="cm-1", to_case_manager="cm-2",
                                reason="caseload balancing"))
    assert set(case.timed()) == {"review_reminder:cm-2", "review_due_today:cm-2",
                                 "review_overdue:cm-2", "review_overdue:supervisors",
                                 "step_nudge:cm-2", "goal_target_date:cm-2"}
    case.add(ev.CaseClosed(reason="plan completed"))
    assert case.timed() == {}
    case.add(ev.CaseReopened(reason="asked for more support"))
    # the open step and goal come back; the review closing cancelled does not (the records
    # service refuses to hold it), until agreeing the plan again schedules a new one
    assert set(case.timed()) == {"step_nudge:cm-2", "goal_target_date:cm-2"}


def _goal_and_step(case: Case, due: date | None = date(2026, 3, 20)) -> tuple[UUID, UUID]:
    goal_id, step_id = uuid4(), uuid4()
    case.add(ev.GoalSet(goal_id=goal_id, title="Find steady work", domain="employment",
                        source="participant", in_their_words="I want to use my hands",
                        target_date=date(2026, 9, 1)))
    case.add(ev.ActionStepAdded(step_id=step_id, goal_id=goal_id,
                                description="Visit the job centre", owner="participant",
                                due_date=due))
    return goal_id, step_id


def test_an_open_step_past_its_date_gets_a_gentle_nudge_which_follows_a_revised_date() -> None:
    case = opened()
    goal_id, step_id = _goal_and_step(case)
    assert case.timed()["step_nudge:cm-1"] == at9("2026-03-21")
    case.add(ev.ActionStepRevised(step_id=step_id, goal_id=goal_id, due_date=date(2026, 4, 2)))
    assert case.timed()["step_nudge:cm-1"] == at9("2026-04-03")
    case.add(ev.ActionStepCompleted(step_id=step_id, goal_id=goal_id,
                                    description="Visit the job centre", owner="participant",
                                    from_status="not_started"))
    assert "step_nudge:cm-1" not in case.timed()


def test_steps_of_a_paused_goal_are_not_nudged_and_a_revised_target_date_reschedules() -> None:
    case = opened()
    goal_id, _ = _goal_and_step(case)
    assert case.timed()["goal_target_date:cm-1"] == at9("2026-09-01")
    case.add(ev.GoalRevised(goal_id=goal_id, target_date=date(2026, 10, 1)))
    assert case.timed()["goal_target_date:cm-1"] == at9("2026-10-01")
    case.add(ev.GoalStatusChanged(goal_id=goal_id, title="Find steady work",
                                  from_status="active", status="paused", reason="health first"))
    assert case.timed() == {}


def test_a_completed_step_is_a_small_win_in_the_participants_words() -> None:
    case = opened()
    goal_id, step_id = _goal_and_step(case)
    case.add(ev.ActionStepCompleted(step_id=step_id, goal_id=goal_id,
                                    description="Visit the job centre", owner="participant",
                                    from_status="in_progress", note="Went with my sister"))
    [win] = case.notices
    assert (win.kind, win.recipient, win.due_at) == (Kind.SMALL_WIN, "cm-1", T0)
    text = render(win.kind, win.context, case.case_id, today=T0.date()).text
    assert "Jo completed the step \"Visit the job centre\"" in text
    assert "Note: Went with my sister.\n" in text  # ended as a sentence
    assert "I want to use my hands" in text


def test_rewording_a_step_or_its_goal_rewords_their_celebrations_and_nothing_else() -> None:
    case = opened()
    goal_id, step_id = _goal_and_step(case)
    case.add(ev.ActionStepCompleted(step_id=step_id, goal_id=goal_id,
                                    description="Visit the job centre", owner="participant",
                                    from_status="in_progress"))
    [win] = case.notices

    def after(payload: ev.EventPayload) -> list[tuple[Kind, str, dict[str, Any]]]:
        before = case.state
        case.add(payload)
        assert before is not None
        assert case.state is not None
        return [(r.kind, r.subject, r.words)
                for r in reworded_celebrations(before, case.state)]

    [(kind, subject, words)] = after(ev.ActionStepRevised(
        step_id=step_id, goal_id=goal_id, description="Visit the job centre on Main St"))
    assert (kind, subject) == (Kind.SMALL_WIN, "step_id")
    assert {**win.context, **words} == {**win.context,
                                        "description": "Visit the job centre on Main St"}
    reworded = after(ev.GoalRevised(goal_id=goal_id, in_their_words="Work with my hands"))
    assert [(k, s, w["in_their_words"]) for k, s, w in reworded] == [
        (Kind.SMALL_WIN, "step_id", "Work with my hands"),
        (Kind.MILESTONE, "goal_id", "Work with my hands")]
    assert after(ev.ActionStepRevised(step_id=step_id, goal_id=goal_id,
                                      due_date=date(2026, 4, 2))) == []


def test_a_small_win_never_quotes_the_reason_a_step_was_set_completed() -> None:
    """A reason is staff's account of a correction ("marked by mistake"), not something said
    about the win."""
    case = opened()
    goal_id, step_id = _goal_and_step(case)
    case.add(ev.ActionStepCompleted(step_id=step_id, goal_id=goal_id,
                                    description="Visit the job centre", owner="participant",
                                    from_status="no_longer_needed",
                                    reason="Marked no longer needed by mistake"))
    [win] = case.notices
    rendered = render(win.kind, win.context, case.case_id, today=T0.date())
    assert "Jo completed the step" in rendered.text
    assert "by mistake" not in rendered.text + rendered.html


@pytest.mark.parametrize(("owner", "sentence"), [
    ("participant", 'Jo completed the step "Send the referral".'),
    ("case_manager", 'The step "Send the referral" in Jo\'s plan is done; the case manager'
                     " took it on."),
    ("support", 'The step "Send the referral" in Jo\'s plan is done, with one of Jo\'s'
                " supports."),
])
def test_a_small_win_says_whose_step_it_was(owner: str, sentence: str) -> None:
    case = opened()
    goal_id, step_id = _goal_and_step(case)
    case.add(ev.ActionStepCompleted(step_id=step_id, goal_id=goal_id,
                                    description="Send the referral", owner=owner,
                                    from_status="not_started"))
    rendered = render(Kind.SMALL_WIN, case.notices[0].context, case.case_id, today=T0.date())
    assert sentence in rendered.text
    untagged = re.sub("</?span[^>]*>", "", rendered.html)  # values are set apart (dir="auto")
    assert sentence.replace("'", "&#x27;").replace('"', "&quot;") in untagged
    if owner != "participant":
        assert "Jo completed" not in rendered.text + rendered.html


def test_an_achieved_goal_is_a_milestone_for_the_manager_and_the_participant() -> None:
    case = opened()
    goal_id, _ = _goal_and_step(case)
    case.add(ev.GoalStatusChanged(goal_id=goal_id, title="Find steady work",
                                  from_status="active", status="achieved"))
    assert [(n.kind, n.recipient_role) for n in case.notices] == [
        (Kind.MILESTONE, "case_manager"), (Kind.MILESTONE, "participant")]
    for_them = render(Kind.MILESTONE, case.notices[1].context, today=T0.date(),
                      for_participant=True)
    assert "You reached your goal" in for_them.text
    assert "I want to use my hands" in for_them.subject + for_them.text


def test_other_goal_statuses_and_closed_cases_celebrate_nothing() -> None:
    case = opened()
    goal_id, step_id = _goal_and_step(case)
    case.add(ev.GoalStatusChanged(goal_id=goal_id, title="Find steady work",
                                  from_status="active", status="discontinued", reason="moved"))
    case.add(ev.CaseClosed(reason="moved away"))
    case.add(ev.ActionStepCompleted(step_id=step_id, goal_id=goal_id, description="x",
                                    owner="participant", from_status="in_progress"))
    assert case.notices == []


def test_events_before_the_case_opened_are_ignored_and_keys_are_deterministic() -> None:
    item = FeedItem("cp", uuid4(), 3, uuid4(), "CaseClosed", 1, {"reason": "x"}, "a", T0)
    assert evolve(None, item, item.payload()) is None
    one, two = opened(), opened()
    two.case_id = one.case_id
    review_id = uuid4()
    for case in (one, two):
        case.add(review(review_id, date(2026, 5, 1)))
    assert one.state is not None
    assert two.state is not None
    keys = [n.key for n in timed_notices(one.state, RULES)]
    assert keys
    assert keys == [n.key for n in timed_notices(two.state, RULES)]


def test_participant_email_follows_updates_and_clearing() -> None:
    case = opened(email=None)
    case.add(ev.ParticipantDetailsUpdated(email="jo@new.example"))
    assert case.state is not None
    assert case.state.participant_email == "jo@new.example"
    case.add(ev.ParticipantDetailsUpdated(cleared=("email",)))
    assert case.state.participant_email is None


# --------------------------------------------------------------------------------------------
# retry policy and delivery decisions
# --------------------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_stops_at_attempts_or_horizon() -> None:
    policy = RetryPolicy(attempts=5, base_seconds=60, max_seconds=600, horizon_seconds=3600)
    rng = random.Random(7)
    delays = [(policy.next_attempt(n, T0, T0, rng) - T0).total_seconds()  # type: ignore[operator]
              for n in range(1, 5)]
    for n, delay in enumerate(delays, 1):
        full = min(60 * 2 ** (n - 1), 600)
        assert full / 2 <= delay <= full
    assert policy.next_attempt(5, T0, T0, rng) is None
    assert policy.next_attempt(2, T0, T0 + timedelta(minutes=59), rng) is None


@pytest.mark.parametrize(("code", "outcome"), [
    (250, "sent"), (421, "transient"), (451, "transient"), (452, "transient"),
    (500, "permanent"), (501, "permanent"), (503, "permanent"), (530, "permanent"),
    (550, "permanent"), (554, "permanent"), (None, "transient")])
def test_smtp_replies_are_classified(code: int | None, outcome: str) -> None:
    assert classify(code, "x").outcome == outcome


def prefs(**changes: Any) -> Preferences:
    base: dict[str, Any] = {"agency": "agency-a", "user_id": "cm-1", "role": "case_manager",
                            "email": "cm-1@example.org", "delivery": "immediate",
                            "timezone": "UTC", "quiet_start": None, "quiet_end": None,
                            "celebrations": True}
    base.update(changes)
    return Preferences(**base)


def row(kind: str = "small_win", role: str = "case_manager", due: datetime = T0,
        attempts: int = 0) -> Row:
    return Row(uuid4(), "k", kind, uuid4(), "agency-a", role, "cm-1", due, due, "scheduled",
               attempts, None, None, "<m@x>", {}, None, None, None, None)


STALE = timedelta(hours=72)


def test_delivery_decisions() -> None:
    me = prefs()
    assert decide(row(), Recipient(me, me.email), T0, stale_after=STALE) == \
        Send("cm-1@example.org")
    assert isinstance(decide(row(), Recipient(None, None), T0, stale_after=STALE), Dead)
    assert isinstance(decide(row(), Recipient(prefs(celebrations=False), "a@b"), T0,
                             stale_after=STALE), Cancel)
    assert isinstance(decide(row("review_reminder"), Recipient(prefs(delivery="daily_digest"),
                                                               "a@b"), T0, stale_after=STALE),
                      ToDigest)
    assert isinstance(decide(row(due=T0 - timedelta(days=4)), Recipient(me, me.email), T0,
                             stale_after=STALE), Cancel)
    assert decide(row(role="supervisors"), Recipient(None, None, ("sup-1", "sup-2")), T0,
                  stale_after=STALE) == FanOut(("sup-1", "sup-2"))
    assert isinstance(decide(row(role="supervisors"), Recipient(None, None), T0,
                             stale_after=STALE), Dead)


def test_a_dated_notice_waits_for_its_time_in_a_reader_zone_behind_the_schedules() -> None:
    timing = DatedTiming("Europe/Berlin")
    due = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)  # 09:00 in Berlin, where the schedule is timed
    honolulu = prefs(timezone="Pacific/Honolulu")
    deferred = decide(row("review_due_today", due=due), Recipient(honolulu, "a@b"), due,
                      stale_after=STALE, timing=timing)
    assert deferred == Defer(datetime(2026, 5, 1, 19, 0, tzinfo=UTC))  # 09:00 in Honolulu
    assert decide(row("review_due_today", due=due), Recipient(honolulu, "a@b"),
                  deferred.until, stale_after=STALE, timing=timing) == Send("a@b")
    # a celebration is about the moment it happened, not a day: it goes at once
    assert decide(row(due=due), Recipient(honolulu, "a@b"), due, stale_after=STALE,
                  timing=timing) == Send("a@b")
    assert timing.moment(row(due=due), "Pacific/Honolulu", time(8)) == \
        datetime(2026, 5, 1, 18, 0, tzinfo=UTC)  # that day's digest, 08:00 in Honolulu


def test_participants_hear_only_when_opted_in_with_an_address() -> None:
    milestone = row("milestone", role="participant")
    assert isinstance(decide(milestone, Recipient(None, "jo@example.org"), T0,
                             stale_after=STALE), Cancel)
    opted_in = prefs(role="participant", email=None)
    assert isinstance(decide(milestone, Recipient(opted_in, None), T0, stale_after=STALE), Dead)
    assert decide(milestone, Recipient(opted_in, "jo@example.org"), T0, stale_after=STALE) == \
        Send("jo@example.org", for_participant=True)
    opted_out = prefs(role="participant", celebrations=False)
    assert isinstance(decide(milestone, Recipient(opted_out, "jo@example.org"), T0,
                             stale_after=STALE), Cancel)


def test_quiet_hours_defer_to_their_end_in_the_recipients_time_zone() -> None:
    night = prefs(timezone="Europe/Berlin", quiet_start=time(21), quiet_end=time(7))
    late = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin
    assert quiet_until(night, late) == datetime(2026, 3, 3, 6, 0, tzinfo=UTC)
    early = datetime(2026, 3, 3, 5, 0, tzinfo=UTC)  # 06:00 in Berlin
    assert quiet_until(night, early) == datetime(2026, 3, 3, 6, 0, tzinfo=UTC)
    assert quiet_until(night, T0) is None
    assert decide(row(), Recipient(night, "a@b"), late, stale_after=STALE) == \
        Defer(datetime(2026, 3, 3, 6, 0, tzinfo=UTC))


def test_quiet_hours_ending_in_the_hour_clocks_go_back_end_after_now() -> None:
    """On 1 November 2026 New York's clocks go back from 02:00 EDT to 01:00 EST."""
    night = prefs(timezone="America/New_York", quiet_start=time(22), quiet_end=time(1, 30))
    second_pass = datetime(2026, 11, 1, 6, 15, tzinfo=UTC)  # 01:15 EST, the second 01:15
    assert quiet_until(night, second_pass) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    first_pass = datetime(2026, 11, 1, 5, 15, tzinfo=UTC)  # 01:15 EDT, the first 01:15
    # one stretch through the second 01:30: it ended at the first, and mail went out in the
    # half hour before the clock read 01:00 again (an audit against a model)
    assert quiet_until(night, first_pass) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)


def test_the_default_retries_outlast_an_outage_until_the_horizon() -> None:
    """The defaults once gave up after 8 attempts, about an hour into an SMTP outage, while
    the horizon said 24 hours."""
    settings = NotifierSettings.model_validate({"DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    policy = RetryPolicy.of(settings)
    for seed in range(20):
        rng, now, made = random.Random(seed), T0, 1
        while (at := policy.next_attempt(made, T0, now, rng)) is not None:
            now, made = at, made + 1
        assert timedelta(hours=23) < now - T0 <= timedelta(hours=24), (seed, made)


def test_time_zone_names_are_iana_names_only() -> None:
    """ZoneInfo opens more than the IANA names (the host's "localtime", the posix/ and right/
    copies); a database server need not know those, and one such name stopped every
    dispatch."""
    names = TypeAdapter(ev.TimeZoneName)
    for name in ("localtime", "posixrules", "posix/Europe/Berlin", "right/UTC"):
        with pytest.raises(ValidationError):
            names.validate_python(name)
    for name in ("UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"):
        assert names.validate_python(name) == name


def test_dated_notices_are_due_early_by_the_readers_wall_clock() -> None:
    timing = DatedTiming("UTC")
    due = row("review_due_today", due=datetime(2026, 5, 1, 9, 0, tzinfo=UTC))
    for zone in ("Europe/Berlin", "Pacific/Kiritimati", "Asia/Kathmandu"):
        for hour in range(48):
            now = datetime(2026, 4, 30, tzinfo=UTC) + timedelta(hours=hour, minutes=7)
            for at in (None, time(8)):
                came = timing.moment(due, zone, at) <= now
                assert (due.due_at <= timing.due_by(zone, now, at)) == came, (zone, now, at)


def test_digest_time_is_local_to_the_recipient() -> None:
    assert next_local_time("America/New_York", time(8), T0) == \
        datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    assert next_local_time("UTC", time(8), T0) == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    assert next_local_time("UTC", time(8), T0, skip_days=1) == \
        datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


ASSUMED_PRONOUN = re.compile(r"\b(he|she|his|her|hers|him|they|them|their|theirs)\b", re.I)


def test_every_kind_renders_person_first_text_and_escaped_html() -> None:
    context = {"participant": "Jo <b>", "due_date": "2026-05-01",
               "description": "Call the housing office", "goal_title": "A home",
               "in_their_words": "A place of my own", "target_date": "2026-06-01",
               "case_manager": "cm-1", "grace_days": 2}
    banned = ("offender", "non-compliant", "failed to", "client")
    for kind in Kind:
        if kind is Kind.DAILY_DIGEST:
            continue
        out = render(kind, context, uuid4(), today=T0.date())
        assert out.subject
        assert "\n" not in out.subject
        assert "Jo <b>" not in out.html
        assert "Jo &lt;b&gt;" in out.html
        assert not any(word in (out.text + out.subject).lower() for word in banned)
        # the participant's pronouns are theirs to give; no template assumes any
        assert not ASSUMED_PRONOUN.search(out.text + out.html), kind
        assert out.text.endswith(f"-- \n{FOOTER}\n")  # how to hear less, in both parts
        assert FOOTER in out.html


@pytest.mark.parametrize(("read_on", "subject", "sentence"), [
    ("2026-03-10", "Plan review with Jo is due today", "plan review is due today (Tuesday"),
    ("2026-03-11", "Plan review with Jo was due yesterday", "review was due yesterday (Tuesday"),
    ("2026-03-09", "Plan review with Jo is due tomorrow", "review is due tomorrow (Tuesday"),
    ("2026-03-13", "Plan review with Jo was due 3 days ago", "was due 3 days ago (Tuesday")])
def test_days_are_worded_as_the_reader_counts_them_on_the_day_they_read(
        read_on: str, subject: str, sentence: str) -> None:
    """A notice may wait in a digest or out quiet hours: "today" is the reader's today."""
    out = render(Kind.REVIEW_DUE_TODAY, {"participant": "Jo", "due_date": "2026-03-10"},
                 today=date.fromisoformat(read_on))
    assert out.subject == subject
    assert sentence in out.text


def test_a_reminder_counts_the_days_left_when_it_is_read() -> None:
    context = {"participant": "Jo", "due_date": "2026-03-13"}
    assert "due on Friday 13 March 2026, in 3 days." in render(
        Kind.REVIEW_REMINDER, context, today=date(2026, 3, 10)).text
    assert "due on Friday 13 March 2026, in 2 days." in render(
        Kind.REVIEW_REMINDER, context, today=date(2026, 3, 11)).text


def test_a_goal_target_date_credits_nobody_with_setting_it() -> None:
    """The goal may be the court's or the agency's: the message does not say Jo set it."""
    out = render(Kind.GOAL_TARGET_DATE, {"participant": "Jo", "goal_title": "40 hours of"
                                         " community service", "target_date": "2026-03-10"},
                 today=date(2026, 3, 10))
    assert out.subject == 'Target date today for Jo\'s goal "40 hours of community service"'
    assert ('The target date for the goal "40 hours of community service" in Jo\'s plan is'
            " today\n(Tuesday 10 March 2026).") in out.text
    assert "Jo set" not in out.text
