"""Outcome analytics for program analysts: what works, from the outcome facts of a period.

Aggregates only: no case, participant or worker is named in the answer, and a figure too small
to show without singling people out is withheld (small-cell suppression, decision 0011).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import NamedTuple, TypeVar
from uuid import UUID

import asyncpg

from schemas import api
from services.common.auth import Principal
from services.records.application.access import authorize_analytics
from services.records.application.policy import AgencyPolicies
from services.records.projections.outcomes import (
    CaseOutcomes,
    CaseReviews,
    GoalEvent,
    LifeEvent,
    case_outcomes,
    case_reviews,
    reading,
)
from services.records.store.events import Clock

DEFAULT_PERIOD = timedelta(days=364)  # with today: the last 365 days
DAYS_PER_MONTH = 365.25 / 12
V = TypeVar("V")


class OutcomeAnalytics:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, policies: AgencyPolicies) -> None:
        self._pool = pool
        self._clock = clock
        self._policies = policies
        # One answer at a time. Not for memory any more (an answer holds its cases' ids, a few
        # MiB for 20,000 cases, not the period's facts): each answer takes a pool connection
        # for its whole read and a scan of the agency's facts from the database, so analysts
        # asking at once take one connection from the case managers' writes, not one each.
        self._one_at_a_time = asyncio.Lock()

    async def outcomes(self, who: Principal, since: date | None,
                       until: date | None) -> api.OutcomesView:
        authorize_analytics(who)
        policy = self._policies.for_agency(who.agency)
        # the agency's today: facts and due dates are its days, and a review due today may
        # still be held until its own midnight
        today = policy.date_at(self._clock())
        until = until or today
        since = since or until - DEFAULT_PERIOD
        if since > until:  # only `from` was given, and it lies after today
            until = since
        async with self._one_at_a_time:
            totals = await read_totals(self._pool, who.agency, since, until, today=today)
        return summarize(who.agency, since, until, totals, min_cell=policy.analytics_min_cell)


async def read_totals(pool: asyncpg.Pool, agency: str, since: date, until: date, *,
                      today: date) -> Totals:
    """The agency's totals from ``since`` through ``until``, added up a case at a time as the
    cases are read. Days after ``today`` have not happened: no case was open on them."""
    lived_until = min(until, today)
    totals = Totals(since, lived_until)
    async with reading(pool) as conn:
        async for case in case_outcomes(conn, agency, since, until):
            totals.add_case(case)
        async for reviews in case_reviews(conn, agency, since, lived_until, today):
            totals.add_reviews(reviews)
    return totals


@dataclass(frozen=True)
class Cell:
    """A count and the participants' cases behind it."""

    count: int = 0
    cases: frozenset[UUID] = frozenset()

    def __add__(self, other: Cell) -> Cell:
        return Cell(self.count + other.count, self.cases | other.cases)

    def less(self, other: Cell) -> Cell:
        """A net count: this less ``other``, resting on everyone behind either."""
        return Cell(self.count - other.count, self.cases | other.cases)


def _sum(cells: Iterable[Cell]) -> Cell:
    return sum(cells, Cell())


