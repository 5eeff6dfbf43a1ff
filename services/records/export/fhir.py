"""The FHIR form of an export: one R4 Bundle (type ``collection``), written line by line.

The Bundle holds the plan as of the export's last version, as FHIR resources (Patient,
CarePlan with its action steps and reviews as activities, a Goal per goal, a CareTeam of the
supports), then one Provenance per recorded event: who, when, why, and, in an extension, the
event with every field its hash covers, exactly as the JSON Lines export writes it. The last
line holds ``Bundle.signature``: a JWS (EdDSA, Ed25519) whose payload is the SHA-256 digest of
every byte before that line, so the chain and the signature are checked as for JSON Lines.

Line layout (the whole file is one JSON document):
    {"resourceType":"Bundle",…,"entry":[      the Bundle, its header in meta.extension
    {"fullUrl":…,"resource":{…}}              the plan's first resource (the Patient)
    ,{"fullUrl":…,"resource":{…}}             every further resource, one per line
    ],"signature":{…}}                        the signature
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from schemas.events import reason_of
from services.records.chain import ChainLink, format_timestamp
from services.records.export.formats import ExportHeader, event_fields, json_line, shown
from services.records.export.signing import ExportSigner

MEDIA_TYPE = "application/fhir+json"
BASE = "https://casetrail.org/fhir"
HEADER_EXTENSION = f"{BASE}/StructureDefinition/export-header"
EVENT_EXTENSION = f"{BASE}/StructureDefinition/recorded-event"
EVENTS_EXTENSION = f"{BASE}/StructureDefinition/export-events"
HEAD_HASH_EXTENSION = f"{BASE}/StructureDefinition/export-head-hash"
BUNDLE_START = b'{"resourceType":"Bundle"'
OPENING_END = b',"entry":[\n'
TRAILER_START = b'],"signature":'
CASE_SYSTEM = f"{BASE}/sid/case"
USER_SYSTEM = f"{BASE}/sid/user"
# ASTM E1762-95 signature type: the source (the records service) vouches for the content.
SOURCE_SIGNATURE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14",
                    "display": "Source Signature"}

GOAL_LIFECYCLE = {"active": "active", "future": "planned", "paused": "on-hold",
                  "achieved": "completed", "discontinued": "cancelled"}
STEP_STATUS = {"not_started": "not-started", "in_progress": "in-progress",
               "completed": "completed", "cannot_be_done_yet": "on-hold",
               "no_longer_needed": "cancelled"}

Resource = dict[str, Any]

def _shown_strings(value: Any) -> Any:
    """``value`` (a resource, as JSON) with ``shown`` applied to every string in it."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {key: _shown_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown_strings(item) for item in value]
    return value


def urn(value: str | uuid.UUID) -> str:
    return f"urn:uuid:{value}"


def patient_id(case_id: str) -> uuid.UUID:
    """The participant's resource id: stable per case, so re-exports agree."""
    return uuid.uuid5(uuid.UUID(case_id), "patient")


def _user(sub: str | None) -> dict[str, Any]:
    if not sub:
        return {"display": "Casetrail"}
    shown_sub = shown(str(sub))
    return {"identifier": {"system": USER_SYSTEM, "value": shown_sub}, "display": shown_sub}


def _ext(name: str, **value: Any) -> dict[str, Any]:
    return {"url": f"{BASE}/StructureDefinition/{name}", **value}


def _complex(name: str, parts: dict[str, Any]) -> dict[str, Any]:
    """A complex extension of string parts, the empty ones left out."""
    return _ext(name, extension=[{"url": key, "valueString": str(value)}
                                 for key, value in parts.items() if value not in (None, "")])


# --------------------------------------------------------------------------------------------
# the plan as resources
# --------------------------------------------------------------------------------------------


# a moment's day on the agency's calendar (``AgencyPolicy.date_at``): FHIR dates are days
Calendar = Callable[[datetime], date]


