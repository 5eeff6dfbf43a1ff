"""The wire contract: event catalog, upcasting, request validation, generated JSON Schema."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from schemas import api, events, generate
from schemas.events import (
    EVENT_TYPES,
    EventDecodeError,
    InvalidEventData,
    UnknownEventType,
    UnsupportedSchemaVersion,
    dump_event,
    parse_event,
)
from schemas.upcasting import LEGACY_MODELS, UPCASTERS

BRIEF_EVENTS = [
    "CaseOpened", "ParticipantDetailsUpdated", "CaseTransferred", "StrengthRecorded",
    "StrengthRevised", "StrengthRemoved", "GoalSet", "GoalRevised", "GoalStatusChanged",
    "ActionStepAdded", "ActionStepRevised", "ActionStepStatusChanged",
    "ActionStepCompleted", "SupportAdded", "SupportRemoved", "RequirementRecorded",
    "RequirementStatusChanged", "PlanAgreed", "ReviewScheduled", "ReviewHeld", "NoteAdded",
    "CaseClosed", "CaseReopened",
]


# --------------------------------------------------------------------------------------------
# catalog
# --------------------------------------------------------------------------------------------


def test_every_event_of_the_brief_is_registered_under_its_own_name() -> None:
    assert sorted(EVENT_TYPES) == sorted(BRIEF_EVENTS)
    for name, cls in EVENT_TYPES.items():
        assert cls.__name__ == name
        assert cls.event_type == name
        assert cls.schema_version >= 1
        assert cls.model_config.get("extra") == "forbid"
        assert cls.model_config.get("frozen") is True


def test_any_event_union_covers_the_registry() -> None:
    assert set(events.AnyEvent.__args__) == set(EVENT_TYPES.values())


def test_case_id_is_not_in_any_payload() -> None:
    for cls in EVENT_TYPES.values():
        assert "case_id" not in cls.model_fields


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_free_text_field_is_bounded(name: str) -> None:
    schema = EVENT_TYPES[name].model_json_schema()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and not {"format", "enum", "const"} & set(node):
                assert "maxLength" in node, f"{name}{path} is an unbounded string"
            if node.get("type") == "array":
                assert "maxItems" in node, f"{name}{path} is an unbounded list"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(schema, "")


def _goal_set_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "goal_id": str(uuid4()), "title": "Find a stable place to live", "domain": "housing",
        "source": "participant", "in_their_words": "my own front door",
    }
    data.update(overrides)
    return data


def test_parse_event_round_trips_a_current_payload() -> None:
    data = _goal_set_data(target_date="2025-06-30", strength_ids=[str(uuid4())])
    event = parse_event("GoalSet", 1, data)
    assert isinstance(event, events.GoalSet)
    assert event.target_date == date(2025, 6, 30)
    assert parse_event("GoalSet", 1, dump_event(event)) == event
    assert dump_event(event)["target_date"] == "2025-06-30"


def test_parse_event_refuses_unknown_type() -> None:
    with pytest.raises(UnknownEventType, match="GoalDeleted"):
        parse_event("GoalDeleted", 1, {})


@pytest.mark.parametrize("version", [0, -1, 2, 99])
def test_parse_event_refuses_versions_it_cannot_read(version: int) -> None:
    with pytest.raises(UnsupportedSchemaVersion):
        parse_event("GoalSet", version, _goal_set_data())


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"goal_id": "not-a-uuid"}, "goal_id"),
        (_goal_set_data(colour="blue"), "colour"),
        (_goal_set_data(domain="astrology"), "domain"),
        (_goal_set_data(title="x" * 201), "title"),
        (_goal_set_data(title=""), "title"),
        (_goal_set_data(target_date="30/06/2025"), "target_date"),
        (_goal_set_data(strength_ids=[str(uuid4()) for _ in range(21)]), "strength_ids"),
    ],
)
def test_parse_event_refuses_invalid_data_with_the_field_named(data: dict[str, Any],
                                                               where: str) -> None:
    with pytest.raises(InvalidEventData) as caught:
        parse_event("GoalSet", 1, data)
    assert where in str(caught.value)
    assert any(err["loc"].startswith(where) for err in caught.value.errors)
    assert isinstance(caught.value, EventDecodeError)
    assert isinstance(caught.value, ValueError)


def test_parse_event_refuses_non_object_data() -> None:
    with pytest.raises(InvalidEventData):
        parse_event("CaseReopened", 1, ["reason"])  # type: ignore[arg-type]


def test_events_are_immutable() -> None:
    event = parse_event("CaseReopened", 1, {"reason": "moved back to the area"})
    assert isinstance(event, events.CaseReopened)
    with pytest.raises(ValidationError):
        event.reason = "changed"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# upcasting: ActionStepAdded v1 (free-text owner) -> v2 (owner kind + support_name)
# --------------------------------------------------------------------------------------------


def _v1_step(owner: str) -> dict[str, Any]:
    return {"step_id": str(uuid4()), "goal_id": str(uuid4()),
            "description": "Ask about the bus pass", "owner": owner, "due_date": "2024-11-02"}


def test_action_step_added_is_at_v2_with_a_v1_upcaster() -> None:
    assert events.ActionStepAdded.schema_version == 2
    assert ("ActionStepAdded", 1) in UPCASTERS
    assert ("ActionStepAdded", 1) in LEGACY_MODELS


@pytest.mark.parametrize(
    ("old_owner", "owner", "support_name"),
    [
        ("participant", "participant", None),
        ("Client", "participant", None),
        ("case manager", "case_manager", None),
        ("  Case   Manager ", "case_manager", None),
        ("Aunt May", "support", "Aunt May"),
        ("AA sponsor (Jim)", "support", "AA sponsor (Jim)"),
    ],
)
def test_v1_action_step_added_is_upcast_when_read(old_owner: str, owner: str,
                                                  support_name: str | None) -> None:
    data = _v1_step(old_owner)
    stored = dict(data)
    event = parse_event("ActionStepAdded", 1, data)
    assert isinstance(event, events.ActionStepAdded)
    assert event.owner == owner
    assert event.support_name == support_name
    assert event.support_id is None
    assert str(event.step_id) == data["step_id"]
    assert event.due_date == date(2024, 11, 2)
    assert data == stored, "upcasting must not rewrite the stored payload"


def test_v1_payload_is_validated_against_the_v1_model() -> None:
    with pytest.raises(InvalidEventData):
        parse_event("ActionStepAdded", 1, {**_v1_step("participant"), "owner": ""})
    # a v2-shaped payload claiming to be v1 is refused, not silently accepted
    with pytest.raises(InvalidEventData):
        parse_event("ActionStepAdded", 1, {**_v1_step("participant"), "support_name": "x"})


def test_v2_payload_reads_without_upcasting() -> None:
    data = {**_v1_step("support"), "support_name": "Aunt May"}
    event = parse_event("ActionStepAdded", 2, data)
    assert isinstance(event, events.ActionStepAdded)
    assert (event.owner, event.support_name) == ("support", "Aunt May")


@pytest.mark.parametrize(("from_status", "note", "reason"), [
    ("no_longer_needed", None, "Marked by mistake"),  # only a reversal's reason was there
    ("in_progress", "Marked by mistake", None),
])
def test_v1_action_step_completed_moves_a_reversals_reason_out_of_its_note(
        from_status: str, note: str | None, reason: str | None) -> None:
    assert events.ActionStepCompleted.schema_version == 2
    data = {"step_id": str(uuid4()), "goal_id": str(uuid4()), "description": "Call Sam",
            "owner": "participant", "from_status": from_status, "note": "Marked by mistake"}
    event = parse_event("ActionStepCompleted", 1, dict(data))
    assert isinstance(event, events.ActionStepCompleted)
    assert (event.note, event.reason) == (note, reason)
    with pytest.raises(InvalidEventData):  # v1 had no reason
        parse_event("ActionStepCompleted", 1, {**data, "reason": "x"})


# --------------------------------------------------------------------------------------------
# request bodies
# --------------------------------------------------------------------------------------------


def test_request_bodies_strip_and_refuse_unknown_fields() -> None:
    body = api.NoteInput.model_validate({"text": "  met at the library  "})
    assert body.text == "met at the library"
    with pytest.raises(ValidationError):
        api.NoteInput.model_validate({"text": "hello", "author": "me"})
    for model in api.REQUEST_MODELS:
        assert model.model_config.get("extra") == "forbid", model.__name__


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (api.NoteInput, {"text": "   "}, "text"),
        (api.NoteInput, {"text": "x" * 4001}, "text"),
        (api.NoteInput, {"text": "null\x00byte"}, "text"),
        (api.GoalInput, {"title": "t" * 201, "domain": "housing", "source": "agency"}, "title"),
        (api.GoalInput, {"title": "Job", "domain": "work", "source": "agency"}, "domain"),
        (api.GoalInput, {"title": "Job", "domain": "employment", "source": "agency",
                         "target_date": "2025-02-30"}, "target_date"),
        (api.GoalInput, {"title": "Job", "domain": "employment", "source": "agency",
                         "target_date": 1735689600}, "target_date"),
        (api.GoalInput, {"title": "Job", "domain": "employment", "source": "agency",
                         "status": "paused"}, "status"),
        (api.GoalInput, {"title": "Job", "domain": "employment", "source": "agency",
                         "risk_factors": ["x"] * 21}, "risk_factors"),
        (api.OpenCase, {"participant": {"name": "Sam", "email": "not-an-email"},
                        "case_manager": "cm", "risk_level": "low"}, "participant.email"),
        (api.OpenCase, {"participant": {"name": "Sam", "email": "sam,jo@example.org"},
                        "case_manager": "cm", "risk_level": "low"}, "participant.email"),
        (api.OpenCase, {"participant": {"name": "Sam"}, "case_manager": "cm",
                        "risk_level": "extreme"}, "risk_level"),
        (api.AgreementInput, {"participation": "email", "present": ["Sam"],
                              "participant_statement": "ok"}, "participation"),
        (api.AgreementInput, {"participation": "phone", "participant_statement": "ok"},
         "present"),
        (api.AgreementInput, {"participation": "phone", "present": [],
                              "participant_statement": "ok"}, "present"),
        (api.GoalRevision, {"title": None}, "title"),
        (api.UpdateParticipant, {"name": None}, "name"),
        (api.StepInput, {"description": "Call", "owner": "aunt"}, "owner"),
    ],
)
def test_request_bodies_refuse_bad_input(model: type[api.Body], data: dict[str, Any],
                                         field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    locs = {".".join(str(p) for p in err["loc"]) for err in caught.value.errors()}
    assert field in locs


def test_revisions_need_a_change_besides_reason_and_keep_explicit_nulls() -> None:
    with pytest.raises(ValidationError, match="at least one field"):
        api.GoalRevision.model_validate({"reason": "tidy up"})
    revision = api.GoalRevision.model_validate({"target_date": None, "reason": "no deadline"})
    assert revision.changes() == {"target_date": None}
    step_revision = api.StepRevision.model_validate({"due_date": "2025-05-01", "owner": "support",
                                                     "support_name": "Aunt May"})
    assert list(step_revision.changes()) == ["owner", "support_name", "due_date"]


def test_defaults_of_the_core_bodies() -> None:
    goal = api.GoalInput.model_validate({"title": "Job", "domain": "employment",
                                         "source": "court"})
    assert (goal.status, goal.strength_ids, goal.override_reason) == ("active", [], None)
    agreement = api.AgreementInput.model_validate({"participation": "phone", "present": ["Sam"],
                                                   "participant_statement": "Sounds right"})
    assert agreement.outcome == "agreed"


def test_plan_view_has_exactly_the_keys_of_the_brief_plus_optional_extras() -> None:
    required = {"case_id", "version", "status", "participant", "case_manager", "risk_level",
                "strengths", "goals", "supports", "requirements", "agreement", "next_review",
                "updated_at"}
    assert required <= set(api.PlanView.model_fields)
    assert "steps" in api.GoalView.model_fields
    assert set(api.WriteResult.model_fields) == {"case_id", "version", "id", "events",
                                                 "warnings"}
    assert set(api.LanguageWarning.model_fields) == {"field", "term", "suggestion", "message"}


def test_write_answers_carry_each_event_as_history_shows_it() -> None:
    assert set(api.EventView.model_fields) == {
        "version", "event_id", "type", "schema_version", "recorded_at", "actor", "role",
        "reason", "data", "recorded_as", "prev_hash", "hash"}
    answer = api.WriteResult.model_json_schema(mode="serialization")
    assert set(answer["required"]) == {"case_id", "version", "events", "warnings"}
    without_id = api.WriteResult(case_id=uuid4(), version=1, events=[], warnings=[])
    assert "id" not in without_id.model_dump(mode="json")


def test_every_view_field_is_required_in_the_answer_schema() -> None:
    """Views always send every field (null when empty); only WriteResult.id and a field
    error's code may be absent."""
    optional = {("WriteResult", "id"), ("FieldError", "code")}
    for model in api.RESPONSE_MODELS:
        schema = model.model_json_schema(mode="serialization")
        for name, node in [(model.__name__, schema), *schema.get("$defs", {}).items()]:
            if node.get("additionalProperties") is not False:
                continue  # Problem allows extension members and keeps its optional ones
            missing = set(node["properties"]) - set(node.get("required", []))
            assert {(name, field) for field in missing} <= optional, name


