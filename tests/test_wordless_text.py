"""Plan text that holds no word (rules 2 and 5): a goal titled ".", a step "-", a note "🎉" was
recorded, shown to the participant, mailed to the case manager and exported to a court. Every
free text a body gives, names included, holds a letter or a digit, in any script
(docs/decisions/0101-plan-domain.md); events recorded before still read."""

from __future__ import annotations

import typing
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from pydantic import BaseModel

from schemas import api
from schemas import events as ev
from services.records import domain as d
from services.records.domain import words
from services.records.export.signing import write_key_pair
from services.records.export.verify import verify_export
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore, NewEvent
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi, event_count

pytestmark = pytest.mark.usefixtures("fresh_database_url")

TODAY = date(2026, 3, 2)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))

# What a hurried form gets: punctuation, spaces around a dot, an emoji alone.
WORDLESS = [".", "-", "\u2026", "   .", "?!", "\U0001f389"]


def new_case() -> tuple[d.InMemoryCase, UUID]:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Jo"}, "case_manager": "cm-1", "risk_level": "moderate"})))
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Steady work", domain="employment",
                                               source="agency")))
    return case, goal


def add_step(case: d.InMemoryCase, goal: UUID) -> UUID:
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput(description="Call the agency",
                                                           owner="participant")))
    return step


def agree(case: d.InMemoryCase) -> UUID:
    review = uuid4()
    case.execute(d.AgreePlan(review, api.AgreementInput(
        participation="in_person", present=["Jo"], participant_statement="It is my plan")))
    return review


def body(model: type[BaseModel], **fields: Any) -> Any:
    return model.model_validate(fields)


Arrange = Callable[[d.InMemoryCase, UUID, Any], d.Command]

# Each free-text field a body carries, with a write that gives it (the value in its place).
TEXT_FIELDS: dict[str, tuple[Arrange, str]] = {
    "participant pronouns": (lambda case, goal, v: d.UpdateParticipantDetails(
        body(api.UpdateParticipant, pronouns=v)), "pronouns"),
    "participant external_ref": (lambda case, goal, v: d.UpdateParticipantDetails(
        body(api.UpdateParticipant, external_ref=v)), "external_ref"),
    "strength description": (lambda case, goal, v: d.RecordStrength(uuid4(), body(
        api.StrengthInput, category="skill", description=v)), "description"),
    "strength in_their_words": (lambda case, goal, v: d.RecordStrength(uuid4(), body(
        api.StrengthInput, category="skill", description="Fixes bikes", in_their_words=v)),
        "in_their_words"),
    "strength revised description": (lambda case, goal, v: d.ReviseStrength(
        _strength(case), body(api.StrengthRevision, description=v)), "description"),
    "strength revised in_their_words": (lambda case, goal, v: d.ReviseStrength(
        _strength(case), body(api.StrengthRevision, in_their_words=v)), "in_their_words"),
    "goal title": (lambda case, goal, v: d.SetGoal(uuid4(), body(
        api.GoalInput, title=v, domain="housing", source="agency")), "title"),
    "agency goal in_their_words": (lambda case, goal, v: d.SetGoal(uuid4(), body(
        api.GoalInput, title="A flat", domain="housing", source="agency", in_their_words=v)),
        "in_their_words"),
    "goal why_it_matters": (lambda case, goal, v: d.SetGoal(uuid4(), body(
        api.GoalInput, title="A flat", domain="housing", source="agency", why_it_matters=v)),
        "why_it_matters"),
    "goal risk_factors": (lambda case, goal, v: d.SetGoal(uuid4(), body(
        api.GoalInput, title="A flat", domain="housing", source="agency",
        risk_factors=["housing instability", v])), "risk_factors"),
    "goal revised title": (lambda case, goal, v: d.ReviseGoal(goal, body(
        api.GoalRevision, title=v)), "title"),
    "goal revised why_it_matters": (lambda case, goal, v: d.ReviseGoal(goal, body(
        api.GoalRevision, why_it_matters=v)), "why_it_matters"),
    "goal revised in_their_words": (lambda case, goal, v: d.ReviseGoal(goal, body(
        api.GoalRevision, in_their_words=v)), "in_their_words"),
    "goal revised risk_factors": (lambda case, goal, v: d.ReviseGoal(goal, body(
        api.GoalRevision, risk_factors=[v])), "risk_factors"),
    "step description": (lambda case, goal, v: d.AddActionStep(uuid4(), goal, body(
        api.StepInput, description=v, owner="participant")), "description"),
    "step revised description": (lambda case, goal, v: d.ReviseActionStep(
        add_step(case, goal), body(api.StepRevision, description=v)), "description"),
    "completion note": (lambda case, goal, v: d.CompleteActionStep(
        add_step(case, goal), body(api.StepCompleteInput, note=v)), "note"),
    "support relationship": (lambda case, goal, v: d.AddSupport(uuid4(), body(
        api.SupportInput, name="Maria", relationship=v)), "relationship"),
    "support contact": (lambda case, goal, v: d.AddSupport(uuid4(), body(
        api.SupportInput, name="Maria", contact=v)), "contact"),
    "support description": (lambda case, goal, v: d.AddSupport(uuid4(), body(
        api.SupportInput, name="Maria", description=v)), "description"),
    "requirement title": (lambda case, goal, v: d.RecordRequirement(uuid4(), body(
        api.RequirementInput, title=v)), "title"),
    "requirement description": (lambda case, goal, v: d.RecordRequirement(uuid4(), body(
        api.RequirementInput, title="Report monthly", description=v)), "description"),
    "requirement reference": (lambda case, goal, v: d.RecordRequirement(uuid4(), body(
        api.RequirementInput, title="Report monthly", reference=v)), "reference"),
    "review summary": (lambda case, goal, v: d.HoldReview(agree(case), uuid4(), body(
        api.ReviewHeldInput, summary=v)), "summary"),
    "review participant_statement": (lambda case, goal, v: d.HoldReview(agree(case), uuid4(),
        body(api.ReviewHeldInput, participant_statement=v)), "participant_statement"),
    "note": (lambda case, goal, v: d.AddNote(uuid4(), body(api.NoteInput, text=v)), "text"),
}

