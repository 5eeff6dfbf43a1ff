"""The export formats, written line by line.

Every export is: a header line (what, whose, which versions, when, by whom), one line per
recorded event with every field its hash covers, and a trailer line with an Ed25519 signature
over the SHA-256 digest of all the bytes before the trailer. In JSON Lines each of those is a
JSON object; in CSV the header and trailer are rows whose first cell names them and whose
second holds the same JSON, with a row of column names and one row per event between them.
No line holds a raw line break (JSON escapes them), so the trailer is always the last line.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from schemas.events import reason_of
from services.records.chain import ChainLink, canonical_bytes, format_timestamp
from services.records.export.signing import ExportSigner

# What FHIR strings should not hold (R4, "string": no code point below 32 but TAB, LF and CR)
# and what no reader draws: every control character (Unicode category Cc) but those three,
# so the C0 controls, DEL (U+007F) and the C1 controls (U+0080 to U+009F).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# shown in place of each: the Unicode replacement character, which every font a reader will
# have draws (the Control Pictures, U+2400…, are not in DejaVu Sans, which the PDF is set in)
STAND_IN = "\ufffd"


def shown(text: str) -> str:
    """``text`` as the export lays it out for people and FHIR readers: each control character
    but TAB, LF and CR as U+FFFD, so a reader sees that something was there. The recorded
    events keep the text as written (the FHIR Provenance entries, the JSON Lines and CSV
    exports): docs/decisions/0012-fhir-export.md."""
    return _CONTROL.sub(STAND_IN, text)


EXPORT_KIND = "casetrail.case-export"
FORMAT_VERSION = 1
CSV_HEADER_CELL = "#casetrail-export"
CSV_TRAILER_CELL = "#casetrail-signature"
PDF_TRAILER_PREFIX = b"%casetrail-signature "  # a PDF comment, after the document's %%EOF
# The fields each event's hash covers, as the event lines spell them.
CHAIN_FIELDS = ("stream_id", "version", "event_id", "type", "schema_version", "data",
                "metadata", "recorded_at", "prev_hash", "hash")
# CSV adds who and why, read off the metadata, for people reading it in a spreadsheet.
CSV_COLUMNS = ("version", "recorded_at", "type", "actor", "role", "reason", "event_id",
               "schema_version", "data", "metadata", "prev_hash", "hash", "stream_id")


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PDF = "pdf"
    FHIR = "fhir"

    @property
    def media_type(self) -> str:
        return {ExportFormat.JSONL: "application/x-ndjson",
                ExportFormat.CSV: "text/csv; charset=utf-8",
                ExportFormat.PDF: "application/pdf",
                ExportFormat.FHIR: "application/fhir+json"}[self]

    @property
    def file_suffix(self) -> str:
        return "fhir.json" if self is ExportFormat.FHIR else self.value


@dataclass(frozen=True)
class ExportHeader:
    case_id: str
    agency: str
    first_version: int
    last_version: int
    exported_at: datetime
    exported_by: Mapping[str, str]  # sub and role

    def as_dict(self) -> dict[str, Any]:
        return {"export": EXPORT_KIND, "format_version": FORMAT_VERSION,
                "case_id": self.case_id, "agency": self.agency,
                "first_version": self.first_version, "last_version": self.last_version,
                "exported_at": format_timestamp(self.exported_at),
                "exported_by": dict(self.exported_by)}


def header_digest_bytes(header: dict[str, Any]) -> bytes:
    """What a PDF's digest covers after the document: its header (which the signature line
    carries, a PDF having no line for it), canonically."""
    return canonical_bytes(header)


def json_line(value: Any) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8; integers beyond 64 bits the json module's way."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def event_fields(link: ChainLink) -> dict[str, Any]:
    return {"stream_id": link.stream_id, "version": link.version, "event_id": link.event_id,
            "type": link.type, "schema_version": link.schema_version, "data": link.data,
            "metadata": link.metadata, "recorded_at": format_timestamp(link.recorded_at),
            "prev_hash": link.prev_hash, "hash": link.hash}


def csv_line(cells: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode()


def readable_cell(text: str | None) -> str | None:
    """Free text for a readable CSV cell: on one line (the export is read line by line; the
    exact text stays in the metadata cell, which the hash covers) and never read by a
    spreadsheet as a formula."""
    if text is None:
        return None
    flat = " ↵ ".join(text.splitlines())
    return f"'{flat}" if flat.startswith(("=", "+", "-", "@", "\t")) else flat


def signature_block(signer: ExportSigner, digest: bytes) -> dict[str, str]:
    """The trailer's signature: over ``digest``, with the key that checks it."""
    return {"algorithm": "Ed25519", "digest": f"sha256:{digest.hex()}",
            "value": base64.b64encode(signer.sign(digest)).decode(),
            "public_key": base64.b64encode(signer.public_key).decode(),
            "key_id": signer.key_id}


class ExportWriter:
    """Encodes one export, line by line, keeping the digest of every byte it has given out."""

    def __init__(self, export_format: ExportFormat, header: ExportHeader) -> None:
        self._format = export_format
        self._header = header
        self._digest = hashlib.sha256()
        self._events = 0
        self._head_hash: str | None = None

    def header(self) -> bytes:
        header = self._header.as_dict()
        if self._format is ExportFormat.JSONL:
            return self._counted(json_line(header) + b"\n")
        return self._counted(csv_line([CSV_HEADER_CELL, json_line(header).decode()])
                             + csv_line(list(CSV_COLUMNS)))

    def event(self, link: ChainLink) -> bytes:
        self._events += 1
        self._head_hash = link.hash
        fields = event_fields(link)
        if self._format is ExportFormat.JSONL:
            return self._counted(json_line(fields) + b"\n")
        actor = link.metadata.get("actor") or {}
        readable = {"actor": readable_cell(actor.get("sub")),
                    "role": readable_cell(actor.get("role")),
                    "reason": readable_cell(reason_of(link.type, link.schema_version,
                                                      link.data, link.metadata)),
                    "data": json_line(link.data).decode(),
                    "metadata": json_line(link.metadata).decode()}
        return self._counted(csv_line([readable.get(column, fields.get(column))
                                       for column in CSV_COLUMNS]))

    def trailer(self, signer: ExportSigner) -> bytes:
        """The signature line; nothing may be written after it."""
        trailer = {"events": self._events, "head_hash": self._head_hash,
                   "signature": signature_block(signer, self._digest.digest())}
        if self._format is ExportFormat.JSONL:
            return json_line(trailer) + b"\n"
        return csv_line([CSV_TRAILER_CELL, json_line(trailer).decode()])

    def _counted(self, written: bytes) -> bytes:
        self._digest.update(written)
        return written
