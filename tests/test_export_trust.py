"""What a signed export vouches for must be what the record holds (an audit, two defects).

1. An auditor's export of a window holds only the window's events, and its chain takes the
   first event's ``prev_hash`` as given. A database superuser rewrote an event *before* the
   window (the goal "Find steady work" of version 2): the auditor's own verify said broken at
   version 2, yet the window's JSON Lines, CSV, FHIR and PDF exports were signed and
   VERIFIED, the PDF's chain report said intact and the FHIR Goal showed the rewritten title.
   Now a window whose chain does not hold up to and into its first event is refused (409
   ``chain-broken``, naming the break, nothing signed, the attempt logged); a break inside
   the window shows in the file, as in an export of the whole case; an untampered window verifies.
2. A FHIR export of the whole case took its plan from the plans table, a projection the
   service's role may write: a row changed there was signed and VERIFIED while the events in
   the same Bundle said otherwise. Now the plan is folded from the events.

Every test has a database, a service and a case of its own (``trail``), with time injected:
version 1 opens the case and version 2 sets the goal on day 0, versions 3 and 4 are notes on
day 1, and the clock then moves to day 2, so every window below has closed. Changes to the
database are made as its superuser, in the test's own database only (the helpers of
tests/test_audit_s20_tamper.py).
"""

# ruff: noqa: F811

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.chain import ChainLink
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.export_helpers import key_file, run_verify  # noqa: F401  (a fixture)
from tests.records_api import CaseApi
from tests.test_audit_pdf_scripts import drawn
from tests.test_audit_s20_tamper import query_of, stored_event_id, tamper, verify_endpoint

FORMATS = ("jsonl", "csv", "fhir", "pdf")
GOAL = "Find steady work"
REWRITTEN = "Stay away from old friends"
HOUR = timedelta(hours=1)
REWRITE_THE_GOAL = ("UPDATE records.events SET data = jsonb_set(data, '{title}',"
                    f" '\"{REWRITTEN}\"') WHERE stream_id = $1 AND version = 2")
REWRITE_THE_SECOND_NOTE = ("UPDATE records.events SET data = jsonb_set(data, '{text}',"
                           " '\"Jo left the course\"') WHERE stream_id = $1 AND version = 4")
REWRITE_THE_PLAN_ROW = ("UPDATE records.plans SET view = jsonb_set(view, '{goals,0,title}',"
                        f" '\"{REWRITTEN}\"') WHERE case_id = $1")


@dataclass
class Trail:
    client: TestClient[Any, Any]
    token: TokenFactory
    database_url: str
    case_id: str
    day0: datetime  # when versions 1 and 2 were recorded; versions 3 and 4 a day later
    key_file: Path

    def auditor(self, window: str) -> str:
        """``day-1``: versions 3 and 4; ``quiet-evening``: nothing recorded (the case stood
        at version 2); ``whole-record``: the factory's window from the case's start."""
        if window == "whole-record":
            return self.token(role="auditor", sub="court-1", cases=[self.case_id])
        start, end = {"day-1": (self.day0 + 12 * HOUR, self.day0 + 36 * HOUR),
                      "quiet-evening": (self.day0 + 12 * HOUR, self.day0 + 13 * HOUR)}[window]
        return self.token(role="auditor", sub="court-1", cases=[self.case_id],
                          window_from=start, window_to=end)

    def supervisor(self) -> str:
        return self.token(role="supervisor", sub="sup-1")

    async def export(self, who: str, fmt: str, status: int = 200) -> bytes:
        response = await self.client.get(f"/v1/cases/{self.case_id}/export{query_of(fmt)}",
                                         headers=bearer(who))
        assert response.status == status, await response.text()
        return await response.read()

    async def tamper(self, *statements: str, bypass: str = "replica") -> None:
        await tamper(self.database_url, *statements, case=self.case_id, bypass=bypass)

    async def fetchval(self, query: str, *args: Any) -> Any:
        db = await asyncpg.connect(self.database_url)
        try:
            return await db.fetchval(query, *args)
        finally:
            await db.close()

    async def access_log_entries(self) -> int:
        return int(await self.fetchval("SELECT count(*) FROM records.access_log"))


@pytest.fixture
async def trail(make_records_client: ClientFactory, fresh_database_url: str,
                token: TokenFactory, key_file: Path) -> Trail:
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file))
    cm = CaseApi(client, token(sub="cm-1"))
    day0 = clock.now
    case_id = await cm.open_case()
    await cm.goal(case_id, title=GOAL)
    clock.advance(days=1)
    for text in ("Met at the library", "Jo started a welding course"):
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": text}, expect=201)
    clock.advance(days=1)
    return Trail(client, token, fresh_database_url, case_id, day0, key_file)