# Each name a body carries (in words too: a digit is enough, as for a helpline, "211").
NAME_FIELDS: dict[str, tuple[Arrange, str]] = {
    "participant name": (lambda case, goal, v: d.UpdateParticipantDetails(
        body(api.UpdateParticipant, name=v)), "name"),
    "participant preferred_name": (lambda case, goal, v: d.UpdateParticipantDetails(
        body(api.UpdateParticipant, preferred_name=v)), "preferred_name"),
    "support name": (lambda case, goal, v: d.AddSupport(uuid4(), body(
        api.SupportInput, name=v)), "name"),
    "step support_name": (lambda case, goal, v: d.AddActionStep(uuid4(), goal, body(
        api.StepInput, description="Lend the tools", owner="support", support_name=v)),
        "support_name"),
    "step revised support_name": (lambda case, goal, v: d.ReviseActionStep(
        add_step(case, goal), body(api.StepRevision, owner="support", support_name=v)),
        "support_name"),
}


def _strength(case: d.InMemoryCase) -> UUID:
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(category="skill",
                                                              description="Fixes bikes")))
    return strength


def _refused(case: d.InMemoryCase, command: d.Command) -> d.DomainError:
    version, state = case.version, case.state
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(command)
    assert (case.version, case.state) == (version, state)  # nothing recorded
    return refused.value


@pytest.mark.parametrize("text", WORDLESS)
@pytest.mark.parametrize("kind", sorted(TEXT_FIELDS))
def test_free_text_without_words_is_refused_and_nothing_is_recorded(kind: str,
                                                                    text: str) -> None:
    arrange, field = TEXT_FIELDS[kind]
    case, goal = new_case()
    error = _refused(case, arrange(case, goal, text))
    assert (error.code, error.field) == ("words_required", field)
    assert f"in words ({field})" in error.detail
    assert f'"{text.strip()}" has no letter or digit' in error.detail


@pytest.mark.parametrize("kind", sorted(TEXT_FIELDS))
def test_free_text_in_words_is_recorded(kind: str) -> None:
    """Digits are words here (a reference "2024/117", a step "Call 211"), and so is any
    script; an emoji beside words is kept."""
    arrange, _ = TEXT_FIELDS[kind]
    for text in ("2024/117", "\u4ed5\u4e8b", "Got the keys \U0001f389"):
        case, goal = new_case()
        assert case.execute(arrange(case, goal, text))


