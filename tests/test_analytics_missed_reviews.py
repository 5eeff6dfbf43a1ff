"""Reviews held on time: a review missed stays missed (decision 0011, "reviews held on time").

A review whose date in force passed unheld was missed on that date. Rescheduling it afterwards
used to make the new date the one in force, so the miss left the figures and a hold by the new
date counted as on time: an agency could turn every missed review into an on-time one. Now a
reschedule recorded on a day after the date in force (the agency's days) leaves the review due
on the date it missed, not on time whether held later or not; one recorded on or before that
day still moves it.

agency-ny (America/New_York, k = 1 unless said): plans agreed at 10:00 on 2 March 2026 with a
high risk level are due on 1 April. Written through the HTTP API with an injected clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.projections.outcomes import _CASE_REVIEWS
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi
from tests.test_agency_policy import write_policy
from tests.test_audit_analytics import rebuild_at

AGENCY, ZONE = "agency-ny", "America/New_York"
APRIL = ("2026-04-01", "2026-04-30")


def _at(local: str) -> datetime:
    """A moment given in New York's wall-clock time."""
    return datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(ZONE)).astimezone(UTC)


@dataclass
class Agency:
    client: TestClient[Any, Any]
    token: TokenFactory
    database_url: str
    clock: FakeClock
    cm: CaseApi

    async def reviews(self, since: str, until: str) -> dict[str, Any]:
        body = await self.outcomes(since, until)
        return dict(body["reviews"])

    async def outcomes(self, since: str, until: str) -> dict[str, Any]:
        response = await self.client.get(
            f"/v1/analytics/outcomes?from={since}&to={until}",
            headers=bearer(self.token(role="analyst", sub="an-1", agency=AGENCY)))
        body = await response.json()
        assert response.status == 200, body
        return dict(body)

    async def agreed_cases(self, count: int, *, on: str = "2026-03-02T10:00") -> list[str]:
        """``count`` high-risk plans agreed at ``on``: their first reviews are due 30 days
        later."""
        self.clock.now = _at(on)
        cases = []
        for _ in range(count):
            case_id = await self.cm.open_case(risk_level="high")
            await self.cm.goal(case_id)
            await self.cm.agree(case_id)
            cases.append(case_id)
        return cases

    async def _next_review(self, case_id: str) -> str:
        return str((await self.cm.plan(case_id))["next_review"]["review_id"])

    async def reschedule(self, case_id: str, *, at: str, to: str) -> None:
        self.clock.now = _at(at)
        review = await self._next_review(case_id)
        await self.cm.call("POST", f"/v1/cases/{case_id}/reviews/{review}/reschedule",
                           {"due_date": to, "reason": "Jo starts a new job that week"},
                           expect=200)

    async def hold(self, case_id: str, *, at: str, **body: Any) -> None:
        self.clock.now = _at(at)
        review = await self._next_review(case_id)
        await self.cm.call("POST", f"/v1/cases/{case_id}/reviews/{review}/held",
                           {"summary": "We talked it through", **body}, expect=200)

    async def close(self, case_id: str, *, at: str) -> None:
        self.clock.now = _at(at)
        await self.cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"},
                           expect=200)

    def ask_on(self, local: str) -> None:
        self.clock.now = _at(local)

    async def rebuild(self) -> None:
        await rebuild_at(self.database_url)


async def _agency(make_records_client: ClientFactory, database_url: str, token: TokenFactory,
                  folder: Path, min_cell: int) -> Agency:
    write_policy(folder, AGENCY, {"timezone": ZONE, "analytics_min_cell": min_cell})
    clock = FakeClock(_at("2026-03-02T10:00"))
    client = await make_records_client(database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(folder))
    return Agency(client, token, database_url, clock,
                  CaseApi(client, token(sub="cm-1", agency=AGENCY)))


@pytest.fixture
async def ny(make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
             tmp_path: Path) -> Agency:
    return await _agency(make_records_client, fresh_database_url, token, tmp_path, 1)


def _reviews(due: int, held: int, on_time: int, not_held: int) -> dict[str, Any]:
    return {"due": due, "held": held, "on_time": on_time, "not_held": not_held,
            "on_time_rate": round(on_time / due, 4) if due else None}


async def test_a_review_rescheduled_after_its_date_passed_counts_as_missed_on_that_date(
        ny: Agency) -> None:
    """The brief's case: due 1 April, missed, rescheduled on 10 April to 20 April and held on
    15 April. It counted as due 20 April and on time; now it is due 1 April, held late, as
    a review held on 15 April without the reschedule is. One rescheduled the same way and
    never held is not held on 1 April, not a review still to come."""
    moved, late, gone = await ny.agreed_cases(3)
    assert (await ny.cm.plan(moved))["next_review"]["due_date"] == "2026-04-01"
    await ny.reschedule(moved, at="2026-04-10T09:00", to="2026-04-20")
    await ny.reschedule(gone, at="2026-04-10T09:05", to="2026-04-20")
    assert await ny.reviews("2026-04-01", "2026-04-10") == _reviews(3, 0, 0, 3)
    await ny.hold(moved, at="2026-04-15T11:00")
    await ny.hold(late, at="2026-04-15T14:00")

    ny.ask_on("2026-05-01T09:00")
    answers = {period: await ny.outcomes(*period)
               for period in (APRIL, ("2026-04-01", "2026-04-01"), ("2026-04-02", "2026-04-30"))}
    assert answers[APRIL]["reviews"] == _reviews(3, 2, 0, 1)
    assert answers["2026-04-01", "2026-04-01"]["reviews"] == _reviews(3, 2, 0, 1)
    assert answers["2026-04-02", "2026-04-30"]["reviews"] == _reviews(0, 0, 0, 0)
    # read off the facts already stored: a rebuild from the events answers the same
    await ny.rebuild()
    for period, before in answers.items():
        assert await ny.outcomes(*period) == before, period