def verified(trail: Trail, raw: bytes, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``casetrail verify --public-key`` with the agency's published key."""
    return run_verify(tmp_path, raw, "--public-key", f"{trail.key_file}.pub", capsys=capsys)


def goal_titles(raw: bytes) -> list[str]:
    return [entry["resource"]["description"]["text"] for entry in json.loads(raw)["entry"]
            if entry["resource"]["resourceType"] == "Goal"]


def recorded_events(raw: bytes) -> list[dict[str, Any]]:
    """The events a FHIR Bundle's Provenance entries carry."""
    return [json.loads(extension["valueString"]) for entry in json.loads(raw)["entry"]
            if entry["resource"]["resourceType"] == "Provenance"
            for extension in entry["resource"]["extension"]]


def pdf_text(raw: bytes) -> str:
    return " ".join(piece.text for piece in drawn(raw))


# --------------------------------------------------------------------------------------------
# 1. a window over a record changed before it
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("window", "bypass"), [("day-1", "replica"),
                                                ("quiet-evening", "disable-trigger")])
async def test_a_window_over_a_record_changed_before_it_is_refused_not_signed(
        trail: Trail, fmt: str, window: str, bypass: str) -> None:
    """The goal of version 2 is rewritten by a superuser. The auditor's own verify names
    version 2; the export of the window answers 409 ``chain-broken`` naming the same link and
    pointing to verify and the agency, and writes no file. The attempt is in the access log,
    refused for the broken chain: a court finding the record tampered with is what a
    supervisor reviewing the log must see (it was not logged at all)."""
    await trail.tamper(REWRITE_THE_GOAL, bypass=bypass)
    court = trail.auditor(window)
    found = await verify_endpoint(trail.client, court, trail.case_id)
    assert (found["valid"], found["first_broken_link"]["version"]) == (False, 2), found
    broken_event = await stored_event_id(trail.database_url, trail.case_id, 2)
    logged = await trail.access_log_entries()
    response = await trail.client.get(f"/v1/cases/{trail.case_id}/export{query_of(fmt)}",
                                      headers=bearer(court))
    assert response.status == 409, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["type"].endswith("/chain-broken"), problem
    detail = problem["detail"]
    assert f"broken at version 2, event {broken_event}" in detail, detail
    assert found["first_broken_link"]["problem"] in detail, detail
    assert f"GET /v1/cases/{trail.case_id}/verify" in detail, detail
    assert "ask the agency" in detail, detail
    assert REWRITTEN not in detail  # nothing of the record's content
    assert GOAL not in detail
    assert await trail.access_log_entries() == logged + 1
    refused = await trail.fetchval("SELECT refused FROM records.access_log"
                                   " ORDER BY id DESC LIMIT 1")
    assert refused == "chain broken at version 2"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_window_over_an_untouched_record_is_signed_and_verifies(
        trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """The check before a window costs the auditor nothing on a sound record: versions 3 and
    4, VERIFIED with the agency's key; the FHIR plan is the one the events make, and the PDF
    says the chain before the window was checked."""
    raw = await trail.export(trail.auditor("day-1"), fmt)
    code, out = verified(trail, raw, tmp_path, capsys)
    assert (code, out.splitlines()[-1]) == (0, "VERIFIED"), out
    assert "events:    2 (versions 3 to 4)" in out, out
    if fmt == "fhir":
        assert goal_titles(raw) == [GOAL]
    if fmt == "pdf":
        text = pdf_text(raw)
        assert "Hash chain: intact" in text, text
        assert "from the case's first event (versions 1 to 2, not shown here), was checked" \
            in text, text


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_quiet_window_over_an_untouched_record_still_verifies(
        trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A window in which nothing was recorded holds no events, yet its FHIR Bundle holds the
    plan as it stood (version 2): checked before it is signed, then VERIFIED."""
    raw = await trail.export(trail.auditor("quiet-evening"), fmt)
    code, out = verified(trail, raw, tmp_path, capsys)
    assert (code, out.splitlines()[-1]) == (0, "VERIFIED"), out
    if fmt == "fhir":
        assert goal_titles(raw) == [GOAL]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_window_whose_first_event_was_chained_onto_another_anchor_is_refused(
        trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """The subtle case: the superuser leaves version 2 alone but re-chains the window (its
    first event names another prev_hash, and every hash after it is recomputed, the case's
    head too). Each event of the window then holds, and the file's chain, anchored on that
    prev_hash, would hold as well: only the link into the window is broken, which only the
    service can see. Refused, naming version 3; the whole case's export shows it."""
    db = await asyncpg.connect(trail.database_url)
    try:
        rows = await db.fetch(
            "SELECT stream_id, version, event_id, type, schema_version, data::text AS data,"
            " metadata::text AS metadata, recorded_at FROM records.events"
            " WHERE stream_id = $1 AND version >= 3 ORDER BY version", uuid.UUID(trail.case_id))
    finally:
        await db.close()
    prev, statements = "ab" * 32, []
    for row in rows:
        link = ChainLink(str(row["stream_id"]), row["version"], str(row["event_id"]),
                         row["type"], row["schema_version"], json.loads(row["data"]),
                         json.loads(row["metadata"]), row["recorded_at"], prev)
        prev = link.compute_hash()
        statements.append(f"UPDATE records.events SET prev_hash = '{link.prev_hash}',"
                          f" hash = '{prev}' WHERE stream_id = $1 AND version = {link.version}")
    statements.append(f"UPDATE records.streams SET last_hash = '{prev}' WHERE stream_id = $1")
    await trail.tamper(*statements)
    whole = await verify_endpoint(trail.client, trail.supervisor(), trail.case_id)
    assert (whole["valid"], whole["first_broken_link"]["version"]) == (False, 3), whole
    response = await trail.client.get(f"/v1/cases/{trail.case_id}/export{query_of(fmt)}",
                                      headers=bearer(trail.auditor("day-1")))
    assert response.status == 409, await response.text()
    problem = await response.json()
    assert problem["type"].endswith("/chain-broken"), problem
    assert "broken at version 3" in problem["detail"], problem
    assert "would begin at version 3" in problem["detail"], problem
    code, out = verified(trail, await trail.export(trail.supervisor(), fmt), tmp_path, capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
    assert "chain:     BROKEN at version 3" in out, out


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_break_inside_the_window_is_served_and_shows_as_for_the_whole_case(
        trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A rewritten event the window holds after its first is in the file, so the file shows
    it, as an export of the whole case of a rewritten record does
    (tests/test_audit_s20_tamper.py): served, signed with the agency's key, NOT VERIFIED,
    broken at version 4. (Up to and into its first event, version 3, the chain is checked
    before the window is signed: above.) The FHIR plan is folded only from the events that
    hold: the goal as recorded."""
    await trail.tamper(REWRITE_THE_SECOND_NOTE)
    raw = await trail.export(trail.auditor("day-1"), fmt)
    code, out = verified(trail, raw, tmp_path, capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
    assert "chain:     BROKEN at version 4" in out, out
    assert "signature: valid" in out, out
    if fmt == "fhir":
        assert goal_titles(raw) == [GOAL]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_an_auditor_whose_window_opens_with_the_case_exports_as_a_supervisor_does(
        trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A window from the case's start holds the whole chain, genesis included, so the file
    shows a break anywhere in it: served and NOT VERIFIED, broken at version 2, as the
    supervisor's export is. No plan resource holds the rewritten title (the fold stops at the
    break)."""
    await trail.tamper(REWRITE_THE_GOAL)
    for who in (trail.auditor("whole-record"), trail.supervisor()):
        raw = await trail.export(who, fmt)
        code, out = verified(trail, raw, tmp_path, capsys)
        assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
        assert "chain:     BROKEN at version 2" in out, out
        if fmt == "fhir":
            assert REWRITTEN not in goal_titles(raw)


# --------------------------------------------------------------------------------------------
# 2. the plans table changed, the events not
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["supervisor", "case manager", "auditor of the whole record",
                                 "auditor of day 1"])
async def test_a_fhir_export_folds_its_plan_from_the_events_not_the_plans_table(
        trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str], who: str) -> None:
    """The plans row is rewritten, the events are not: verify says the chain holds and the
    plan read (the projection) shows the rewritten goal. The FHIR export's Goal is the title
    its own GoalSet event records, and the Bundle verifies: its plan matches its events."""
    await trail.tamper(REWRITE_THE_PLAN_ROW)
    supervisor = CaseApi(trail.client, trail.supervisor())
    assert [goal["title"] for goal in (await supervisor.plan(trail.case_id))["goals"]] \
        == [REWRITTEN]  # the row was changed: this is what the export used to sign
    assert (await verify_endpoint(trail.client, trail.supervisor(), trail.case_id))["valid"]
    token = {"supervisor": trail.supervisor(), "case manager": trail.token(sub="cm-1"),
             "auditor of the whole record": trail.auditor("whole-record"),
             "auditor of day 1": trail.auditor("day-1")}[who]
    raw = await trail.export(token, "fhir")
    assert goal_titles(raw) == [GOAL]
    recorded = [event["data"]["title"] for event in recorded_events(raw)
                if event["type"] == "GoalSet"]
    if who != "auditor of day 1":  # the window does not hold version 2
        assert recorded == goal_titles(raw)
    code, out = verified(trail, raw, tmp_path, capsys)
    assert (code, out.splitlines()[-1]) == (0, "VERIFIED"), out
