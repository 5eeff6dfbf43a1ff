"""Request and response bodies of the notifier API (pydantic; unknown fields refused)."""

from __future__ import annotations

import re
import unicodedata
from datetime import time
from typing import Any, Literal, Self
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from schemas.events import GivenUserId, Mailbox, TimeZoneName
from schemas.queries import QueryInt

# ASCII digits only: ``\d`` took any script's, which ``time.fromisoformat`` then refused (500)
_HH_MM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
# the roles the notifier writes to; auditors, analysts and services receive nothing
DirectoryRole = Literal["case_manager", "supervisor", "participant"]
# handed_on: a group's notice (``supervisors``) handed on as one notice per member, mailed to
# no one itself (``fan_out``)
Status = Literal["scheduled", "sent", "failed", "dead", "cancelled", "handed_on"]


def _has_control_character(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


class Body(BaseModel):
    """Every request body and query of the notifier API. No text field may carry a control
    character (NUL above all: PostgreSQL refuses it in text, which would be a 500)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and _has_control_character(t) for t in texts):
            raise ValueError("text may not contain control characters")
        return value


class QuietHours(Body):
    start: str = Field(description="HH:MM, local time of the recipient")
    end: str = Field(description="HH:MM; before start means overnight")

    @field_validator("start", "end")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        if not _HH_MM.fullmatch(value):
            raise ValueError("use 24-hour HH:MM, for example 21:30")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def times(self) -> tuple[time, time]:
        return time.fromisoformat(self.start), time.fromisoformat(self.end)


class PreferencesInput(Body):
    email: Mailbox | None
    delivery: Literal["immediate", "daily_digest"]
    timezone: TimeZoneName
    quiet_hours: QuietHours | None = None
    celebrations: StrictBool
    role: DirectoryRole | None = Field(
        default=None, description="directory role; your own is taken from your token")
    cases: list[UUID] | None = Field(default=None, max_length=50,
                                     description="participants: the cases they belong to")


class PreferencesQuery(Body):
    role: DirectoryRole | None = Field(
        default=None, description="which of the user's entries (a staff member's and a"
        " participant's may share an id): for a supervisor reading another's; your own is"
        " the one of your token")


class CaughtMailQuery(Body):
    file: str | None = Field(default=None, max_length=255,
                             description="a caught message, as the index links it: its page")
    raw: str | None = Field(default=None, description="present: the message as it was sent,"
                            " text/plain")


class PreferencesView(BaseModel):
    user: str
    agency: str
    role: str
    email: str | None
    delivery: str
    timezone: str
    quiet_hours: dict[str, str] | None
    celebrations: bool
    cases: list[str]


class NotificationsQuery(Body):
    # held to a body's user id (0004): a filter outside that rule matched no one and answered
    # an empty page, which a supervisor took for nobody having been sent anything
    recipient: GivenUserId | None = Field(
        default=None,
        description="a user id, `supervisors` or `participant:<case id>`: 1-200 characters"
                    " once surrounding spaces are dropped, no control or formatting characters")
    case_id: UUID | None = None
    status: Status | None = None
    kind: str | None = Field(default=None, pattern=r"^[a-z_]{1,40}$")
    limit: QueryInt = Field(default=100, ge=1, le=500)
    offset: QueryInt = Field(default=0, ge=0, le=100_000)


class ScheduleQuery(Body):
    case_id: UUID


class NotificationView(BaseModel):
    id: UUID
    key: str
    kind: str
    case_id: UUID | None
    recipient: str
    recipient_role: str
    due_at: str
    deliver_after: str
    status: Status
    attempts: int
    last_code: int | None
    last_error: str | None
    message_id: str
    sent_at: str | None
    digest_id: UUID | None


class AccessLogEntryView(BaseModel):
    """One read of a case's data here by a supervisor."""

    id: int
    at: str
    actor_sub: str
    actor_role: str
    case_id: UUID | None = Field(description="the case shown; null only for a participant's"
                                 " preferences that name no case")
    participant: str | None = Field(description="whose preferences were read, if any")
    action: Literal["read", "list"]
    what: str = Field(description="which read, e.g. \"schedule\", \"notifications"
                      " status=dead\", \"notification <id>\", \"preferences\"")
    request_id: str | None


class AccessLogPage(BaseModel):
    """A page of the agency's notifier access log in commit order; pass ``next_after`` as
    ``after`` for the next page, or ``checkpoint`` later to read only what was written since.
    A page with ``next_after`` null is the end of the log only when ``held_back`` is 0."""

    entries: list[AccessLogEntryView]
    next_after: str | None
    checkpoint: str
    held_back: int = Field(description="on a page with next_after null: committed entries"
                           " after it not handed out yet, because an older transaction on the"
                           " database server is still open; they follow, in order, once it"
                           " ends (ask again with checkpoint as after)")
    held_back_since: str | None = Field(description="when the oldest held-back entry was"
                                        " written")
