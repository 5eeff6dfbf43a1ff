"""The event catalog: every event of a case stream as a versioned pydantic model.

Conventions (docs/decisions/0100-event-catalog.md):

* one class per event type; ``event_type`` is the class name, ``schema_version`` the payload's
  current version. The stored envelope (stream id, version, event id, metadata, time, hashes)
  belongs to the event store; these models are the ``data`` only.
* the case id is the stream id and is not repeated in payloads; payloads carry the ids of the
  items they create or touch, and small snapshots (goal title, step description) where a
  subscriber of the feed needs them to act without folding the whole stream.
* every free-text string and every list is bounded; unknown fields are refused.
* old payloads are upcast when read (:func:`parse_event`), never rewritten.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import parseaddr
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, TypeAlias
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from schemas.upcasting import MissingUpcaster, upcast

# --------------------------------------------------------------------------------------------
# Bounds and primitive types shared by events and API bodies
# --------------------------------------------------------------------------------------------

MAX_TITLE = 200
MAX_NAME = 200
MAX_TEXT = 4000
MAX_LIST = 20
MAX_IDENTIFIER = 200


def _check_text(value: str) -> str:
    """Refuse text PostgreSQL cannot store (NUL) or that is not valid Unicode (lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


# a UUID as RFC 9562 spells it (dashed or not, either case, braces or urn:uuid: allowed, as
# uuid.UUID reads them); uuid.UUID alone also takes any script's digits, signs, underscores
# and dashes anywhere, which read a cursor of Arabic-Indic zeros as the nil id
_UUID_TEXT = re.compile(r"(?:urn:uuid:)?(\{)?[0-9a-f]{8}(-?)[0-9a-f]{4}\2[0-9a-f]{4}\2[0-9a-f]{4}"
                        r"\2[0-9a-f]{12}(?(1)\})", re.ASCII | re.IGNORECASE)


def uuid_from_text(raw: str) -> UUID:
    """The UUID ``raw`` spells; ValueError for any other text."""
    if _UUID_TEXT.fullmatch(raw) is None:
        raise ValueError(f"{raw!r} is not a UUID")
    return UUID(raw)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)  # ``\d`` alone takes any script's


def _iso_date(value: Any) -> Any:
    """Accept a ``date`` or an ISO 8601 calendar date string ``YYYY-MM-DD``, nothing else."""
    if isinstance(value, datetime):
        raise ValueError("expected a date (YYYY-MM-DD), not a date-time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        if not _ISO_DATE.fullmatch(value):
            raise ValueError("expected a date in the form YYYY-MM-DD")
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError("not a valid calendar date") from None
    raise ValueError("expected a date in the form YYYY-MM-DD")


_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:)(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)


def _rfc3339(value: Any) -> Any:
    """Accept a ``datetime`` or an RFC 3339 date-time string with its offset, nothing else
    (pydantic alone would read a bare number as Unix seconds)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and (parts := _RFC3339.fullmatch(value)):
        return _to_microseconds(*parts.groups())
    raise ValueError("expected an RFC 3339 date-time with a time zone, such as"
                     " 2026-03-01T09:00:00Z")


def _to_microseconds(head: str, second: str, fraction: str | None, offset: str) -> str:
    """The time as a ``datetime`` holds it: a fraction of any length (RFC 3339 sets none) cut
    to microseconds, never rounded up into the next one; a leap second (``:60``) read as its
    minute's last microsecond, the last moment a clock without leap seconds shows before it."""
    if second == "60":
        return f"{head}59.999999{offset}"
    return f"{head}{second}.{fraction[:6]}{offset}" if fraction else f"{head}{second}{offset}"


_CLEAN = AfterValidator(_check_text)

Title: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE), _CLEAN
]
Name: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME), _CLEAN
]
Text: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT), _CLEAN
]
UserId: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_IDENTIFIER), _CLEAN
]


def _as_given(value: Any) -> Any:
    if isinstance(value, str) and (value != value.strip()
                                   or any(unicodedata.category(c) == "Cc" for c in value)):
        raise ValueError("no surrounding spaces or control characters")
    return value


