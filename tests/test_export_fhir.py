"""The FHIR export: an R4 Bundle of the plan's resources and one Provenance per event, checked
against the FHIR models (fhir.resources, R4B), and verified like the other formats."""

# ruff: noqa: F811
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, get_args

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fhir.resources.R4B.bundle import Bundle

from schemas import events as ev
from services.records.export import fhir
from services.records.export.signing import load_signer, write_key_pair
from services.records.export.verify import MalformedExport
from tests.conftest import TokenFactory, bearer
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    case_id,
    client,
    export,
    key_file,
    lines,
    public_key,
    run_verify,
    verify_bytes,
)
from tests.records_api import CaseApi


@pytest.fixture
async def rich_case(client: TestClient, token: TokenFactory) -> str:
    """A plan with something of every kind: agreed, a review held, steps in three states."""
    cm = CaseApi(client, token(sub="cm-1"))
    case_id = await cm.open_case(participant={
        "name": "Jordan Rivera", "preferred_name": "Jo", "pronouns": "they/them",
        "email": "jo@example.org", "external_ref": "DOC-4471"})
    strength = await cm.strength(case_id)
    work = await cm.goal(case_id, strength_ids=[strength], target_date="2026-09-01",
                         why_it_matters="To look after my daughter",
                         risk_factors=["employment"])
    home = await cm.goal(case_id, "Keep my flat", domain="housing", source="court")
    done = await cm.step(case_id, work, "Write a CV", due_date="2026-04-01")
    await cm.step(case_id, work, "Ask Sam about the bike shop", owner="support",
                  support_name="Sam")
    later = await cm.step(case_id, home, "Set up rent payments")
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{done}/complete", {"note": "Proud"},
                  expect=200)
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{later}/status",
                  {"status": "cannot_be_done_yet", "reason": "waiting for the bank"}, expect=200)
    await cm.call("POST", f"/v1/cases/{case_id}/supports",
                  {"name": "Sam", "relationship": "uncle"}, expect=201)
    await cm.call("POST", f"/v1/cases/{case_id}/requirements",
                  {"title": "Attend monthly check-ins", "reference": "Order 22-118"},
                  expect=201)
    agreed = await cm.agree(case_id)
    review = next(e["data"]["review_id"] for e in agreed["events"]
                  if e["type"] == "ReviewScheduled")
    await cm.call("POST", f"/v1/cases/{case_id}/reviews/{review}/held",
                  {"summary": "Good month"}, expect=200)
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{home}/status", {"status": "achieved"},
                  expect=200)
    return case_id


def resources(raw: bytes, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in json.loads(raw)["entry"]
            if e["resource"]["resourceType"] == kind]


async def test_fhir_export_is_a_valid_r4_bundle_of_the_plan_that_verifies(
        client: TestClient, token: TokenFactory, rich_case: str, key_file: Path) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    response = await client.get(f"/v1/cases/{rich_case}/export?format=fhir",
                                headers=bearer(supervisor))
    assert response.status == 200
    assert response.content_type == "application/fhir+json"
    plan = await CaseApi(client, supervisor).plan(rich_case)
    assert response.headers["Content-Disposition"] == \
        f'attachment; filename="case-{rich_case}-v1-{plan["version"]}.fhir.json"'
    raw = await response.read()
    bundle = Bundle.model_validate_json(raw)  # every resource against the R4B models
    assert bundle.type == "collection"

    [patient] = resources(raw, "Patient")
    assert [n["text"] for n in patient["name"]] == ["Jordan Rivera", "Jo"]
    assert patient["telecom"] == [{"system": "email", "value": "jo@example.org"}]
    assert {i["value"] for i in patient["identifier"]} == {rich_case, "DOC-4471"}
    [care_plan] = resources(raw, "CarePlan")
    assert (care_plan["status"], care_plan["intent"]) == ("active", "plan")
    assert care_plan["author"]["identifier"]["value"] == "cm-1"
    steps = {a["detail"]["description"]: a["detail"] for a in care_plan["activity"]
             if a["detail"]["kind"] == "Task"}
    assert {d: s["status"] for d, s in steps.items()} == {
        "Write a CV": "completed", "Ask Sam about the bike shop": "not-started",
        "Set up rent payments": "on-hold"}
    assert steps["Write a CV"]["scheduledPeriod"] == {"end": "2026-04-01"}
    reviews = [a["detail"]["status"] for a in care_plan["activity"]
               if a["detail"]["kind"] == "Appointment"]
    assert sorted(reviews) == ["completed", "scheduled"]  # held, and the next one
    extensions = {e["url"].rsplit("/", 1)[1] for e in care_plan["extension"]}
    assert extensions == {"risk-level", "strength", "requirement"}
    goals = {g["description"]["text"]: g for g in resources(raw, "Goal")}
    assert goals["Find steady work"]["lifecycleStatus"] == "active"
    assert goals["Find steady work"]["expressedBy"] == care_plan["subject"]
    assert goals["Find steady work"]["target"] == [{"dueDate": "2026-09-01"}]
    assert goals["Find steady work"]["note"][0]["text"] == "I want a job where I use my hands"
    assert goals["Keep my flat"]["lifecycleStatus"] == "completed"
    assert goals["Keep my flat"]["achievementStatus"]["coding"][0]["code"] == "achieved"
    assert goals["Keep my flat"]["expressedBy"] == {"display": "court"}
    [team] = resources(raw, "CareTeam")
    assert team["participant"] == [{"role": [{"text": "uncle"}], "member": {"display": "Sam"}}]

    provenance = resources(raw, "Provenance")
    assert len(provenance) == plan["version"]
    report = verify_bytes(raw, public_key(key_file))
    assert report.ok, report.problems
    assert (report.export_format.value, report.events) == ("fhir", plan["version"])
    assert report.key_trusted is True


