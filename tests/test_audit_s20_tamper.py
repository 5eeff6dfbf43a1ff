"""An audit of tamper evidence, as a court's IT examiner would run it (twentieth session).

design.md: "UPDATE, DELETE and TRUNCATE on the events table are refused by the database itself
(trigger and privileges)" and "each event's hash = SHA-256 over its canonical form and the
previous event's hash in the same stream. A verify endpoint and an offline CLI recompute the
chain and name the first broken link. Exports carry the chain and an Ed25519 signature over
the export's digest." Decision 0002: a superuser gets around trigger and privileges, "which is
exactly what the hash chain is there to expose".

Here a database superuser (in the test's own database only) bypasses the trigger and changes
one stored event in the middle of a case, field by field; then the verify endpoint, the
history, the plan read and every export format checked offline with ``casetrail verify
--public-key`` are asked what they make of it. And exports are edited byte by byte, as a file
passes through hands and editors, and checked with the right key, a wrong key and no key.

Cost: a test that tampers with the database gets a database, a service and a case of its own
(the fixtures of tests/export_helpers.py), so what it sees never depends on the tests before
it. The tests that only edit an export's bytes share one set of genuine exports, made once per
module from a case of its own in a database of its own (``genuine_exports``): bytes cannot be
changed in place, so every edit makes a new value and no test sees another's edit.
"""

# ruff: noqa: F811

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.auth import issue_token
from services.records.export.signing import write_key_pair
from services.records.http.app import create_app
from tests.conftest import JWT_SECRET, TokenFactory, bearer, make_settings
from tests.database_supply import DatabaseSupply
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    NOTE,
    add_notes,
    case_id,
    client,
    export,
    key_file,
    open_export_case,
    run_verify,
)
from tests.records_api import CaseApi
from tests.test_production_roles import Roles, roles  # noqa: F401  (a fixture)

FORMATS = ("jsonl", "csv", "fhir", "pdf")
TARGET = 5  # the StrengthRemoved event (with a reason) of the case fixture
LAST = 8    # the fixture's five events and three notes after them


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


async def tamper(database_url: str, *statements: str, case: str,
                 bypass: str = "replica") -> None:
    """Run ``statements`` (``$1`` is the case id) as a superuser who has switched off the
    append-only trigger: for this transaction (``session_replication_role``) or for the table
    (``ALTER TABLE … DISABLE TRIGGER``, switched back on afterwards)."""
    db = await asyncpg.connect(database_url)
    try:
        async with db.transaction():
            if bypass == "replica":
                await db.execute("SET LOCAL session_replication_role = replica")
            else:
                await db.execute("ALTER TABLE records.events DISABLE TRIGGER USER")
            for statement in statements:
                await db.execute(statement, *((uuid.UUID(case),) if "$1" in statement else ()))
            if bypass != "replica":
                await db.execute("ALTER TABLE records.events ENABLE TRIGGER USER")
    finally:
        await db.close()


async def stored_event_id(database_url: str, case: str, version: int) -> str:
    db = await asyncpg.connect(database_url)
    try:
        return str(await db.fetchval("SELECT event_id FROM records.events WHERE stream_id = $1"
                                     " AND version = $2", uuid.UUID(case), version))
    finally:
        await db.close()


async def verify_endpoint(client: TestClient[Any, Any], token: str, case: str) -> dict[str, Any]:
    response = await client.get(f"/v1/cases/{case}/verify", headers=bearer(token))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def query_of(fmt: str) -> str:
    return "" if fmt == "jsonl" else f"?format={fmt}"


async def eight_events(client: TestClient[Any, Any], token: TokenFactory, case_id: str) -> str:
    await add_notes(client, token, case_id, ["Jo fixed a wheel", "Jo fixed a chain",
                                             "Jo opened a stall"])
    return case_id


# --------------------------------------------------------------------------------------------
# a superuser changes one stored event in the middle of a case
# --------------------------------------------------------------------------------------------