def plan_resources(view: dict[str, Any], calendar: Calendar) -> list[Resource]:
    """The plan (its API view, as JSON) as FHIR resources, the Patient first; every string in
    them ``shown``, whichever field it lands in."""
    case_id = str(view["case_id"])
    patient = urn(patient_id(case_id))
    goals = [goal_resource(g, patient, calendar) for g in view["goals"]]
    team = care_team(view, patient) if view["supports"] else None
    return [_shown_strings(resource) for resource in
            (patient_resource(view), care_plan(view, patient, team), *goals,
             *([team] if team else []))]


def patient_resource(view: dict[str, Any]) -> Resource:
    p, case_id = view["participant"], str(view["case_id"])
    resource: Resource = {
        "resourceType": "Patient", "id": str(patient_id(case_id)),
        "identifier": [{"system": CASE_SYSTEM, "value": case_id}],
        "name": [{"use": "official", "text": p["name"]}]}
    if p.get("external_ref"):
        resource["identifier"].append({"system": f"{BASE}/sid/external-ref",
                                       "value": p["external_ref"]})
    if p.get("preferred_name"):
        resource["name"].append({"use": "usual", "text": p["preferred_name"]})
    if p.get("email"):
        resource["telecom"] = [{"system": "email", "value": p["email"]}]
    if p.get("pronouns"):
        resource["extension"] = [_ext("pronouns", valueString=p["pronouns"])]
    return resource


def _day(calendar: Calendar, moment: str) -> str:
    return calendar(datetime.fromisoformat(moment)).isoformat()


def goal_resource(goal: dict[str, Any], patient: str, calendar: Calendar) -> Resource:
    """A goal; its days (set, status changed) are the agency's, as the plan's review dates
    are: the UTC date was a day early for a goal set in the morning in Auckland."""
    status = goal["status"]
    resource: Resource = {
        "resourceType": "Goal", "id": str(goal["goal_id"]),
        "extension": [_ext("goal-source", valueCode=goal["source"])],
        "lifecycleStatus": GOAL_LIFECYCLE[status],
        "category": [{"coding": [{"system": f"{BASE}/CodeSystem/goal-domain",
                                  "code": goal["domain"]}], "text": goal["domain"]}],
        "description": {"text": goal["title"]},
        "subject": {"reference": patient},
        "startDate": _day(calendar, goal["set_at"]),
        "statusDate": _day(calendar, goal["status_changed_at"] or goal["set_at"]),
        "expressedBy": ({"reference": patient} if goal["source"] == "participant"
                        else {"display": goal["source"]}),
    }
    if goal["status_reason"]:
        resource["statusReason"] = goal["status_reason"]
    if status == "achieved":
        resource["achievementStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/goal-achievement",
            "code": "achieved"}]}
    if goal["target_date"]:
        resource["target"] = [{"dueDate": goal["target_date"]}]
    if goal["risk_factors"]:
        resource["addresses"] = [{"display": factor} for factor in goal["risk_factors"]]
    notes = [{"authorReference": {"reference": patient}, "text": goal["in_their_words"]}
             if goal["in_their_words"] else None,
             {"text": f"Why it matters: {goal['why_it_matters']}"}
             if goal["why_it_matters"] else None]
    if any(notes):
        resource["note"] = [note for note in notes if note]
    return resource


def care_plan(view: dict[str, Any], patient: str, team: Resource | None) -> Resource:
    case_id = str(view["case_id"])
    resource: Resource = {
        "resourceType": "CarePlan", "id": case_id,
        "extension": _plan_extensions(view),
        "identifier": [{"system": CASE_SYSTEM, "value": case_id}],
        "status": _plan_status(view), "intent": "plan", "title": "Case plan",
        "subject": {"reference": patient},
        "period": {"start": view["opened_at"],
                   **({"end": view["closure"]["closed_at"]} if view["closure"] else {})},
        "created": view["opened_at"],
        "author": _user(view["case_manager"]),
    }
    activities = _activities(view, patient)
    if activities:
        resource["activity"] = activities
    if team is not None:
        resource["careTeam"] = [{"reference": urn(team["id"])}]
    if view["goals"]:
        resource["goal"] = [{"reference": urn(g["goal_id"])} for g in view["goals"]]
    notes = _plan_notes(view, patient)
    if notes:
        resource["note"] = notes
    return resource


def _plan_status(view: dict[str, Any]) -> str:
    if view["status"] == "closed":
        return "completed"
    agreement = view["agreement"]
    return "active" if agreement and agreement["outcome"] == "agreed" else "draft"