def _shown_as_written(value: str) -> str:
    """A user id is shown in events, access logs and the exports a court reads: a control or
    formatting character (U+200B zero-width space, U+202E right-to-left override) would hide
    in it, or show the text around it reversed."""
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise ValueError("no control or formatting characters (such as U+200B or U+202E)")
    return value


# A user id given to the API (a body's case manager). Events keep UserId, so that those
# recorded before this rule (0004) still read.
GivenUserId: TypeAlias = Annotated[UserId, AfterValidator(_shown_as_written)]
# A user id that names someone exactly as given: a token's sub and agency, a user in a path.
# UserId strips " cm-1" to cm-1, right for a body, wrong for an identity.
ExactUserId: TypeAlias = Annotated[GivenUserId, BeforeValidator(_as_given)]
Pronouns: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50), _CLEAN
]
ExternalRef: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), _CLEAN
]
Email: TypeAlias = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=254,
                      pattern=r"^[^@\s]+@[^@\s]+$"),
    _CLEAN,
]
_NOT_IN_A_PLAIN_ADDRESS = frozenset('<>,;:"()[]\\')


def plain_mailbox(value: str) -> str:
    """An address mail servers read back as itself. A comma, angle brackets or a display name
    were accepted, and mail went elsewhere than the address shown (``jo,smith@x`` to ``jo``,
    ``shown<other@y>`` to ``other@y``); so were invisible formatting characters."""
    local, _, domain = value.rpartition("@")
    if (parseaddr(value) != ("", value) or _NOT_IN_A_PLAIN_ADDRESS & set(value)
            or any(unicodedata.category(c).startswith(("C", "Z")) for c in value)
            or not 0 < len(local) <= 64 or ".." in value
            or not domain or domain.startswith(".") or domain.endswith(".")):
        raise ValueError("must be a plain address such as jo@example.org")
    return value


# What a person gives now (bodies): a plain address. Stored events keep the laxer Email they
# were validated with, so an older address still reads.
Mailbox: TypeAlias = Annotated[Email, AfterValidator(plain_mailbox)]
WireDate: TypeAlias = Annotated[date, BeforeValidator(_iso_date)]
WireDateTime: TypeAlias = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


@dataclass(frozen=True)
class DaysFrom:
    """Annotation of a date: a day from ``earliest`` to ``latest``. Its JSON Schema states the
    range with ``formatMinimum``/``formatMaximum`` (JSON Schema has no standard keyword for
    date ranges)."""

    earliest: date
    latest: date

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._within, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "formatMinimum": self.earliest.isoformat(),
                "formatMaximum": self.latest.isoformat()}

    def _within(self, day: date) -> date:
        if not self.earliest <= day <= self.latest:
            raise ValueError(f"must be a day from {self.earliest} to {self.latest}")
        return day

RiskLevel = Literal["low", "moderate", "high"]
StrengthCategory = Literal[
    "skill", "talent", "interest", "past_success", "coping_strategy", "natural_support",
    "community_resource", "other",
]
GoalDomain = Literal[
    "employment", "housing", "health", "family", "education", "finances", "substance_use",
    "legal", "community", "other",
]
GoalSource = Literal["participant", "court", "agency"]
GoalStatus = Literal["active", "future", "paused", "achieved", "discontinued"]
InitialGoalStatus = Literal["active", "future"]
StepOwner = Literal["participant", "case_manager", "support"]
StepStatus = Literal["not_started", "in_progress", "completed", "cannot_be_done_yet",
                     "no_longer_needed"]
SupportKind = Literal["natural", "professional", "community", "other"]
RequirementSource = Literal["court", "agency", "statute", "other"]
RequirementStatus = Literal["pending", "in_progress", "met", "not_met", "waived"]
Participation = Literal["in_person", "phone", "video"]
AgreementOutcome = Literal["agreed", "did_not_agree", "could_not_answer"]
ReviewBasis = Literal["plan_agreed", "review_held", "rescheduled"]
CloseOutcome = Literal["completed", "transferred_out", "moved", "withdrew", "other"]

ParticipantClearable = Literal["preferred_name", "pronouns", "email", "external_ref"]
StrengthClearable = Literal["in_their_words"]
GoalClearable = Literal["in_their_words", "why_it_matters", "target_date"]
StepClearable = Literal["support_name", "support_id", "due_date"]

