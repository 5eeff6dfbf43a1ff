"""Every records endpoint answers what its OpenAPI document declares.

Table-driven: each row is one successful call of one operation against the real test server;
its answer is validated (JSON Schema 2020-12, as OpenAPI 3.1 specifies) against the response
schema the served /openapi.json declares for that operation and status. A test also checks the
table covers every operation, and that the committed schemas/openapi.json is what is served.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

from schemas import generate
from services.records.export.formats import ExportFormat
from tests.conftest import TokenFactory, bearer
from tests.records_api import CaseApi

CASE = "/v1/cases/{case_id}"
NOT_JSON_ANSWERS = {("GET", "/docs"), ("GET", "/metrics"),
                    ("GET", "/v1/cases/{case_id}/export")}  # their media types: the last test
SOON = (date.today() + timedelta(days=40)).isoformat()


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # the OpenAPI path template; {names} are filled from the case's ids
    status: int = 200
    body: dict[str, Any] | None = None
    query: str = ""
    role: str = "case_manager"
    before: tuple[tuple[str, str, dict[str, Any] | None], ...] = field(default=())  # same token
    filled: tuple[str, ...] = ()  # lists the answer must not leave empty (or it proves little)

    @property
    def operation(self) -> tuple[str, str]:
        return self.method, self.path


CLOSE = ("POST", f"{CASE}/close", {"reason": "moved away", "outcome": "moved"})

CALLS = [
    Call("POST", "/v1/cases", 201, {"participant": {"name": "Ana"}, "case_manager": "cm-1",
                                    "risk_level": "low"}),
    Call("GET", "/v1/cases", query="?status=open&limit=1", filled=("cases",)),
    Call("GET", CASE),
    Call("GET", CASE, query="?as_of_version=1"),
    Call("PATCH", f"{CASE}/participant", body={"pronouns": "she/her"}),
    Call("POST", f"{CASE}/strengths", 201, {"category": "skill", "description": "Cooks well"}),
    Call("PATCH", f"{CASE}/strengths/{{strength_id}}", body={"description": "Cooks for many"}),
    Call("DELETE", f"{CASE}/strengths/{{strength_id}}", body={"reason": "recorded twice"}),
    Call("POST", f"{CASE}/goals", 201, {"title": "Save for a deposit", "domain": "housing",
                                        "source": "agency"}),
    Call("PATCH", f"{CASE}/goals/{{goal_id}}", body={"title": "Save for a flat deposit"}),
    Call("POST", f"{CASE}/goals/{{goal_id}}/status", body={"status": "paused",
                                                            "reason": "waiting for a job"}),
    Call("POST", f"{CASE}/goals/{{goal_id}}/steps", 201, {"description": "Open an account",
                                                          "owner": "participant"}),
    Call("PATCH", f"{CASE}/steps/{{step_id}}", body={"due_date": SOON}),
    Call("POST", f"{CASE}/steps/{{step_id}}/status", body={"status": "in_progress"}),
    Call("POST", f"{CASE}/steps/{{step_id}}/complete", body={"note": "done at the branch"}),
    Call("POST", f"{CASE}/supports", 201, {"name": "Aunt May", "relationship": "aunt"}),
    Call("DELETE", f"{CASE}/supports/{{support_id}}", body={"reason": "moved abroad"}),
    Call("POST", f"{CASE}/requirements", 201, {"title": "Report monthly",
                                               "due_date": SOON}),
    Call("POST", f"{CASE}/requirements/{{requirement_id}}/status",
         body={"status": "in_progress"}),
    Call("POST", f"{CASE}/agreements", 201, {"participation": "phone", "present": ["Jo"],
                                             "participant_statement": "Yes, that is my plan"}),
    Call("POST", f"{CASE}/reviews/{{review_id}}/held", body={"summary": "Going well"}),
    Call("POST", f"{CASE}/reviews/{{review_id}}/reschedule",
         body={"due_date": SOON, "reason": "participant away that week"}),
    Call("POST", f"{CASE}/notes", 201, {"text": "Met at the library"}),
    Call("POST", f"{CASE}/transfer", body={"case_manager": "cm-2", "reason": "caseload swap"}),
    Call("POST", f"{CASE}/close", body={"reason": "plan completed", "outcome": "completed"}),
    Call("POST", f"{CASE}/reopen", body={"reason": "asked for help again"}, before=(CLOSE,)),
    Call("GET", f"{CASE}/history", query="?after_version=1&limit=2", filled=("events",)),
    Call("GET", f"{CASE}/diff", query="?from_version=1&to_version=6",
         filled=("changes", "events")),
    Call("GET", f"{CASE}/verify"),
    Call("GET", "/v1/events", query="?limit=3", role="service", filled=("events",)),
    Call("GET", "/v1/access-log", role="supervisor", before=(("GET", CASE, None),),
         filled=("entries",)),
    Call("GET", "/v1/analytics/outcomes", role="analyst", query="?from=2020-01-01"),
    Call("GET", "/healthz"),
    Call("GET", "/readyz"),
    Call("GET", "/openapi.json"),
]


async def _served_document(client: TestClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


async def _case_with_every_item(api: CaseApi) -> dict[str, str]:
    """A case holding one of each item an endpoint can address, as the path's {names}."""
    case_id = await api.open_case()
    strength_id = await api.strength(case_id)
    goal_id = await api.goal(case_id, strength_ids=[strength_id])
    step_id = await api.step(case_id, goal_id)
    support = await api.call("POST", f"/v1/cases/{case_id}/supports", {"name": "Sam"},
                             expect=201)
    requirement = await api.call("POST", f"/v1/cases/{case_id}/requirements",
                                 {"title": "Attend court"}, expect=201)
    await api.agree(case_id)
    plan = await api.plan(case_id)
    return {"case_id": case_id, "strength_id": strength_id, "goal_id": goal_id,
            "step_id": step_id, "support_id": support["id"], "requirement_id": requirement["id"],
            "review_id": plan["next_review"]["review_id"]}


