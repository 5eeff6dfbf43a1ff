"""An audit of two records changes of the eighteenth session (decision 0101):

1. a revision sending back, unchanged, wordless text recorded before the words rule is
   accepted (``decide._revised_item``, ``words._new_text``), while changed wordless text is
   still 422 ``words_required`` and writes nothing;
2. transfer and close of a closed case keep 409 ``case_closed`` in words of their own.

Each test asserts the behaviour the brief and the decision note promise; a failing one is a
finding. Legacy events are folded or appended as read, never decided, as an importer or the
code before the rule wrote them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from schemas import api
from schemas import events as ev
from services.records import domain as d
from services.records.application.cases import to_new_event
from services.records.domain import state as st
from services.records.domain import words
from services.records.domain.decide import _DECIDERS
from services.records.export.signing import write_key_pair
from services.records.export.verify import verify_export
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi, event_count

pytestmark = pytest.mark.usefixtures("fresh_database_url")

TODAY = date(2026, 3, 2)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))
PLAN_WORDS = "before changing the plan"
TRANSFER_WORDS = "This case is closed: reopen it (with a reason) before transferring it"
CLOSE_WORDS = "This case is closed already; nothing was changed."

STRENGTH, GOAL, OTHER_GOAL, STEP, SUPPORT = (uuid4() for _ in range(5))


def legacy_events(title: str = ".") -> list[ev.EventPayload]:
    """A case whose every text was recorded without words, before the rule."""
    return [
        ev.CaseOpened(participant=ev.Participant(name="-", preferred_name=".", pronouns="?!",
                                                 external_ref="\u2026"),
                      case_manager="cm-1", risk_level="moderate", agency="agency-a"),
        ev.StrengthRecorded(strength_id=STRENGTH, category="skill", description=".",
                            in_their_words="-"),
        ev.GoalSet(goal_id=GOAL, title=title, domain="housing", source="participant",
                   in_their_words="-", why_it_matters="\u2026",
                   risk_factors=("-", "housing instability")),
        ev.GoalSet(goal_id=OTHER_GOAL, title="-", domain="employment", source="agency",
                   in_their_words="?", why_it_matters="!"),
        ev.SupportAdded(support_id=SUPPORT, name="-"),
        ev.ActionStepAdded(step_id=STEP, goal_id=GOAL, description="\u2026", owner="support",
                           support_name="-"),
    ]


def legacy_case(title: str = ".") -> d.InMemoryCase:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
    for event in legacy_events(title):
        version = case.version + 1
        at = case.started_at + timedelta(seconds=version)
        case.state = d.evolve(case.state, event, version=version, recorded_at=at,
                              case_id=case.case_id)
        case.stream.append((event, version, at))
    return case


def body(model: type[BaseModel], **fields: Any) -> Any:
    return model.model_validate(fields)


def refused(case: d.InMemoryCase, command: d.Command) -> d.DomainError:
    version, state = case.version, case.state
    with pytest.raises(d.DomainError) as error:
        case.execute(command)
    assert (case.version, case.state) == (version, state)  # nothing recorded
    return error.value


def revise_goal(goal: UUID = GOAL, **fields: Any) -> d.Command:
    return d.ReviseGoal(goal, body(api.GoalRevision, **fields))


def revise_step(**fields: Any) -> d.Command:
    return d.ReviseActionStep(STEP, body(api.StepRevision, **fields))


def revise_strength(**fields: Any) -> d.Command:
    return d.ReviseStrength(STRENGTH, body(api.StrengthRevision, **fields))


def update_participant(**fields: Any) -> d.Command:
    return d.UpdateParticipantDetails(body(api.UpdateParticipant, **fields))


# Every worded field of every revision, the wordless value it was recorded with, and the
# revision that carries it, with one change in words beside it (a client echoing the item).
ECHOED: dict[str, tuple[Any, str, Any, dict[str, Any]]] = {
    "participant name": (update_participant, "name", "-", {"email": "jo@example.org"}),
    "participant preferred_name": (update_participant, "preferred_name", ".",
                                   {"email": "jo@example.org"}),
    "participant pronouns": (update_participant, "pronouns", "?!",
                             {"email": "jo@example.org"}),
    "participant external_ref": (update_participant, "external_ref", "\u2026",
                                 {"email": "jo@example.org"}),
    "strength description": (revise_strength, "description", ".", {"category": "talent"}),
    "strength in_their_words": (revise_strength, "in_their_words", "-",
                                {"category": "talent"}),
    "goal title": (revise_goal, "title", ".", {"target_date": date(2026, 6, 1)}),
    "goal in_their_words": (revise_goal, "in_their_words", "-",
                            {"target_date": date(2026, 6, 1)}),
    "goal why_it_matters": (revise_goal, "why_it_matters", "\u2026",
                            {"target_date": date(2026, 6, 1)}),
    "goal risk_factors": (revise_goal, "risk_factors", ["-", "housing instability"],
                          {"target_date": date(2026, 6, 1)}),
    "step description": (revise_step, "description", "\u2026", {"due_date": date(2026, 4, 1)}),
    "step support_name": (revise_step, "support_name", "-",
                          {"owner": "support", "due_date": date(2026, 4, 1)}),
}


def code_for(kind: str) -> str:
    """The refusal of a wordless text; a participant's goal keeps its own for their words."""
    return "in_their_words_required" if kind == "goal in_their_words" else "words_required"