IdList: TypeAlias = Annotated[tuple[UUID, ...], Field(max_length=MAX_LIST)]
TitleList: TypeAlias = Annotated[tuple[Title, ...], Field(max_length=MAX_LIST)]
NameList: TypeAlias = Annotated[tuple[Name, ...], Field(max_length=MAX_LIST)]
IntervalDays: TypeAlias = Annotated[int, Field(ge=1, le=366)]


@cache
def _iana_zone_names() -> frozenset[str]:
    # "localtime" is the host's own zone file, not a name: it means whatever the host is set
    # to, and a database server need not know it (neither posixrules, posix/…, right/…, which
    # available_timezones() already leaves out)
    return frozenset(available_timezones() - {"localtime", "posixrules"})


def _iana_zone(value: str) -> str:
    """Only the names of the IANA time zone database this Python knows (exactly as spelled),
    rather than whatever ZoneInfo can open: it also opens "localtime", "posix/…", "right/…"
    and, on a case-insensitive file system, "europe/berlin"."""
    if value not in _iana_zone_names():
        raise ValueError("not an IANA time zone name, e.g. America/Chicago")
    return value


TimeZoneName: TypeAlias = Annotated[
    str, Field(min_length=1, max_length=64, description="IANA name, e.g. Europe/Berlin"),
    AfterValidator(_iana_zone)]


def _openable_zone(value: str) -> str:
    if value.startswith(("/", ".")) or ".." in value:
        raise ValueError("not a time zone name")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError("not a time zone name, e.g. America/Chicago") from error
    return value


# A zone already recorded in an event was checked by the rule of its day (any name ZoneInfo
# opens): a stricter rule for new input must not make a recorded case unreadable.
RecordedTimeZone: TypeAlias = Annotated[
    str, Field(min_length=1, max_length=64,
               description="a time zone name (IANA, e.g. Europe/Berlin, for new cases)"),
    AfterValidator(_openable_zone)]


# --------------------------------------------------------------------------------------------
# Base class and value objects
# --------------------------------------------------------------------------------------------