async def test_the_date_passes_when_the_agencys_next_day_begins(ny: Agency) -> None:
    """A review is missed once a day after its due date begins in the agency's time zone.
    Rescheduled at 23:30 on its due day (03:30 the next day in UTC): still in time, due on its
    new date. At 00:30 the next day: missed. Held at 23:30 on its due day: on time."""
    evening, dawn, on_the_day = await ny.agreed_cases(3)
    await ny.hold(on_the_day, at="2026-04-01T23:30")
    await ny.reschedule(evening, at="2026-04-01T23:30", to="2026-04-20")
    await ny.reschedule(dawn, at="2026-04-02T00:30", to="2026-04-20")
    await ny.hold(evening, at="2026-04-20T10:00")
    await ny.hold(dawn, at="2026-04-20T10:05")

    ny.ask_on("2026-05-01T09:00")
    assert await ny.reviews("2026-04-01", "2026-04-01") == _reviews(2, 2, 1, 0)
    assert await ny.reviews("2026-04-20", "2026-04-20") == _reviews(1, 1, 1, 0)


async def test_later_reschedules_do_not_undo_a_miss(ny: Agency) -> None:
    """Moved on 25 March to 5 April (in time: the date moves), missed on 5 April, rescheduled
    on 8 April to 20 April and on 15 April, before that date, to 25 April, held on 25 April:
    due on 5 April and held late. It counted as due 25 April and on time."""
    (twice,) = await ny.agreed_cases(1)
    await ny.reschedule(twice, at="2026-03-25T10:00", to="2026-04-05")
    await ny.reschedule(twice, at="2026-04-08T10:00", to="2026-04-20")
    await ny.reschedule(twice, at="2026-04-15T10:00", to="2026-04-25")
    await ny.hold(twice, at="2026-04-25T10:00")

    ny.ask_on("2026-05-01T09:00")
    assert await ny.reviews("2026-04-05", "2026-04-05") == _reviews(1, 1, 0, 0)
    assert await ny.reviews("2026-04-01", "2026-04-04") == _reviews(0, 0, 0, 0)
    assert await ny.reviews("2026-04-06", "2026-04-30") == _reviews(0, 0, 0, 0)


async def test_a_case_closed_after_a_miss_still_counts_it_as_not_held(ny: Agency) -> None:
    """Closing a case cancels a review not yet due. Rescheduled after it was missed, then the
    case closed before the new date: the close cancelled the review and the miss counted for
    nothing. Now it is due and not held. A review moved in time and cancelled by a close
    before its new date still counts for nothing."""
    missed, moved = await ny.agreed_cases(2)
    await ny.reschedule(moved, at="2026-03-25T10:00", to="2026-04-20")
    await ny.reschedule(missed, at="2026-04-10T10:00", to="2026-04-20")
    await ny.close(missed, at="2026-04-12T10:00")
    await ny.close(moved, at="2026-04-12T10:05")

    ny.ask_on("2026-05-01T09:00")
    assert await ny.reviews(*APRIL) == _reviews(1, 0, 0, 1)
    assert await ny.reviews("2026-04-01", "2026-04-01") == _reviews(1, 0, 0, 1)


async def test_a_miss_in_one_period_and_its_hold_in_the_next(ny: Agency) -> None:
    """Due 31 March, rescheduled on 3 April to 14 April, held on 10 April: March's review,
    held late. It counted in April, on time, and March's miss had gone from March's figures
    as soon as it was moved."""
    (case_id,) = await ny.agreed_cases(1, on="2026-03-01T10:00")
    assert (await ny.cm.plan(case_id))["next_review"]["due_date"] == "2026-03-31"
    march = ("2026-03-01", "2026-03-31")
    await ny.reschedule(case_id, at="2026-04-03T10:00", to="2026-04-14")
    assert await ny.reviews(*march) == _reviews(1, 0, 0, 1)
    await ny.hold(case_id, at="2026-04-10T10:00")

    ny.ask_on("2026-05-01T09:00")
    assert await ny.reviews(*march) == _reviews(1, 1, 0, 0)
    assert await ny.reviews(*APRIL) == _reviews(0, 0, 0, 0)


