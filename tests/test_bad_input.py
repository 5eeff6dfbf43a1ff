"""Bad input on every endpoint: a clear 4xx problem, nothing written, never a 500.

A test whose requests must all be refused, or only read, asks in one world shared by the
module (a database, a records service, a case built over HTTP); a test that makes a write
that may succeed builds a world of its own. Before each test the shared world's records are
compared with what they were once built; a refused request that wrote after all (its own
test fails on the event count) or moved anything else leaves them changed, and the next test
gets a new world: no test's outcome depends on what another one sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from services.common.auth import issue_token
from services.records.http.app import create_app
from tests.conftest import JWT_SECRET, TokenFactory, bearer, make_settings
from tests.database_supply import DatabaseSupply
from tests.records_api import CaseApi, event_count
from tests.test_authorization import WRITES, Case, _path, build_case

# the module's tests share one event loop, so that the shared world serves each of them
pytestmark = pytest.mark.asyncio(loop_scope="module")

UNKNOWN = str(uuid.uuid4())
BIG = "x" * 5000

Setup = tuple[TestClient[Any, Any], asyncpg.Pool, Case, dict[str, str]]


@dataclass
class World:
    client: TestClient[Any, Any]
    pool: asyncpg.Pool
    case: Case

    async def close(self) -> None:
        await self.pool.close()
        await self.client.close()


async def open_world(database_url: str) -> World:
    """The records service on ``database_url`` (bodies up to 64 KiB) and cm-1's case on it."""
    app = create_app(make_settings(database_url, CASETRAIL_MAX_BODY_BYTES=64 * 1024))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    pool = None
    try:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        assert pool is not None
        owner = issue_token(JWT_SECRET, sub="cm-1", role="case_manager", agency="agency-a")
        case = await build_case(CaseApi(client, owner))
    except BaseException:
        if pool is not None:
            await pool.close()
        await client.close()
        raise
    return World(client, pool, case)


async def _records_digest(pool: asyncpg.Pool) -> str:
    """A query for a digest of every records table but the access log (each read the tests
    make may be logged there, and no test's outcome depends on it)."""
    tables = [r["table_name"] for r in await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'records'"
        " AND table_type = 'BASE TABLE' AND table_name <> 'access_log' ORDER BY table_name")]
    return " UNION ALL ".join(
        f"SELECT '{name}', md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
        f" FROM records.{name} t" for name in tables)


class SharedWorld:
    """The module's world, built again whenever its records no longer are as built."""

    def __init__(self, supply: DatabaseSupply) -> None:
        self._supply = supply
        self._world: World | None = None
        self._database = ExitStack()
        self._digest = ""  # the query, made once the first world is built
        self._as_built: list[tuple[str, str]] = []

    async def _records_state(self, pool: asyncpg.Pool) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in await pool.fetch(self._digest)]

    async def as_built(self) -> World:
        if self._world is None or await self._records_state(self._world.pool) != self._as_built:
            await self.close()
            url = self._database.enter_context(self._supply.borrowed())
            self._world = await open_world(url)
            self._digest = self._digest or await _records_digest(self._world.pool)
            self._as_built = await self._records_state(self._world.pool)
        return self._world

    async def close(self) -> None:
        try:
            if self._world is not None:
                await self._world.close()
        finally:
            self._world = None
            self._database.close()  # given back once nothing is connected to it


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_world(database_supply: DatabaseSupply) -> AsyncIterator[SharedWorld]:
    shared = SharedWorld(database_supply)
    yield shared
    await shared.close()


@pytest_asyncio.fixture(loop_scope="module")
async def setup(shared_world: SharedWorld, token: TokenFactory) -> Setup:
    """The shared world, as built: for a test whose requests must all be refused, or read."""
    world = await shared_world.as_built()
    return world.client, world.pool, world.case, bearer(token())


@pytest_asyncio.fixture(loop_scope="module")
async def own_setup(fresh_database_url: str, token: TokenFactory) -> AsyncIterator[Setup]:
    """A world of the test's own: for a test whose writes may succeed."""
    world = await open_world(fresh_database_url)
    yield world.client, world.pool, world.case, bearer(token())
    await world.close()