# --------------------------------------------------------------------------------------------
# the domain: what is compared, and with what
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ECHOED))
def test_each_worded_field_echoed_unchanged_is_accepted_and_not_recorded_again(
        kind: str) -> None:
    make, field, recorded, change = ECHOED[kind]
    case = legacy_case()
    [event] = case.execute(make(**{field: recorded}, **change))
    assert getattr(event, field) is None  # the echo is not written anew
    assert field not in getattr(event, "cleared", ())


@pytest.mark.parametrize("kind", sorted(ECHOED))
def test_each_worded_field_changed_to_other_wordless_text_is_refused(kind: str) -> None:
    make, field, recorded, change = ECHOED[kind]
    other: Any = [*recorded, "~"] if isinstance(recorded, list) else recorded + "."
    case = legacy_case()
    error = refused(case, make(**{field: other}, **change))
    assert (error.code, error.field) == (code_for(kind), field)


def test_every_worded_field_of_a_revision_is_compared_with_the_same_field_of_its_item() -> None:
    """A body field named otherwise on the state item would be compared with None (judged)
    or, worse, with another field's value: each worded field exists on its item by name."""
    items: dict[type[BaseModel], type[object]] = {
        api.UpdateParticipant: st.ParticipantState, api.StrengthRevision: st.StrengthState,
        api.GoalRevision: st.GoalState, api.StepRevision: st.StepState}
    for model, item in items.items():
        held = {f.name for f in dataclasses.fields(item)}  # type: ignore[arg-type]
        worded = {name for name in model.model_fields if name in words.WORDED_FIELDS}
        assert worded, model
        assert worded <= held, (model, worded - held)


def test_surrounding_whitespace_around_an_unchanged_text_is_the_same_text() -> None:
    case = legacy_case()
    [event] = case.execute(revise_goal(title="  .\t", target_date=date(2026, 6, 1)))
    assert (event.title, event.target_date) == (None, date(2026, 6, 1))  # type: ignore[attr-defined]
    assert case.state is not None
    assert case.state.goals[GOAL].title == "."


@pytest.mark.parametrize("variant", [". .", "..", ".\u200b", "\u00a0.\u200b", ".\u3002"])
def test_inner_whitespace_or_invisible_characters_make_new_wordless_text(variant: str) -> None:
    case = legacy_case()
    error = refused(case, revise_goal(title=variant, target_date=date(2026, 6, 1)))
    assert (error.code, error.field) == ("words_required", "title")


@pytest.mark.parametrize(("recorded", "sent"), [
    ("\u0385", "\u00a8\u0301"),   # GREEK DIALYTIKA TONOS and its canonical decomposition
    ("\u00a8\u0301", "\u0385"),
    ("\u037e", ";"),              # GREEK QUESTION MARK, whose NFC form is the semicolon
    ("\u2026", "..."),            # compatibility (NFKC) form of the ellipsis
])
def test_another_unicode_form_of_a_wordless_text_records_no_new_wordless_title(
        recorded: str, sent: str) -> None:
    """Whether another normalisation form counts as the same text or not, what it must never
    do is record a wordless title the goal did not hold."""
    case = legacy_case(title=recorded)
    command = revise_goal(title=sent, target_date=date(2026, 6, 1))
    try:
        events = case.execute(command)
    except d.RuleViolation:
        error = refused(case, command)
        assert (error.code, error.field) == ("words_required", "title")
        return
    assert [getattr(e, "title", None) for e in events] == [None]
    assert case.state is not None
    assert case.state.goals[GOAL].title == recorded


def test_risk_factors_reordered_or_repeated_give_no_new_text() -> None:
    case = legacy_case()
    [event] = case.execute(revise_goal(risk_factors=["housing instability", "-", "-"]))
    assert event.risk_factors == ("housing instability", "-")  # type: ignore[attr-defined]
    error = refused(case, revise_goal(risk_factors=["housing instability", "-", "-"]))
    assert error.code == "no_change"


