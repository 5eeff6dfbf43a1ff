"""Audit (s20): Idempotency-Key and If-Match on every write of the plan API.

design.md: "Idempotency-Key on any write; a retry returns the original result and writes
nothing; the same key with a different body is refused" and "a stale writer gets 412 over
HTTP (If-Match: "<version>"), with the current version in the problem body". README: "Every
write ... takes If-Match: "<version>" (a stale one gets 412 with current_version) and
Idempotency-Key (a retry returns the original answer and writes nothing)". Decision 0005
(the write path) says how: the key is scoped by agency and caller, fingerprinted by method,
path with query and the validated body; it is looked up before anything is decided, so a
retry answers as the original did whatever happened to the case since; a keyed write
refused (4xx, 412) looks for its key once more and answers the original when it has landed
meanwhile; a refusal is not remembered under its key.

Each endpoint of the README's table (services/records/http/routes.py, every ``write(...)``)
is probed the same way: a plain retry, a retry re-encoded, a retry after the case changed
(transferred away, closed, reopened), copies sent at once, the same key with another body,
and If-Match stale and current.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.conftest import TokenFactory, bearer
from tests.records_api import PARTICIPANT, CaseApi, event_count
from tests.test_cases_api import racing  # held at the case until all have arrived

pytestmark = pytest.mark.usefixtures("fresh_database_url")

PROBLEMS = "https://casetrail.dev/problems/"


@dataclass(frozen=True)
class Endpoint:
    """One write of the plan API: how to send it on a prepared case, and another body."""

    name: str
    method: str
    path: str  # placeholders: case, strength, goal, step, support, requirement, review
    body: Any
    other: Any  # a different request under the same key
    status: int
    agreed: bool = True  # the prepared case has an agreed plan (and so a pending review)
    closed: bool = False  # the prepared case is closed

    @property
    def opens(self) -> bool:
        return self.path == "/v1/cases"


CASE = "/v1/cases/{case}"
OPEN_BODY = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "moderate"}

ENDPOINTS = [
    Endpoint("open", "POST", "/v1/cases", OPEN_BODY, {**OPEN_BODY, "risk_level": "high"}, 201),
    Endpoint("participant", "PATCH", f"{CASE}/participant", {"preferred_name": "Jojo"},
             {"pronouns": "she/her"}, 200),
    Endpoint("strength-add", "POST", f"{CASE}/strengths",
             {"category": "talent", "description": "Sings in the community choir"},
             {"category": "talent", "description": "Sings in the church choir"}, 201),
    Endpoint("strength-revise", "PATCH", f"{CASE}/strengths/{{strength}}",
             {"description": "Fixes bikes for the whole street"},
             {"in_their_words": "I like fixing things"}, 200),
    Endpoint("strength-remove", "DELETE", f"{CASE}/strengths/{{strength}}",
             {"reason": "Recorded twice"}, {"reason": "Jo asked to leave it out"}, 200),
    Endpoint("goal-set", "POST", f"{CASE}/goals",
             {"title": "A flat of my own", "domain": "housing", "source": "agency"},
             {"title": "A room of my own", "domain": "housing", "source": "agency"}, 201),
    Endpoint("goal-revise", "PATCH", f"{CASE}/goals/{{goal}}",
             {"title": "Find steady work nearby"},
             {"why_it_matters": "To support my daughter"}, 200),
    Endpoint("goal-status", "POST", f"{CASE}/goals/{{goal}}/status",
             {"status": "paused", "reason": "Jo is in hospital for a month"},
             {"status": "future", "reason": "Jo wants to start with housing"}, 200),
    Endpoint("step-add", "POST", f"{CASE}/goals/{{goal}}/steps",
             {"description": "Call the staffing agency", "owner": "participant"},
             {"description": "Call the staffing agency", "owner": "case_manager"}, 201),
    Endpoint("step-revise", "PATCH", f"{CASE}/steps/{{step}}",
             {"description": "Visit the job centre on Monday"}, {"due_date": "2026-04-01"},
             200),
    Endpoint("step-status", "POST", f"{CASE}/steps/{{step}}/status",
             {"status": "in_progress"},
             {"status": "cannot_be_done_yet", "reason": "The centre is closed this month"},
             200),
    Endpoint("step-complete", "POST", f"{CASE}/steps/{{step}}/complete", {},
             {"note": "Jo went on Tuesday"}, 200),
    Endpoint("support-add", "POST", f"{CASE}/supports",
             {"name": "Uncle Dev", "relationship": "uncle"},
             {"name": "Uncle Dev", "relationship": "neighbour"}, 201),
    Endpoint("support-remove", "DELETE", f"{CASE}/supports/{{support}}",
             {"reason": "Aunt Maria moved away"}, {"reason": "Jo asked to leave her out"}, 200),
    Endpoint("requirement-add", "POST", f"{CASE}/requirements",
             {"title": "Report weekly to probation"},
             {"title": "Report monthly to probation"}, 201),
    Endpoint("requirement-status", "POST", f"{CASE}/requirements/{{requirement}}/status",
             {"status": "in_progress"}, {"status": "met"}, 200),
    Endpoint("agreement", "POST", f"{CASE}/agreements",
             {"participation": "in_person", "present": ["Jo", "Sam"],
              "participant_statement": "This is my plan and I am ready to start"},
             {"participation": "phone", "present": ["Jo", "Sam"],
              "participant_statement": "This is my plan and I am ready to start"},
             201, agreed=False),
    Endpoint("review-held", "POST", f"{CASE}/reviews/{{review}}/held", {},
             {"summary": "Jo has kept every appointment"}, 200),
    Endpoint("review-reschedule", "POST", f"{CASE}/reviews/{{review}}/reschedule",
             {"due_date": "2026-05-15", "reason": "Jo asked for a later date"},
             {"due_date": "2026-05-20", "reason": "Jo asked for a later date"}, 200),
    Endpoint("note", "POST", f"{CASE}/notes", {"text": "Jo called about the job fair"},
             {"text": "Jo called about the bus pass"}, 201),
    Endpoint("transfer", "POST", f"{CASE}/transfer",
             {"case_manager": "cm-2", "reason": "Caseload balance"},
             {"case_manager": "cm-3", "reason": "Caseload balance"}, 200),
    Endpoint("close", "POST", f"{CASE}/close", {"reason": "Moved away", "outcome": "moved"},
             {"reason": "Moved to another county", "outcome": "moved"}, 200),
    Endpoint("reopen", "POST", f"{CASE}/reopen", {"reason": "Came back to the area"},
             {"reason": "Asked to start again"}, 200, closed=True),
]
WRITES = [pytest.param(e, id=e.name) for e in ENDPOINTS]
CASE_WRITES = [pytest.param(e, id=e.name) for e in ENDPOINTS if not e.opens]


@dataclass
class Answer:
    """What a client sees of an answer: the status, the body, and the headers a write sets."""

    status: int
    body: Any
    etag: str | None
    location: str | None
    replayed: str | None = field(default=None, compare=False)

    @classmethod
    async def of(cls, response: ClientResponse) -> Answer:
        return cls(response.status, await response.json(), response.headers.get("ETag"),
                   response.headers.get("Location"),
                   response.headers.get("Idempotent-Replayed"))


async def send(client: TestClient, token: str, method: str, path: str, body: Any, *,
               key: str | None = None, if_match: int | None = None,
               raw: bytes | None = None, no_body: bool = False) -> Answer:
    headers = bearer(token)
    if key is not None:
        headers["Idempotency-Key"] = key
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if no_body:
        response = await client.request(method, path, headers=headers)
    else:
        headers["Content-Type"] = "application/json"
        data = raw if raw is not None else json.dumps(body).encode()
        response = await client.request(method, path, data=data, headers=headers)
    return await Answer.of(response)


def reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(v) for v in value]
    return value


def re_encoded(body: Any) -> bytes:
    """The same JSON as a client library might send it on a retry: keys in another order,
    spaced out, non-ASCII escaped."""
    text = json.dumps(reversed_keys(body), indent=3, separators=(" ,", " :  "),
                      ensure_ascii=True)
    return f"\n  {text}  \n".encode()


async def prepare(cm: CaseApi, endpoint: Endpoint) -> dict[str, str]:
    """A case with one of everything the endpoints name; returns the ids for the path."""
    case = await cm.open_case()
    strength = await cm.strength(case)
    goal = await cm.goal(case)
    step = await cm.step(case, goal)
    support = await cm.call("POST", f"/v1/cases/{case}/supports",
                            {"name": "Aunt Maria", "relationship": "aunt"}, expect=201)
    requirement = await cm.call("POST", f"/v1/cases/{case}/requirements",
                                {"title": "Attend 8 group sessions"}, expect=201)
    review = ""
    if endpoint.agreed:
        review = str((await cm.agree(case))["id"])
    if endpoint.closed:
        await cm.call("POST", f"/v1/cases/{case}/close", {"reason": "Moved away"}, expect=200)
    return {"case": case, "strength": strength, "goal": goal, "step": step,
            "support": str(support["id"]), "requirement": str(requirement["id"]),
            "review": review}


async def version_of(cm: CaseApi, case_id: str) -> int:
    return int((await cm.plan(case_id))["version"])


async def change_the_case_afterwards(client: TestClient, token: TokenFactory,
                                     case_id: str) -> None:
    """Other writes land after the original: the case is noted on, transferred away from the
    one who sent the original, and closed (or, closed, reopened, noted on and transferred)."""
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    plan = await supervisor.plan(case_id)
    owner = CaseApi(client, token(sub=plan["case_manager"]))
    newcomer = CaseApi(client, token(sub="cm-9"))
    base = f"/v1/cases/{case_id}"
    if plan["status"] == "closed":
        await owner.call("POST", f"{base}/reopen", {"reason": "Jo came back"}, expect=200)
    await owner.call("POST", f"{base}/notes", {"text": "Jo dropped by"}, expect=201)
    await supervisor.call("POST", f"{base}/transfer",
                          {"case_manager": "cm-9", "reason": "Caseload balance"}, expect=200)
    if plan["status"] == "open":
        await newcomer.call("POST", f"{base}/close", {"reason": "Jo moved away"}, expect=200)


def kind(answer: Answer) -> str:
    return str(answer.body.get("type", "")).removeprefix(PROBLEMS)


# --------------------------------------------------------------------------------------------
# Per endpoint: a retry is the original answer, and writes nothing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", WRITES)
async def test_a_retry_answers_exactly_as_the_original_and_writes_nothing(
        endpoint: Endpoint, client: TestClient, token: TokenFactory,
        fresh_pool: asyncpg.Pool) -> None:
    """The same status, the same body (version, created id, events with their ids and
    hashes, warnings), the same ETag and Location; sent again byte for byte, re-encoded
    (decision 0005: "the same JSON spaced or ordered differently is the same request"), and
    for a body of optional fields only, with no body at all ("it stands for {}")."""
    cm = CaseApi(client, token())
    path = endpoint.path.format(**await prepare(cm, endpoint))
    key = f"s20-{endpoint.name}"
    first = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key)
    assert first.status == endpoint.status, first
    assert first.etag == f'"{first.body["version"]}"', first
    assert first.replayed is None
    if endpoint.status == 201:
        assert first.location == f"/v1/cases/{first.body['case_id']}", first
    count = await event_count(fresh_pool)
    assert count >= first.body["version"]

    again = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key)
    assert again == first
    assert again.replayed == "true"
    respaced = await send(client, cm.token, endpoint.method, path, None, key=key,
                          raw=re_encoded(endpoint.body))
    assert respaced == first
    if endpoint.body == {}:
        bare = await send(client, cm.token, endpoint.method, path, None, key=key, no_body=True)
        assert bare == first
    assert await event_count(fresh_pool) == count


@pytest.mark.parametrize("endpoint", WRITES)
async def test_a_retry_after_the_case_moved_on_still_answers_the_original(
        endpoint: Endpoint, client: TestClient, token: TokenFactory,
        fresh_pool: asyncpg.Pool) -> None:
    """The original lands (with If-Match, as a careful client sends it); then the case is
    written to, transferred away from the sender and closed (or reopened). The retry, with
    the same If-Match the original carried, now stale, is the same request: the original
    answer (decision 0005: "the lookup first is what keeps a retry's answer the original's
    whatever happened to the case since"), not 412, 403 or 409, and nothing is written."""
    cm = CaseApi(client, token())
    ids = await prepare(cm, endpoint)
    path = endpoint.path.format(**ids)
    key = f"s20-later-{endpoint.name}"
    if_match = None if endpoint.opens else await version_of(cm, ids["case"])
    first = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key,
                       if_match=if_match)
    assert first.status == endpoint.status, first
    await change_the_case_afterwards(client, token, first.body["case_id"])
    count = await event_count(fresh_pool)

    again = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key,
                       if_match=if_match)
    assert again == first
    assert again.replayed == "true"
    if if_match is not None:
        without = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key)
        assert without == first
    assert await event_count(fresh_pool) == count


