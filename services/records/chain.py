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

    def broken_after(self, problem: str, at_version: int | None = None) -> ChainReport:
        """This valid chain, found wanting as a whole: broken at ``at_version`` (the version
        after its last link when not given), an event it does not hold."""
        version = self.events_checked + 1 if at_version is None else at_version
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
        if self._broken is not None:
            return
        expected_prev = link.prev_hash if self._expected_prev is None else self._expected_prev
        problem = None
        if link.version != self._expected_version:
            problem = f"version {link.version} found where {self._expected_version} was expected"
        elif link.prev_hash != expected_prev:
            problem = "prev_hash does not match the previous event's hash"
        elif link.compute_hash() != link.hash:
            problem = "hash does not match the event's content"
        if problem is not None:
            self._break(link, expected_prev, problem)
            return
        self._checked += 1
        self._expected_prev = link.hash
        self._expected_version += 1

    def add_stored(self, link: ChainLink) -> None:
        """``add`` for a link read from the event store, where content with no canonical form
        (a fraction, nesting past what the encoder takes) was put by hand, not by the service:
        the link is broken there. A file being verified is malformed instead (``add`` raises)."""
        try:
            self.add(link)
        except (TypeError, ValueError, RecursionError):
            expected_prev = link.prev_hash if self._expected_prev is None else self._expected_prev
            self._break(link, expected_prev, "the event holds what its canonical form cannot"
                                             " encode; the service never writes that")

    def _break(self, link: ChainLink, expected_prev: str, problem: str) -> None:
        self._broken = ChainReport(False, self._checked, expected_prev, link.version,
                                   link.event_id, problem)

    def report(self) -> ChainReport:
        if self._broken is not None:
            return self._broken
        return ChainReport(True, self._checked, self._expected_prev or GENESIS_HASH)