@pytest.mark.parametrize("factors", [["-", "."], ["-", "-", "--"], ["- ", "\u2026"],
                                     ["housing instability", "?"]])
def test_a_risk_factor_not_on_the_goal_is_judged_however_it_is_listed(
        factors: list[str]) -> None:
    case = legacy_case()
    error = refused(case, revise_goal(risk_factors=factors))
    assert (error.code, error.field) == ("words_required", "risk_factors")


def test_a_risk_factor_equal_to_the_goals_wordless_title_is_new_text() -> None:
    case = legacy_case()
    error = refused(case, revise_goal(title=".", risk_factors=["-", "."]))
    assert (error.code, error.field) == ("words_required", "risk_factors")


@pytest.mark.parametrize(("command", "field"), [
    # another field of the same item
    (lambda: update_participant(pronouns="-"), "pronouns"),
    (lambda: update_participant(preferred_name="-", name="-"), "preferred_name"),
    (lambda: update_participant(external_ref="?!"), "external_ref"),
    (lambda: revise_strength(description="-"), "description"),
    (lambda: revise_strength(in_their_words="."), "in_their_words"),
    (lambda: revise_goal(why_it_matters="-"), "why_it_matters"),
    (lambda: revise_goal(OTHER_GOAL, title="?"), "title"),
    (lambda: revise_goal(title="\u2026"), "title"),
    (lambda: revise_step(description="-"), "description"),
    (lambda: revise_step(owner="support", support_name="\u2026"), "support_name"),
    # another item's
    (lambda: revise_goal(OTHER_GOAL, title="."), "title"),
    (lambda: revise_goal(OTHER_GOAL, why_it_matters="\u2026"), "why_it_matters"),
    (lambda: revise_goal(OTHER_GOAL, in_their_words="-"), "in_their_words"),
    (lambda: revise_goal(OTHER_GOAL, in_their_words="\u2026"), "in_their_words"),
    (lambda: revise_goal(title="-"), "title"),
    (lambda: revise_strength(description="\u2026"), "description"),
    (lambda: revise_step(description="."), "description"),
    (lambda: update_participant(pronouns="."), "pronouns"),
])
def test_text_equal_to_another_fields_or_items_wordless_text_is_new_text(
        command: Any, field: str) -> None:
    case = legacy_case()
    error = refused(case, command())
    assert (error.code, error.field) == ("words_required", field)


def test_an_echo_beside_a_changed_wordless_field_is_refused_on_that_field() -> None:
    case = legacy_case()
    error = refused(case, revise_goal(title=".", in_their_words="-", why_it_matters="!!",
                                      risk_factors=["-"], target_date=date(2026, 6, 1)))
    assert (error.code, error.field) == ("words_required", "why_it_matters")


def test_null_clears_a_legacy_text_and_missing_leaves_it() -> None:
    case = legacy_case()
    [cleared] = case.execute(revise_goal(why_it_matters=None))
    assert cleared.cleared == ("why_it_matters",)  # type: ignore[attr-defined]
    # the old text sent back after it was cleared is compared with nothing: new text
    error = refused(case, revise_goal(why_it_matters="\u2026"))
    assert (error.code, error.field) == ("words_required", "why_it_matters")
    # a participant's goal keeps its own words: null is refused with its own code
    error = refused(case, revise_goal(in_their_words=None))
    assert (error.code, error.field) == ("in_their_words_required", "in_their_words")


def test_a_name_cannot_be_cleared_by_null_even_when_it_was_recorded_without_words() -> None:
    with pytest.raises(ValueError, match="cannot be null"):
        body(api.UpdateParticipant, name=None)
    with pytest.raises(ValueError, match="cannot be null"):
        body(api.GoalRevision, title=None)


def test_an_echo_is_compared_with_the_state_decided_on_not_an_older_one() -> None:
    """A concurrent writer renamed the goal: the same echo, re-decided against the new state,
    would set the title back to "." and is refused; against the old state it is accepted."""
    old = legacy_case()
    assert old.state is not None
    echo = revise_goal(title=".", target_date=date(2026, 6, 1))
    assert d.decide(old.state, echo, CTX)
    old.execute(revise_goal(title="A flat of my own"))
    with pytest.raises(d.RuleViolation) as error:
        d.decide(old.state, echo, CTX)
    assert (error.value.code, error.value.field) == ("words_required", "title")


def test_an_echoed_support_name_does_not_move_a_step_to_another_owner() -> None:
    case = legacy_case()
    error = refused(case, revise_step(owner="case_manager", support_name="-"))
    assert error.code == "support_not_owner"
    [event] = case.execute(revise_step(owner="support", support_name="-",
                                       support_id=SUPPORT, description="\u2026"))
    assert (event.support_name, event.support_id) == (None, SUPPORT)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# the domain: a closed case
