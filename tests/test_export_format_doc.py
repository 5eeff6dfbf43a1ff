"""docs/export-format.md is enough to verify an export without Casetrail's code.

The verifier below follows the document's steps and nothing else: the Python standard library
and ``cryptography`` (Ed25519), no import from Casetrail's services. It checks fresh exports of
every format made through the API (a case written in several scripts, with emoji and text
on several lines; an auditor's window; a window in which nothing was recorded), the worked
example printed in the document, and tampered copies, which it must refuse.
"""

# ruff: noqa: F811

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.export_helpers import key_file  # noqa: F401  (a fixture, found by name)
from tests.records_api import CaseApi

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "export-format.md"

# --------------------------------------------------------------------------------------------
# The verifier, as docs/export-format.md states it (section numbers in the comments)
# --------------------------------------------------------------------------------------------

EXPORT_KIND = "casetrail.case-export"
GENESIS = "0" * 64
HASHED = ("stream_id", "version", "event_id", "type", "schema_version", "data", "metadata",
          "recorded_at", "prev_hash")
EVENT_FIELDS = (*HASHED, "hash")
CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
CSV_HEADER, CSV_TRAILER = "#casetrail-export", "#casetrail-signature"
CSV_COLUMNS = ("version,recorded_at,type,actor,role,reason,event_id,schema_version,data,"
               "metadata,prev_hash,hash,stream_id")
FHIR_BASE = "https://casetrail.org/fhir/StructureDefinition/"
FHIR_HEADER, FHIR_EVENT = f"{FHIR_BASE}export-header", f"{FHIR_BASE}recorded-event"
FHIR_EVENTS, FHIR_HEAD_HASH = f"{FHIR_BASE}export-events", f"{FHIR_BASE}export-head-hash"
FHIR_BUNDLE_START, FHIR_TRAILER_START = b'{"resourceType":"Bundle"', b'],"signature":'
FHIR_SIGNATURE_TYPE = {"system": "urn:iso-astm:E1762-95:2013",
                       "code": "1.2.840.10065.1.12.1.14", "display": "Source Signature"}
FHIR_SIGNER = "Casetrail records service"
FHIR_KEY_SYSTEM = "https://casetrail.org/fhir/sid/export-key"
PDF_PREFIX = b"%casetrail-signature "
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
CHAIN_FIELDS = ("valid", "events_checked", "head_hash", "first_broken_link")
TRAILER_FIELDS = ("events", "head_hash", "signature")  # section 5
SIGNATURE_FIELDS = ("algorithm", "digest", "value", "public_key", "key_id")
PDF_LINE_FIELDS = ("export", "events", "chain", "signature")  # section 10
BROKEN_LINK_FIELDS = ("version", "event_id", "problem")
FORMULA_STARTS = ("=", "+", "-", "@", "\t")
# section 8: the line boundaries of Python's str.splitlines
LINE_BOUNDARIES = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class Refused(Exception):
    """The export does not verify; the message says why."""


@dataclass
class Verified:
    header: dict[str, Any]
    events: list[dict[str, Any]]
    head_hash: str | None
    chain: dict[str, Any] | None = None  # a PDF's signed chain report


