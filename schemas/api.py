"""The records API wire contract: request bodies and response views (pydantic v2).

Request bodies refuse unknown fields, strip strings, refuse empty required strings and bound
every string and list. In revision bodies (PATCH) an omitted field is left unchanged and an
explicit ``null`` clears an optional field; fields that cannot be cleared refuse ``null``.
Practice rules that depend on the plan (cap, reasons for reversals, in_their_words for
participant goals, links to known strengths) are the domain's, not the body's.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, Self, TypeAlias
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from schemas.events import (
    MAX_LIST,
    AgreementOutcome,
    CloseOutcome,
    DaysFrom,
    ExternalRef,
    GivenUserId,
    GoalDomain,
    GoalSource,
    GoalStatus,
    InitialGoalStatus,
    Mailbox,
    Name,
    Participation,
    Pronouns,
    RequirementSource,
    RequirementStatus,
    ReviewBasis,
    RiskLevel,
    StepOwner,
    StepStatus,
    StrengthCategory,
    SupportKind,
    Text,
    Title,
    WireDate,
)

IdList = Annotated[list[UUID], Field(max_length=MAX_LIST)]
TitleList = Annotated[list[Title], Field(max_length=MAX_LIST)]
NameList = Annotated[list[Name], Field(max_length=MAX_LIST)]

# Fields a revision may leave out but not clear: null is refused, and the JSON Schema does not
# offer it (SkipJsonSchema), so the contract says what the server accepts.
_NOT_NULL = "cannot be null; omit the field to keep its current value"


# Dates a person gives for a plan (due, target, held): a generous range, because a typo such
# as year 9999 would otherwise reach date arithmetic (review intervals, reminder days) in the
# services that read the events, and overflow there.
EARLIEST_PLAN_DATE, LATEST_PLAN_DATE = date(1900, 1, 1), date(2999, 12, 31)
PlanDate: TypeAlias = Annotated[WireDate, DaysFrom(EARLIEST_PLAN_DATE, LATEST_PLAN_DATE)]

class Body(BaseModel):
    """Base of every request body."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Revision(Body):
    """A PATCH body: at least one field other than ``reason`` must be given."""

    @model_validator(mode="after")
    def _at_least_one_change(self) -> Self:
        if not (self.model_fields_set - {"reason"}):
            raise ValueError("give at least one field to change")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent (explicit nulls included), except ``reason``."""
        sent = self.model_fields_set
        return {name: getattr(self, name) for name in type(self).model_fields
                if name in sent and name != "reason"}


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------


class ParticipantInput(Body):
    name: Name
    preferred_name: Name | None = None
    pronouns: Pronouns | None = None
    email: Mailbox | None = None
    external_ref: ExternalRef | None = None


class OpenCase(Body):
    participant: ParticipantInput
    case_manager: GivenUserId
    risk_level: RiskLevel


class UpdateParticipant(_Revision):
    name: Name | SkipJsonSchema[None] = None
    preferred_name: Name | None = None
    pronouns: Pronouns | None = None
    email: Mailbox | None = None
    external_ref: ExternalRef | None = None
    reason: Text | None = None

    @field_validator("name")
    @classmethod
    def _name_not_null(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError(_NOT_NULL)
        return value


class StrengthInput(Body):
    category: StrengthCategory
    description: Text
    in_their_words: Text | None = None


class StrengthRevision(_Revision):
    category: StrengthCategory | SkipJsonSchema[None] = None
    description: Text | SkipJsonSchema[None] = None
    in_their_words: Text | None = None
    reason: Text | None = None

    @field_validator("category", "description")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(_NOT_NULL)
        return value


class RemovalReason(Body):
    reason: Text


class GoalInput(Body):
    title: Title
    domain: GoalDomain
    source: GoalSource
    status: InitialGoalStatus = "active"
    in_their_words: Text | None = None
    why_it_matters: Text | None = None
    target_date: PlanDate | None = None
    strength_ids: IdList = Field(default_factory=list)
    risk_factors: TitleList = Field(default_factory=list)
    override_reason: Text | None = None


class GoalRevision(_Revision):
    title: Title | SkipJsonSchema[None] = None
    domain: GoalDomain | SkipJsonSchema[None] = None
    in_their_words: Text | None = None
    why_it_matters: Text | None = None
    target_date: PlanDate | None = None
    strength_ids: IdList | SkipJsonSchema[None] = None
    risk_factors: TitleList | SkipJsonSchema[None] = None
    reason: Text | None = None

    @field_validator("title", "domain", "strength_ids", "risk_factors")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(_NOT_NULL)
        return value


class GoalStatusInput(Body):
    status: GoalStatus
    reason: Text | None = None
    override_reason: Text | None = None


class StepInput(Body):
    description: Text
    owner: StepOwner
    support_name: Name | None = None
    support_id: UUID | None = None
    due_date: PlanDate | None = None
    strength_ids: IdList = Field(default_factory=list)


class StepRevision(_Revision):
    description: Text | SkipJsonSchema[None] = None
    owner: StepOwner | SkipJsonSchema[None] = None
    support_name: Name | None = None
    support_id: UUID | None = None
    due_date: PlanDate | None = None
    strength_ids: IdList | SkipJsonSchema[None] = None
    reason: Text | None = None

    @field_validator("description", "owner", "strength_ids")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(_NOT_NULL)
        return value


class StepStatusInput(Body):
    status: StepStatus
    reason: Text | None = None


class StepCompleteInput(Body):
    note: Text | None = None


class SupportInput(Body):
    name: Name
    kind: SupportKind = "natural"
    relationship: Name | None = None
    contact: Name | None = None
    description: Text | None = None


class RequirementInput(Body):
    title: Title
    description: Text | None = None
    source: RequirementSource = "court"
    reference: ExternalRef | None = None
    due_date: PlanDate | None = None


class RequirementStatusInput(Body):
    status: RequirementStatus
    reason: Text | None = None


class AgreementInput(Body):
    participation: Participation
    present: Annotated[NameList, Field(min_length=1, description="who took part: the"
                                       " participant and everyone else present")]
    participant_statement: Text
    outcome: AgreementOutcome = "agreed"


class ReviewHeldInput(Body):
    held_on: PlanDate | None = None
    summary: Text | None = None
    participant_statement: Text | None = None
    risk_level: RiskLevel | None = None


class RescheduleReviewInput(Body):
    due_date: PlanDate
    reason: Text


class NoteInput(Body):
    text: Text
    goal_id: UUID | None = None


class TransferInput(Body):
    case_manager: GivenUserId
    reason: Text


class CloseInput(Body):
    reason: Text
    outcome: CloseOutcome | None = None


class ReopenInput(Body):
    reason: Text


# --------------------------------------------------------------------------------------------
# Response views
# --------------------------------------------------------------------------------------------


class View(BaseModel):
    """Base of every response view: the answer always carries every field (``null`` when empty),
    so the serialization schema lists them all as required."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class ParticipantView(View):
    name: str
    preferred_name: str | None = None
    pronouns: str | None = None
    email: str | None = None
    external_ref: str | None = None