def _bad_bodies(body: dict[str, Any]) -> dict[str, tuple[bytes | None, str]]:
    """Each kind of bad body, as raw bytes with a content type."""
    first_text = next((k for k, v in body.items() if isinstance(v, str)), None)
    cases: dict[str, tuple[bytes | None, str]] = {
        "malformed json": (b'{"text": ', "application/json"),
        "not an object": (b"[1, 2, 3]", "application/json"),
        "null": (b"null", "application/json"),
        "wrong content type": (json.dumps(body).encode(), "text/plain"),
        "unknown field": (json.dumps({**body, "surprise": 1}).encode(), "application/json"),
        "too large": (b'{"text": "' + b"y" * 70_000 + b'"}', "application/json"),
    }
    if first_text:
        cases["nul character"] = (json.dumps({**body, first_text: "a\u0000b"}).encode(),
                                  "application/json")
        cases["wrong type"] = (json.dumps({**body, first_text: 12}).encode(), "application/json")
        cases["oversized text"] = (json.dumps({**body, first_text: BIG}).encode(),
                                   "application/json")
        cases["empty text"] = (json.dumps({**body, first_text: "   "}).encode(),
                               "application/json")
    return cases


async def _expect_refused(client: TestClient[Any, Any], pool: asyncpg.Pool, method: str,
                          path: str, headers: dict[str, str], data: bytes | None = None,
                          content_type: str | None = None) -> dict[str, Any]:
    before = await event_count(pool)
    all_headers = dict(headers)
    if content_type:
        all_headers["Content-Type"] = content_type
    response = await client.request(method, path, data=data, headers=all_headers)
    body: dict[str, Any] = await response.json(content_type=None)
    assert 400 <= response.status < 500, (method, path, response.status, body)
    assert response.content_type == "application/problem+json"
    assert body["status"] == response.status
    assert body["title"]
    assert await event_count(pool) == before, (method, path)
    return body


@pytest.mark.parametrize(("template", "body"), [*WRITES, ("POST /v1/cases", {
    "participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"})])
async def test_bad_bodies_are_refused(setup: Any, template: str, body: dict[str, Any]) -> None:
    client, pool, case, headers = setup
    method, path = template.split(" ", 1)
    for kind, (data, content_type) in _bad_bodies(body).items():
        if method == "DELETE" and kind == "wrong content type":
            continue  # DELETE also takes ?reason=; a text body is still refused below
        problem = await _expect_refused(client, pool, method, _path(path, case), headers, data,
                                        content_type)
        if kind in {"unknown field", "wrong type", "oversized text", "empty text"}:
            assert problem["status"] == 422, (kind, problem)
            assert problem["errors"], (kind, problem)
        if kind == "too large":
            assert problem["status"] == 413


@pytest.mark.parametrize(("template", "body"), WRITES)
async def test_bad_and_unknown_ids_in_the_path(setup: Any, template: str,
                                               body: dict[str, Any]) -> None:
    client, pool, case, headers = setup
    method, path = template.split(" ", 1)
    import json

    data = json.dumps(body).encode()
    bad_case = Case(**{**vars(case), "id": "not-a-uuid"})
    problem = await _expect_refused(client, pool, method, _path(path, bad_case), headers, data,
                                    "application/json")
    assert problem["status"] == 400
    unknown_case = Case(**{**vars(case), "id": UNKNOWN})
    problem = await _expect_refused(client, pool, method, _path(path, unknown_case), headers,
                                    data, "application/json")
    assert problem["status"] == 404
    item_fields = [f for f in ("strength", "goal", "step", "support", "requirement", "review")
                   if "{" + f + "}" in path]
    for field in item_fields:
        unknown_item = Case(**{**vars(case), field: UNKNOWN})
        problem = await _expect_refused(client, pool, method, _path(path, unknown_item),
                                        headers, data, "application/json")
        assert problem["status"] == 404, (template, problem)
        bad_item = Case(**{**vars(case), field: "12"})
        problem = await _expect_refused(client, pool, method, _path(path, bad_item), headers,
                                        data, "application/json")
        assert problem["status"] == 400


@pytest.mark.parametrize(("template", "body"), WRITES)
async def test_a_body_that_is_not_what_its_encoding_says_is_400(
        setup: Any, template: str, body: dict[str, Any]) -> None:
    client, pool, case, headers = setup
    import json

    method, path = template.split(" ", 1)
    data = json.dumps({**body, "padding": "x" * 40}).encode()  # past what the parser checks
    for encoding in ("gzip", "deflate"):  # each answered 500
        problem = await _expect_refused(client, pool, method, _path(path, case),
                                        {**headers, "Content-Encoding": encoding}, data,
                                        "application/json")
        assert (problem["status"], problem["type"].rsplit("/", 1)[-1]) == (
            400, "malformed-body")


