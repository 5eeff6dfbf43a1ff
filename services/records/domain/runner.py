"""An in-memory case: decide, then evolve, keeping the recorded stream (pure; no store).

For unit tests, property tests and seeding demo data. Recording times are derived from
``started_at`` (one second per version) unless given, so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from schemas.events import EventPayload
from services.records.domain.commands import Command
from services.records.domain.decide import decide
from services.records.domain.policy import DecisionContext
from services.records.domain.state import PlanState, evolve

Recorded = tuple[EventPayload, int, datetime]


@dataclass
class InMemoryCase:
    case_id: UUID
    ctx: DecisionContext
    started_at: datetime
    state: PlanState | None = None
    stream: list[Recorded] = field(default_factory=list)

    @property
    def version(self) -> int:
        return len(self.stream)

    def execute(self, command: Command, *, ctx: DecisionContext | None = None,
                at: datetime | None = None) -> list[EventPayload]:
        """Decide ``command`` and record its events; a refusal records nothing."""
        events = decide(self.state, command, ctx or self.ctx)
        for event in events:
            version = len(self.stream) + 1
            recorded_at = at or self.started_at + timedelta(seconds=version)
            self.state = evolve(self.state, event, version=version, recorded_at=recorded_at,
                                case_id=self.case_id)
            self.stream.append((event, version, recorded_at))
        return events
