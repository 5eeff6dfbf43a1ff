"""Outcome analytics read a case at a time (decision 0011, "At scale"): the same answers as the
whole-list summing they replace, whatever the read's batch size and wherever a case falls.

The reference below is that earlier implementation, kept here alone: every fact of the period
loaded into a list, then summed. Random facts are written to the projection's table and both
read them; the JSON must be the same byte for byte, withheld figures and all, at k = 1, 2, 5.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import api
from services.records.application.analytics import (
    DAYS_PER_MONTH,
    Cell,
    Disclosure,
    Totals,
    _median,
    read_totals,
    summarize,
)
from services.records.projections import outcomes
from services.records.projections.outcomes import (
    _COLUMNS,
    CaseOutcomes,
    CaseReviews,
    GoalEvent,
    LifeEvent,
    OutcomeFact,
)
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.test_agency_policy import write_policy

# ------------------------------------------------------------- the reference: the whole list

_REFERENCE_FACTS = (
    f"SELECT {_COLUMNS} FROM records.outcome_facts WHERE agency = $1 AND occurred_on <= $3"
    " AND (occurred_on >= $2 OR kind = ANY($4::text[])) AND kind <> ALL($5::text[])"
    " ORDER BY case_id, version")
# A review is due on its latest scheduling's date, unless a reschedule was recorded on a day
# after the date then in force: then on that date, missed, never on time (decision 0011).
_REFERENCE_REVIEWS = """
    WITH scheduled AS (
        SELECT f.review_id, f.case_id, f.version, f.occurred_on, f.due_on,
               (SELECT p.due_on FROM records.outcome_facts p
                WHERE p.agency = $1 AND p.kind = 'review_due' AND p.review_id = f.review_id
                  AND p.version < f.version ORDER BY p.version DESC LIMIT 1) AS was_due
        FROM records.outcome_facts f WHERE f.agency = $1 AND f.kind = 'review_due'),
    latest AS (
        SELECT DISTINCT ON (review_id) review_id, case_id, version,
               coalesce((SELECT m.was_due FROM scheduled m WHERE m.review_id = s.review_id
                         AND m.occurred_on > m.was_due ORDER BY m.version LIMIT 1),
                        due_on) AS due_on,
               EXISTS (SELECT FROM scheduled m WHERE m.review_id = s.review_id
                       AND m.occurred_on > m.was_due) AS missed
        FROM scheduled s ORDER BY review_id, version DESC)
    SELECT l.case_id, l.due_on, h.event_id IS NOT NULL AS held,
           coalesce(h.on_time, false) AND NOT l.missed AS on_time
    FROM latest l
    LEFT JOIN records.outcome_facts h
        ON h.agency = $1 AND h.review_id = l.review_id AND h.kind = 'review_held'
    WHERE l.due_on BETWEEN $2 AND $3
      AND NOT EXISTS (
        SELECT FROM records.outcome_facts c
        WHERE c.case_id = l.case_id AND c.kind = 'case_closed' AND c.version > l.version
          AND c.occurred_on <= l.due_on AND (h.version IS NULL OR c.version < h.version))"""
CASE_LIFE = ("case_opened", "case_closed", "case_reopened")


@dataclass(frozen=True)
class DueReview:
    case_id: UUID
    due_on: date
    held: bool
    on_time: bool


async def reference_answer(pool: asyncpg.Pool, agency: str, since: date, until: date,
                           today: date, min_cell: int) -> api.OutcomesView:
    rows = await pool.fetch(_REFERENCE_FACTS, agency, since, until, list(CASE_LIFE),
                            ["review_due", "review_held"])
    facts = [OutcomeFact(*row) for row in rows]
    reviews = [DueReview(**dict(row)) for row in await pool.fetch(
        _REFERENCE_REVIEWS, agency, since, min(until, today))]
    return reference_summarize(agency, since, until, facts, reviews, today=today,
                               min_cell=min_cell)


def _cell_of(case_ids: Iterable[UUID]) -> Cell:
    ids = list(case_ids)
    return Cell(len(ids), frozenset(ids))


def _cell(facts: Iterable[OutcomeFact]) -> Cell:
    return _cell_of(fact.case_id for fact in facts)


def reference_summarize(agency: str, since: date, until: date, facts: list[OutcomeFact],
                        reviews: list[DueReview], *, today: date,
                        min_cell: int) -> api.OutcomesView:
    period = [fact for fact in facts if since <= fact.occurred_on <= until]
    lived_until = min(until, today)
    days_open = {case_id: _days_open(list(life), since, lived_until)
                 for case_id, life in groupby(facts, key=lambda fact: fact.case_id)}
    case_months = sum(days_open.values()) / DAYS_PER_MONTH
    shown = Disclosure(min_cell)
    cases_open = shown.count("cases_open",
                             _cell_of(case for case, days in days_open.items() if days > 0))
    months = shown.built_on("case_months", round(case_months, 2), cases_open)
    sections = {
        "co_creation": _co_creation(shown, [f for f in period if f.kind == "plan_agreed"]),
        "goals_achieved": _goals(shown, _achievements(period)),
        "small_wins": _small_wins(shown, period, case_months, months),
        "reviews": _reviews(shown, reviews, today),
    }
    return api.OutcomesView.model_validate({
        "agency": agency, "from": since, "to": until, "min_cell": min_cell,
        "withheld": shown.withheld, "cases_open": cases_open, "case_months": months,
        **sections,
    })


def _days_open(life: list[OutcomeFact], since: date, until: date) -> int:
    days = 0
    opened: date | None = None
    counted_before: date | None = None
    for fact in life:
        if fact.kind in ("case_opened", "case_reopened") and opened is None:
            opened = max(fact.occurred_on, counted_before or fact.occurred_on)
        elif fact.kind == "case_closed" and opened is not None:
            counted_before = fact.occurred_on + timedelta(days=1)
            days += _overlap(opened, counted_before, since, until)
            opened = None
    if opened is not None:
        days += _overlap(opened, until + timedelta(days=1), since, until)
    return days


def _overlap(start: date, end: date, since: date, until: date) -> int:
    return max(0, (min(end, until + timedelta(days=1)) - max(start, since)).days)


def _co_creation(shown: Disclosure, agreements: list[OutcomeFact]) -> dict[str, object]:
    parts = (_cell(fact for fact in agreements if not fact.agreed),
             _cell(fact for fact in agreements if fact.agreed and not fact.co_created),
             _cell(fact for fact in agreements if fact.co_created))
    counts = shown.nested("co_creation", ("agreements", "agreed", "co_created"), parts)
    rate = _ratio(parts[2].count, parts[1].count + parts[2].count)
    return {**counts, "rate": shown.built_on("co_creation.rate", rate, counts["co_created"],
                                             counts["agreed"])}


class Achievements(NamedTuple):
    standing: list[OutcomeFact]
    cancelled: list[OutcomeFact]
    from_before: list[OutcomeFact]
    taken_back: list[OutcomeFact]


def _achievements(period: list[OutcomeFact]) -> Achievements:
    standing: dict[object, list[OutcomeFact]] = {}
    found = Achievements([], [], [], [])
    for fact in period:
        if fact.kind == "goal_achieved":
            standing.setdefault(fact.goal_id or fact.event_id, []).append(fact)
        elif fact.kind == "goal_unachieved":
            found.taken_back.append(fact)
            won = standing.get(fact.goal_id) if fact.goal_id is not None else None
            if won:
                found.cancelled.append(won.pop())
            else:
                found.from_before.append(fact)
    found.standing.extend(fact for facts in standing.values() for fact in facts)
    return found


def _goals(shown: Disclosure, found: Achievements) -> dict[str, object]:
    def net(domain: str | None = None) -> Cell:
        def kept(facts: list[OutcomeFact]) -> Cell:
            return _cell(fact for fact in facts if domain in (None, str(fact.domain)))
        return kept(found.standing).less(kept(found.from_before))

    domains = {str(fact.domain) for fact in found.standing + found.from_before}
    by_domain, other = shown.domains("goals_achieved", {domain: net(domain) for domain in domains})
    total = shown.count("goals_achieved.total", net(), unless=other is None)
    recorded = _cell(found.standing + found.cancelled)
    reversed_ = shown.count("goals_achieved.reversed", _cell(found.taken_back),
                            unless=total is not None and not shown.safe(recorded))
    timed = [(fact.case_id, fact.days) for fact in found.standing if fact.days is not None]
    median = statistics.median(days for _, days in timed) if timed else None
    return {"total": total, "by_domain": by_domain, "other_withheld": other,
            "reversed": reversed_,
            "median_days_to_achievement": shown.show(
                "goals_achieved.median_days_to_achievement", median,
                shown.safe(_cell_of(case for case, _ in timed)))}


def _small_wins(shown: Disclosure, period: list[OutcomeFact], case_months: float,
                months: float | None) -> dict[str, object]:
    completed = _cell(fact for fact in period if fact.kind == "step_completed")
    uncompleted = _cell(fact for fact in period if fact.kind == "step_uncompleted")
    net = shown.count("small_wins.steps_completed", completed.less(uncompleted))
    reversed_ = shown.count("small_wins.reversed", uncompleted,
                            unless=net is not None and not shown.safe(completed))
    per_month = _ratio(completed.count - uncompleted.count, case_months)
    return {"steps_completed": net, "reversed": reversed_,
            "per_case_month": shown.built_on("small_wins.per_case_month", per_month, net,
                                             months)}


def _reviews(shown: Disclosure, reviews: list[DueReview], today: date) -> dict[str, object]:
    counted = [r for r in reviews if r.held or r.due_on < today]
    not_held = _cell_of(r.case_id for r in counted if not r.held)
    late = _cell_of(r.case_id for r in counted if r.held and not r.on_time)
    on_time = _cell_of(r.case_id for r in counted if r.on_time)
    counts = shown.nested("reviews", ("due", "held", "on_time"), (not_held, late, on_time))
    missed = shown.built_on("reviews.not_held", not_held.count, counts["due"], counts["held"])
    rate = _ratio(on_time.count, len(counted))
    return {**counts, "not_held": missed, "on_time_rate": shown.built_on(
        "reviews.on_time_rate", rate, counts["on_time"], counts["due"])}


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


# ---------------------------------------------------------------------------- random facts

BASE = date(2026, 3, 1)
KINDS = (*CASE_LIFE, "plan_agreed", "goal_achieved", "goal_unachieved", "step_completed",
         "step_uncompleted", "review_due", "review_held")
_INSERT = (f"INSERT INTO records.outcome_facts ({_COLUMNS})"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")

maybe_bool = st.one_of(st.none(), st.booleans())
# a few days and goals, so that facts meet: a take-back after its achievement, a review due
# on the day asked about, a case closed the day it reopened
fact_draw = st.tuples(
    st.sampled_from(KINDS + ("goal_achieved", "goal_unachieved") * 2),  # kind
    st.integers(0, 12),  # day after BASE
    st.sampled_from(["employment", "housing", "education", None]),  # domain
    st.one_of(st.none(), st.integers(0, 9)),  # days to achievement
    maybe_bool, maybe_bool, maybe_bool,  # agreed, co_created, on_time
    st.sampled_from([None, 0, 0, 1]),  # which of the case's goals
    st.integers(0, 1), st.integers(0, 12))  # which of its reviews, due day after BASE
case_draw = st.tuples(st.sampled_from(["agency-a", "agency-a", "agency-a", "agency-b"]),
                      st.lists(fact_draw, max_size=14))


def case_rows(number: int, agency: str, drawn: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One case's facts, versions in the order drawn; goals and reviews are the case's own."""
    case_id = UUID(int=number * 7919 + 1)
    goals = [UUID(int=(number << 8) + 16 + i) for i in range(3)]
    reviews = [UUID(int=(number << 8) + 32 + i) for i in range(2)]
    rows = []
    for version, (kind, day, domain, days, agreed, co_created, on_time, goal, review,
                  due) in enumerate(drawn, start=1):
        rows.append((uuid4(), case_id, version, agency, kind, BASE + timedelta(days=day),
                     domain, days, agreed, co_created, on_time, reviews[review],
                     BASE + timedelta(days=due), goals[goal] if goal is not None else None))
    return rows


