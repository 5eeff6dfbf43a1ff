"""The write path's state cache over a long run: bounded by what its states hold, not only by
how many there are.

A cached plan keeps every note id its case has ever had (the new-id check), so a state grows
with its case's history; bounded by count alone (2,000 states), the busiest cases' states made
the cache grow for as long as their histories did (bench/soak.py --history-cases: 2,000 cases
of 500 events each, docs/performance.md).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from uuid import UUID, uuid4

from immutables import Map

from schemas import events as ev
from services.records.application.cases import StateCache
from services.records.domain.state import PlanState, fold

NOTES_PER_CASE = 2_000
NOTE_IDS_HELD_AT_MOST = 400_000  # about 26 MiB of note ids (some 65 bytes each)


def _opened() -> PlanState:
    opened = ev.CaseOpened(participant={"name": "Jordan Rivera"}, case_manager="cm-1",
                           risk_level="moderate", agency="agency-a")
    state = fold([(opened, 1, datetime.now(UTC))], case_id=uuid4())
    assert state is not None
    return state


def _with_history(state: PlanState, notes: Map[UUID, None]) -> PlanState:
    """The state of another case whose history holds ``notes`` (shared between the states
    here, to keep the test small: the cache cannot tell)."""
    return dataclasses.replace(state, case_id=uuid4(), note_ids=notes,
                               note_count=len(notes), version=len(notes) + 1)


def test_states_with_long_histories_are_held_within_a_budget() -> None:
    cache = StateCache()
    notes: Map[UUID, None] = Map({uuid4(): None for _ in range(NOTES_PER_CASE)})
    opened = _opened()
    states = [_with_history(opened, notes) for _ in range(600)]  # 1,200,000 note ids

    for state in states:
        cache.put(state)

    held = [s for s in states if cache.get(s.case_id) is not None]
    assert sum(len(s.note_ids) for s in held) <= NOTE_IDS_HELD_AT_MOST
    assert states[-1] in held  # the latest stay, the oldest went
    assert states[0] not in held


def test_a_history_longer_than_the_budget_is_still_cached_while_it_is_written() -> None:
    """One case past the whole budget keeps its state (the one being written to), so its
    writes do not fold its whole history again each time."""
    cache = StateCache()
    huge = _with_history(_opened(), Map({uuid4(): None for _ in range(NOTE_IDS_HELD_AT_MOST)}))
    small = _opened()
    cache.put(small)
    cache.put(huge)
    assert cache.get(huge.case_id) is huge
    assert cache.get(small.case_id) is None  # made room for it


def test_small_states_still_get_their_two_thousand_places() -> None:
    cache = StateCache()
    opened = _opened()
    states = [dataclasses.replace(opened, case_id=uuid4()) for _ in range(2_001)]
    for state in states:
        cache.put(state)
    assert cache.get(states[0].case_id) is None
    assert all(cache.get(s.case_id) is s for s in states[1:])