@pytest.mark.parametrize(("template", "body"), WRITES)
async def test_a_query_string_on_a_write_is_refused_not_dropped(
        setup: Any, template: str, body: dict[str, Any]) -> None:
    """``?reason=`` on a revision was silently dropped, so the event recorded no reason."""
    client, pool, case, headers = setup
    import json

    method, path = template.split(" ", 1)
    if method == "DELETE":
        return  # a removal takes its reason as ?reason= (tested with the removals)
    problem = await _expect_refused(client, pool, method, f"{_path(path, case)}?reason=Jo",
                                    headers, json.dumps(body).encode(), "application/json")
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == ["query.reason"]


async def test_a_body_full_of_errors_gets_a_bounded_answer(setup: Any) -> None:
    client, pool, case, headers = setup
    import json

    body = {"text": "hi", **{f"unknown_{n}": n for n in range(3000)}}
    problem = await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/notes",
                                    headers, json.dumps(body).encode(), "application/json")
    assert len(problem["errors"]) == 50
    assert "3000 in all" in problem["detail"]


@pytest.mark.parametrize("email", ["sam,jo@example.org", "shown<other@elsewhere.example>",
                                   "sam\u200b@example.org"])
async def test_a_participant_address_that_is_not_plain_is_refused(setup: Any,
                                                                   email: str) -> None:
    """Mail to such an address goes elsewhere than the address shown (to "sam", say)."""
    client, pool, _, headers = setup
    problem = await _expect_refused(
        client, pool, "POST", "/v1/cases", headers,
        json.dumps({"participant": {"name": "Sam", "email": email}, "case_manager": "cm-1",
                    "risk_level": "low"}).encode(), "application/json")
    assert problem["status"] == 422
    assert problem["errors"][0]["field"] == "body.participant.email"


@pytest.mark.parametrize("header", ['"abc"', "W/", "-1", '"1" "2"', "9999999999"])
async def test_bad_if_match_is_400(setup: Any, header: str) -> None:
    client, pool, case, headers = setup
    problem = await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/notes",
                                    {**headers, "If-Match": header}, b'{"text": "hi"}',
                                    "application/json")
    assert problem["status"] == 400


@pytest.mark.parametrize("spelled", [
    lambda v: '"' + "".join(chr(0x0660 + int(d)) for d in str(v)) + '"',  # Arabic-Indic
    lambda v: '"' + "".join(chr(0xFF10 + int(d)) for d in str(v)) + '"',  # fullwidth
], ids=["arabic-indic digits", "fullwidth digits"])
async def test_if_match_is_the_current_version_in_ascii_digits_or_refused(
        setup: Any, spelled: Any) -> None:
    """Each of these named the current version to a lax reader, and the write went through."""
    client, pool, case, headers = setup
    current = (await (await client.get(f"/v1/cases/{case.id}", headers=headers)).json())
    problem = await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/notes",
                                    {**headers, "If-Match": spelled(current["version"])},
                                    b'{"text": "hi"}', "application/json")
    assert problem["type"].endswith("/bad-if-match")


async def test_a_weak_tag_of_the_current_version_does_not_match(setup: Any) -> None:
    """If-Match compares strongly (RFC 9110 13.1.1): W/"N" is not "N", whatever N is."""
    client, pool, case, headers = setup
    current = (await (await client.get(f"/v1/cases/{case.id}", headers=headers)).json())
    problem = await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/notes",
                                    {**headers, "If-Match": f'W/"{current["version"]}"'},
                                    b'{"text": "hi"}', "application/json")
    assert (problem["status"], problem["current_version"]) == (412, current["version"])


@pytest.mark.parametrize("key", ["", "a" * 201, "has space", "tab\tkey"])
async def test_bad_idempotency_keys_are_400(setup: Any, key: str) -> None:
    client, pool, case, headers = setup
    problem = await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/notes",
                                    {**headers, "Idempotency-Key": key}, b'{"text": "hi"}',
                                    "application/json")
    assert problem["status"] == 400


