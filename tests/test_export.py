"""Signed exports of a case's history, and `casetrail verify` checking them offline."""

# ruff: noqa: F811

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import wait_ready
from bench.export import fill
from services.cli import main as casetrail
from services.common.settings import ConfigurationError
from services.records.application import queries
from services.records.chain import canonical_bytes
from services.records.export import fhir
from services.records.export.formats import PDF_TRAILER_PREFIX, signature_block
from services.records.export.signing import ExportSigner, load_signer
from services.records.export.verify import MalformedExport, verify_export
from services.records.store import events as events_module
from tests.conftest import (
    JWT_SECRET,
    ClientFactory,
    TokenFactory,
    bearer,
    free_port,
    make_settings,
)
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    NOTE,
    add_notes,
    case_id,
    client,
    export,
    key_file,
    lines,
    public_key,
    run_verify,
    verify_bytes,
)
from tests.records_api import CaseApi, event_count
from tests.test_export_format_doc import (
    RESIGN,
    Refused,
    raw_key_from_pem,
    resign_csv,
    resign_fhir,
    resign_jsonl,
)
from tests.test_export_format_doc import verify as verify_by_the_document


async def test_jsonl_export_carries_every_event_and_verifies(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    response = await client.get(f"/v1/cases/{case_id}/export", headers=bearer(supervisor))
    assert response.status == 200
    assert response.content_type == "application/x-ndjson"
    assert response.headers["Content-Disposition"] == \
        f'attachment; filename="case-{case_id}-v1-5.jsonl"'
    raw = await response.read()
    header, *events, trailer = [json.loads(line) for line in lines(raw)]
    assert header["case_id"] == case_id
    assert header["exported_by"] == {
        "sub": "sup-1", "role": "supervisor"}
    assert (header["first_version"], header["last_version"]) == (1, 5)
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5]
    assert events[3]["data"]["text"] == NOTE
    assert events[4]["metadata"]["reason"] == "recorded twice"
    history = await (await client.get(f"/v1/cases/{case_id}/history",
                                      headers=bearer(supervisor))).json()
    assert [e["hash"] for e in events] == [e["hash"] for e in history["events"]]
    digest = hashlib.sha256(b"".join(lines(raw)[:-1])).hexdigest()
    assert trailer["signature"]["digest"] == f"sha256:{digest}"
    assert trailer["head_hash"] == events[-1]["hash"]

    report = verify_bytes(raw, public_key(key_file))
    assert report.ok
    assert report.events == 5
    assert report.key_trusted is True
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == "VERIFIED"
    assert "the trusted key" in out
    code, out = run_verify(tmp_path, raw, capsys=capsys)
    assert code == 0, out  # the key is optional: integrity is still worth checking
    assert out.splitlines()[-1] == \
        "VERIFIED (intact, but its origin is unchecked: pass --public-key)"


