"""Executing plan commands: load the case, authorize, decide, append, project — retrying races.

A write with ``If-Match`` is decided against exactly that version (a stale one fails with
PreconditionFailed). A write without it is decided against the latest state; when another write
lands first, the case is re-read and the command re-decided (the rules are checked again), so
concurrent independent writes succeed or fail on their merits, never on timing: a write that
keeps losing races to other instances ends by holding the case's head while it decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from schemas import api
from schemas.events import (
    EVENT_TYPES,
    EventPayload,
    ReviewScheduled,
    dump_event,
    parse_event,
    reason_in,
    reason_of,
)
from services.common.auth import Principal
from services.records.application.access import (
    Action,
    CaseFacts,
    Forbidden,
    NotVisible,
    authorize,
    authorize_open,
    refuse_from_token,
)
from services.records.application.language import LanguageGuides
from services.records.application.policy import AgencyPolicies
from services.records.domain import (
    Actor,
    AgreePlan,
    AnyCommand,
    DecisionContext,
    DomainError,
    LanguageWarning,
    OpenCase,
    PlanState,
    ReopenCase,
    TransferCase,
    decide,
    warnings_for,
)
from services.records.projections.outcomes import facts_insert, facts_of
from services.records.projections.plans import evolve_each, fold_recorded, plan_upsert
from services.records.store.events import (
    AppendResult,
    Clock,
    CoWrite,
    EventStore,
    IdempotencyClaim,
    LockedStream,
    NewEvent,
    RecordedEvent,
    VersionConflict,
)

MAX_ATTEMPTS = 30
# Races lost to other instances before a write holds the case's head while it decides: past
# this, optimism only lets an instance that keeps winning starve it (503 on timing).
EXCLUSIVE_AFTER = 3


class PreconditionFailed(Exception):
    def __init__(self, current_version: int) -> None:
        super().__init__(f"the case is at version {current_version}")
        self.current_version = current_version


# what deciding a write can refuse it for (a 4xx): the rules, authorization, If-Match
_REFUSALS = (DomainError, Forbidden, NotVisible, PreconditionFailed)


class TooMuchContention(Exception):
    """The case kept changing under us for MAX_ATTEMPTS tries (answered 503, Retry-After)."""


@dataclass(frozen=True)
class WriteRequest:
    case_id: UUID
    command: AnyCommand
    who: Principal
    if_match: int | None = None
    idempotency: IdempotencyClaim | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


@dataclass(frozen=True)
class WriteOutcome:
    case_id: UUID
    version: int
    created_id: UUID | None
    events: list[RecordedEvent]
    warnings: list[LanguageWarning]
    replayed: bool

    def as_view(self) -> api.WriteResult:
        return api.WriteResult(case_id=self.case_id, version=self.version, id=self.created_id,
                               events=[history_entry(e) for e in self.events],
                               warnings=self.warnings)


def history_entry(event: RecordedEvent) -> api.EventView:
    """The event as people read it: in today's schema (an old event upcast, as the plan reads
    it), with the recorded form beside it when they differ, since that is what the hash
    covers."""
    actor = event.metadata.get("actor", {})
    schema_version, data, recorded_as = event.schema_version, event.data, None
    known = EVENT_TYPES.get(event.type)
    current = known.schema_version if known is not None else 0
    if event.schema_version < current:
        payload = parse_event(event.type, event.schema_version, event.data)
        schema_version, data = current, dump_event(payload)
        recorded_as = api.RecordedForm(schema_version=event.schema_version, data=event.data)
    return api.EventView(
        version=event.version, event_id=event.event_id, type=event.type,
        schema_version=schema_version, recorded_at=event.recorded_at,
        actor=actor.get("sub"), role=actor.get("role"),
        reason=reason_of(event.type, event.schema_version, event.data, event.metadata),
        data=data, recorded_as=recorded_as, prev_hash=event.prev_hash, hash=event.hash)


def to_new_event(payload: EventPayload) -> NewEvent:
    data = dump_event(payload)
    # read from the dumped data: a pydantic model answers a missing attribute slowly
    reason = reason_in(data)
    return NewEvent(uuid4(), payload.event_type, payload.schema_version, data,
                    {"reason": reason} if reason else {})


class StateCache:
    """Recently written cases, so a write folds only the events it has not seen yet.

    Safe with several service instances: a cached state is only a starting point, caught up
    from the store before deciding, and the append itself checks the version.

    Bounded by count and by weight (``_weight``): a state keeps every note id its case has
    had, so by count alone the cache grew with the histories of the busiest cases. The state
    written last stays, whatever its weight: it is the one being written to.
    """

    def __init__(self, capacity: int = 2000, max_weight: int = 400_000) -> None:
        self._capacity = capacity
        self._max_weight = max_weight  # about 26 MiB (bench/soak.py, docs/performance.md)
        self._states: OrderedDict[UUID, tuple[PlanState, int]] = OrderedDict()
        self._weight = 0

    def get(self, case_id: UUID) -> PlanState | None:
        held = self._states.get(case_id)
        if held is None:
            return None
        self._states.move_to_end(case_id)
        return held[0]

    def put(self, state: PlanState) -> None:
        self._drop(state.case_id)
        weight = _weight(state)
        self._states[state.case_id] = (state, weight)
        self._weight += weight
        while len(self._states) > 1 and (len(self._states) > self._capacity
                                         or self._weight > self._max_weight):
            self._drop(next(iter(self._states)))

    def _drop(self, case_id: UUID) -> None:
        held = self._states.pop(case_id, None)
        if held is not None:
            self._weight -= held[1]


def _weight(state: PlanState) -> int:
    """About what a state holds, in ids (some 65 bytes each, measured): every note id of its
    case, and its items."""
    return (1 + len(state.note_ids) + len(state.strengths) + len(state.goals)
            + len(state.steps) + len(state.supports) + len(state.requirements)
            + len(state.reviews))


class CaseLocks:
    """One write per case at a time in this process. Writers to a busy case then queue here
    instead of racing in the database, where every loser re-reads and retries: a burst of
    about 100 writers to one case used to run out of attempts (503). Writers on other
    instances still race, and are retried."""

    def __init__(self) -> None:
        self._turns: dict[UUID, _Turn] = {}

    @contextlib.asynccontextmanager
    async def hold(self, case_id: UUID) -> AsyncIterator[None]:
        turn = self._turns.get(case_id)
        if turn is None:
            turn = self._turns[case_id] = _Turn()
        turn.writers += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.writers -= 1
            if not turn.writers:  # nobody waits: forget it
                del self._turns[case_id]

    def writers(self) -> int:
        """How many writes hold their case's turn or wait for it."""
        return sum(turn.writers for turn in self._turns.values())


