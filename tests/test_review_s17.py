"""Review of session 17's changes: what the new rules must leave as it was.

A request recorded before every text had to be in words (decision 0101, rule 2), retried with
its Idempotency-Key after the upgrade, is answered as it was then: the key answers before
anything is decided, so the retry neither meets the new rule nor writes again. And logs stay
capturable by tests after a service is started in the test process.
"""

from __future__ import annotations

import hashlib
from uuid import UUID, uuid4

import asyncpg
import structlog

from schemas import api
from services.common.logs import configure_logging
from services.notifier import delivery
from services.records.http.routes import NewIds, idempotency_scope
from services.records.store.events import EventStore, IdempotencyClaim, NewEvent
from tests.conftest import bearer
from tests.records_api import CaseApi, event_count

PARTY = "\U0001f389"  # an emoji alone: no letter or digit


def _claim_of(path: str, body: api.NoteInput, key: str) -> IdempotencyClaim:
    """The claim the records service records for ``body`` POSTed to ``path`` by cm-1
    (services/records/http/routes.py ``idempotency``)."""
    canonical = body.model_dump_json(exclude_unset=True)
    fingerprint = hashlib.sha256(f"POST {path}\n{canonical}".encode()).hexdigest()
    return IdempotencyClaim(idempotency_scope("agency-a", "cm-1"), key, fingerprint)


async def test_a_retry_of_a_wordless_note_recorded_before_the_rule_replays_its_answer(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    path, key = f"/v1/cases/{case_id}/notes", "note-before-the-upgrade"
    claim = _claim_of(path, api.NoteInput(text=PARTY), key)
    note_id = NewIds(claim).new()
    version = int((await cm.plan(case_id))["version"])
    # as the service recorded it before the rule: the note, and the key that answers a retry
    await EventStore(fresh_pool).append(
        UUID(case_id), [NewEvent(uuid4(), "NoteAdded", 1,
                                 {"note_id": str(note_id), "text": PARTY})],
        expected_version=version, agency="agency-a", idempotency=claim,
        metadata={"actor": {"sub": "cm-1", "role": "case_manager"}, "idempotency_key": key})
    recorded = await event_count(fresh_pool)

    retried = await cm.client.post(path, json={"text": PARTY},
                                   headers={**bearer(cm.token), "Idempotency-Key": key})

    answer = await retried.json()
    assert retried.status == 201, answer
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert (answer["id"], answer["version"]) == (str(note_id), version + 1)
    assert await event_count(fresh_pool) == recorded
    # the same text asked anew (another key) meets the rule, and writes nothing
    refused = await cm.call("POST", path, {"text": PARTY}, expect=422,
                            headers={"Idempotency-Key": "note-after-the-upgrade"})
    assert refused["type"].endswith("/words-required")
    assert await event_count(fresh_pool) == recorded


def test_a_service_started_in_the_test_process_leaves_logs_capturable() -> None:
    """`casetrail records` or `notifier` run in the test process configures logging as a
    service does, and a service caches each logger on first use. A logger cached before a
    second such start kept the first configuration's processors, which
    structlog.testing.capture_logs does not reach: in the whole suite's order, CI failed on
    the session-refusal tests' `[warning] = ...` (the warning went to stdout instead)."""
    configure_logging("info")
    delivery.log.info("first use after a service's start")
    configure_logging("info")
    with structlog.testing.capture_logs() as logs:
        delivery.log.warning("after another start")
    assert [entry["event"] for entry in logs] == ["after another start"]