@pytest.mark.parametrize("endpoint", WRITES)
async def test_copies_sent_at_once_write_once_and_all_answer_alike(
        endpoint: Endpoint, client: TestClient, token: TokenFactory,
        fresh_pool: asyncpg.Pool) -> None:
    """Eight copies of one keyed request (with If-Match, where the case exists) sent before
    the first is written: one write, and eight identical answers, the original's (decision
    0005 step 7: a copy decided against the state the original left "is still the same
    request"; design: "a retry returns the original result and writes nothing")."""
    cm = CaseApi(client, token())
    ids = await prepare(cm, endpoint)
    path = endpoint.path.format(**ids)
    if_match = None if endpoint.opens else await version_of(cm, ids["case"])
    before = await event_count(fresh_pool)
    answers = await racing(cm, fresh_pool, *[
        send(client, cm.token, endpoint.method, path, endpoint.body, key=f"s20-8-{endpoint.name}",
             if_match=if_match) for _ in range(8)])
    statuses = [a.status for a in answers]
    assert statuses == [endpoint.status] * 8, [(a.status, a.body) for a in answers]
    assert all(a == answers[0] for a in answers), answers
    assert sum(a.replayed is None for a in answers) == 1
    written = len(answers[0].body["events"])
    assert await event_count(fresh_pool) == before + written