@pytest.mark.parametrize("name", WORDLESS)
@pytest.mark.parametrize("kind", sorted(NAME_FIELDS))
def test_a_name_without_words_is_refused_and_nothing_is_recorded(kind: str,
                                                                  name: str) -> None:
    arrange, field = NAME_FIELDS[kind]
    case, goal = new_case()
    error = _refused(case, arrange(case, goal, name))
    assert (error.code, error.field) == ("words_required", field)
    assert f"in words ({field})" in error.detail


@pytest.mark.parametrize("kind", sorted(NAME_FIELDS))
def test_a_name_in_any_script_is_recorded(kind: str) -> None:
    arrange, _ = NAME_FIELDS[kind]
    for name in ("\u674e\u654f", "Ray 2", "Zo\u00eb", "211"):
        case, goal = new_case()
        assert case.execute(arrange(case, goal, name))


@pytest.mark.parametrize("name", WORDLESS)
def test_a_case_is_not_opened_for_a_participant_named_without_words(name: str) -> None:
    for participant in ({"name": name}, {"name": "Jordan", "preferred_name": name}):
        case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
        with pytest.raises(d.RuleViolation) as refused:
            case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
                {"participant": participant, "case_manager": "cm-1", "risk_level": "low"})))
        assert refused.value.code == "words_required"
        assert refused.value.field == f"participant.{list(participant)[-1]}"
        assert (case.version, case.state) == (0, None)


@pytest.mark.parametrize("text", WORDLESS)
def test_the_participant_details_at_opening_hold_words(text: str) -> None:
    for field in ("pronouns", "external_ref"):
        case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
        with pytest.raises(d.RuleViolation) as refused:
            case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
                {"participant": {"name": "Jordan", field: text}, "case_manager": "cm-1",
                 "risk_level": "low"})))
        assert (refused.value.code, refused.value.field) == ("words_required",
                                                             f"participant.{field}")
        assert case.version == 0


def test_a_person_present_at_an_agreement_is_named_in_words_with_its_own_refusal() -> None:
    """present keeps the refusal it had (present_required), not the general one."""
    case, _ = new_case()
    error = _refused(case, d.AgreePlan(uuid4(), api.AgreementInput(
        participation="in_person", present=["Jo", "-"], participant_statement="Yes")))
    assert (error.code, error.field) == ("present_required", "present")
    assert "in words" in error.detail


def test_a_participant_goal_keeps_its_own_refusal() -> None:
    """A participant's goal without their words is refused as before (in_their_words_required),
    not as any other wordless text."""
    case, _ = new_case()
    error = _refused(case, d.SetGoal(uuid4(), api.GoalInput(
        title="A flat", domain="housing", source="participant", in_their_words=".")))
    assert (error.code, error.field) == ("in_their_words_required", "in_their_words")


def test_clearing_an_optional_field_still_works() -> None:
    """null clears (schemas/events.py *Clearable): it gives no text, so there is none to judge."""
    case, goal = new_case()
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(
        category="skill", description="Fixes bikes", in_their_words="I like fixing")))
    case.execute(d.ReviseGoal(goal, api.GoalRevision(why_it_matters="A home of my own",
                                                     in_their_words="Somewhere mine")))
    case.execute(d.UpdateParticipantDetails(api.UpdateParticipant(
        preferred_name="Jo", pronouns="they/them", external_ref="REF-1")))
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput(
        description="Lend the tools", owner="support", support_name="Uncle Ray")))

    cleared = [
        case.execute(d.ReviseStrength(strength, body(api.StrengthRevision,
                                                     in_their_words=None))),
        case.execute(d.ReviseGoal(goal, body(api.GoalRevision, why_it_matters=None,
                                             in_their_words=None))),
        case.execute(d.UpdateParticipantDetails(body(
            api.UpdateParticipant, preferred_name=None, pronouns=None, external_ref=None))),
        case.execute(d.ReviseActionStep(step, body(api.StepRevision, owner="participant",
                                                   support_name=None))),
    ]
    assert [sorted(e.cleared) for [e] in cleared] == [  # type: ignore[attr-defined]
        ["in_their_words"], ["in_their_words", "why_it_matters"],
        ["external_ref", "preferred_name", "pronouns"], ["support_name"]]


