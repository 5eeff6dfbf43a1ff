"""Offline verification of an export: its digest, its signature, and the hash chain it carries.

Reads the export once, line by line (constant memory: a line past MAX_LINE_BYTES is refused),
and trusts nothing in it: the digest is recomputed from the bytes, every event's hash from its
fields, and the signature is checked against the public key the verifier trusts (or, without
one, the key the export names, which proves integrity but not origin). It refuses what
docs/export-format.md says a verifier refuses, even in a file signed again with the agency's
key: JSON with a repeated key or a fraction, an event with fields besides its ten, readable CSV
cells that are not the metadata's, a chain report with fields of its own, a key_id that is not
its key's, and a signature line (outside the digest) holding anything the service does not
write there.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.records.chain import (
    ChainCheck,
    ChainLink,
    ChainReport,
    canonical_bytes,
    format_timestamp,
)
from services.records.export import fhir
from services.records.export.formats import (
    CHAIN_FIELDS,
    CSV_COLUMNS,
    CSV_HEADER_CELL,
    CSV_TRAILER_CELL,
    EXPORT_KIND,
    FORMAT_VERSION,
    PDF_TRAILER_PREFIX,
    ExportFormat,
    header_digest_bytes,
    readable_cell,
)
from services.records.export.signing import key_id, signature_holds


class MalformedExport(ValueError):
    """The file is not an export this version can read; the message says where."""


@dataclass
class ExportReport:
    export_format: ExportFormat
    header: dict[str, Any]
    events: int
    chain: ChainReport | None  # None: a PDF made before the service signed its chain's state
    digest_matches: bool
    signature_valid: bool
    key_id: str
    key_trusted: bool | None  # None: no trusted key was given to compare with
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.problems and (self.chain is None or self.chain.valid)
                and self.digest_matches and self.signature_valid
                and self.key_trusted is not False)


def verify_export(lines: Iterable[bytes], trusted_key: bytes | None = None) -> ExportReport:
    """Check an export given as a binary file (read a line at a time, each at most
    MAX_LINE_BYTES) or as its lines (each with its line break, held to the same bound).
    Raises MalformedExport when the file cannot be read as an export at all."""
    reader = _Lines(lines)
    first = reader.next_content()
    if first is None:
        raise MalformedExport("the file is empty" if reader.last is None else
                              "the file has one line; an export has a header and a signature")
    if first.startswith(b"%PDF-"):
        return _verify_pdf(reader, trusted_key)
    if first.startswith(fhir.BUNDLE_START):
        return _verify_fhir(first, reader, trusted_key)
    export_format, header = _header(first, reader)
    chain, events, problems = _read_chain(
        reader, header, lambda line: _event(export_format, line, reader.number, reader.columns))
    trailer = _trailer(export_format, reader.last, reader.number)
    problems += _compare_counts(header, trailer, events, chain)
    digest = reader.digest.digest()
    return _report(export_format, header, events, chain,
                   _signed(trailer["signature"], digest=digest), digest, trusted_key, problems)


def _read_chain(reader: _Lines, header: dict[str, Any],
                parse: Callable[[bytes], ChainLink | None],
                ) -> tuple[ChainReport, int, list[str]]:
    """Every line up to the trailer, through ``parse`` (None: a line that is no event); the
    chain they make, how many events, and what is wrong besides the chain."""
    check = ChainCheck(_int_field(header, "first_version", "the header"))
    events, problems = 0, []
    while (line := reader.next_content()) is not None:
        link = parse(line)
        if link is None:
            continue
        events += 1
        if link.stream_id != header.get("case_id"):
            problems.append(f"line {reader.number}: an event of another case ({link.stream_id})")
        try:
            check.add(link)
        except RecursionError as error:
            raise MalformedExport(f"line {reader.number}: data nested too deeply") from error
    return check.report(), events, problems


def _verify_pdf(reader: _Lines, trusted_key: bytes | None) -> ExportReport:
    """A PDF: every byte but the signature line, then its header and the chain's state as the
    service found it (both carried in that line), make the digest. The events are printed for
    people, so the chain itself is the service's word, signed; the JSON Lines or CSV export of
    the same versions lets anyone recompute it."""
    while reader.next_content() is not None:
        pass
    line = reader.last or b""
    if not line.startswith(PDF_TRAILER_PREFIX):
        raise MalformedExport(f"line {reader.number}: the last line is not the signature"
                              " (the export is cut short)")
    trailer = _json(line[len(PDF_TRAILER_PREFIX):], reader.number)
    if not isinstance(trailer, dict) or not isinstance(trailer.get("signature"), dict):
        raise MalformedExport(f"line {reader.number}: the signature line holds no signature")
    _only_fields(trailer, _PDF_TRAILER_FIELDS if "chain" in trailer
                 else _FIRST_PDF_TRAILER_FIELDS, f"line {reader.number}: the signature line")
    header = _checked_header(trailer.get("export"), "the signature line's export")
    reader.digest.update(header_digest_bytes(header))
    events = trailer.get("events")
    if type(events) is not int:
        raise MalformedExport("the signature line's events is not a whole number")
    problems = [] if events == _promised_events(header) else [
        f"the header promises versions {header['first_version']} to {header['last_version']};"
        f" the signature line counts {events} events"]
    chain = None
    if "chain" in trailer:  # absent from PDFs made before the service checked the chain
        chain = _pdf_chain(trailer["chain"])
        reader.digest.update(canonical_bytes(chain.as_dict()))  # only the checked fields
        if chain.valid and chain.events_checked != events:
            problems.append(f"the chain's state counts {chain.events_checked} events, the"
                            f" signature line {events}")
    digest = reader.digest.digest()
    return _report(ExportFormat.PDF, header, events, chain,
                   _signed(trailer["signature"], digest=digest), digest, trusted_key, problems)


_CHAIN_REPORT_FIELDS = {"valid", "events_checked", "head_hash", "first_broken_link"}
_BROKEN_LINK_FIELDS = {"version", "event_id", "problem"}
# What the signature line holds; it is outside the digest, so a field besides these would be
# the file's unsigned word (docs/export-format.md, section 13).
_TRAILER_FIELDS = ("events", "head_hash", "signature")
_PDF_TRAILER_FIELDS = ("export", "events", "chain", "signature")
# A PDF of the release of 2026-11-23: no chain, and a head_hash that nothing checks (its
# chain is not checked either: the summary says so)
_FIRST_PDF_TRAILER_FIELDS = ("export", "events", "head_hash", "signature")
_SIGNATURE_FIELDS = ("algorithm", "digest", "value", "public_key", "key_id")


def _pdf_chain(found: Any) -> ChainReport:
    """The chain's state a PDF's signature line carries (``ChainReport.as_dict``), and nothing
    else: D covers only these fields, so any other would be the file's unsigned word."""
    if not (isinstance(found, dict) and set(found) == _CHAIN_REPORT_FIELDS
            and _typed(found, valid=bool, events_checked=int, head_hash=str)):
        raise MalformedExport("the signature line's chain is not a chain report")
    broken = found.get("first_broken_link")
    if found["valid"] and broken is None:
        return ChainReport(True, found["events_checked"], found["head_hash"])
    if found["valid"] or not (isinstance(broken, dict) and set(broken) == _BROKEN_LINK_FIELDS
                              and _typed(broken, version=int, event_id=str, problem=str)):
        raise MalformedExport("the signature line's chain is not a chain report")
    return ChainReport(False, found["events_checked"], found["head_hash"], broken["version"],
                       broken["event_id"], broken["problem"])


