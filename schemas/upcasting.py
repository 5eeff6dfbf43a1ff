"""Upcasters: old event payloads are translated to the current schema when read, never rewritten.

An upcaster takes the stored ``data`` of an event at schema version N and returns the data at
version N + 1; :func:`upcast` chains them up to the current version. Each legacy version keeps
its own frozen model here (a copy, not shared types), so the validation of a historical payload
does not drift when the current model evolves; ``python -m schemas.generate`` also writes their
JSON Schema files so the wire history stays documented.

History
-------
``ActionStepAdded`` v1 -> v2
    v1 recorded the owner of an action step as one free-text string ("participant",
    "case manager", "Aunt May"). Practice rule 4 needs the owner *kind* (participant, case
    manager, a named support) to route reminders and to report who carries the steps, so v2
    splits it into ``owner`` (participant | case_manager | support) and ``support_name``
    (and an optional ``support_id`` link to a recorded support, unknown to v1 events).

``ActionStepCompleted`` v1 -> v2
    v1 had one free-text field, ``note``, for what was said of a completion and for the
    reason a step's status was set to completed, the reason required from
    ``no_longer_needed``. So a reversal's reason read as a note: a celebration quoted it, and
    history showed the reversal without one. v2 adds ``reason``; a v1 completion from
    ``no_longer_needed`` (where the reason was required, so the note is it) has its note
    moved there. One through the status route from another status, with its optional
    reason, cannot be told from a ``…/complete`` note and keeps it as a note.

Text a v1 model took that today's types do not
    v1 text was checked for length only, so it may hold nothing but whitespace or line breaks,
    which today's text types strip and then refuse. Every payload a v1 model accepts must
    upcast, or one such event makes its whole case unreadable (and stops a rebuild): blank
    optional text (a note) is read as absent, a blank description as
    :data:`NO_DESCRIPTION`, a blank owner as the case manager's (an unowned step is the case
    manager's to follow up, and the plan can name another owner later).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class MissingUpcaster(LookupError):
    """No upcaster is registered for (event type, schema version)."""


class ActionStepAddedV1(BaseModel):
    """ActionStepAdded as recorded before schema version 2 (owner was free text)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ActionStepAdded")

    step_id: UUID
    goal_id: UUID
    description: str = Field(min_length=1, max_length=4000)
    owner: str = Field(min_length=1, max_length=200)
    due_date: date | None = None
    strength_ids: list[UUID] = Field(default_factory=list, max_length=20)


_PARTICIPANT_OWNERS = frozenset({"participant", "client", "self", "the participant"})
_CASE_MANAGER_OWNERS = frozenset(
    {"case manager", "case_manager", "case-manager", "cm", "case worker", "caseworker", "staff",
     "worker", "probation officer", "po"}
)


NO_DESCRIPTION = "(no description was recorded)"


def _one_line(text: str) -> str:
    """``text`` with each run of whitespace set to one space, "" when it holds nothing else
    (an owner's spelling is matched so; a support's name is kept as written)."""
    return " ".join(text.split())


def _description(text: str) -> str:
    return text if text.strip() else NO_DESCRIPTION


def upcast_action_step_added_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 ``owner`` free text -> v2 ``owner`` kind + ``support_name``."""
    old = ActionStepAddedV1.model_validate(data)
    new = old.model_dump(mode="json")
    new["description"] = _description(old.description)
    key = _one_line(old.owner).lower()
    if key in _PARTICIPANT_OWNERS:
        new["owner"], new["support_name"] = "participant", None
    elif not key or key in _CASE_MANAGER_OWNERS:
        new["owner"], new["support_name"] = "case_manager", None
    else:
        new["owner"], new["support_name"] = "support", old.owner.strip()
    new["support_id"] = None
    return new


class ActionStepCompletedV1(BaseModel):
    """ActionStepCompleted as recorded before schema version 2 (no ``reason``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ActionStepCompleted")

    step_id: UUID
    goal_id: UUID
    description: str = Field(min_length=1, max_length=4000)
    owner: Literal["participant", "case_manager", "support"]
    from_status: Literal["not_started", "in_progress", "completed", "cannot_be_done_yet",
                         "no_longer_needed"]
    note: str | None = Field(None, min_length=1, max_length=4000)


def upcast_action_step_completed_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 ``note`` -> v2 ``reason`` for a reversal from no_longer_needed, else kept."""
    new = ActionStepCompletedV1.model_validate(data).model_dump(mode="json")
    new["description"] = _description(new["description"])
    if new["note"] is not None and not new["note"].strip():
        new["note"] = None
    new["reason"] = None
    if new["from_status"] == "no_longer_needed":
        new["reason"], new["note"] = new["note"], None
    return new


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("ActionStepAdded", 1): upcast_action_step_added_v1,
    ("ActionStepCompleted", 1): upcast_action_step_completed_v1,
}

LEGACY_MODELS: dict[tuple[str, int], type[BaseModel]] = {
    ("ActionStepAdded", 1): ActionStepAddedV1,
    ("ActionStepCompleted", 1): ActionStepCompletedV1,
}


def upcast(event_type: str, from_version: int, to_version: int,
           data: dict[str, Any]) -> dict[str, Any]:
    """Apply the upcasters of ``event_type`` from ``from_version`` up to ``to_version``."""
    version = from_version
    while version < to_version:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise MissingUpcaster(
                f"no upcaster for {event_type} schema_version {version} -> {version + 1}"
            )
        data = step(data)
        version += 1
    return data