@pytest.mark.parametrize("endpoint", WRITES)
async def test_the_same_key_with_another_body_is_refused_and_the_original_still_replays(
        endpoint: Endpoint, client: TestClient, token: TokenFactory,
        fresh_pool: asyncpg.Pool) -> None:
    """design.md: "the same key with a different body is refused" (422
    idempotency-key-reused, naming the header); nothing is written, and the key still
    answers the original request."""
    cm = CaseApi(client, token())
    path = endpoint.path.format(**await prepare(cm, endpoint))
    key = f"s20-other-{endpoint.name}"
    first = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key)
    assert first.status == endpoint.status, first
    count = await event_count(fresh_pool)
    other = await send(client, cm.token, endpoint.method, path, endpoint.other, key=key)
    assert (other.status, kind(other)) == (422, "idempotency-key-reused"), other
    assert [e["field"] for e in other.body["errors"]] == ["header.Idempotency-Key"]
    assert await event_count(fresh_pool) == count
    assert await send(client, cm.token, endpoint.method, path, endpoint.body, key=key) == first


# --------------------------------------------------------------------------------------------
# Per endpoint: If-Match
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", CASE_WRITES)
async def test_if_match_stale_is_412_with_the_current_version_and_current_succeeds(
        endpoint: Endpoint, client: TestClient, token: TokenFactory,
        fresh_pool: asyncpg.Pool) -> None:
    """A stale If-Match: 412 version-mismatch, current_version in the problem body and the
    current ETag, nothing written; the key it carried was not used up (decision 0005: "A
    refusal is not remembered under its key"), so the write sent again under that key with
    the current version lands, answering the ETag of the new version, which the plan shows."""
    cm = CaseApi(client, token())
    ids = await prepare(cm, endpoint)
    path = endpoint.path.format(**ids)
    current = await version_of(cm, ids["case"])
    count = await event_count(fresh_pool)
    key = f"s20-ifmatch-{endpoint.name}"
    stale = await send(client, cm.token, endpoint.method, path, endpoint.other, key=key,
                       if_match=current - 1)
    assert (stale.status, kind(stale)) == (412, "version-mismatch"), stale
    assert stale.body["current_version"] == current
    assert stale.etag == f'"{current}"'
    assert await event_count(fresh_pool) == count

    landed = await send(client, cm.token, endpoint.method, path, endpoint.body, key=key,
                        if_match=current)
    assert landed.status == endpoint.status, landed
    new_version = current + len(landed.body["events"])
    assert landed.body["version"] == new_version
    assert landed.etag == f'"{new_version}"'
    assert await event_count(fresh_pool) == count + len(landed.body["events"])
    head = await client.get(f"/v1/cases/{ids['case']}", headers=bearer(
        token(role="supervisor", sub="sup-1")))
    assert head.headers["ETag"] == landed.etag


