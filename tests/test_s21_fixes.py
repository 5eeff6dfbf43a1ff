"""Defects the twenty-first session's audits found in how the records service and the notifier
read what a client sends: ids spelt in other scripts' digits, and RFC 3339 times the services
refused (fractions of more than nine digits, a leap second)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from schemas.events import _to_microseconds
from services.records.store.events import CoWrite, EventStore, NewEvent, RecordedEvent
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig
from tests.records_api import CaseApi, event_count

NIL_IN_ARABIC_INDIC_DIGITS = "\u0660" * 32
NOT_UUIDS = [
    pytest.param(NIL_IN_ARABIC_INDIC_DIGITS, id="arabic-indic-digits"),
    pytest.param("\uff10" * 32, id="fullwidth-digits"),
    pytest.param("+" + "0" * 31, id="a-sign"),
    pytest.param("0_" + "0" * 30, id="an-underscore"),
    pytest.param("----" + "0" * 32, id="dashes-out-of-place"),
]


async def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, (response.status, await response.text())
    assert response.content_type == "application/problem+json"
    return dict(await response.json())


@pytest.mark.parametrize("case_id", NOT_UUIDS)
async def test_a_case_id_spelt_in_other_characters_is_refused_and_writes_nothing(
        cm: CaseApi, client: TestClient, fresh_pool: asyncpg.Pool, case_id: str) -> None:
    await cm.open_case()
    before = await event_count(fresh_pool)
    response = await client.post(f"/v1/cases/{case_id}/notes", json={"text": "Met at the library"},
                                 headers=bearer(cm.token))
    problem = await _problem(response, 400)
    assert problem["errors"] == [{"field": "path.case_id", "message": "not a UUID"}]
    assert await event_count(fresh_pool) == before


@pytest.mark.parametrize("cursor", NOT_UUIDS)
async def test_a_caseload_cursor_spelt_in_other_characters_is_refused(
        cm: CaseApi, client: TestClient, cursor: str) -> None:
    await cm.open_case()
    response = await client.get("/v1/cases", params={"after": cursor}, headers=bearer(cm.token))
    problem = await _problem(response, 422)
    assert [error["field"] for error in problem["errors"]] == ["query.after"]


@pytest.mark.parametrize("spelling", [
    pytest.param(str.upper, id="capitals"),
    pytest.param(lambda text: text.replace("-", ""), id="no-dashes"),
    pytest.param(lambda text: "urn:uuid:" + text, id="urn"),
])
async def test_a_case_id_in_another_rfc_9562_spelling_still_names_the_case(
        cm: CaseApi, spelling: Any) -> None:
    case_id = await cm.open_case()
    plan = await cm.call("GET", f"/v1/cases/{spelling(case_id)}", expect=200)
    assert plan["case_id"] == case_id


async def test_a_notification_id_spelt_in_other_characters_is_refused(
        rig: NotifierRig, token: TokenFactory) -> None:
    response = await rig.client.get(f"/v1/notifications/{NIL_IN_ARABIC_INDIC_DIGITS}",
                                    headers=bearer(token(role="supervisor", sub="sup-1")))
    problem = await _problem(response, 400)
    assert problem["errors"] == [{"field": "path.notification_id", "message": "not a UUID"}]


@pytest.mark.parametrize(("as_of", "shows_the_note"), [
    pytest.param("2026-03-02T09:00:00.0000000000Z", True, id="ten-digit-fraction-at-the-note"),
    pytest.param("2026-03-02T08:59:59.9999999999Z", False, id="ten-digit-fraction-just-before"),
    pytest.param("2026-03-01T23:59:60Z", False, id="leap-second-before-the-note"),
    pytest.param("2026-03-02T08:59:60Z", False, id="leap-second-ending-just-before-the-note"),
])
async def test_rfc_3339_times_of_any_fraction_and_leap_seconds_are_read(
        cm: CaseApi, clock: FakeClock, as_of: str, shows_the_note: bool) -> None:
    clock.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    case_id = await cm.open_case()
    clock.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Met at the library"}, expect=201)
    clock.now = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    plan = await cm.call("GET", f"/v1/cases/{case_id}?as_of={as_of}", expect=200)
    assert plan["version"] == (2 if shows_the_note else 1)


# --------------------------------------------------------------------------------------------
# an append stamped at or before a moment a reader was answered as of
# --------------------------------------------------------------------------------------------


def _note() -> NewEvent:
    return NewEvent(uuid4(), "NoteAdded", 1, {"note_id": str(uuid4()), "text": "Called"})


async def test_an_append_behind_a_moment_answered_is_stamped_again_once(
        pool: asyncpg.Pool) -> None:
    """Its clock behind the moment an instance ahead answered: one statement refused, one
    stamped one microsecond after that moment, projected once more; no third."""
    clock = FakeClock()
    batches: list[int] = []
    store = EventStore(pool, clock, on_batch=batches.append)
    stream = uuid4()
    await store.append(stream, [_note()], expected_version=0, agency="agency-a", metadata={})
    answered = clock.now + timedelta(seconds=5)
    await store.answer_until(stream, answered)
    batches.clear()
    projected: list[list[RecordedEvent]] = []

    def project(events: list[RecordedEvent]) -> list[CoWrite]:
        projected.append(events)
        return []

    result = await store.append(stream, [_note()], expected_version=1, agency="agency-a",
                                metadata={}, co_write=project)
    assert result.version == 2
    assert result.events[0].recorded_at == answered + timedelta(microseconds=1)
    assert batches == [1, 1]
    assert [events[0].recorded_at for events in projected] == [clock.now, answered
                                                              + timedelta(microseconds=1)]


async def test_an_append_holding_its_head_is_a_batch_of_one(pool: asyncpg.Pool) -> None:
    """``casetrail_append_batch_size``: an append in a transaction holding the head (a writer
    that kept losing races) is a statement of its own, as a keyed one is."""
    batches: list[int] = []
    store = EventStore(pool, FakeClock(), on_batch=batches.append)
    stream = uuid4()
    await store.append(stream, [_note()], expected_version=0, agency="agency-a", metadata={})
    batches.clear()
    async with store.locked(stream) as held:
        await store.append(stream, [_note()], expected_version=1, agency="agency-a",
                           metadata={}, locked=held)
    assert batches == [1]


@pytest.mark.parametrize(("fraction", "kept"), [
    ("5000019", ".500001"),  # cut, never rounded up into the next microsecond
    ("9999999999", ".999999"),
    ("5", ".5"),
])
def test_a_fraction_of_any_length_is_cut_to_microseconds(fraction: str, kept: str) -> None:
    assert _to_microseconds("2026-03-02T10:00:", "00", fraction, "Z") == \
        f"2026-03-02T10:00:00{kept}Z"