class Disclosure:
    """Which figures may be shown at minimum cell size ``k``, and the list of those withheld.

    A count is shown when it is 0, or at least k from at least k participants' cases (many small
    wins of one participant still single them out). A count below zero (take-backs of
    achievements from before the period) is withheld: set against the other figures it gives
    small ones away. k = 1 shows every figure exactly.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.withheld: list[str] = []

    def safe(self, cell: Cell) -> bool:
        return (self.k == 1 or cell.count == 0
                or (cell.count >= self.k and len(cell.cases) >= self.k))

    def show(self, path: str, value: V, shown: bool) -> V | None:
        if shown:
            return value
        self.withheld.append(path)
        return None

    def count(self, path: str, cell: Cell, *, unless: bool = False) -> int | None:
        return self.show(path, cell.count, self.safe(cell) and not unless)

    def built_on(self, path: str, value: V, *figures: object) -> V | None:
        """A rate or average: withheld with any figure it is built on."""
        return self.show(path, value, None not in figures)

    def nested(self, section: str, names: Sequence[str],
               parts: Sequence[Cell]) -> dict[str, int | None]:
        """Counts each within the one before: ``names[i]`` counts ``parts[i:]``. Side by side,
        two counts give away their difference (the parts between them): a count is shown when
        it is safe and so is its difference from the last one shown."""
        shown: dict[str, int | None] = {}
        last: int | None = None
        for i, name in enumerate(names):
            cell = _sum(parts[i:])
            ok = self.safe(cell) and (last is None or self.safe(_sum(parts[last:i])))
            shown[name] = self.show(f"{section}.{name}", cell.count, ok)
            last = i if ok else last
        return shown

    def domains(self, section: str,
                nets: dict[str, Cell]) -> tuple[dict[str, int], int | None]:
        """The domains shown by name, and the rest added up without names: naming a withheld
        domain would tell it was not zero. The total less the listed domains is that sum."""
        small = [domain for domain, net in nets.items() if net.count and not self.safe(net)]
        rest = self._joined(nets, small) if small else []
        if rest:
            self.withheld.append(f"{section}.by_domain")
        listed = {domain: net.count for domain, net in sorted(nets.items())
                  if net.count and domain not in rest}
        other = _sum(nets[domain] for domain in rest)
        return listed, self.show(f"{section}.other_withheld", other.count,
                                 not rest or self._shows_as_rest(other))

    def _joined(self, nets: dict[str, Cell], small: list[str]) -> list[str]:
        """``small``, joined by the fewest of the smallest listed domains that make their sum
        safe to show; ``small`` alone when none does (the sum is then withheld)."""
        rest = list(small)
        joining = sorted((domain for domain in nets if nets[domain].count and domain not in small),
                         key=lambda domain: (nets[domain].count, domain))
        while not self._shows_as_rest(_sum(nets[domain] for domain in rest)):
            if not joining:
                return small
            rest.append(joining.pop(0))
        return rest

    def _shows_as_rest(self, rest: Cell) -> bool:
        # a 0 would read as "every domain listed"
        return rest.count != 0 and self.safe(rest)


class Tally:
    """A Cell counted a case at a time: items, and the cases they came from."""

    def __init__(self) -> None:
        self.count = 0
        self.cases: set[UUID] = set()

    def add(self, case_id: UUID, items: int = 1) -> None:
        if items:
            self.count += items
            self.cases.add(case_id)

    @property
    def cell(self) -> Cell:
        return Cell(self.count, frozenset(self.cases))


@dataclass
class Totals:
    """A period's counts, and the cases behind each, added up one case at a time: what the
    figures are built from, without the facts (case life from the start, the rest from
    ``since``). Days after ``lived_until`` count for no case."""

    since: date
    lived_until: date
    days_open: int = 0
    cases_open: Tally = field(default_factory=Tally)
    not_agreed: Tally = field(default_factory=Tally)
    agreed: Tally = field(default_factory=Tally)  # with no goal in the participant's name
    co_created: Tally = field(default_factory=Tally)
    steps_completed: Tally = field(default_factory=Tally)
    steps_uncompleted: Tally = field(default_factory=Tally)
    standing: dict[str, Tally] = field(default_factory=dict)  # achievements not taken back
    from_before: dict[str, Tally] = field(default_factory=dict)  # take-backs of earlier ones
    cancelled: Tally = field(default_factory=Tally)  # the period's achievements taken back in it
    timed: Tally = field(default_factory=Tally)  # standing achievements with their days
    days_to_achievement: Counter[int] = field(default_factory=Counter)
    reviews_not_held: Tally = field(default_factory=Tally)
    reviews_late: Tally = field(default_factory=Tally)
    reviews_on_time: Tally = field(default_factory=Tally)

    def add_case(self, case: CaseOutcomes) -> None:
        case_id = case.case_id
        days = _days_open(case.life, self.since, self.lived_until)
        if days:
            self.days_open += days
            self.cases_open.add(case_id)
        self.not_agreed.add(case_id, case.not_agreed)
        self.agreed.add(case_id, case.agreed)
        self.co_created.add(case_id, case.co_created)
        self.steps_completed.add(case_id, case.steps_completed)
        self.steps_uncompleted.add(case_id, case.steps_uncompleted)
        if case.goals:
            self._add_goals(case_id, _achievements(case.goals))

    def _add_goals(self, case_id: UUID, found: Achievements) -> None:
        for won in found.standing:
            self.standing.setdefault(str(won.domain), Tally()).add(case_id)
            if won.days is not None:
                self.timed.add(case_id)
                self.days_to_achievement[won.days] += 1
        for taken in found.from_before:
            self.from_before.setdefault(str(taken.domain), Tally()).add(case_id)
        self.cancelled.add(case_id, len(found.cancelled))

    def add_reviews(self, reviews: CaseReviews) -> None:
        self.reviews_not_held.add(reviews.case_id, reviews.not_held)
        self.reviews_late.add(reviews.case_id, reviews.late)
        self.reviews_on_time.add(reviews.case_id, reviews.on_time)


def summarize(agency: str, since: date, until: date, totals: Totals, *,
              min_cell: int) -> api.OutcomesView:
    """The period's figures from its totals. Figures too small to show at ``min_cell`` are
    withheld."""
    case_months = totals.days_open / DAYS_PER_MONTH
    shown = Disclosure(min_cell)
    cases_open = shown.count("cases_open", totals.cases_open.cell)
    months = shown.built_on("case_months", round(case_months, 2), cases_open)
    sections = {
        "co_creation": _co_creation(shown, totals),
        "goals_achieved": _goals(shown, totals),
        "small_wins": _small_wins(shown, totals, case_months, months),
        "reviews": _reviews(shown, totals),
    }
    return api.OutcomesView.model_validate({
        "agency": agency, "from": since, "to": until, "min_cell": min_cell,
        "withheld": shown.withheld, "cases_open": cases_open, "case_months": months,
        **sections,
    })


def _days_open(life: Iterable[LifeEvent], since: date, until: date) -> int:
    """Days of [since, until] on which the case was open, walking its openings and closings;
    the day it closed counts (it was open that day), once even if it reopened that day."""
    days = 0
    opened: date | None = None
    counted_before: date | None = None  # days before this one were counted already
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
    """Days of [start, end) inside [since, until]."""
    return max(0, (min(end, until + timedelta(days=1)) - max(start, since)).days)


def _co_creation(shown: Disclosure, totals: Totals) -> dict[str, object]:
    parts = (totals.not_agreed.cell, totals.agreed.cell, totals.co_created.cell)
    counts = shown.nested("co_creation", ("agreements", "agreed", "co_created"), parts)
    rate = _ratio(parts[2].count, parts[1].count + parts[2].count)
    return {**counts, "rate": shown.built_on("co_creation.rate", rate, counts["co_created"],
                                             counts["agreed"])}


class Achievements(NamedTuple):
    """One case's goal facts of the period, each achievement paired with its take-back."""

    standing: list[GoalEvent]  # the period's achievements not taken back in it
    cancelled: list[GoalEvent]  # the period's achievements taken back in it
    from_before: list[GoalEvent]  # take-backs of achievements from before the period