# --------------------------------------------------------------------------------------------
# Scope: what "the same request" is
# --------------------------------------------------------------------------------------------


async def test_a_key_used_on_one_write_is_refused_on_another_write_of_the_same_case(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """README: "a key of that write's own: the same key on another write is refused, 422"."""
    ids = await prepare(cm, ENDPOINTS[0])
    base = f"/v1/cases/{ids['case']}"
    key = "s20-one-write"
    await send(cm.client, cm.token, "POST", f"{base}/notes", {"text": "Jo called"}, key=key)
    count = await event_count(fresh_pool)
    for method, path, body in (
            ("POST", f"{base}/strengths", {"category": "skill", "description": "Jo called"}),
            ("PATCH", f"{base}/goals/{ids['goal']}", {"title": "Jo called"}),
            ("POST", f"{base}/close", {"reason": "Jo called"}),
            ("POST", "/v1/cases", OPEN_BODY)):
        answer = await send(cm.client, cm.token, method, path, body, key=key)
        assert (answer.status, kind(answer)) == (422, "idempotency-key-reused"), (path, answer)
    assert await event_count(fresh_pool) == count


async def test_keys_belong_to_their_caller_another_case_manager_using_it_writes_anew(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """Keys are scoped per agency and caller (decision 0002: "two users cannot collide on a
    key"). cm-1 notes on a case with a key and the case goes to cm-2; cm-2 sends the same
    note, path and key: theirs is a request of its own, written, with an id of its own, not
    cm-1's answer handed back."""
    cm1 = CaseApi(client, token(sub="cm-1"))
    case_id = await cm1.open_case()
    path, body, key = f"/v1/cases/{case_id}/notes", {"text": "Jo called"}, "s20-note"
    mine = await send(client, cm1.token, "POST", path, body, key=key)
    assert mine.status == 201
    await cm1.call("POST", f"/v1/cases/{case_id}/transfer",
                   {"case_manager": "cm-2", "reason": "Caseload balance"}, expect=200)
    count = await event_count(fresh_pool)
    cm2 = token(sub="cm-2")
    theirs = await send(client, cm2, "POST", path, body, key=key)
    assert theirs.status == 201, theirs
    assert theirs.replayed is None
    assert theirs.body["id"] != mine.body["id"]
    assert theirs.body["version"] == count + 1
    assert theirs.body["events"][0]["actor"] == "cm-2"
    assert await event_count(fresh_pool) == count + 1
    # and each one's retry still answers their own
    assert await send(client, cm1.token, "POST", path, body, key=key) == mine
    assert await send(client, cm2, "POST", path, body, key=key) == theirs


async def test_a_supervisor_and_a_case_manager_opening_with_one_key_open_two_cases(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    key = "s20-open"
    cm_answer = await send(client, token(), "POST", "/v1/cases", OPEN_BODY, key=key)
    sup_answer = await send(client, token(role="supervisor", sub="sup-1"), "POST", "/v1/cases",
                            OPEN_BODY, key=key)
    assert (cm_answer.status, sup_answer.status) == (201, 201)
    assert cm_answer.body["case_id"] != sup_answer.body["case_id"]
    assert sup_answer.location == f"/v1/cases/{sup_answer.body['case_id']}"
    assert await event_count(fresh_pool) == 2


async def test_an_explicit_null_on_a_create_is_another_request_under_one_key(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """Decision 0005: "an explicit null still differs from a field left out" (stated for any
    body, not only PATCH)."""
    case_id = await cm.open_case()
    path, key = f"/v1/cases/{case_id}/notes", "s20-null"
    first = await send(cm.client, cm.token, "POST", path, {"text": "Jo called"}, key=key)
    assert first.status == 201
    with_null = await send(cm.client, cm.token, "POST", path,
                           {"text": "Jo called", "goal_id": None}, key=key)
    assert (with_null.status, kind(with_null)) == (422, "idempotency-key-reused"), with_null
    assert await event_count(fresh_pool) == 2


async def test_a_retry_whose_text_differs_only_by_surrounding_spaces_is_the_same_request(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """The fingerprint is of the validated body, and the body's strings are stripped
    (str_strip_whitespace): " Jo called " is recorded as "Jo called", so it is the same
    request, and replays; anything else would refuse a retry of what was recorded."""
    case_id = await cm.open_case()
    path, key = f"/v1/cases/{case_id}/notes", "s20-spaces"
    first = await send(cm.client, cm.token, "POST", path, {"text": "Jo called"}, key=key)
    again = await send(cm.client, cm.token, "POST", path, {"text": "  Jo called \n"}, key=key)
    assert again == first
    assert await event_count(fresh_pool) == 2


async def test_a_retry_in_another_unicode_normal_form_is_never_written_twice(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """"José" composed (NFC) and decomposed (NFD) under one key: either the same request
    (the original answer) or another (422 reused), as the recorded text tells; never a
    second note."""
    case_id = await cm.open_case()
    path, key = f"/v1/cases/{case_id}/notes", "s20-nfd"
    composed = unicodedata.normalize("NFC", "José called")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    first = await send(cm.client, cm.token, "POST", path, {"text": composed}, key=key)
    assert first.status == 201
    again = await send(cm.client, cm.token, "POST", path, {"text": decomposed}, key=key)
    recorded = first.body["events"][0]["data"]["text"]
    if recorded == unicodedata.normalize("NFC", recorded) and again.status == 201:
        assert again == first
    else:
        assert (again.status, kind(again)) == (422, "idempotency-key-reused"), again
    assert await event_count(fresh_pool) == 2


@pytest.mark.parametrize("where", ["body-then-query", "query-then-body"])
async def test_a_removal_retried_with_its_reason_moved_between_body_and_query(
        where: str, cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """README: "removal needs a reason, body or ?reason=". The fingerprint covers the path
    with its query (decision 0005), so moving the reason is another request: refused as a
    reused key (or, were it read as the same removal, the original answer); never a second
    decision that answers 404/409 "already removed" as though the removal had failed."""
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    path, key, reason = f"/v1/cases/{case_id}/strengths/{strength}", "s20-del", "Recorded twice"
    as_query = f"{path}?reason=Recorded%20twice"
    first_path, second_path = (path, as_query) if where == "body-then-query" else (as_query,
                                                                                  path)
    first = await send(cm.client, cm.token, "DELETE", first_path, {"reason": reason}, key=key,
                       no_body=first_path == as_query)
    assert first.status == 200, first
    same = await send(cm.client, cm.token, "DELETE", first_path, {"reason": reason}, key=key,
                      no_body=first_path == as_query)
    assert same == first
    moved = await send(cm.client, cm.token, "DELETE", second_path, {"reason": reason}, key=key,
                       no_body=second_path == as_query)
    assert moved == first or (moved.status, kind(moved)) == (422, "idempotency-key-reused"), \
        moved
    assert await event_count(fresh_pool) == 3


async def test_a_keyed_write_refused_by_if_match_leaves_its_key_free_for_another_body(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """A refusal is not remembered under its key (decision 0005): a stale note under key K
    is 412; a different note under K, current, is written (the key was not claimed by the
    refused body); the first body under K is now refused as reused."""
    case_id = await cm.open_case()
    path, key = f"/v1/cases/{case_id}/notes", "s20-free"
    stale = await send(cm.client, cm.token, "POST", path, {"text": "Jo called"}, key=key,
                       if_match=0)
    assert (stale.status, stale.body.get("current_version")) == (412, 1), stale
    landed = await send(cm.client, cm.token, "POST", path, {"text": "Jo wrote"}, key=key,
                        if_match=1)
    assert landed.status == 201, landed
    first_body = await send(cm.client, cm.token, "POST", path, {"text": "Jo called"}, key=key,
                            if_match=2)
    assert (first_body.status, kind(first_body)) == (422, "idempotency-key-reused"), first_body
    assert await event_count(fresh_pool) == 2


async def test_a_retried_open_answers_201_with_the_same_case_location_and_etag(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """POST /v1/cases "→ 201, Location, ETag" (README); the retry of an opening is the same
    answer, whatever the case has become since (here: written to, transferred, closed)."""
    cm = token()
    first = await send(client, cm, "POST", "/v1/cases", OPEN_BODY, key="s20-open-ana")
    assert (first.status, first.etag) == (201, '"1"'), first
    assert first.location == f"/v1/cases/{first.body['case_id']}"
    await change_the_case_afterwards(client, token, first.body["case_id"])
    count = await event_count(fresh_pool)
    again = await send(client, cm, "POST", "/v1/cases", OPEN_BODY, key="s20-open-ana")
    assert again == first
    assert (again.status, again.etag, again.location) == (201, '"1"', first.location)
    assert await event_count(fresh_pool) == count


@pytest.mark.parametrize("sender", ["case-manager", "supervisor"])
async def test_a_transfer_resent_before_its_answer_came_gets_the_original_answer(
        sender: str, client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """A transfer and its copy, no If-Match, the copy sent before the original's answer
    came. Decision 0005 step 7: a retry racing its original "used to be decided against the
    state the original left, and got 412 or 409 ...: a client told its write failed when it
    had not"; and step 1 names the transfer as the write whose retry is "no longer the
    sender's case to write". The copy must answer the original's 200, not 403."""
    who = token(sub="cm-1") if sender == "case-manager" else token(role="supervisor",
                                                                    sub="sup-1")
    cm = CaseApi(client, token(sub="cm-1"))
    case_id = await cm.open_case()
    path, body = f"/v1/cases/{case_id}/transfer", {"case_manager": "cm-2",
                                                   "reason": "Caseload balance"}
    answers = await racing(cm, fresh_pool, *[
        send(client, who, "POST", path, body, key=f"s20-transfer-{sender}") for _ in range(2)])
    assert [a.status for a in answers] == [200, 200], [(a.status, a.body) for a in answers]
    assert answers[1] == answers[0]
    assert await event_count(fresh_pool) == 2