async def both_answers(database_url: str, rows: list[tuple[Any, ...]], since: date,
                       until: date, today: date, min_cell: int) -> tuple[str, str]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await pool.execute("DELETE FROM records.outcome_facts")
        await pool.executemany(_INSERT, rows)
        reference = await reference_answer(pool, "agency-a", since, until, today, min_cell)
        totals = await read_totals(pool, "agency-a", since, until, today=today)
        streamed = summarize("agency-a", since, until, totals, min_cell=min_cell)
        return streamed.model_dump_json(), reference.model_dump_json()
    finally:
        await pool.close()


@pytest.mark.parametrize("min_cell", [1, 2, 5])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cases=st.lists(case_draw, max_size=12), since_day=st.integers(0, 6),
       length=st.integers(0, 6), today_day=st.integers(0, 14),
       batch=st.sampled_from([1, 2, 3, 500]))
def test_a_case_at_a_time_gives_the_whole_lists_answer(
        fresh_database_url: str, monkeypatch: pytest.MonkeyPatch, min_cell: int,
        cases: list[tuple[str, list[tuple[Any, ...]]]], since_day: int, length: int,
        today_day: int, batch: int) -> None:
    monkeypatch.setattr(outcomes, "READ_BATCH", batch)
    rows = [row for number, (agency, drawn) in enumerate(cases)
            for row in case_rows(number, agency, drawn)]
    since = BASE + timedelta(days=since_day)
    streamed, reference = asyncio.run(both_answers(
        fresh_database_url, rows, since, since + timedelta(days=length),
        BASE + timedelta(days=today_day), min_cell))
    assert streamed == reference


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-5, 400), max_size=40))
def test_the_median_of_counted_days_is_statistics_median(days: list[int]) -> None:
    expected = statistics.median(days) if days else None
    found = _median(Counter(days))
    assert (found, type(found)) == (expected, type(expected))