def canonical(value: Any) -> bytes:
    """Section 3."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(raw_key: bytes) -> str:
    return sha256_hex(raw_key)[:16]


def raw_key_from_pem(pem: bytes) -> bytes:
    """Section 12, step 1."""
    body = b"".join(line for line in pem.strip().splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body, validate=True)
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise Refused("not an Ed25519 public key")
    return der[len(ED25519_SPKI_PREFIX):]


def _refuse_fraction(text: str) -> Any:
    raise Refused(f"a number with a fraction: {text}")


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise Refused("an object repeats a key")
    return found


def strict_json(text: bytes | str) -> Any:
    """Section 2: RFC 8259, without fractions, non-numbers or repeated keys."""
    try:
        return json.loads(text, parse_float=_refuse_fraction, parse_constant=_refuse_fraction,
                          object_pairs_hook=_refuse_repeats)
    except ValueError as error:
        raise Refused(f"not JSON: {error}") from error


def json_object(text: bytes | str, what: str) -> dict[str, Any]:
    found = strict_json(text)
    if not isinstance(found, dict):
        raise Refused(f"{what} is not a JSON object")
    return found


def b64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as error:
        raise Refused(f"{what} is not base64") from error


def b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise Refused("not base64url") from error


def only_fields(found: dict[str, Any], fields: tuple[str, ...], what: str) -> dict[str, Any]:
    """Sections 5, 9, 10: the signature line is outside D, so no field besides its own."""
    if set(found) - set(fields):
        raise Refused(f"{what} holds unsigned fields: {sorted(set(found) - set(fields))}")
    return found


def split_signature_line(raw: bytes) -> tuple[bytes, bytes]:
    """Sections 2 and 6 step 1: the body and the last line (without its LF), split at LF."""
    if not raw.endswith(b"\n"):
        raise Refused("cut short: the file does not end with LF")
    start = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    return raw[:start], raw[start:-1]


def check_signed(digest: bytes, block: dict[str, Any], trusted_key: bytes) -> None:
    """Section 6, steps 2 to 4 (section 5: the signature is of the 32 raw bytes of D)."""
    only_fields(block, SIGNATURE_FIELDS, "the signature block")
    if block.get("algorithm") != "Ed25519":
        raise Refused("not an Ed25519 signature")
    if block.get("digest") != f"sha256:{digest.hex()}":
        raise Refused("the digest does not match the bytes")
    if b64(block.get("public_key"), "public_key") != trusted_key:
        raise Refused(f"signed by another key than the trusted one ({block.get('key_id')})")
    if block.get("key_id") != key_id(trusted_key):
        raise Refused("key_id is not the key's")
    signature_holds(trusted_key, b64(block.get("value"), "value"), digest)


def signature_holds(trusted_key: bytes, signature: bytes, message: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(trusted_key).verify(signature, message)
    except InvalidSignature as error:
        raise Refused("the signature does not hold") from error


def check_header(header: dict[str, Any]) -> None:
    """Section 6, step 5."""
    if header.get("export") != EXPORT_KIND or header.get("format_version") != 1:
        raise Refused("not a format 1 case export")
    if not all(type(header.get(name)) is int for name in ("first_version", "last_version")):
        raise Refused("the header's versions are not integers")
    by = header.get("exported_by")
    if not (isinstance(by, dict) and all(isinstance(by.get(k), str) for k in ("sub", "role"))):
        raise Refused("exported_by is not a sub and a role")


def event_hash(event: dict[str, Any]) -> str:
    """Section 4: the SHA-256 of the canonical JSON of the nine fields other than hash."""
    if set(event) != set(EVENT_FIELDS):
        raise Refused(f"event {event.get('version')}: not exactly the ten fields")
    if not CANONICAL_TIME.fullmatch(str(event["recorded_at"])):
        raise Refused(f"event {event['version']}: recorded_at is not canonical")
    return sha256_hex(canonical({name: event[name] for name in HASHED}))


def check_chain(header: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Section 4, rules 1 to 4."""
    first = header["first_version"]
    previous = GENESIS if first == 1 else None  # a window's first prev_hash is its anchor
    for place, event in enumerate(events):
        if event.get("version") != first + place or type(event["version"]) is not int:
            raise Refused(f"broken at version {first + place}: the version is wrong")
        if previous is not None and event["prev_hash"] != previous:
            raise Refused(f"broken at version {event['version']}: prev_hash")
        if event_hash(event) != event["hash"]:
            raise Refused(f"broken at version {event['version']}: the hash")
        if event["stream_id"] != header["case_id"]:
            raise Refused(f"version {event['version']}: an event of another case")
        previous = event["hash"]


def check_counts(header: dict[str, Any], events: list[dict[str, Any]], count: Any,
                 head_hash: Any) -> None:
    """Section 6, step 7."""
    promised = header["last_version"] - header["first_version"] + 1
    if not len(events) == count == promised:
        raise Refused(f"{len(events)} events; the trailer says {count}, the header {promised}")
    if head_hash != (events[-1]["hash"] if events else None):
        raise Refused("head_hash is not the last event's hash")