async def test_each_provenance_carries_the_event_the_json_lines_export_carries(
        client: TestClient, token: TokenFactory, rich_case: str) -> None:
    auditor = token(role="supervisor", sub="sup-1")
    events = lines(await export(client, auditor, rich_case))[1:-1]
    provenance = resources(await export(client, auditor, rich_case, "?format=fhir"),
                           "Provenance")
    carried = [p["extension"][0]["valueString"].encode() + b"\n" for p in provenance]
    assert carried == events
    first = provenance[0]
    assert first["activity"]["coding"][0]["code"] == "CaseOpened"
    assert first["agent"][0]["who"]["identifier"]["value"] == "cm-1"
    assert first["agent"][0]["role"] == [{"text": "case_manager"}]
    reasons = [p["reason"][0]["text"] for p in provenance if "reason" in p]
    assert "waiting for the bank" in reasons


async def test_the_signature_is_a_standard_jws_over_the_digest(
        client: TestClient, token: TokenFactory, rich_case: str, key_file: Path) -> None:
    raw = await export(client, token(role="supervisor", sub="sup-1"), rich_case,
                       "?format=fhir")
    body, last = raw[:raw.rindex(b"\n", 0, len(raw) - 1) + 1], lines(raw)[-1]
    signature = json.loads(b"{" + last.removeprefix(b"],"))["signature"]
    assert signature["sigFormat"] == "application/jose"
    compact = base64.b64decode(signature["data"]).decode()
    key = Ed25519PublicKey.from_public_bytes(public_key(key_file))
    decoded = jwt.api_jws.decode_complete(compact, key, algorithms=["EdDSA"])
    assert decoded["payload"] == hashlib.sha256(body).digest()
    assert decoded["header"]["kid"] == load_signer(key_file).key_id


async def test_an_edited_resource_or_event_fails_and_a_forgery_fails_on_the_trusted_key(
        client: TestClient, token: TokenFactory, rich_case: str, key_file: Path,
        tmp_path: Path) -> None:
    raw = await export(client, token(role="supervisor", sub="sup-1"), rich_case,
                       "?format=fhir")
    restated = verify_bytes(raw.replace(b'"lifecycleStatus":"completed"',
                                        b'"lifecycleStatus":"active"'))
    assert restated.chain.valid  # a resource changed, no event did
    assert not restated.digest_matches
    assert not restated.signature_valid  # over the bytes as they are, as for every format
    assert not restated.ok
    edited = verify_bytes(raw.replace(b"Write a CV", b"Write a letter"))
    assert not edited.chain.valid
    assert not edited.ok
    cut = verify_bytes(b"".join(line for line in lines(raw)
                                if b'"code":"ActionStepCompleted"' not in line))
    assert not cut.ok
    assert any("the export holds" in problem for problem in cut.problems)

    other = write_key_pair(tmp_path / "other.pem")
    forged = b"".join(lines(raw)[:-1]) + _resign(raw, other)
    report = verify_bytes(forged, public_key(key_file))
    assert report.digest_matches
    assert report.signature_valid
    assert report.key_trusted is False
    assert not report.ok
    assert verify_bytes(forged).ok  # without a pinned key only integrity is proven