def _achievements(goals: Iterable[GoalEvent]) -> Achievements:
    """A take-back cancels its goal's achievement in the period, domain and days with it;
    one of an achievement before the period is taken off in the goal's domain. A goal is one
    case's: its achievements and take-backs are paired within the case."""
    standing: dict[UUID, list[GoalEvent]] = {}  # the period's achievements, per goal
    found = Achievements([], [], [])
    for fact in goals:
        if fact.kind == "goal_achieved":
            if fact.goal_id is None:  # named no goal: nothing can take it back
                found.standing.append(fact)
            else:
                standing.setdefault(fact.goal_id, []).append(fact)
        elif fact.kind == "goal_unachieved":
            won = standing.get(fact.goal_id) if fact.goal_id is not None else None
            if won:
                found.cancelled.append(won.pop())
            else:
                found.from_before.append(fact)
    found.standing.extend(fact for facts in standing.values() for fact in facts)
    return found


def _goals(shown: Disclosure, totals: Totals) -> dict[str, object]:
    won = {domain: tally.cell for domain, tally in totals.standing.items()}
    lost = {domain: tally.cell for domain, tally in totals.from_before.items()}
    nets = {domain: won.get(domain, Cell()).less(lost.get(domain, Cell()))
            for domain in sorted(won.keys() | lost.keys())}
    by_domain, other = shown.domains("goals_achieved", nets)
    standing, from_before = _sum(won.values()), _sum(lost.values())
    total = shown.count("goals_achieved.total", standing.less(from_before),
                        unless=other is None)
    # side by side, the total and the take-backs add up to the achievements of the period;
    # every take-back cancelled an achievement of the period or one from before it
    recorded = standing + totals.cancelled.cell
    reversed_ = shown.count("goals_achieved.reversed", totals.cancelled.cell + from_before,
                            unless=total is not None and not shown.safe(recorded))
    median = _median(totals.days_to_achievement)
    return {"total": total, "by_domain": by_domain, "other_withheld": other,
            "reversed": reversed_,
            "median_days_to_achievement": shown.show(
                "goals_achieved.median_days_to_achievement", median,
                shown.safe(totals.timed.cell))}