class StrengthView(View):
    strength_id: UUID
    category: StrengthCategory
    description: str
    in_their_words: str | None = None
    recorded_at: datetime


_STATUS_REASON = ("the reason recorded with the change to `status`; null when that change "
                  "gave none, or the status is the first one")


class StepView(View):
    step_id: UUID
    goal_id: UUID
    description: str
    owner: StepOwner
    support_name: str | None = None
    support_id: UUID | None = None
    due_date: date | None = None
    status: StepStatus
    status_reason: str | None = Field(None, description=_STATUS_REASON)
    strength_ids: list[UUID]
    added_at: datetime
    completed_at: datetime | None = None
    completion_note: str | None = None


class GoalView(View):
    goal_id: UUID
    title: str
    domain: GoalDomain
    source: GoalSource
    status: GoalStatus
    in_their_words: str | None = None
    why_it_matters: str | None = None
    target_date: date | None = None
    strength_ids: list[UUID]
    risk_factors: list[str]
    override_reason: str | None = None
    set_at: datetime
    status_changed_at: datetime
    status_reason: str | None = Field(None, description=_STATUS_REASON)
    achieved_at: datetime | None = None
    steps: list[StepView]


class SupportView(View):
    support_id: UUID
    name: str
    kind: SupportKind
    relationship: str | None = None
    contact: str | None = None
    description: str | None = None
    added_at: datetime