few = st.integers(0, 2)
a_case = st.builds(
    CaseOutcomes, st.uuids(), few, few, few, few, few,
    st.lists(st.builds(LifeEvent, st.sampled_from(CASE_LIFE),
                       st.dates(BASE, BASE + timedelta(days=12))), max_size=4).map(tuple),
    st.lists(st.builds(GoalEvent, st.sampled_from(["goal_achieved", "goal_unachieved"]),
                       st.sampled_from([None, UUID(int=1), UUID(int=2)]),
                       st.sampled_from(["employment", "housing", None]),
                       st.one_of(st.none(), st.integers(0, 9))), max_size=4).map(tuple))


@settings(max_examples=200, deadline=None)
@given(cases=st.lists(a_case, max_size=12), reviews=st.lists(st.tuples(few, few, few)),
       order=st.randoms(), min_cell=st.sampled_from([1, 2, 5]))
def test_the_figures_do_not_depend_on_the_order_cases_are_read_in(
        cases: list[CaseOutcomes], reviews: list[tuple[int, int, int]], order: Any,
        min_cell: int) -> None:
    """The database hands the cases over in no particular order (pure: no database here)."""
    due = [CaseReviews(case.case_id, *counts)
           for case, counts in zip(cases, reviews, strict=False)]

    def answer(cases: list[CaseOutcomes], due: list[CaseReviews]) -> str:
        totals = Totals(BASE + timedelta(days=3), BASE + timedelta(days=9))
        for case in cases:
            totals.add_case(case)
        for case_reviews in due:
            totals.add_reviews(case_reviews)
        return summarize("agency-a", BASE + timedelta(days=3), BASE + timedelta(days=9),
                         totals, min_cell=min_cell).model_dump_json()

    expected = answer(cases, due)
    order.shuffle(cases)
    order.shuffle(due)
    assert answer(cases, due) == expected


