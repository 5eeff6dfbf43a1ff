"""Event metadata: who, for which agency, and which request caused and correlates each event."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import PARTICIPANT, CaseApi, event_count

OPEN = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "low"}


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str) -> TestClient:
    return await make_records_client(fresh_database_url)


async def feed_metadata(client: TestClient, token: TokenFactory,
                        case_id: str) -> list[dict[str, Any]]:
    headers = bearer(token(role="service", sub="notifier", agency="*"))
    page = await (await client.get("/v1/events?limit=1000&wait=2", headers=headers)).json()
    return [e["metadata"] for e in page["events"] if e["case_id"] == case_id]


async def test_a_request_is_the_cause_and_correlation_of_its_events(
        client: TestClient, token: TokenFactory) -> None:
    cm = CaseApi(client, token())
    opened = await cm.call("POST", "/v1/cases", OPEN, expect=201,
                           headers={"X-Request-Id": "req-open-1"})
    [metadata] = await feed_metadata(client, token, opened["case_id"])
    assert metadata["request_id"] == "req-open-1"
    assert metadata["causation_id"] == "req-open-1"
    assert metadata["correlation_id"] == "req-open-1"
    assert metadata["actor"] == {"sub": "cm-1", "role": "case_manager"}


async def test_the_caller_can_name_the_cause_and_the_correlation(
        client: TestClient, token: TokenFactory) -> None:
    cm = CaseApi(client, token())
    case_id = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Jo called about work"},
                  expect=201, headers={"X-Request-Id": "req-2",
                                       "X-Correlation-Id": "intake-workflow-7",
                                       "X-Causation-Id": "event:5f1c2a"})
    metadata = (await feed_metadata(client, token, case_id))[-1]
    assert (metadata["request_id"], metadata["correlation_id"], metadata["causation_id"]) == (
        "req-2", "intake-workflow-7", "event:5f1c2a")


@pytest.mark.parametrize("header", ["X-Correlation-Id", "X-Causation-Id"])
async def test_a_malformed_trace_header_is_400_and_writes_nothing(
        client: TestClient, token: TokenFactory, fresh_database_url: str, header: str) -> None:
    cm = CaseApi(client, token())
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    assert pool is not None
    try:
        before = await event_count(pool)
        refused = await cm.call("POST", "/v1/cases", OPEN, expect=400,
                                headers={header: "x" * 201})
        assert refused["errors"][0]["field"] == f"header.{header}"
        assert await event_count(pool) == before
    finally:
        await pool.close()
