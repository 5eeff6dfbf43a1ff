"""Outcome analytics for program analysts: what works, from the outcome facts of a period.

Aggregates only: no case, participant or worker is named in the answer, and a figure too small
to show without singling people out is withheld (small-cell suppression, decision 0011).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import groupby
from typing import NamedTuple, TypeVar
from uuid import UUID

import asyncpg

from schemas import api
from services.common.auth import Principal
from services.records.application.access import authorize_analytics
from services.records.application.policy import AgencyPolicies
from services.records.projections.outcomes import (
    DueReview,
    OutcomeFact,
    load_due_reviews,
    load_facts,
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
        # A year of a large agency's facts is held while it is summed (~140 MiB for 20,000
        # cases, bench/reads.py): one answer at a time, so that several analysts asking at
        # once wait their turn instead of taking the instance past its memory limit.
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
            facts = await load_facts(self._pool, who.agency, since, until)
            reviews = await load_due_reviews(self._pool, who.agency, since, min(until, today))
            return summarize(who.agency, since, until, facts, reviews, today=today,
                             min_cell=policy.analytics_min_cell)


@dataclass(frozen=True)
class Cell:
    """A count and the participants' cases behind it."""

    count: int = 0
    cases: frozenset[UUID] = frozenset()

    @classmethod
    def of(cls, case_ids: Iterable[UUID]) -> Cell:
        """One item counted per id given: several may be one participant's."""
        ids = list(case_ids)
        return cls(len(ids), frozenset(ids))

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


def summarize(agency: str, since: date, until: date, facts: list[OutcomeFact],
              reviews: list[DueReview], *, today: date, min_cell: int) -> api.OutcomesView:
    """The period's figures from the agency's facts (case life from the start, the rest from
    ``since``), ordered by case and version, and the reviews due in it. Days after ``today``
    have not happened: no case was open on them. Figures too small to show at ``min_cell``
    are withheld."""
    period = [fact for fact in facts if since <= fact.occurred_on <= until]
    lived_until = min(until, today)
    days_open = {case_id: _days_open(list(life), since, lived_until)
                 for case_id, life in groupby(facts, key=lambda fact: fact.case_id)}
    case_months = sum(days_open.values()) / DAYS_PER_MONTH
    shown = Disclosure(min_cell)
    cases_open = shown.count("cases_open",
                             Cell.of(case for case, days in days_open.items() if days > 0))
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


def _cell(facts: Iterable[OutcomeFact]) -> Cell:
    return Cell.of(fact.case_id for fact in facts)


def _co_creation(shown: Disclosure, agreements: list[OutcomeFact]) -> dict[str, object]:
    parts = (_cell(fact for fact in agreements if not fact.agreed),
             _cell(fact for fact in agreements if fact.agreed and not fact.co_created),
             _cell(fact for fact in agreements if fact.co_created))
    counts = shown.nested("co_creation", ("agreements", "agreed", "co_created"), parts)
    rate = _ratio(parts[2].count, parts[1].count + parts[2].count)
    return {**counts, "rate": shown.built_on("co_creation.rate", rate, counts["co_created"],
                                             counts["agreed"])}


class Achievements(NamedTuple):
    standing: list[OutcomeFact]  # the period's achievements not taken back in it
    cancelled: list[OutcomeFact]  # the period's achievements taken back in it
    from_before: list[OutcomeFact]  # take-backs of achievements from before the period
    taken_back: list[OutcomeFact]  # every take-back in the period


def _achievements(period: list[OutcomeFact]) -> Achievements:
    """A take-back cancels its goal's achievement in the period, domain and days with it;
    one of an achievement before the period is taken off in the goal's domain."""
    standing: dict[object, list[OutcomeFact]] = {}  # the period's achievements, per goal
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
    # side by side, the total and the take-backs add up to the achievements of the period
    recorded = _cell(found.standing + found.cancelled)
    reversed_ = shown.count("goals_achieved.reversed", _cell(found.taken_back),
                            unless=total is not None and not shown.safe(recorded))
    timed = [(fact.case_id, fact.days) for fact in found.standing if fact.days is not None]
    median = statistics.median(days for _, days in timed) if timed else None
    return {"total": total, "by_domain": by_domain, "other_withheld": other,
            "reversed": reversed_,
            "median_days_to_achievement": shown.show(
                "goals_achieved.median_days_to_achievement", median,
                shown.safe(Cell.of(case for case, _ in timed)))}


def _small_wins(shown: Disclosure, period: list[OutcomeFact], case_months: float,
                months: float | None) -> dict[str, object]:
    """Steps completed in the period, less completions taken back in it (a step moved back
    from completed)."""
    completed = _cell(fact for fact in period if fact.kind == "step_completed")
    uncompleted = _cell(fact for fact in period if fact.kind == "step_uncompleted")
    net = shown.count("small_wins.steps_completed", completed.less(uncompleted))
    # side by side, the two add up to the steps completed in the period
    reversed_ = shown.count("small_wins.reversed", uncompleted,
                            unless=net is not None and not shown.safe(completed))
    per_month = _ratio(completed.count - uncompleted.count, case_months)
    return {"steps_completed": net, "reversed": reversed_,
            "per_case_month": shown.built_on("small_wins.per_case_month", per_month, net,
                                             months)}


def _reviews(shown: Disclosure, reviews: list[DueReview], today: date) -> dict[str, object]:
    """Reviews that fell due in the period: held on time, held late, or not held yet. One due
    today and not held yet may still be held today: it is not counted until tomorrow."""
    counted = [r for r in reviews if r.held or r.due_on < today]
    not_held = Cell.of(r.case_id for r in counted if not r.held)
    late = Cell.of(r.case_id for r in counted if r.held and not r.on_time)
    on_time = Cell.of(r.case_id for r in counted if r.on_time)
    counts = shown.nested("reviews", ("due", "held", "on_time"), (not_held, late, on_time))
    # due less held: shown with both, its size checked with theirs
    missed = shown.built_on("reviews.not_held", not_held.count, counts["due"], counts["held"])
    rate = _ratio(on_time.count, len(counted))
    return {**counts, "not_held": missed, "on_time_rate": shown.built_on(
        "reviews.on_time_rate", rate, counts["on_time"], counts["due"])}


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None