def test_diff_changes_keep_from_and_to_apart_from_null() -> None:
    view = api.DiffView.model_validate({
        "case_id": str(uuid4()), "from_version": 1, "to_version": 2, "events": [],
        "changes": [{"path": "goals.x", "change": "added", "to": None},
                    {"path": "closure", "change": "removed", "from": {"reason": "done"}},
                    {"path": "risk_level", "change": "changed", "from": "low", "to": "high"}]})
    assert view.model_dump(mode="json")["changes"] == [
        {"path": "goals.x", "change": "added", "to": None},
        {"path": "closure", "change": "removed", "from": {"reason": "done"}},
        {"path": "risk_level", "change": "changed", "from": "low", "to": "high"}]
    with pytest.raises(ValidationError):
        api.DiffView.model_validate({**view.model_dump(mode="json"),
                                     "changes": [{"path": "x", "change": "added"}]})


# --------------------------------------------------------------------------------------------
# generated JSON Schema files
# --------------------------------------------------------------------------------------------


def test_committed_json_schemas_match_the_models() -> None:
    problems = generate.drift()
    assert not problems, (
        "schemas/json/ is out of date with the pydantic models; run `python -m schemas.generate`"
        " and commit the result:\n  " + "\n  ".join(problems)
    )


def test_generation_is_deterministic_and_covers_every_version(tmp_path: Path) -> None:
    first = generate.build()
    assert first == generate.build()
    for cls in EVENT_TYPES.values():
        assert f"events/{cls.event_type}.v{cls.schema_version}.json" in first
    assert "events/ActionStepAdded.v1.json" in first
    assert "api/PlanView.json" in first
    for content in first.values():
        assert content.endswith("\n")
        assert json.loads(content)
    generate.write(tmp_path)
    assert generate.drift(tmp_path) == []


