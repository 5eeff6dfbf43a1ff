"""Conformance audit of the brief's Security and Operations sections, and of the event store's
immutability (twenty-second session).

design.md, Security: "Roles: ... auditor (read-only, scoped to named cases and a time window,
for courts), analyst (aggregates only, no personal data), participant (reads own plan), service
(the notifier's feed access)"; "a wrong-agency id answers 404, not 403"; "Every read of a case
by supervisor or auditor is itself logged (access log, exportable)". Operations: "Structured
JSON logs with request ids; Prometheus metrics (request latency, append rate, feed lag,
notifications sent/failed/dead)". Event store: "UPDATE, DELETE and TRUNCATE on the events table
are refused by the database itself (trigger and privileges)". Where the brief is silent,
docs/decisions/0004, 0006, 0010, 0013 and 0203 say what is promised.

Every probe goes through real HTTP (aiohttp's test server, or a real socket where the request
log is read), real PostgreSQL and a real SMTP server; tokens are minted here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import jwt
import pytest
import structlog
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from prometheus_client.parser import text_string_to_metric_families

from services.notifier.http.app import create_app as create_notifier_app
from services.records.http.app import create_app as create_records_app
from tests.conftest import (
    JWT_SECRET,
    ClientFactory,
    FakeClock,
    TokenFactory,
    bearer,
    make_settings,
    serve,
)
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, notifier_settings
from tests.records_api import CaseApi

# --- a case full of personal data, each piece findable ---------------------------------------

NAME = "Quillon Vexmere"
PREFERRED = "Quilly"
EMAIL = "quillon.vexmere@example.org"
WORDS = "I want to fix bicycles for a living WQ2"
STRENGTH = "Rebuilds bicycles from parts SD4"
NOTE = "Met at the library and talked about the bus pass XN1"
STATEMENT = "This is my plan and I chose it ST3"
PERSONAL = [NAME, PREFERRED, EMAIL, WORDS, STRENGTH, NOTE, STATEMENT]


async def _case(api: CaseApi) -> str:
    """A case of cm-1's with every kind of free text the brief names: the participant's
    name and address, their own words, a strength, a note and their statement (version 6)."""
    created = await api.call("POST", "/v1/cases", {
        "participant": {"name": NAME, "preferred_name": PREFERRED, "email": EMAIL},
        "case_manager": "cm-1", "risk_level": "moderate"}, expect=201)
    case_id = str(created["case_id"])
    await api.call("POST", f"/v1/cases/{case_id}/strengths",
                   {"category": "skill", "description": STRENGTH}, expect=201)
    await api.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": "Steady work", "domain": "employment", "source": "participant",
        "in_their_words": WORDS}, expect=201)
    await api.call("POST", f"/v1/cases/{case_id}/notes", {"text": NOTE}, expect=201)
    await api.call("POST", f"/v1/cases/{case_id}/agreements", {
        "participation": "in_person", "present": [PREFERRED],
        "participant_statement": STATEMENT}, expect=201)
    return case_id


def _leaks(text: str, case_id: str | None = None) -> list[str]:
    found = [piece for piece in PERSONAL if piece in text]
    if case_id is not None and case_id in text:
        found.append("the case id")
    return found


# --- every GET route of the records service, as the router lists them ----------------------

RECORDS_GETS = {
    "/healthz", "/readyz", "/openapi.json", "/docs", "/metrics", "/v1/events", "/v1/cases",
    "/v1/cases/{case_id}", "/v1/cases/{case_id}/history", "/v1/cases/{case_id}/diff",
    "/v1/cases/{case_id}/verify", "/v1/cases/{case_id}/export", "/v1/analytics/outcomes",
    "/v1/access-log",
}


def _records_reads(case_id: str, now: datetime) -> list[str]:
    """One or more concrete requests for every GET route of the records service."""
    case = f"/v1/cases/{case_id}"
    return [
        "/healthz", "/readyz", "/openapi.json", "/docs", "/metrics", "/v1/events?wait=0",
        "/v1/cases", "/v1/cases?case_manager=cm-1",
        case, f"{case}?as_of_version=6", f"{case}?as_of={quote(now.isoformat())}",
        f"{case}/history", f"{case}/diff?from_version=1&to_version=6", f"{case}/verify",
        *(f"{case}/export?format={f}" for f in ("jsonl", "csv", "pdf", "fhir")),
        "/v1/analytics/outcomes?from=2026-01-01&to=2026-12-31",
        "/v1/access-log", f"/v1/access-log?case_id={case_id}",
    ]


NOTIFIER_GETS = {
    "/healthz", "/readyz", "/openapi.json", "/docs", "/metrics", "/v1/preferences/{user}",
    "/v1/unsubscribe/{token}", "/v1/notifications", "/v1/notifications/{notification_id}",
    "/v1/schedule", "/v1/access-log", "/mail",
}


def _gets(app: web.Application) -> set[str]:
    return {route.resource.canonical for route in app.router.routes()
            if route.method == "GET" and route.resource is not None}


def test_the_audit_below_covers_every_get_route_both_services_serve() -> None:
    """The role tests below read every GET route, listed from each app's router; a route
    added later must be added there."""
    records_app = create_records_app(make_settings("postgresql://nobody@127.0.0.1:9/none"))
    assert _gets(records_app) == RECORDS_GETS, _gets(records_app) ^ RECORDS_GETS
    notifier_app = create_notifier_app(notifier_settings(
        "postgresql://nobody@127.0.0.1:9/none", "http://127.0.0.1:9", 9), background=False)
    assert _gets(notifier_app) == NOTIFIER_GETS, _gets(notifier_app) ^ NOTIFIER_GETS


async def _read_all(client: TestClient, paths: list[str], token: str
                    ) -> list[tuple[str, int, str]]:
    answers = []
    for path in paths:
        for method in ("GET", "HEAD"):
            response = await client.request(method, path, headers=bearer(token))
            body = (await response.read()).decode("utf-8", "replace")
            answers.append((f"{method} {path}", response.status, body))
            assert response.status < 500, (method, path, response.status, body[:300])
    return answers


async def test_an_analyst_reaches_no_personal_data_nor_case_id_on_any_records_route(
        records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """Analyst: "aggregates only, no personal data". Every GET (and HEAD) of the records
    service with an analyst's token: no name, address, words, note, statement or case id in
    any answer; every read of a case is 403 (0004: the same for every id)."""
    case_id = await _case(CaseApi(records.client, records.token))
    analyst = token(role="analyst", sub="an-1")
    answers = await _read_all(records.client, _records_reads(case_id, clock.now), analyst)
    # the case id counts where the analyst did not give it (a problem names its request)
    leaks = [(what, found) for what, _, body in answers
             if (found := _leaks(body, None if case_id in what else case_id))]
    assert leaks == []
    for what, status, _ in answers:
        if "/v1/cases/" in what or what.endswith("/v1/cases") or "case_manager" in what:
            assert status in (403, 405), (what, status)
    outcomes = [s for w, s, _ in answers if w.startswith("GET /v1/analytics")]
    assert outcomes == [200]


async def test_the_service_role_reads_personal_data_through_the_feed_only(
        records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """Service: "the notifier's feed access". The feed carries the events; no other records
    route answers the service role any personal data or case."""
    case_id = await _case(CaseApi(records.client, records.token))
    service = token(role="service", sub="notifier")
    await _feed_caught_up(records.client, service)
    answers = await _read_all(records.client, _records_reads(case_id, clock.now), service)
    feed = [body for what, _, body in answers if what == "GET /v1/events?wait=0"]
    assert _leaks(feed[0]), "the feed should carry the events"
    leaks = [(what, found) for what, _, body in answers if "/v1/events" not in what
             and (found := _leaks(body, None if case_id in what else case_id))]
    assert leaks == []


async def _feed_caught_up(client: TestClient, service: str) -> None:
    """The feed holds events back while an older transaction on the server is open (other
    runs share it): wait until it hands out everything written so far."""
    for _ in range(400):
        page = await (await client.get("/v1/events?wait=0", headers=bearer(service))).json()
        if page["held_back"] == 0:
            return
        await asyncio.sleep(0.05)


async def test_analyst_and_service_reach_no_personal_data_on_any_notifier_route(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """The same two roles on every GET of the notifier: nothing personal anywhere; the
    analyst reads no notice, schedule, preference or log at all."""
    case_id = await _case(CaseApi(records.client, records.token))
    await rig.set_prefs("cm-1", records.token)
    participant = token(role="participant", sub="p-1", cases=[case_id])
    await rig.set_prefs("p-1", participant, email=EMAIL)
    await rig.catch_up()
    notification = str((await rig.rows())[0]["id"])
    paths = ["/v1/notifications", f"/v1/notifications?case_id={case_id}",
             f"/v1/notifications/{notification}", f"/v1/schedule?case_id={case_id}",
             "/v1/preferences/p-1?role=participant", "/v1/preferences/cm-1", "/v1/access-log",
             "/metrics", "/readyz", "/healthz", "/openapi.json", "/docs", "/mail"]
    paths.append(f"/v1/unsubscribe/{'A' * 40}")  # every GET route of NOTIFIER_GETS
    for role in ("analyst", "service"):
        who = token(role=role, sub=f"{role}-1")
        answers = await _read_all(rig.client, paths, who)
        leaks = [(what, found) for what, _, body in answers if (found := _leaks(body))]
        assert leaks == [], role
        if role == "analyst":
            data = [(w, s) for w, s, _ in answers if w.split()[1].startswith("/v1/")
                    and not w.split()[1].startswith("/v1/unsubscribe/")
                    and s not in (403, 405)]
            assert data == []


# --- participants ---------------------------------------------------------------------------


async def test_a_participant_reads_their_own_plan_and_nothing_else(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """0004: a participant reads their plan (notes included, as staff read it) and nothing
    else: history, diffs, verify, exports and time travel 403; another case of the agency, or
    one of another agency, 404; no listing, access log, analytics or feed. In the notifier,
    only the notices addressed to them."""
    api = CaseApi(records.client, records.token)
    case_id = await _case(api)
    other = await _case(api)
    await rig.set_prefs("cm-1", records.token)
    await rig.catch_up()
    participant = token(role="participant", sub="p-1", cases=[case_id])
    own = await records.client.get(f"/v1/cases/{case_id}", headers=bearer(participant))
    supervisor_view = await api.call("GET", f"/v1/cases/{case_id}",
                                     token=token(role="supervisor", sub="sup-1"), expect=200)
    assert own.status == 200
    assert await own.json() == supervisor_view
    statuses = {}
    for path in _records_reads(case_id, clock.now):
        response = await records.client.get(path, headers=bearer(participant))
        statuses[path] = response.status
    expected_200 = {"/healthz", "/readyz", "/openapi.json", "/docs", "/metrics",
                    f"/v1/cases/{case_id}"}
    wrong = {p: s for p, s in statuses.items()
             if (s != 200 if p in expected_200 else s != 403)}
    assert wrong == {}
    for path in _records_reads(other, clock.now):
        if f"/v1/cases/{other}" in path:
            response = await records.client.get(path, headers=bearer(participant))
            assert response.status == 404, (path, response.status)
    listed = await rig.client.get(f"/v1/notifications?case_id={case_id}",
                                  headers=bearer(participant))
    assert listed.status == 200
    recipients = {n["recipient"] for n in (await listed.json())["notifications"]}
    assert recipients <= {f"participant:{case_id}"}, recipients
    staff_notice = str((await rig.rows(recipient="cm-1"))[0]["id"])
    one = await rig.client.get(f"/v1/notifications/{staff_notice}", headers=bearer(participant))
    assert one.status == 404
    schedule = await rig.client.get(f"/v1/schedule?case_id={case_id}", headers=bearer(participant))
    assert schedule.status == 403


# --- auditors -------------------------------------------------------------------------------


def _at(day: int) -> datetime:
    return datetime(2026, 3, day, 9, 0, tzinfo=UTC)


async def test_an_auditor_naming_no_case_reads_nothing_and_its_attempts_are_logged(
        records: Records, token: TokenFactory) -> None:
    """An auditor's token scoped to a window but naming no case: every read of a case is the
    404 a made-up id gets, the listing, access log, analytics and feed 403; its attempts on
    the agency's case are logged as refused ("not named in the token")."""
    case_id = await _case(CaseApi(records.client, records.token))
    court = token(role="auditor", sub="court-9", window_to=_at(31))
    made_up = str(uuid.uuid4())
    for path in _records_reads(case_id, _at(2)):
        response = await records.client.get(path, headers=bearer(court))
        if f"/v1/cases/{case_id}" in path:
            assert response.status == 404, (path, response.status)
            twin = await records.client.get(path.replace(case_id, made_up), headers=bearer(court))
            assert twin.status == 404
        elif path.startswith(("/v1/cases", "/v1/access-log", "/v1/analytics", "/v1/events")):
            assert response.status == 403, (path, response.status)
    entries = await _access_log(records.client, token(role="supervisor", sub="sup-1"),
                                lambda e: e["actor_sub"] == "court-9", expect=8)
    assert {e["refused"] for e in entries} == {"not named in the token"}
    assert {e["case_id"] for e in entries} == {case_id}


