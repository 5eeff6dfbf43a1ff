"""Audit (session 20): hostile input on every write.

The promise under test (design.md, Security: "Validation at the edge: unknown fields refused,
sizes bounded, every bad input gets a clear 4xx problem and writes nothing; the server never
answers 500 to any input"; README: "Errors are RFC 9457 problem bodies
(`application/problem+json`) with a field-level `errors` list"), on every records write of
``services/records/http/routes.py`` and on the notifier's ``PUT /v1/preferences/{user}``.

Bodies are drawn with hypothesis (derandomized, so every run sends the same requests), each one
a valid body with one thing made hostile: a field of the wrong type, text the field cannot
hold, a bad date, an unknown or repeated key, JSON that is not an object or not JSON at all, a
media type that is not JSON; carried with a Content-Length or chunked, with or without a BOM.
Each answer must be a 4xx problem (type, title, status; a 422 names the field to blame) and the
store must be unchanged. The valid body itself, and harmless variants of it, must still
succeed. A last group probes the HTTP layer with raw sockets (lengths that lie, bodies past
the limit, Expect, bytes that are not ASCII in headers, transfer codings) and ids in the path
spelled other ways.

tests/test_bad_input.py, test_edge_hardening.py, test_query_fuzz.py and test_wordless_text.py
cover the fixed cases; this file draws beyond them and does not repeat them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import available_timezones

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from tests.conftest import TokenFactory, bearer
from tests.notifier_helpers import NotifierRig
from tests.records_api import CaseApi, event_count
from tests.test_authorization import Case, build_case

RECORDS_MAX_BODY = 256 * 1024  # Settings.max_body_bytes, the README's default
NOTIFIER_MAX_BODY = 64 * 1024
EXAMPLES_PER_WRITE = 45
EXAMPLES_FOR_PREFERENCES = 160

VALIDATION = frozenset({422})
NUL_OR_VALIDATION = frozenset({400, 422})  # NUL is refused before parsing (400) or by a field
MALFORMED = frozenset({400})
TOO_LARGE = frozenset({413})
MEDIA = frozenset({415})
BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------
# What each write takes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class F:
    """A body field as the contract states it: its kind, whether it must be given, whether
    ``null`` is a value it takes, its length limit and (for lists) how many items."""

    path: str
    kind: str  # text userid email literal date uuid uuids titles names object bool hhmm zone
    required: bool = False
    nullable: bool = True
    limit: int = 0
    choices: tuple[str, ...] = ()
    max_items: int = 20


def text(path: str, limit: int, *, required: bool = False, nullable: bool = True) -> F:
    return F(path, "text", required, nullable and not required, limit)


def literal(path: str, *choices: str, required: bool = False, nullable: bool = True) -> F:
    return F(path, "literal", required, nullable and not required, choices=choices)


TITLE, NAME, TEXT, PRONOUNS, REF = 200, 200, 4000, 50, 100


@dataclass(frozen=True)
class Write:
    template: str
    valid: dict[str, Any]
    fields: tuple[F, ...]
    success: int = 200
    revision: bool = False  # a PATCH: at least one field besides reason
    prepare: str | None = None  # "close": the case is closed first (reopen)

    @property
    def method(self) -> str:
        return self.template.split(" ", 1)[0]

    def path(self, case: Case | None, *, spell: Callable[[str], str] = str) -> str:
        template = self.template.split(" ", 1)[1]
        if case is None:
            return template
        ids = {k: spell(v) for k, v in vars(case).items()}
        return template.format(c=f"/v1/cases/{ids['id']}", **{k: v for k, v in ids.items()
                                                            if k != "id"})

    def body(self, case: Case | None) -> dict[str, Any]:
        filled = json.dumps(self.valid)
        if case is not None:
            for name, value in vars(case).items():
                filled = filled.replace("{" + name + "}", value)
        loaded: dict[str, Any] = json.loads(filled)
        return loaded


RISK = ("low", "moderate", "high")
WRITES: list[Write] = [
    Write("POST /v1/cases", {
        "participant": {"name": "Riley Park", "preferred_name": "Riley", "pronouns": "she/her",
                        "email": "riley@example.org", "external_ref": "DOC-2291"},
        "case_manager": "cm-1", "risk_level": "moderate"}, (
        F("participant", "object", required=True, nullable=False),
        text("participant.name", NAME, required=True),
        text("participant.preferred_name", NAME), text("participant.pronouns", PRONOUNS),
        F("participant.email", "email"), text("participant.external_ref", REF),
        F("case_manager", "userid", required=True, nullable=False, limit=200),
        literal("risk_level", *RISK, required=True)), success=201),
    Write("PATCH {c}/participant", {"name": "Riley P.", "pronouns": "they/them",
                                    "email": "riley.p@example.org", "reason": "Riley asked"}, (
        text("name", NAME, nullable=False), text("preferred_name", NAME),
        text("pronouns", PRONOUNS), F("email", "email"), text("external_ref", REF),
        text("reason", TEXT)), revision=True),
    Write("POST {c}/strengths", {"category": "interest", "description": "Plays chess",
                                 "in_their_words": "I like thinking ahead"}, (
        literal("category", "skill", "talent", "interest", "past_success", "coping_strategy",
                "natural_support", "community_resource", "other", required=True),
        text("description", TEXT, required=True), text("in_their_words", TEXT)), success=201),
    Write("PATCH {c}/strengths/{strength}", {
        "category": "talent", "description": "Fixes bikes and scooters",
        "in_their_words": "I can fix anything with wheels", "reason": "More precise"}, (
        literal("category", "skill", "talent", "interest", "past_success", "coping_strategy",
                "natural_support", "community_resource", "other", nullable=False),
        text("description", TEXT, nullable=False), text("in_their_words", TEXT),
        text("reason", TEXT)), revision=True),
    Write("DELETE {c}/strengths/{strength}", {"reason": "Recorded twice"},
          (text("reason", TEXT, required=True),)),
    Write("POST {c}/goals", {
        "title": "A flat of my own", "domain": "housing", "source": "participant",
        "status": "active", "in_their_words": "Somewhere quiet for me and my kids",
        "why_it_matters": "Stability", "target_date": "2030-06-01",
        "strength_ids": ["{strength}"], "risk_factors": ["Unstable housing"]}, (
        text("title", TITLE, required=True),
        literal("domain", "employment", "housing", "health", "family", "education", "finances",
                "substance_use", "legal", "community", "other", required=True),
        literal("source", "participant", "court", "agency", required=True),
        literal("status", "active", "future", nullable=False),
        text("in_their_words", TEXT), text("why_it_matters", TEXT), F("target_date", "date"),
        F("strength_ids", "uuids", nullable=False), F("risk_factors", "titles", nullable=False),
        text("override_reason", TEXT)), success=201),
    Write("PATCH {c}/goals/{goal}", {
        "title": "Find steady warehouse work", "domain": "employment",
        "why_it_matters": "For my kids", "target_date": "2030-02-01",
        "strength_ids": ["{strength}"], "risk_factors": ["Few references"],
        "reason": "Jo said more"}, (
        text("title", TITLE, nullable=False),
        literal("domain", "employment", "housing", "health", "family", "education", "finances",
                "substance_use", "legal", "community", "other", nullable=False),
        text("in_their_words", TEXT), text("why_it_matters", TEXT), F("target_date", "date"),
        F("strength_ids", "uuids", nullable=False), F("risk_factors", "titles", nullable=False),
        text("reason", TEXT)), revision=True),
    Write("POST {c}/goals/{goal}/status", {"status": "paused", "reason": "Jo needs a break"}, (
        literal("status", "active", "future", "paused", "achieved", "discontinued",
                required=True),
        text("reason", TEXT), text("override_reason", TEXT))),
    Write("POST {c}/goals/{goal}/steps", {
        "description": "Call the landlord", "owner": "participant", "due_date": "2030-01-15",
        "strength_ids": ["{strength}"]}, (
        text("description", TEXT, required=True),
        literal("owner", "participant", "case_manager", "support", required=True),
        text("support_name", NAME), F("support_id", "uuid"), F("due_date", "date"),
        F("strength_ids", "uuids", nullable=False)), success=201),
    Write("PATCH {c}/steps/{step}", {"description": "Visit the job centre on Main St",
                                     "due_date": "2030-04-01", "reason": "Agreed a new date"}, (
        text("description", TEXT, nullable=False),
        literal("owner", "participant", "case_manager", "support", nullable=False),
        text("support_name", NAME), F("support_id", "uuid"), F("due_date", "date"),
        F("strength_ids", "uuids", nullable=False), text("reason", TEXT)), revision=True),
    Write("POST {c}/steps/{step}/status", {"status": "in_progress", "reason": "Jo started"}, (
        literal("status", "not_started", "in_progress", "completed", "cannot_be_done_yet",
                "no_longer_needed", required=True), text("reason", TEXT))),
    Write("POST {c}/steps/{step}/complete", {"note": "Done a week early"},
          (text("note", TEXT),)),
    Write("POST {c}/supports", {"name": "Uncle Ray", "kind": "natural",
                                "relationship": "Uncle", "contact": "Phone 555 0100",
                                "description": "Drives Jo to appointments"}, (
        text("name", NAME, required=True),
        literal("kind", "natural", "professional", "community", "other", nullable=False),
        text("relationship", NAME), text("contact", NAME), text("description", TEXT)),
          success=201),
    Write("DELETE {c}/supports/{support}", {"reason": "Moved away"},
          (text("reason", TEXT, required=True),)),
    Write("POST {c}/requirements", {"title": "Community service 40h",
                                    "description": "At the food bank", "source": "court",
                                    "reference": "CR-2026-17", "due_date": "2030-05-01"}, (
        text("title", TITLE, required=True), text("description", TEXT),
        literal("source", "court", "agency", "statute", "other", nullable=False),
        text("reference", REF), F("due_date", "date")), success=201),
    Write("POST {c}/requirements/{requirement}/status", {"status": "in_progress",
                                                         "reason": "Jo started"}, (
        literal("status", "pending", "in_progress", "met", "not_met", "waived", required=True),
        text("reason", TEXT))),
    Write("POST {c}/agreements", {"participation": "phone", "present": ["Jo", "Sam"],
                                  "participant_statement": "Still my plan",
                                  "outcome": "agreed"}, (
        literal("participation", "in_person", "phone", "video", required=True),
        F("present", "names", required=True, nullable=False),
        text("participant_statement", TEXT, required=True),
        literal("outcome", "agreed", "did_not_agree", "could_not_answer", nullable=False)),
          success=201),
    Write("POST {c}/reviews/{review}/held", {"held_on": "2026-03-02",
                                             "summary": "Good progress",
                                             "participant_statement": "Going well",
                                             "risk_level": "low"}, (
        F("held_on", "date"), text("summary", TEXT), text("participant_statement", TEXT),
        literal("risk_level", *RISK))),
    Write("POST {c}/reviews/{review}/reschedule", {"due_date": "2026-05-20",
                                                   "reason": "Jo is on shift"}, (
        F("due_date", "date", required=True, nullable=False),
        text("reason", TEXT, required=True))),
    Write("POST {c}/notes", {"text": "Met at the library", "goal_id": "{goal}"}, (
        text("text", TEXT, required=True), F("goal_id", "uuid")), success=201),
    Write("POST {c}/transfer", {"case_manager": "cm-9", "reason": "Caseload balance"}, (
        F("case_manager", "userid", required=True, nullable=False, limit=200),
        text("reason", TEXT, required=True))),
    Write("POST {c}/close", {"reason": "Plan complete", "outcome": "completed"}, (
        text("reason", TEXT, required=True),
        literal("outcome", "completed", "transferred_out", "moved", "withdrew", "other"))),
    Write("POST {c}/reopen", {"reason": "Jo asked to return"},
          (text("reason", TEXT, required=True),), prepare="close"),
]
WRITE_IDS = [w.template for w in WRITES]

PREFERENCES = Write("PUT /v1/preferences/cm-1", {
    "email": "sam@example.org", "delivery": "immediate", "timezone": "Europe/Berlin",
    "quiet_hours": {"start": "21:00", "end": "07:00"}, "celebrations": True,
    "role": "case_manager", "cases": []}, (
    F("email", "email", required=True, nullable=True),
    literal("delivery", "immediate", "daily_digest", required=True),
    F("timezone", "zone", required=True, nullable=False),
    F("quiet_hours", "object"),
    F("quiet_hours.start", "hhmm", required=True, nullable=False),
    F("quiet_hours.end", "hhmm", required=True, nullable=False),
    F("celebrations", "bool", required=True, nullable=False),
    literal("role", "case_manager", "supervisor", "participant"),
    F("cases", "uuids", max_items=50)))


def routes_registered() -> set[str]:
    from services.records.http import routes  # noqa: F401  (registers the case routes)
    from services.records.http.app import api

    return {f"{op.method} {op.path}" for op in api.operations
            if op.method in {"POST", "PATCH", "PUT", "DELETE"}}


def test_every_write_route_is_fuzzed_here() -> None:
    """The list above is every write the records service registers: a new one is not left
    out of the audit unnoticed."""
    names = {"strength": "strength_id", "goal": "goal_id", "step": "step_id",
             "support": "support_id", "requirement": "requirement_id", "review": "review_id"}
    covered = set()
    for write in WRITES:
        method, path = write.template.split(" ", 1)
        path = path.replace("{c}", "/v1/cases/{case_id}")
        for short, long in names.items():
            path = path.replace("{" + short + "}", "{" + long + "}")
        covered.add(f"{method} {path}")
    assert covered == routes_registered()


# --------------------------------------------------------------------------------------------
# Building hostile bodies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text placed into a body as written (escapes Python's json would never emit)."""

    text: str