def test_drift_is_detected(tmp_path: Path) -> None:
    generate.write(tmp_path)
    path = tmp_path / "events" / "GoalSet.v1.json"
    schema = json.loads(path.read_text())
    del schema["properties"]["override_reason"]
    path.write_text(json.dumps(schema))
    (tmp_path / "events" / "GoalDeleted.v1.json").write_text("{}\n")
    (tmp_path / "api" / "NoteInput.json").unlink()
    problems = generate.drift(tmp_path)
    assert "differs: events/GoalSet.v1.json" in problems
    assert "stale (no model): events/GoalDeleted.v1.json" in problems
    assert "missing: api/NoteInput.json" in problems
    assert generate.main(["--check"]) == 0


# --------------------------------------------------------------------------------------------
# the committed OpenAPI document (tests/test_openapi_answers.py compares it with the served one)
# --------------------------------------------------------------------------------------------


def test_committed_openapi_document_matches_the_routes() -> None:
    from services.records.http import routes  # noqa: F401  (registers the case routes)
    from services.records.http.app import api as records_api

    assert not generate.openapi_drift(records_api.openapi()), (
        "schemas/openapi.json is out of date; run `casetrail openapi` and commit it")


def test_openapi_drift_is_detected(tmp_path: Path) -> None:
    document = {"openapi": "3.1.0", "paths": {}}
    path = tmp_path / "openapi.json"
    assert generate.openapi_drift(document, path) == ["missing: openapi.json"]
    assert generate.write_openapi(document, path)
    assert generate.openapi_drift(document, path) == []
    assert not generate.write_openapi(document, path)
    assert generate.openapi_drift({**document, "paths": {"/x": {}}}, path) == [
        "differs: openapi.json"]


