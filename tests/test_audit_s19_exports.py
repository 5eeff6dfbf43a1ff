"""Audit (s19) of signed exports as a court clerk or another agency receiving one uses them:
`casetrail verify` on tampered and crafted files, exports taken while writes land, and the
PDF of participants' own words in any script."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from services.records.export.verify import MalformedExport, verify_export
from services.records.store import events as events_module
from tests.conftest import TokenFactory, bearer
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    case_id,
    client,
    export,
    key_file,
    lines,
    public_key,
    run_verify,
    verify_bytes,
)
from tests.records_api import PARTICIPANT, CaseApi

# --------------------------------------------------------------------------------------------
# the PDF of participants' own words
# --------------------------------------------------------------------------------------------

# Characters that Unicode 15 (2022) added and the Unicode 14 database of Python 3.11 does not
# know: a pink heart and a shaking face are on every phone keyboard since 2023.
PINK_HEART, SHAKING_FACE = "\U0001fa77", "\U0001fae8"


@pytest.mark.parametrize("note", [
    f"נועה אמרה: אני אוהבת את העבודה החדשה {PINK_HEART}",
    f"قالت: لا أعرف ماذا أفعل {SHAKING_FACE}",
], ids=["hebrew-pink-heart", "arabic-shaking-face"])
async def test_a_pdf_of_a_right_to_left_note_with_a_new_emoji_is_not_a_server_error(
        client: TestClient, token: TokenFactory, case_id: str,  # noqa: F811
        note: str) -> None:
    """A participant's note in Hebrew or Arabic with an emoji from 2022 makes the PDF export
    fail: python-bidi asserts on a character whose bidi class the Unicode database does not
    know (an unassigned one there), and the document is never made."""
    cm = CaseApi(client, token(sub="cm-1"))
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": note}, expect=201)
    response = await client.get(f"/v1/cases/{case_id}/export?format=pdf",
                                headers=bearer(token(sub="cm-1")))
    assert response.status == 200
    try:
        raw = await asyncio.wait_for(response.read(), 15)
    except (TimeoutError, aiohttp.ClientPayloadError) as error:  # a 200 that never ends
        raise AssertionError(f"the PDF never arrived: {error!r}") from error
    report = verify_bytes(raw)
    assert report.ok, report.problems


# --------------------------------------------------------------------------------------------
# `casetrail verify` never answers with a traceback
# --------------------------------------------------------------------------------------------


def _jsonl_event_text(raw: bytes) -> bytes:
    """The JSON Lines export with the note's text (line 5) holding a lone surrogate, which
    JSON can spell (\\ud800) and UTF-8 cannot encode."""
    out = lines(raw)
    event = json.loads(out[4])
    event["data"]["text"] = "\ud800"
    out[4] = json.dumps(event).encode() + b"\n"
    return b"".join(out)


def _fhir_header(raw: bytes) -> bytes:
    """The FHIR export whose header (the text of an extension's valueString) holds a lone
    surrogate."""
    out = lines(raw)
    out[0] = out[0].replace(b'\\"agency\\":', b'\\"note\\":\\"\\ud800\\",\\"agency\\":', 1)
    return b"".join(out)


def _pdf_header(raw: bytes) -> bytes:
    """The PDF with its signature line's header naming an agency with a lone surrogate."""
    document, _, signature_line = raw.rstrip(b"\n").rpartition(b"\n")
    trailer = json.loads(signature_line.removeprefix(b"%casetrail-signature "))
    trailer["export"]["agency"] = "\ud800"
    return (document + b"\n%casetrail-signature " + json.dumps(trailer).encode() + b"\n")


def _csv_long_version(raw: bytes) -> bytes:
    """The CSV export with its first event's version written with 5,000 digits (Python
    refuses to read an integer of more than 4,300 digits from text)."""
    out = lines(raw)
    out[2] = b"1" * 5000 + out[2][1:]
    return b"".join(out)


@pytest.mark.parametrize(("query", "craft", "where"), [
    ("", _jsonl_event_text, "line 5"),
    ("?format=fhir", _fhir_header, "line 1"),
    ("?format=pdf", _pdf_header, r"line \d+: not valid JSON"),
    ("?format=csv", _csv_long_version, "line 3"),
], ids=["jsonl-lone-surrogate", "fhir-header-lone-surrogate", "pdf-header-lone-surrogate",
        "csv-version-of-5000-digits"])
async def test_a_crafted_export_is_refused_by_name_not_with_a_traceback(
        client: TestClient, token: TokenFactory, case_id: str,  # noqa: F811
        tmp_path: Path, capsys: pytest.CaptureFixture[str], query: str, craft: Any,
        where: str) -> None:
    """Whoever edits an export can write what JSON allows; the verifier must say NOT VERIFIED
    and where, not crash (`casetrail verify` only catches MalformedExport and OSError)."""
    crafted = craft(await export(client, token(sub="cm-1"), case_id, query))
    with pytest.raises(MalformedExport, match=where):
        verify_export(lines(crafted))
    code, out = run_verify(tmp_path, crafted, capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED")


# --------------------------------------------------------------------------------------------
# changes that a reader's tools make without meaning to (guards)
# --------------------------------------------------------------------------------------------


async def test_unseen_changes_to_an_export_fail_verification_against_the_agency_key(
        make_records_client: Any, fresh_database_url: str, key_file: Path,  # noqa: F811
        token: TokenFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Changes a person cannot see in a text editor, and a signature moved from a genuine
    export of another case, each fail with the agency's key: a participant's name written
    in NFD rather than NFC (a Mac's file system, a copy through some editors), CR LF line
    endings (a Windows editor), a BOM (Excel's "CSV UTF-8"). A verifier that normalised text
    or line endings before hashing would call each VERIFIED."""
    client_ = await make_records_client(fresh_database_url,
                                        CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file))
    cm = CaseApi(client_, token(sub="cm-1"))
    name = unicodedata.normalize("NFC", "Zoë Çelik-Nguyễn")
    first = await cm.open_case(participant={**PARTICIPANT, "name": name})
    other = await cm.open_case()
    raw = await export(client_, token(sub="cm-1"), first)
    assert name.encode() in raw
    elsewhere = lines(await export(client_, token(sub="cm-1"), other))[-1]
    trusted = public_key(key_file)
    assert verify_bytes(raw, trusted).ok
    changed = {
        "nfd": raw.replace(name.encode(), unicodedata.normalize("NFD", name).encode()),
        "crlf": raw.replace(b"\n", b"\r\n"),
        "bom": b"\xef\xbb\xbf" + raw,
        "moved signature": b"".join(lines(raw)[:-1]) + elsewhere,
    }
    for what, edited in changed.items():
        code, out = run_verify(tmp_path, edited, "--public-key", f"{key_file}.pub",
                               capsys=capsys)
        assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), what
        assert ("DOES NOT MATCH" in out or "neither a JSON Lines" in out
                or "BROKEN" in out), (what, out)


async def test_an_export_taken_while_notes_land_holds_each_version_once(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Read two events a page while another case manager adds notes between the pages: the
    export stops at the version it started at, each from 1 to there exactly once."""
    monkeypatch.setattr(events_module, "READ_PAGE", 2)
    cm = CaseApi(client, token(sub="cm-1"))
    for n in range(6):
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"before {n}"}, expect=201)
    response = await client.get(f"/v1/cases/{case_id}/export",
                                headers=bearer(token(sub="cm-1")))
    assert response.status == 200
    chunks = [await response.content.readany()]
    writes = 0
    while chunk := await response.content.readany():
        chunks.append(chunk)
        if writes < 8:
            await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"during {writes}"},
                          expect=201)
            writes += 1
        await asyncio.sleep(0)
    raw = b"".join(chunks)
    report = verify_bytes(raw, public_key(key_file))
    assert report.ok, report.problems
    header = json.loads(lines(raw)[0])
    versions = [json.loads(line)["version"] for line in lines(raw)[1:-1]]
    assert versions == list(range(1, header["last_version"] + 1))