class RequirementView(View):
    requirement_id: UUID
    title: str
    description: str | None = None
    source: RequirementSource
    reference: str | None = None
    due_date: date | None = None
    status: RequirementStatus
    status_reason: str | None = None
    recorded_at: datetime


class AgreementView(View):
    participation: Participation
    present: list[str]
    participant_statement: str
    outcome: AgreementOutcome
    goal_ids: list[UUID]
    recorded_at: datetime
    version: int


class ReviewView(View):
    review_id: UUID
    due_date: date
    basis: ReviewBasis
    interval_days: int | None = None
    risk_level: RiskLevel
    status: Literal["scheduled", "held", "cancelled"] = Field(
        description="cancelled: the case was closed before it was held")
    scheduled_at: datetime
    held_on: date | None = None
    summary: str | None = None
    participant_statement: str | None = None


class NoteView(View):
    note_id: UUID
    text: str
    goal_id: UUID | None = None
    recorded_at: datetime
    version: int


class ClosureView(View):
    reason: str
    outcome: CloseOutcome | None = None
    closed_at: datetime


class PlanView(View):
    """The current plan of a case (a projection of its events)."""

    case_id: UUID
    version: int
    status: Literal["open", "closed"]
    participant: ParticipantView
    case_manager: str
    risk_level: RiskLevel
    strengths: list[StrengthView]
    goals: list[GoalView]
    supports: list[SupportView]
    requirements: list[RequirementView]
    agreement: AgreementView | None = None
    next_review: ReviewView | None = None
    updated_at: datetime
    # optional extras
    agency: str | None = None
    opened_at: datetime | None = None
    active_goal_count: int = 0
    max_active_goals: int | None = None
    reviews: list[ReviewView] = Field(default_factory=list)
    recent_notes: list[NoteView] = Field(default_factory=list)
    note_count: int = 0
    closure: ClosureView | None = None


class LanguageWarning(View):
    """A term from the language guide found in free text; the write still succeeded."""

    field: str
    term: str
    suggestion: str
    message: str


class RecordedForm(View):
    """An event's payload exactly as it was recorded, in the schema version of its day."""

    schema_version: int
    data: dict[str, Any]


class EventView(View):
    """One recorded event as the API shows it (write answers, history, diff)."""

    version: int
    event_id: UUID
    type: str
    schema_version: int
    recorded_at: datetime
    actor: str | None = Field(description="the ``sub`` of whoever recorded it")
    role: str | None = Field(description="the actor's role when they recorded it")
    reason: str | None
    data: dict[str, Any] = Field(description="the payload in the current schema (upcast when "
                                             "it was recorded in an older one)")
    recorded_as: RecordedForm | None = Field(
        default=None, description="null unless ``data`` was upcast; then the payload as "
                                  "recorded (its schema_version and data), which ``hash`` covers")
    prev_hash: str = Field(description="hash of the previous event of the case (hex SHA-256)")
    hash: str = Field(description="this event's link in the case's hash chain (hex SHA-256)")


class WriteResult(View):
    """The answer to every write. ``id`` is present only when the write created an item."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    case_id: UUID
    version: int
    id: UUID | None = Field(default=None, exclude_if=lambda value: value is None,
                            description="the item the write created (absent otherwise)")
    events: list[EventView]
    warnings: list[LanguageWarning]


class HistoryPage(View):
    """A page of a case's events, oldest first; ``next_after_version`` is null on the last."""

    case_id: UUID
    events: list[EventView]
    next_after_version: int | None