def _str_fields(annotation: Any) -> bool:
    """Whether a field's annotation takes free text (a str, or a list of them; not a Literal)."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return False
    return any(_str_fields(arg) for arg in typing.get_args(annotation))


# Strings a body carries that are not free text a person writes into the plan: an address and
# a user id have formats of their own; reasons are judged on the events decided (rule 5).
NOT_FREE_TEXT = {"email", "case_manager", "reason", "override_reason"}


def test_every_free_text_field_of_every_body_is_checked() -> None:
    """A text field added to a body later is either checked or named here as not free text."""
    for model in api.REQUEST_MODELS:
        for name, info in model.model_fields.items():
            if not _str_fields(info.annotation) or name in NOT_FREE_TEXT:
                continue
            assert name in words.WORDED_FIELDS, (model, name)


# --------------------------------------------------------------------------------------------
# a revision sending back text recorded before the rule: only what it changes is new text
# --------------------------------------------------------------------------------------------

LEGACY_STRENGTH, LEGACY_GOAL, LEGACY_STEP = uuid4(), uuid4(), uuid4()

LEGACY_EVENTS: tuple[ev.EventPayload, ...] = (
    ev.CaseOpened(participant=ev.Participant(name="-", preferred_name=".", pronouns="?!",
                                             external_ref="\u2026"),
                  case_manager="cm-1", risk_level="moderate", agency="agency-a"),
    ev.StrengthRecorded(strength_id=LEGACY_STRENGTH, category="skill", description=".",
                        in_their_words="-"),
    ev.GoalSet(goal_id=LEGACY_GOAL, title=".", domain="housing", source="participant",
               in_their_words="-", why_it_matters="\u2026", risk_factors=("-",)),
    ev.ActionStepAdded(step_id=LEGACY_STEP, goal_id=LEGACY_GOAL, description="\u2026",
                       owner="support", support_name="-"),
)


def legacy_case() -> d.InMemoryCase:
    """A case whose texts were all recorded without words, before the rule: its events are
    folded as read, never decided."""
    case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
    for event in LEGACY_EVENTS:
        version = case.version + 1
        at = case.started_at + timedelta(seconds=version)
        case.state = d.evolve(case.state, event, version=version, recorded_at=at,
                              case_id=case.case_id)
        case.stream.append((event, version, at))
    return case


MakeRevision = Callable[[dict[str, Any]], d.Command]

# Each revision a client sends echoing the whole item: its wordless texts sent back as they
# are, one other field changed, and a wordless text it could change to another wordless one.
ECHOES: dict[str, tuple[MakeRevision, dict[str, Any], dict[str, Any], str]] = {
    "participant": (lambda fields: d.UpdateParticipantDetails(body(
        api.UpdateParticipant, **fields)), {"name": "-", "preferred_name": ".",
        "pronouns": "?!", "external_ref": "\u2026"}, {"email": "jo@example.org"},
        "preferred_name"),
    "strength": (lambda fields: d.ReviseStrength(LEGACY_STRENGTH, body(
        api.StrengthRevision, **fields)), {"description": ".", "in_their_words": "-"},
        {"category": "talent"}, "description"),
    "goal": (lambda fields: d.ReviseGoal(LEGACY_GOAL, body(api.GoalRevision, **fields)),
             {"title": ".", "in_their_words": "-", "why_it_matters": "\u2026",
              "risk_factors": ["-"]}, {"target_date": date(2026, 6, 1)}, "title"),
    "step": (lambda fields: d.ReviseActionStep(LEGACY_STEP, body(api.StepRevision, **fields)),
             {"description": "\u2026", "owner": "support", "support_name": "-"},
             {"due_date": date(2026, 4, 1)}, "support_name"),
}


@pytest.mark.parametrize("kind", sorted(ECHOES))
def test_a_revision_sending_back_unchanged_wordless_text_is_recorded(kind: str) -> None:
    """A client echoing the whole item to change its date or category is not writing the old
    wordless text anew: only the change is recorded, and the item can be worked on."""
    make, echoed, change, _ = ECHOES[kind]
    case = legacy_case()
    [event] = case.execute(make({**echoed, **change}))
    assert {name: getattr(event, name) for name in change} == change
    assert {name: getattr(event, name) for name in echoed} == dict.fromkeys(echoed)


@pytest.mark.parametrize("kind", sorted(ECHOES))
def test_a_revision_to_other_wordless_text_is_still_refused(kind: str) -> None:
    make, echoed, change, field = ECHOES[kind]
    case = legacy_case()
    error = _refused(case, make({**echoed, **change, field: "!!"}))
    assert (error.code, error.field) == ("words_required", field)
    assert '"!!" has no letter or digit' in error.detail


def test_a_risk_factor_recorded_before_is_kept_beside_a_new_one_in_words() -> None:
    """Each risk factor is judged: one already on the goal is not new text, one added is."""
    case = legacy_case()
    [event] = case.execute(d.ReviseGoal(LEGACY_GOAL, body(
        api.GoalRevision, risk_factors=["-", "housing instability"])))
    assert event.risk_factors == ("-", "housing instability")  # type: ignore[attr-defined]
    error = _refused(case, d.ReviseGoal(LEGACY_GOAL, body(
        api.GoalRevision, risk_factors=["-", "housing instability", "?"])))
    assert (error.code, error.field) == ("words_required", "risk_factors")


def test_text_equal_to_another_items_is_new_text() -> None:
    """Only the item revised is compared: a step given the goal's wordless title is refused."""
    case = legacy_case()
    error = _refused(case, d.ReviseActionStep(LEGACY_STEP, body(api.StepRevision,
                                                                description=".")))
    assert (error.code, error.field) == ("words_required", "description")