def _plan_extensions(view: dict[str, Any]) -> list[dict[str, Any]]:
    strengths = [_complex("strength", {"category": s["category"], "description":
                                       s["description"], "inTheirWords": s["in_their_words"]})
                 for s in view["strengths"]]
    requirements = [_complex("requirement", {
        "title": r["title"], "description": r["description"], "source": r["source"],
        "reference": r["reference"], "dueDate": r["due_date"], "status": r["status"],
        "statusReason": r["status_reason"]})
        for r in view["requirements"]]
    return [_ext("risk-level", valueCode=view["risk_level"]), *strengths, *requirements]


_REVIEW_STATUS = {"held": "completed", "scheduled": "scheduled", "cancelled": "cancelled"}


def _activities(view: dict[str, Any], patient: str) -> list[dict[str, Any]]:
    steps = [_step_activity(step, goal, patient)
             for goal in view["goals"] for step in goal["steps"]]
    reviews = [_review_activity(review, patient) for review in view["reviews"]]
    return steps + reviews


def _review_activity(review: dict[str, Any], patient: str) -> dict[str, Any]:
    """A review; one held carries its summary and what the participant said as its progress,
    dated the day it was held (they were left out: the participant's voice with them)."""
    activity: dict[str, Any] = {"detail": {
        "kind": "Appointment", "code": {"text": "Plan review"},
        "status": _REVIEW_STATUS[review["status"]],
        "scheduledPeriod": {"start": review["due_date"], "end": review["due_date"]},
        "description": f"Review ({review['basis']}, {review['risk_level']} risk)"}}
    if held_on := review["held_on"]:
        summary, said = review["summary"], review["participant_statement"]
        progress = [*([{"time": held_on, "text": summary}] if summary else []),
                    *([{"authorReference": {"reference": patient}, "time": held_on,
                        "text": said}] if said else [])]
        activity["progress"] = progress or [{"time": held_on, "text": "Review held"}]
    return activity


def _step_activity(step: dict[str, Any], goal: dict[str, Any], patient: str) -> dict[str, Any]:
    owner = {"participant": {"reference": patient},
             "case_manager": {"display": "case manager"},
             "support": {"display": step["support_name"] or "a support"}}[step["owner"]]
    detail: dict[str, Any] = {"kind": "Task", "status": STEP_STATUS[step["status"]],
                              "description": step["description"],
                              "goal": [{"reference": urn(goal["goal_id"])}],
                              "performer": [owner]}
    if step["status_reason"]:
        detail["statusReason"] = {"text": step["status_reason"]}
    if step["due_date"]:
        detail["scheduledPeriod"] = {"end": step["due_date"]}
    return {"detail": detail}


def _plan_notes(view: dict[str, Any], patient: str) -> list[dict[str, Any]]:
    notes = []
    agreement = view["agreement"]
    if agreement:
        notes.append({"authorReference": {"reference": patient},
                      "time": agreement["recorded_at"],
                      "text": f"Plan {agreement['outcome'].replace('_', ' ')} "
                              f"({agreement['participation'].replace('_', ' ')}): "
                              f"{agreement['participant_statement']}"})
    if view["closure"]:
        notes.append({"time": view["closure"]["closed_at"],
                      "text": f"Case closed: {view['closure']['reason']}"})
    return notes


def care_team(view: dict[str, Any], patient: str) -> Resource:
    return {
        "resourceType": "CareTeam", "id": str(uuid.uuid5(uuid.UUID(str(view["case_id"])),
                                                         "supports")),
        "name": "Supports", "subject": {"reference": patient},
        "participant": [{"role": [{"text": s["relationship"] or s["kind"]}],
                         "member": {"display": s["name"]}}
                        for s in view["supports"]]}