class EventPayload(BaseModel):
    """The ``data`` of one event. Subclasses set ``event_type`` and ``schema_version``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    schema_version: ClassVar[int]


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Participant(_Value):
    name: Name
    preferred_name: Name | None = None
    pronouns: Pronouns | None = None
    email: Email | None = None
    external_ref: ExternalRef | None = None


class ReviewIntervals(_Value):
    """Days from agreement (or from a review held) to the next review, by risk level."""

    high: IntervalDays = 30
    moderate: IntervalDays = 60
    low: IntervalDays = 90


class PolicySnapshot(_Value):
    """The agency policy in force when the case was opened, so folding needs no config."""

    max_active_goals: Annotated[int, Field(ge=1, le=MAX_LIST)] = 3
    review_interval_days: ReviewIntervals = ReviewIntervals()
    timezone: RecordedTimeZone = Field("UTC", description="the agency's: its dates (today, a"
                                       " review's due date) are days there")


# --------------------------------------------------------------------------------------------
# Case lifecycle
# --------------------------------------------------------------------------------------------


class CaseOpened(EventPayload):
    event_type: ClassVar[str] = "CaseOpened"
    schema_version: ClassVar[int] = 1

    participant: Participant
    case_manager: UserId
    risk_level: RiskLevel
    agency: UserId
    policy: PolicySnapshot = PolicySnapshot()


class ParticipantDetailsUpdated(EventPayload):
    """Only the fields that changed are set; ``cleared`` names the fields removed."""

    event_type: ClassVar[str] = "ParticipantDetailsUpdated"
    schema_version: ClassVar[int] = 1

    name: Name | None = None
    preferred_name: Name | None = None
    pronouns: Pronouns | None = None
    email: Email | None = None
    external_ref: ExternalRef | None = None
    cleared: Annotated[tuple[ParticipantClearable, ...], Field(max_length=4)] = ()
    reason: Text | None = None


class CaseTransferred(EventPayload):
    event_type: ClassVar[str] = "CaseTransferred"
    schema_version: ClassVar[int] = 1

    from_case_manager: UserId
    to_case_manager: UserId
    reason: Text


class CaseClosed(EventPayload):
    event_type: ClassVar[str] = "CaseClosed"
    schema_version: ClassVar[int] = 1

    reason: Text
    outcome: CloseOutcome | None = None


class CaseReopened(EventPayload):
    event_type: ClassVar[str] = "CaseReopened"
    schema_version: ClassVar[int] = 1

    reason: Text


# --------------------------------------------------------------------------------------------
# Strengths
# --------------------------------------------------------------------------------------------


class StrengthRecorded(EventPayload):
    event_type: ClassVar[str] = "StrengthRecorded"
    schema_version: ClassVar[int] = 1

    strength_id: UUID
    category: StrengthCategory
    description: Text
    in_their_words: Text | None = None


class StrengthRevised(EventPayload):
    event_type: ClassVar[str] = "StrengthRevised"
    schema_version: ClassVar[int] = 1

    strength_id: UUID
    category: StrengthCategory | None = None
    description: Text | None = None
    in_their_words: Text | None = None
    cleared: Annotated[tuple[StrengthClearable, ...], Field(max_length=1)] = ()
    reason: Text | None = None


class StrengthRemoved(EventPayload):
    event_type: ClassVar[str] = "StrengthRemoved"
    schema_version: ClassVar[int] = 1

    strength_id: UUID
    reason: Text


# --------------------------------------------------------------------------------------------
# Goals
# --------------------------------------------------------------------------------------------


class GoalSet(EventPayload):
    """A new goal. ``override_reason`` is present only when it exceeded the active-goal cap."""

    event_type: ClassVar[str] = "GoalSet"
    schema_version: ClassVar[int] = 1

    goal_id: UUID
    title: Title
    domain: GoalDomain
    source: GoalSource
    status: InitialGoalStatus = "active"
    in_their_words: Text | None = None
    why_it_matters: Text | None = None
    target_date: WireDate | None = None
    strength_ids: IdList = ()
    risk_factors: TitleList = ()
    override_reason: Text | None = None


class GoalRevised(EventPayload):
    """Only the fields that changed are set; ``cleared`` names the fields removed."""

    event_type: ClassVar[str] = "GoalRevised"
    schema_version: ClassVar[int] = 1

    goal_id: UUID
    title: Title | None = None
    domain: GoalDomain | None = None
    in_their_words: Text | None = None
    why_it_matters: Text | None = None
    target_date: WireDate | None = None
    strength_ids: IdList | None = None
    risk_factors: TitleList | None = None
    cleared: Annotated[tuple[GoalClearable, ...], Field(max_length=3)] = ()
    reason: Text | None = None


class GoalStatusChanged(EventPayload):
    """``title`` is a snapshot for subscribers (milestone celebrations)."""

    event_type: ClassVar[str] = "GoalStatusChanged"
    schema_version: ClassVar[int] = 1

    goal_id: UUID
    title: Title
    from_status: GoalStatus
    status: GoalStatus
    reason: Text | None = None
    override_reason: Text | None = None


# --------------------------------------------------------------------------------------------
# Action steps
# --------------------------------------------------------------------------------------------


class ActionStepAdded(EventPayload):
    """v2: ``owner`` is a kind; a support-owned step names the support (see upcasting.py)."""

    event_type: ClassVar[str] = "ActionStepAdded"
    schema_version: ClassVar[int] = 2

    step_id: UUID
    goal_id: UUID
    description: Text
    owner: StepOwner
    support_name: Name | None = None
    support_id: UUID | None = None
    due_date: WireDate | None = None
    strength_ids: IdList = ()


class ActionStepRevised(EventPayload):
    """Only the fields that changed are set; ``cleared`` names the fields removed."""

    event_type: ClassVar[str] = "ActionStepRevised"
    schema_version: ClassVar[int] = 1

    step_id: UUID
    goal_id: UUID
    description: Text | None = None
    owner: StepOwner | None = None
    support_name: Name | None = None
    support_id: UUID | None = None
    due_date: WireDate | None = None
    strength_ids: IdList | None = None
    cleared: Annotated[tuple[StepClearable, ...], Field(max_length=3)] = ()
    reason: Text | None = None


class ActionStepStatusChanged(EventPayload):
    event_type: ClassVar[str] = "ActionStepStatusChanged"
    schema_version: ClassVar[int] = 1

    step_id: UUID
    goal_id: UUID
    from_status: StepStatus
    status: StepStatus
    reason: Text | None = None


class ActionStepCompleted(EventPayload):
    """A small win. ``description`` and ``owner`` are snapshots for the celebration.
    ``note`` is what was said of the completion; ``reason`` why a step's status was set
    to completed by hand (required from ``no_longer_needed``: a reversal)."""

    event_type: ClassVar[str] = "ActionStepCompleted"
    schema_version: ClassVar[int] = 2

    step_id: UUID
    goal_id: UUID
    description: Text
    owner: StepOwner
    from_status: StepStatus
    note: Text | None = None
    reason: Text | None = None


# --------------------------------------------------------------------------------------------
# Supports and requirements
# --------------------------------------------------------------------------------------------


class SupportAdded(EventPayload):
    event_type: ClassVar[str] = "SupportAdded"
    schema_version: ClassVar[int] = 1

    support_id: UUID
    name: Name
    kind: SupportKind = "natural"
    relationship: Name | None = None
    contact: Name | None = None
    description: Text | None = None


class SupportRemoved(EventPayload):
    event_type: ClassVar[str] = "SupportRemoved"
    schema_version: ClassVar[int] = 1

    support_id: UUID
    reason: Text


class RequirementRecorded(EventPayload):
    """A court/agency requirement: kept distinct from the participant's goals."""

    event_type: ClassVar[str] = "RequirementRecorded"
    schema_version: ClassVar[int] = 1

    requirement_id: UUID
    title: Title
    description: Text | None = None
    source: RequirementSource = "court"
    reference: ExternalRef | None = None
    due_date: WireDate | None = None