async def _settled_answer(client: TestClient, call: Call, ids: dict[str, str],
                          token: str) -> tuple[ClientResponse, Any]:
    """The answer to ``call``, asked again, as a reader would, while a page in commit order
    (the feed, the access log) says that a transaction open anywhere on the database server
    (another test run's, say) still holds back what it should list: for up to 30 s, as
    tests/pg_waits.py waits (10 s before, short for a transaction of a loaded run)."""
    for _ in range(300):
        response = await client.request(call.method, call.path.format(**ids) + call.query,
                                        json=call.body, headers=bearer(token))
        answer = await response.json()
        if not (isinstance(answer, dict) and answer.get("held_back")):
            break
        await asyncio.sleep(0.1)
    return response, answer


def _declared_schema(document: dict[str, Any], call: Call) -> dict[str, Any]:
    operation = document["paths"][call.path][call.method.lower()]
    content = operation["responses"][str(call.status)]["content"]
    schema: dict[str, Any] = content["application/json"]["schema"]
    return schema


def _errors(document: dict[str, Any], schema: dict[str, Any], answer: Any) -> list[str]:
    # the operation's schema, resolved inside the whole document (its $refs point there)
    validator = Draft202012Validator({**schema, "components": document["components"]})
    return [f"{'/'.join(map(str, e.absolute_path)) or '<answer>'}: {e.message}"
            for e in validator.iter_errors(answer)]


def test_the_table_covers_every_operation_with_a_json_answer() -> None:
    document = json.loads(generate.OPENAPI_FILE.read_text(encoding="utf-8"))
    declared = {(method.upper(), path) for path, item in document["paths"].items()
                for method in item}
    assert declared - NOT_JSON_ANSWERS == {call.operation for call in CALLS}


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.path}{c.query}")
async def test_a_real_answer_matches_its_declared_response_schema(
        records_client: TestClient, token: TokenFactory, call: Call) -> None:
    ids = await _case_with_every_item(CaseApi(records_client, token()))
    caller = CaseApi(records_client, token(role=call.role, sub=f"{call.role}-1"
                                           if call.role != "case_manager" else "cm-1"))
    for method, path, body in call.before:
        await caller.call(method, path.format(**ids), body, expect=200)
    response, answer = await _settled_answer(records_client, call, ids, caller.token)
    assert response.status == call.status, answer
    assert all(answer[name] for name in call.filled), answer
    document = await _served_document(records_client)
    problems = _errors(document, _declared_schema(document, call), answer)
    assert not problems, "\n".join(problems)


async def test_a_problem_answer_matches_the_declared_problem_schema(
        records_client: TestClient, token: TokenFactory) -> None:
    document = await _served_document(records_client)
    declared = document["paths"]["/v1/cases"]["post"]["responses"]["4XX"]["content"]
    schema = declared["application/problem+json"]["schema"]
    invalid = await records_client.post("/v1/cases", json={"participant": {}},
                                        headers=bearer(token()))
    bad_id = await records_client.get("/v1/cases/not-a-uuid", headers=bearer(token()))
    for response, status in ((invalid, 422), (bad_id, 400)):
        answer = await response.json()
        assert response.status == status, answer
        assert answer["errors"]
        problems = _errors(document, schema, answer)
        assert not problems, "\n".join(problems)


async def test_the_committed_openapi_document_is_the_one_served(
        records_client: TestClient) -> None:
    served = await _served_document(records_client)
    assert not generate.openapi_drift(served), (
        "schemas/openapi.json differs from what /openapi.json serves;"
        " run `casetrail openapi` and commit schemas/openapi.json")


def test_a_wrong_answer_is_caught() -> None:
    """The check itself bites: the answer shape the old document described is refused."""
    document = json.loads(generate.OPENAPI_FILE.read_text(encoding="utf-8"))
    call = Call("POST", f"{CASE}/notes", 201)
    wrong = {"case_id": "5b8f3c1e-6d0a-4c47-9a8e-2f1b7c9d4e60", "version": 2, "warnings": [],
             "events": [{"version": 2, "event_id": "5b8f3c1e-6d0a-4c47-9a8e-2f1b7c9d4e61",
                         "type": "NoteAdded", "schema_version": 1, "data": {},
                         "recorded_at": "2026-03-02T09:00:00Z", "reason": None,
                         "actor": {"sub": "cm-1", "role": "case_manager"}}]}
    problems = _errors(document, _declared_schema(document, call), wrong)
    assert any("actor" in p for p in problems)
    assert any("hash" in p for p in problems)


@pytest.mark.parametrize("path", [
    "/docs", "/metrics", *(f"/v1/cases/{{case_id}}/export?format={f}" for f in ExportFormat)])
async def test_each_answer_that_is_not_json_has_a_documented_media_type(
        records_client: TestClient, token: TokenFactory, path: str) -> None:
    case_id = await CaseApi(records_client, token()).open_case()
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    response = await records_client.get(path.format(case_id=case_id), headers=supervisor)
    assert response.status == 200
    document = await _served_document(records_client)
    documented = document["paths"][path.partition("?")[0]]["get"]["responses"]["200"]["content"]
    assert response.content_type in documented
    if documented[response.content_type]["schema"] == {"type": "object"}:  # FHIR's +json
        assert isinstance(json.loads(await response.read()), dict)