class _Change(View):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)

    path: str = Field(description="dotted path in the plan view; list items by their id")


class FieldAdded(_Change):
    change: Literal["added"]
    to: Any


class FieldRemoved(_Change):
    change: Literal["removed"]
    from_: Any = Field(alias="from")


class FieldChanged(_Change):
    change: Literal["changed"]
    from_: Any = Field(alias="from")
    to: Any


FieldChange = Annotated[FieldAdded | FieldRemoved | FieldChanged, Field(discriminator="change")]


class DiffView(View):
    """What changed in the plan between two versions, field by field, and the events between:
    every change, and the events up to a history page's maximum (500); past that,
    ``events_truncated`` is true and ``/history?after_version=<next_after_version>`` lists
    the rest (through ``to_version`` and on)."""

    case_id: UUID
    from_version: int
    to_version: int
    changes: list[FieldChange]
    events: list[EventView]
    events_truncated: bool = False
    next_after_version: int | None = Field(default=None,
                                           description="null when ``events`` holds every event"
                                           " of the range; otherwise the version of the last"
                                           " one listed, to pass as history's after_version")


class BrokenLinkView(View):
    version: int | None
    event_id: UUID | None
    problem: str | None


class VerifyView(View):
    """The case's hash chain recomputed; ``first_broken_link`` is null when it holds."""

    case_id: UUID
    valid: bool
    events_checked: int
    head_hash: str
    first_broken_link: BrokenLinkView | None


class CaseSummary(View):
    """One case in a caseload listing (from the caseload projection)."""

    case_id: UUID
    version: int
    status: Literal["open", "closed"]
    case_manager: str
    risk_level: RiskLevel
    participant_name: str
    next_review_due: date | None
    review_overdue: bool
    overdue_steps: int
    active_goals: int
    updated_at: datetime


class CaseloadPage(View):
    """A page of a caseload in the order asked (by case id unless ``order=next_review``);
    pass ``next_after`` as ``after``, with the same order, for the next page."""

    cases: list[CaseSummary]
    next_after: str | None = Field(description="null on the last page; the last case's id in "
                                   "the id order, <YYYY-MM-DD or ->~<case id> in order="
                                   "next_review")


class AccessLogEntryView(View):
    """One read of a case by a supervisor or an auditor, or an attempt refused on a case of
    the reader's own agency."""

    id: int
    at: datetime
    actor_sub: str
    actor_role: str
    case_id: UUID
    action: str
    what: str | None = Field(description="which read, with its parameters, e.g. \"diff"
                             " from_version=2 to_version=5\" (null on entries written before"
                             " it was recorded)")
    request_id: str | None
    refused: str | None = Field(
        default=None, description="null when the read was let through; otherwise why it was"
        " refused: \"not named in the token\" (an auditor asking for a case of the agency"
        " the token does not name, answered 404) or \"outside the audit window\" (null on"
        " entries written before refusals were marked)")


class AccessLogPage(View):
    """A page of the agency's access log in the order the entries were committed; pass
    ``next_after`` as ``after`` for the next page. ``checkpoint`` is where this answer
    ended: pass it as ``after`` later to read only the entries written since. A page with
    ``next_after`` null is the end of the log only when ``held_back`` is 0."""

    entries: list[AccessLogEntryView]
    next_after: str | None
    checkpoint: str
    held_back: int = Field(0, description="on a page with next_after null: committed entries"
                           " after it not handed out yet, because an older transaction on the"
                           " database server is still open; they follow, in order, once it"
                           " ends (ask again with checkpoint as after)")
    held_back_since: datetime | None = Field(None, description="when the oldest held-back"
                                             " entry was written")


