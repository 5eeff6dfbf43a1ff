"""Event metadata: who, for which agency, and which request caused and correlates each event."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.store.events import EventStore
from tests.conftest import ClientFactory, TokenFactory
from tests.records_api import PARTICIPANT, CaseApi, event_count

OPEN = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "low"}


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str) -> TestClient:
    return await make_records_client(fresh_database_url)


async def stream_metadata(fresh_pool: asyncpg.Pool, case_id: str) -> list[dict[str, Any]]:
    # The stored metadata is what the feed hands out verbatim (feed_event_json). Read from the
    # store, not the feed: the feed waits for every older transaction on the whole PostgreSQL
    # server, which other test runs sharing it can hold open.
    return [e.metadata for e in await EventStore(fresh_pool).read_stream(UUID(case_id))]


async def test_a_request_is_the_cause_and_correlation_of_its_events(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    cm = CaseApi(client, token())
    opened = await cm.call("POST", "/v1/cases", OPEN, expect=201,
                           headers={"X-Request-Id": "req-open-1"})
    [metadata] = await stream_metadata(fresh_pool, opened["case_id"])
    assert metadata["request_id"] == "req-open-1"
    assert metadata["causation_id"] == "req-open-1"
    assert metadata["correlation_id"] == "req-open-1"
    assert metadata["actor"] == {"sub": "cm-1", "role": "case_manager"}


async def test_the_caller_can_name_the_cause_and_the_correlation(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    cm = CaseApi(client, token())
    case_id = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Jo called about work"},
                  expect=201, headers={"X-Request-Id": "req-2",
                                       "X-Correlation-Id": "intake-workflow-7",
                                       "X-Causation-Id": "event:5f1c2a"})
    metadata = (await stream_metadata(fresh_pool, case_id))[-1]
    assert (metadata["request_id"], metadata["correlation_id"], metadata["causation_id"]) == (
        "req-2", "intake-workflow-7", "event:5f1c2a")


@pytest.mark.parametrize("header", ["X-Correlation-Id", "X-Causation-Id"])
async def test_a_malformed_trace_header_is_400_and_writes_nothing(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool, header: str) -> None:
    cm = CaseApi(client, token())
    before = await event_count(fresh_pool)
    refused = await cm.call("POST", "/v1/cases", OPEN, expect=400, headers={header: "x" * 201})
    assert refused["errors"][0]["field"] == f"header.{header}"
    assert await event_count(fresh_pool) == before
