"""`GET /v1/cases` as a supervisor and a case manager use it (an audit): paging while cases
change between pages, `review_due_before` at its edges, filters combined, the access log."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory
from tests.records_api import CaseApi


async def agreed_case(cm: CaseApi, risk_level: str, case_manager: str = "cm-1") -> tuple[str,
                                                                                        str]:
    """A case whose plan is agreed, and its pending review's id."""
    case_id = await cm.open_case(case_manager=case_manager, risk_level=risk_level)
    await cm.goal(case_id)
    agreed = await cm.agree(case_id)
    [scheduled] = [e for e in agreed["events"] if e["type"] == "ReviewScheduled"]
    return case_id, str(scheduled["data"]["review_id"])


async def listed(api: CaseApi, query: str) -> list[dict[str, Any]]:
    return list((await api.call("GET", f"/v1/cases?{query}", expect=200))["cases"])


async def test_review_due_before_is_strict_and_leaves_out_cases_with_no_review_due(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    high, _ = await agreed_case(cm, "high")  # agreed on 2 March: due 1 April
    moderate, review = await agreed_case(cm, "moderate")  # due 1 May
    never_agreed = await cm.open_case()
    closed, _ = await agreed_case(cm, "high")
    await cm.call("POST", f"/v1/cases/{closed}/close", {"reason": "Jo moved to Leeds"},
                  expect=200)
    due = {c["case_id"]: c["next_review_due"] for c in await listed(cm, "limit=200")}
    assert due == {high: "2026-04-01", moderate: "2026-05-01", never_agreed: None,
                   closed: None}  # closing cancels the review: nobody is to hold it

    def ids(cases: list[dict[str, Any]]) -> set[str]:
        return {c["case_id"] for c in cases}

    assert ids(await listed(cm, "review_due_before=2026-04-01")) == set()
    assert ids(await listed(cm, "review_due_before=2026-04-02")) == {high}
    assert ids(await listed(cm, "review_due_before=9999-12-31")) == {high, moderate}
    assert ids(await listed(cm, "review_due_before=9999-12-31&status=closed")) == set()
    assert ids(await listed(cm, "status=closed")) == {closed}

    clock.advance(days=10)  # the moderate review held early: the next is 60 days on
    await cm.call("POST", f"/v1/cases/{moderate}/reviews/{review}/held",
                  {"summary": "Jo has kept every appointment"}, expect=200)
    assert ids(await listed(cm, "review_due_before=2026-05-02")) == {high}
    clock.advance(days=20)  # 1 April: the high-risk review is due today, not overdue
    [today] = await listed(cm, "review_due_before=2026-04-02")
    assert today["review_overdue"] is False
    clock.advance(days=1)
    [late] = await listed(cm, "review_due_before=2026-04-02")
    assert late["review_overdue"] is True


async def test_filters_combine_and_a_case_manager_sees_only_their_own(
        client: TestClient, token: TokenFactory) -> None:
    cm1, cm2 = CaseApi(client, token(sub="cm-1")), CaseApi(client, token(sub="cm-2"))
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    mine, _ = await agreed_case(cm1, "high")
    theirs, _ = await agreed_case(cm2, "high", case_manager="cm-2")
    theirs_later, _ = await agreed_case(cm2, "low", case_manager="cm-2")
    query = "case_manager=cm-2&status=open&review_due_before=2026-04-02"
    assert [c["case_id"] for c in await listed(supervisor, query)] == [theirs]
    assert {c["case_id"] for c in await listed(supervisor, "status=open")} == {
        mine, theirs, theirs_later}
    assert [c["case_id"] for c in await listed(cm1, "status=open")] == [mine]
    assert [c["case_id"] for c in await listed(cm1, "case_manager=cm-1")] == [mine]
    await cm1.call("GET", f"/v1/cases?{query}", expect=403)


async def test_paging_shows_each_case_once_while_cases_change_between_pages(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    """The sort key is the case id, which nothing changes: a case closed, transferred or
    whose review moves between two pages is shown once, neither skipped nor repeated; and
    the supervisor's access log holds one entry per case shown, not for the look-ahead row
    that tells whether there is a next page."""
    cm = CaseApi(client, token(sub="cm-1"))
    supervisor_token = token(role="supervisor", sub="sup-1")
    supervisor = CaseApi(client, supervisor_token)
    # Ten cases in pages of two make at least five changes between pages whatever order
    # the random ids sort in (seven cases made only three in some orders).
    reviews = dict([await agreed_case(cm, "high") for _ in range(6)])
    others = [await cm.open_case() for _ in range(4)]
    every = [*reviews, *others]
    changes = iter([
        ("POST", "close", {"reason": "Jo finished the programme"}),
        ("POST", "transfer", {"case_manager": "cm-2", "reason": "Jo moved across town"}),
        ("POST", "notes", {"text": "Jo started at the bike shop"}),
    ])
    seen: list[str] = []
    touched: set[str] = set()
    after = ""
    while True:
        page = await supervisor.call("GET", f"/v1/cases?limit=2{after}", expect=200)
        seen += [c["case_id"] for c in page["cases"]]
        if page["next_after"] is None:
            break
        after = f"&after={page['next_after']}"
        unseen = sorted(set(every) - set(seen) - touched)  # the next pages must show them
        change = next(changes, None)
        if change is not None and unseen:
            method, action, body = change
            touched.add(unseen[0])
            await cm.call(method, f"/v1/cases/{unseen[0]}/{action}", body)
        moving = sorted(set(unseen) & set(reviews) - touched)
        if moving:  # a review held early: its next due date moves
            clock.advance(days=1)
            touched.add(moving[0])
            await cm.call("POST", f"/v1/cases/{moving[0]}/reviews/{reviews[moving[0]]}/held",
                          {"summary": "Jo is on track"}, expect=200)
    assert len(touched) >= 5
    assert Counter(seen) == Counter(every)
    assert await listings_logged(supervisor, len(seen)) == Counter(seen)


async def listings_logged(supervisor: CaseApi, expected: int) -> Counter[str]:
    """The cases the access log shows listed. The log hands out only entries no open
    transaction can precede, and the PostgreSQL server these tests share may hold one open a
    moment longer, anywhere on it (decision 0003): up to 30 s, as ``tests/pg_waits.py``."""
    for _ in range(300):
        log = await supervisor.call("GET", "/v1/access-log?limit=500", expect=200)
        logged = Counter(e["case_id"] for e in log["entries"] if e["action"] == "list")
        if sum(logged.values()) >= expected:
            break
        await asyncio.sleep(0.1)
    return logged


async def test_a_closed_case_drops_out_of_the_open_listing_between_pages_shown_once_at_most(
        client: TestClient, token: TokenFactory) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    cases = sorted([await cm.open_case() for _ in range(4)])
    first = await cm.call("GET", "/v1/cases?status=open&limit=2", expect=200)
    assert [c["case_id"] for c in first["cases"]] == cases[:2]
    for case_id in (cases[0], cases[3]):  # one shown already, one still to come
        await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Jo moved away"},
                      expect=200)
    rest = await cm.call("GET", f"/v1/cases?status=open&limit=2&after={first['next_after']}",
                         expect=200)
    assert [c["case_id"] for c in rest["cases"]] == [cases[2]]
    assert rest["next_after"] is None