async def test_csv_export_reads_as_a_spreadsheet_and_verifies(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    response = await client.get(f"/v1/cases/{case_id}/export?format=csv",
                                headers=bearer(token(sub="cm-1")))
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    raw = await response.read()
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[0][0] == "#casetrail-export"
    assert json.loads(rows[0][1])["case_id"] == case_id
    columns = rows[1]
    events = [dict(zip(columns, row, strict=True)) for row in rows[2:-1]]
    assert [(e["version"], e["actor"], e["role"]) for e in events] == [
        (str(v), "cm-1", "case_manager") for v in range(1, 6)]
    assert events[4]["reason"] == "recorded twice"
    assert json.loads(events[3]["data"])["text"] == NOTE
    assert rows[-1][0] == "#casetrail-signature"
    code, out = run_verify(tmp_path, raw, "--public-key", str(key_file), capsys=capsys)
    assert code == 0, out


async def test_a_csv_export_of_multi_line_and_formula_like_reasons_verifies(
        client: TestClient, token: TokenFactory, key_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A reason may span lines (the export is read line by line) or begin like a spreadsheet
    formula: the readable cell is flattened and quoted; the exact text stays in the hashed
    metadata cell."""
    cm = CaseApi(client, token(sub="cm-1"))
    case = await cm.open_case()
    goal = await cm.goal(case)
    await cm.call("POST", f"/v1/cases/{case}/goals/{goal}/status",
                  {"status": "paused", "reason": "Jo is moving house.\nBack in May."},
                  expect=200)
    strength = await cm.strength(case)
    await cm.call("DELETE", f"/v1/cases/{case}/strengths/{strength}",
                  {"reason": "=HYPERLINK(\"http://example.org\")"}, expect=200)
    raw = await export(client, token(sub="cm-1"), case, "?format=csv")
    code, out = run_verify(tmp_path, raw, "--public-key", str(key_file), capsys=capsys)
    assert code == 0, out
    rows = list(csv.reader(io.StringIO(raw.decode())))
    events = [dict(zip(rows[1], row, strict=True)) for row in rows[2:-1]]
    reasons = [e["reason"] for e in events if e["reason"]]
    assert reasons == ["Jo is moving house. ↵ Back in May.", "'=HYPERLINK(\"http://example.org\")"]
    assert json.loads(events[2]["metadata"])["reason"] == "Jo is moving house.\nBack in May."


async def test_a_reason_recorded_before_its_field_existed_is_shown_as_a_reason(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ActionStepCompleted v1 kept a reversal's reason as its note; v2 has a reason. The
    readable reason (history, CSV, FHIR) is the upcast one, so a court sees old and new
    reversals alike; the hashed cells stay as recorded."""
    from uuid import UUID, uuid4

    from services.records.projections.rebuild import rebuild_projections
    from services.records.store.events import EventStore, NewEvent

    cm = CaseApi(client, token(sub="cm-1"))
    case = await cm.open_case()
    goal = await cm.goal(case)
    step = await cm.step(case, goal)
    await cm.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                  {"status": "no_longer_needed", "reason": "Moved away"}, expect=200)
    recorded = {"step_id": step, "goal_id": goal, "description": "Visit the job centre",
                "owner": "participant", "from_status": "no_longer_needed",
                "note": "Set aside in error"}
    await EventStore(fresh_pool).append(
        UUID(case), [NewEvent(uuid4(), "ActionStepCompleted", 1, recorded)],
        expected_version=4, agency="agency-a",
        metadata={"actor": {"sub": "cm-1", "role": "case_manager"}})
    await rebuild_projections(fresh_pool)  # as an import would leave it
    history = await cm.call("GET", f"/v1/cases/{case}/history?after_version=4", expect=200)
    assert [e["reason"] for e in history["events"]] == ["Set aside in error"]
    raw = await export(client, token(sub="cm-1"), case, "?format=csv")
    rows = list(csv.reader(io.StringIO(raw.decode())))
    [last] = [dict(zip(rows[1], row, strict=True)) for row in rows[2:-1]][-1:]
    assert (last["schema_version"], last["reason"]) == ("1", "Set aside in error")
    assert json.loads(last["data"]) == recorded  # the hashed cell, as recorded
    fhir_bundle = json.loads(await export(client, token(sub="cm-1"), case, "?format=fhir"))
    reasons = [r["resource"].get("reason") for r in fhir_bundle["entry"]
               if r["resource"]["resourceType"] == "Provenance"]
    assert reasons[-1] == [{"text": "Set aside in error"}]
    code, out = run_verify(tmp_path, raw, "--public-key", str(key_file), capsys=capsys)
    assert code == 0, out


async def test_pdf_export_is_a_signed_document_that_verifies(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    response = await client.get(f"/v1/cases/{case_id}/export?format=pdf",
                                headers=bearer(token(role="supervisor", sub="sup-1")))
    assert response.status == 200
    assert response.content_type == "application/pdf"
    assert response.headers["Content-Disposition"] == \
        f'attachment; filename="case-{case_id}-v1-5.pdf"'
    raw = await response.read()
    assert raw.startswith(b"%PDF-")
    document, _, signature_line = raw.rstrip(b"\n").rpartition(b"\n")
    assert document.rstrip().endswith(b"%%EOF")
    trailer = json.loads(signature_line.removeprefix(b"%casetrail-signature "))
    assert trailer["export"]["case_id"] == case_id
    assert trailer["events"] == 5
    assert set(trailer) == {"export", "events", "chain", "signature"}  # nothing unsigned
    assert trailer["chain"]["valid"] is True
    report = verify_bytes(raw, public_key(key_file))
    assert report.ok
    assert report.chain is not None
    assert report.chain.events_checked == 5
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 0, out
    assert "as the service found it when it made this PDF" in out


async def test_a_pdf_of_a_case_whose_stored_events_were_altered_does_not_verify(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        fresh_database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Printed pages cannot be rechained by a verifier: the service checks the chain as it
    lays the events out and signs what it found, so an altered row is not laundered into a
    verified PDF (the JSON Lines export of the same case already failed)."""
    db = await asyncpg.connect(fresh_database_url)
    try:  # only a superuser bypassing the append-only trigger can do this
        async with db.transaction():
            await db.execute("SET LOCAL session_replication_role = replica")
            await db.execute("UPDATE records.events SET data = data || '{\"added\": \"later\"}'"
                             " WHERE stream_id = $1 AND version = 3", uuid.UUID(case_id))
    finally:
        await db.close()
    raw = await export(client, token(sub="cm-1"), case_id, "?format=pdf")
    report = verify_bytes(raw, public_key(key_file))
    assert not report.ok
    assert report.chain is not None
    assert report.chain.broken_at_version == 3
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 1
    assert "chain:     BROKEN at version 3" in out
    # and the signed state cannot be edited back to intact
    document, _, signature_line = raw.rstrip(b"\n").rpartition(b"\n")
    trailer = json.loads(signature_line.removeprefix(b"%casetrail-signature "))
    trailer["chain"] = {"valid": True, "events_checked": 5, "head_hash": "0" * 64,
                        "first_broken_link": None}
    relabelled = (document + b"\n%casetrail-signature " + json.dumps(trailer).encode()
                  + b"\n")
    assert verify_bytes(relabelled, public_key(key_file)).digest_matches is False


async def test_an_altered_pdf_or_its_header_fails(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path) -> None:
    raw = await export(client, token(sub="cm-1"), case_id, "?format=pdf")
    middle = len(raw) // 2
    flipped = raw[:middle] + bytes([raw[middle] ^ 1]) + raw[middle + 1:]
    assert not verify_bytes(flipped, public_key(key_file)).ok
    document, _, signature_line = raw.rstrip(b"\n").rpartition(b"\n")
    trailer = json.loads(signature_line.removeprefix(b"%casetrail-signature "))
    trailer["export"]["last_version"] = 4  # claim fewer versions than were signed
    trailer["events"] = 4
    relabelled = (document + b"\n%casetrail-signature " + json.dumps(trailer).encode()
                  + b"\n")
    report = verify_bytes(relabelled, public_key(key_file))
    assert report.digest_matches is False
    assert not report.ok
    with pytest.raises(MalformedExport, match="cut short"):
        verify_bytes(document + b"\n")


async def test_a_pdf_streams_every_page_of_a_long_history(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "READ_PAGE", 7)
    await add_notes(client, token, case_id,
                    [f"Note {n}: Zoë spoke about «the workshop» " * 3 for n in range(120)])
    raw = await export(client, token(sub="cm-1"), case_id, "?format=pdf")
    report = verify_bytes(raw, public_key(key_file))
    assert report.ok
    assert report.events == 125
    assert raw.count(b"/Type /Page\n") + raw.count(b"/Type /Page ") > 5  # many pages


@pytest.mark.parametrize(("bound", "notes", "said"), [
    ("MAX_PDF_EVENTS", 0, "5 events"),
    # Rendering memory follows the text as well as the count: 10,000 notes of 3,900
    # characters took 116 MiB while one PDF rendered.
    ("MAX_PDF_TEXT_BYTES", 4, "bytes of text")])
async def test_a_pdf_of_a_history_too_long_to_read_is_refused(
        client: TestClient, token: TokenFactory, case_id: str, bound: str, notes: int,
        said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, bound, 4 if bound == "MAX_PDF_EVENTS" else 5_000)
    await add_notes(client, token, case_id, ["Jo spoke about the workshop. " * 40] * notes)
    headers = bearer(token(sub="cm-1"))
    response = await client.get(f"/v1/cases/{case_id}/export?format=pdf", headers=headers)
    assert response.status == 422
    problem = await response.json()
    assert problem["type"].endswith("/export-too-large")
    assert said in problem["detail"]
    assert (await client.get(f"/v1/cases/{case_id}/export?format=csv",
                             headers=headers)).status == 200


def _edit_event(raw: bytes, version: int, change: Any) -> bytes:
    """The export with event ``version`` changed by ``change`` (a JSON Lines export)."""
    out = lines(raw)
    event = json.loads(out[version])
    change(event)
    out[version] = json.dumps(event, ensure_ascii=False).encode() + b"\n"
    return b"".join(out)


async def test_an_edited_event_is_named_and_the_digest_no_longer_matches(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(sub="cm-1"), case_id)
    edited = _edit_event(raw, 4, lambda e: e["data"].update(text="Jo missed the meeting"))
    report = verify_bytes(edited, public_key(key_file))
    assert not report.ok
    assert (report.chain.broken_at_version, report.chain.problem) == (
        4, "hash does not match the event's content")
    assert report.digest_matches is False
    assert report.signature_valid is False  # it is checked over the bytes as they are now
    code, out = run_verify(tmp_path, edited, capsys=capsys)
    assert code == 1
    assert "BROKEN at version 4" in out
    assert out.splitlines()[-1] == "NOT VERIFIED"


async def test_a_removed_event_breaks_the_chain_and_the_counts(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    raw = await export(client, token(sub="cm-1"), case_id)
    out = lines(raw)
    report = verify_bytes(b"".join(out[:3] + out[4:]))
    assert not report.ok
    assert report.chain.broken_at_version == 4
    assert any("holds 4 events" in problem for problem in report.problems)


async def test_a_rewritten_and_re_signed_export_fails_only_on_the_trusted_key(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone who rewrites an event, recomputes every hash and signs with their own key makes
    an export that is consistent in itself: only the agency's public key tells it apart."""
    raw = await export(client, token(sub="cm-1"), case_id)
    forged = _forge(raw, 4, load_signer(None))
    assert verify_bytes(forged).ok  # integrity alone holds
    report = verify_bytes(forged, public_key(key_file))
    assert report.chain.valid
    assert report.digest_matches
    assert report.signature_valid
    assert report.key_trusted is False
    assert not report.ok
    code, out = run_verify(tmp_path, forged, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 1
    assert "NOT the trusted key" in out


def _forge(raw: bytes, version: int, signer: ExportSigner) -> bytes:
    from datetime import datetime

    from services.records.chain import ChainLink
    out = [json.loads(line) for line in lines(raw)]
    out[version]["data"]["text"] = "rewritten"
    prev = out[1]["prev_hash"]
    for event in out[1:-1]:
        event["prev_hash"] = prev
        link = ChainLink(event["stream_id"], event["version"], event["event_id"],
                         event["type"], event["schema_version"], event["data"],
                         event["metadata"], datetime.fromisoformat(event["recorded_at"]),
                         prev)
        event["hash"] = prev = link.compute_hash()
    body = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in out[:-1])
    digest = hashlib.sha256(body).digest()
    trailer = {"events": len(out) - 2, "head_hash": prev, "signature": {
        "algorithm": "Ed25519", "digest": f"sha256:{digest.hex()}",
        "value": base64.b64encode(signer.sign(digest)).decode(),
        "public_key": base64.b64encode(signer.public_key).decode(), "key_id": signer.key_id}}
    return body + json.dumps(trailer).encode() + b"\n"


@pytest.mark.parametrize(("cut", "message"), [
    (lambda out: out[:-1], "cut short"),
    (lambda out: [], "empty"),
    (lambda out: out[:1], "one line"),
    (lambda out: [b"hello\n", *out[1:]], "neither a JSON Lines nor a CSV export header"),
    (lambda out: [out[0], b'{"version": 1.5}\n', *out[2:]], "not a whole number"),
    (lambda out: [out[0], b"[1, 2]\n", *out[2:]], "not an event object"),
    (lambda out: [out[0], b'{"version": 1}\n', *out[2:]], "has no stream_id"),
    (lambda out: [out[0], b"[" * 100_000 + b"]" * 100_000 + b"\n", *out[2:]],
     "nested too deeply"),
])
async def test_what_is_not_an_export_is_refused_by_name(
        client: TestClient, token: TokenFactory, case_id: str, cut: Any, message: str) -> None:
    raw = await export(client, token(sub="cm-1"), case_id)
    with pytest.raises(MalformedExport, match=message):
        verify_export(cut(lines(raw)))


def _with_header(raw: bytes, **changes: Any) -> bytes:
    out = lines(raw)
    return json.dumps({**json.loads(out[0]), **changes}).encode() + b"\n" + b"".join(out[1:])


def _with_first_event(raw: bytes, **changes: Any) -> bytes:
    out = lines(raw)
    event = {**json.loads(out[1]), **changes}
    return out[0] + json.dumps(event).encode() + b"\n" + b"".join(out[2:])


def _respelled_first_time(raw: bytes, spell: Callable[[datetime], str]) -> bytes:
    recorded_at = json.loads(lines(raw)[1])["recorded_at"]
    return _with_first_event(raw, recorded_at=spell(datetime.fromisoformat(recorded_at)))


DEEP = json.loads("[" * 600 + "]" * 600)  # under the JSON parser's limit, over the chain's


@pytest.mark.parametrize(("change", "message"), [
    (lambda raw: _with_header(raw, exported_by="mallory"), "exported_by is not an object"),
    (lambda raw: _with_header(raw, exported_by={"sub": 7}), "exported_by is not an object"),
    (lambda raw: _with_first_event(raw, recorded_at="0001-01-01T00:00:00+01:00"),
     "recorded_at"),
    (lambda raw: _with_first_event(raw, recorded_at="9999-12-31T23:59:59-05:00"),
     "recorded_at"),
    (lambda raw: _with_first_event(raw, data={"x": DEEP}), "nested too deeply"),
    # the same instant spelled otherwise: the hash is over the canonical spelling, and a time
    # without a zone would be read in the local time of whoever checks
    (lambda raw: _respelled_first_time(raw, lambda t: t.astimezone(timezone(timedelta(hours=1)))
                                       .isoformat()), "canonical"),
    (lambda raw: _respelled_first_time(raw, lambda t: t.replace(tzinfo=None).isoformat()),
     "canonical"),
])
async def test_crafted_files_are_refused_by_name_not_with_a_traceback(
        client: TestClient, token: TokenFactory, case_id: str, change: Any, message: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(sub="cm-1"), case_id)
    with pytest.raises(MalformedExport, match=message):
        verify_export(lines(change(raw)))
    code, out = run_verify(tmp_path, change(raw), capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED")


@pytest.mark.parametrize(("chain", "message"), [
    (DEEP, "not a chain report"),
    ({"valid": True, "events_checked": 5, "head_hash": "h", "first_broken_link": DEEP},
     "not a chain report"),
    ({"valid": False, "events_checked": 2, "head_hash": "h", "first_broken_link": None},
     "not a chain report"),
    ({"valid": 1, "events_checked": 5, "head_hash": "h", "first_broken_link": None},
     "not a chain report")])
async def test_a_pdf_whose_chain_state_is_crafted_is_refused_by_name(
        client: TestClient, token: TokenFactory, case_id: str, chain: Any, message: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(sub="cm-1"), case_id, "?format=pdf")
    document, _, signature_line = raw.rstrip(b"\n").rpartition(b"\n")
    trailer = json.loads(signature_line.removeprefix(b"%casetrail-signature "))
    crafted = (document + b"\n%casetrail-signature "
               + json.dumps({**trailer, "chain": chain}).encode() + b"\n")
    with pytest.raises(MalformedExport, match=message):
        verify_bytes(crafted)
    code, out = run_verify(tmp_path, crafted, capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED")


async def test_what_a_file_says_cannot_pass_for_the_verdict_on_screen(
        client: TestClient, token: TokenFactory, case_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Text from the file is shown with its control characters escaped: a role holding line
    breaks, a fake all-clear and the terminal code that hides what follows prints as one
    line of visible characters."""
    raw = await export(client, token(sub="cm-1"), case_id)
    fake = "x)\nchain:     intact\nVERIFIED\n\x1b[8m"
    forged = _with_header(raw, exported_by={"sub": "cm-1", "role": fake})
    code, out = run_verify(tmp_path, forged, capsys=capsys)
    assert code == 1
    assert "\x1b" not in out
    assert "VERIFIED" not in out.splitlines()[:-1]
    assert out.splitlines()[-1] == "NOT VERIFIED"
    assert "\\nVERIFIED\\n\\x1b[8m" in out


def test_verify_needs_no_service_settings(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A court's machine runs no Casetrail service: a stray setting must not stop a check."""
    monkeypatch.setenv("RECORDS_PORT", "not-a-port")
    code, out = run_verify(tmp_path, b"", capsys=capsys)
    assert code == 1
    assert "empty" in out


async def test_the_cli_answers_bad_files_and_keys_without_a_traceback(
        client: TestClient, token: TokenFactory, case_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(sub="cm-1"), case_id)
    assert casetrail(["verify", str(tmp_path / "missing.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    code, out = run_verify(tmp_path, raw, "--public-key", str(not_a_key), capsys=capsys)
    assert code == 2
    assert "not an Ed25519 public key" in out
    code, out = run_verify(tmp_path, raw[:-40], capsys=capsys)
    assert code == 1
    assert "NOT VERIFIED" in out


async def test_exports_stream_in_pages_and_stop_at_the_version_they_started_at(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "READ_PAGE", 2)
    await add_notes(client, token, case_id, [f"note {n}" for n in range(6)])
    raw = await export(client, token(sub="cm-1"), case_id)
    report = verify_bytes(raw, public_key(key_file))
    assert report.ok
    assert report.events == 11


async def test_export_reads_by_supervisors_are_in_the_access_log(
        client: TestClient, token: TokenFactory, case_id: str,
        fresh_database_url: str) -> None:
    await export(client, token(role="supervisor", sub="sup-1"), case_id, "?format=csv")
    db = await asyncpg.connect(fresh_database_url)
    try:
        rows = await db.fetch("SELECT actor_sub, action FROM records.access_log")
    finally:
        await db.close()
    assert [(r["actor_sub"], r["action"]) for r in rows] == [("sup-1", "export")]


@pytest.mark.parametrize(("query", "status"), [
    ("?format=hl7", 422), ("?format=", 422), ("?format=JSONL", 422), ("?fromat=csv", 422),
    ("?format=csv&format=jsonl", 400),
])
async def test_bad_export_queries_are_4xx_problems(
        client: TestClient, token: TokenFactory, case_id: str, query: str, status: int,
        fresh_database_url: str) -> None:
    db = await asyncpg.connect(fresh_database_url)
    try:
        before = await db.fetchval("SELECT (SELECT count(*) FROM records.events)"
                                   " + (SELECT count(*) FROM records.access_log)")
        response = await client.get(f"/v1/cases/{case_id}/export{query}",
                                    headers=bearer(token(role="supervisor", sub="sup-1")))
        assert response.status == status
        assert response.content_type == "application/problem+json"
        assert await db.fetchval("SELECT (SELECT count(*) FROM records.events)"
                                 " + (SELECT count(*) FROM records.access_log)") == before
    finally:
        await db.close()


async def test_unknown_and_malformed_case_ids(client: TestClient, token: TokenFactory) -> None:
    headers = bearer(token(sub="cm-1"))
    unknown = await client.get("/v1/cases/6d1f7c52-1111-4b7e-9a0e-3c9a4f1e2d10/export",
                               headers=headers)
    assert unknown.status == 404
    malformed = await client.get("/v1/cases/not-a-uuid/export", headers=headers)
    assert malformed.status in (400, 404)
    assert malformed.content_type == "application/problem+json"


async def test_an_export_writes_no_event(client: TestClient, token: TokenFactory,
                                         case_id: str, fresh_database_url: str) -> None:
    db = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    try:
        before = await event_count(db)
        await export(client, token(sub="cm-1"), case_id)
        assert await event_count(db) == before
    finally:
        await db.close()


async def test_without_a_key_file_each_process_signs_with_its_own_key(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    cm = CaseApi(client, token(sub="cm-1"))
    case_id = await cm.open_case()
    report = verify_bytes(await export(client, token(sub="cm-1"), case_id))
    assert report.ok
    assert report.key_trusted is None


def test_a_key_file_that_is_not_an_ed25519_key_stops_the_start(tmp_path: Path) -> None:
    from services.records.http.app import create_app

    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ConfigurationError, match=str(path)):
            create_app(make_settings("postgresql://unused/db",
                                     CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(path)))


async def test_a_client_that_leaves_mid_export_is_not_a_server_error(
        fresh_database_url: str, token: TokenFactory, tmp_path: Path) -> None:
    """A real server (run_app does not cancel handlers) notices at its next write."""
    [case_id] = await fill(fresh_database_url, [20_000])  # agency "bench"
    port = free_port()
    log = tmp_path / "records.log"
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "info"}
    with log.open("w") as output:
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "records", "--port", str(port), env=env,
            stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(
                headers=bearer(token(role="supervisor", sub="sup-1", agency="bench"))) as session:
            await wait_ready(url)
            response = await session.get(f"{url}/v1/cases/{case_id}/export")
            await response.content.read(1000)
            response.close()
            metrics = ""
            for _ in range(100):
                await asyncio.sleep(0.1)
                async with session.get(f"{url}/metrics") as answer:
                    metrics = await answer.text()
                if "/export" in metrics:
                    break
            async with session.get(f"{url}/v1/cases/{case_id}/verify") as answer:
                assert answer.status == 200
    finally:
        service.terminate()
        await service.wait()
    answers = [line for line in metrics.splitlines()
               if line.startswith("casetrail_http_request_seconds_count") and "/export" in line]
    assert answers
    assert all('status="200"' in line for line in answers), answers
    assert "export_abandoned" in log.read_text()



def test_without_a_system_font_the_pdf_falls_back_to_the_bundled_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from services.records.chain import GENESIS_HASH, ChainLink
    from services.records.export import pdf
    from services.records.export.formats import ExportHeader

    monkeypatch.setattr(pdf, "_FONT_FILES", [])
    header = ExportHeader("case-1", "agency-a", 1, 1, datetime(2026, 3, 2, tzinfo=UTC),
                          {"sub": "sup-1", "role": "supervisor"})
    renderer = pdf.PdfRenderer(header)
    link = ChainLink("case-1", 1, "e-1", "NoteAdded", 1, {"text": "Zoë, 名前, Ωmega"}, {},
                     datetime(2026, 3, 2, tzinfo=UTC), GENESIS_HASH)
    renderer.add([replace(link, hash=link.compute_hash())])
    raw = b"".join(pdf.signed_pdf(renderer, header, load_signer(None)))
    renderer.close()
    assert b"Vera" in raw
    assert verify_bytes(raw).ok


async def test_a_csv_version_cell_that_is_a_digit_but_no_number_is_refused_by_name(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    raw = await export(client, token(sub="cm-1"), case_id, "?format=csv")
    rows = lines(raw)
    rows[2] = b"\xc2\xb2" + rows[2][1:]  # version 1 written as a superscript two
    with pytest.raises(MalformedExport, match="line 3: version is not a whole number"):
        verify_export(rows)


def test_pdf_lines_never_run_off_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A web address or text in a script written without spaces is one long "word": it is
    broken where the line ends, not printed past the page's edge."""
    from datetime import UTC, datetime

    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase.pdfmetrics import stringWidth

    from services.records.chain import GENESIS_HASH, ChainLink
    from services.records.export import pdf
    from services.records.export.formats import ExportHeader

    header = ExportHeader("case-1", "agency-a", 1, 1, datetime(2026, 3, 2, tzinfo=UTC),
                          {"sub": "sup-1", "role": "supervisor"})
    renderer = pdf.PdfRenderer(header)
    drawn: list[tuple[float, str, float]] = []
    canvas = renderer._canvas
    draw = canvas.drawString

    def recording(x: float, y: float, text: str) -> None:
        drawn.append((x, text, canvas._fontsize))
        draw(x, y, text)

    monkeypatch.setattr(canvas, "drawString", recording)
    url = "https://example.org/" + "housing-support/" * 20 + "END-OF-URL"
    link = ChainLink("case-1", 1, "e-1", "NoteAdded", 1,
                     {"text": f"Jo found {url}", "words": "我们一起找到了住房" * 30}, {},
                     datetime(2026, 3, 2, tzinfo=UTC), GENESIS_HASH)
    renderer.add([replace(link, hash=link.compute_hash())])
    raw = b"".join(pdf.signed_pdf(renderer, header, load_signer(None)))
    renderer.close()
    font = renderer._font
    assert all(x + stringWidth(text, font, size) <= A4[0] - 50 + 0.01
               for x, text, size in drawn), max(
        (x + stringWidth(t, font, s), t) for x, t, s in drawn)
    assert "".join(t for _, t, _ in drawn).count("END-OF-URL") == 1
    assert verify_bytes(raw).ok


# --------------------------------------------------------------------------------------------
# Files signed again with the agency's key: `casetrail verify` refuses what the document
# (docs/export-format.md) says a verifier refuses, as the document's own verifier does
# --------------------------------------------------------------------------------------------

QUERIES = {"jsonl": "", "csv": "?format=csv", "pdf": "?format=pdf", "fhir": "?format=fhir"}
KEY_ID_OF_NO_KEY = "0123456789abcdef"
RECORDED_EVENT = re.compile(
    re.escape(f'{{"url":"{fhir.EVENT_EXTENSION}","valueString":"').encode()
    + rb'(?:[^"\\]|\\.)*"}')


def _line(raw: bytes, index: int, change: Callable[[bytes], bytes]) -> bytes:
    out = lines(raw)
    out[index] = change(out[index])
    return b"".join(out)


def _last_line(raw: bytes, change: Callable[[bytes], bytes]) -> bytes:
    return _line(raw, -1, change)


def _first_provenance(raw: bytes, change: Callable[[bytes], bytes]) -> bytes:
    index = next(n for n, line in enumerate(lines(raw)) if b'"resourceType":"Provenance"' in line)
    return _line(raw, index, change)


def _published(key_file: Path) -> bytes:
    """The agency's public key as a court gets it: the PEM beside the private key."""
    return raw_key_from_pem(Path(f"{key_file}.pub").read_bytes())


def _emptied_naming_a_head(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    """The export as an empty window would be, its trailer naming a head_hash all the same."""
    out = lines(raw)
    header = json.loads(out[0])
    header["first_version"] = header["last_version"] + 1
    trailer = {"events": 0, "head_hash": json.loads(out[-2])["hash"], "signature": {}}
    return resign_jsonl(json.dumps(header).encode() + b"\n" + json.dumps(trailer).encode()
                        + b"\n", key)


class _MisnamingSigner(ExportSigner):
    @property
    def key_id(self) -> str:
        return KEY_ID_OF_NO_KEY


def _resign_fhir_naming_another_key(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    out = lines(raw)
    signature = json.loads(b"{" + out[-1].removeprefix(b"],"))["signature"]
    digest = hashlib.sha256(b"".join(out[:-1])).digest()
    signature["data"] = base64.b64encode(
        fhir.jws(_MisnamingSigner(key), digest).encode()).decode()
    return b"".join(out[:-1]) + fhir.TRAILER_START + json.dumps(signature).encode() + b"}\n"


Tamper = Callable[[bytes, Ed25519PrivateKey], bytes]
# (the format, the change, what `casetrail verify` says)
RESIGNED_BUT_REFUSED: list[tuple[str, Tamper, str]] = [
    ("jsonl", lambda raw, key: resign_jsonl(_line(
        raw, 4, lambda line: b'{"type":"CaseClosed",' + line[1:]), key),
     "line 5: not valid JSON (an object repeats the key 'type')"),
    ("jsonl", lambda raw, key: resign_jsonl(_line(
        raw, 0, lambda line: b'{"last_version":2,' + line[1:]), key),
     "line 1: not valid JSON (an object repeats the key 'last_version')"),
    ("jsonl", lambda raw, key: resign_jsonl(_line(
        raw, 4, lambda line: line[:-2] + b',"note":"added later"}\n'), key),
     "line 5: the event holds fields besides its ten: note"),
    ("jsonl", lambda raw, key: _last_line(resign_jsonl(raw, key), lambda line: line.replace(
        b'"algorithm":"Ed25519"', b'"algorithm":"Ed448"')),
     "the signature's algorithm is 'Ed448', not Ed25519"),
    ("jsonl", lambda raw, key: _last_line(resign_jsonl(raw, key), lambda line: re.sub(
        rb'"key_id":"[0-9a-f]+"', f'"key_id":"{KEY_ID_OF_NO_KEY}"'.encode(), line)),
     f"problem:   the signature names key {KEY_ID_OF_NO_KEY}, but its public key is"),
    ("jsonl", _emptied_naming_a_head,
     "problem:   the signature line names a head_hash; the export holds no events"),
    ("jsonl", lambda raw, key: resign_jsonl(raw, key)[:-1],
     "line 7: the file does not end with a line break (the export is cut short)"),
    ("csv", lambda raw, key: resign_csv(_line(
        raw, 3, lambda row: row.replace(b",cm-1,case_manager,", b",cm-7,case_manager,")), key),
     "line 4: the actor cell is not the metadata's"),
    ("csv", lambda raw, key: resign_csv(_line(
        raw, 6, lambda row: row.replace(b",recorded twice,", b",recorded once,")), key),
     "line 7: the reason cell is not the metadata's"),
    ("csv", lambda raw, key: resign_csv(b"".join(
        line[:-1] + b",note\n" if 1 <= n < len(lines(raw)) - 1 else line
        for n, line in enumerate(lines(raw))), key),
     "line 2: the column names are not version,recorded_at,type,"),
    ("pdf", lambda raw, key: _last_line(raw, lambda line: line.replace(
        b'"first_broken_link":null}', b'"first_broken_link":null,"note":"checked by hand"}')),
     "the signature line's chain is not a chain report"),
    ("pdf", lambda raw, key: _last_line(raw, lambda line: line.replace(
        b' {"export":{', b' {"export":{"last_version":99,')),
     "not valid JSON (an object repeats the key 'last_version')"),
    ("fhir", lambda raw, key: resign_fhir(_first_provenance(
        raw, lambda line: RECORDED_EVENT.sub(lambda found: found[0] + b"," + found[0], line)),
        key), f"the extension {fhir.EVENT_EXTENSION} appears more than once"),
    ("fhir", lambda raw, key: resign_fhir(_first_provenance(
        raw, lambda line: line.replace(b'\\"stream_id\\"', b'\\"note\\":1,\\"stream_id\\"',
                                       1)), key),
     "the event holds fields besides its ten: note"),
    ("fhir", lambda raw, key: resign_fhir(_line(raw, 2, lambda line: line[1:]), key),
     "line 3: every entry but the first starts with a comma"),
    ("fhir", lambda raw, key: _last_line(resign_fhir(raw, key), lambda line: line.replace(
        b"}\n", b',"type":"document"}\n')),
     "the Bundle repeats the key 'type'"),
    ("fhir", lambda raw, key: _last_line(resign_fhir(raw, key), lambda line: line.replace(
        b'"sigFormat":"application/jose"', b'"sigFormat":"application/pkcs7-signature"')),
     "the signature is not a JWS"),
    ("fhir", _resign_fhir_naming_another_key,
     f"problem:   the signature names key {KEY_ID_OF_NO_KEY}, but its public key is"),
]


@pytest.mark.parametrize(("fmt", "tamper", "message"), RESIGNED_BUT_REFUSED,
                         ids=[f"{fmt}-{n}" for n, (fmt, _, _) in enumerate(RESIGNED_BUT_REFUSED)])
async def test_a_file_signed_again_is_refused_where_the_document_refuses_it(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path, fmt: str,
        tamper: Tamper, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`casetrail verify` read a repeated key's last value and passed fields the document
    says no export holds, a chain report with fields of its own, an algorithm or key_id
    that is not the key's: a key holder could make a file the document's verifier refuses
    and `casetrail verify` called VERIFIED. Both refuse it now."""
    raw = await export(client, token(sub="cm-1"), case_id, QUERIES[fmt])
    agency_key = load_signer(key_file).private_key
    tampered = tamper(raw, agency_key)
    assert tampered != raw
    with pytest.raises(Refused):
        verify_by_the_document(tampered, _published(key_file))
    code, out = run_verify(tmp_path, tampered, "--public-key", f"{key_file}.pub",
                           capsys=capsys)
    assert message in out
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED")


CLERKS_NOTE = b'"note":"checked against the paper file by the court clerk"'
SIGNED_BY = b'"signed_by":"the agency director"'
COURT_EXTENSION = b'{"url":"https://court.example/checked","valueString":"by the clerk"}'
UNSIGNED = "which nothing signs"
# (the format, what in the signature line, replaced by what, what `casetrail verify` says)
UNSIGNED_ADDITIONS: list[tuple[str, bytes, bytes, str]] = [
    ("jsonl", b"}}\n", b"}," + CLERKS_NOTE + b"}\n",
     f"line 7: the signature line holds fields besides events, head_hash, signature, {UNSIGNED}:"
     " note"),
    ("jsonl", b"}}\n", b"," + SIGNED_BY + b"}}\n",
     "the signature block holds fields besides algorithm, digest, value, public_key, key_id,"
     f" {UNSIGNED}: signed_by"),
    ("csv", b'}}"\n', b"}," + CLERKS_NOTE.replace(b'"', b'""') + b'}"\n',
     f"line 8: the signature line holds fields besides events, head_hash, signature, {UNSIGNED}:"
     " note"),
    ("csv", b'}}"\n', b"," + SIGNED_BY.replace(b'"', b'""') + b'}}"\n',
     f"the signature block holds fields besides algorithm, digest, value, public_key, key_id,"
     f" {UNSIGNED}: signed_by"),
    ("pdf", b"}}\n", b"}," + CLERKS_NOTE + b"}\n",
     f"the signature line holds fields besides export, events, chain, signature, {UNSIGNED}:"
     " note"),
    ("pdf", b"}}\n", b"," + SIGNED_BY + b"}}\n",
     "the signature block holds fields besides algorithm, digest, value, public_key, key_id,"
     f" {UNSIGNED}: signed_by"),
    ("fhir", b"}}\n", b"}," + CLERKS_NOTE + b"}\n",
     f"the Bundle after its entries holds fields besides signature, {UNSIGNED}: note"),
    ("fhir", b"]}}\n", b"]," + SIGNED_BY + b"}}\n",
     "Bundle.signature is not as the service writes it, and nothing signs it: signed_by"),
    ("fhir", b"]}}\n", b"," + COURT_EXTENSION + b"]}}\n",
     "Bundle.signature is not as the service writes it, and nothing signs it: extension"),
    ("fhir", b'"display":"Casetrail records service"', b'"display":"the court clerk"',
     "Bundle.signature is not as the service writes it, and nothing signs it: who"),
]


@pytest.mark.parametrize(("fmt", "found", "changed", "message"), UNSIGNED_ADDITIONS,
                         ids=[f"{fmt}-{n}" for n, (fmt, *_) in enumerate(UNSIGNED_ADDITIONS)])
async def test_an_export_with_unsigned_words_added_to_its_trailer_is_not_verified(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path, fmt: str,
        found: bytes, changed: bytes, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The signature line is outside the digest (a PDF's header and chain report aside), and
    `casetrail verify` read only the fields it checks from it: words added there, with no
    key at all (here, that the court clerk checked the file), were VERIFIED. A verifier
    refuses a file the service could not have written (docs/export-format.md, section 13);
    both refuse it now."""
    raw = await export(client, token(sub="cm-1"), case_id, QUERIES[fmt])
    tampered = _last_line(raw, lambda line: line.replace(found, changed))
    assert tampered != raw
    with pytest.raises(Refused):
        verify_by_the_document(tampered, _published(key_file))
    code, out = run_verify(tmp_path, tampered, "--public-key", f"{key_file}.pub",
                           capsys=capsys)
    assert message in out
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED")


def _as_the_first_release_wrote_it(raw: bytes, signer: ExportSigner) -> bytes:
    """A PDF as the release of 2026-11-23 signed it: no chain report, a head_hash beside
    the count, and D over the document and the canonical header alone."""
    document, last = b"".join(lines(raw)[:-1]), lines(raw)[-1]
    line = json.loads(last.removeprefix(PDF_TRAILER_PREFIX))
    head = line.pop("chain")["head_hash"]
    digest = hashlib.sha256(document + canonical_bytes(line["export"])).digest()
    early = {"export": line["export"], "events": line["events"], "head_hash": head,
             "signature": signature_block(signer, digest)}
    return document + PDF_TRAILER_PREFIX + json.dumps(early).encode() + b"\n"


async def test_a_pdf_of_the_first_release_still_verifies_and_takes_no_words_added(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """That release's signature line held a head_hash, which nothing checked; refusing
    fields besides those a signature line holds must not refuse its genuine PDFs."""
    raw = await export(client, token(sub="cm-1"), case_id, QUERIES["pdf"])
    early = _as_the_first_release_wrote_it(raw, load_signer(key_file))
    code, out = run_verify(tmp_path, early, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert (code, out.splitlines()[-1]) == (0, "VERIFIED"), out
    assert "chain:     not checked: this PDF was made before" in out
    added = early.replace(b"}}\n", b"}," + CLERKS_NOTE + b"}\n")
    code, out = run_verify(tmp_path, added, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert "the signature line holds fields besides export, events, head_hash, signature" in out
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED")


@pytest.mark.parametrize("fmt", QUERIES)
async def test_a_genuine_export_signed_again_unchanged_still_verifies(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path, fmt: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The signing again in the test above changes nothing by itself."""
    raw = await export(client, token(sub="cm-1"), case_id, QUERIES[fmt])
    for exported in (raw, RESIGN[fmt](raw, load_signer(key_file).private_key)):
        verify_by_the_document(exported, _published(key_file))
        code, out = run_verify(tmp_path, exported, "--public-key", f"{key_file}.pub",
                               capsys=capsys)
        assert (code, out.splitlines()[-1]) == (0, "VERIFIED"), out
