"""A thin client for the records API in tests: real HTTP through aiohttp's test server."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer

PARTICIPANT = {"name": "Jordan Rivera", "preferred_name": "Jo", "pronouns": "they/them",
               "email": "jo@example.org"}


class CaseApi:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token

    async def call(self, method: str, path: str, body: Any = None, *, expect: int | None = None,
                   token: str | None = None, headers: dict[str, str] | None = None) -> Any:
        all_headers = {**bearer(token or self.token), **(headers or {})}
        response = await self.client.request(method, path, json=body, headers=all_headers)
        payload = await response.json()
        if expect is not None:
            assert response.status == expect, (response.status, payload)
        return payload

    async def open_case(self, case_manager: str = "cm-1", risk_level: str = "moderate",
                        **extra: Any) -> str:
        body = {"participant": PARTICIPANT, "case_manager": case_manager,
                "risk_level": risk_level, **extra}
        created = await self.call("POST", "/v1/cases", body, expect=201)
        return str(created["case_id"])

    async def strength(self, case_id: str, description: str = "Fixes bikes for neighbours",
                       category: str = "skill") -> str:
        result = await self.call("POST", f"/v1/cases/{case_id}/strengths",
                                 {"category": category, "description": description}, expect=201)
        return str(result["id"])

    async def goal(self, case_id: str, title: str = "Find steady work", **extra: Any) -> str:
        body = {"title": title, "domain": "employment", "source": "participant",
                "in_their_words": "I want a job where I use my hands", **extra}
        result = await self.call("POST", f"/v1/cases/{case_id}/goals", body, expect=201)
        return str(result["id"])

    async def step(self, case_id: str, goal_id: str, description: str = "Visit the job centre",
                   **extra: Any) -> str:
        body = {"description": description, "owner": "participant", **extra}
        result = await self.call("POST", f"/v1/cases/{case_id}/goals/{goal_id}/steps", body,
                                 expect=201)
        return str(result["id"])

    async def plan(self, case_id: str, **query: Any) -> Any:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        return await self.call("GET", f"/v1/cases/{case_id}" + (f"?{suffix}" if suffix else ""),
                               expect=200)

    async def agree(self, case_id: str, outcome: str = "agreed") -> Any:
        return await self.call("POST", f"/v1/cases/{case_id}/agreements", {
            "participation": "in_person", "present": ["Jo", "Sam (case manager)"],
            "participant_statement": "This is my plan and I am ready to start",
            "outcome": outcome}, expect=201)


async def event_count(db: asyncpg.Pool | asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM records.events"))


# Fixtures shared by the records test modules (registered in conftest.py, found by name): a
# records service on the test's own database, its clock injected, and the owning case manager's
# client.


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str,
                 clock: FakeClock) -> TestClient:
    return await make_records_client(fresh_database_url, clock=clock)


@pytest.fixture
def cm(client: TestClient, token: TokenFactory) -> CaseApi:
    return CaseApi(client, token())