class CoCreationView(View):
    """Plans agreed in the period, and how many were made with the participant: agreed with at
    least one goal the participant named (``source`` participant) among the goals agreed."""

    agreements: int | None = Field(
        description="PlanAgreed events, whatever the participant answered")
    agreed: int | None
    co_created: int | None
    rate: float | None = Field(description="co_created / agreed; null when none was agreed")


class GoalsAchievedView(View):
    total: int | None = Field(
        description="achievements recorded in the period, less reversals: the listed domains"
                    " and other_withheld add up to it")
    by_domain: dict[str, int] = Field(
        description="by the goal's domain; a domain whose count is withheld is not named"
                    " (naming it would tell it was not zero) but added to other_withheld")
    other_withheld: int | None = Field(
        description="achievements in the domains left out of by_domain, with no names: 0 when"
                    " every domain with achievements is listed")
    reversed: int | None = Field(description="goals taken back from achieved in the period")
    median_days_to_achievement: float | None = Field(
        description="from the goal being set to its achievement, over the period's"
                    " achievements not taken back in it; null when none")


class SmallWinsView(View):
    steps_completed: int | None = Field(description="completed in the period, less completions"
                                        " taken back in it")
    reversed: int | None = Field(description="steps moved back from completed in the period")
    per_case_month: float | None = Field(
        description="steps completed per month of open cases; null when no case was open")


class ReviewsView(View):
    """The reviews that fell due in the period (by today; a case closed before its review fell
    due cancelled it), against the date in force: a review rescheduled by its due date is due on
    its new date; one rescheduled after that date had passed was missed, and stays due on it."""

    due: int | None = Field(
        description="reviews due in the period up to yesterday, and those due today that were"
                    " held already; one held early is counted from the day it was due")
    held: int | None = Field(description="of those, held (on time or late)")
    on_time: int | None = Field(description="held on or before the date they were due; never"
                                            " one missed and rescheduled")
    not_held: int | None = Field(description="due, and not held as of today")
    on_time_rate: float | None = Field(description="on_time / due; null when none fell due")


class OutcomesView(View):
    """What works, across the agency's plans in a period: aggregates only, no person named.
    A figure too small to show without singling people out is withheld: null, and named in
    ``withheld`` (decision 0011)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)

    agency: str
    period_from: date = Field(alias="from")
    period_to: date = Field(alias="to")
    min_cell: int = Field(
        description="the agency's minimum cell size k: a count is shown when it is 0, or at"
                    " least k from at least k participants' cases; 1 shows every figure")
    withheld: list[str] = Field(
        description="the figures withheld, as paths (\"goals_achieved.total\"): each is null,"
                    " not zero, and a rate or median built on one is withheld with it;"
                    " \"goals_achieved.by_domain\" means some domains are left out of it."
                    " A null figure not listed here had nothing to be computed from")
    cases_open: int | None = Field(description="cases open on at least one day of the period")
    case_months: float | None = Field(
        description="days cases were open in the period, in months")
    co_creation: CoCreationView
    goals_achieved: GoalsAchievedView
    small_wins: SmallWinsView
    reviews: ReviewsView


class FieldError(View):
    """One invalid field; ``code`` (pydantic's error type) is given for body and query fields."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    field: str
    message: str
    code: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details, with a field-level ``errors`` list; extension members allowed."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError]  # always there: empty when no one field is to blame


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ParticipantInput, OpenCase, UpdateParticipant, StrengthInput, StrengthRevision,
    RemovalReason, GoalInput, GoalRevision, GoalStatusInput, StepInput, StepRevision,
    StepStatusInput, StepCompleteInput, SupportInput, RequirementInput, RequirementStatusInput,
    AgreementInput, ReviewHeldInput, RescheduleReviewInput, NoteInput, TransferInput,
    CloseInput, ReopenInput,
)

RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    PlanView, WriteResult, EventView, LanguageWarning, Problem, HistoryPage, DiffView,
    VerifyView, CaseloadPage, CaseSummary, AccessLogPage,
)