async def test_a_windowed_auditor_gets_nothing_recorded_after_the_window_in_any_format(
        records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """0006/0010: an auditor reads the case only as it was inside the window; an export holds
    the events recorded inside it. Notes before (v2), inside (v3) and after (v4) the window:
    no read, in no export format, shows the note recorded after it or its version."""
    clock.now = _at(2)
    api = CaseApi(records.client, records.token)
    created = await api.call("POST", "/v1/cases", {
        "participant": {"name": NAME, "email": EMAIL}, "case_manager": "cm-1",
        "risk_level": "low"}, expect=201)
    case_id = str(created["case_id"])
    before, inside, after = "Before the window BW1", "Inside the window IW2", "After it AW3"
    for day, text in ((3, before), (6, inside), (12, after)):
        clock.now = _at(day)
        await api.call("POST", f"/v1/cases/{case_id}/notes", {"text": text}, expect=201)
    clock.now = _at(15)
    court = bearer(token(role="auditor", sub="court-7", cases=[case_id],
                         window_from=_at(5), window_to=_at(10)))
    case = f"/v1/cases/{case_id}"
    plan = await records.client.get(case, headers=court)
    assert plan.status == 200
    assert plan.headers["ETag"] == '"3"'
    assert after not in await plan.text()
    history = await (await records.client.get(f"{case}/history", headers=court)).json()
    assert [e["version"] for e in history["events"]] == [3]
    for refused in (f"{case}?as_of_version=4", f"{case}?as_of={quote(_at(12).isoformat())}",
                    f"{case}/diff?from_version=1&to_version=3",
                    f"{case}/diff?from_version=3&to_version=4"):
        response = await records.client.get(refused, headers=court)
        assert response.status == 403, (refused, response.status)
        assert '"4"' not in response.headers.get("ETag", "")
    verified = await (await records.client.get(f"{case}/verify", headers=court)).json()
    assert verified["events_checked"] == 3
    everything = await api.call("GET", f"{case}/history",
                                token=token(role="supervisor", sub="sup-1"), expect=200)
    later_event = next(e["event_id"] for e in everything["events"] if e["version"] == 4)
    for export_format in ("jsonl", "csv", "fhir", "pdf"):
        response = await records.client.get(f"{case}/export?format={export_format}",
                                            headers=court)
        assert response.status == 200, export_format
        body = await response.read()
        assert after.encode() not in body, export_format
        assert later_event.encode() not in body, export_format
        if export_format != "fhir":  # its header is a Bundle's; the other three say it so
            assert b'"last_version":3' in body.replace(b" ", b"").replace(b'""', b'"'), \
                export_format
        if export_format in ("jsonl", "csv"):
            assert inside.encode() in body, export_format
            assert before.encode() not in body, export_format


# --- tenancy in the notifier's directory ----------------------------------------------------


async def test_another_agencys_user_preferences_answer_as_a_made_up_user(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """A wrong-agency id answers 404, not 403 — a user of another agency too: their
    preferences read and removed by another agency's supervisor answer as a user no agency
    has, a PUT there makes that agency's own entry and leaves theirs as it was, and a listing
    by their id shows none of their notices."""
    case_id = await _case(CaseApi(records.client, records.token))
    await rig.set_prefs("cm-1", records.token, email="cm-one@agency-a.example")
    await rig.catch_up()
    other = bearer(token(role="supervisor", sub="sup-b", agency="agency-b"))
    for method in ("GET", "DELETE"):
        real = await rig.client.request(method, "/v1/preferences/cm-1", headers=other)
        made_up = await rig.client.request(method, "/v1/preferences/nobody-7", headers=other)
        assert (real.status, (await real.json())["type"]) == (
            made_up.status, (await made_up.json())["type"]) == (404, (await real.json())["type"])
    listing = await rig.client.get("/v1/notifications?recipient=cm-1", headers=other)
    assert listing.status == 200
    assert (await listing.json())["notifications"] == []
    by_case = await rig.client.get(f"/v1/notifications?case_id={case_id}", headers=other)
    assert (await by_case.json())["notifications"] == []
    theirs = await rig.client.get("/v1/preferences/cm-1", headers=bearer(records.token))
    assert (await theirs.json())["email"] == "cm-one@agency-a.example"


# --- the access log: every read of a case by a supervisor or auditor -------------------------


async def _access_log(client: TestClient, supervisor: str, keep: Any, expect: int,
                      ) -> list[dict[str, Any]]:
    """The agency's access-log entries ``keep`` selects, once ``expect`` of them are out (an
    open transaction elsewhere on the server may hold the newest back for a moment)."""
    found: list[dict[str, Any]] = []
    for _ in range(200):
        entries, after = [], None
        while True:
            suffix = f"?after={after}" if after else ""
            page = await (await client.get(f"/v1/access-log{suffix}",
                                           headers=bearer(supervisor))).json()
            entries += page["entries"]
            after = page["next_after"]
            if after is None:
                break
        found = [e for e in entries if keep(e)]
        if len(found) >= expect:
            return found
        await asyncio.sleep(0.05)
    return found


async def test_every_supervisor_and_auditor_read_of_a_case_is_in_the_access_log(
        records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """Each read — the plan (GET and HEAD), as of a version and a time, history, diff,
    verify, each export format and the caseload listing — has an entry carrying that
    request's id, the case and which read it was."""
    case_id = await _case(CaseApi(records.client, records.token))
    clock.advance(minutes=5)
    supervisor = token(role="supervisor", sub="sup-1")
    court = token(role="auditor", sub="court-1", cases=[case_id], window_to=_at(31))
    case = f"/v1/cases/{case_id}"
    reads = [("GET", case), ("HEAD", case), ("GET", f"{case}?as_of_version=2"),
             ("GET", f"{case}?as_of={quote(clock.now.isoformat())}"),
             ("GET", f"{case}/history"), ("GET", f"{case}/diff?from_version=1&to_version=4"),
             ("GET", f"{case}/verify"),
             *(("GET", f"{case}/export?format={f}") for f in ("jsonl", "csv", "pdf", "fhir"))]
    asked: dict[str, str] = {}
    for who, reader in (("sup", supervisor), ("court", court)):
        for n, (method, path) in enumerate(reads):
            request_id = f"{who}-read-{n}"
            response = await records.client.request(
                method, path, headers={**bearer(reader), "X-Request-Id": request_id})
            await response.read()
            assert response.status == 200, (who, method, path, response.status)
            asked[request_id] = f"{method} {path}"
    listing = await records.client.get("/v1/cases", headers={**bearer(supervisor),
                                                              "X-Request-Id": "sup-list"})
    assert listing.status == 200
    asked["sup-list"] = "GET /v1/cases"
    entries = await _access_log(records.client, supervisor,
                                lambda e: e["request_id"] in asked, expect=len(asked))
    logged = {e["request_id"]: e for e in entries if e["case_id"] == case_id}
    assert sorted(set(asked) - set(logged)) == [], {r: asked[r] for r in asked
                                                    if r not in logged}
    assert {e["refused"] for e in logged.values()} == {None}
    assert logged["sup-read-8"]["what"] == "export format=csv"
    assert logged["court-read-0"]["what"].startswith("plan window_versions=")


async def test_the_access_logs_are_read_by_the_agencys_supervisors_only(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """0006/0203: both access logs are exported by supervisors, their own agency's entries;
    every other role (an auditor's token always has a window) 403."""
    case_id = await _case(CaseApi(records.client, records.token))
    await records.client.get(f"/v1/cases/{case_id}",
                             headers=bearer(token(role="supervisor", sub="sup-1")))
    others = {"case_manager": token(), "analyst": token(role="analyst", sub="an-1"),
              "service": token(role="service", sub="notifier"),
              "participant": token(role="participant", sub="p-1", cases=[case_id]),
              "auditor": token(role="auditor", sub="court-1", cases=[case_id])}
    for service in (records.client, rig.client):
        for role, who in others.items():
            response = await service.get("/v1/access-log", headers=bearer(who))
            assert response.status == 403, (role, response.status)
    theirs = await (await records.client.get(
        "/v1/access-log", headers=bearer(token(role="supervisor", sub="sup-b",
                                               agency="agency-b")))).json()
    assert theirs["entries"] == []


async def test_a_supervisors_put_showing_a_participants_stored_cases_is_a_logged_read(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """0203: a supervisor's GET of a participant's preferences is a read of each case on the
    entry and is logged. A PUT that leaves ``cases`` out keeps the stored ones and answers
    them: the same read of the participant's cases, by the same supervisor, so it must be in
    the same log."""
    case_id = await _case(CaseApi(records.client, records.token))
    participant = token(role="participant", sub="p-1", cases=[case_id])
    await rig.set_prefs("p-1", participant, email=EMAIL)
    supervisor = token(role="supervisor", sub="sup-1")
    read = await rig.client.get("/v1/preferences/p-1", headers=bearer(supervisor))
    assert (await read.json())["cases"] == [case_id]
    log = f"/v1/access-log?case_id={case_id}"
    entries = await _whole_page(rig.client, log, supervisor)
    assert [e["what"] for e in entries] == ["preferences"]  # the GET: logged
    response = await rig.client.put(
        "/v1/preferences/p-1", headers=bearer(supervisor),
        json={"email": "quilly@example.org", "delivery": "immediate", "timezone": "UTC",
              "celebrations": True})
    assert response.status == 200, await response.text()
    assert (await response.json())["cases"] == [case_id]  # shown: the supervisor gave none
    entries = await _whole_page(rig.client, log, supervisor)
    assert [(e["actor_sub"], e["case_id"]) for e in entries] == [
        ("sup-1", case_id), ("sup-1", case_id)], entries


async def _whole_page(client: TestClient, path: str, supervisor: str) -> list[dict[str, Any]]:
    """A log page once nothing is held back behind an open transaction elsewhere."""
    for _ in range(400):
        page = await (await client.get(path, headers=bearer(supervisor))).json()
        if page["held_back"] == 0:
            return list(page["entries"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path}: entries held back for 20 s")


# --- tokens ---------------------------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "sup-1", "role": "supervisor", "agency": "agency-a", "iat": now,
              "exp": now + 600, **overrides}
    return {k: v for k, v in claims.items() if v is not None}


def _hs(**overrides: Any) -> str:
    return jwt.encode(_claims(**overrides), JWT_SECRET, algorithm="HS256")


BAD_TOKENS = {
    "expired an hour ago": lambda: _hs(exp=int(time.time()) - 3600),
    "not valid for an hour (nbf)": lambda: _hs(nbf=int(time.time()) + 3600),
    "issued an hour from now (iat)": lambda: _hs(iat=int(time.time()) + 3600),
    "alg none": lambda: jwt.encode(_claims(), None, algorithm="none"),
    "no sub": lambda: _hs(sub=None), "no role": lambda: _hs(role=None),
    "no agency": lambda: _hs(agency=None), "no exp": lambda: _hs(exp=None),
    "unknown role": lambda: _hs(role="superuser"), "role a list": lambda: _hs(role=["x"]),
    "sub a number": lambda: _hs(sub=7), "agency an object": lambda: _hs(agency={"a": 1}),
    "cases not a list": lambda: _hs(role="auditor", cases="all", window_to=2000000000),
    "auditor without a window": lambda: _hs(role="auditor", cases=[str(uuid.uuid4())]),
    "window backwards": lambda: _hs(window_from=2000000000, window_to=1900000000),
    "window a string": lambda: _hs(window_to="tomorrow"),
    "exp beyond the calendar": lambda: _hs(exp=10**20),
    "signed with another secret": lambda: jwt.encode(_claims(), "x" * 40, algorithm="HS256"),
}


async def test_every_unacceptable_token_is_a_401_problem_on_both_services(
        rig: NotifierRig, records: Records) -> None:
    """Expired, not yet valid, unsigned, a claim missing or of the wrong type, an unknown
    role, a malformed or missing audit window, another secret: each a 401 problem with a
    Bearer challenge on both services, never a 500 (one service pair for all of them)."""
    wrong = []
    for kind, make in sorted(BAD_TOKENS.items()):
        bad = make()
        for client, path in ((records.client, "/v1/cases"), (records.client, "/v1/events"),
                             (rig.client, "/v1/notifications"), (rig.client, "/v1/access-log")):
            response = await client.get(path, headers=bearer(bad))
            await response.read()
            if (response.status, response.content_type) != (401, "application/problem+json") \
                    or not response.headers.get("WWW-Authenticate", "").startswith("Bearer"):
                wrong.append((kind, path, response.status))
    assert wrong == []


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    files = {}
    for name, key in (("rsa", rsa_key), ("ed", ed_key)):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / f"{name}.pem").write_bytes(pem)
        files[name] = (key, tmp_path / f"{name}.pem", pem)
    return files


@pytest.mark.parametrize("configured", ["rsa", "ed"])
async def test_with_a_public_key_configured_only_its_algorithm_and_key_are_taken(
        make_records_client: ClientFactory, fresh_database_url: str, keys: dict[str, Any],
        configured: str) -> None:
    """Production: RS256 or EdDSA public keys; the development HS256 secret is not set. An
    HS256 token (signed with anything, the public key's own bytes included), an unsigned
    one, and one signed with the other key type are each 401."""
    key, path, pem = keys[configured]
    client = await make_records_client(fresh_database_url, CASETRAIL_JWT_SECRET=None,
                                       CASETRAIL_JWT_PUBLIC_KEY_FILE=str(path))
    algorithm = "RS256" if configured == "rsa" else "EdDSA"
    sound = jwt.encode(_claims(), key, algorithm=algorithm)
    assert (await client.get("/v1/cases", headers=bearer(sound))).status == 200
    other_key = keys["ed" if configured == "rsa" else "rsa"][0]
    import hashlib
    import hmac
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(_claims()).encode())
    mac = hmac.new(pem, header + b"." + payload, hashlib.sha256).digest()
    confused = (header + b"." + payload + b"." + jwt.utils.base64url_encode(mac)).decode()
    for bad in (jwt.encode(_claims(), JWT_SECRET, algorithm="HS256"), confused,
                jwt.encode(_claims(), None, algorithm="none"),
                jwt.encode(_claims(), other_key,
                           algorithm="EdDSA" if configured == "rsa" else "RS256")):
        response = await client.get("/v1/cases", headers=bearer(bad))
        assert response.status == 401, (response.status, await response.text())
        assert response.content_type == "application/problem+json"


async def test_a_huge_token_is_taken_within_the_header_limit_and_a_4xx_problem_past_it(
        fresh_database_url: str) -> None:
    """0013: headers up to 64 KiB; past that a 4xx problem, never a 500, echoing nothing."""
    runner, port = await serve(create_records_app(make_settings(fresh_database_url)))
    try:
        async with ClientSession() as session:
            within = _hs(padding="p" * 40_000)
            async with session.get(f"http://127.0.0.1:{port}/v1/cases",
                                   headers=bearer(within)) as response:
                assert response.status == 200, response.status
            for size in (70_000, 200_000):
                huge = _hs(padding="p" * size)
                async with session.get(f"http://127.0.0.1:{port}/v1/cases",
                                       headers=bearer(huge)) as response:
                    body = await response.read()
                    assert 400 <= response.status < 500, (size, response.status)
                    assert response.content_type == "application/problem+json"
                    assert huge[-30:].encode() not in body
    finally:
        await runner.cleanup()


# --- immutability of records.events ---------------------------------------------------------


async def test_the_database_refuses_every_way_of_changing_or_removing_an_event(
        records: Records, fresh_database_url: str) -> None:
    """UPDATE, DELETE and TRUNCATE are refused by the database itself, by trigger — whatever
    statement carries them (an upsert, MERGE, a writable CTE, DELETE ... USING) — and by
    privilege: no role, the table's owner included, holds UPDATE, DELETE or TRUNCATE."""
    await _case(CaseApi(records.client, records.token))
    conn = await asyncpg.connect(fresh_database_url)
    try:
        snapshot = "SELECT md5(string_agg(hash || data::text, ',' ORDER BY global_position))" \
                   " FROM records.events"
        before = await conn.fetchval(snapshot)
        statements = [
            "UPDATE records.events SET data = '{}'::jsonb",
            "DELETE FROM records.events",
            "TRUNCATE records.events",
            "TRUNCATE records.events CASCADE",
            "INSERT INTO records.events (stream_id, version, event_id, type, schema_version,"
            " data, metadata, agency, recorded_at, prev_hash, hash)"
            " SELECT stream_id, version, event_id, type, schema_version, '{}'::jsonb,"
            " metadata, agency, recorded_at, prev_hash, hash FROM records.events"
            " ON CONFLICT (event_id) DO UPDATE SET data = EXCLUDED.data",
            "WITH gone AS (DELETE FROM records.events RETURNING 1) SELECT count(*) FROM gone",
            "WITH changed AS (UPDATE records.events SET type = 'X' RETURNING 1)"
            " SELECT count(*) FROM changed",
            "DELETE FROM records.events e USING records.streams s WHERE e.stream_id ="
            " s.stream_id",
        ]
        if conn.get_server_version().major >= 15:
            statements += [
                "MERGE INTO records.events e USING records.streams s ON e.stream_id ="
                " s.stream_id WHEN MATCHED THEN UPDATE SET data = '{}'::jsonb",
                "MERGE INTO records.events e USING records.streams s ON e.stream_id ="
                " s.stream_id WHEN MATCHED THEN DELETE",
            ]
        for statement in statements:
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.execute(statement)
            assert refused.value.sqlstate == "42501", (statement, refused.value)
        assert await conn.fetchval(snapshot) == before
        granted = await conn.fetch(
            "SELECT grantee::regrole::text AS who, privilege_type FROM pg_class c,"
            " aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
            " WHERE c.oid = 'records.events'::regclass"
            " AND privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')")
        assert [tuple(r) for r in granted] == []
        triggers = await conn.fetch(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'records.events'::regclass"
            " AND NOT tgisinternal AND tgname IN ('events_no_update_delete',"
            " 'events_no_truncate')")
        assert sorted((r["tgname"], bytes(r["tgenabled"])) for r in triggers) == [
            ("events_no_truncate", b"O"), ("events_no_update_delete", b"O")]
    finally:
        await conn.close()


def test_the_deployed_services_run_as_least_privilege_roles() -> None:
    """The Kubernetes manifest gives each service its own role's URL, and the owner's only to
    the migration Job; the roles' grants hold no UPDATE, DELETE or TRUNCATE on events."""
    root = Path(__file__).resolve().parent.parent
    manifest = (root / "deploy" / "kubernetes" / "casetrail.yaml").read_text()
    urls = [line.split("key:")[1].strip(" }") for line in manifest.splitlines()
            if "name: DATABASE_URL" in line]
    assert sorted(urls) == ["NOTIFIER_DATABASE_URL", "OWNER_DATABASE_URL",
                            "RECORDS_DATABASE_URL"], urls
    roles = (root / "deploy" / "production-roles.sql").read_text()
    for line in roles.splitlines():
        if line.startswith("GRANT") and "records.events" in line:
            assert not any(p in line for p in ("UPDATE", "DELETE", "TRUNCATE")), line


# --- operations: metrics and logs -----------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return _samples(await response.text())


async def test_metrics_of_latency_append_rate_feed_lag_and_mail_outcomes_move(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Each metric the brief names exists under a conventional name and moves when its thing
    happens: a request, an event appended, a notice sent, one given up (dead)."""
    before = await _metrics(records.client)
    case_id = await _case(CaseApi(records.client, records.token))
    after = await _metrics(records.client)
    note = ("casetrail_events_appended_total", (("type", "NoteAdded"),))
    assert after[note] - before.get(note, 0) == 1
    writes = [k for k in after if k[0] == "casetrail_http_request_seconds_count"
              and ("method", "POST") in k[1]]
    assert sum(after[k] - before.get(k, 0) for k in writes) == 5
    assert not any(case_id in str(k) for k in after)
    await rig.set_prefs("cm-1", records.token)
    goal = await records.goal(case_id, "Ride to work")
    step = await records.step(case_id, goal)
    smtp.replies = ["250 OK", "550 mailbox unavailable"]
    await records.complete(case_id, step)
    await rig.catch_up()
    notifier_before = await _metrics(rig.client)
    step_two = await records.step(case_id, goal, "Fix the brakes")
    await records.complete(case_id, step_two)
    await rig.catch_up()
    for _ in range(5):
        await rig.dispatch()
    notifier = await _metrics(rig.client)
    sent = sum(v for (n, _), v in notifier.items() if n == "casetrail_notifications_sent_total")
    dead = sum(v for (n, _), v in notifier.items() if n == "casetrail_notifications_dead_total")
    assert sent >= 1, (sent, smtp.refused)
    assert dead >= 1, (dead, smtp.refused)
    assert ("casetrail_notifier_feed_lag_seconds", ()) in notifier
    assert any(n == "casetrail_notifications_failed_total" for n, _ in notifier)
    assert notifier_before  # scraped between, for the reader of a failure


async def test_request_log_lines_carry_request_ids_and_no_personal_data(
        fresh_database_url: str, token: TokenFactory) -> None:
    """Operations: structured logs with request ids. The records service, on a real socket,
    writes one request line per answer with that answer's id, and no line holds the
    participant's name, address, words, a note or a removal's reason — refused writes,
    warnings and a reason given in the query included."""
    runner, port = await serve(create_records_app(make_settings(fresh_database_url)))
    base = f"http://127.0.0.1:{port}"
    manager = bearer(token())
    ids: list[str] = []
    access = logging.getLogger("aiohttp.access")  # as the services configure it (info)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        with structlog.testing.capture_logs() as logs:
            async with ClientSession() as session:
                async def call(method: str, path: str, body: Any = None) -> Any:
                    async with session.request(method, base + path, json=body,
                                               headers=manager) as response:
                        ids.append(response.headers["X-Request-Id"])
                        return response.status, await response.json()
                status, created = await call("POST", "/v1/cases", {
                    "participant": {"name": NAME, "email": EMAIL}, "case_manager": "cm-1",
                    "risk_level": "low"})
                assert status == 201
                case = f"/v1/cases/{created['case_id']}"
                status, strength = await call("POST", f"{case}/strengths",
                                              {"category": "skill", "description": STRENGTH})
                assert status == 201
                assert (await call("POST", f"{case}/notes",
                                   {"text": NOTE + " he is an addict"}))[0] == 201
                assert (await call("POST", f"{case}/notes", {"text": NOTE, "x": EMAIL}))[0] \
                    == 422
                assert (await call("PATCH", f"{case}/participant", {"email": "not an "
                                   + EMAIL}))[0] == 422
                assert (await call("DELETE", f"{case}/strengths/{strength['id']}?reason="
                                   + quote(WORDS)))[0] == 200
                assert (await call("GET", case))[0] == 200
            await asyncio.sleep(0.05)
    finally:
        access.setLevel(level)
        await runner.cleanup()
    requests = [e for e in logs if e.get("event") == "request"]
    assert [e["request_id"] for e in requests] == ids
    leaks = [e for e in logs if _leaks(repr(e)) or "addict" in repr(e)]
    assert leaks == []