W = f"WHERE stream_id = $1 AND version = {TARGET}"
MIDDLE_CHANGES: dict[str, tuple[str, ...]] = {
    "data": (f"UPDATE records.events SET data = jsonb_set(data, '{{reason}}',"
             f" '\"entered by mistake\"') {W}",),
    "metadata-actor": (f"UPDATE records.events SET metadata = jsonb_set(metadata,"
                       f" '{{actor,sub}}', '\"cm-2\"') {W}",),
    "metadata-role": (f"UPDATE records.events SET metadata = jsonb_set(metadata,"
                      f" '{{actor,role}}', '\"supervisor\"') {W}",),
    "metadata-reason": (f"UPDATE records.events SET metadata = jsonb_set(metadata,"
                        f" '{{reason}}', '\"entered by mistake\"') {W}",),
    "type": (f"UPDATE records.events SET type = 'SupportRemoved' {W}",),
    "schema-version": (f"UPDATE records.events SET schema_version = 2 {W}",),
    "recorded-at-one-microsecond": (
        f"UPDATE records.events SET recorded_at = recorded_at + interval '1 microsecond' {W}",),
    "event-id": (f"UPDATE records.events SET event_id = gen_random_uuid() {W}",),
    "prev-hash": (f"UPDATE records.events SET prev_hash = repeat('0', 64) {W}",),
    "hash": (f"UPDATE records.events SET hash = repeat('f', 64) {W}",),
    "version-swap": (
        f"UPDATE records.events SET version = 1000 {W}",
        f"UPDATE records.events SET version = {TARGET} WHERE stream_id = $1"
        f" AND version = {TARGET + 1}",
        f"UPDATE records.events SET version = {TARGET + 1} WHERE stream_id = $1"
        " AND version = 1000"),
    "middle-deleted-and-renumbered": (
        f"DELETE FROM records.events {W}",
        *(f"UPDATE records.events SET version = {v - 1} WHERE stream_id = $1 AND version = {v}"
          for v in range(TARGET + 1, LAST + 1)),
        f"UPDATE records.streams SET version = {LAST - 1}, last_hash = (SELECT hash FROM"
        f" records.events WHERE stream_id = $1 AND version = {LAST - 1}) WHERE stream_id = $1",
        f"UPDATE records.plans SET version = {LAST - 1} WHERE case_id = $1"),
}


@pytest.mark.parametrize("bypass", ["replica", "disable-trigger"])
@pytest.mark.parametrize("change", list(MIDDLE_CHANGES))
async def test_the_verify_endpoint_names_the_first_broken_link_of_a_changed_stored_event(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        change: str, bypass: str) -> None:
    """Each hashed field of one event in the middle, changed in the database: verify says
    the chain is broken at that version and names the event stored there (design.md: "name
    the first broken link"); the four events before it still hold."""
    await eight_events(client, token, case_id)
    cm = token(sub="cm-1")
    assert (await verify_endpoint(client, cm, case_id))["valid"] is True
    await tamper(fresh_database_url, *MIDDLE_CHANGES[change], case=case_id, bypass=bypass)
    found = await verify_endpoint(client, cm, case_id)
    assert found["valid"] is False, found
    assert found["events_checked"] == TARGET - 1, found
    assert found["first_broken_link"]["version"] == TARGET, found
    assert found["first_broken_link"]["event_id"] == \
        await stored_event_id(fresh_database_url, case_id, TARGET), found
    assert found["first_broken_link"]["problem"], found


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change", list(MIDDLE_CHANGES))
async def test_every_export_of_a_case_with_a_changed_stored_event_is_not_verified(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: str, fmt: str) -> None:
    """The service signs whatever it reads, so the signature holds; the chain the export
    carries (or, in a PDF, the chain state the service signs) must not: `casetrail verify
    --public-key` says NOT VERIFIED, exit 1, and names the version and the event."""
    await eight_events(client, token, case_id)
    await tamper(fresh_database_url, *MIDDLE_CHANGES[change], case=case_id)
    response = await client.get(f"/v1/cases/{case_id}/export{query_of(fmt)}",
                                headers=bearer(token(sub="cm-1")))
    assert response.status == 200, await response.text()
    raw = await response.read()
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
    broken_id = await stored_event_id(fresh_database_url, case_id, TARGET)
    assert f"chain:     BROKEN at version {TARGET} (event {broken_id})" in out, out
    assert "signature: valid" in out, out  # the agency's key signed what the service read


