"""No query string makes a read answer 500: every GET route with a query contract, fed seeded
random keys and values (edges of the calendar and of integers, bad encodings, huge and empty
values, repeated keys), answers 2xx or a 4xx problem."""

from __future__ import annotations

import os
import random
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from services.records.http import routes  # noqa: F401  (registers the case routes)
from services.records.http.app import api
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi

VALUES = ["", "0", "-1", "1", "3", "500", "99999999999999999999", "-99999999999999999999",
          "1e309", "nan", "inf", "1.5", "2026-03-02", "0001-01-01", "9999-12-31", "2026-02-30",
          "1899-12-31", "9000-12-31", "2026-03-02T09:00:00Z", "2026-03-02T09:00:00",
          "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-13-45T99:00:00Z",
          "true", "null", "%00", "%ZZ", "é", "名前", "a" * 300,
          "6d1f7c52-1111-4b7e-9a0e-3c9a4f1e2d10", "not-a-uuid", "jsonl", "csv", "pdf", "fhir",
          "open", "closed", "cm-1"]
EXTRA_KEYS = ["x", "limit", "after", "from", "to", "format", "as_of", "as_of_version"]
REQUESTS_PER_ROUTE = int(os.environ.get("CASETRAIL_QUERY_FUZZ", "300"))


def _query_keys(operation: object) -> list[str]:
    model = getattr(operation, "query", None)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()
            if (field.alias or name) != "wait"]  # a valid wait long-polls: not a fuzz target


def _random_query(rng: random.Random, keys: list[str]) -> str:
    pairs = []
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(keys + EXTRA_KEYS) if rng.random() < 0.85 else rng.choice(VALUES)
        value = rng.choice(VALUES)
        raw = value if value.startswith("%") else quote(value, safe="")
        pairs.append(f"{quote(key, safe='')}={raw}")
    return "?" + "&".join(pairs) if pairs else ""


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str) -> TestClient:
    return await make_records_client(fresh_database_url)


async def test_no_query_string_makes_a_read_fail(client: TestClient,
                                                 token: TokenFactory) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    case_id = await cm.open_case()
    await cm.goal(case_id)
    await cm.agree(case_id)
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    service = bearer(token(role="service", sub="notifier"))
    rng = random.Random(20261123)
    reads = [op for op in api.operations if op.method == "GET" and op.query is not None]
    assert len(reads) >= 8
    for operation in reads:
        path = operation.path.replace("{case_id}", case_id)
        headers = service if path == "/v1/events" else supervisor
        keys = _query_keys(operation)
        answered: set[int] = set()
        for _ in range(REQUESTS_PER_ROUTE):
            query = _random_query(rng, keys)
            response = await client.get(path + query, headers=headers)
            assert response.status < 500, (path + query, await response.text())
            if response.status >= 400:
                assert response.content_type == "application/problem+json", path + query
            answered.add(response.status // 100)
        # both accepted and refused queries were tried (one with required fields is refused
        # unless a draw happens to give all of them)
        required = any(f.is_required() for f in operation.query.model_fields.values())
        assert answered == ({4} if required else {2, 4}), (path, answered)