# --------------------------------------------------------------------------------------------


def closed_legacy_case() -> d.InMemoryCase:
    case = legacy_case()
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    return case


def plan_writes() -> dict[type[d.Command], d.Command]:
    """A write of every kind but open, close, transfer and reopen, each one that the open
    case would accept or refuse for its own reason (a legacy echo, wordless text)."""
    review = uuid4()
    commands: list[d.Command] = [
        update_participant(name="-", email="jo@example.org"),
        d.RecordStrength(uuid4(), api.StrengthInput(category="skill", description="Cooks")),
        revise_strength(description=".", category="talent"),
        d.RemoveStrength(STRENGTH, api.RemovalReason(reason="Recorded twice")),
        d.SetGoal(uuid4(), api.GoalInput(title=".", domain="housing", source="agency")),
        revise_goal(title=".", target_date=date(2026, 6, 1)),
        d.ChangeGoalStatus(GOAL, api.GoalStatusInput(status="paused")),
        d.AddActionStep(uuid4(), GOAL, api.StepInput(description="Call", owner="participant")),
        revise_step(description="\u2026", due_date=date(2026, 4, 1)),
        d.ChangeActionStepStatus(STEP, api.StepStatusInput(status="in_progress")),
        d.CompleteActionStep(STEP, api.StepCompleteInput(note="!")),
        d.AddSupport(uuid4(), api.SupportInput(name="Maria")),
        d.RemoveSupport(SUPPORT, api.RemovalReason(reason="Moved away")),
        d.RecordRequirement(uuid4(), api.RequirementInput(title="Report monthly")),
        d.ChangeRequirementStatus(uuid4(), api.RequirementStatusInput(status="met")),
        d.AgreePlan(uuid4(), api.AgreementInput(participation="in_person", present=["Jo"],
                                                participant_statement="Mine")),
        d.HoldReview(review, uuid4(), api.ReviewHeldInput(summary="Good month")),
        d.RescheduleReview(review, api.RescheduleReviewInput(due_date=date(2026, 5, 1),
                                                             reason="Away")),
        d.AddNote(uuid4(), api.NoteInput(text="\U0001f389")),
    ]
    return {type(command): command for command in commands}


def test_the_audit_covers_every_kind_of_write() -> None:
    others = {d.OpenCase, d.CloseCase, d.TransferCase, d.ReopenCase}
    assert set(plan_writes()) == set(_DECIDERS) - others


@pytest.mark.parametrize("kind", sorted(plan_writes(), key=str),
                         ids=lambda t: getattr(t, "__name__", "?"))
def test_every_other_write_on_a_closed_case_says_reopen_before_changing_the_plan(
        kind: type[d.Command]) -> None:
    case = closed_legacy_case()
    error = refused(case, plan_writes()[kind])
    assert (error.code, error.status) == ("case_closed", 409)
    assert PLAN_WORDS in error.detail
    assert "transferring" not in error.detail
    assert "already" not in error.detail


def test_a_transfer_of_a_closed_case_keeps_its_words_whatever_its_body() -> None:
    case = closed_legacy_case()
    for transfer in (api.TransferInput(case_manager="cm-1", reason="Back to me"),
                     api.TransferInput(case_manager="cm-2", reason=".")):
        error = refused(case, d.TransferCase(transfer))
        assert (error.code, error.status) == ("case_closed", 409)
        assert TRANSFER_WORDS in error.detail
        assert "plan" not in error.detail


def test_closing_a_closed_case_keeps_its_words_whatever_its_body() -> None:
    case = closed_legacy_case()
    for close in (api.CloseInput(reason="Again"), api.CloseInput(reason="-"),
                  api.CloseInput(reason="Done", outcome="completed")):
        error = refused(case, d.CloseCase(close))
        assert (error.code, error.status, error.detail) == ("case_closed", 409, CLOSE_WORDS)


def test_reopening_still_works_and_the_legacy_items_are_worked_on_again() -> None:
    case = closed_legacy_case()
    error = refused(case, d.ReopenCase(api.ReopenInput(reason="-")))
    assert error.code == "reason_required"
    [reopened] = case.execute(d.ReopenCase(api.ReopenInput(reason="Came back to us")))
    assert isinstance(reopened, ev.CaseReopened)
    error = refused(case, d.ReopenCase(api.ReopenInput(reason="Twice")))
    assert error.code == "case_open"
    [revised] = case.execute(revise_goal(title=".", target_date=date(2026, 6, 1)))
    assert revised.title is None  # type: ignore[attr-defined]
    [moved] = case.execute(d.TransferCase(api.TransferInput(case_manager="cm-2",
                                                            reason="Caseload balance")))
    assert isinstance(moved, ev.CaseTransferred)