def _median(counted: Counter[int]) -> float | None:
    """``statistics.median`` of the values counted (an int when their number is odd), without
    listing them: memory follows the distinct values, not the achievements."""
    size = counted.total()
    if not size:
        return None
    low, high = _at_rank(counted, (size - 1) // 2), _at_rank(counted, size // 2)
    return low if size % 2 else (low + high) / 2


def _at_rank(counted: Counter[int], rank: int) -> int:
    """The value at 0-based ``rank`` of the values counted, in order."""
    seen = 0
    for value in sorted(counted):
        seen += counted[value]
        if rank < seen:
            return value
    raise ValueError(rank)


def _small_wins(shown: Disclosure, totals: Totals, case_months: float,
                months: float | None) -> dict[str, object]:
    """Steps completed in the period, less completions taken back in it (a step moved back
    from completed)."""
    completed, uncompleted = totals.steps_completed.cell, totals.steps_uncompleted.cell
    net = shown.count("small_wins.steps_completed", completed.less(uncompleted))
    # side by side, the two add up to the steps completed in the period
    reversed_ = shown.count("small_wins.reversed", uncompleted,
                            unless=net is not None and not shown.safe(completed))
    per_month = _ratio(completed.count - uncompleted.count, case_months)
    return {"steps_completed": net, "reversed": reversed_,
            "per_case_month": shown.built_on("small_wins.per_case_month", per_month, net,
                                             months)}


def _reviews(shown: Disclosure, totals: Totals) -> dict[str, object]:
    """Reviews that fell due in the period by their date in force: held on time, held late,
    or not held yet (one due today is not counted until tomorrow; one moved after its date had
    passed stays due on that date, missed: ``case_reviews``)."""
    not_held = totals.reviews_not_held.cell
    late, on_time = totals.reviews_late.cell, totals.reviews_on_time.cell
    counts = shown.nested("reviews", ("due", "held", "on_time"), (not_held, late, on_time))
    # due less held: shown with both, its size checked with theirs
    missed = shown.built_on("reviews.not_held", not_held.count, counts["due"], counts["held"])
    rate = _ratio(on_time.count, not_held.count + late.count + on_time.count)
    return {**counts, "not_held": missed, "on_time_rate": shown.built_on(
        "reviews.on_time_rate", rate, counts["on_time"], counts["due"])}


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None