class _Turn:
    __slots__ = ("lock", "writers")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.writers = 0


class CaseCommands:
    def __init__(self, store: EventStore, guides: LanguageGuides, clock: Clock,
                 on_conflict: Callable[[], None] = lambda: None,
                 policies: AgencyPolicies | None = None) -> None:
        self._store = store
        self._guides = guides
        self._policies = policies if policies is not None else AgencyPolicies(None)
        self._clock = clock
        self._cache = StateCache()
        self.case_locks = CaseLocks()
        self._on_conflict = on_conflict

    async def load(self, case_id: UUID, locked: LockedStream | None = None) -> PlanState | None:
        """The case as the store has it now (caught up from the cached state, if any), folded
        a page at a time: read whole, a long history cost its size in memory on every write
        the cache missed."""
        cached = state = self._cache.get(case_id)
        first = cached.version + 1 if cached is not None else 1
        # up to the head, which every append moves: an event past it was never appended
        # (forged into the table), and deciding on it answered 412 naming a version no read
        # gives; the append then finds the record out of step (409)
        head = await self._store.head(case_id, locked.conn if locked is not None else None)
        if head is None:
            return None
        async for newer in self._store.pages(case_id, first, head.version, locked=locked):
            state = fold_recorded(newer, state)
        if state is not None and state is not cached:
            self._cache.put(state)
        return state

    async def execute(self, request: WriteRequest) -> WriteOutcome:
        if not isinstance(request.command, OpenCase):  # decided before the case is read
            refuse_from_token(request.who, _action_of(request.command), request.case_id)
        # A recorded key answers before anything is decided: a retried transfer is no longer
        # the sender's case to write, and deciding it first would answer 403.
        if (replayed := await self._replay_of(request)) is not None:
            return replayed
        try:
            async with self.case_locks.hold(request.case_id):
                return await self._decide_and_append(request)
        except (*_REFUSALS, TooMuchContention):
            # a retry that raced its original: decided against the state the original left
            # (its item id already taken, the version moved, the case transferred away from
            # its sender), it is still the same request
            if (replayed := await self._replay_of(request)) is None:
                raise
            return replayed

    async def _replay_of(self, request: WriteRequest) -> WriteOutcome | None:
        """The original answer, if this request's Idempotency-Key was recorded already."""
        if request.idempotency is None:
            return None
        replay = await self._store.find_idempotent(request.idempotency)
        return self._outcome(request, replay, None) if replay is not None else None

    async def _decide_and_append(self, request: WriteRequest) -> WriteOutcome:
        # First try on the cached state without reading: the append's version check catches
        # a stale cache. Any refusal reached from the cache is re-decided on a fresh read.
        cached = self._cache.get(request.case_id)
        for attempt in range(MAX_ATTEMPTS):
            try:
                if attempt >= EXCLUSIVE_AFTER:
                    return await self._decide_and_append_holding_the_head(request)
                state = cached if cached is not None else await self.load(request.case_id)
                try:
                    payloads = self._decide(request, state)
                except _REFUSALS:
                    if cached is None:
                        raise
                    cached = None
                    continue
                outcome, written = await self._append(request, state, payloads)
                self._remember(written)
                return outcome
            except VersionConflict as conflict:
                self._on_conflict()
                # lost with the head still at the version the client named (to a deadlock,
                # or to readers moving the moment answered on): no failed precondition
                if (request.if_match is not None and cached is None
                        and conflict.current != conflict.expected):
                    raise PreconditionFailed(conflict.current) from conflict
                if cached is None:
                    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                cached = None
        raise TooMuchContention

    async def _decide_and_append_holding_the_head(self, request: WriteRequest) -> WriteOutcome:
        """Decide and append while holding the case's head: no other instance can land a
        write in between, so this cannot lose the race (only a case opened meanwhile, or a
        lock cycle PostgreSQL breaks, still raises VersionConflict)."""
        async with self._store.locked(request.case_id) as stream:
            state = await self.load(request.case_id, stream)
            payloads = self._decide(request, state)
            outcome, written = await self._append(request, state, payloads, stream)
        self._remember(written)  # committed now: a state that never was is never cached
        return outcome

    def _remember(self, written: PlanState | None) -> None:
        if written is not None:
            self._cache.put(written)

    def _decide(self, request: WriteRequest, state: PlanState | None) -> list[EventPayload]:
        self._authorize(request, state)
        expected = state.version if state is not None else 0
        if request.if_match is not None and request.if_match != expected:
            raise PreconditionFailed(expected)
        return decide(state, request.command, self._context(request, state))

    def _authorize(self, request: WriteRequest, state: PlanState | None) -> None:
        if isinstance(request.command, OpenCase):
            if state is not None and state.agency != request.who.agency:
                raise NotVisible
            authorize_open(request.who, request.command.body.case_manager)
            return
        if state is None:
            raise NotVisible
        authorize(request.who, _action_of(request.command),
                  CaseFacts(state.case_id, state.agency, state.case_manager))

    def _context(self, request: WriteRequest, state: PlanState | None) -> DecisionContext:
        # The agency's policy is snapshotted into CaseOpened; later decisions on the case use
        # that snapshot (policy=None), so a case is held to the policy it was opened under.
        command = request.command
        policy = (self._policies.for_agency(command.agency)
                  if isinstance(command, OpenCase) else None)
        if policy is None:
            assert state is not None  # only an opening has no state, and it brings its policy
            in_force = state.policy
        else:
            in_force = policy
        return DecisionContext(today=in_force.date_at(self._clock()),
                               actor=Actor(sub=request.who.sub, role=request.who.role.value),
                               policy=policy)

    async def _append(self, request: WriteRequest, state: PlanState | None,
                      payloads: list[EventPayload],
                      locked: LockedStream | None = None
                      ) -> tuple[WriteOutcome, PlanState | None]:
        """Append the decided events: the answer, and the state written (None: replayed)."""
        expected = state.version if state is not None else 0
        metadata: dict[str, Any] = {
            "actor": {"sub": request.who.sub, "role": request.who.role.value},
            "agency": request.who.agency,
            "request_id": request.request_id,
            "correlation_id": request.correlation_id or request.request_id,
            # For an HTTP command the cause of its events is the request itself, unless the
            # caller names what it reacted to (X-Causation-Id).
            "causation_id": request.causation_id or request.request_id,
        }
        if request.idempotency is not None:
            metadata["idempotency_key"] = request.idempotency.key

        written: list[PlanState] = []

        def project(events: list[RecordedEvent]) -> list[CoWrite]:
            steps = list(evolve_each(state, zip(payloads, events, strict=True)))
            new_state = steps[-1][2]
            written.append(new_state)
            return [plan_upsert(new_state), *facts_insert(facts_of(steps))]

        result = await self._store.append(
            request.case_id, [to_new_event(p) for p in payloads], expected_version=expected,
            agency=request.who.agency, metadata=metadata, idempotency=request.idempotency,
            co_write=project, locked=locked)
        if result.replayed:
            return self._outcome(request, result, None), None
        # the last projected: an append stamped again projects again (``EventStore.append``)
        return self._outcome(request, result, payloads), written[-1]

    def _outcome(self, request: WriteRequest, result: AppendResult,
                 payloads: list[EventPayload] | None) -> WriteOutcome:
        """The answer to a write; a replayed one is rebuilt from the events it recorded."""
        if payloads is None:
            payloads = [parse_event(e.type, e.schema_version, e.data) for e in result.events]
        guide = self._guides.for_agency(request.who.agency)
        return WriteOutcome(result.stream_id, result.version,
                            created_id(request.command, payloads), result.events,
                            warnings_for(payloads, guide), result.replayed)


def _action_of(command: AnyCommand) -> Action:
    if isinstance(command, TransferCase):
        return Action.TRANSFER
    return Action.REOPEN if isinstance(command, ReopenCase) else Action.WRITE


def created_id(command: AnyCommand, payloads: list[EventPayload]) -> UUID | None:
    """The item a write created; an agreement creates its first review only when it schedules
    one (outcome agreed, no review pending)."""
    if isinstance(command, AgreePlan):
        return next((p.review_id for p in payloads if isinstance(p, ReviewScheduled)), None)
    return command.created_id
