"""Commands: one per write. Each carries the validated wire body (schemas.api) and the ids the
caller generated beforehand for the items it creates, so re-deciding the same command after a
concurrency retry yields the same events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias
from uuid import UUID

from schemas import api


@dataclass(frozen=True, slots=True)
class Command:
    """Base of all commands."""

    @property
    def created_id(self) -> UUID | None:
        """The id of the item this command creates (the ``id`` of the write result), if any."""
        return None


@dataclass(frozen=True, slots=True)
class OpenCase(Command):
    agency: str
    body: api.OpenCase


@dataclass(frozen=True, slots=True)
class UpdateParticipantDetails(Command):
    body: api.UpdateParticipant


@dataclass(frozen=True, slots=True)
class TransferCase(Command):
    body: api.TransferInput


@dataclass(frozen=True, slots=True)
class CloseCase(Command):
    body: api.CloseInput


@dataclass(frozen=True, slots=True)
class ReopenCase(Command):
    body: api.ReopenInput


@dataclass(frozen=True, slots=True)
class RecordStrength(Command):
    strength_id: UUID
    body: api.StrengthInput

    @property
    def created_id(self) -> UUID | None:
        return self.strength_id


@dataclass(frozen=True, slots=True)
class ReviseStrength(Command):
    strength_id: UUID
    body: api.StrengthRevision


@dataclass(frozen=True, slots=True)
class RemoveStrength(Command):
    strength_id: UUID
    body: api.RemovalReason


@dataclass(frozen=True, slots=True)
class SetGoal(Command):
    goal_id: UUID
    body: api.GoalInput

    @property
    def created_id(self) -> UUID | None:
        return self.goal_id


@dataclass(frozen=True, slots=True)
class ReviseGoal(Command):
    goal_id: UUID
    body: api.GoalRevision


@dataclass(frozen=True, slots=True)
class ChangeGoalStatus(Command):
    goal_id: UUID
    body: api.GoalStatusInput


@dataclass(frozen=True, slots=True)
class AddActionStep(Command):
    step_id: UUID
    goal_id: UUID
    body: api.StepInput

    @property
    def created_id(self) -> UUID | None:
        return self.step_id


@dataclass(frozen=True, slots=True)
class ReviseActionStep(Command):
    step_id: UUID
    body: api.StepRevision


@dataclass(frozen=True, slots=True)
class ChangeActionStepStatus(Command):
    step_id: UUID
    body: api.StepStatusInput


@dataclass(frozen=True, slots=True)
class CompleteActionStep(Command):
    step_id: UUID
    body: api.StepCompleteInput


@dataclass(frozen=True, slots=True)
class AddSupport(Command):
    support_id: UUID
    body: api.SupportInput

    @property
    def created_id(self) -> UUID | None:
        return self.support_id


@dataclass(frozen=True, slots=True)
class RemoveSupport(Command):
    support_id: UUID
    body: api.RemovalReason


@dataclass(frozen=True, slots=True)
class RecordRequirement(Command):
    requirement_id: UUID
    body: api.RequirementInput

    @property
    def created_id(self) -> UUID | None:
        return self.requirement_id


@dataclass(frozen=True, slots=True)
class ChangeRequirementStatus(Command):
    requirement_id: UUID
    body: api.RequirementStatusInput


@dataclass(frozen=True, slots=True)
class AgreePlan(Command):
    """``review_id``: the id of the first review, scheduled when the outcome is ``agreed`` and
    no review is pending."""

    review_id: UUID
    body: api.AgreementInput


@dataclass(frozen=True, slots=True)
class HoldReview(Command):
    """``review_id`` is the review held; ``next_review_id`` the one it schedules."""

    review_id: UUID
    next_review_id: UUID
    body: api.ReviewHeldInput

    @property
    def created_id(self) -> UUID | None:
        return self.next_review_id


@dataclass(frozen=True, slots=True)
class RescheduleReview(Command):
    review_id: UUID
    body: api.RescheduleReviewInput


@dataclass(frozen=True, slots=True)
class AddNote(Command):
    note_id: UUID
    body: api.NoteInput

    @property
    def created_id(self) -> UUID | None:
        return self.note_id


AnyCommand: TypeAlias = (
    OpenCase | UpdateParticipantDetails | TransferCase | CloseCase | ReopenCase
    | RecordStrength | ReviseStrength | RemoveStrength | SetGoal | ReviseGoal | ChangeGoalStatus
    | AddActionStep | ReviseActionStep | ChangeActionStepStatus | CompleteActionStep
    | AddSupport | RemoveSupport | RecordRequirement | ChangeRequirementStatus | AgreePlan
    | HoldReview | RescheduleReview | AddNote
)