class RequirementStatusChanged(EventPayload):
    event_type: ClassVar[str] = "RequirementStatusChanged"
    schema_version: ClassVar[int] = 1

    requirement_id: UUID
    from_status: RequirementStatus
    status: RequirementStatus
    reason: Text | None = None


# --------------------------------------------------------------------------------------------
# Agreement, reviews, notes
# --------------------------------------------------------------------------------------------


class PlanAgreed(EventPayload):
    """How the participant took part and what they said; ``goal_ids``: active goals agreed on."""

    event_type: ClassVar[str] = "PlanAgreed"
    schema_version: ClassVar[int] = 1

    participation: Participation
    present: NameList = ()
    participant_statement: Text
    outcome: AgreementOutcome = "agreed"
    goal_ids: Annotated[tuple[UUID, ...], Field(max_length=100)] = ()


class ReviewScheduled(EventPayload):
    """``interval_days``/``risk_level``: the rule that set ``due_date`` (None when rescheduled)."""

    event_type: ClassVar[str] = "ReviewScheduled"
    schema_version: ClassVar[int] = 1

    review_id: UUID
    due_date: WireDate
    basis: ReviewBasis
    interval_days: IntervalDays | None = None
    risk_level: RiskLevel
    reason: Text | None = None


class ReviewHeld(EventPayload):
    """``due_date`` is a snapshot (on-time reporting); ``risk_level`` a reassessment, if any."""

    event_type: ClassVar[str] = "ReviewHeld"
    schema_version: ClassVar[int] = 1

    review_id: UUID
    held_on: WireDate
    due_date: WireDate
    summary: Text | None = None
    participant_statement: Text | None = None
    risk_level: RiskLevel | None = None


class NoteAdded(EventPayload):
    event_type: ClassVar[str] = "NoteAdded"
    schema_version: ClassVar[int] = 1

    note_id: UUID
    text: Text
    goal_id: UUID | None = None


# --------------------------------------------------------------------------------------------
# Registry, union, parsing
# --------------------------------------------------------------------------------------------