def _only_fields(found: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    extra = sorted(set(found) - set(fields))
    if extra:
        raise MalformedExport(f"{where} holds fields besides {', '.join(fields)}, which"
                              f" nothing signs: {', '.join(extra)}")


def _typed(found: dict[str, Any], **kinds: type) -> bool:
    """Whether each named field holds a value of exactly its kind (JSON's, not a subclass)."""
    return all(type(found.get(name)) is kind for name, kind in kinds.items())


@dataclass(frozen=True)
class _Signed:
    """A signature as an export carries it: over ``message``, claiming ``digest``."""

    digest: str  # "sha256:<hex>", the digest the signer computed
    public_key: bytes
    value: bytes
    message: bytes
    key_id: str  # the key it names, which must be its public key's


def _signed(signature: dict[str, Any], *, digest: bytes) -> _Signed:
    """A signature block of JSON Lines, CSV or PDF: made over the digest itself."""
    _only_fields(signature, _SIGNATURE_FIELDS, "the signature block")
    if signature.get("algorithm") != "Ed25519":
        raise MalformedExport(f"the signature's algorithm is {signature.get('algorithm')!r},"
                              " not Ed25519")
    return _Signed(str(signature.get("digest")), _b64(signature, "public_key"),
                   _b64(signature, "value"), digest, str(signature.get("key_id")))


def _report(export_format: ExportFormat, header: dict[str, Any], events: int,
            chain: ChainReport | None, signed: _Signed, digest: bytes,
            trusted_key: bytes | None, problems: list[str]) -> ExportReport:
    signer = key_id(signed.public_key)
    if signed.key_id != signer:
        problems.append(f"the signature names key {signed.key_id}, but its public key is"
                        f" {signer}")
    return ExportReport(
        export_format, header, events, chain,
        digest_matches=signed.digest == f"sha256:{digest.hex()}",
        signature_valid=signature_holds(signed.public_key, signed.value, signed.message),
        key_id=signer,
        key_trusted=None if trusted_key is None else trusted_key == signed.public_key,
        problems=problems)


# --------------------------------------------------------------------------------------------
# FHIR
# --------------------------------------------------------------------------------------------


def _verify_fhir(first: bytes, reader: _Lines, trusted_key: bytes | None) -> ExportReport:
    """A FHIR Bundle: its header rides in the Bundle's meta, each event in its Provenance,
    and the signature is a JWS over the digest of every line before the last."""
    opening, header = _fhir_header(first)
    chain, events, problems = _read_chain(
        reader, header, lambda line: _fhir_event(line, reader.number))
    closing, signature = _fhir_signature(reader.last, reader.number)
    repeated = sorted((set(opening) | {"entry"}) & set(closing))
    if repeated:
        raise MalformedExport(f"the Bundle repeats the key {repeated[0]!r}")
    where = f"line {reader.number}"
    _only_fields(closing, ("signature",), f"{where}: the Bundle after its entries")
    trailer = {
        "events": (_extension(signature, fhir.EVENTS_EXTENSION, where) or {}).get(
            "valueInteger"),
        "head_hash": (_extension(signature, fhir.HEAD_HASH_EXTENSION, where) or {}).get(
            "valueString")}
    problems += _compare_counts(header, trailer, events, chain)
    digest = reader.digest.digest()
    signed = _jws(signature, digest=digest)
    problems += _as_written(signature, header, trailer, key_id(signed.public_key), where)
    return _report(ExportFormat.FHIR, header, events, chain, signed, digest, trusted_key,
                   problems)


def _as_written(signature: dict[str, Any], header: dict[str, Any], trailer: dict[str, Any],
                signer: str, where: str) -> list[str]:
    """What in ``Bundle.signature`` is not as the service writes it for this header, key and
    counts: the line is outside the digest, so anything else would be the file's unsigned
    word (a problem, as a key_id that is not the key's is, so the key's verdict still
    shows)."""
    expected = fhir.signature_element(signer, str(header.get("exported_at")),
                                      str(signature.get("data")), trailer["events"],
                                      trailer["head_hash"])
    differing = sorted(name for name in set(signature) | set(expected)
                       if signature.get(name) != expected.get(name))
    return [f"{where}: Bundle.signature is not as the service writes it, and nothing signs"
            f" it: {', '.join(differing)}"] if differing else []


def _fhir_header(line: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Bundle's members before its entries, and the export header in its meta."""
    if not line.endswith(fhir.OPENING_END):
        raise MalformedExport("line 1: the Bundle's opening does not end with its entries")
    bundle = _json(line[:-len(fhir.OPENING_END)] + b"}", 1)
    meta = bundle.get("meta") if isinstance(bundle, dict) else None
    extension = _extension(meta, fhir.HEADER_EXTENSION, "line 1")
    if extension is None:
        raise MalformedExport(f"line 1: the Bundle's meta holds no {EXPORT_KIND} header")
    return bundle, _checked_header(_json(str(extension.get("valueString")).encode(), 1))


def _fhir_event(line: bytes, number: int) -> ChainLink | None:
    """The event a Provenance entry carries; None for the plan's other resources."""
    if line.startswith(b",") != (number > 2):  # the Bundle is one JSON document
        raise MalformedExport(f"line {number}: every entry but the first starts with a comma,"
                              " and only those")
    entry = _json(line.removeprefix(b","), number)
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict):
        raise MalformedExport(f"line {number}: not a Bundle entry")
    if resource.get("resourceType") != "Provenance":
        return None
    extension = _extension(resource, fhir.EVENT_EXTENSION, f"line {number}")
    fields = None if extension is None else _json(
        str(extension.get("valueString")).encode(), number)
    if not isinstance(fields, dict):
        raise MalformedExport(f"line {number}: a Provenance without its recorded event")
    return _link(fields, number)


def _extension(element: Any, url: str, where: str) -> dict[str, Any] | None:
    """The element's extension of ``url``, which it holds once at most."""
    extensions = element.get("extension") if isinstance(element, dict) else None
    found = [extension for extension in extensions if isinstance(extension, dict)
             and extension.get("url") == url] if isinstance(extensions, list) else []
    if len(found) > 1:
        raise MalformedExport(f"{where}: the extension {url} appears more than once")
    return found[0] if found else None


def _fhir_signature(line: bytes | None, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Bundle's members after its entries, and its signature."""
    if line is None or not line.startswith(fhir.TRAILER_START):
        raise MalformedExport(f"line {number}: the last line is not the signature"
                              " (the export is cut short)")
    closing = _json(b"{" + line.removeprefix(b"],"), number)
    signature = closing.get("signature") if isinstance(closing, dict) else None
    if not isinstance(signature, dict):
        raise MalformedExport(f"line {number}: the signature line holds no signature")
    if signature.get("sigFormat") != "application/jose":
        raise MalformedExport(f"line {number}: the signature is not a JWS (sigFormat"
                              f" {signature.get('sigFormat')!r})")
    return closing, signature


def _jws(signature: dict[str, Any], *, digest: bytes) -> _Signed:
    """The Bundle's signature: a compact JWS, EdDSA, whose payload is the digest. It is
    checked over the digest of the bytes as they are, as the other formats' are, not over
    the one the file names: an edited Bundle's signature no longer holds either."""
    try:
        compact = _b64(signature, "data").decode("ascii")
        encoded_header, encoded_payload, encoded_signature = compact.split(".")
        header = _strict_json(_b64url(encoded_header))
        public_key = _b64url(header["jwk"]["x"])
        if header.get("alg") != "EdDSA" or header["jwk"].get("crv") != "Ed25519":
            raise MalformedExport(f"the signature's algorithm is {header.get('alg')!r} over"
                                  f" {header['jwk'].get('crv')!r}, not EdDSA over Ed25519")
        actual = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        return _Signed(f"sha256:{_b64url(encoded_payload).hex()}", public_key,
                       _b64url(encoded_signature), f"{encoded_header}.{actual}".encode(),
                       str(header.get("kid")))
    except (ValueError, KeyError, TypeError, AttributeError,
            RecursionError) as error:  # MalformedExport too
        if isinstance(error, MalformedExport):
            raise
        raise MalformedExport(f"the signature is not a compact JWS ({error})") from error


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# The longest line the verifier reads, its line break included. Every format's path reads
# through _Lines, so a file with no line break (a 1 GB disk image, a cut-off download) costs
# this much memory, not its size, and is refused. The service writes nothing near it but a FHIR
# plan: an event's line in JSON Lines, CSV or a FHIR Provenance is bounded by the event schemas
# (texts of 4,000 characters, lists of 20: schemas/events.py) and the metadata's ids, under
# 250 KB even with every character escaped (six bytes as \u0001, seven in FHIR's valueString);
# a PDF's longest lines are its compressed streams (ASCII85, one line per stream: 12 KB for a
# page of CJK text); headers and signature lines hold a few KB. FHIR's CarePlan, though, is one
# line holding every step, strength, requirement and review of the plan, so it grows with the
# plan: 11.5 MB for the 20,000-event case of bench/big_case.py (500 goals, 2,500 steps of
# 4,000 characters, a 24 MB plan document). 64 MiB is 5.8 times that, a plan the service
# itself holds at about 3.5 times its document on every read (docs/performance.md).
MAX_LINE_BYTES = 64 << 20


def _bounded(source: Iterable[bytes]) -> Iterator[bytes]:
    """The source's lines, none longer than MAX_LINE_BYTES: a binary file is read with that
    bound, so a line past it is refused having read one byte more than the bound, never the
    whole line; lines given already split are held to the same bound."""
    readline = getattr(source, "readline", None)
    lines = _read_lines(readline) if callable(readline) else source
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_BYTES:
            raise MalformedExport(f"line {number}: longer than {MAX_LINE_BYTES >> 20} MiB"
                                  f" ({MAX_LINE_BYTES:,} bytes), too long to be an export"
                                  " line")
        yield line


def _read_lines(readline: Callable[[int], bytes]) -> Iterator[bytes]:
    while line := readline(MAX_LINE_BYTES + 1):
        yield line


class _Lines:
    """The export's lines, one behind: the digest covers every line but the last (the
    trailer), which is only known to be last when the file ends. Every format reads its
    lines here, each at most MAX_LINE_BYTES."""

    def __init__(self, source: Iterable[bytes]) -> None:
        self._lines = _bounded(source)
        self._pending = next(self._lines, None)
        self.digest = hashlib.sha256()
        self.number = 0
        self.last: bytes | None = None
        self.columns: list[str] = []

    def next_content(self) -> bytes | None:
        """The next line that is not the last one (None at the trailer)."""
        following = next(self._lines, None)
        if following is None:
            self.last = self._pending
            self.number += 1
            if self.last is not None and not self.last.endswith(b"\n"):
                raise MalformedExport(f"line {self.number}: the file does not end with a line"
                                      " break (the export is cut short)")
            return None
        line, self._pending = self._pending, following
        assert line is not None
        self.digest.update(line)
        self.number += 1
        return line


def _header(line: bytes, reader: _Lines) -> tuple[ExportFormat, dict[str, Any]]:
    if line.startswith(b"{"):
        return ExportFormat.JSONL, _checked_header(_json(line, 1))
    cells = _csv_cells(line, 1)
    if len(cells) != 2 or cells[0] != CSV_HEADER_CELL:
        raise MalformedExport("line 1: neither a JSON Lines nor a CSV export header")
    header = _checked_header(_json(cells[1].encode(), 1))
    columns = reader.next_content()
    if columns is None:
        raise MalformedExport("line 2: the column names are missing")
    reader.columns = _csv_cells(columns, 2)
    if reader.columns != list(CSV_COLUMNS):
        raise MalformedExport(f"line 2: the column names are not {','.join(CSV_COLUMNS)}")
    return ExportFormat.CSV, header


def _checked_header(header: Any, where: str = "line 1") -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("export") != EXPORT_KIND:
        raise MalformedExport(f"{where}: not a {EXPORT_KIND} header")
    if header.get("format_version") != FORMAT_VERSION:
        raise MalformedExport(f"{where}: format_version {header.get('format_version')!r} is "
                              f"not one this verifier reads ({FORMAT_VERSION})")
    by = header.get("exported_by")
    if not isinstance(by, dict) or not all(isinstance(by.get(k), str) for k in ("sub", "role")):
        raise MalformedExport(f"{where}: exported_by is not an object with a sub and a role")
    return header


def _event(export_format: ExportFormat, line: bytes, number: int,
           columns: list[str]) -> ChainLink:
    if export_format is ExportFormat.JSONL:
        event = _json(line, number)
        if not isinstance(event, dict):
            raise MalformedExport(f"line {number}: not an event object")
        return _link(event, number)
    cells = _csv_cells(line, number)
    if len(cells) != len(columns):
        raise MalformedExport(f"line {number}: {len(cells)} cells for {len(columns)} columns")
    row = dict(zip(columns, cells, strict=True))
    fields: dict[str, Any] = {name: row[name] for name in CHAIN_FIELDS}
    for name in ("version", "schema_version"):
        value = fields[name]
        if value.isascii() and value.isdigit():
            try:
                fields[name] = int(value)
            except ValueError as error:  # past Python's 4,300 digits: no version has them
                raise MalformedExport(f"line {number}: the {name} cell is too long to be"
                                      " one") from error
    fields["data"] = _json(fields["data"].encode(), number)
    fields["metadata"] = _json(fields["metadata"].encode(), number)
    link = _link(fields, number)
    _check_readable(row, link.metadata, number)
    return link


def _check_readable(row: dict[str, str], metadata: Mapping[str, Any], number: int) -> None:
    """The cells written for people are the metadata's, as the export writes them (the
    reason only where the metadata holds one: docs/export-format.md, section 8)."""
    actor = metadata.get("actor")
    actor = actor if isinstance(actor, dict) else {}
    expected = {"actor": actor.get("sub"), "role": actor.get("role")}
    if metadata.get("reason"):
        expected["reason"] = metadata["reason"]
    for column, value in expected.items():
        if row[column] != (readable_cell(str(value)) if value is not None else ""):
            raise MalformedExport(f"line {number}: the {column} cell is not the metadata's")


def _link(fields: dict[str, Any], number: int) -> ChainLink:
    where = f"line {number}"
    extra = sorted(set(fields) - set(CHAIN_FIELDS))
    if extra:
        raise MalformedExport(f"{where}: the event holds fields besides its ten:"
                              f" {', '.join(extra)}")
    try:
        return ChainLink(
            str(fields["stream_id"]), _int_field(fields, "version", where),
            str(fields["event_id"]), str(fields["type"]),
            _int_field(fields, "schema_version", where), _object(fields, "data", where),
            _object(fields, "metadata", where), _time(fields["recorded_at"], where),
            str(fields["prev_hash"]), str(fields["hash"]))
    except KeyError as error:
        raise MalformedExport(f"{where}: the event has no {error.args[0]}") from error


def _time(value: Any, where: str) -> datetime:
    """The time as the export writes it, in the canonical spelling the hash is over; any
    other spelling is refused, so a check never depends on the checker (a time without a
    zone would be read in their local time)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as error:
        raise MalformedExport(f"{where}: recorded_at is not an RFC 3339 time") from error
    try:
        canonical = moment.tzinfo is not None and format_timestamp(moment) == value
    except OverflowError as error:  # in UTC, before year 1 or after 9999
        raise MalformedExport(f"{where}: recorded_at is out of range") from error
    if not canonical:
        raise MalformedExport(f"{where}: recorded_at is not in the canonical form"
                              " YYYY-MM-DDTHH:MM:SS.ffffffZ (docs/export-format.md)")
    return moment


def _trailer(export_format: ExportFormat, line: bytes | None, number: int) -> dict[str, Any]:
    if line is None:
        raise MalformedExport("the signature line is missing")
    if export_format is ExportFormat.CSV:
        cells = _csv_cells(line, number)
        if len(cells) != 2 or cells[0] != CSV_TRAILER_CELL:
            raise MalformedExport(f"line {number}: the last line is not the signature row"
                                  " (the export is cut short)")
        line = cells[1].encode()
    trailer = _json(line, number)
    if not isinstance(trailer, dict) or not isinstance(trailer.get("signature"), dict):
        raise MalformedExport(f"line {number}: the last line is not the signature"
                              " (the export is cut short)")
    _only_fields(trailer, _TRAILER_FIELDS, f"line {number}: the signature line")
    return trailer


def _compare_counts(header: dict[str, Any], trailer: dict[str, Any], events: int,
                    chain: ChainReport) -> list[str]:
    problems = []
    counted = trailer.get("events")
    if type(counted) is not int or counted != events:
        problems.append(f"the signature line counts {counted} events;"
                        f" the export holds {events}")
    if events != _promised_events(header):
        problems.append(f"the header promises versions {header['first_version']} to "
                        f"{header['last_version']}; the export holds {events} events")
    if not events and trailer.get("head_hash") is not None:
        problems.append("the signature line names a head_hash; the export holds no events")
    elif chain.valid and events and trailer.get("head_hash") != chain.head_hash:
        problems.append("the signature line's head_hash is not the last event's hash")
    return problems


def _promised_events(header: dict[str, Any]) -> int:
    """How many events the header's version range holds."""
    return max(_int_field(header, "last_version", "the header")
               - _int_field(header, "first_version", "the header") + 1, 0)


def _json(raw: bytes, number: int) -> Any:
    try:
        return _strict_json(raw)
    except ValueError as error:  # MalformedExport included
        raise MalformedExport(f"line {number}: not valid JSON ({error})") from error
    except RecursionError as error:
        raise MalformedExport(f"line {number}: JSON nested too deeply") from error


def _strict_json(raw: bytes) -> Any:
    """JSON as the service writes it: no fractions, no non-numbers, no repeated keys (of
    which a reader would take one value or another: docs/export-format.md, section 2)."""
    found = json.loads(raw, parse_float=_no_fractions, parse_constant=_no_fractions,
                       object_pairs_hook=_no_repeated_keys)
    if b"\\u" in raw:  # an escape may spell half a surrogate pair: no UTF-8 text holds one
        _no_lone_surrogates(found)
    return found


def _no_lone_surrogates(value: Any) -> None:
    """Strings as UTF-8 can hold them: JSON lets ``\\ud800`` stand alone, and the chain's
    encoding of it failed (a traceback, not NOT VERIFIED)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as error:
            raise MalformedExport("a string holds half a surrogate pair (an escape from"
                                  " \\ud800 to \\udfff standing alone), which no text"
                                  " the service writes holds") from error
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_lone_surrogates(key)
            _no_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogates(item)


def _no_fractions(text: str) -> Any:
    raise MalformedExport(f"{text} is not a whole number; recorded events hold none")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        repeated = next(key for key, times in Counter(k for k, _ in pairs).items() if times > 1)
        raise MalformedExport(f"an object repeats the key {repeated!r}")
    return found


def _csv_cells(line: bytes, number: int) -> list[str]:
    try:
        rows = list(csv.reader([line.decode()]))
    except (UnicodeDecodeError, csv.Error) as error:
        raise MalformedExport(f"line {number}: not a CSV row ({error})") from error
    if len(rows) != 1:
        raise MalformedExport(f"line {number}: not one CSV row")
    return rows[0]


def _int_field(fields: dict[str, Any], name: str, where: str) -> int:
    value = fields.get(name)
    if type(value) is not int:
        raise MalformedExport(f"{where}: {name} is not a whole number")
    return value


def _object(fields: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = fields[name]
    if not isinstance(value, dict):
        raise MalformedExport(f"{where}: {name} is not a JSON object")
    return value


def _b64(signature: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(str(signature.get(name, "")), validate=True)
    except (binascii.Error, ValueError) as error:
        raise MalformedExport(f"the signature's {name} is not base64") from error


def _versions(header: dict[str, Any]) -> str:
    first, last = header.get("first_version"), header.get("last_version")
    if isinstance(first, int) and isinstance(last, int) and first == last + 1:
        # an auditor's window in which nothing was recorded: the range is empty
        return f"none: nothing was recorded in the window; the case stood at version {last}"
    return f"versions {first} to {last}"


def summary(report: ExportReport) -> list[str]:
    """The report as a person reads it, ending with the verdict."""
    header, chain = report.header, report.chain
    by = header["exported_by"]  # an object with a sub and a role (_checked_header)
    lines = [f"export:    case {header.get('case_id')} (agency {header.get('agency')}),"
             f" {report.export_format.value}, exported {header.get('exported_at')}"
             f" by {by.get('sub')} ({by.get('role')})",
             f"events:    {report.events} ({_versions(header)})"]
    checked_by = (" (as the service found it when it made this PDF, signed; the JSON Lines"
                  " export of the same versions lets you recompute it)"
                  if report.export_format is ExportFormat.PDF else "")
    if chain is None:
        lines.append("chain:     not checked: this PDF was made before the service signed the"
                     " chain's state; the JSON Lines or CSV export of the same versions"
                     " carries the chain")
    elif report.events == 0:
        lines.append("chain:     no events in this export")
    elif not chain.valid:
        lines.append(f"chain:     BROKEN at version {chain.broken_at_version} (event"
                     f" {chain.broken_event_id}): {chain.problem}{checked_by}")
    elif header.get("first_version") != 1 and report.events:
        lines.append(f"chain:     intact from version {header.get('first_version')}; earlier"
                     " events are outside this export, so its first prev_hash is taken as"
                     f" given (the signature covers it){checked_by}")
    else:
        lines.append(f"chain:     intact, head {chain.head_hash}{checked_by}")
    lines.append("digest:    " + ("matches the content" if report.digest_matches
                                  else "DOES NOT MATCH the content"))
    trust = {None: "not compared with a trusted key (pass --public-key to check who signed)",
             True: "the trusted key", False: "NOT the trusted key"}[report.key_trusted]
    lines.append(f"signature: {'valid' if report.signature_valid else 'INVALID'},"
                 f" key {report.key_id}: {trust}")
    lines += [f"problem:   {problem}" for problem in report.problems]
    if not report.ok:
        lines.append("NOT VERIFIED")
    elif report.key_trusted is None:  # anyone can sign with a key of their own making
        lines.append("VERIFIED (intact, but its origin is unchecked: pass --public-key)")
    else:
        lines.append("VERIFIED")
    return [_visible(line) for line in lines]


def _visible(text: str) -> str:
    """Text from the file as plain characters: a line break, a terminal code or a bidi
    override in it must not print a verdict of its own or hide the real one."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
