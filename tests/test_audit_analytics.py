"""Outcome analytics audited as a program analyst uses them (decision 0011).

The figures are read a second way, straight from the events as 0011 defines them, and the two
must agree: random runs of a whole agency written through the HTTP API, in a time zone with a
DST change and events at any hour (midnight included), reviews let slip to around their
day's end and held or moved then (a review moved once its day has passed stays missed on it),
asked about random periods (one day, across months, into the future) as the run goes on, and
again after a rebuild. Then the brief's cases one by one, with the figures worked out by hand,
and bad periods.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.application.analytics import DAYS_PER_MONTH
from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi, event_count
from tests.test_agency_policy import write_policy

AGENCY, ZONE = "agency-ny", "America/New_York"
DOMAINS = ("employment", "housing", "health")
SOURCES = ("participant", "court", "agency")
GOAL_STATUSES = ("active", "future", "paused", "achieved", "discontinued")
STEP_STATUSES = (
    "not_started",
    "in_progress",
    "completed",
    "cannot_be_done_yet",
    "no_longer_needed",
)
OUTCOMES = ("agreed", "agreed", "did_not_agree", "could_not_answer")


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Analyst:
    client: TestClient[Any, Any]
    token: TokenFactory
    database_url: str

    async def outcomes(self, query: str) -> dict[str, Any]:
        response = await self.client.get(
            f"/v1/analytics/outcomes{query}",
            headers=bearer(self.token(role="analyst", sub="an-1", agency=AGENCY)),
        )
        body = await response.json()
        assert response.status == 200, body
        return dict(body)

    async def events(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(
                await conn.fetch(
                    "SELECT stream_id, version, type, data::text AS data, recorded_at"
                    " FROM records.events WHERE agency = $1 ORDER BY stream_id, version",
                    AGENCY,
                )
            )
        finally:
            await conn.close()

    async def rebuild(self) -> None:
        await rebuild_at(self.database_url)


async def rebuild_at(database_url: str) -> None:
    """``casetrail rebuild-projections`` on ``database_url``, as an operator runs it."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await rebuild_projections(pool)
    finally:
        await pool.close()


@pytest.fixture
async def agency(
    make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory, tmp_path: Path
) -> tuple[Analyst, CaseApi, FakeClock]:
    """agency-ny (k = 1: every figure exact), its clock at 23:00 on 6 March 2026 in New York,
    two days before the clocks go forward."""
    write_policy(tmp_path, AGENCY, {"timezone": ZONE, "analytics_min_cell": 1})
    clock = FakeClock(_utc("2026-03-07T04:00:00"))
    client = await make_records_client(
        fresh_database_url, clock=clock, CASETRAIL_POLICY_DIR=str(tmp_path)
    )
    return (
        Analyst(client, token, fresh_database_url),
        CaseApi(client, token(sub="cm-1", agency=AGENCY)),
        clock,
    )


# ------------------------------------------------------------ the figures read from the events