# --------------------------------------------------------------------------------------------
# over HTTP: a clear 422, and nothing written
# --------------------------------------------------------------------------------------------


async def _version(cm: CaseApi, case_id: str) -> int:
    return int((await cm.plan(case_id))["version"])


@pytest.mark.parametrize(("path", "payload", "field"), [
    ("goals", {"title": ".", "domain": "housing", "source": "agency"}, "title"),
    ("goals", {"title": "A flat", "domain": "housing", "source": "court",
               "risk_factors": ["-"]}, "risk_factors"),
    ("strengths", {"category": "skill", "description": "\u2026"}, "description"),
    ("notes", {"text": "\U0001f389"}, "text"),
    ("supports", {"name": "-"}, "name"),
    ("requirements", {"title": "Report monthly", "description": "   ."}, "description"),
])
async def test_a_wordless_write_is_a_clear_422_that_writes_nothing(
        cm: CaseApi, fresh_pool: asyncpg.Pool, path: str, payload: dict[str, Any],
        field: str) -> None:
    case_id = await cm.open_case()
    version, before = await _version(cm, case_id), await event_count(fresh_pool)

    refused = await cm.call("POST", f"/v1/cases/{case_id}/{path}", payload, expect=422)

    assert refused["type"].endswith("/words-required")
    assert [e["field"] for e in refused["errors"]] == [f"body.{field}"]
    assert f"({field})" in refused["detail"]
    assert (await event_count(fresh_pool), await _version(cm, case_id)) == (before, version)


