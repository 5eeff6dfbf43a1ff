"""The plan domain: pure (commands in, events out; events folded into state).

Imports neither aiohttp nor asyncpg, reads no clock and makes no ids: time comes in through
``DecisionContext.today`` and recorded times; ids come with the commands.
"""

from schemas.api import LanguageWarning
from services.records.domain.commands import (
    AddActionStep,
    AddNote,
    AddSupport,
    AgreePlan,
    AnyCommand,
    ChangeActionStepStatus,
    ChangeGoalStatus,
    ChangeRequirementStatus,
    CloseCase,
    Command,
    CompleteActionStep,
    HoldReview,
    OpenCase,
    RecordRequirement,
    RecordStrength,
    RemoveStrength,
    RemoveSupport,
    ReopenCase,
    RescheduleReview,
    ReviseActionStep,
    ReviseGoal,
    ReviseStrength,
    SetGoal,
    TransferCase,
    UpdateParticipantDetails,
)
from services.records.domain.decide import decide
from services.records.domain.errors import DomainError, InvalidTransition, NotFound, RuleViolation
from services.records.domain.language import (
    CHECKED_FIELDS,
    GuideTerm,
    LanguageGuide,
    load_base_guide,
    warnings_for,
)
from services.records.domain.policy import Actor, AgencyPolicy, DecisionContext
from services.records.domain.runner import InMemoryCase
from services.records.domain.state import (
    FoldError,
    GoalState,
    PlanState,
    ReviewState,
    StepState,
    StrengthState,
    evolve,
    fold,
)
from services.records.domain.view import plan_view

__all__ = [
    "CHECKED_FIELDS",
    "Actor",
    "AddActionStep",
    "AddNote",
    "AddSupport",
    "AgencyPolicy",
    "AgreePlan",
    "AnyCommand",
    "ChangeActionStepStatus",
    "ChangeGoalStatus",
    "ChangeRequirementStatus",
    "CloseCase",
    "Command",
    "CompleteActionStep",
    "DecisionContext",
    "DomainError",
    "FoldError",
    "GoalState",
    "GuideTerm",
    "HoldReview",
    "InMemoryCase",
    "InvalidTransition",
    "LanguageGuide",
    "LanguageWarning",
    "NotFound",
    "OpenCase",
    "PlanState",
    "RecordRequirement",
    "RecordStrength",
    "RemoveStrength",
    "RemoveSupport",
    "ReopenCase",
    "RescheduleReview",
    "ReviewState",
    "ReviseActionStep",
    "ReviseGoal",
    "ReviseStrength",
    "RuleViolation",
    "SetGoal",
    "StepState",
    "StrengthState",
    "TransferCase",
    "UpdateParticipantDetails",
    "decide",
    "evolve",
    "fold",
    "load_base_guide",
    "plan_view",
    "warnings_for",
]
