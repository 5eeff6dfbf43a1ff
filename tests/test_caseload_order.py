"""`GET /v1/cases?order=next_review`: the caseload by urgency (soonest review first, overdue
ones first of all, cases with no review last, ties by case id), paged by a cursor that carries
the review date; and what that paging promises while reviews move between pages."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from schemas.queries import CaseloadCursor
from services.records.projections.plans import CaseloadFilter, caseload_statement
from tests.conftest import FakeClock, TokenFactory
from tests.records_api import CaseApi, event_count
from tests.test_audit_caseload_listing import agreed_case, listed


def by_urgency(cases: list[dict[str, Any]]) -> list[str]:
    """The case ids in the promised order: soonest review first, none last, then case id."""
    return [c["case_id"] for c in sorted(
        cases, key=lambda c: (c["next_review_due"] or "9999-99-99", c["case_id"]))]


async def pages(api: CaseApi, query: str,
                start: str | None = None) -> tuple[list[str], list[str | None]]:
    """Every case the listing shows, page by page (from after ``start``), and each page's
    ``next_after``."""
    seen: list[str] = []
    cursors: list[str | None] = []
    after = f"&after={start}" if start else ""
    while True:
        page = await api.call("GET", f"/v1/cases?{query}{after}", expect=200)
        seen += [c["case_id"] for c in page["cases"]]
        cursors.append(page["next_after"])
        if page["next_after"] is None:
            return seen, cursors
        after = f"&after={page['next_after']}"


async def test_next_review_order_puts_overdue_reviews_first_and_no_review_last(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    high = [(await agreed_case(cm, "high"))[0] for _ in range(2)]  # due 1 April
    moderate, review = await agreed_case(cm, "moderate")  # due 1 May
    low, _ = await agreed_case(cm, "low")  # due 31 May
    never_agreed = await cm.open_case()
    closed, _ = await agreed_case(cm, "high")
    await cm.call("POST", f"/v1/cases/{closed}/close", {"reason": "Jo moved to Leeds"},
                  expect=200)
    clock.advance(days=35)  # 6 April: the high-risk reviews are overdue
    await cm.call("POST", f"/v1/cases/{moderate}/reviews/{review}/reschedule",
                  {"due_date": "2026-04-10", "reason": "Jo starts work in May"}, expect=200)
    cases = await listed(cm, "order=next_review&limit=200")
    assert [c["case_id"] for c in cases] == [*sorted(high), moderate, low,
                                             *sorted([never_agreed, closed])]
    assert [c["review_overdue"] for c in cases] == [True, True, False, False, False, False]
    assert [c["case_id"] for c in cases] == by_urgency(cases)

    seen, cursors = await pages(cm, "order=next_review&limit=2")
    assert seen == [c["case_id"] for c in cases]
    assert cursors == [f"2026-04-01~{max(high)}", f"2026-05-31~{low}", None]

    by_id, id_cursors = await pages(cm, "limit=4")  # the default order is unchanged
    assert by_id == sorted(seen)
    assert id_cursors == [by_id[3], None]
    assert await pages(cm, "order=case_id&limit=4") == (by_id, id_cursors)


async def test_next_review_order_with_filters_and_a_cursor_in_the_cases_with_no_review(
        client: TestClient, token: TokenFactory) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    high, _ = await agreed_case(cm, "high")
    low, _ = await agreed_case(cm, "low")
    theirs, _ = await agreed_case(CaseApi(client, token(sub="cm-2")), "moderate",
                                  case_manager="cm-2")
    waiting = sorted([await cm.open_case() for _ in range(3)])
    assert [c["case_id"] for c in await listed(
        cm, "order=next_review&review_due_before=2026-06-01")] == [high, low]
    assert [c["case_id"] for c in await listed(
        supervisor, "order=next_review&review_due_before=2026-05-31")] == [high, theirs]
    assert [c["case_id"] for c in await listed(
        supervisor, "order=next_review&case_manager=cm-2&status=open")] == [theirs]
    seen, cursors = await pages(cm, "order=next_review&status=open&limit=3")
    assert seen == [high, low, *waiting]
    assert cursors == [f"-~{waiting[0]}", None]  # no review: "-" where the date would be


async def test_paging_by_next_review_shows_each_case_whose_review_stayed_put_once(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    """The cursor is (review date, case id). A case whose review did not move between two
    pages is shown exactly once, whatever else changed in it; one shown already whose review
    moved past the cursor is shown again, and one not shown yet whose review moved behind the
    cursor is not shown."""
    cm = CaseApi(client, token(sub="cm-1"))
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    high = dict(sorted([await agreed_case(cm, "high") for _ in range(3)]))  # 1 April
    moderate = [(await agreed_case(cm, "moderate"))[0] for _ in range(2)]  # 1 May
    low = dict([await agreed_case(cm, "low") for _ in range(2)])  # 31 May
    waiting = [await cm.open_case() for _ in range(2)]
    first = await supervisor.call("GET", "/v1/cases?order=next_review&limit=2", expect=200)
    shown = [c["case_id"] for c in first["cases"]]
    assert shown == list(high)[:2]

    clock.advance(days=1)  # reviews move between the pages
    held = shown[0]  # held on 3 March: the next one is due 2 April, after the cursor
    await cm.call("POST", f"/v1/cases/{held}/reviews/{high[held]}/held",
                  {"summary": "Jo is on track"}, expect=200)
    moved_back = next(iter(low))  # to 20 March: before the cursor, where the listing has been
    await cm.call("POST", f"/v1/cases/{moved_back}/reviews/{low[moved_back]}/reschedule",
                  {"due_date": "2026-03-20", "reason": "Jo asked to meet sooner"}, expect=200)
    await cm.call("POST", f"/v1/cases/{moderate[0]}/notes", {"text": "Jo started at the"
                                                                     " bike shop"}, expect=201)
    await cm.call("POST", f"/v1/cases/{waiting[0]}/transfer",
                  {"case_manager": "cm-2", "reason": "Jo moved across town"}, expect=200)
    opened = await cm.open_case()
    rest, _ = await pages(supervisor, "order=next_review&limit=2", first["next_after"])
    seen = shown + rest

    stayed_put = {*high, *moderate, *low, *waiting} - {held, moved_back}
    counts = Counter(seen)
    assert {case_id: counts[case_id] for case_id in stayed_put} == dict.fromkeys(stayed_put, 1)
    assert (counts[held], counts[moved_back], counts[opened]) == (2, 0, 1)
    now = {c["case_id"]: c for c in await listed(supervisor, "limit=200")}
    assert rest == by_urgency([now[case_id] for case_id in rest])


ORDER_CASE_ID, ORDER_NEXT_REVIEW = "", "order=next_review&"
SOME_ID = "0dc5cbc2-cbbb-482b-96ef-e012ff002e02"  # fixed: test ids must match across xdist workers


@pytest.mark.parametrize("query", [
    f"{ORDER_NEXT_REVIEW}after={SOME_ID}",  # an id-order cursor in the review order
    f"{ORDER_CASE_ID}after=2026-04-01~{SOME_ID}",  # a review-order cursor in the id order
    f"order=case_id&after=-~{SOME_ID}",
    *(f"{ORDER_NEXT_REVIEW}after={cursor}" for cursor in [
        f"2026-02-30~{SOME_ID}", f"2026-4-1~{SOME_ID}", f"20260401~{SOME_ID}",
        f"~{SOME_ID}", "-~", "2026-04-01~xyz", "2026-04-01", f"2026-04-01~{SOME_ID}~",
        f"%2B~{SOME_ID}", f"--~{SOME_ID}", f"2026-04-01T00:00:00Z~{SOME_ID}",
        f"0000-01-01~{SOME_ID}", f"2026-04-01~{SOME_ID}{'0' * 80}"]),
])
async def test_a_cursor_that_is_malformed_or_of_the_other_order_is_refused(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool,
        query: str) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    await agreed_case(cm, "high")
    events, reads = await event_count(fresh_pool), await _access_log_count(fresh_pool)
    for api in (cm, supervisor):
        problem = await api.call("GET", f"/v1/cases?{query}", expect=422)
        assert [e["field"] for e in problem["errors"]] == ["query.after"], problem
    assert (await event_count(fresh_pool), await _access_log_count(fresh_pool)) == (events,
                                                                                     reads)


async def test_an_unknown_order_is_refused(client: TestClient, token: TokenFactory) -> None:
    problem = await CaseApi(client, token()).call("GET", "/v1/cases?order=urgency", expect=422)
    assert [e["field"] for e in problem["errors"]] == ["query.order"]


async def _access_log_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM records.access_log"))


async def test_a_supervisors_listing_by_review_is_logged_with_its_order(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    case_id, _ = await agreed_case(cm, "high")
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    await supervisor.call("GET", "/v1/cases?order=next_review&status=open", expect=200)
    rows = await fresh_pool.fetch("SELECT case_id, what FROM records.access_log")
    assert [(str(r["case_id"]), r["what"]) for r in rows] == [
        (case_id, "caseload status=open order=next_review")]


# An agency of 20,000 cases: 40 case managers of 500 cases each, three in four with a review.
_SEED = """
INSERT INTO records.plans (case_id, agency, version, status, case_manager, risk_level,
    participant_name, next_review_due, open_step_due_dates, active_goals, opened_at,
    updated_at, view)