async def test_revisions_and_openings_over_http_refuse_wordless_text(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    version, before = await _version(cm, case_id), await event_count(fresh_pool)
    for method, path, payload, field in [
            ("PATCH", f"goals/{goal}", {"title": "-"}, "title"),
            ("PATCH", f"steps/{step}", {"description": "..."}, "description"),
            ("PATCH", "participant", {"preferred_name": "."}, "preferred_name"),
            ("POST", f"steps/{step}/complete", {"note": "!"}, "note")]:
        refused = await cm.call(method, f"/v1/cases/{case_id}/{path}", payload, expect=422)
        assert [e["field"] for e in refused["errors"]] == [f"body.{field}"], path
    refused = await cm.call("POST", "/v1/cases", {
        "participant": {"name": "-"}, "case_manager": "cm-1", "risk_level": "low"}, expect=422)
    assert [e["field"] for e in refused["errors"]] == ["body.participant.name"]
    assert (await event_count(fresh_pool), await _version(cm, case_id)) == (before, version)
    # clearing by null still works over HTTP
    cleared = await cm.call("PATCH", f"/v1/cases/{case_id}/participant",
                            {"preferred_name": None}, expect=200)
    assert cleared["events"][0]["data"]["cleared"] == ["preferred_name"]


# --------------------------------------------------------------------------------------------
# events recorded before the rule still fold, read, verify, export and rebuild
# --------------------------------------------------------------------------------------------


async def test_wordless_text_recorded_before_still_reads_verifies_and_exports(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        token: TokenFactory, clock: FakeClock, tmp_path: Path) -> None:
    key_file = tmp_path / "export.pem"
    write_key_pair(key_file)
    client = await make_records_client(
        fresh_database_url, clock=clock, CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file))
    cm = CaseApi(client, token())
    case_id = UUID(await cm.open_case())
    goal, step, support = uuid4(), uuid4(), uuid4()
    old: list[tuple[str, dict[str, Any]]] = [
        ("StrengthRecorded", {"strength_id": str(uuid4()), "category": "skill",
                              "description": "."}),
        ("GoalSet", {"goal_id": str(goal), "title": ".", "domain": "housing",
                     "source": "agency", "status": "active", "risk_factors": ["-"]}),
        ("ActionStepAdded", {"step_id": str(step), "goal_id": str(goal),
                             "description": "\u2026", "owner": "participant"}),
        ("SupportAdded", {"support_id": str(support), "name": "-"}),
        ("NoteAdded", {"note_id": str(uuid4()), "text": "\U0001f389"})]
    await EventStore(fresh_pool).append(
        case_id, [NewEvent(uuid4(), kind, 1, data) for kind, data in old],
        expected_version=1, agency="agency-a", metadata={"actor": {"sub": "importer"}})
    await rebuild_projections(fresh_pool)

    plan = await cm.plan(str(case_id))
    [shown_goal] = plan["goals"]
    assert (shown_goal["title"], shown_goal["steps"][0]["description"]) == (".", "\u2026")
    assert [s["name"] for s in plan["supports"]] == ["-"]
    assert plan["recent_notes"][0]["text"] == "\U0001f389"
    history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert len(history["events"]) == 6
    verified = await cm.call("GET", f"/v1/cases/{case_id}/verify", expect=200)
    assert verified["valid"] is True
    response = await client.get(f"/v1/cases/{case_id}/export", headers=bearer(cm.token))
    assert response.status == 200
    report = verify_export((await response.read()).splitlines(keepends=True))
    assert report.ok
    assert report.events == 6

    # new writes about those items go on: what they copy from the plan is not judged again
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/steps", {
        "description": "Lend the tools", "owner": "support", "support_id": str(support)},
        expect=201)
    completed = await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {},
                              expect=200)
    assert completed["events"][0]["data"]["description"] == "\u2026"
    renamed = await cm.call("PATCH", f"/v1/cases/{case_id}/goals/{goal}",
                            {"title": "A flat of my own"}, expect=200)
    assert renamed["version"] == 9


async def test_a_patch_echoing_a_wordless_title_recorded_before_changes_the_rest(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """A client that sends the whole goal back to move its target date is not refused for the
    title it was recorded with; a new wordless title still is, and writes nothing."""
    case_id = UUID(await cm.open_case())
    goal = uuid4()
    await EventStore(fresh_pool).append(case_id, [NewEvent(uuid4(), "GoalSet", 1, {
        "goal_id": str(goal), "title": ".", "domain": "housing", "source": "agency",
        "status": "active", "risk_factors": ["-"]})],
        expected_version=1, agency="agency-a", metadata={"actor": {"sub": "importer"}})
    await rebuild_projections(fresh_pool)
    path = f"/v1/cases/{case_id}/goals/{goal}"

    moved = await cm.call("PATCH", path, {"title": ".", "domain": "housing",
                                          "risk_factors": ["-"], "target_date": "2026-06-01"},
                          expect=200)
    [event] = moved["events"]
    assert (event["type"], event["data"]["target_date"]) == ("GoalRevised", "2026-06-01")
    assert "title" not in event["data"] or event["data"]["title"] is None
    [shown] = (await cm.plan(str(case_id)))["goals"]
    assert (shown["title"], shown["target_date"]) == (".", "2026-06-01")

    version, before = await _version(cm, str(case_id)), await event_count(fresh_pool)
    refused = await cm.call("PATCH", path, {"title": "-", "target_date": "2026-07-01"},
                            expect=422)
    assert refused["type"].endswith("/words-required")
    assert [e["field"] for e in refused["errors"]] == ["body.title"]
    assert (await event_count(fresh_pool), await _version(cm, str(case_id))) == (before, version)