def provenance(link: ChainLink, care_plan_id: str) -> Resource:
    """One recorded event: who did what, when and why; the event itself, with every field its
    hash covers, rides in an extension for the verifier exactly as recorded (JSON text: its
    C0 controls escaped, DEL and C1 as written, which FHIR allows); the text around it is
    ``shown``."""
    actor = link.metadata.get("actor") or {}
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "provenance-participant-type", "code": "author"}]},
        "who": _user(actor.get("sub"))}
    if actor.get("role"):
        agent["role"] = [{"text": shown(str(actor["role"]))}]
    resource: Resource = {
        "resourceType": "Provenance", "id": link.event_id,
        "extension": [{"url": EVENT_EXTENSION,
                       "valueString": json_line(event_fields(link)).decode()}],
        "target": [{"reference": urn(care_plan_id)}],
        "recorded": format_timestamp(link.recorded_at),
        "activity": {"coding": [{"system": f"{BASE}/CodeSystem/event-type",
                                 "code": link.type}]},
        "agent": [agent]}
    if reason := reason_of(link.type, link.schema_version, link.data, link.metadata):
        resource["reason"] = [{"text": shown(reason)}]
    return resource


# --------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jws(signer: ExportSigner, digest: bytes) -> str:
    """A compact JWS (RFC 7515) of ``digest``, signed EdDSA, the public key in its header."""
    header = {"alg": "EdDSA", "kid": signer.key_id,
              "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64url(signer.public_key)}}
    signing_input = f"{_b64url(json_line(header))}.{_b64url(digest)}"
    return f"{signing_input}.{_b64url(signer.sign(signing_input.encode()))}"


def signature_element(key_id: str, exported_at: str, data: str, events: Any,
                      head_hash: Any) -> dict[str, Any]:
    """``Bundle.signature``: the JWS (``data``) and the counts. The verifier rebuilds it from
    the file's own values to refuse any other: the line is outside the digest."""
    return {"type": [SOURCE_SIGNATURE], "when": exported_at,
            "who": {"display": "Casetrail records service",
                    "identifier": {"system": f"{BASE}/sid/export-key", "value": key_id}},
            "sigFormat": "application/jose", "data": data,
            "extension": [{"url": EVENTS_EXTENSION, "valueInteger": events},
                          *([{"url": HEAD_HASH_EXTENSION, "valueString": head_hash}]
                            if head_hash else [])]}


class FhirWriter:
    """Encodes one FHIR export, line by line, keeping the digest of every byte it gave out."""

    def __init__(self, header: ExportHeader, calendar: Calendar) -> None:
        self._header = header
        self._calendar = calendar
        self._digest = hashlib.sha256()
        self._events = 0
        self._head_hash: str | None = None

    def opening(self, view: dict[str, Any]) -> bytes:
        """The Bundle up to its entries, and the plan's resources."""
        h = self._header
        bundle = {"resourceType": "Bundle",
                  "id": str(uuid.uuid5(uuid.UUID(h.case_id),
                                       f"{h.first_version}-{h.last_version}-"
                                       f"{format_timestamp(h.exported_at)}")),
                  "meta": {"extension": [{"url": HEADER_EXTENSION,
                                          "valueString": json_line(h.as_dict()).decode()}]},
                  "identifier": {"system": f"{BASE}/sid/export",
                                 "value": f"case-{h.case_id}-v{h.first_version}-"
                                          f"{h.last_version}"},
                  "type": "collection", "timestamp": format_timestamp(h.exported_at)}
        lines = [json_line(bundle)[:-1] + OPENING_END]
        lines += [(b"," if i else b"") + self._entry(resource) + b"\n"
                  for i, resource in enumerate(plan_resources(view, self._calendar))]
        return self._counted(b"".join(lines))

    def event(self, link: ChainLink) -> bytes:
        self._events += 1
        self._head_hash = link.hash
        return self._counted(b"," + self._entry(provenance(link, self._header.case_id))
                             + b"\n")

    def trailer(self, signer: ExportSigner) -> bytes:
        """The signature line; nothing may be written after it."""
        signature = signature_element(
            signer.key_id, format_timestamp(self._header.exported_at),
            base64.b64encode(jws(signer, self._digest.digest()).encode()).decode(),
            self._events, self._head_hash)
        return TRAILER_START + json_line(signature) + b"}\n"

    @staticmethod
    def _entry(resource: Resource) -> bytes:
        return json_line({"fullUrl": urn(resource["id"]), "resource": resource})

    def _counted(self, written: bytes) -> bytes:
        self._digest.update(written)
        return written