SELECT gen_random_uuid(), 'agency-big', 1, CASE WHEN n % 10 = 0 THEN 'closed' ELSE 'open' END,
    'cm-' || (n % 40), 'moderate', 'Participant ' || n,
    CASE WHEN n % 4 = 0 THEN NULL ELSE DATE '2026-03-01' + (n % 120) END, '{}', 1,
    now(), now(), '{}'
FROM generate_series(1, 20000) AS n
"""


@pytest.mark.parametrize(("case_manager", "index"), [
    ("cm-7", "plans_caseload_by_review"), (None, "plans_agency_by_review")])
async def test_the_listing_by_review_reads_an_index_in_order(
        fresh_pool: asyncpg.Pool, case_manager: str | None, index: str) -> None:
    """Paging in the review order reads one index range in order and stops at the page's
    end, for a case manager's caseload and a supervisor's whole agency, planned for these
    values or for any (a prepared statement's generic plan)."""
    async with fresh_pool.acquire() as conn:
        await conn.execute(_SEED)
        await conn.execute("ANALYZE records.plans")
        cursor = await conn.fetchrow(
            "SELECT next_review_due, case_id FROM records.plans WHERE next_review_due"
            " IS NOT NULL ORDER BY next_review_due, case_id OFFSET 5000 LIMIT 1")
        query = CaseloadFilter("agency-big", case_manager, "open", None, date(2026, 4, 1),
                               "next_review",
                               CaseloadCursor(cursor["case_id"], cursor["next_review_due"]), 51)
        sql, args = caseload_statement(query)
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            [plan] = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
            nodes = list(_nodes(plan["Plan"]))
            assert [(n["Node Type"], n.get("Index Name")) for n in nodes
                    if n.get("Relation Name") == "plans"] == [("Index Scan", index)], mode
            assert "Sort" not in {n["Node Type"] for n in nodes}, mode


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)
