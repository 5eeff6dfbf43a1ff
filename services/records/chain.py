"""The per-stream SHA-256 hash chain: canonical encoding, hashing and verification.

Pure functions, so the service, the verify endpoint and the offline ``casetrail verify`` all
compute exactly the same thing. The canonical form is JSON with sorted keys, no insignificant
whitespace, UTF-8, and timestamps as RFC 3339 UTC with microseconds. Floats are refused: jsonb
may re-spell them (1.0 → 1), which would silently change a hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS_HASH = "0" * 64
_FLOATS_REFUSED = "floats are not allowed in recorded events; use strings or integers"


def format_timestamp(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # isoformat pads the year to four digits; strftime does not
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _is_plain(value: Any) -> bool:
    """Only dicts with str keys, lists, tuples, str, int, bool and None: the values that orjson
    and the json module spell alike. Floats are refused: jsonb may re-spell them (1.0 → 1)."""
    kind = type(value)
    if kind is dict:
        return all(type(key) is str for key in value) and all(map(_is_plain, value.values()))
    if kind is list or kind is tuple:
        return all(map(_is_plain, value))
    if kind is float:
        raise TypeError(_FLOATS_REFUSED)
    return kind is str or kind is int or kind is bool or value is None


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError(_FLOATS_REFUSED)
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding: ``json.dumps`` with sorted keys, compact separators and UTF-8.

    orjson writes the same bytes for plain values, ten times faster; anything else (a subclass,
    an integer beyond 64 bits) goes the reference way, which also raises for what JSON cannot
    hold.
    """
    if _is_plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    return reference_canonical_bytes(value)


def reference_canonical_bytes(value: Any) -> bytes:
    _refuse_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class ChainLink:
    """The hashed fields of one recorded event."""

    stream_id: str
    version: int
    event_id: str
    type: str
    schema_version: int
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]
    recorded_at: datetime
    prev_hash: str
    hash: str = ""

    def canonical(self) -> bytes:
        return canonical_bytes({
            "stream_id": self.stream_id,
            "version": self.version,
            "event_id": self.event_id,
            "type": self.type,
            "schema_version": self.schema_version,
            "data": self.data,
            "metadata": self.metadata,
            "recorded_at": format_timestamp(self.recorded_at),
            "prev_hash": self.prev_hash,
        })

    def compute_hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    valid: bool
    events_checked: int
    head_hash: str
    broken_at_version: int | None = None
    broken_event_id: str | None = None
    problem: str | None = None

    def reaching(self, version: int) -> ChainReport:
        """This report, broken where a valid chain stops short of ``version``."""
        if not self.valid or self.events_checked >= version:
            return self
        return self._wanting(self.events_checked + 1, f"version {self.events_checked + 1} is"
                             f" missing: the case's record stands at version {version}")

    def ending_at(self, version: int, last_hash: str) -> ChainReport:
        """This report, broken where a valid whole chain does not end at the case's head
        (``version``, ``last_hash``): an append moves both in one transaction, so no event
        lies past the head, and the last one's hash is the head's."""
        if not self.valid:
            return self
        if self.events_checked > version:
            return self._wanting(version + 1, f"version {version + 1} lies past the case's head"
                                 f" (version {version}): no write put it there")
        if self.events_checked == version and last_hash != self.head_hash:
            return self._wanting(version, "the case's head names another hash for its last"
                                          " event")
        return self

    def _wanting(self, version: int, problem: str) -> ChainReport:
        return ChainReport(False, self.events_checked, self.head_hash, version, None, problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "events_checked": self.events_checked,
            "head_hash": self.head_hash,
            "first_broken_link": None if self.valid else {
                "version": self.broken_at_version,
                "event_id": self.broken_event_id,
                "problem": self.problem,
            },
        }


def _hash_problem(link: ChainLink, *, stored: bool) -> str | None:
    """What is wrong with the link's own hash, if anything."""
    try:
        computed = link.compute_hash()
    except (TypeError, ValueError, RecursionError):
        if not stored:
            raise
        return ("the event holds what its canonical form cannot encode; the service never"
                " writes that")
    return None if computed == link.hash else "hash does not match the event's content"


class ChainCheck:
    """Checks links one at a time, in version order, and keeps the first that does not hold.

    A chain is checked from its first event (version 1, after the genesis hash) unless
    ``first_version`` says it starts later: then the first link's own ``prev_hash`` anchors it
    (an export of an audit window holds only the window's events).
    """

    def __init__(self, first_version: int = 1) -> None:
        self._expected_version = first_version
        self._expected_prev: str | None = GENESIS_HASH if first_version == 1 else None
        self._checked = 0
        self._broken: ChainReport | None = None

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def add(self, link: ChainLink) -> None:
        """The next link of a file being verified: content with no canonical form raises (the
        file is malformed)."""
        self._add(link, stored=False)

    def add_stored(self, link: ChainLink) -> None:
        """The next link as read from the event store, where content with no canonical form
        (a fraction, nesting past what the encoder takes) was put by hand, not by the service:
        the link is broken there."""
        self._add(link, stored=True)

    def _add(self, link: ChainLink, *, stored: bool) -> None:
        if self._broken is not None:
            return
        expected_prev = link.prev_hash if self._expected_prev is None else self._expected_prev
        if link.version != self._expected_version:
            problem: str | None = (f"version {link.version} found where"
                                   f" {self._expected_version} was expected")
        elif link.prev_hash != expected_prev:
            problem = "prev_hash does not match the previous event's hash"
        else:
            problem = _hash_problem(link, stored=stored)
        if problem is not None:
            self._broken = ChainReport(False, self._checked, expected_prev, link.version,
                                       link.event_id, problem)
            return
        self._checked += 1
        self._expected_prev = link.hash
        self._expected_version += 1

    def report(self) -> ChainReport:
        if self._broken is not None:
            return self._broken
        return ChainReport(True, self._checked, self._expected_prev or GENESIS_HASH)