@pytest.mark.parametrize(("path_and_body"), [
    ("goals", {"title": "x", "domain": "housing", "source": "agency",
               "target_date": "2026-02-30"}),
    ("goals", {"title": "x", "domain": "housing", "source": "agency", "target_date": "soon"}),
    ("goals", {"title": "x", "domain": "space travel", "source": "agency"}),
    ("goals", {"title": "x", "domain": "housing", "source": "agency",
               "strength_ids": ["not-a-uuid"]}),
    ("goals", {"title": "x", "domain": "housing", "source": "agency",
               "strength_ids": [UNKNOWN]}),
    ("goals", {"title": "x", "domain": "housing", "source": "agency",
               "risk_factors": ["r"] * 100}),
    ("strengths", {"category": "superpower", "description": "x"}),
    ("agreements", {"participation": "telepathy", "participant_statement": "ok"}),
    ("transfer", {"case_manager": "", "reason": "x"}),
    ("transfer", {"case_manager": "cm-1", "reason": "same person"}),
    # dates beyond what later date arithmetic (review intervals, reminders) can reach
    ("goals", {"title": "x", "domain": "housing", "source": "agency",
               "target_date": "9999-12-31"}),
    ("goals", {"title": "x", "domain": "housing", "source": "agency",
               "target_date": "0001-01-01"}),
    ("goals/{goal}/steps", {"description": "x", "owner": "participant",
                            "due_date": "3000-01-01"}),
    ("reviews/{review}/reschedule", {"due_date": "9999-12-31", "reason": "typo"}),
    ("reviews/{review}/held", {"held_on": "1899-12-31"}),
    ("reviews/{review}/held", {"held_on": "2000-01-01"}),  # before it was scheduled
    ("agreements", {"participation": "phone", "participant_statement": "ok"}),  # nobody present
    ("agreements", {"participation": "phone", "present": [], "participant_statement": "ok"}),
])
async def test_bad_values_are_refused(setup: Any, path_and_body: tuple[str, Any]) -> None:
    client, pool, case, headers = setup
    import json

    path, body = path_and_body
    path = path.format(goal=case.goal, review=case.review)
    await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/{path}", headers,
                          json.dumps(body).encode(), "application/json")


@pytest.mark.parametrize("query", [
    "as_of_version=0", "as_of_version=abc", "as_of=yesterday", "as_of=2026-03-01T00:00:00",
    "as_of_version=1&as_of=2026-03-01T00:00:00Z", "unknown=1",
    # numbers are not RFC 3339, although a lax parser reads them as Unix seconds
    "as_of=0", "as_of=1772323200", "as_of=2026-03-01"])
async def test_bad_plan_queries(setup: Any, query: str) -> None:
    client, pool, case, headers = setup
    body = await _expect_refused(client, pool, "GET", f"/v1/cases/{case.id}?{query}", headers)
    assert body["status"] in {400, 422}


@pytest.mark.parametrize("path", [
    "history?limit=0", "history?limit=100000", "history?after_version=-1",
    "diff", "diff?from_version=a&to_version=2", "diff?from_version=2&to_version=2",
    "export?format=FHIR", "export?format=xml", "export?limit=5", "verify?as_of_version=1",
    # numbers in the digits 0-9 alone: Python reads 1_0 as 10, +1 and ' 1' as 1, and other
    # scripts' digits too (%D9%A1 is an Arabic-Indic one)
    "history?limit=1_0", "history?after_version=%2B1", "history?after_version=%201",
    "history?limit=%D9%A1", "diff?from_version=0_1&to_version=2"])
async def test_bad_audit_queries(setup: Any, path: str) -> None:
    client, _, case, headers = setup
    response = await client.get(f"/v1/cases/{case.id}/{path}", headers=headers)
    assert response.status == 422
    assert (await response.json())["errors"]


@pytest.mark.parametrize("query", ["status=lost", "limit=0", "after=xyz",
                                   "review_due_before=someday", "review_due_before=0",
                                   "review_due_before=86400",
                                   "review_due_before=2026-04-15T00:00:00Z"])
async def test_bad_caseload_queries(setup: Any, query: str) -> None:
    client, pool, _, headers = setup
    body = await _expect_refused(client, pool, "GET", f"/v1/cases?{query}", headers)
    assert body["status"] == 422


async def test_unknown_case_reads_are_404(setup: Any) -> None:
    client, _, _, headers = setup
    for suffix in ["", "/history", "/verify", "/diff?from_version=1&to_version=2"]:
        response = await client.get(f"/v1/cases/{UNKNOWN}{suffix}", headers=headers)
        assert response.status == 404