# -------------------------------------------------------- pages: one case per row, any size

@dataclass
class Fact:
    kind: str
    on: str  # the agency's date
    domain: str | None = None
    days: int | None = None
    agreed: bool | None = None
    co_created: bool | None = None
    on_time: bool | None = None
    review: str | None = None
    due_on: str | None = None
    goal: str | None = None


# One long case (more facts than a page holds): open from before March, an achievement taken
# back and achieved again in another domain, an earlier one taken back, a small win taken back,
# a review held on time, closed on the 28th: 28 days open in March.
LONG_CASE = [
    Fact("case_opened", "2026-02-01"),
    Fact("plan_agreed", "2026-02-03", agreed=True, co_created=True),  # before March
    Fact("review_due", "2026-02-03", review="r1", due_on="2026-03-03"),
    Fact("review_held", "2026-03-02", review="r1", on_time=True),
    Fact("goal_achieved", "2026-03-05", domain="employment", days=30, goal="g"),
    Fact("step_completed", "2026-03-06"),
    Fact("step_completed", "2026-03-07"),
    Fact("step_uncompleted", "2026-03-08"),
    Fact("goal_unachieved", "2026-03-20", domain="employment", goal="g"),
    Fact("goal_achieved", "2026-03-25", domain="housing", days=50, goal="g"),
    Fact("goal_unachieved", "2026-03-26", domain="education", goal="h"),  # achieved before
    Fact("case_closed", "2026-03-28"),
]


