"""Defects found or carried into the twenty-second session, each shown by a test first."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi, event_count


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str) -> TestClient:
    return await make_records_client(fresh_database_url)


@pytest.fixture
def cm(client: TestClient, token: TokenFactory) -> CaseApi:
    return CaseApi(client, token())


async def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, (response.status, await response.text())
    assert response.content_type == "application/problem+json"
    return dict(await response.json())


async def _forge_next_event(pool: asyncpg.Pool, case_id: str) -> None:
    """An event inserted straight into the table, as a role allowed to INSERT could, without
    moving the case's head: the record now holds a version its head does not account for."""
    await pool.execute(
        "INSERT INTO records.events (stream_id, version, event_id, type, schema_version, data,"
        " metadata, agency, recorded_at, prev_hash, hash)"
        " SELECT stream_id, version + 1, $2::uuid, 'NoteAdded', 1,"
        " jsonb_build_object('note_id', $2::text, 'text', 'A note nobody wrote here'),"
        " metadata, agency, recorded_at, hash, repeat('f', 64) FROM records.events"
        " WHERE stream_id = $1::uuid ORDER BY version DESC LIMIT 1", case_id, uuid4())


@pytest.mark.parametrize("if_match", [False, True])
@pytest.mark.parametrize("instance", ["the one that opened it", "another"])
async def test_a_write_to_a_case_holding_a_forged_event_is_refused_and_writes_nothing(
        cm: CaseApi, client: TestClient, make_records_client: ClientFactory,
        fresh_database_url: str, fresh_pool: asyncpg.Pool, if_match: bool,
        instance: str) -> None:
    """It answered 500 (the version's unique key), or, from an instance that had not cached
    the case, folded the forged event and lost its race thirty times (503)."""
    case_id = await cm.open_case()
    await _forge_next_event(fresh_pool, case_id)
    before = await event_count(fresh_pool)
    writer = client if instance != "another" else await make_records_client(fresh_database_url)
    headers = bearer(cm.token) | ({"If-Match": '"1"'} if if_match else {})
    response = await writer.post(f"/v1/cases/{case_id}/notes", json={"text": "Met at the library"},
                                 headers=headers)
    problem = await _problem(response, 409)
    assert problem["type"].endswith("record-out-of-step")
    assert f"/v1/cases/{case_id}/verify" in problem["detail"]
    assert await event_count(fresh_pool) == before
    verify = await client.get(f"/v1/cases/{case_id}/verify", headers=bearer(cm.token))
    assert verify.status == 200
    assert (await verify.json())["valid"] is False
