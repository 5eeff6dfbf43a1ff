"""The read side as a supervisor or a court uses it: time travel, diffs and history agree
with the plan as it was read live, and a diff tells what changed, never more or less."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.records.application.queries import diff_documents
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi

pytestmark = pytest.mark.usefixtures("fresh_database_url")


async def _note(cm: CaseApi, case_id: str, text: str) -> str:
    return str((await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": text},
                              expect=201))["id"])


async def _diff(cm: CaseApi, case_id: str, start: int, end: int) -> Any:
    return await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version={start}"
                                f"&to_version={end}", expect=200)


async def test_a_diff_never_says_a_note_was_removed(cm: CaseApi) -> None:
    """Notes are never edited or deleted; the plan shows the ten most recent. A note leaving
    that list was reported as `removed`, which a court reads as a deleted record."""
    case_id = await cm.open_case()
    notes = [await _note(cm, case_id, f"Talked about week {n}") for n in range(11)]
    diff = await _diff(cm, case_id, 11, 12)  # the eleventh note pushes the first out
    assert [c for c in diff["changes"] if c["change"] == "removed"] == []
    assert {c["path"] for c in diff["changes"] if c["path"].startswith("recent_notes")} == {
        f"recent_notes.{notes[10]}"}


async def test_a_diff_lists_every_note_added_in_the_range(cm: CaseApi) -> None:
    """Notes added and then pushed out of the recent ten inside the range were missing from
    `changes`: the diff showed ten of the twelve notes the range added."""
    case_id = await cm.open_case()
    await _note(cm, case_id, "Before the range")
    notes = [await _note(cm, case_id, f"Talked about week {n}") for n in range(12)]
    diff = await _diff(cm, case_id, 2, 14)
    shown = [c for c in diff["changes"] if c["path"].startswith("recent_notes")]
    assert {c["change"] for c in shown} == {"added"}
    added = {c["path"]: c["to"] for c in shown}
    assert list(added) == [f"recent_notes.{note}" for note in sorted(notes)]
    assert added[f"recent_notes.{notes[0]}"]["text"] == "Talked about week 0"
    assert added[f"recent_notes.{notes[0]}"]["version"] == 3
    count = next(c for c in diff["changes"] if c["path"] == "note_count")
    assert (count["from"], count["to"]) == (1, 13)


async def test_time_travel_and_diffs_agree_with_the_plan_as_it_was_read(
        cm: CaseApi, clock: FakeClock, token: TokenFactory) -> None:
    """The plan as of version N is the plan read live while N was current, and a diff of two
    versions is the field-by-field difference of those two reads (list items matched by their
    own id, whatever order the keys of a stored plan come back in)."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case(risk_level="high")
    live: dict[int, Any] = {}

    async def read() -> None:
        plan = await cm.plan(case_id)
        live[plan["version"]] = plan
        clock.advance(hours=5)

    await read()
    strength = await cm.strength(case_id)
    await read()
    goal = await cm.goal(case_id, strength_ids=[strength])
    await read()
    await cm.goal(case_id, title="A place of my own", domain="housing")
    await read()
    first = await cm.step(case_id, goal, due_date="2026-03-20", strength_ids=[strength])
    await read()
    await cm.step(case_id, goal, description="Ask Gran about the bike shop")
    await read()
    for write in [("POST", f"steps/{first}/complete", {"note": "Went on Tuesday"}),
                  ("POST", "supports", {"name": "Aunt Maria", "relationship": "aunt"}),
                  ("POST", "requirements", {"title": "Report monthly", "source": "court"}),
                  ("POST", "agreements", {"participation": "video", "present": ["Jo"],
                                          "participant_statement": "It is my plan"}),
                  ("PATCH", f"goals/{goal}", {"title": "Work in a bike shop"}),
                  ("DELETE", f"strengths/{strength}", {"reason": "Jo asked to reword it"}),
                  ("POST", "close", {"reason": "Jo moved to another county"}),
                  ("POST", "reopen", {"reason": "Jo came back"})]:
        method, path, body = write
        await cm.call(method, f"/v1/cases/{case_id}/{path}", body, expect=200 if method != "POST"
                      or path.startswith(("steps", "close", "reopen")) else 201)
        await read()
    await cm.call("POST", f"/v1/cases/{case_id}/transfer",
                  {"case_manager": "cm-2", "reason": "Caseload balance"}, token=supervisor,
                  expect=200)
    current = await cm.call("GET", f"/v1/cases/{case_id}", token=supervisor, expect=200)
    live[current["version"]] = current
    assert len(live) == current["version"] - 1  # PlanAgreed scheduled a review with it
    for version, plan in live.items():
        assert await cm.call("GET", f"/v1/cases/{case_id}?as_of_version={version}",
                             token=supervisor, expect=200) == plan
    versions = sorted(live)
    for start, end in pairwise(versions):
        diff = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version={start}"
                                    f"&to_version={end}", token=supervisor, expect=200)
        assert diff["changes"] == diff_documents(live[start], live[end]), (start, end)
    for start in (1, 3):  # from before the goal, and from the goal without its steps
        whole = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version={start}"
                                     f"&to_version={versions[-1]}", token=supervisor,
                              expect=200)
        assert whole["changes"] == diff_documents(live[start], live[versions[-1]])
    assert f"goals.{goal}.steps.{first}" in {c["path"] for c in whole["changes"]}


@pytest.mark.parametrize("offset", ["+01:00", "%2B01:00", " 01:00"])
async def test_as_of_in_another_time_zone_as_a_browser_sends_it(
        cm: CaseApi, clock: FakeClock, client: TestClient, offset: str) -> None:
    """A `+` left unencoded in a query string arrives as a space (form encoding): ?as_of=
    2026-03-02T10:30:00+01:00 typed into a browser was refused as not RFC 3339."""
    case_id = await cm.open_case()  # 09:00Z
    clock.advance(hours=1)
    await cm.strength(case_id)  # 10:00Z
    response = await client.get(f"/v1/cases/{case_id}?as_of=2026-03-02T10:30:00{offset}",
                                headers=bearer(cm.token))
    body = await response.json()
    assert response.status == 200, body
    assert (body["version"], response.headers["ETag"]) == (1, '"1"')  # 09:30Z


@pytest.mark.parametrize("as_of", ["2026-03-02T10:30 01:00", "2026-03-02 01:00",
                                   "2026-03-02T10:30:00  01:00", "2026-03-02T10:30:00 1:00",
                                   "2026-03-02T10:30:00Z 01:00"])
async def test_only_a_plus_lost_to_form_encoding_is_read_back(cm: CaseApi, client: TestClient,
                                                              as_of: str) -> None:
    case_id = await cm.open_case()
    response = await client.get(f"/v1/cases/{case_id}", params={"as_of": as_of},
                                headers=bearer(cm.token))
    body = await response.json()
    assert response.status == 422, body
    assert [e["field"] for e in body["errors"]] == ["query.as_of"]