def short_case(i: int) -> list[Fact]:
    """Six cases opened on 10 March (22 days open each): plans co-created (0-2), agreed (3),
    not agreed (4), none (5); small wins (0-3); employment achieved (0, 1); a review due on
    the 25th held on time (0), late (1), not held (2)."""
    facts = [Fact("case_opened", "2026-03-10")]
    if i < 5:
        facts.append(Fact("plan_agreed", "2026-03-11", agreed=i < 4, co_created=i < 3))
    if i < 4:
        facts.append(Fact("step_completed", "2026-03-12"))
    if i < 2:
        facts.append(Fact("goal_achieved", "2026-03-15", domain="employment", days=5,
                          goal="g"))
    if i < 3:
        facts.append(Fact("review_due", "2026-03-11", review="r", due_on="2026-03-25"))
    if i < 2:
        facts.append(Fact("review_held", f"2026-03-{24 + 4 * i}", review="r", on_time=i == 0))
    return facts


CASE_MONTHS = (28 + 6 * 22) / DAYS_PER_MONTH
EXPECTED = {
    "agency": "agency-a", "from": "2026-03-01", "to": "2026-03-31", "min_cell": 1,
    "withheld": [], "cases_open": 7, "case_months": round(CASE_MONTHS, 2),
    "co_creation": {"agreements": 5, "agreed": 4, "co_created": 3, "rate": 0.75},
    # the long case: employment taken back, housing 50 days stands, education taken back
    # from before; two short cases' employment at 5 days
    "goals_achieved": {"total": 2, "by_domain": {"education": -1, "employment": 2,
                                                 "housing": 1},
                       "other_withheld": 0, "reversed": 2, "median_days_to_achievement": 5},
    "small_wins": {"steps_completed": 5, "reversed": 1,
                   "per_case_month": round(5 / CASE_MONTHS, 4)},
    "reviews": {"due": 4, "held": 3, "on_time": 2, "not_held": 1, "on_time_rate": 0.5},
}


def fact_rows(agency: str, cases: list[list[Fact]]) -> list[tuple[Any, ...]]:
    rows = []
    for facts in cases:
        case_id = uuid4()
        named = {name: uuid4() for fact in facts for name in (fact.goal, fact.review) if name}
        for version, f in enumerate(facts, start=1):
            rows.append((uuid4(), case_id, version, agency, f.kind, date.fromisoformat(f.on),
                         f.domain, f.days, f.agreed, f.co_created, f.on_time,
                         named.get(f.review or ""),
                         date.fromisoformat(f.due_on) if f.due_on else None,
                         named.get(f.goal or "")))
    return rows


@pytest.fixture
async def seven_cases(make_records_client: ClientFactory, fresh_database_url: str,
                      tmp_path: Path) -> Any:
    write_policy(tmp_path, "agency-a", {"analytics_min_cell": 1})
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.executemany(_INSERT, fact_rows(
            "agency-a", [LONG_CASE, *(short_case(i) for i in range(6))]))
        # another agency's case, as long: none of it counts
        await conn.executemany(_INSERT, fact_rows("agency-b", [LONG_CASE]))
    finally:
        await conn.close()
    clock = FakeClock(datetime(2026, 4, 10, 9, 0, tzinfo=UTC))
    return await make_records_client(fresh_database_url, clock=clock,
                                     CASETRAIL_POLICY_DIR=str(tmp_path))


async def _march(client: Any, token: TokenFactory) -> Any:
    response = await client.get("/v1/analytics/outcomes?from=2026-03-01&to=2026-03-31",
                                headers=bearer(token(role="analyst", sub="an-1")))
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.parametrize("batch", [1, 2, 3, 6, 7, 500])
async def test_an_agency_read_over_many_pages_gives_the_one_page_answer(
        seven_cases: Any, token: TokenFactory, monkeypatch: pytest.MonkeyPatch,
        batch: int) -> None:
    """Seven cases read 1, 2, 3, 6 or 7 at a time: each page boundary falls somewhere else."""
    monkeypatch.setattr(outcomes, "READ_BATCH", batch)
    assert await _march(seven_cases, token) == EXPECTED


async def test_a_case_with_more_facts_than_a_page_is_read_whole(
        seven_cases: Any, token: TokenFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The long case's twelve facts straddle any page of two: its take-back still cancels the
    achievement it takes back (not counted as one from before the period), and its 28 days
    open are counted once."""
    monkeypatch.setattr(outcomes, "READ_BATCH", 2)
    body = await _march(seven_cases, token)
    assert body["goals_achieved"]["by_domain"] == {"education": -1, "employment": 2,
                                                   "housing": 1}
    assert body["case_months"] == round(CASE_MONTHS, 2)
    assert body == EXPECTED