def verified(header: dict[str, Any], events: list[dict[str, Any]], count: Any,
             head_hash: Any) -> Verified:
    check_header(header)
    check_chain(header, events)
    check_counts(header, events, count, head_hash)
    return Verified(header, events, head_hash)


def verify_jsonl(raw: bytes, trusted_key: bytes) -> Verified:
    """Section 7."""
    body, last = split_signature_line(raw)
    lines = body.split(b"\n")[:-1]
    trailer = only_fields(json_object(last, "the trailer"), TRAILER_FIELDS, "the trailer")
    check_signed(hashlib.sha256(body).digest(), trailer.get("signature") or {}, trusted_key)
    header = json_object(lines[0], "the header")
    events = [json_object(line, "an event") for line in lines[1:]]
    return verified(header, events, trailer.get("events"), trailer.get("head_hash"))


def csv_cells(line: bytes) -> list[str]:
    rows = list(csv.reader([line.decode("utf-8")]))
    if len(rows) != 1:
        raise Refused("not one CSV record")
    return rows[0]


def readable(text: Any) -> str:
    """Section 8: a readable cell, on one line and never a formula."""
    pieces = LINE_BOUNDARIES.split("" if text is None else str(text))
    if pieces[-1] == "":  # a boundary at the very end makes no further piece
        pieces.pop()
    flat = " ↵ ".join(pieces)
    return f"'{flat}" if flat.startswith(FORMULA_STARTS) else flat


def csv_event(cells: dict[str, str]) -> dict[str, Any]:
    event: dict[str, Any] = {name: cells[name] for name in EVENT_FIELDS}
    for name in ("version", "schema_version"):
        if not re.fullmatch("[0-9]+", event[name]):
            raise Refused(f"{name} is not decimal digits")
        event[name] = int(event[name])
    event["data"] = json_object(event["data"], "data")
    event["metadata"] = json_object(event["metadata"], "metadata")
    actor = event["metadata"].get("actor") or {}
    reason = event["metadata"].get("reason")
    if (cells["actor"], cells["role"]) != (readable(actor.get("sub")), readable(actor.get("role"))):
        raise Refused(f"version {event['version']}: the readable actor is not the metadata's")
    if reason and cells["reason"] != readable(reason):
        raise Refused(f"version {event['version']}: the readable reason is not the metadata's")
    return event


def verify_csv(raw: bytes, trusted_key: bytes) -> Verified:
    """Section 8."""
    body, last = split_signature_line(raw)
    lines = body.split(b"\n")[:-1]
    label, trailer_text = csv_cells(last)
    if label != CSV_TRAILER:
        raise Refused("cut short: the last row is not the signature")
    trailer = only_fields(json_object(trailer_text, "the trailer"), TRAILER_FIELDS,
                          "the trailer")
    check_signed(hashlib.sha256(body).digest(), trailer.get("signature") or {}, trusted_key)
    label, header_text = csv_cells(lines[0])
    if label != CSV_HEADER or ",".join(csv_cells(lines[1])) != CSV_COLUMNS:
        raise Refused("not a CSV export: its first rows are not the header and the columns")
    columns = CSV_COLUMNS.split(",")
    events = [csv_event(dict(zip(columns, csv_cells(line), strict=True)))
              for line in lines[2:]]
    return verified(json_object(header_text, "the header"), events, trailer.get("events"),
                    trailer.get("head_hash"))


def extension(extensions: Any, url: str) -> dict[str, Any] | None:
    found = [e for e in extensions or [] if isinstance(e, dict) and e.get("url") == url]
    if len(found) > 1:
        raise Refused(f"{url} more than once")
    return found[0] if found else None