def _resign(raw: bytes, signer: Any) -> bytes:
    """The signature line made again over the same bytes with another key."""
    last = lines(raw)[-1]
    signature = json.loads(b"{" + last.removeprefix(b"],"))["signature"]
    digest = hashlib.sha256(b"".join(lines(raw)[:-1])).digest()
    signature["data"] = base64.b64encode(fhir.jws(signer, digest).encode()).decode()
    signature["who"]["identifier"]["value"] = signer.key_id  # as the service names its key
    return fhir.TRAILER_START + json.dumps(signature).encode() + b"}\n"


async def test_the_cli_verifies_a_fhir_export(
        client: TestClient, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(role="supervisor", sub="sup-1"), case_id, "?format=fhir")
    Bundle.model_validate_json(raw)  # a plan with no steps and no reviews is valid too
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 0, out
    assert ", fhir, exported" in out
    assert out.rstrip().endswith("VERIFIED")
    code, out = run_verify(tmp_path, raw.replace(b"cm-1", b"cm-2"), capsys=capsys)
    assert code == 1
    assert "NOT VERIFIED" in out


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda raw: b"".join(lines(raw)[:-1]), "cut short"),
    (lambda raw: raw.replace(fhir.HEADER_EXTENSION.encode(), b"x", 1), "no casetrail"),
    (lambda raw: raw.replace(fhir.EVENT_EXTENSION.encode(), b"x", 1), "without its recorded"),
    (lambda raw: raw.replace(b'"entry":[\n', b'"entry":[ \n', 1), "does not end with"),
    (lambda raw: raw.replace(b'"data":"', b'"data":"QUJD', 1), "not a compact JWS"),
])
async def test_a_mangled_fhir_export_is_refused_by_name(
        client: TestClient, token: TokenFactory, case_id: str, mangle: Any,
        message: str) -> None:
    raw = await export(client, token(role="supervisor", sub="sup-1"), case_id, "?format=fhir")
    with pytest.raises(MalformedExport, match=message):
        verify_bytes(mangle(raw))


async def test_a_long_history_streams_into_one_bundle(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    for n in range(620):  # more than one page of 500
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"Note {n}"}, expect=201)
    raw = await export(client, token(role="supervisor", sub="sup-1"), case_id, "?format=fhir")
    assert len(resources(raw, "Provenance")) == 625
    assert verify_bytes(raw).ok


# Codes of the R4 value sets these elements are bound to (binding strength: required).
R4_CODES = {
    "Goal.lifecycleStatus": {"proposed", "planned", "accepted", "active", "on-hold",
                             "completed", "cancelled", "entered-in-error", "rejected"},
    "CarePlan.status": {"draft", "active", "on-hold", "revoked", "completed",
                        "entered-in-error", "unknown"},
    "CarePlan.intent": {"proposal", "plan", "order", "option"},
    "CarePlan.activity.detail.kind": {"Appointment", "CommunicationRequest", "DeviceRequest",
                                      "MedicationRequest", "NutritionOrder", "Task",
                                      "ServiceRequest", "VisionPrescription"},
    "CarePlan.activity.detail.status": {"not-started", "scheduled", "in-progress", "on-hold",
                                        "completed", "cancelled", "stopped", "unknown",
                                        "entered-in-error"},
    "HumanName.use": {"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"},
}


def test_every_status_the_plan_knows_maps_to_a_code_fhir_allows() -> None:
    assert set(fhir.GOAL_LIFECYCLE) == set(get_args(ev.GoalStatus))
    assert set(fhir.GOAL_LIFECYCLE.values()) <= R4_CODES["Goal.lifecycleStatus"]
    assert set(fhir.STEP_STATUS) == set(get_args(ev.StepStatus))
    assert set(fhir.STEP_STATUS.values()) <= R4_CODES["CarePlan.activity.detail.status"]


async def test_the_codes_written_are_those_of_the_r4_value_sets(
        client: TestClient, token: TokenFactory, rich_case: str) -> None:
    raw = await export(client, token(role="supervisor", sub="sup-1"), rich_case,
                       "?format=fhir")
    [care_plan], [patient] = resources(raw, "CarePlan"), resources(raw, "Patient")
    written = {
        "Goal.lifecycleStatus": {g["lifecycleStatus"] for g in resources(raw, "Goal")},
        "CarePlan.status": {care_plan["status"]}, "CarePlan.intent": {care_plan["intent"]},
        "CarePlan.activity.detail.kind": {a["detail"]["kind"] for a in care_plan["activity"]},
        "CarePlan.activity.detail.status": {a["detail"]["status"]
                                            for a in care_plan["activity"]},
        "HumanName.use": {n["use"] for n in patient["name"]}}
    for element, codes in written.items():
        assert codes <= R4_CODES[element], element