AnyEvent: TypeAlias = (
    CaseOpened | ParticipantDetailsUpdated | CaseTransferred | StrengthRecorded
    | StrengthRevised | StrengthRemoved | GoalSet | GoalRevised | GoalStatusChanged
    | ActionStepAdded | ActionStepRevised | ActionStepStatusChanged | ActionStepCompleted
    | SupportAdded | SupportRemoved | RequirementRecorded | RequirementStatusChanged
    | PlanAgreed | ReviewScheduled | ReviewHeld | NoteAdded | CaseClosed | CaseReopened
)

EVENT_CLASSES: tuple[type[EventPayload], ...] = (
    CaseOpened, ParticipantDetailsUpdated, CaseTransferred, StrengthRecorded, StrengthRevised,
    StrengthRemoved, GoalSet, GoalRevised, GoalStatusChanged, ActionStepAdded,
    ActionStepRevised, ActionStepStatusChanged, ActionStepCompleted, SupportAdded,
    SupportRemoved, RequirementRecorded, RequirementStatusChanged, PlanAgreed,
    ReviewScheduled, ReviewHeld, NoteAdded, CaseClosed, CaseReopened,
)

EVENT_TYPES: dict[str, type[EventPayload]] = {cls.event_type: cls for cls in EVENT_CLASSES}


class EventDecodeError(ValueError):
    """A stored event cannot be turned into a payload model."""

    def __init__(self, event_type: str, schema_version: object, message: str) -> None:
        super().__init__(f"{event_type} (schema_version {schema_version}): {message}")
        self.event_type = event_type
        self.schema_version = schema_version


class UnknownEventType(EventDecodeError):
    """No model is registered for the event type."""


class UnsupportedSchemaVersion(EventDecodeError):
    """The schema version is newer than this code, not positive, or has no upcaster path."""


class InvalidEventData(EventDecodeError):
    """The data does not validate against the (upcast) model; ``errors`` has the details."""

    def __init__(self, event_type: str, schema_version: object, message: str,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(event_type, schema_version, message)
        self.errors = errors or []


def parse_event(event_type: str, schema_version: int,
                data: Mapping[str, Any]) -> EventPayload:
    """Turn a stored event into its current payload model, upcasting older versions first."""
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise UnknownEventType(event_type, schema_version, "unknown event type")
    if (isinstance(schema_version, bool) or not isinstance(schema_version, int)
            or schema_version < 1 or schema_version > cls.schema_version):
        raise UnsupportedSchemaVersion(
            event_type, schema_version,
            f"this code reads schema versions 1..{cls.schema_version}",
        )
    if not isinstance(data, Mapping):
        raise InvalidEventData(event_type, schema_version, "data must be a JSON object")
    try:
        payload = dict(data)
        if schema_version < cls.schema_version:
            payload = upcast(event_type, schema_version, cls.schema_version, payload)
        return cls.model_validate(payload)
    except MissingUpcaster as exc:
        raise UnsupportedSchemaVersion(event_type, schema_version, str(exc)) from exc
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(part) for part in err["loc"]), "msg": err["msg"],
             "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{err['loc'] or '<root>'}: {err['msg']}" for err in errors)
        raise InvalidEventData(event_type, schema_version, f"invalid data: {summary}",
                               errors) from exc


def dump_event(event: EventPayload) -> dict[str, Any]:
    """The JSON-ready ``data`` of an event (what the store writes in its ``data`` column)."""
    return event.model_dump(mode="json")


def reason_of(event_type: str, schema_version: int, data: Mapping[str, Any],
              metadata: Mapping[str, Any]) -> str | None:
    """The reason a person reads for an event: the one recorded beside it, or, for an event
    recorded before its type had a field for it (ActionStepCompleted v1), the one its upcast
    payload holds. History, CSV, PDF and FHIR all show this one."""
    if reason := metadata.get("reason"):
        return str(reason)
    cls = EVENT_TYPES.get(event_type)
    if cls is None or not isinstance(schema_version, int) or schema_version >= cls.schema_version:
        return None
    try:
        return reason_in(dump_event(parse_event(event_type, schema_version, data)))
    except EventDecodeError:
        return None


def reason_in(data: Mapping[str, Any]) -> str | None:
    """The reason an event's data gives: its ``reason``, or the one for overriding a rule."""
    found = data.get("reason") or data.get("override_reason")
    return str(found) if found else None
