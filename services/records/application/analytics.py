"""Outcome analytics for program analysts: what works, from the outcome facts of a period.

Aggregates only: no case, participant or worker is named in the answer.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from datetime import date, timedelta
from itertools import groupby

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


class OutcomeAnalytics:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, policies: AgencyPolicies) -> None:
        self._pool = pool
        self._clock = clock
        self._policies = policies

    async def outcomes(self, who: Principal, since: date | None,
                       until: date | None) -> api.OutcomesView:
        authorize_analytics(who)
        # the agency's today: facts and due dates are its days, and a review due today may
        # still be held until its own midnight
        today = self._policies.for_agency(who.agency).date_at(self._clock())
        until = until or today
        since = since or until - DEFAULT_PERIOD
        if since > until:  # only `from` was given, and it lies after today
            until = since
        facts = await load_facts(self._pool, who.agency, since, until)
        reviews = await load_due_reviews(self._pool, who.agency, since, min(until, today))
        return summarize(who.agency, since, until, facts, reviews, today=today)


def summarize(agency: str, since: date, until: date, facts: list[OutcomeFact],
              reviews: list[DueReview], *, today: date) -> api.OutcomesView:
    """The period's figures from the agency's facts (case life from the start, the rest from
    ``since``), ordered by case and version, and the reviews due in it. Days after ``today``
    have not happened: no case was open on them."""
    period = [fact for fact in facts if since <= fact.occurred_on <= until]
    kinds = Counter(fact.kind for fact in period)
    lived_until = min(until, today)
    days_open = [_days_open(list(life), since, lived_until)
                 for _, life in groupby(facts, key=lambda fact: fact.case_id)]
    case_months = sum(days_open) / DAYS_PER_MONTH
    return api.OutcomesView.model_validate({
        "agency": agency, "from": since, "to": until,
        "cases_open": sum(1 for days in days_open if days > 0),
        "case_months": round(case_months, 2),
        "co_creation": _co_creation(fact for fact in period if fact.kind == "plan_agreed"),
        "goals_achieved": _goals(period),
        "small_wins": _small_wins(kinds, case_months),
        "reviews": _reviews(reviews, today),
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


def _co_creation(agreements: Iterable[OutcomeFact]) -> dict[str, object]:
    facts = list(agreements)
    agreed = sum(1 for fact in facts if fact.agreed)
    co_created = sum(1 for fact in facts if fact.co_created)
    return {"agreements": len(facts), "agreed": agreed, "co_created": co_created,
            "rate": _ratio(co_created, agreed)}


def _goals(period: list[OutcomeFact]) -> dict[str, object]:
    """A take-back cancels its goal's achievement in the period, domain and days with it;
    one of an achievement before the period is taken off in the goal's domain."""
    standing: dict[object, list[OutcomeFact]] = {}  # the period's achievements, per goal
    from_before: list[OutcomeFact] = []
    reversed_ = 0
    for fact in period:
        if fact.kind == "goal_achieved":
            standing.setdefault(fact.goal_id or fact.event_id, []).append(fact)
        elif fact.kind == "goal_unachieved":
            reversed_ += 1
            won = standing.get(fact.goal_id) if fact.goal_id is not None else None
            if won:
                won.pop()
            else:
                from_before.append(fact)
    achieved = [fact for facts in standing.values() for fact in facts]
    by_domain = Counter(str(fact.domain) for fact in achieved)
    by_domain.subtract(str(fact.domain) for fact in from_before)
    days = [fact.days for fact in achieved if fact.days is not None]
    return {"total": len(achieved) - len(from_before),
            "by_domain": {domain: count for domain, count in sorted(by_domain.items())
                          if count},
            "reversed": reversed_,
            "median_days_to_achievement": statistics.median(days) if days else None}


def _small_wins(kinds: Counter[str], case_months: float) -> dict[str, object]:
    """Steps completed in the period, less completions taken back in it (a step moved back
    from completed)."""
    net = kinds["step_completed"] - kinds["step_uncompleted"]
    return {"steps_completed": net, "reversed": kinds["step_uncompleted"],
            "per_case_month": _ratio(net, case_months)}


def _reviews(reviews: list[DueReview], today: date) -> dict[str, object]:
    """Reviews that fell due in the period: held on time, held late, or not held yet. One due
    today and not held yet may still be held today: it is not counted until tomorrow."""
    counted = [r for r in reviews if r.held or r.due_on < today]
    held = sum(1 for r in counted if r.held)
    on_time = sum(1 for r in counted if r.on_time)
    return {"due": len(counted), "held": held, "on_time": on_time,
            "not_held": len(counted) - held, "on_time_rate": _ratio(on_time, len(counted))}


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None
