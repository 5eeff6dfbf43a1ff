"""Wire contract of the global event feed, read by the notifier and other subscribers."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from schemas.queries import QueryInt, QuerySeconds


class FeedQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: str | None = Field(default=None, max_length=64,
                              description="checkpoint from the previous page; omit to start")
    limit: QueryInt = Field(default=100, ge=1, le=1000)
    wait: QuerySeconds = Field(default=0, ge=0, le=60,
                        description="seconds to wait for new events when there are none")


class FeedEvent(BaseModel):
    checkpoint: str
    global_position: int
    stream_id: UUID
    case_id: UUID
    version: int
    event_id: UUID
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    agency: str
    recorded_at: datetime
    hash: str


class FeedPage(BaseModel):
    events: list[FeedEvent]
    checkpoint: str = Field(description="pass as ?after= to continue after this page")
    held_back: int = Field(0, description="committed events after this page not handed out"
                           " yet: an older transaction on the database server is still open;"
                           " they follow, in order, once it ends")
    held_back_since: datetime | None = Field(None, description="when the oldest held-back"
                                             " event was recorded")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
