"""Small defects an audit found: counters that appear only after their first increment, bodies
with a key given twice, problem bodies without their ``errors`` list, and a command line that
printed a traceback into a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from schemas import api
from schemas.events import EVENT_TYPES
from services.notifier.rules import Kind
from services.notifier.schedule import SKIP_REASONS
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig
from tests.records_api import CaseApi, event_count
from tests.test_openapi_answers import _errors, _served_document

# --------------------------------------------------------------------------------------------
# counters are there, at 0, from the start
# --------------------------------------------------------------------------------------------


async def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(await response.text())
            for sample in family.samples}


async def test_a_fresh_notifier_lists_every_notification_counter_of_every_kind_at_0(
        rig: NotifierRig) -> None:
    """An ``increase()`` alert on dead letters sees the first one only if the series existed
    before it: a counter born at 1 has no increase."""
    samples = await _samples(rig.client)
    for status in ("sent", "failed", "dead", "cancelled"):
        for kind in Kind:
            name = f"casetrail_notifications_{status}_total"
            assert samples.get((name, (("kind", kind.value),))) == 0, (name, kind)
    for why in SKIP_REASONS:
        assert samples.get(("casetrail_notifier_feed_events_skipped_total",
                            (("why", why),))) == 0, why


async def test_a_fresh_records_service_lists_the_appended_counter_of_every_event_type_at_0(
        make_records_client: ClientFactory, fresh_database_url: str) -> None:
    client = await make_records_client(fresh_database_url)
    samples = await _samples(client)
    for event_type in EVENT_TYPES:
        assert samples.get(("casetrail_events_appended_total",
                            (("type", event_type),))) == 0, event_type


# --------------------------------------------------------------------------------------------
# a key given twice is refused, not read as its last value
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def records_setup(client: TestClient, cm: CaseApi,
                        fresh_database_url: str) -> Any:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    case_id = await cm.open_case()
    yield client, cm, pool, case_id
    await pool.close()


async def _post_raw(client: TestClient, path: str, token: str, raw: bytes) -> tuple[int, Any]:
    response = await client.post(path, data=raw, headers={
        **bearer(token), "Content-Type": "application/json"})
    return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(("path", "raw", "key"), [
    ("/notes", b'{"text": "a", "text": "b"}', "text"),
    ("/goals", b'{"title": "Housing", "domain": "housing", "source": "agency",'
               b' "title": "Work"}', "title"),
])
async def test_a_body_with_a_key_given_twice_is_refused_and_writes_nothing(
        records_setup: Any, path: str, raw: bytes, key: str) -> None:
    client, cm, pool, case_id = records_setup
    before = await event_count(pool)
    status, problem = await _post_raw(client, f"/v1/cases/{case_id}{path}", cm.token, raw)
    assert (status, problem["type"].rsplit("/", 1)[-1]) == (400, "malformed-body"), problem
    assert repr(key) in problem["detail"]
    assert await event_count(pool) == before


async def test_a_case_opened_with_a_participant_field_given_twice_is_refused(
        records_setup: Any) -> None:
    client, cm, pool, _ = records_setup
    before = await event_count(pool)
    raw = (b'{"participant": {"name": "Ana", "name": "Bea"}, "case_manager": "cm-1",'
           b' "risk_level": "low"}')
    status, problem = await _post_raw(client, "/v1/cases", cm.token, raw)
    assert (status, problem["type"].rsplit("/", 1)[-1]) == (400, "malformed-body"), problem
    assert "'name'" in problem["detail"]
    assert await event_count(pool) == before


async def test_the_same_key_in_two_different_objects_is_not_a_duplicate(
        records_setup: Any) -> None:
    client, cm, _, _ = records_setup
    raw = (b'{"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low",'
           b' "name_check": null}')
    status, _ = await _post_raw(client, "/v1/cases", cm.token, raw)
    assert status == 422  # the unknown field, nothing about a key given twice
    raw = b'{"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"}'
    status, _ = await _post_raw(client, "/v1/cases", cm.token, raw)
    assert status == 201


async def test_the_notifier_refuses_a_preferences_body_with_a_key_given_twice(
        rig: NotifierRig, token: TokenFactory) -> None:
    for raw in (b'{"email": "sam@example.org", "email": "other@example.org"}',
                b'{"email": "sam@example.org",'
                b' "quiet_hours": {"start": "21:00", "start": "22:00", "end": "07:00"}}'):
        response = await rig.client.put("/v1/preferences/cm-1", data=raw, headers={
            **bearer(token()), "Content-Type": "application/json"})
        problem = await response.json(content_type=None)
        assert (response.status, problem["type"].rsplit("/", 1)[-1]) == (400, "malformed-body")
        answer = await rig.client.get("/v1/preferences/cm-1", headers=bearer(token()))
        assert answer.status == 404  # nothing stored


# --------------------------------------------------------------------------------------------
# every problem carries its errors list, empty or not
# --------------------------------------------------------------------------------------------


async def test_every_problem_body_carries_an_errors_list(records_setup: Any) -> None:
    client, cm, _, case_id = records_setup
    headers = bearer(cm.token)
    not_found = await client.get("/v1/cases/6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10",
                                 headers=headers)
    stale = await client.post(f"/v1/cases/{case_id}/notes", json={"text": "Met"},
                              headers={**headers, "If-Match": '"99"'})
    malformed = await client.post(f"/v1/cases/{case_id}/notes", data=b'{"text": ',
                                  headers={**headers, "Content-Type": "application/json"})
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Plan complete"}, expect=200)
    conflict = await client.post(f"/v1/cases/{case_id}/close", json={"reason": "Again"},
                                 headers=headers)
    document = await _served_document(client)
    schema = {"$ref": "#/components/schemas/Problem"}
    for response, status in ((not_found, 404), (stale, 412), (malformed, 400),
                             (conflict, 409)):
        problem = await response.json(content_type=None)
        assert (response.status, problem["errors"]) == (status, []), problem
        assert not _errors(document, schema, problem)


async def test_the_notifier_problem_body_carries_an_errors_list(
        rig: NotifierRig, token: TokenFactory) -> None:
    response = await rig.client.get("/v1/preferences/nobody", headers=bearer(token(
        role="supervisor", sub="sup-1")))
    assert (response.status, (await response.json())["errors"]) == (404, [])


def test_the_problem_schema_requires_the_errors_list() -> None:
    schema = api.Problem.model_json_schema(mode="serialization")
    assert "errors" in schema["required"]
    document = json.loads(Path("schemas/openapi.json").read_text(encoding="utf-8"))
    assert "errors" in document["components"]["schemas"]["Problem"]["required"]


# --------------------------------------------------------------------------------------------
# a reader that stops early (`casetrail mail | head`)
# --------------------------------------------------------------------------------------------


def _catch(folder: Path, count: int) -> None:
    folder.mkdir()
    for n in range(count):
        (folder / f"20260302T090000-{n:06d}.eml").write_text(
            f"To: reader-{n}@example.org\nSubject: A small win worth noticing, number {n}\n"
            f"Date: Mon, 02 Mar 2026 09:00:00 +0000\nMessage-ID: <{n}@casetrail.local>\n\nHi\n")


def test_mail_into_a_reader_that_stops_early_exits_quietly(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    _catch(folder, 3000)  # a listing far larger than a pipe holds
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "mail", "--dir", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "CASETRAIL_DEV_DIR": str(tmp_path)})
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    errors = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == 141, errors
    assert first.startswith(b"3000 message(s)")
    assert errors == ""
