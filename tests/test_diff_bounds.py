"""A diff over a long range: its `events` stop at a history page's maximum and say where
`/history` continues, while `changes` stay complete; the stream is folded page by page."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.queries import MAX_EVENTS_LISTED
from services.records.application import queries
from services.records.store import events as events_module
from tests.records_api import CaseApi


async def notes(cm: CaseApi, case_id: str, count: int) -> list[str]:
    return [str((await cm.call("POST", f"/v1/cases/{case_id}/notes",
                               {"text": f"Talked about week {n}"}, expect=201))["id"])
            for n in range(count)]


async def diff(cm: CaseApi, case_id: str, start: int, end: int) -> Any:
    return await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version={start}"
                                f"&to_version={end}", expect=200)


def notes_added(answer: Any) -> list[str]:
    return [c["path"].removeprefix("recent_notes.") for c in answer["changes"]
            if c["path"].startswith("recent_notes.") and c["change"] == "added"]


async def test_a_diff_longer_than_a_history_page_lists_a_page_of_events_and_every_change(
        cm: CaseApi) -> None:
    case_id = await cm.open_case()
    added = await notes(cm, case_id, MAX_EVENTS_LISTED + 5)  # versions 2 … 506
    head = MAX_EVENTS_LISTED + 6
    whole = await diff(cm, case_id, 1, head)
    assert [e["version"] for e in whole["events"]] == list(range(2, MAX_EVENTS_LISTED + 2))
    assert (whole["events_truncated"], whole["next_after_version"]) == (True,
                                                                        MAX_EVENTS_LISTED + 1)
    assert sorted(notes_added(whole)) == sorted(added)
    count = next(c for c in whole["changes"] if c["path"] == "note_count")
    assert (count["from"], count["to"]) == (0, MAX_EVENTS_LISTED + 5)
    rest = await cm.call("GET", f"/v1/cases/{case_id}/history"
                                f"?after_version={whole['next_after_version']}", expect=200)
    assert [e["version"] for e in rest["events"]] == list(range(MAX_EVENTS_LISTED + 2,
                                                                head + 1))
    first_page = await cm.call("GET", f"/v1/cases/{case_id}/history?after_version=1"
                                      f"&limit={MAX_EVENTS_LISTED}", expect=200)
    assert whole["events"] == first_page["events"]

    exactly_a_page = await diff(cm, case_id, 1, MAX_EVENTS_LISTED + 1)
    assert len(exactly_a_page["events"]) == MAX_EVENTS_LISTED
    assert (exactly_a_page["events_truncated"], exactly_a_page["next_after_version"]) == (
        False, None)
    late = await diff(cm, case_id, head - 2, head)  # folded up to version 504 first
    assert [e["version"] for e in late["events"]] == [head - 1, head]
    assert notes_added(late) == sorted(added[-2:])
    count = next(c for c in late["changes"] if c["path"] == "note_count")
    assert (count["from"], count["to"]) == (MAX_EVENTS_LISTED + 3, MAX_EVENTS_LISTED + 5)


async def test_a_short_diff_is_answered_whole(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id, title="Find work")
    await cm.call("PATCH", f"/v1/cases/{case_id}/goals/{goal}",
                  {"title": "Find work in a bike shop"}, expect=200)
    answer = await diff(cm, case_id, 1, 3)
    assert [e["type"] for e in answer["events"]] == ["GoalSet", "GoalRevised"]
    assert (answer["events_truncated"], answer["next_after_version"]) == (False, None)
    assert f"goals.{goal}" in {c["path"] for c in answer["changes"]}


@pytest.mark.parametrize("page", [1, 2, 3])
async def test_a_diff_folded_in_small_pages_is_the_diff_read_at_once(
        cm: CaseApi, monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    """The stream is read page by page (READ_PAGE events at a time), both up to
    ``from_version`` and through the range: any page size gives the same answer."""
    case_id = await cm.open_case(risk_level="high")
    strength = await cm.strength(case_id)
    goal = await cm.goal(case_id, strength_ids=[strength])
    step = await cm.step(case_id, goal, due_date="2026-03-20")
    await notes(cm, case_id, 3)
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
    await cm.call("PATCH", f"/v1/cases/{case_id}/goals/{goal}", {"title": "Work with bikes"},
                  expect=200)
    await notes(cm, case_id, 2)
    ranges = [(0, 11), (1, 11), (3, 9), (4, 5), (6, 10), (10, 11)]
    whole = {r: await diff(cm, case_id, *r) for r in ranges}
    monkeypatch.setattr(events_module, "READ_PAGE", page)
    assert {r: await diff(cm, case_id, *r) for r in ranges} == whole


async def test_the_events_stop_at_the_cap_wherever_the_pages_fall(
        cm: CaseApi, monkeypatch: pytest.MonkeyPatch) -> None:
    case_id = await cm.open_case()
    await notes(cm, case_id, 9)  # versions 2 … 10
    whole = await diff(cm, case_id, 1, 10)
    monkeypatch.setattr(queries, "MAX_EVENTS_LISTED", 4)
    for page in (1, 3, 4, 5, 500):
        monkeypatch.setattr(events_module, "READ_PAGE", page)
        capped = await diff(cm, case_id, 1, 10)
        assert capped["events"] == whole["events"][:4], page
        assert (capped["events_truncated"], capped["next_after_version"]) == (True, 5), page
        assert capped["changes"] == whole["changes"], page