# --------------------------------------------------------------------------------------------
# over HTTP
# --------------------------------------------------------------------------------------------


async def legacy_case_in_store(pool: asyncpg.Pool, title: str = ".") -> str:
    """The legacy case appended as an importer (or the code before the rule) recorded it."""
    case_id = uuid4()
    await EventStore(pool).append(case_id, [to_new_event(e) for e in legacy_events(title)],
                                  expected_version=0, agency="agency-a",
                                  metadata={"actor": {"sub": "importer"}})
    await rebuild_projections(pool)
    return str(case_id)


async def import_event(pool: asyncpg.Pool, case_id: str, version: int,
                       event: ev.EventPayload) -> None:
    await EventStore(pool).append(UUID(case_id), [to_new_event(event)],
                                  expected_version=version, agency="agency-a",
                                  metadata={"actor": {"sub": "importer"}})


async def problem(client: TestClient[Any, Any], token: str, method: str, path: str, payload: Any,
                  status: int, headers: dict[str, str] | None = None) -> Any:
    response = await client.request(method, path, json=payload,
                                    headers={**bearer(token), **(headers or {})})
    answer = await response.json()
    assert response.status == status, answer
    assert response.content_type == "application/problem+json"
    return answer


def item_path(case_id: str, kind: str) -> str:
    item = {"participant": "participant", "strength": f"strengths/{STRENGTH}",
            "goal": f"goals/{GOAL}", "step": f"steps/{STEP}"}[kind]
    return f"/v1/cases/{case_id}/{item}"