def check_jws(digest: bytes, signature: dict[str, Any], trusted_key: bytes) -> None:
    """Section 9: Bundle.signature.data is base64 of a compact JWS whose payload is D."""
    if signature.get("sigFormat") != "application/jose":
        raise Refused("Bundle.signature is not a JWS")
    protected, payload, value = b64(signature.get("data"), "data").decode("ascii").split(".")
    jose = json_object(b64url(protected), "the JWS header")
    if jose.get("alg") != "EdDSA" or b64url(payload) != digest:
        raise Refused("the JWS is not EdDSA over the digest of the bytes")
    jwk = jose.get("jwk") or {}
    if (jwk.get("crv"), b64url(str(jwk.get("x")))) != ("Ed25519", trusted_key):
        raise Refused(f"signed by another key than the trusted one ({jose.get('kid')})")
    if jose.get("kid") != key_id(trusted_key):
        raise Refused("kid is not the key's key_id")
    signature_holds(trusted_key, b64url(value), f"{protected}.{payload}".encode("ascii"))


def fhir_event(resource: dict[str, Any]) -> dict[str, Any]:
    carried = extension(resource.get("extension"), FHIR_EVENT)
    if carried is None:
        raise Refused("a Provenance without its recorded event")
    return json_object(str(carried.get("valueString")), "a recorded event")


def verify_fhir(raw: bytes, trusted_key: bytes) -> Verified:
    """Section 9."""
    body, last = split_signature_line(raw)
    if not last.startswith(FHIR_TRAILER_START):
        raise Refused("cut short: the last line is not the signature")
    bundle = json_object(raw, "the Bundle")
    signature = bundle.get("signature") or {}
    check_jws(hashlib.sha256(body).digest(), signature, trusted_key)
    carried = extension((bundle.get("meta") or {}).get("extension"), FHIR_HEADER)
    if carried is None:
        raise Refused("the Bundle carries no export header")
    header = json_object(str(carried.get("valueString")), "the header")
    events = [fhir_event(entry["resource"]) for entry in bundle.get("entry") or []
              if entry["resource"].get("resourceType") == "Provenance"]
    count = extension(signature.get("extension"), FHIR_EVENTS) or {}
    head = extension(signature.get("extension"), FHIR_HEAD_HASH) or {}
    result = verified(header, events, count.get("valueInteger"), head.get("valueString"))
    only_fields(json_object(b"{" + last.removeprefix(b"],"), "the last line"), ("signature",),
                "the Bundle after its entries")
    check_signature_element(signature, result, trusted_key)
    return result


def check_signature_element(signature: dict[str, Any], result: Verified,
                            trusted_key: bytes) -> None:
    """Section 9: Bundle.signature is outside D, so it holds exactly what section 9 lists."""
    counts = [{"url": FHIR_EVENTS, "valueInteger": len(result.events)}]
    if result.events:
        counts.append({"url": FHIR_HEAD_HASH, "valueString": result.head_hash})
    expected = {"type": [FHIR_SIGNATURE_TYPE], "when": result.header.get("exported_at"),
                "who": {"display": FHIR_SIGNER,
                        "identifier": {"system": FHIR_KEY_SYSTEM, "value": key_id(trusted_key)}},
                "sigFormat": "application/jose", "data": signature.get("data"),
                "extension": counts}
    if signature != expected:
        raise Refused("Bundle.signature holds what section 9 does not list (unsigned)")


def chain_report(found: Any) -> dict[str, Any]:
    """Section 10: the four fields of the chain report, the part of D they make, and no
    others (which would be outside D)."""
    if not isinstance(found, dict) or set(found) != set(CHAIN_FIELDS):
        raise Refused("the signature line has no chain report of exactly its four fields")
    broken = found["first_broken_link"]
    if isinstance(broken, dict) and set(broken) != set(BROKEN_LINK_FIELDS):
        raise Refused("the chain report's first_broken_link is not exactly its three fields")
    return found


