"""A user id given as a query filter (the caseload listing's `case_manager`) is held to the rule
of a user id given in a body (decision 0004): no control or formatting characters, 1-200
characters once surrounding spaces are dropped. Such a filter matched no stored id, so the
listing answered an empty page, and a supervisor took the caseload for empty."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import TokenFactory, bearer
from tests.records_api import PARTICIPANT, CaseApi, event_count

RecordsClient = TestClient[web.Request, web.Application]

# C1 control U+0085 and soft hyphen U+00AD besides the ones a token and a body are tested with
INVISIBLE = ["cm-1\u202e", "cm\u200b1", "cm\u2066-1", "cm\ufeff1", "cm\u00ad1", "cm\x851"]
NOT_A_USER_ID = ["", "   ", "c" * 201]


async def listing(client: RecordsClient, token: str, query: str) -> tuple[int, Any]:
    response = await client.get(f"/v1/cases?{query}", headers=bearer(token))
    if response.status >= 400:
        assert response.content_type == "application/problem+json"
    return response.status, await response.json()


async def opening(client: RecordsClient, token: str, case_manager: str) -> tuple[int, Any]:
    response = await client.post("/v1/cases", headers=bearer(token), json={
        "participant": PARTICIPANT, "case_manager": case_manager, "risk_level": "low"})
    return response.status, await response.json()


async def access_entries(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM records.access_log"))


def refused_field(status: int, body: Any) -> dict[str, Any]:
    """The one field a 422 names."""
    assert status == 422, body
    assert body["detail"] == "one or more fields are not valid"
    [error] = body["errors"]
    return dict(error)


@pytest.mark.parametrize("value", INVISIBLE)
async def test_a_filter_with_invisible_characters_is_refused_before_the_listing(
        client: RecordsClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool,
        value: str) -> None:
    await cm.open_case()
    await cm.open_case()
    supervisor = token(role="supervisor", sub="sup-1")
    events = await event_count(fresh_pool)

    for who in (supervisor, cm.token):  # a case manager was told 403, "not your caseload"
        status, body = await listing(client, who, f"status=open&case_manager={quote(value)}")
        error = refused_field(status, body)
        assert error["field"] == "query.case_manager"
        assert "formatting characters" in error["message"]
    assert await access_entries(fresh_pool) == 0
    assert await event_count(fresh_pool) == events

    # the same id in a body is refused in the same words
    status, body = await opening(client, supervisor, value)
    assert refused_field(status, body)["message"] == error["message"]
    # and a supervisor's listing is logged, so the refusal above logged nothing because it
    # came before the read
    status, body = await listing(client, supervisor, "status=open&case_manager=cm-1")
    assert status == 200
    assert len(body["cases"]) == 2
    assert await access_entries(fresh_pool) == 2


@pytest.mark.parametrize("value", NOT_A_USER_ID, ids=["empty", "spaces", "too-long"])
async def test_an_empty_blank_or_too_long_filter_is_refused_as_in_a_body(
        client: RecordsClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool,
        value: str) -> None:
    await cm.open_case()
    supervisor = token(role="supervisor", sub="sup-1")
    events = await event_count(fresh_pool)

    status, body = await listing(client, supervisor, f"case_manager={quote(value)}")
    in_query = refused_field(status, body)
    assert in_query["field"] == "query.case_manager"
    assert await access_entries(fresh_pool) == 0
    status, body = await opening(client, supervisor, value)
    in_body = refused_field(status, body)
    assert in_body["field"] == "body.case_manager"
    assert (in_query["code"], in_query["message"]) == (in_body["code"], in_body["message"])
    assert await event_count(fresh_pool) == events


async def test_surrounding_spaces_are_dropped_from_a_filter_as_from_a_body(
        client: RecordsClient, cm: CaseApi, token: TokenFactory) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    status, opened = await opening(client, supervisor, " cm-1 ")
    assert status == 201, opened
    plan = await cm.plan(str(opened["case_id"]))
    assert plan["case_manager"] == "cm-1"

    for who in (supervisor, cm.token):
        status, body = await listing(client, who, f"case_manager={quote(' cm-1 ')}")
        assert status == 200, body
        assert [c["case_id"] for c in body["cases"]] == [opened["case_id"]]


async def test_a_filter_holding_a_control_character_below_space_is_refused(
        client: RecordsClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """Refused before the model by the rule for every query parameter (400, as before)."""
    await cm.open_case()
    supervisor = token(role="supervisor", sub="sup-1")
    status, body = await listing(client, supervisor, "case_manager=" + quote("cm\x01-1"))
    assert status == 400, body
    assert [e["field"] for e in body["errors"]] == ["query.case_manager"]
    assert await access_entries(fresh_pool) == 0