def wire(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def http_echo(kind: str) -> tuple[str, dict[str, Any], str, Any]:
    """(item, body echoing the whole item with one change in words, field, recorded value)."""
    _, field, recorded, change = ECHOED[kind]
    item = kind.split()[0]
    echoed = {f: r for k, (_, f, r, _) in ECHOED.items() if k.split()[0] == item}
    return item, {**echoed, **{k: wire(v) for k, v in change.items()}}, field, recorded


@pytest.mark.parametrize("kind", ["participant name", "strength description", "goal title",
                                  "step support_name"])
async def test_over_http_an_echo_of_the_whole_legacy_item_records_only_the_change(
        cm: CaseApi, fresh_pool: asyncpg.Pool, kind: str) -> None:
    case_id = await legacy_case_in_store(fresh_pool)
    item, payload, _, _ = http_echo(kind)
    answer = await cm.call("PATCH", item_path(case_id, item), payload, expect=200)
    [event] = answer["events"]
    written = {k for k, v in event["data"].items() if v not in (None, [], ())}
    assert written - {"goal_id", "step_id", "strength_id"} <= {"email", "category",
                                                               "target_date", "due_date"}
    plan = await cm.plan(case_id)
    assert plan["participant"]["name"] == "-"
    assert {g["goal_id"]: g["title"] for g in plan["goals"]}[str(GOAL)] == "."


@pytest.mark.parametrize("kind", sorted(ECHOED))
async def test_over_http_a_changed_wordless_field_is_a_clear_422_that_writes_nothing(
        cm: CaseApi, fresh_pool: asyncpg.Pool, kind: str) -> None:
    case_id = await legacy_case_in_store(fresh_pool)
    item, payload, field, recorded = http_echo(kind)
    payload[field] = [*recorded, "~"] if isinstance(recorded, list) else recorded + "."
    before = await event_count(fresh_pool)
    answer = await problem(cm.client, cm.token, "PATCH", item_path(case_id, item), payload, 422)
    assert answer["type"].endswith("/" + code_for(kind).replace("_", "-"))
    assert [e["field"] for e in answer["errors"]] == [f"body.{field}"]
    assert await event_count(fresh_pool) == before


async def test_over_http_if_match_applies_to_an_echo_as_to_any_write(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await legacy_case_in_store(fresh_pool)
    path, echo = item_path(case_id, "goal"), {"title": ".", "target_date": "2026-06-01"}
    version = int((await cm.plan(case_id))["version"])
    stale = await problem(cm.client, cm.token, "PATCH", path, echo, 412,
                          {"If-Match": f'"{version - 1}"'})
    assert stale["current_version"] == version
    assert await event_count(fresh_pool) == version
    changed = await problem(cm.client, cm.token, "PATCH", path,
                            {**echo, "title": "-"}, 422, {"If-Match": f'"{version}"'})
    assert changed["type"].endswith("/words-required")
    accepted = await cm.call("PATCH", path, echo, expect=200,
                             headers={"If-Match": f'"{version}"'})
    assert accepted["version"] == version + 1
    assert "title" not in accepted["events"][0]["data"] or \
        accepted["events"][0]["data"]["title"] is None


async def test_over_http_an_idempotent_echo_replays_and_its_key_is_not_reused_for_new_text(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await legacy_case_in_store(fresh_pool)
    path, echo = item_path(case_id, "goal"), {"title": ".", "target_date": "2026-06-01"}
    key = {"Idempotency-Key": "echo-1"}
    first = await cm.call("PATCH", path, echo, expect=200, headers=key)
    # the goal is renamed meanwhile: the retry is the same request, answered as it was
    await cm.call("PATCH", path, {"title": "A flat of my own"}, expect=200)
    count = await event_count(fresh_pool)
    again = await cm.call("PATCH", path, echo, expect=200, headers=key)
    assert (again["version"], again["events"]) == (first["version"], first["events"])
    reused = await problem(cm.client, cm.token, "PATCH", path, {**echo, "title": "-"}, 422,
                           key)
    assert reused["type"].endswith("/idempotency-key-reused")
    # a new key for the old echo is a new request, decided on the renamed goal: new text
    fresh = await problem(cm.client, cm.token, "PATCH", path, echo, 422,
                          {"Idempotency-Key": "echo-2"})
    assert [e["field"] for e in fresh["errors"]] == ["body.title"]
    assert await event_count(fresh_pool) == count
    [goal] = [g for g in (await cm.plan(case_id))["goals"] if g["goal_id"] == str(GOAL)]
    assert goal["title"] == "A flat of my own"


async def two_instances(make_records_client: ClientFactory, url: str, clock: FakeClock,
                        token: TokenFactory) -> tuple[CaseApi, CaseApi]:
    first = await make_records_client(url, clock=clock)
    second = await make_records_client(url, clock=clock)
    return CaseApi(first, token()), CaseApi(second, token())


async def test_an_echo_decided_on_a_stale_cache_is_decided_again_on_the_renamed_goal(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, clock: FakeClock, token: TokenFactory) -> None:
    """Instance A holds the case in its cache with the title "."; instance B renames it. A's
    echo of "." would set the title back to a wordless one: decided again on the case as it
    is now, it is refused, and nothing is written."""
    a, b = await two_instances(make_records_client, fresh_database_url, clock, token)
    case_id = await legacy_case_in_store(fresh_pool)
    await a.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Called"}, expect=201)
    await b.call("PATCH", item_path(case_id, "goal"), {"title": "A flat of my own"},
                 expect=200)
    before = await event_count(fresh_pool)
    answer = await problem(a.client, a.token, "PATCH", item_path(case_id, "goal"),
                           {"title": ".", "target_date": "2026-06-01"}, 422)
    assert [e["field"] for e in answer["errors"]] == ["body.title"]
    assert await event_count(fresh_pool) == before
    [goal] = [g for g in (await a.plan(case_id))["goals"] if g["goal_id"] == str(GOAL)]
    assert (goal["title"], goal["target_date"]) == ("A flat of my own", None)


async def test_an_echo_refused_on_a_stale_cache_is_accepted_on_the_case_as_it_is(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, clock: FakeClock, token: TokenFactory) -> None:
    """The other way round: the text the client echoes was recorded (by an importer) after
    instance A cached the case; decided on the cache it looks new, on the case it is not."""
    a, _ = await two_instances(make_records_client, fresh_database_url, clock, token)
    case_id = await legacy_case_in_store(fresh_pool)
    path = item_path(case_id, "goal")
    await a.call("PATCH", path, {"why_it_matters": "A home of my own"}, expect=200)
    version = int((await a.plan(case_id))["version"])
    await import_event(fresh_pool, case_id, version,
                       ev.GoalRevised(goal_id=GOAL, why_it_matters="\u2026"))
    answer = await a.call("PATCH", path, {"why_it_matters": "\u2026",
                                          "target_date": "2026-06-01"}, expect=200)
    [event] = answer["events"]
    assert (event["data"].get("why_it_matters"), event["data"]["target_date"]) == (
        None, "2026-06-01")


async def test_a_rename_racing_an_echo_never_leaves_the_wordless_title(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, clock: FakeClock, token: TokenFactory) -> None:
    a, b = await two_instances(make_records_client, fresh_database_url, clock, token)
    for round_ in range(4):
        case_id = await legacy_case_in_store(fresh_pool)
        path = item_path(case_id, "goal")
        await a.plan(case_id)
        await b.plan(case_id)
        rename, echo = await asyncio.gather(
            b.client.patch(path, json={"title": f"A flat {round_}"}, headers=bearer(b.token)),
            a.client.patch(path, json={"title": ".", "target_date": "2026-06-01"},
                           headers=bearer(a.token)))
        assert rename.status == 200, await rename.text()
        assert echo.status in (200, 422), await echo.text()
        history = await a.call("GET", f"/v1/cases/{case_id}/history", expect=200)
        revised = [e["data"] for e in history["events"] if e["type"] == "GoalRevised"]
        # the echo, when it won, recorded only its date, before the rename
        assert [r.get("title") for r in revised][-1] == f"A flat {round_}"
        assert [r.get("title") for r in revised[:-1]] == [None] * (echo.status == 200)
        [goal] = [g for g in (await a.plan(case_id))["goals"] if g["goal_id"] == str(GOAL)]
        assert goal["title"] == f"A flat {round_}"


async def test_a_legacy_case_revised_reads_back_in_time_diffs_and_exports(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory, clock: FakeClock,
        tmp_path: Path) -> None:
    key_file = tmp_path / "export.pem"
    write_key_pair(key_file)
    client = await make_records_client(
        fresh_database_url, clock=clock, CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file))
    cm = CaseApi(client, token())
    case_id = await legacy_case_in_store(fresh_pool)
    legacy_version = len(legacy_events())
    for kind in ("participant name", "strength description", "goal title",
                 "step support_name"):
        item, payload, _, _ = http_echo(kind)
        await cm.call("PATCH", item_path(case_id, item), payload, expect=200)
    clock.advance(hours=1)
    version = int((await cm.plan(case_id))["version"])
    assert version == legacy_version + 4

    then = await cm.plan(case_id, as_of_version=legacy_version)
    now = await cm.plan(case_id)
    for plan in (then, now):
        assert plan["participant"]["name"] == "-"
        assert {g["goal_id"]: g["title"] for g in plan["goals"]}[str(GOAL)] == "."
    assert {g["goal_id"]: g["target_date"] for g in now["goals"]}[str(GOAL)] == "2026-06-01"
    at = (clock.now - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert (await cm.plan(case_id, as_of=at))["version"] == version

    diff = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version={legacy_version}"
                         f"&to_version={version}", expect=200)
    changed = {c["path"].rsplit(".", 1)[-1] for c in diff["changes"]}
    assert not changed & {"name", "title", "description", "support_name"}, diff["changes"]
    assert "target_date" in changed
    assert [e["version"] for e in diff["events"]] == list(range(legacy_version + 1,
                                                               version + 1))

    for query in ("", "?format=csv", "?format=pdf", "?format=fhir"):
        response = await client.get(f"/v1/cases/{case_id}/export{query}",
                                    headers=bearer(cm.token))
        raw = await response.read()
        assert response.status == 200, (query, raw[:300])
        report = verify_export(raw.splitlines(keepends=True))
        assert report.ok, (query, report)
        assert report.events == version
    verified = await cm.call("GET", f"/v1/cases/{case_id}/verify", expect=200)
    assert verified["valid"] is True


# the writes of a plan, over HTTP, each on the legacy case (a body any open case would take)
def http_plan_writes(case_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    case, review = f"/v1/cases/{case_id}", uuid4()
    return [
        ("PATCH", f"{case}/participant", {"name": "-", "email": "jo@example.org"}),
        ("POST", f"{case}/strengths", {"category": "skill", "description": "Cooks"}),
        ("PATCH", f"{case}/strengths/{STRENGTH}", {"description": ".", "category": "talent"}),
        ("DELETE", f"{case}/strengths/{STRENGTH}", {"reason": "Recorded twice"}),
        ("POST", f"{case}/goals", {"title": "A flat", "domain": "housing", "source": "agency"}),
        ("PATCH", f"{case}/goals/{GOAL}", {"title": ".", "target_date": "2026-06-01"}),
        ("PATCH", f"{case}/goals/{GOAL}", {"title": "-"}),
        ("POST", f"{case}/goals/{GOAL}/status", {"status": "paused"}),
        ("POST", f"{case}/goals/{GOAL}/steps", {"description": "Call", "owner": "participant"}),
        ("PATCH", f"{case}/steps/{STEP}", {"description": "\u2026", "due_date": "2026-04-01"}),
        ("POST", f"{case}/steps/{STEP}/status", {"status": "in_progress"}),
        ("POST", f"{case}/steps/{STEP}/complete", {"note": "Done"}),
        ("POST", f"{case}/supports", {"name": "Maria"}),
        ("DELETE", f"{case}/supports/{SUPPORT}", {"reason": "Moved away"}),
        ("POST", f"{case}/requirements", {"title": "Report monthly"}),
        ("POST", f"{case}/requirements/{uuid4()}/status", {"status": "met"}),
        ("POST", f"{case}/agreements", {"participation": "in_person", "present": ["Jo"],
                                        "participant_statement": "Mine"}),
        ("POST", f"{case}/reviews/{review}/held", {"summary": "Good month"}),
        ("POST", f"{case}/reviews/{review}/reschedule", {"due_date": "2026-05-01",
                                                         "reason": "Away"}),
        ("POST", f"{case}/notes", {"text": "Called"}),
    ]


async def test_over_http_a_closed_legacy_case_refuses_each_write_in_its_own_words(
        cm: CaseApi, fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    case_id = await legacy_case_in_store(fresh_pool)
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"}, expect=200)
    before = await event_count(fresh_pool)
    for method, path, payload in http_plan_writes(case_id):
        answer = await problem(cm.client, cm.token, method, path, payload, 409)
        assert answer["type"].endswith("/case-closed"), path
        assert PLAN_WORDS in answer["detail"], (path, answer["detail"])
    supervisor = token(role="supervisor", sub="sup-1")
    for caller in (cm.token, supervisor):
        moved = await problem(cm.client, caller, "POST", f"/v1/cases/{case_id}/transfer",
                              {"case_manager": "cm-2", "reason": "Caseload balance"}, 409)
        assert TRANSFER_WORDS in moved["detail"]
    again = await problem(cm.client, cm.token, "POST", f"/v1/cases/{case_id}/close",
                          {"reason": "Closed twice"}, 409)
    assert (again["type"].rsplit("/", 1)[-1], again["detail"]) == ("case-closed", CLOSE_WORDS)
    assert await event_count(fresh_pool) == before

    await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "Came back"}, expect=200)
    echoed = await cm.call("PATCH", item_path(case_id, "goal"),
                           {"title": ".", "target_date": "2026-06-01"}, expect=200)
    assert echoed["events"][0]["data"].get("title") is None
    await cm.call("POST", f"/v1/cases/{case_id}/transfer",
                  {"case_manager": "cm-2", "reason": "Caseload balance"}, expect=200)


async def test_a_retried_close_replays_its_answer_rather_than_refusing(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await legacy_case_in_store(fresh_pool)
    key = {"Idempotency-Key": "close-1"}
    first = await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"},
                          expect=200, headers=key)
    again = await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"},
                          expect=200, headers=key)
    assert again["version"] == first["version"]
    assert await event_count(fresh_pool) == first["version"]


async def test_a_transfer_or_close_decided_on_a_stale_open_case_is_refused_in_its_words(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, clock: FakeClock, token: TokenFactory) -> None:
    """Instance A caches the case open; B closes it. A's transfer and close, decided first on
    the cache, are decided again on the closed case and refused each in its own words."""
    a, b = await two_instances(make_records_client, fresh_database_url, clock, token)
    case_id = await legacy_case_in_store(fresh_pool)
    await a.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Called"}, expect=201)
    await b.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"}, expect=200)
    before = await event_count(fresh_pool)
    moved = await problem(a.client, a.token, "POST", f"/v1/cases/{case_id}/transfer",
                          {"case_manager": "cm-2", "reason": "Caseload balance"}, 409)
    assert TRANSFER_WORDS in moved["detail"]
    await a.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Called again"}, expect=409)
    closed = await problem(a.client, a.token, "POST", f"/v1/cases/{case_id}/close",
                           {"reason": "Closed twice"}, 409)
    assert closed["detail"] == CLOSE_WORDS
    assert await event_count(fresh_pool) == before


def test_an_echo_of_a_step_whose_support_was_removed_since_is_accepted() -> None:
    """A client echoing the whole step (its support_id too) to move its date: the support was
    removed since, and the step stays theirs (decide._revise_step: "only a newly named owner
    is checked, so those steps stay revisable"); sending it back unchanged names nobody new."""
    case = legacy_case()
    step = uuid4()
    case.execute(d.AddActionStep(step, GOAL, api.StepInput(
        description="Lend the tools", owner="support", support_id=SUPPORT)))
    case.execute(d.RemoveSupport(SUPPORT, api.RemovalReason(reason="Moved away")))
    [event] = case.execute(d.ReviseActionStep(step, body(
        api.StepRevision, description="Lend the tools", owner="support", support_name="-",
        support_id=SUPPORT, due_date=date(2026, 4, 1))))
    assert event.due_date == date(2026, 4, 1)  # type: ignore[attr-defined]
    assert (event.support_name, event.support_id) == (None, None)  # type: ignore[attr-defined]