def encode(value: Any) -> bytes:
    raws: list[str] = []

    def swap(item: Any) -> Any:
        if isinstance(item, Raw):
            raws.append(item.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    rendered = json.dumps(swap(value), ensure_ascii=False)
    for n, raw in enumerate(raws):
        rendered = rendered.replace(json.dumps(f"\x00raw{n}\x00"), raw)
    return rendered.encode()


def get(body: dict[str, Any], path: str) -> Any:
    target: Any = body
    for part in path.split("."):
        target = target[part]
    return target


def replaced(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copied = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = copied
    for part in parents:
        target = target[part]
    target[last] = value
    return copied


def removed(body: dict[str, Any], path: str) -> dict[str, Any]:
    copied = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = copied
    for part in parents:
        target = target[part]
    target.pop(last, None)
    return copied


@dataclass(frozen=True)
class Hostile:
    label: str
    data: bytes
    statuses: frozenset[int]
    blamed: str | None = None  # the field a 422 must name ("body.x" or under it)
    content_type: str | None = "application/json"
    chunked: bool = False


Mutation = tuple[str, Any, frozenset[int]]
DIGIT = st.characters(categories=["Nd"])
ASCII_DIGITS = set("0123456789")
SURROGATES = [("lone high surrogate", Raw('"Jo \\ud800 here"')),
              ("lone low surrogate", Raw('"\\udfff"')),
              ("surrogates in the wrong order", Raw('"\\ude00\\ud83d"'))]
# what a user id may not hold (schemas.events._shown_as_written), and an address neither
# (plain_mailbox also refuses separators)
NOT_IN_A_USER_ID = st.characters(categories=["Cf", "Cc"])
NOT_IN_AN_ADDRESS = st.characters(categories=["Cf", "Cc", "Zs", "Zl", "Zp"])


def _inside(value: str, characters: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    """``value`` with one of ``characters`` put inside it (not at an end, where white space
    is stripped)."""
    return st.tuples(characters, st.integers(1, max(1, len(value) - 1))).map(
        lambda drawn: (f"U+{ord(drawn[0]):04X} inside",
                       value[:drawn[1]] + drawn[0] + value[drawn[1]:]))


def wrong_types(f: F, valid: Any) -> list[Mutation]:
    options: list[tuple[str, Any]] = [
        ("true", True), ("false", False), ("0", 0), ("-1", -1),
        ("10**400", Raw("1" + "0" * 400)), ("1.5", 1.5), ("-0.0", -0.0),
        ("1e309", Raw("1e309")), ("-1e309", Raw("-1e309")), ("NaN token", Raw("NaN")),
        ("Infinity token", Raw("Infinity")), ("an object", {"value": valid}),
        ("an array holding the valid value", [valid])]
    if f.kind == "bool":
        options = [o for o in options if o[0] not in {"true", "false"}]
    if f.kind not in {"uuids", "titles"}:  # an empty list is a value those take
        options.append(("empty array", []))
    options.append(("empty object", {}))  # for an object: its own required fields are missing
    if not f.nullable:
        options.append(("null", None))
    mutations = [(f"wrong type ({label})", value, VALIDATION) for label, value in options]
    mutations.append(("10,000 nested arrays", Raw("[" * 10_000 + "]" * 10_000), MALFORMED))
    return mutations


def texts_refused(limit: int) -> list[Mutation]:
    far = min(limit * 40, 200_000)
    return [("empty string", "", VALIDATION), ("only white space", " \t\n ", VALIDATION),
            *[(label, raw, VALIDATION) for label, raw in SURROGATES],
            ("NUL escape", Raw('"a\\u0000b"'), NUL_OR_VALIDATION),
            ("one past the limit", "x" * (limit + 1), VALIDATION),
            ("one past the limit in two-byte letters", "é" * (limit + 1), VALIDATION),
            ("one past the limit in astral emoji", "a" + "\U0001f600" * limit, VALIDATION),
            (f"{far} characters", "x" * far, VALIDATION),
            ("past the request body limit", "x" * (RECORDS_MAX_BODY + 10_000), TOO_LARGE)]


BAD_DATES = ["2024-02-30", "2023-02-29", "2026-13-01", "2026-00-10", "2026-04-31", "0000-01-01",
             "10000-01-01", "2024-1-1", "2024-01-1", "24-01-01", "2030-01-15T00:00:00",
             "2030-01-15T09:00:00Z", "2030-01-15T09:00:00+02:00", "2030-01-15 09:00",
             "2030-01-15Z", "2030-01-15+02:00", "20300115", "2030/01/15", "15/01/2030",
             "2030-W03-2", "2030-015", "1899-12-31", "3000-01-01", "0001-01-01", "9999-12-31",
             "", "today", "Infinity", "NaN"]
BAD_EMAILS = ["jo", "jo@", "@example.org", "jo@@example.org", "jo@example..org",
              "jo,sam@example.org", "Jo <jo@example.org>", "jo@example.org.", "jo@.example.org",
              "a" * 65 + "@example.org", "jo@" + "a" * 252, "jo smith@example.org",
              "jo@exa mple.org", "", "   "]
BAD_HHMM = ["24:00", "7:00", "07:0", "07:00:00", "07:60", "0700", "07-00", "07.00", "", " ",
            "T07:00", "07:00Z", "07:00+01:00", "ab:cd", "-1:00", "noon"]
BAD_ZONES = ["europe/berlin", "EUROPE/BERLIN", "Mars/Olympus_Mons", "localtime", "posixrules",
             "../../etc/passwd", "/etc/localtime", "Europe/Berlin\u200b", "Europe/\u202eBerlin",
             "", "UTC+1", "+01:00", "Europe/Berlin/Mitte", "x" * 65, "posix/Europe/Berlin",
             "right/UTC"]
BAD_UUIDS = ["not-a-uuid", "", "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a1",
             "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10x", "6f1c1c55_93e4_4f57_bb8e_2a4f3f1f7a10",
             "6g1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10", "\u0666f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10",
             "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10\u200b"]
_ZONE_NAMES = frozenset(available_timezones())


def _not_a_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return True
    return False


def bad_values(f: F, valid: Any) -> tuple[list[Mutation], list[st.SearchStrategy[Mutation]]]:
    """Values ``f`` must refuse, whatever else the body holds: a fixed list, and strategies
    drawing more."""
    fixed: list[Mutation] = wrong_types(f, valid)
    drawn: list[st.SearchStrategy[Mutation]] = []
    if f.kind in {"text", "userid"}:
        fixed += texts_refused(f.limit)
        drawn.append(st.text(min_size=1, max_size=30).map(
            lambda tail: ("random text past the limit", "a" * f.limit + tail + "a",
                          NUL_OR_VALIDATION)))
    if f.kind == "userid":
        drawn.append(_inside(valid, NOT_IN_A_USER_ID).map(
            lambda t: (f"user id with {t[0]}", t[1], NUL_OR_VALIDATION)))
        fixed += [("user id with a bidi override", "cm\u202e-1", VALIDATION),
                  ("user id with a zero-width space", "cm\u200b-1", VALIDATION)]
    if f.kind == "email":
        fixed += [(f"address {a!r}", a, VALIDATION) for a in BAD_EMAILS]
        fixed += [(label, raw, VALIDATION) for label, raw in SURROGATES]
        drawn.append(_inside(valid, NOT_IN_AN_ADDRESS).map(
            lambda t: (f"address with {t[0]}", t[1], NUL_OR_VALIDATION)))
    if f.kind == "literal":
        fixed += [(f"{valid.upper()!r}", valid.upper(), VALIDATION),
                  (f"{valid!r} with a zero-width space", valid + "\u200b", VALIDATION),
                  (f"{valid!r} with a bidi override", "\u202e" + valid, VALIDATION),
                  (f"{valid[:-1]!r}", valid[:-1], VALIDATION),
                  *[(f"{v!r}", v, VALIDATION) for v in ("", "12", "NaN", "Infinity", "null",
                                                        "true")],
                  *[(label, raw, VALIDATION) for label, raw in SURROGATES]]
        drawn.append(st.text(max_size=25).filter(
            lambda s: s not in f.choices and s.strip() not in f.choices).map(
            lambda s: (f"random word {s!r}", s, NUL_OR_VALIDATION)))
    if f.kind == "date":
        fixed += [(f"date {d!r}", d, VALIDATION) for d in BAD_DATES]
        fixed += [("date as a number", 20300115, VALIDATION),
                  *[(label, raw, VALIDATION) for label, raw in SURROGATES]]
        drawn.append(st.tuples(*[DIGIT] * 8).filter(
            lambda t: not set(t) <= ASCII_DIGITS).map(
            lambda t: (f"date in other digits {''.join(t)!r}",
                       f"{''.join(t[:4])}-{''.join(t[4:6])}-{''.join(t[6:])}", VALIDATION)))
    if f.kind == "uuid":
        fixed += [(f"id {u!r}", u, VALIDATION) for u in BAD_UUIDS]
        fixed += [(label, raw, VALIDATION) for label, raw in SURROGATES]
        drawn.append(st.text(max_size=40).filter(_not_a_uuid).map(
            lambda s: (f"random id {s!r}", s, NUL_OR_VALIDATION)))
    if f.kind in {"uuids", "titles", "names"}:
        item = valid[0] if valid else "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"
        fixed += [("a string instead of a list", str(item), VALIDATION),
                  ("a list holding null", [None], VALIDATION),
                  ("a list holding a number", [12], VALIDATION),
                  ("a list holding a list", [[item]], VALIDATION),
                  ("a list holding a lone surrogate", [Raw('"\\ud800"')], VALIDATION),
                  (f"{f.max_items + 1} items", [item] * (f.max_items + 1)
                   if f.kind == "uuids" else [f"Item {n}" for n in range(f.max_items + 1)],
                   VALIDATION)]
        if f.kind == "uuids":
            drawn.append(st.lists(st.sampled_from(BAD_UUIDS), min_size=1, max_size=3).map(
                lambda items: (f"ids {items!r}", items, VALIDATION)))
        else:
            limit = TITLE if f.kind == "titles" else NAME
            fixed += [("a list holding an empty string", [""], VALIDATION),
                      ("a list holding text past the limit", ["x" * (limit + 1)], VALIDATION)]
        if f.kind == "names":
            fixed.append(("no one present", [], VALIDATION))
    if f.kind == "object":
        first = next(iter(valid))
        fixed += [("a string instead of an object", "Riley Park", VALIDATION),
                  ("an unknown field inside", {**valid, "surprise": 1}, VALIDATION),
                  (f"{first!r} given twice inside",
                   Raw("{" + json.dumps(first) + ": " + json.dumps(valid[first]) + ", "
                       + json.dumps(valid)[1:]), MALFORMED)]
    if f.kind == "bool":
        fixed += [(f"{v!r}", v, VALIDATION) for v in ("true", "false", "yes", "1", "")]
        fixed += [("1", 1, VALIDATION), ("1.0", 1.0, VALIDATION)]
    if f.kind == "hhmm":
        fixed += [(f"time {t!r}", t, VALIDATION) for t in BAD_HHMM]
        fixed += [(label, raw, VALIDATION) for label, raw in SURROGATES]
        # four digits of any script, and the shape that passes a \d pattern: an ASCII first
        # digit of an hour or minute, and another script's digit after it
        drawn.append(st.tuples(*[DIGIT] * 4).filter(lambda t: not set(t) <= ASCII_DIGITS).map(
            lambda t: (f"time in other digits {t[0]}{t[1]}:{t[2]}{t[3]}",
                       f"{t[0]}{t[1]}:{t[2]}{t[3]}", VALIDATION)))
        drawn.append(st.tuples(st.sampled_from("01"), DIGIT, st.sampled_from("012345"),
                               DIGIT).filter(lambda t: not set(t) <= ASCII_DIGITS).map(
            lambda t: (f"time with another script's digits {t[0]}{t[1]}:{t[2]}{t[3]}",
                       f"{t[0]}{t[1]}:{t[2]}{t[3]}", VALIDATION)))
    if f.kind == "zone":
        fixed += [(f"zone {z!r}", z, VALIDATION) for z in BAD_ZONES if z not in _ZONE_NAMES]
        fixed += [(label, raw, VALIDATION) for label, raw in SURROGATES]
        drawn.append(st.tuples(st.sampled_from(["Europe/Berlin", "America/Chicago",
                                                "Asia/Kolkata", "UTC"]),
                               st.sampled_from(["lower", "upper", "swapcase", "zwsp", "nbsp"]))
                     .map(lambda t: (t[0], t[1], {"lower": t[0].lower(), "upper": t[0].upper(),
                                                  "swapcase": t[0].swapcase(),
                                                  "zwsp": t[0][:2] + "\u200b" + t[0][2:],
                                                  "nbsp": t[0][:2] + "\u00a0" + t[0][2:]
                                                  }[t[1]]))
                     .filter(lambda t: t[2] not in _ZONE_NAMES)
                     .map(lambda t: (f"zone {t[2]!r}", t[2], VALIDATION)))
    return fixed, drawn


def structural(write: Write, valid: dict[str, Any]) -> list[Hostile]:
    """Bodies that are not the object the write takes, or not JSON at all."""
    data = encode(valid)
    keys = list(valid)
    out: list[Hostile] = []
    for key in ["surprise", "id", "case_id", "version", "__proto__", "", keys[0].upper(),
                keys[0].title() if keys[0].title() != keys[0] else keys[0] + "_",
                keys[-1] + " "]:
        out.append(Hostile(f"unknown field {key!r}", encode({**valid, key: "x"}), VALIDATION,
                           f"body.{key}"))
    out.append(Hostile("an unknown field named by a lone surrogate",
                       b'{"\\ud800": 1, ' + data[1:], VALIDATION, "body"))
    out.append(Hostile("an unknown field holding NUL in its name",
                       b'{"te\\u0000xt": 1, ' + data[1:], NUL_OR_VALIDATION))
    out.append(Hostile("3,000 unknown fields",
                       encode({**valid, **{f"extra_{n}": n for n in range(3000)}}), VALIDATION,
                       "body.extra_0"))
    for key in keys:
        out.append(Hostile(f"{key!r} given twice", b"{" + json.dumps(key).encode() + b": "
                           + encode(valid[key]) + b", " + data[1:], MALFORMED))
    for f in write.fields:
        if f.required and "." not in f.path:
            out.append(Hostile(f"required {f.path!r} left out", encode(removed(valid, f.path)),
                               VALIDATION, f"body.{f.path}"))
        if f.required and "." in f.path and f.path.split(".")[0] in valid:
            out.append(Hostile(f"required {f.path!r} left out",
                               encode(removed(valid, f.path)), VALIDATION, f"body.{f.path}"))
    if write.revision:
        out.append(Hostile("a revision changing nothing", b"{}", VALIDATION, "body"))
        out.append(Hostile("a revision giving only a reason",
                           encode({"reason": "Jo asked"}), VALIDATION, "body"))
    for label, raw in [("an array", b"[]"), ("an array holding the body", b"[" + data + b"]"),
                       ("a string", b'"text"'), ("a number", b"12"), ("true", b"true"),
                       ("null", b"null"), ("an empty string", b'""'), ("1e309", b"1e309"),
                       ("white space only", b" \r\n\t "),
                       ("the body and then more", data + b" x"), ("two bodies", data + data),
                       ("the body with a trailing comma", data[:-1] + b", }"),
                       ("single quotes", data.replace(b'"', b"'")),
                       ("a comment first", b"/* note */ " + data),
                       ("a line comment first", b"// note\n" + data),
                       ("a stray byte 0xFF", data[:-1] + b', "x": "\xff"}'),
                       ("an overlong encoding", data[:-1] + b', "x": "\xc0\xaf"}'),
                       ("a cut multi-byte letter", data[:-1] + b', "x": "\xe2\x82"}'),
                       ("10,000 nested arrays", b"[" * 10_000 + b"]" * 10_000),
                       ("10,000 nested objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000)]:
        out.append(Hostile(f"body is {label}", raw, MALFORMED))
    out.append(Hostile("a surrogate encoded in UTF-8 bytes", data[:-1] + b', "x": "\xed\xa0\x80"}',
                       NUL_OR_VALIDATION))
    if write.method == "DELETE":  # no body: the reason may come as ?reason=, here it is missing
        out.append(Hostile("an empty body", b"", NUL_OR_VALIDATION, "body.reason"))
    elif any(f.required for f in write.fields):
        out.append(Hostile("an empty body", b"", MALFORMED))
    for media in ["text/plain", None, "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/jsonx", "text/json",
                  "application/xml", "application/json-patch+json", "json"]:
        out.append(Hostile(f"the body as {media or 'no media type'}", data, MEDIA,
                           content_type=media))
    texts = [f for f in write.fields if f.kind == "text" and f.path in valid]
    if texts:
        latin = replaced(valid, texts[0].path, "Zoë at the café")
        for charset in ["latin-1", "iso-8859-1", "windows-1252"]:
            out.append(Hostile(f"a body in {charset}, as declared",
                               json.dumps(latin, ensure_ascii=False).encode("latin-1"),
                               frozenset({400, 415}),
                               content_type=f"application/json; charset={charset}"))
    return out


def cut(data: bytes) -> st.SearchStrategy[Hostile]:
    return st.integers(1, len(data) - 1).map(
        lambda n: Hostile(f"the body cut after {n} bytes", data[:n], MALFORMED))


def _fuzzed_fields(write: Write, valid: dict[str, Any]) -> list[F]:
    return [f for f in write.fields if "." not in f.path or f.path.split(".")[0] in valid]


def _in_body(valid: dict[str, Any], f: F, mutation: Mutation) -> Hostile:
    label, value, statuses = mutation
    return Hostile(f"{f.path}: {label}", encode(replaced(valid, f.path, value)), statuses,
                   f"body.{f.path}")


def _current(valid: dict[str, Any], f: F) -> Any:
    return get(valid, f.path) if _present(valid, f.path) else _example(f)


def every_fixed_hostile(write: Write, valid: dict[str, Any]) -> list[Hostile]:
    """Each field's fixed list of refused values, and every structural refusal: all sent."""
    out = structural(write, valid)
    for f in _fuzzed_fields(write, valid):
        fixed, _ = bad_values(f, _current(valid, f))
        out += [_in_body(valid, f, mutation) for mutation in fixed]
    return out


def hostile_bodies(write: Write, valid: dict[str, Any]) -> st.SearchStrategy[Hostile]:
    """Drawn: a field's drawn refused values (random words, ids, digits of other scripts,
    characters put inside), a fixed refusal carried another way, or the body cut short."""
    fields = _fuzzed_fields(write, valid)

    def one_field(f: F) -> st.SearchStrategy[Hostile]:
        _, drawn_values = bad_values(f, _current(valid, f))
        return st.one_of(*drawn_values).map(lambda m: _in_body(valid, f, m))

    with_drawn = [f for f in fields if bad_values(f, _current(valid, f))[1]]
    bodies = st.one_of(st.sampled_from(with_drawn).flatmap(one_field),
                       st.sampled_from(with_drawn).flatmap(one_field),
                       st.sampled_from(with_drawn).flatmap(one_field),
                       st.sampled_from(every_fixed_hostile(write, valid)),
                       st.sampled_from(every_fixed_hostile(write, valid)),
                       cut(encode(valid)))
    return st.tuples(bodies, st.sampled_from(["chunked", "bom", "charset", "length"])).map(
        lambda t: _carried(*t))


def _present(body: dict[str, Any], path: str) -> bool:
    try:
        get(body, path)
    except KeyError:
        return False
    return True


def _example(f: F) -> Any:
    return {"text": "Some words", "userid": "cm-1", "email": "jo@example.org",
            "literal": f.choices[0] if f.choices else "x", "date": "2030-01-15",
            "uuid": "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"}.get(f.kind, "x")


def _carried(hostile: Hostile, carrier: str) -> Hostile:
    """The same body sent another way: chunked, after a UTF-8 BOM, with charset=utf-8."""
    if hostile.content_type != "application/json":
        return hostile if carrier != "chunked" else _replace(hostile, chunked=True)
    if carrier == "chunked":
        return _replace(hostile, chunked=True, label=hostile.label + " [chunked]")
    if carrier == "bom":
        return _replace(hostile, data=BOM + hostile.data, label=hostile.label + " [after a BOM]")
    if carrier == "charset":
        return _replace(hostile, content_type="application/json; charset=utf-8")
    return hostile


def _replace(hostile: Hostile, **changes: Any) -> Hostile:
    return Hostile(**{**vars(hostile), **changes})


def drawn(strategy: st.SearchStrategy[Hostile], examples: int) -> list[Hostile]:
    """``examples`` bodies drawn from ``strategy``, the same on every run (derandomized)."""
    found: list[Hostile] = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(hostile: Hostile) -> None:
        found.append(hostile)

    collect()
    unique: dict[tuple[str, bytes, str | None, bool], Hostile] = {}
    for hostile in found:
        unique.setdefault((hostile.label, hostile.data, hostile.content_type, hostile.chunked),
                          hostile)
    return list(unique.values())


# --------------------------------------------------------------------------------------------
# Sending and judging
# --------------------------------------------------------------------------------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 4096):
        yield data[start:start + 4096]


async def send(client: TestClient, method: str, path: str, headers: dict[str, str],
               hostile: Hostile) -> tuple[int, str, str]:
    all_headers = dict(headers)
    skip: tuple[str, ...] = ()
    if hostile.content_type is None:
        skip = ("Content-Type",)
    else:
        all_headers["Content-Type"] = hostile.content_type
    payload: Any = _chunks(hostile.data) if hostile.chunked else hostile.data
    response = await client.request(method, path, data=payload, headers=all_headers,
                                    skip_auto_headers=skip)
    return response.status, response.content_type, await response.text()


def judged(hostile: Hostile, status: int, content_type: str, text: str) -> str | None:
    """What is wrong with the answer to ``hostile``, or None."""
    shown = f"{hostile.label}: {status} {text[:300]}"
    if not 400 <= status < 500:
        return f"not a 4xx: {shown}"
    if content_type != "application/problem+json":
        return f"not a problem body ({content_type}): {shown}"
    try:
        problem = json.loads(text)
    except ValueError:
        return f"problem body is not JSON: {shown}"
    if not (isinstance(problem.get("type"), str) and problem["type"]
            and isinstance(problem.get("title"), str) and problem["title"]
            and problem.get("status") == status):
        return f"problem lacks type/title/status {status}: {shown}"
    if status not in hostile.statuses:
        return f"expected {sorted(hostile.statuses)}: {shown}"
    if status == 422:
        errors = problem.get("errors")
        if not errors or not all(isinstance(e.get("field"), str) for e in errors):
            return f"422 without a field-level errors list: {shown}"
        blamed = hostile.blamed
        if blamed and blamed != "body" and not any(
                e["field"] == blamed or e["field"].startswith(blamed + ".") for e in errors):
            return f"422 does not name {blamed}: {shown}"
    return None


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def prepared_case(cm: CaseApi, write: Write) -> Case:
    case = await build_case(cm)
    if write.prepare == "close":
        await cm.call("POST", f"/v1/cases/{case.id}/close", {"reason": "Plan complete"},
                      expect=200)
    return case


# --------------------------------------------------------------------------------------------
# R1: hostile bodies on every records write
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", WRITES, ids=WRITE_IDS)
async def test_hostile_bodies_get_a_4xx_problem_and_write_nothing(
        client: TestClient, cm: CaseApi, db: asyncpg.Pool, token: TokenFactory,
        write: Write) -> None:
    """Every drawn body is answered with a 4xx problem (a 422 naming the field to blame) and
    leaves the events as they were; then the valid body itself is written, so the refusals
    were the body's doing, not the case's state."""
    case = await prepared_case(cm, write)
    valid = write.body(case)
    path = write.path(case)
    headers = bearer(token())
    hostiles = every_fixed_hostile(write, valid) + drawn(hostile_bodies(write, valid),
                                                         EXAMPLES_PER_WRITE)
    before = await event_count(db)
    failures: list[str] = []
    for hostile in hostiles:
        if len(hostile.data) > RECORDS_MAX_BODY:
            hostile = _replace(hostile, statuses=TOO_LARGE)
        status, content_type, text = await send(client, write.method, path, headers, hostile)
        failure = judged(hostile, status, content_type, text)
        if failure:
            failures.append(failure)
        if await event_count(db) != before:
            failures.append(f"wrote events: {hostile.label}: {status} {text[:200]}")
            before = await event_count(db)
    assert not failures, "\n".join(failures[:15])
    response = await client.request(write.method, path, json=valid, headers=headers)
    assert response.status == write.success, await response.text()
    assert await event_count(db) > before


# --------------------------------------------------------------------------------------------
# R2: harmless variants of a valid body still succeed
# --------------------------------------------------------------------------------------------


def _strings_padded(write: Write, body: dict[str, Any]) -> dict[str, Any]:
    for f in write.fields:
        if f.kind in {"text", "userid", "email"} and _present(body, f.path):
            body = replaced(body, f.path, f"  {get(body, f.path)}\t ")
    return body


def _texts_at_their_limit(write: Write, body: dict[str, Any]) -> dict[str, Any]:
    for f in write.fields:
        if f.kind == "text" and _present(body, f.path):
            body = replaced(body, f.path, ("Jo " * f.limit)[:f.limit - 1] + "J")
    return body


def _texts_in_other_scripts(write: Write, body: dict[str, Any]) -> dict[str, Any]:
    for f in write.fields:
        if f.kind == "text" and _present(body, f.path):
            body = replaced(body, f.path, "Zoë 職場 العمل Ж \U0001f389"[:f.limit])
    return body


@dataclass(frozen=True)
class Variant:
    name: str
    change: Callable[[Write, dict[str, Any]], dict[str, Any]] = lambda w, b: b
    content_type: str = "application/json"
    pretty: bool = False
    chunked: bool = False
    expect100: bool = False
    capitals: bool = False
    may_refuse: frozenset[int] = field(default_factory=frozenset)


VARIANTS = [
    Variant("pretty-printed, keys reversed, charset=utf-8", pretty=True,
            content_type="application/json; charset=utf-8"),
    Variant("media type in capitals", content_type="Application/JSON"),
    Variant("sent chunked", chunked=True),
    Variant("sent after Expect: 100-continue", expect100=True),
    Variant("text padded with white space", _strings_padded),
    Variant("text at exactly its limit", _texts_at_their_limit),
    Variant("text in other scripts, with an emoji", _texts_in_other_scripts),
    Variant("ids in the path in capitals", capitals=True),
]


@pytest.mark.parametrize("write", WRITES, ids=WRITE_IDS)
async def test_harmless_variants_of_a_valid_body_are_written(
        client: TestClient, cm: CaseApi, db: asyncpg.Pool, token: TokenFactory,
        write: Write) -> None:
    """What the contract allows is not refused: JSON laid out another way, the media type
    spelled in capitals or with its charset, a chunked body, Expect: 100-continue, strings
    with spaces around them (stripped), text at exactly its limit or in any script, ids in
    the path in capitals (a UUID's hex digits are case-insensitive, RFC 9562)."""
    headers = bearer(token())
    failures = []
    for variant in VARIANTS:
        if variant.capitals and "{" not in write.template:
            continue
        case = None if write.template.startswith("POST /v1/cases") else \
            await prepared_case(cm, write)
        body = variant.change(write, write.body(case))
        if variant.pretty:
            data = json.dumps(dict(reversed(list(body.items()))), indent=2,
                              ensure_ascii=False).encode()
        else:
            data = json.dumps(body, ensure_ascii=False).encode()
        path = write.path(case, spell=str.upper if variant.capitals else str)
        before = await event_count(db)
        response = await client.request(
            write.method, path, data=_chunks(data) if variant.chunked else data,
            headers={**headers, "Content-Type": variant.content_type},
            expect100=variant.expect100)
        answer = await response.text()
        if response.status != write.success:
            failures.append(f"{variant.name}: {response.status} {answer[:300]}")
            continue
        written = json.loads(answer)
        if case is not None and written["case_id"] != case.id:
            failures.append(f"{variant.name}: answered for case {written['case_id']}")
        if await event_count(db) <= before:
            failures.append(f"{variant.name}: {response.status} but no event was written")
    assert not failures, "\n".join(failures)


async def test_free_text_with_bidi_and_zero_width_characters_is_recorded_or_refused_cleanly(
        client: TestClient, cm: CaseApi, db: asyncpg.Pool, token: TokenFactory) -> None:
    """Free text holding formatting characters among its words (U+202E, U+200B, U+2066,
    U+FEFF, combining marks) is either recorded (the case then still reads, verifies and
    exports) or refused with a 422 naming the field: never a 5xx, now or on a later read."""
    headers = bearer(token())
    odd = "Jo \u202eevil\u202c met \u200bSam \u2066at\u2069 the\ufeff cafe\u0301 \u200d"
    case = await build_case(cm)
    failures = []
    for write in WRITES:
        texts = [f for f in write.fields if f.kind == "text"]
        if not texts or write.method == "DELETE" or write.template.endswith(
                ("/close", "/reopen", "/transfer")):
            continue
        body = write.body(case)
        for f in texts:
            if _present(body, f.path):
                body = replaced(body, f.path, odd)
        response = await client.request(write.method, write.path(case), json=body,
                                        headers=headers)
        text = await response.text()
        if response.status >= 300:  # refused on its merits, or on the case's state
            failure = judged(Hostile(write.template, b"", frozenset(range(400, 500))),
                             response.status, response.content_type, text)
            if failure:
                failures.append(failure)
    for suffix in ["", "/history", "/verify", "/export", "/export?format=csv",
                   "/export?format=pdf", "/export?format=fhir"]:
        response = await client.get(f"/v1/cases/{case.id}{suffix}", headers=headers)
        await response.read()
        if response.status != 200:
            failures.append(f"GET {suffix or 'plan'}: {response.status}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("path", "body", "field_name"), [
    ("notes", {"text": 'Jo\'s phone showed the error "\\u0000 not allowed"'}, "text"),
    ("strengths", {"category": "skill", "description": "Writes code like C:\\u0000dir"},
     "description"),
])
async def test_text_quoting_a_backslash_u0000_sequence_is_recorded(
        cm: CaseApi, db: asyncpg.Pool, path: str, body: dict[str, Any],
        field_name: str) -> None:
    """A backslash followed by ``u0000`` is six ordinary characters, not NUL: a note quoting
    an error message or a path holds no NUL and is text like any other (README: every text a
    body gives holds a letter or a digit, in any script)."""
    case_id = await cm.open_case()
    response = await cm.client.post(f"/v1/cases/{case_id}/{path}", json=body,
                                     headers=bearer(cm.token))
    answer = await response.json()
    assert response.status == 201, answer
    [event] = answer["events"]
    assert event["data"][field_name] == body[field_name]


# --------------------------------------------------------------------------------------------
# N1: the notifier's PUT /v1/preferences/{user}
# --------------------------------------------------------------------------------------------


async def _directory(rig: NotifierRig) -> tuple[list[tuple[Any, ...]], int]:
    rows = await rig.notifier.pool.fetch(
        "SELECT * FROM notifier.directory ORDER BY agency, kind, user_id")
    history = await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.history")
    return [tuple(r.values()) for r in rows], int(history)


async def test_hostile_preferences_get_a_4xx_problem_and_change_nothing(
        rig: NotifierRig, token: TokenFactory) -> None:
    """The same promise on the notifier: each drawn body is a 4xx problem naming the field
    (a 422), the stored preferences and their history are untouched; the valid body, changed,
    is then saved."""
    headers = bearer(token())
    valid = PREFERENCES.body(None)
    saved = await rig.client.put("/v1/preferences/cm-1", json=valid, headers=headers)
    assert saved.status == 200, await saved.text()
    before = await _directory(rig)
    hostiles = every_fixed_hostile(PREFERENCES, valid) + drawn(
        hostile_bodies(PREFERENCES, valid), EXAMPLES_FOR_PREFERENCES)
    failures = []
    with structlog.testing.capture_logs() as logs:
        for hostile in hostiles:
            if len(hostile.data) > NOTIFIER_MAX_BODY:
                hostile = _replace(hostile, statuses=TOO_LARGE)
            status, content_type, text = await send(rig.client, "PUT", "/v1/preferences/cm-1",
                                                    headers, hostile)
            failure = judged(hostile, status, content_type, text)
            if failure:
                failures.append(failure)
            if await _directory(rig) != before:
                failures.append(f"changed the directory: {hostile.label}: {status}")
                before = await _directory(rig)
    unhandled = [e for e in logs if e.get("event") == "unhandled error"]
    others = [f for f in failures if "digits" not in f]  # beside the quiet hours' digits
    assert not failures, (f"{len(failures)} failures, {len(unhandled)} unhandled errors logged\n"
                          + "\n".join(failures[:12] + others[:10]))
    changed = await rig.client.put("/v1/preferences/cm-1", json={
        **valid, "timezone": "America/Chicago"}, headers=headers)
    assert changed.status == 200, await changed.text()
    assert await _directory(rig) != before


@pytest.mark.parametrize("quiet", [
    {"start": "0\u0667:00", "end": "07:00"},  # ARABIC-INDIC DIGIT SEVEN
    {"start": "21:00", "end": "0\u0667:3\u0660"},
    {"start": "1\uff19:00", "end": "07:00"},  # FULLWIDTH DIGIT NINE
    {"start": "0\u09ee:15", "end": "07:00"},  # BENGALI DIGIT EIGHT
], ids=["arabic-indic start", "arabic-indic end", "fullwidth", "bengali"])
async def test_quiet_hours_in_another_scripts_digits_are_a_422_not_a_500(
        rig: NotifierRig, token: TokenFactory, quiet: dict[str, str]) -> None:
    """Quiet hours are "HH:MM" (design.md; QuietHours: "use 24-hour HH:MM"). A digit of
    another script is not one of them: a 422 naming the field, nothing stored, never 500."""
    before = await _directory(rig)
    response = await rig.client.put("/v1/preferences/cm-1", json={
        "email": "sam@example.org", "delivery": "immediate", "timezone": "Europe/Berlin",
        "quiet_hours": quiet, "celebrations": True}, headers=bearer(token()))
    problem = await response.json()
    assert response.status == 422, problem
    assert problem["errors"], problem
    assert problem["errors"][0]["field"].startswith("body.quiet_hours"), problem
    assert await _directory(rig) == before


async def test_the_notifier_refuses_two_authorization_headers_on_a_put_and_saves_nothing(
        rig: NotifierRig, token: TokenFactory) -> None:
    good = f"Bearer {token()}"
    response = await rig.client.put(
        "/v1/preferences/cm-1", json=PREFERENCES.body(None),
        headers=CIMultiDict([("Authorization", good), ("Authorization", good)]))
    problem = await response.json()
    assert response.status == 400, problem
    assert response.content_type == "application/problem+json"
    assert (await _directory(rig))[0] == []


@pytest.mark.parametrize(("path", "same"), [
    ("/v1/preferences/cm%2D1", True), ("/v1/preferences/%63%6D-1", True),
    ("/v1/preferences/cm-1/", False), ("/v1/preferences/cm-1%2F", False),
    ("/v1/preferences/%ED%A0%80", False), ("/v1/preferences/cm-1%00", False),
])
async def test_a_preferences_path_spelled_otherwise_is_the_same_user_or_a_4xx(
        rig: NotifierRig, token: TokenFactory, path: str, same: bool) -> None:
    """A percent-encoded user id is that user (README: case manager ids percent-encoded in
    the path); a path that is not one user's id is a 4xx problem that saves nothing."""
    response = await rig.client.put(path, json=PREFERENCES.body(None), headers=bearer(token()))
    text = await response.text()
    if same:
        assert response.status == 200, text
        assert json.loads(text)["user"] == "cm-1"
    else:
        assert 400 <= response.status < 500, text
        assert response.content_type == "application/problem+json"
        assert (await _directory(rig))[0] == []


# --------------------------------------------------------------------------------------------
# P1: ids in the path spelled other ways
# --------------------------------------------------------------------------------------------


SPELLINGS: dict[str, Callable[[str], str]] = {
    "capitals": str.upper,
    "no dashes": lambda u: u.replace("-", ""),
    "urn:uuid: prefix": lambda u: f"urn:uuid:{u}",
    "percent-encoded dashes": lambda u: u.replace("-", "%2D"),
    "percent-encoded capitals": lambda u: "".join(f"%{ord(c):02X}" if c.isalpha() else c
                                                  for c in u.upper()),
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
async def test_a_case_and_item_id_spelled_another_way_address_the_same_case(
        cm: CaseApi, db: asyncpg.Pool, spelling: str) -> None:
    """An id the service takes in another spelling addresses the same case and item: the
    answer names the case in its canonical form and the change is on that case's plan."""
    case = await build_case(cm)
    spell = SPELLINGS[spelling]
    response = await cm.client.patch(
        f"/v1/cases/{spell(case.id)}/strengths/{spell(case.strength)}",
        json={"description": "Fixes bikes and scooters"}, headers=bearer(cm.token))
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["case_id"] == case.id
    plan = await cm.plan(case.id)
    [strength] = [s for s in plan["strengths"] if s["strength_id"] == case.strength]
    assert strength["description"] == "Fixes bikes and scooters"


@pytest.mark.parametrize("spelled", [
    "{%s}", "%%7B%s%%7D", "%s/", "%s%%20", "%%20%s", "%s%%00", " %s", "%s.json", "%s;x=1",
    "%s%%2F", "%s%%0A",
], ids=["braces", "encoded braces", "trailing slash", "encoded space after",
        "encoded space before", "encoded NUL", "space", "suffix", "matrix parameter",
        "encoded slash", "encoded newline"])
async def test_a_case_id_that_is_not_a_uuid_is_a_4xx_problem_that_writes_nothing(
        cm: CaseApi, db: asyncpg.Pool, spelled: str) -> None:
    case_id = await cm.open_case()
    before = await event_count(db)
    response = await cm.client.post(f"/v1/cases/{spelled % case_id}/notes".replace(" ", "%20"),
                                    json={"text": "Met at the library"},
                                    headers=bearer(cm.token))
    text = await response.text()
    if response.status < 300:  # taken as the case itself: then it is that case's note
        assert json.loads(text)["case_id"] == case_id, text
        return
    assert 400 <= response.status < 500, text
    assert response.content_type == "application/problem+json", text
    assert await event_count(db) == before


async def test_a_retry_spelling_the_case_id_in_capitals_is_the_same_write(
        cm: CaseApi, db: asyncpg.Pool) -> None:
    """README: "Idempotency-Key (a retry returns the original answer and writes nothing)".
    The service takes the case id in capitals as the same case, so a retry that spells it so
    (a client normalising ids, a proxy rewriting the path) is the same write: replayed, not
    refused as "the same key on another write" (422)."""
    case_id = await cm.open_case()
    headers = {**bearer(cm.token), "Idempotency-Key": f"note-{case_id}"}
    first = await cm.client.post(f"/v1/cases/{case_id}/notes",
                                 json={"text": "Riley chose Tuesday"}, headers=headers)
    original = await first.json()
    assert first.status == 201, original
    before = await event_count(db)
    retry = await cm.client.post(f"/v1/cases/{case_id.upper()}/notes",
                                 json={"text": "Riley chose Tuesday"}, headers=headers)
    replayed = await retry.json()
    assert await event_count(db) == before
    assert retry.status == 201, replayed
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert replayed["id"] == original["id"]


# --------------------------------------------------------------------------------------------
# H1: the HTTP layer, over a real socket
# --------------------------------------------------------------------------------------------


async def _raw(port: int, data: bytes, *, then: bytes | None = None) -> bytes:
    """Send ``data`` (and ``then`` once the first answer line arrived); everything answered
    up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if then is not None:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(then)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The final answers in ``raw`` (interim 1xx left out), each with its headers and body."""
    answers = []
    rest = raw
    while rest.startswith(b"HTTP/"):
        head, _, rest = rest.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        length = int(headers.get("content-length", "0"))
        body, rest = rest[:length], rest[length:]
        status = int(status_line.split()[1])
        if status >= 200:
            answers.append((status, headers, body))
    return answers


def _is_problem(status: int, headers: dict[str, str], body: bytes) -> bool:
    if not headers.get("content-type", "").startswith("application/problem+json"):
        return False
    problem = json.loads(body)
    return bool(problem.get("type") and problem.get("title")) and problem["status"] == status


OPENING = json.dumps({"participant": {"name": "Jordan Rivera"}, "case_manager": "cm-1",
                      "risk_level": "moderate"}).encode()


def _post_case(token: str, *extra: bytes) -> bytes:
    return (b"POST /v1/cases HTTP/1.1\r\nHost: casetrail\r\nAuthorization: Bearer "
            + token.encode() + b"\r\nContent-Type: application/json\r\n" + b"".join(extra))


async def test_a_body_past_the_limit_is_413_with_or_without_a_content_length(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """README: larger request bodies than CASETRAIL_MAX_BODY_BYTES are refused with 413,
    whether the length is declared, chunked, or announced with Expect: 100-continue."""
    port, pool = served_records
    big = json.dumps({"participant": {"name": "Jo", "pronouns": "y" * (RECORDS_MAX_BODY + 10)},
                      "case_manager": "cm-1", "risk_level": "low"}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 8192]), big[i:i + 8192])
                       for i in range(0, len(big), 8192)) + b"0\r\n\r\n"
    before = await event_count(pool)
    ways = {
        "content-length": _post_case(token(), b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                                     % len(big)) + big,
        "chunked": _post_case(token(), b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
                              b"\r\n") + chunked,
        "expect 100-continue": _post_case(token(), b"Content-Length: %d\r\nExpect: 100-continue"
                                          b"\r\nConnection: close\r\n\r\n" % len(big)) + big,
    }
    for way, request in ways.items():
        [(status, headers, body)] = _answers(await _raw(port, request))
        assert status == 413, (way, body)
        assert _is_problem(status, headers, body), (way, headers, body)
    assert await event_count(pool) == before


async def test_a_content_length_shorter_than_the_body_writes_nothing(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """The declared length cuts the JSON short; what follows is read as another request:
    each part is refused with a problem and nothing is written."""
    port, pool = served_records
    before = await event_count(pool)
    request = _post_case(token(), b"Content-Length: %d\r\n\r\n" % (len(OPENING) - 5)) + OPENING
    answers = _answers(await _raw(port, request + b"\r\n\r\n"))
    assert answers, "no answer"
    for status, headers, body in answers:
        assert 400 <= status < 500, (status, body)
        assert _is_problem(status, headers, body), (headers, body)
    assert await event_count(pool) == before


async def test_a_client_that_goes_away_mid_body_is_not_a_database_outage(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """A Content-Length longer than what arrives, and the client gone: the request was the
    client's to finish. README (Operations): 503 `database-unavailable` is for a database that
    hangs or cannot be reached, and operators alert on it; a client hanging up mid-upload must
    not be logged as "database unavailable" nor counted as a 5xx answer."""
    port, pool = served_records
    before = await event_count(pool)
    with structlog.testing.capture_logs() as logs:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post_case(token(), b"Content-Length: %d\r\n\r\n" % (len(OPENING) + 50))
                     + OPENING)
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body
        writer.close()
        metrics = ""
        for _ in range(100):  # until the service has finished with the request (at most 2 s)
            metrics = await _metrics(port)
            if 'route="/v1/cases"' in metrics or logs:
                break
            await asyncio.sleep(0.02)
    five_hundreds = re.findall(r'casetrail_http_request_seconds_count\{[^}]*status="5\d\d"\} '
                               r'[1-9]', metrics)
    outage = [e for e in logs if e.get("event") in {"database unavailable", "unhandled error"}]
    assert await event_count(pool) == before
    assert not outage, outage
    assert not five_hundreds, five_hundreds


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as answer:
        return await answer.text()


async def test_expect_100_continue_is_honoured_and_another_expectation_is_a_problem(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """Expect: 100-continue is the one expectation HTTP/1.1 defines (RFC 9110 10.1.1): the
    write goes ahead. Any other is refused with 417, and as every error of the service, as a
    problem body (README: errors are RFC 9457 problem bodies), writing nothing."""
    port, pool = served_records
    before = await event_count(pool)
    request = _post_case(token(), b"Content-Length: %d\r\nExpect: 100-continue\r\n"
                         b"Connection: close\r\n\r\n" % len(OPENING))
    [(status, _, body)] = _answers(await _raw(port, request, then=OPENING))
    assert status == 201, body
    assert await event_count(pool) == before + 1
    request = _post_case(token(), b"Content-Length: %d\r\nExpect: 200-ok\r\n"
                         b"Connection: close\r\n\r\n" % len(OPENING)) + OPENING
    [(status, headers, body)] = _answers(await _raw(port, request))
    assert await event_count(pool) == before + 1
    assert status == 417, body
    assert _is_problem(status, headers, body), (headers, body)
    # answered before any middleware, it still carries a request id, in the body and header
    assert json.loads(body)["request_id"] == headers["x-request-id"], (headers, body)


@pytest.mark.parametrize(("header", "value"), [
    (b"X-Correlation-Id", b"caf\xe9"), (b"X-Causation-Id", "café".encode()),
    (b"Idempotency-Key", b"key-\xff"), (b"Idempotency-Key", "ключ".encode()),
    (b"If-Match", '"\u0661"'.encode()), (b"If-Match", b'"1\xa0"'),
], ids=["correlation latin-1", "causation utf-8", "idempotency byte ff",
        "idempotency cyrillic", "if-match arabic-indic digit", "if-match nbsp byte"])
async def test_header_values_that_are_not_ascii_are_a_400_problem_that_writes_nothing(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory, header: bytes,
        value: bytes) -> None:
    port, pool = served_records
    before = await event_count(pool)
    request = _post_case(token(), header + b": " + value + b"\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(OPENING)) + OPENING
    [(status, headers, body)] = _answers(await _raw(port, request))
    assert status == 400, body
    assert _is_problem(status, headers, body), (headers, body)
    assert await event_count(pool) == before


async def test_a_request_id_that_is_not_ascii_is_replaced_and_the_write_goes_ahead(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    port, _ = served_records
    request = _post_case(token(), b"X-Request-Id: r\xe9q-1\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(OPENING)) + OPENING
    [(status, headers, body)] = _answers(await _raw(port, request))
    assert status == 201, body
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers


async def test_a_transfer_coding_the_service_does_not_apply_is_refused(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """`Transfer-Encoding: gzip, chunked` says the body is gzip inside its chunks. The service
    does not decode gzip transfer coding, so it cannot read such a body as sent (RFC 9112 6.1:
    a coding the server does not understand is refused, 501); taking the plain chunks as the
    JSON instead writes a body the sender, or a proxy that decodes it, never meant. Refused
    with a problem, writing nothing."""
    port, pool = served_records
    before = await event_count(pool)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(OPENING), OPENING)
    for coding in (b"gzip, chunked", b"deflate, chunked", b"x-custom, chunked"):
        request = _post_case(token(), b"Transfer-Encoding: " + coding
                             + b"\r\nConnection: close\r\n\r\n") + chunked
        [(status, headers, body)] = _answers(await _raw(port, request))
        assert status in {400, 501}, (coding, status, body)
        assert _is_problem(status, headers, body), (coding, headers, body)
    assert await event_count(pool) == before


async def test_the_notifier_refuses_a_body_past_its_limit_chunked_or_not(
        rig: NotifierRig, token: TokenFactory) -> None:
    """README: CASETRAIL_MAX_BODY_BYTES, 65536 for the notifier: larger bodies are 413."""
    body = json.dumps({**PREFERENCES.body(None), "pad": "x" * NOTIFIER_MAX_BODY}).encode()
    for chunked in (False, True):
        response = await rig.client.put(
            "/v1/preferences/cm-1", data=_chunks(body) if chunked else body,
            headers={**bearer(token()), "Content-Type": "application/json"})
        problem = await response.json()
        assert response.status == 413, (chunked, problem)
        assert response.content_type == "application/problem+json"
    assert (await _directory(rig))[0] == []


async def test_the_valid_records_body_still_opens_a_case_after_a_hostile_one_on_the_socket(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """A refused body leaves the connection usable (or closed cleanly): the next request on
    a new connection is served."""
    port, _ = served_records
    bad = b'{"participant": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    request = _post_case(token(), b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(bad)) + bad
    [(status, headers, body)] = _answers(await _raw(port, request))
    assert status == 400, body
    assert _is_problem(status, headers, body), body
    request = _post_case(token(), b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(OPENING)) + OPENING
    [(status, _, body)] = _answers(await _raw(port, request))
    assert status == 201, body