def verify_pdf(raw: bytes, trusted_key: bytes) -> Verified:
    """Section 10."""
    document, last = split_signature_line(raw)
    if not last.startswith(PDF_PREFIX):
        raise Refused("cut short: the last line is not the signature")
    line = only_fields(json_object(last[len(PDF_PREFIX):], "the signature line"),
                       PDF_LINE_FIELDS, "the signature line")
    header, chain = line.get("export") or {}, chain_report(line.get("chain"))
    digest = hashlib.sha256(document + canonical(header) + canonical(chain)).digest()
    check_signed(digest, line.get("signature") or {}, trusted_key)
    check_header(header)
    if chain["valid"] is not True:
        raise Refused(f"the service found the chain broken: {chain['first_broken_link']}")
    promised = header["last_version"] - header["first_version"] + 1
    if not line.get("events") == promised == chain["events_checked"]:
        raise Refused(f"events {line.get('events')} (outside the digest) is not the"
                      f" {promised} the header promises and the chain report counts")
    return Verified(header, [], None, chain)


def verify(raw: bytes, trusted_key: bytes) -> Verified:
    if raw.startswith(b"%PDF-"):
        return verify_pdf(raw, trusted_key)
    if raw.startswith(FHIR_BUNDLE_START):
        return verify_fhir(raw, trusted_key)
    if raw.startswith(CSV_HEADER.encode()):
        return verify_csv(raw, trusted_key)
    return verify_jsonl(raw, trusted_key)


# --------------------------------------------------------------------------------------------
# Exports made through the API
# --------------------------------------------------------------------------------------------

FORMATS = ("jsonl", "csv", "fhir", "pdf")
NOTE = "Línea 1\r\nLínea 2\u2028Línea 3\x85fin\x0bvt\x0cff 👩\u200d👩\u200d👧 שלום 𝄞 (é)"
CLOSING_REASON = "Moved to Zürich\u2029(for now)\x1eback in spring"
REOPENING_REASON = '=Returned home; "case" continues'
HOUR = timedelta(hours=1)


@dataclass
class Scene:
    """A case of seven versions, a day and a fraction of a second apart."""

    client: TestClient[Any, Any]
    token: TokenFactory
    case_id: str
    times: list[datetime]  # recorded_at of versions 1..7
    trusted_key: bytes  # from the published PEM, as section 12 says
    signing_key: Ed25519PrivateKey

    async def export(self, fmt: str, token: str) -> bytes:
        response = await self.client.get(f"/v1/cases/{self.case_id}/export?format={fmt}",
                                         headers=bearer(token))
        assert response.status == 200, await response.text()
        return await response.read()

    def supervisor(self) -> str:
        return self.token(role="supervisor", sub="sup-1")

    def auditor(self, start: datetime, end: datetime) -> str:
        return self.token(role="auditor", sub="court-7", cases=[self.case_id],
                          window_from=start, window_to=end)


@pytest.fixture
def published_key(key_file: Path) -> bytes:
    """The agency's public key as a court gets it: the PEM beside the private key."""
    return raw_key_from_pem(Path(f"{key_file}.pub").read_bytes())


@pytest.fixture
def signing_key(key_file: Path) -> Ed25519PrivateKey:
    """The agency's private key, to sign tampered copies again as a key holder could."""
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return private


@pytest.fixture
async def scene(make_records_client: ClientFactory, fresh_database_url: str,
                token: TokenFactory, key_file: Path, published_key: bytes,
                signing_key: Ed25519PrivateKey) -> Scene:
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file))
    first, second = CaseApi(client, token(sub="cm-1")), CaseApi(client, token(sub="cm-2"))
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    case_id = str((await first.call("POST", "/v1/cases", {
        "participant": {"name": "José Ñúñez-Ødegård 李雷 🌻", "preferred_name": "Pepe 😀",
                        "pronouns": "he/him", "external_ref": "DOCKET-2026/١٢٣"},
        "case_manager": "cm-1", "risk_level": "moderate"}, expect=201))["case_id"])
    cases = f"/v1/cases/{case_id}"
    writes: list[tuple[CaseApi, str, dict[str, Any], int]] = [
        (first, "strengths", {"category": "past_success",
                              "description": "Kept a warehouse job for 2 years — never late ✓",
                              "in_their_words": "Nunca falté a un turno.\nSecond line\ttab"},
         201),
        (first, "notes", {"text": NOTE}, 201),
        (supervisor, "transfer", {"case_manager": "cm-2",
                                  "reason": "Caseload balancing —\ncm-1 on leave"}, 200),
        (second, "close", {"outcome": "moved", "reason": CLOSING_REASON}, 200),
        (second, "reopen", {"reason": REOPENING_REASON}, 200),
        (second, "notes", {"text": "-3 is not a formula 🙂"}, 201),
    ]
    times = [clock.now]
    for writer, path, body, status in writes:
        clock.advance(days=1, microseconds=123457)
        times.append(clock.now)
        await writer.call("POST", f"{cases}/{path}", body, expect=status)
    clock.advance(hours=2)
    return Scene(client, token, case_id, times, published_key, signing_key)