HOSTILE_JSON = {
    "deeply nested": b"[" * 20_000 + b"]" * 20_000,
    "number too long to convert": b'{"text": ' + b"9" * 5000 + b"}",
    "invalid utf-8": b'{"text": "\xff\xfe"}',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
@pytest.mark.parametrize(("template", "body"), WRITES)
async def test_hostile_json_is_400(setup: Any, template: str, body: dict[str, Any],
                                   kind: str) -> None:
    client, pool, case, headers = setup
    method, path = template.split(" ", 1)
    problem = await _expect_refused(client, pool, method, _path(path, case), headers,
                                    HOSTILE_JSON[kind], "application/json")
    assert problem["status"] == 400


@pytest.mark.parametrize("query", [
    "/v1/cases?case_manager=%00", "/v1/cases?case_manager=a%0Ab", "/v1/cases?status=%00",
    "{c}?as_of=9999-12-31T23:59:59-14:00", "{c}?as_of=0001-01-01T00:00:00%2B14:00",
    "{c}?as_of_version=99999999999", "{c}/history?after_version=%00",
    "{c}/diff?from_version=1&to_version=99999999999", "{c}/export?format=%00",
])
async def test_hostile_query_strings_are_4xx(setup: Any, query: str) -> None:
    client, _, case, headers = setup
    response = await client.get(_path(query, case), headers=headers)
    assert 400 <= response.status < 500, (query, response.status, await response.text())
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("checkpoint", [
    "MTo5OTk5OTk5OTk5OTk5OTk5OTk5OQ",  # 1:99999999999999999999
    "OTk5OTk5OTk5OTk5OTk5OTk5OTk6MQ",  # 99999999999999999999:1
    "2aE62aE",  # 1:1 in Arabic-Indic digits
])
async def test_checkpoints_out_of_range_are_400(setup: Any, token: TokenFactory,
                                               checkpoint: str) -> None:
    client, _, _, _ = setup
    response = await client.get(f"/v1/events?after={checkpoint}",
                                headers=bearer(token(role="service", sub="notifier", agency="*")))
    assert response.status == 400
    assert response.content_type == "application/problem+json"


EXTREME_DATES = ["0001-01-01", "9999-12-31"]
DATED_WRITES: list[tuple[str, dict[str, Any]]] = [
    ("POST {c}/goals", {"title": "Later", "domain": "housing", "source": "agency",
                        "target_date": "{d}"}),
    ("PATCH {c}/goals/{goal}", {"target_date": "{d}"}),
    ("POST {c}/goals/{goal}/steps", {"description": "Call", "owner": "participant",
                                     "due_date": "{d}"}),
    ("PATCH {c}/steps/{step}", {"due_date": "{d}"}),
    ("POST {c}/requirements", {"title": "Report monthly", "due_date": "{d}"}),
    ("POST {c}/reviews/{review}/reschedule", {"due_date": "{d}", "reason": "Jo is away"}),
    ("POST {c}/reviews/{review}/held", {"held_on": "{d}", "summary": "Good progress"}),
]


@pytest.mark.parametrize("day", EXTREME_DATES)
@pytest.mark.parametrize(("template", "body"), DATED_WRITES)
async def test_extreme_dates_never_fail_the_server(own_setup: Any, template: str,
                                                   body: dict[str, Any], day: str) -> None:
    """The first and last representable days are either accepted or refused with a 4xx."""
    client, _, case, headers = own_setup
    method, path = template.split(" ", 1)
    filled = {k: v.replace("{d}", day) if isinstance(v, str) else v for k, v in body.items()}
    response = await client.request(method, _path(path, case), json=filled, headers=headers)
    assert response.status < 500, (template, day, await response.text())
    if response.status >= 400:
        assert response.content_type == "application/problem+json"
    plan = await client.get(f"/v1/cases/{case.id}", headers=headers)
    assert plan.status == 200


async def test_work_on_a_discontinued_goals_steps_is_refused(own_setup: Any) -> None:
    client, pool, case, headers = own_setup
    import json

    response = await client.post(f"/v1/cases/{case.id}/goals/{case.goal}/status",
                                 json={"status": "discontinued", "reason": "set aside"},
                                 headers=headers)
    assert response.status == 200
    for path, body in ((f"steps/{case.step}/complete", {}),
                       (f"steps/{case.step}/status", {"status": "in_progress"})):
        await _expect_refused(client, pool, "POST", f"/v1/cases/{case.id}/{path}", headers,
                              json.dumps(body).encode(), "application/json")
