"""Two records instances on one database: a stale per-process cache never decides a write."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, TokenFactory
from tests.records_api import CaseApi


async def _pair(make_records_client: ClientFactory, url: str,
                token: TokenFactory) -> tuple[CaseApi, CaseApi]:
    first: TestClient = await make_records_client(url)
    second: TestClient = await make_records_client(url)
    return CaseApi(first, token()), CaseApi(second, token())


async def test_a_refusal_from_a_stale_cache_is_decided_again(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    a, b = await _pair(make_records_client, fresh_database_url, token)
    case_id = await a.open_case()
    goal = await a.goal(case_id)
    step = await a.step(case_id, goal)
    await a.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
    # b reverses the completion; a's cache still says "completed"
    await b.call("POST", f"/v1/cases/{case_id}/steps/{step}/status",
                 {"status": "in_progress", "reason": "Jo wants to redo it"}, expect=200)
    again = await a.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
    assert again["version"] == 6


async def test_if_match_and_ownership_follow_the_store_not_the_cache(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    a, b = await _pair(make_records_client, fresh_database_url, token)
    case_id = await a.open_case()
    await a.strength(case_id)  # a caches version 2
    written = await b.call("POST", f"/v1/cases/{case_id}/notes", {"text": "hi"}, expect=201)
    assert written["version"] == 3
    ok = await a.call("POST", f"/v1/cases/{case_id}/notes", {"text": "hello"},
                      headers={"If-Match": '"3"'}, expect=201)
    assert ok["version"] == 4
    await b.call("POST", f"/v1/cases/{case_id}/transfer",
                 {"case_manager": "cm-2", "reason": "caseload balance"}, expect=200)
    refused = await a.call("POST", f"/v1/cases/{case_id}/notes", {"text": "still mine?"},
                           expect=403)
    assert refused["status"] == 403


async def test_a_write_on_a_stale_cache_loses_the_race_and_is_retried(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    a, b = await _pair(make_records_client, fresh_database_url, token)
    case_id = await a.open_case()
    await b.call("POST", f"/v1/cases/{case_id}/notes", {"text": "from b"}, expect=201)
    written = await a.call("POST", f"/v1/cases/{case_id}/notes", {"text": "from a"},
                           expect=201)
    assert written["version"] == 3
    metrics = await (await a.client.get("/metrics")).text()
    assert "casetrail_append_conflicts_total 1.0" in metrics