async def test_every_format_of_a_case_in_many_scripts_verifies_by_the_document(
        scene: Scene) -> None:
    raw = {fmt: await scene.export(fmt, scene.supervisor()) for fmt in FORMATS}
    assert "\u2028".encode() in raw["jsonl"]  # raw inside a line: split at LF only (section 2)
    results = {fmt: verify(exported, scene.trusted_key) for fmt, exported in raw.items()}
    for result in results.values():
        assert (result.header["first_version"], result.header["last_version"]) == (1, 7)
        assert result.header["exported_by"] == {"sub": "sup-1", "role": "supervisor"}
    events = results["jsonl"].events
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert results["csv"].events == events == results["fhir"].events
    assert events[0]["data"]["participant"]["name"] == "José Ñúñez-Ødegård 李雷 🌻"
    assert events[2]["data"]["text"] == NOTE
    assert events[4]["metadata"]["reason"] == CLOSING_REASON
    assert results["pdf"].chain == {"valid": True, "events_checked": 7,
                                    "head_hash": events[-1]["hash"], "first_broken_link": None}


async def test_the_readable_csv_cells_are_as_the_document_describes(scene: Scene) -> None:
    raw = await scene.export("csv", scene.supervisor())
    rows = [csv_cells(line) for line in raw.split(b"\n")[2:-2]]
    reasons = [row[CSV_COLUMNS.split(",").index("reason")] for row in rows]
    assert reasons[3:6] == ["Caseload balancing — ↵ cm-1 on leave",
                            "Moved to Zürich ↵ (for now) ↵ back in spring",
                            "'" + REOPENING_REASON]
    assert b"\r" not in raw
    assert all(len(row) == 13 for row in rows)


async def test_an_auditors_window_verifies_from_its_anchor(scene: Scene) -> None:
    whole = verify(await scene.export("jsonl", scene.supervisor()), scene.trusted_key).events
    window = scene.auditor(scene.times[2] - HOUR, scene.times[4] + HOUR)
    for fmt in FORMATS:
        result = verify(await scene.export(fmt, window), scene.trusted_key)
        assert (result.header["first_version"], result.header["last_version"]) == (3, 5), fmt
        assert result.header["exported_by"] == {"sub": "court-7", "role": "auditor"}
        if fmt == "pdf":
            assert result.chain is not None
            assert (result.chain["events_checked"], result.chain["head_hash"]) == \
                (3, whole[4]["hash"])
        else:
            assert result.events == whole[2:5], fmt
            assert result.events[0]["prev_hash"] == whole[1]["hash"]  # the anchor


async def test_an_empty_window_verifies_with_no_events(scene: Scene) -> None:
    quiet = scene.auditor(scene.times[1] + HOUR, scene.times[1] + 2 * HOUR)
    for fmt in FORMATS:
        raw = await scene.export(fmt, quiet)
        result = verify(raw, scene.trusted_key)
        assert (result.header["first_version"], result.header["last_version"]) == (3, 2), fmt
        assert (result.events, result.head_hash) == ([], None)
        if fmt == "fhir":
            signature = json.loads(raw)["signature"]
            assert extension(signature["extension"], FHIR_HEAD_HASH) is None
        if fmt == "pdf":
            assert result.chain == {"valid": True, "events_checked": 0, "head_hash": GENESIS,
                                    "first_broken_link": None}