async def test_a_hold_dated_back_before_a_late_reschedule_is_not_on_time(ny: Agency) -> None:
    """Rescheduled on 10 April, once 1 April had passed with no hold recorded; a hold recorded
    on 12 April then says it was held on 1 April. The reschedule recorded the review unheld
    after its date: it was missed, and the hold counts as late (it counted as on time, 1 April
    being before the new date)."""
    (case_id,) = await ny.agreed_cases(1)
    await ny.reschedule(case_id, at="2026-04-10T10:00", to="2026-04-20")
    await ny.hold(case_id, at="2026-04-12T10:00", held_on="2026-04-01")

    ny.ask_on("2026-05-01T09:00")
    assert await ny.reviews(*APRIL) == _reviews(1, 1, 0, 0)


async def test_a_missed_review_is_a_cell_of_its_own_when_small(
        make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
        tmp_path: Path) -> None:
    """k = 3: three reviews held on their day and one missed, moved and held. Held late, the
    one is the difference between `held` and `on_time` and may not be read off them: `on_time`
    and its rate are withheld. Counted as on time, all four were shown."""
    ny = await _agency(make_records_client, fresh_database_url, token, tmp_path, 3)
    *on_time, moved = await ny.agreed_cases(4)
    for case_id in on_time:
        await ny.hold(case_id, at="2026-04-01T10:00")
    await ny.reschedule(moved, at="2026-04-10T10:00", to="2026-04-20")
    await ny.hold(moved, at="2026-04-20T10:00")

    ny.ask_on("2026-05-01T09:00")
    body = await ny.outcomes(*APRIL)
    assert body["reviews"] == {"due": 4, "held": 4, "on_time": None, "not_held": 0,
                               "on_time_rate": None}
    assert [path for path in body["withheld"] if path.startswith("reviews.")] == [
        "reviews.on_time", "reviews.on_time_rate"]


# An agency's facts written by SQL in the shapes the projection writes (as bench/reads.py
# does): per case, its opening, three reviews scheduled a quarter apart (the second of every
# third case moved after its date had passed), the first two held, one case in five closed.
_MANY_CASES = """
WITH cases AS (
    SELECT gen_random_uuid() AS case_id, i, date '2025-01-01' + i % 300 AS day
    FROM generate_series(1, $2) AS i),
facts AS (
    SELECT case_id, day AS occurred_on, 0 AS seq, 'case_opened' AS kind,
           NULL::boolean AS on_time, NULL::uuid AS review_id, NULL::date AS due_on FROM cases
    UNION ALL
    SELECT case_id, day + 90 * r, 1 + 3 * r, 'review_due', NULL, md5(case_id::text || r)::uuid,
           day + 90 * (r + 1) FROM cases, generate_series(0, 2) AS r
    UNION ALL
    SELECT case_id, day + 185, 5, 'review_due', NULL, md5(case_id::text || 1)::uuid, day + 200
    FROM cases WHERE i % 3 = 0
    UNION ALL
    SELECT case_id, day + 90 * (r + 1) + i % 5 - 2, 2 + 3 * r, 'review_held', i % 5 <= 2,
           md5(case_id::text || r)::uuid, NULL FROM cases, generate_series(0, 1) AS r
    UNION ALL
    SELECT case_id, day + 250, 9, 'case_closed', NULL, NULL, NULL FROM cases WHERE i % 5 = 0)
INSERT INTO records.outcome_facts (event_id, case_id, version, agency, kind, occurred_on,
    on_time, review_id, due_on)
SELECT gen_random_uuid(), case_id, row_number() OVER (PARTITION BY case_id ORDER BY seq)::int,
       $1, kind, occurred_on, on_time, review_id, due_on
FROM facts"""


def _rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows the plan's scans of ``table`` went through, each scan times each time it ran."""
    own = 0
    if plan.get("Relation Name") == table:
        own = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
               + plan.get("Rows Removed by Index Recheck", 0)) * plan["Actual Loops"]
    return own + sum(_rows_read(child, table) for child in plan.get("Plans", ()))


async def test_the_reviews_are_read_in_a_few_passes_over_the_facts_not_one_per_review(
        fresh_pool: asyncpg.Pool) -> None:
    """The read of the reviews due reads the agency's facts a few times, however many
    reviews fell due. Marking the missed ones first read the facts of every closing once per
    review in the period: with the date in force worked out in a table of its own, PostgreSQL
    guessed one review and checked each against every closing, and a year of a 20,000-case
    agency took over 13 minutes, past the 30 s a statement may take (503), where it took
    0.2 s before and takes 0.34 s now."""
    await fresh_pool.execute(_MANY_CASES, "agency-many", 2000)
    await fresh_pool.execute("ANALYZE records.outcome_facts")
    facts = await fresh_pool.fetchval("SELECT count(*) FROM records.outcome_facts")
    async with fresh_pool.acquire() as conn:
        explained = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + _CASE_REVIEWS, "agency-many",
            date(2025, 1, 1), date(2026, 12, 31), date(2026, 6, 1))
    plan = json.loads(explained)[0]["Plan"]
    assert _rows_read(plan, "outcome_facts") <= 4 * facts