@pytest.mark.parametrize("change", list(MIDDLE_CHANGES))
async def test_history_and_plan_reads_of_a_tampered_case_answer_without_a_server_error(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        change: str) -> None:
    """The examiner still reads the case: the plan (a projection) and the history answer,
    the history showing the stored rows as they now are (an event that no longer decodes
    is the documented 500 `unreadable-event`, decision 0100, never a bare 500)."""
    await eight_events(client, token, case_id)
    await tamper(fresh_database_url, *MIDDLE_CHANGES[change], case=case_id)
    headers = bearer(token(sub="cm-1"))
    plan = await client.get(f"/v1/cases/{case_id}", headers=headers)
    assert plan.status == 200, await plan.text()
    history = await client.get(f"/v1/cases/{case_id}/history", headers=headers)
    if history.status == 500:
        problem = await history.json()
        assert problem["type"].endswith("/unreadable-event"), problem
        return
    assert history.status == 200, await history.text()
    events = (await history.json())["events"]
    stored = await stored_event_id(fresh_database_url, case_id, TARGET)
    assert [e["event_id"] for e in events if e["version"] == TARGET] == [stored]



async def test_an_event_moved_into_another_case_breaks_both_chains_where_it_left_and_landed(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stream id is hashed: an event moved from the middle of one case into another
    (at the other's next version) leaves a gap where it was and a foreign link where it
    lands; verify names both, and the export of the case it left is NOT VERIFIED."""
    await eight_events(client, token, case_id)
    cm = token(sub="cm-1")
    other = await CaseApi(client, cm).open_case()
    moved = await stored_event_id(fresh_database_url, case_id, TARGET)
    await tamper(fresh_database_url, f"UPDATE records.events SET stream_id = '{other}',"
                 f" version = 2 {W}", case=case_id)
    left = await verify_endpoint(client, cm, case_id)
    assert left["valid"] is False
    assert left["first_broken_link"]["version"] == TARGET + 1, left
    landed = await verify_endpoint(client, cm, other)
    assert landed["valid"] is False
    assert landed["first_broken_link"] == {
        "version": 2, "event_id": moved, "problem": landed["first_broken_link"]["problem"]}
    # the other case's export ends at its own version (1, from its plan), before the
    # foreign event: only the case it left has an export that shows the move
    raw = await export(client, cm, case_id)
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
    assert f"BROKEN at version {TARGET + 1}" in out, out


# what the service never writes, written into a stored row by the superuser: a fraction (the
# canonical form refuses floats) and data nested deeper than the encoder recurses
UNWRITABLE_CHANGES: dict[str, str] = {
    "a-fraction": f"UPDATE records.events SET data = jsonb_set(data, '{{reason}}', '1.5') {W}",
    "nested-2000-deep": "UPDATE records.events SET data = jsonb_set(data, '{reason}',"
                        f" (repeat('[', 2000) || repeat(']', 2000))::jsonb) {W}",
}


@pytest.mark.parametrize("change", list(UNWRITABLE_CHANGES))
async def test_verify_names_the_broken_link_of_a_row_altered_to_hold_what_is_never_written(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        change: str) -> None:
    """design.md: the verify endpoint recomputes the chain "and name[s] the first broken
    link". An altered row whose data cannot be put in the canonical form cannot be the
    recorded event: verify must say so at its version (the offline verifier refuses such a
    line by name, decision 0010), not answer 500 and leave the examiner with nothing."""
    await eight_events(client, token, case_id)
    await tamper(fresh_database_url, UNWRITABLE_CHANGES[change], case=case_id)
    response = await client.get(f"/v1/cases/{case_id}/verify",
                                headers=bearer(token(sub="cm-1")))
    assert response.status == 200, await response.text()
    found = await response.json()
    assert found["valid"] is False, found
    assert found["first_broken_link"]["version"] == TARGET, found


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change", list(UNWRITABLE_CHANGES))
async def test_an_export_of_a_row_altered_to_hold_what_is_never_written_is_whole_and_refused(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: str, fmt: str) -> None:
    """Decision 0010: the PDF carries the service's check of the chain ("BROKEN at version
    N"), and every format carries the events for the court to check. An export of such a
    case is still delivered whole (200, ending with its signature line) and `casetrail
    verify` refuses it naming where; it must not be cut off mid-file, which leaves the
    court no document at all."""
    await eight_events(client, token, case_id)
    await tamper(fresh_database_url, UNWRITABLE_CHANGES[change], case=case_id)
    response = await client.get(f"/v1/cases/{case_id}/export{query_of(fmt)}",
                                headers=bearer(token(sub="cm-1")))
    assert response.status == 200
    try:
        raw = await response.read()
    except aiohttp.ClientPayloadError as error:
        pytest.fail(f"the {fmt} export was cut off mid-file: {error}")
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
    assert "cut short" not in out, out


TAIL_CHANGES: dict[str, tuple[str, ...]] = {
    "last-event-deleted": (
        f"DELETE FROM records.events WHERE stream_id = $1 AND version = {LAST}",),
    "last-event-and-stream-head-rolled-back": (
        f"DELETE FROM records.events WHERE stream_id = $1 AND version = {LAST}",
        f"UPDATE records.streams SET version = {LAST - 1}, last_hash = (SELECT hash FROM"
        f" records.events WHERE stream_id = $1 AND version = {LAST - 1}) WHERE stream_id = $1"),
    "last-event-moved-to-another-case": (
        f"UPDATE records.events SET stream_id = gen_random_uuid() WHERE stream_id = $1"
        f" AND version = {LAST}",),
}


@pytest.mark.parametrize("change", list(TAIL_CHANGES))
async def test_every_export_of_a_case_cut_at_its_tail_is_not_verified(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: str) -> None:
    """docs/export-format.md section 1, completeness: the signed header names the versions
    (the case's version, 8, from the plan), so an export of a case whose last event is gone
    holds one event too few and is NOT VERIFIED in every format."""
    await eight_events(client, token, case_id)
    await tamper(fresh_database_url, *TAIL_CHANGES[change], case=case_id)
    for fmt in FORMATS:
        raw = await export(client, token(sub="cm-1"), case_id, query_of(fmt))
        code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub",
                               capsys=capsys)
        assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), (fmt, out)
        assert f"the header promises versions 1 to {LAST}" in out, (fmt, out)


@pytest.mark.parametrize("change", list(TAIL_CHANGES))
async def test_the_verify_endpoint_does_not_call_a_case_cut_at_its_tail_valid(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, fresh_database_url: str,
        key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: str) -> None:
    """Decision 0002: a superuser gets around trigger and privileges, "which is exactly what
    the hash chain is there to expose". After the last event is deleted (or moved away) the
    case's own plan still stands at version 8 and the stream head still names version 8 and
    its hash (in two of the three variants), and the export of the case taken at the same
    moment is NOT VERIFIED ("the header promises versions 1 to 8; the export holds 7
    events"). The verify endpoint, which the README offers as the same check, must not
    answer `valid: true` for it."""
    await eight_events(client, token, case_id)
    cm = token(sub="cm-1")
    await tamper(fresh_database_url, *TAIL_CHANGES[change], case=case_id)
    plan = await CaseApi(client, cm).plan(case_id)
    assert plan["version"] == LAST
    raw = await export(client, cm, case_id)
    code, _ = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 1  # the export of the same moment says NOT VERIFIED
    found = await verify_endpoint(client, cm, case_id)
    assert found["valid"] is False, (
        f"verify says the chain of a case at version {plan['version']} is valid with"
        f" {found['events_checked']} events: {found}")


# --------------------------------------------------------------------------------------------
# an export edited after it left the service
# --------------------------------------------------------------------------------------------


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    """The export's lines before the signature line (split at LF only, as a verifier reads
    them: docs/export-format.md section 2), and the signature line."""
    out = raw.split(b"\n")
    assert out[-1] == b""
    return [line + b"\n" for line in out[:-2]], out[-2] + b"\n"


def _in_last_line(raw: bytes, old: bytes, new: bytes) -> bytes:
    body, last = _split(raw)
    assert old in last, (old, last[:200])
    return b"".join(body) + last.replace(old, new)


def _trailer_text(raw: bytes) -> str:
    _, last = _split(raw)
    return last.decode()


def _signature_value(raw: bytes) -> bytes:
    """The base64 the signature line carries: the Ed25519 value, or FHIR's JWS."""
    text = _trailer_text(raw)
    key = '"data":"' if text.startswith('],"signature"') else (
        '""value"":""' if text.startswith("#casetrail") else '"value":"')
    start = text.index(key) + len(key)
    return text[start:text.index('"', start)].encode()


def _key_id(raw: bytes) -> bytes:
    text = _trailer_text(raw)
    for key in ('"key_id":"', '""key_id"":""', '"system":"https://casetrail.org/fhir/sid/'
                                                  'export-key","value":"'):
        if key in text:
            start = text.index(key) + len(key)
            return text[start:start + 16].encode()
    raise AssertionError(text)


def _one_char_other(value: bytes, at: int) -> bytes:
    swapped = b"B" if value[at:at + 1] != b"B" else b"C"
    return value[:at] + swapped + value[at + 1:]


def edit_event_data(raw: bytes, fmt: str) -> bytes:
    if fmt == "pdf":  # the page content is compressed: flip a byte inside the document
        middle = len(raw) // 3
        return raw[:middle] + bytes([raw[middle] ^ 0x01]) + raw[middle + 1:]
    assert raw.count(b"fix bikes") >= 1
    return raw.replace(b"fix bikes", b"fix bikez", 1)


def edit_signature_value(raw: bytes, fmt: str) -> bytes:
    value = _signature_value(raw)
    return _in_last_line(raw, value, _one_char_other(value, len(value) - 12))


def edit_key_id(raw: bytes, fmt: str) -> bytes:
    return _in_last_line(raw, _key_id(raw), b"0123456789abcdef")


def edit_digest_or_count(raw: bytes, fmt: str) -> bytes:
    if fmt == "fhir":  # the digest is the JWS payload; the count rides in an extension
        return _in_last_line(raw, b'"valueInteger":5', b'"valueInteger":4')
    text = _trailer_text(raw)
    start = text.index("sha256:") + len("sha256:")
    digest = text[start:start + 64].encode()
    flipped = digest[:10] + (b"0" if digest[10:11] != b"0" else b"1") + digest[11:]
    return _in_last_line(raw, digest, flipped)


def edit_header_line(raw: bytes, fmt: str) -> bytes:
    """The first line names who exported it: cm-1 becomes cm-9 (PDF: in its signed header)."""
    if fmt == "pdf":
        return _in_last_line(raw, b'"sub":"cm-1"', b'"sub":"cm-9"')
    body, last = _split(raw)
    first = body[0].replace(b"cm-1", b"cm-9", 1)
    assert first != body[0]
    return first + b"".join(body[1:]) + last


def space_at_the_end_of_an_event_line(raw: bytes, fmt: str) -> bytes:
    body, last = _split(raw)
    body[2] = body[2][:-1] + b" \n"
    return b"".join(body) + last


def space_after_the_last_line_break(raw: bytes, fmt: str) -> bytes:
    return raw + b" "


def crlf_line_ends(raw: bytes, fmt: str) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def byte_order_mark(raw: bytes, fmt: str) -> bytes:
    return b"\xef\xbb\xbf" + raw


def drop_the_signature_line(raw: bytes, fmt: str) -> bytes:
    body, _ = _split(raw)
    return b"".join(body)


def drop_the_last_event_line(raw: bytes, fmt: str) -> bytes:
    body, last = _split(raw)
    return b"".join(body[:-1]) + last


def duplicate_a_line(raw: bytes, fmt: str) -> bytes:
    body, last = _split(raw)
    return b"".join([*body, body[-1]]) + last


def reorder_two_lines(raw: bytes, fmt: str) -> bytes:
    body, last = _split(raw)
    body[-1], body[-2] = body[-2], body[-1]
    return b"".join(body) + last


def append_a_line_after_the_signature(raw: bytes, fmt: str) -> bytes:
    return raw + b'{"note":"checked against the paper file by the court clerk"}\n'


def repeat_the_signature_line(raw: bytes, fmt: str) -> bytes:
    return raw + _split(raw)[1]


def an_empty_line_at_the_end(raw: bytes, fmt: str) -> bytes:
    return raw + b"\n"


FILE_EDITS: dict[str, Callable[[bytes, str], bytes]] = {
    fn.__name__: fn for fn in (
        edit_event_data, edit_signature_value, edit_key_id, edit_digest_or_count,
        edit_header_line, space_at_the_end_of_an_event_line, space_after_the_last_line_break,
        crlf_line_ends, byte_order_mark, drop_the_signature_line, drop_the_last_event_line,
        duplicate_a_line, reorder_two_lines, append_a_line_after_the_signature,
        repeat_the_signature_line, an_empty_line_at_the_end)}


@pytest.fixture
def other_key(tmp_path: Path) -> Path:
    path = tmp_path / "other" / "someone-else.pem"
    write_key_pair(path)
    return path


@pytest.fixture(scope="module")
def agency_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agency's key pair for the module's genuine exports (only ever read after)."""
    path = tmp_path_factory.mktemp("agency") / "export.pem"
    write_key_pair(path)
    return path


# an export's status and body as the service gave them, or why its body could not be read
Answer = tuple[int, bytes | str]


async def _exports_of_a_new_case(database_url: str, key_file: Path) -> dict[str, Answer]:
    """Each format's answer, kept as given (checked by the test of that format alone)."""
    app = create_app(make_settings(database_url, CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file)))
    async with TestClient(TestServer(app)) as client:
        cm = issue_token(JWT_SECRET, sub="cm-1", role="case_manager", agency="agency-a")
        case = await open_export_case(CaseApi(client, cm))
        answers: dict[str, Answer] = {}
        for fmt in FORMATS:
            response = await client.get(f"/v1/cases/{case}/export{query_of(fmt)}",
                                        headers=bearer(cm))
            try:
                answers[fmt] = (response.status, await response.read())
            except aiohttp.ClientPayloadError as error:
                answers[fmt] = (response.status, f"cut off mid-file: {error}")
        return answers


@pytest.fixture(scope="module")
def genuine_exports(database_supply: DatabaseSupply, agency_key: Path) -> Mapping[str, Answer]:
    """One genuine export per format of a new case, signed with ``agency_key``: made once for
    the tests that only edit and check the file, in a database of its own that is given back
    (service closed) before any of them runs. Read-only: a mapping that cannot be changed,
    of bytes that cannot be."""
    with database_supply.borrowed() as url:
        made = asyncio.run(_exports_of_a_new_case(url, agency_key))
    return MappingProxyType(made)


def genuine(exports: Mapping[str, Answer], fmt: str) -> bytes:
    """The genuine export in ``fmt`` (what ``export`` asserts of a fresh one, asserted here)."""
    status, body = exports[fmt]
    assert isinstance(body, bytes), body
    assert status == 200, body.decode(errors="replace")
    return body


@pytest.mark.parametrize("edit", list(FILE_EDITS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_edited_export_is_not_verified_with_any_key_or_none(
        genuine_exports: Mapping[str, Answer], agency_key: Path,
        other_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fmt: str, edit: str) -> None:
    """One edit to a genuine export, as a file meets hands and editors: `casetrail verify`
    says NOT VERIFIED (exit 1) with the agency's key, with another key and with no key at
    all, naming what is wrong, and never ends in a traceback (an exception here is one)."""
    raw = genuine(genuine_exports, fmt)
    edited = FILE_EDITS[edit](raw, fmt)
    assert edited != raw
    for options in (("--public-key", f"{agency_key}.pub"), ("--public-key", f"{other_key}.pub"),
                    ()):
        code, out = run_verify(tmp_path, edited, *options, capsys=capsys)
        assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), (options, out)
        assert "Traceback" not in out
        named = [line for line in out.splitlines()
                 if "DOES NOT MATCH" in line or "INVALID" in line or "BROKEN" in line
                 or line.startswith("problem:") or (": " in line and line.startswith("/"))]
        assert named, (options, out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_untouched_export_verifies_with_the_agency_key_only(
        genuine_exports: Mapping[str, Answer], agency_key: Path,
        other_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fmt: str) -> None:
    """Section 12: VERIFIED with the published key; with no key, intact but its origin
    unchecked, said so (exit 0); with someone else's key, NOT VERIFIED (exit 1)."""
    raw = genuine(genuine_exports, fmt)
    code, out = run_verify(tmp_path, raw, "--public-key", f"{agency_key}.pub", capsys=capsys)
    assert (code, out.splitlines()[-1]) == (0, "VERIFIED"), out
    code, out = run_verify(tmp_path, raw, capsys=capsys)
    assert (code, out.splitlines()[-1]) == (
        0, "VERIFIED (intact, but its origin is unchecked: pass --public-key)"), out
    code, out = run_verify(tmp_path, raw, "--public-key", f"{other_key}.pub", capsys=capsys)
    assert (code, out.splitlines()[-1]) == (1, "NOT VERIFIED"), out
    assert "NOT the trusted key" in out


# --------------------------------------------------------------------------------------------
# the production role (deploy/production-roles.sql) cannot get around the trigger
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "SET session_replication_role = replica",
    "ALTER TABLE records.events DISABLE TRIGGER USER",
    "ALTER TABLE records.events DISABLE TRIGGER events_no_update_delete",
    # not the owner: PostgreSQL only warns that nothing was granted, and the update after
    # it is refused
    "GRANT UPDATE, DELETE, TRUNCATE ON records.events TO CURRENT_USER;"
    " UPDATE records.events SET type = 'NoteAdded' WHERE version = 5",
    "DROP TRIGGER events_no_update_delete ON records.events",
    f"UPDATE records.events SET data = jsonb_set(data, '{{reason}}', '\"entered by mistake\"')"
    f" {W}",
    f"DELETE FROM records.events WHERE stream_id = $1 AND version = {LAST}",
    "TRUNCATE records.events",
])
async def test_the_records_role_cannot_change_a_recorded_event_nor_switch_off_the_guard(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, roles: Roles,
        statement: str) -> None:
    """design.md: UPDATE, DELETE and TRUNCATE are refused "by the database itself (trigger
    and privileges)". The service's own login (what an attacker holding its credentials
    has) can neither change the events of a real case nor take the guard away first: no
    replica mode (superusers only), no disabling or dropping the trigger (owner only), no
    granting itself the rights back. The case is untouched afterwards."""
    await eight_events(client, token, case_id)
    cm = token(sub="cm-1")
    before = await verify_endpoint(client, cm, case_id)
    arguments = (uuid.UUID(case_id),) if "$1" in statement else ()
    conn = await asyncpg.connect(roles.records_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement, *arguments)
    finally:
        await conn.close()
    assert await verify_endpoint(client, cm, case_id) == before
    assert before["valid"] is True
    assert before["events_checked"] == LAST