# --------------------------------------------------------------------------------------------
# Tampering: the bytes changed, then signed again with the agency's key or another one
# --------------------------------------------------------------------------------------------


def signature_block(digest: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return {"algorithm": "Ed25519", "digest": f"sha256:{digest.hex()}",
            "value": base64.b64encode(key.sign(digest)).decode(),
            "public_key": base64.b64encode(public).decode(), "key_id": key_id(public)}


def csv_row(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode()


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def resign_jsonl(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    body, last = split_signature_line(raw)
    trailer = json.loads(last) | {"signature": signature_block(hashlib.sha256(body).digest(),
                                                                 key)}
    return body + compact(trailer) + b"\n"


def resign_csv(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    body, last = split_signature_line(raw)
    trailer = json.loads(csv_cells(last)[1])
    trailer["signature"] = signature_block(hashlib.sha256(body).digest(), key)
    return body + csv_row([CSV_TRAILER, compact(trailer).decode()])


def resign_fhir(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    body, last = split_signature_line(raw)
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)

    def url64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "EdDSA", "kid": key_id(public),
              "jwk": {"kty": "OKP", "crv": "Ed25519", "x": url64(public)}}
    signing_input = f"{url64(compact(header))}.{url64(hashlib.sha256(body).digest())}"
    jws = f"{signing_input}.{url64(key.sign(signing_input.encode()))}"
    signature = json.loads(b"{" + last.removeprefix(b"],"))["signature"]
    signature["data"] = base64.b64encode(jws.encode()).decode()
    return body + FHIR_TRAILER_START + compact(signature) + b"}\n"


def resign_pdf(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    document, last = split_signature_line(raw)
    line = json.loads(last[len(PDF_PREFIX):])
    digest = hashlib.sha256(document + canonical(line["export"])
                            + canonical(chain_report(line["chain"]))).digest()
    line["signature"] = signature_block(digest, key)
    return document + PDF_PREFIX + compact(line) + b"\n"


RESIGN: dict[str, Callable[[bytes, Ed25519PrivateKey], bytes]] = {
    "jsonl": resign_jsonl, "csv": resign_csv, "fhir": resign_fhir, "pdf": resign_pdf}


def edit_an_event(raw: bytes) -> bytes:
    """One character of version 3's note changed, in the line that carries it."""
    lines = raw.split(b"\n")
    (place,) = [i for i, line in enumerate(lines) if "Línea 3".encode() in line]
    lines[place] = lines[place].replace("Línea 3".encode(), b"Linea 3")
    return b"\n".join(lines)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "fhir"])
async def test_an_edited_event_line_is_refused(scene: Scene, fmt: str) -> None:
    raw = await scene.export(fmt, scene.supervisor())
    assert verify(raw, scene.trusted_key)
    edited = edit_an_event(raw)
    with pytest.raises(Refused, match="digest"):  # the signature line left as it was
        verify(edited, scene.trusted_key)
    with pytest.raises(Refused, match="broken at version 3: the hash"):  # signed again
        verify(RESIGN[fmt](edited, scene.signing_key), scene.trusted_key)
    with pytest.raises(Refused, match="another key"):  # signed with a key of one's own
        verify(RESIGN[fmt](edited, Ed25519PrivateKey.generate()), scene.trusted_key)


async def test_an_edited_pdf_is_refused(scene: Scene) -> None:
    raw = await scene.export("pdf", scene.supervisor())
    assert verify(raw, scene.trusted_key)
    with pytest.raises(Refused, match="digest"):
        verify(raw.replace(b"%%EOF", b"%%EOG"), scene.trusted_key)
    with pytest.raises(Refused, match="digest"):  # the header the signature line carries
        verify(raw.replace(b'"first_version":1', b'"first_version":2'), scene.trusted_key)
    with pytest.raises(Refused, match="outside the digest"):  # events is checked, not signed
        verify(raw.replace(b'"events":7', b'"events":6'), scene.trusted_key)
    with pytest.raises(Refused, match="another key"):
        verify(resign_pdf(raw, Ed25519PrivateKey.generate()), scene.trusted_key)


# --------------------------------------------------------------------------------------------
# The document itself
# --------------------------------------------------------------------------------------------


def document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def example_blocks(text: str, kind: str) -> list[bytes]:
    """The document's fenced blocks of ``kind`` (pem, jsonl, csv, text), as file bytes."""
    return [block.encode() for block in re.findall(f"```{kind}\n(.*?)```", text, re.DOTALL)]


def test_the_worked_example_verifies_as_the_document_says() -> None:
    text = document()
    (pem,) = example_blocks(text, "pem")
    trusted = raw_key_from_pem(pem)
    assert f"`{key_id(trusted)}`, are the `key_id`" in text
    export, windowed, empty = example_blocks(text, "jsonl")
    (example_csv,) = example_blocks(text, "csv")
    whole, as_csv = verify(export, trusted), verify(example_csv, trusted)
    assert whole.events == as_csv.events
    assert len(whole.events) == 3
    window = verify(windowed, trusted)
    assert (window.header["first_version"], window.header["last_version"]) == (2, 3)
    assert window.events == whole.events[1:]
    assert f"`{whole.events[0]['hash']}`, is the anchor" in text
    emptied = verify(empty, trusted)
    assert (emptied.header["first_version"], emptied.header["last_version"], emptied.events) \
        == (3, 2, [])
    for raw in (export, example_csv, windowed, empty):
        assert f"`{sha256_hex(split_signature_line(raw)[0])}`" in text
    note = {name: whole.events[1][name] for name in HASHED}
    assert f"```text\n{canonical(note).decode()}\n```" in text
    assert f"Its SHA-256 is `{whole.events[1]['hash']}`" in text
    plain = sha256_hex(json.dumps(note, sort_keys=True, separators=(",", ":")).encode())
    assert plain != whole.events[1]["hash"]
    assert f"would give `{plain}`" in text


def test_the_worked_examples_jws_holds_over_the_digest_the_document_gives() -> None:
    text = document()
    (pem,) = example_blocks(text, "pem")
    jws = next(block.decode().strip() for block in example_blocks(text, "text")
               if block.startswith(b"eyJ"))
    protected, payload, value = jws.split(".")
    assert f"`{b64url(payload).hex()}`. `Bundle.signature.data`" in text
    assert json.loads(b64url(protected))["alg"] == "EdDSA"
    signature_holds(raw_key_from_pem(pem), b64url(value), f"{protected}.{payload}".encode())


def test_every_name_this_verifier_relies_on_is_in_the_document() -> None:
    text = document()
    names = [EXPORT_KIND, GENESIS, CSV_HEADER, CSV_TRAILER, CSV_COLUMNS, FHIR_HEADER,
             FHIR_EVENT, FHIR_EVENTS, FHIR_HEAD_HASH, FHIR_TRAILER_START.decode(),
             PDF_PREFIX.decode(), ED25519_SPKI_PREFIX.hex(), "YYYY-MM-DDTHH:MM:SS.ffffffZ",
             "ensure_ascii=False", "application/jose", '"alg":"EdDSA"', "the 32 raw bytes of D",
             *(f"`{name}`" for name in (*EVENT_FIELDS, *CHAIN_FIELDS, *BROKEN_LINK_FIELDS)),
             *(f"`{start}`" for start in FORMULA_STARTS if start != "\t"), "` ↵ `",
             "U+000B", "U+000C", "U+001C", "U+001D", "U+001E", "U+0085", "U+2028", "U+2029",
             "first 16 hex digits", "`last_version + 1`", FHIR_SIGNER, FHIR_KEY_SYSTEM,
             *(f"`{name}`" for name in (*TRAILER_FIELDS, *SIGNATURE_FIELDS, *PDF_LINE_FIELDS)),
             *FHIR_SIGNATURE_TYPE.values()]
    assert [name for name in names if name not in text] == []


def test_this_verifier_uses_none_of_casetrails_own_code() -> None:
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]
    assert [name for name in imported if name.startswith("services")] == []