def test_a_case_opened_under_a_zone_name_refused_today_still_reads() -> None:
    """New input takes IANA names only; a CaseOpened recorded when any name ZoneInfo opens
    was taken (its agency's policy zone "posixrules", say) must still fold."""
    data = {"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low",
            "agency": "agency-a", "policy": {"timezone": "posixrules"}}
    opened = events.parse_event("CaseOpened", 1, data)
    assert isinstance(opened, events.CaseOpened)
    assert opened.policy.timezone == "posixrules"
    with pytest.raises(ValidationError):
        TypeAdapter(events.TimeZoneName).validate_python("posixrules")


# JSON text PostgreSQL stores: no NUL, no lone surrogates (a jsonb column refuses both)
_STORABLE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                         min_size=1, max_size=60) | st.text(" \t\n\r\u3000\u2028", min_size=1)
_V1_PAYLOADS = {
    "ActionStepAdded": st.fixed_dictionaries({
        "step_id": st.uuids().map(str), "goal_id": st.uuids().map(str),
        "description": _STORABLE_TEXT, "owner": _STORABLE_TEXT}),
    "ActionStepCompleted": st.fixed_dictionaries({
        "step_id": st.uuids().map(str), "goal_id": st.uuids().map(str),
        "description": _STORABLE_TEXT,
        "owner": st.sampled_from(["participant", "case_manager", "support"]),
        "from_status": st.sampled_from(["not_started", "in_progress", "cannot_be_done_yet",
                                        "no_longer_needed"]),
        "note": st.none() | _STORABLE_TEXT}),
}


@pytest.mark.parametrize("event_type", sorted(_V1_PAYLOADS))
@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_every_payload_a_v1_model_accepts_is_upcast_to_a_readable_event(
        event_type: str, data: st.DataObject) -> None:
    """A v1 payload its own model took (text was checked for length only, so it may be
    whitespace) must read as today's event; one that does not makes its case unreadable."""
    payload = data.draw(_V1_PAYLOADS[event_type])
    LEGACY_MODELS[(event_type, 1)].model_validate(payload)
    event = parse_event(event_type, 1, payload)
    assert type(event).event_type == event_type