@dataclass
class CaseReading:
    """One case's events, read in order as 0011 defines the figures."""

    open_days: set[date] = field(default_factory=set)
    opened: date | None = None
    goals: dict[str, dict[str, Any]] = field(default_factory=dict)
    achievements: list[list[Any]] = field(default_factory=list)  # [domain, days, stands]
    unpaired: dict[str, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    taken_back_from_before: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    plans: list[str] = field(default_factory=list)  # not_agreed, agreed, co_created
    steps_completed: int = 0
    steps_uncompleted: int = 0
    reviews: dict[str, dict[str, Any]] = field(default_factory=dict)
    closures: list[tuple[int, date]] = field(default_factory=list)


def _days(first: date, last: date) -> set[date]:
    return {first + timedelta(days=n) for n in range((last - first).days + 1)}


def _read_case(
    events: list[asyncpg.Record], since: date, until: date, lived_until: date
) -> CaseReading:
    case = CaseReading()
    for event in events:
        data = json.loads(event["data"])
        day = event["recorded_at"].astimezone(ZoneInfo(ZONE)).date()
        _read_event(
            case, event["type"], event["version"], data, day, in_period=since <= day <= until
        )
    if case.opened is not None:
        case.open_days |= _days(case.opened, lived_until)
    return case


def _read_event(
    case: CaseReading, kind: str, version: int, data: dict[str, Any], day: date, *, in_period: bool
) -> None:
    if kind in ("CaseOpened", "CaseReopened"):
        case.opened = day
    elif kind == "CaseClosed":
        assert case.opened is not None
        case.open_days |= _days(case.opened, day)
        case.opened = None
        case.closures.append((version, day))
    elif kind == "GoalSet":
        case.goals[data["goal_id"]] = {
            "domain": data["domain"],
            "source": data["source"],
            "set_on": day,
        }
    elif kind == "GoalRevised" and "domain" in data:
        case.goals[data["goal_id"]]["domain"] = data["domain"]
    elif kind == "ReviewScheduled":
        review = case.reviews.setdefault(data["review_id"], {"held": None, "scheduled": []})
        review["scheduled"].append((version, day, date.fromisoformat(data["due_date"])))
    elif kind == "ReviewHeld":
        review = case.reviews[data["review_id"]]
        review["held"] = (version, date.fromisoformat(data["held_on"]))
    elif in_period:
        _read_period_event(case, kind, data, day)


def _read_period_event(case: CaseReading, kind: str, data: dict[str, Any], day: date) -> None:
    if kind == "PlanAgreed":
        theirs = any(case.goals[g]["source"] == "participant" for g in data["goal_ids"])
        case.plans.append(
            "not_agreed" if data["outcome"] != "agreed" else "co_created" if theirs else "agreed"
        )
    elif kind == "GoalStatusChanged":
        goal = case.goals[data["goal_id"]]
        if data["status"] == "achieved":
            won = [goal["domain"], (day - goal["set_on"]).days, True]
            case.achievements.append(won)
            case.unpaired[data["goal_id"]].append(won)
        elif data["from_status"] == "achieved" and case.unpaired[data["goal_id"]]:
            case.unpaired[data["goal_id"]].pop()[2] = False
            case.cancelled += 1
        elif data["from_status"] == "achieved":
            case.taken_back_from_before[goal["domain"]] += 1
    elif kind == "ActionStepCompleted":
        case.steps_completed += 1
    elif kind == "ActionStepStatusChanged" and data["from_status"] == "completed":
        case.steps_uncompleted += 1


def _date_in_force(scheduled: list[tuple[int, date, date]]) -> tuple[date, bool]:
    """Walking a review's schedulings (version, day recorded, due date): each moves the date,
    until one is recorded on a day after the date then due, which finds the review missed on
    that date for good."""
    due = scheduled[0][2]
    for _, day, moved_to in scheduled[1:]:
        if day > due:
            return due, True
        due = moved_to
    return due, False


def _review_counts(case: CaseReading, since: date, lived_until: date, today: date) -> Counter[str]:
    """Reviews due in the period by their date in force (a missed one on the date it missed),
    a case closed before one fell due (and before it was held) cancelling it; one due today
    counts once held; a missed one is never on time."""
    counts: Counter[str] = Counter()
    for review in case.reviews.values():
        held = review["held"]
        due, missed = _date_in_force(review["scheduled"])
        cancelled = any(
            version > review["scheduled"][-1][0]
            and closed_on <= due
            and (held is None or version < held[0])
            for version, closed_on in case.closures
        )
        if cancelled or not since <= due <= lived_until:
            continue
        if held is not None:
            counts["on_time" if held[1] <= due and not missed else "late"] += 1
        elif due < today:
            counts["not_held"] += 1
    return counts


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def figures_from_events(
    rows: list[asyncpg.Record], since: date, until: date, today: date
) -> dict[str, Any]:
    lived_until = min(until, today)
    by_case: dict[Any, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        by_case[row["stream_id"]].append(row)
    cases = [_read_case(events, since, until, lived_until) for events in by_case.values()]
    days_open = [len({d for d in case.open_days if since <= d <= lived_until}) for case in cases]
    plans = Counter(plan for case in cases for plan in case.plans)
    standing = Counter(won[0] for case in cases for won in case.achievements if won[2])
    from_before = sum((case.taken_back_from_before for case in cases), Counter[str]())
    nets = {domain: standing[domain] - from_before[domain] for domain in standing | from_before}
    days = [won[1] for case in cases for won in case.achievements if won[2]]
    completed = sum(case.steps_completed for case in cases)
    uncompleted = sum(case.steps_uncompleted for case in cases)
    reviews = sum(
        (_review_counts(case, since, lived_until, today) for case in cases), Counter[str]()
    )
    months = sum(days_open) / DAYS_PER_MONTH
    agreed = plans["agreed"] + plans["co_created"]
    due = reviews.total()
    return {
        "cases_open": sum(1 for n in days_open if n),
        "case_months": round(months, 2),
        "co_creation": {
            "agreements": plans.total(),
            "agreed": agreed,
            "co_created": plans["co_created"],
            "rate": _ratio(plans["co_created"], agreed),
        },
        "goals_achieved": {
            "total": sum(nets.values()),
            "by_domain": {domain: n for domain, n in sorted(nets.items()) if n},
            "other_withheld": 0,
            "reversed": sum(case.cancelled for case in cases) + from_before.total(),
            "median_days_to_achievement": statistics.median(days) if days else None,
        },
        "small_wins": {
            "steps_completed": completed - uncompleted,
            "reversed": uncompleted,
            "per_case_month": _ratio(completed - uncompleted, months),
        },
        "reviews": {
            "due": due,
            "held": reviews["late"] + reviews["on_time"],
            "on_time": reviews["on_time"],
            "not_held": reviews["not_held"],
            "on_time_rate": _ratio(reviews["on_time"], due),
        },
    }


# ---------------------------------------------------------------------- random runs of an agency


class RandomCaseManager:
    """Writes whatever a busy case manager might, right or wrong: refusals are fine, a 5xx is
    not."""

    def __init__(self, cm: CaseApi, clock: FakeClock, rng: random.Random) -> None:
        self.cm, self.clock, self.rng = cm, clock, rng
        self.cases: list[str] = []

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.cm.client.request(
            method, path, json=body, headers=bearer(self.cm.token)
        )
        assert response.status < 500, (method, path, body, await response.text())
        return await response.json()

    async def move(self) -> None:
        if len(self.cases) < 3 or self.rng.random() < 0.02:
            self.cases.append(
                await self.cm.open_case(risk_level=self.rng.choice(["low", "moderate", "high"]))
            )
            return
        case_id = self.rng.choice(self.cases)
        plan = await self.call("GET", f"/v1/cases/{case_id}")
        await self.anything(f"/v1/cases/{case_id}", plan)

    async def wait(self, path: str, plan: Any) -> None:
        self.clock.advance(hours=self.rng.choice([1, 5, 13, 24, 24, 24, 24 * 9, 24 * 33]))

    async def goal(self, path: str, plan: Any) -> None:
        source = self.rng.choice(SOURCES)
        await self.call(
            "POST",
            f"{path}/goals",
            {
                "title": "Keep a steady routine",
                "domain": self.rng.choice(DOMAINS),
                "source": source,
                "status": self.rng.choice(["active", "active", "future"]),
                "in_their_words": "I want this" if source == "participant" else None,
                "override_reason": "agreed with the participant",
            },
        )

    def _pick(self, items: list[Any]) -> Any:
        return self.rng.choice(items) if items else {"goal_id": "0", "step_id": "0"}

    async def goal_status(self, path: str, plan: Any) -> None:
        goal = self._pick(plan["goals"])
        await self.call(
            "POST",
            f"{path}/goals/{goal['goal_id']}/status",
            {
                "status": self.rng.choice((*GOAL_STATUSES, "achieved", "achieved")),
                "reason": "talked it through",
                "override_reason": "agreed with the participant",
            },
        )

    async def goal_domain(self, path: str, plan: Any) -> None:
        goal = self._pick(plan["goals"])
        await self.call(
            "PATCH", f"{path}/goals/{goal['goal_id']}", {"domain": self.rng.choice(DOMAINS)}
        )

    async def step(self, path: str, plan: Any) -> None:
        goal = self._pick(plan["goals"])
        await self.call(
            "POST",
            f"{path}/goals/{goal['goal_id']}/steps",
            {"description": "Call the housing office", "owner": "participant"},
        )

    async def step_status(self, path: str, plan: Any) -> None:
        step = self._pick([s for g in plan["goals"] for s in g["steps"]])
        if self.rng.random() < 0.5:
            await self.call("POST", f"{path}/steps/{step['step_id']}/complete", {})
        else:
            await self.call(
                "POST",
                f"{path}/steps/{step['step_id']}/status",
                {"status": self.rng.choice(STEP_STATUSES), "reason": "plans changed"},
            )

    async def agree(self, path: str, plan: Any) -> None:
        await self.call(
            "POST",
            f"{path}/agreements",
            {
                "participation": "phone",
                "present": ["Jo"],
                "participant_statement": "Yes",
                "outcome": self.rng.choice(OUTCOMES),
            },
        )

    async def review(self, path: str, plan: Any) -> None:
        pending = plan.get("next_review") or {}
        slipped = bool(pending) and self.rng.random() < 0.5
        if slipped:
            self.until_about(pending["due_date"])
        review = pending.get("review_id", "0")
        if self.rng.random() < (0.5 if slipped else 0.7):
            await self.call("POST", f"{path}/reviews/{review}/held", {"summary": "Went well"})
            return
        today = self.clock.now.astimezone(ZoneInfo(ZONE)).date()
        await self.call(
            "POST",
            f"{path}/reviews/{review}/reschedule",
            {
                "due_date": (today + timedelta(days=self.rng.randrange(0, 20))).isoformat(),
                "reason": "Jo is away that week",
            },
        )

    def until_about(self, due_date: str) -> None:
        """Let a review come due, or slip past its day (a reschedule or a hold then is on its
        day, or late: 0011's missed reviews), around the agency's midnight."""
        midnight = datetime.combine(date.fromisoformat(due_date), time(), ZoneInfo(ZONE))
        hours = self.rng.choice([-1, 1, 12, 23, 25, 30, 24 * 4])
        self.clock.now = max(self.clock.now, midnight.astimezone(UTC) + timedelta(hours=hours))

    async def close_or_reopen(self, path: str, plan: Any) -> None:
        action = "reopen" if plan["status"] == "closed" else "close"
        await self.call("POST", f"{path}/{action}", {"reason": "Moved for a while"})

    async def anything(self, path: str, plan: Any) -> None:
        """Mostly work on the plan; a closed case mostly reopens."""
        if plan["status"] == "closed" and self.rng.random() < 0.5:
            await self.close_or_reopen(path, plan)
            return
        await self.rng.choice(self.MOVES)(self, path, plan)

    MOVES = (
        wait,
        wait,
        wait,
        goal,
        goal,
        goal_status,
        goal_status,
        goal_status,
        goal_domain,
        step,
        step,
        step_status,
        step_status,
        step_status,
        agree,
        agree,
        review,
        review,
        review,
        close_or_reopen,
    )


def _periods(rng: random.Random, first: date, today: date) -> list[tuple[date, date]]:
    span = (today - first).days
    periods = [(first, today), (today, today), (first, today + timedelta(days=400))]
    for _ in range(12):
        since = first + timedelta(days=rng.randrange(-3, span + 5))
        periods.append((since, since + timedelta(days=rng.choice([0, 0, 1, 6, 30, 31, 90]))))
    return periods


async def _check(analyst: Analyst, clock: FakeClock, rng: random.Random) -> dict[str, Any]:
    """The service's figures against the events', for random periods asked today."""
    rows = await analyst.events()
    today = clock.now.astimezone(ZoneInfo(ZONE)).date()
    answers = {}
    for since, until in _periods(rng, date(2026, 3, 6), today):
        query = f"?from={since}&to={until}"
        body = await analyst.outcomes(query)
        assert body["withheld"] == []
        expected = figures_from_events(rows, since, until, today)
        assert {key: body[key] for key in expected} == expected, query
        answers[query] = body
    return answers


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_figures_are_those_0011_defines_read_from_the_events(
    agency: tuple[Analyst, CaseApi, FakeClock], seed: int
) -> None:
    analyst, cm, clock = agency
    rng = random.Random(seed)
    writer = RandomCaseManager(cm, clock, rng)
    for _ in range(4):
        for _ in range(100):
            await writer.move()
        await _check(analyst, clock, rng)
    answers = await _check(analyst, clock, random.Random(seed))
    await analyst.rebuild()
    for query, before in answers.items():
        assert await analyst.outcomes(query) == before, query


# ------------------------------------------------------------------------ the brief's cases


async def _goal_status(
    cm: CaseApi, case_id: str, goal_id: str, status: str, reason: str | None = None
) -> None:
    await cm.call(
        "POST",
        f"/v1/cases/{case_id}/goals/{goal_id}/status",
        {"status": status, **({"reason": reason} if reason else {})},
        expect=200,
    )


async def test_the_brief_cases_worked_by_hand(agency: tuple[Analyst, CaseApi, FakeClock]) -> None:
    """A: high risk, agreed with their own goal and one set for later, at 00:00 on 7 March in
    New York (05:00 UTC). On 8 March at 00:00 (before the clocks go forward) a step is done
    and the goal achieved. On 2 April the step and the goal are taken back, the later goal and
    the first one achieved (25 days from being set), the case closed; reopened 20 April.
    B opens 20 April, could not answer. Asked on 1 June."""
    analyst, cm, clock = agency
    clock.now = _utc("2026-03-07T05:00:00")
    a = await cm.open_case(risk_level="high")
    goal, later = await cm.goal(a), await cm.goal(a, "Learn to drive", status="future")
    step = await cm.step(a, goal)
    await cm.agree(a)  # review due 6 April
    clock.now = _utc("2026-03-08T05:00:00")
    await cm.call("POST", f"/v1/cases/{a}/steps/{step}/complete", {}, expect=200)
    await _goal_status(cm, a, goal, "achieved")
    clock.now = _utc("2026-04-02T04:00:00")  # midnight, daylight time
    await cm.call(
        "POST",
        f"/v1/cases/{a}/steps/{step}/status",
        {"status": "in_progress", "reason": "ticked by mistake"},
        expect=200,
    )
    await _goal_status(cm, a, goal, "active", reason="the job offer fell through")
    await _goal_status(cm, a, later, "achieved")
    await _goal_status(cm, a, goal, "achieved")
    await cm.call("POST", f"/v1/cases/{a}/close", {"reason": "Moved away"}, expect=200)
    clock.now = _utc("2026-04-20T14:00:00")
    await cm.call("POST", f"/v1/cases/{a}/reopen", {"reason": "Came back"}, expect=200)
    b = await cm.open_case()
    await cm.goal(b)
    await cm.agree(b, outcome="could_not_answer")
    clock.now = _utc("2026-06-01T14:00:00")

    march = await analyst.outcomes("?from=2026-03-01&to=2026-03-31")
    assert (march["cases_open"], march["case_months"]) == (1, round(25 / DAYS_PER_MONTH, 2))
    assert march["co_creation"] == {"agreements": 1, "agreed": 1, "co_created": 1, "rate": 1.0}
    assert march["goals_achieved"] == {
        "total": 1,
        "by_domain": {"employment": 1},
        "other_withheld": 0,
        "reversed": 0,
        "median_days_to_achievement": 1,
    }
    assert march["small_wins"]["steps_completed"] == 1
    # due 6 April: not March's, and cancelled by the close on 2 April
    assert march["reviews"]["due"] == 0

    april = await analyst.outcomes("?from=2026-04-01&to=2026-04-30")
    # A: 1-2 April and 20-30 April; B: 20-30 April
    assert (april["cases_open"], april["case_months"]) == (2, round(24 / DAYS_PER_MONTH, 2))
    assert april["co_creation"] == {"agreements": 1, "agreed": 0, "co_created": 0, "rate": None}
    # March's achievement taken back (-1), two achievements that stand (+2)
    assert april["goals_achieved"] == {
        "total": 1,
        "by_domain": {"employment": 1},
        "other_withheld": 0,
        "reversed": 1,
        "median_days_to_achievement": 26,
    }
    assert april["small_wins"]["steps_completed"] == -1  # k = 1: below zero shown
    assert april["reviews"]["due"] == 0

    both = await analyst.outcomes("?from=2026-03-01&to=2026-04-30")
    assert both["goals_achieved"] == {
        "total": 2,
        "by_domain": {"employment": 2},
        "other_withheld": 0,
        "reversed": 1,
        "median_days_to_achievement": 26,
    }
    assert (both["small_wins"]["steps_completed"], both["small_wins"]["reversed"]) == (0, 1)

    # one day: the day the clocks went forward, and midnight as the day's first moment
    day = await analyst.outcomes("?from=2026-03-08&to=2026-03-08")
    assert (day["cases_open"], day["goals_achieved"]["total"]) == (1, 1)
    assert (await analyst.outcomes("?from=2026-03-07&to=2026-03-07"))["goals_achieved"][
        "total"
    ] == 0
    leap = await analyst.outcomes("?from=2028-02-29&to=2028-02-29")  # not lived yet
    assert (leap["cases_open"], leap["case_months"]) == (0, 0.0)
    ahead = await analyst.outcomes("?from=2026-05-01&to=2030-12-31")
    assert ahead["case_months"] == round(2 * 32 / DAYS_PER_MONTH, 2)  # 1 May to today


async def test_a_review_held_early_counts_on_its_own_day(
    agency: tuple[Analyst, CaseApi, FakeClock],
) -> None:
    """Reviews are placed by their due date (0011): one held early, due later in the period,
    is not counted before that day, then counts as on time."""
    analyst, cm, clock = agency
    case_id = await cm.open_case(risk_level="high")
    await cm.goal(case_id)
    await cm.agree(case_id)  # due 5 April (6 March in New York + 30)
    clock.advance(days=26)  # 1 April
    review = (await cm.plan(case_id))["next_review"]["review_id"]
    await cm.call(
        "POST",
        f"/v1/cases/{case_id}/reviews/{review}/held",
        {"summary": "We met early"},
        expect=200,
    )
    april = "?from=2026-04-01&to=2026-04-30"
    assert (await analyst.outcomes(april))["reviews"]["due"] == 0
    clock.advance(days=4)  # 5 April: its day
    assert (await analyst.outcomes(april))["reviews"] == {
        "due": 1,
        "held": 1,
        "on_time": 1,
        "not_held": 0,
        "on_time_rate": 1.0,
    }


@pytest.mark.parametrize(
    "query",
    [
        "?from=2026-03-01%20",
        "?from=%FF",
        "?from",
        "?=2026-03-01",
        "?FROM=2026-03-01",
        "?from=+2026-03-01",
        "?from=2026-3-1",
        "?from=99999-01-01",
        "?from=%E2%80%8B2026-03-01",
        "?to=2026-02-29",
        "?from=1899-12-31",
        "?to=9001-01-01",
        "?from=" + "9" * 2000,
        "?from[]=2026-03-01",
        "?from=null",
        "?from=2026-W10-1",
        "?from=2026-060",
        "?from=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-03-01",
        "?from=2026-03-01;to=2026-03-02",
        "?from=2026-03-01&to=2026-03-01&to=",
        "?to=2026-03-01%00",
    ],
)
async def test_bad_periods_are_4xx_problems(
    agency: tuple[Analyst, CaseApi, FakeClock], query: str
) -> None:
    analyst, _, _ = agency
    conn = await asyncpg.connect(analyst.database_url)
    try:
        before = await event_count(conn)
        response = await analyst.client.get(
            f"/v1/analytics/outcomes{query}",
            headers=bearer(analyst.token(role="analyst", agency=AGENCY)),
        )
        assert response.status in (400, 422), query
        assert response.content_type == "application/problem+json"
        assert (await response.json())["detail"], query
        assert await event_count(conn) == before
    finally:
        await conn.close()
