"""Audit, practice rule 7 (strengths-based documentation), from a case manager's point of view.

design.md rule 7: "Free text (notes, goal text) is checked against a language guide (deficit or
dehumanising terms such as "non-compliant", "addict", "offender", "manipulative", "failed to",
"I know"); the write succeeds and the response carries `warnings` with person-first
suggestions. The guide is data (a file per agency can extend it), not code."

docs/decisions/0101-plan-domain.md rule 7: "Every field staff write is checked, a support's
`relationship` included"; the participant's own words (`in_their_words`,
`participant_statement`) are "recorded verbatim and not checked". Decision 0102: agency files
are read at startup, a malformed one stops the start naming the file.

Everything here goes through the real HTTP API (tests/records_api.py), except the guide's own
suggestions and the start-up refusal of `casetrail records`. What tests/test_practice_rules.py,
tests/test_cases_api.py and tests/test_language_guides.py already check over HTTP (note text,
goal title, step description, strength description, review summary, a support's relationship,
a goal status reason; an agency term added for that agency only) is not repeated.

Tests marked "judgement" in their docstring check behaviour the documents do not promise but a
case manager would clearly call wrong; the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from services.cli import main
from services.records.domain import load_base_guide
from tests.conftest import JWT_SECRET, ClientFactory, TokenFactory
from tests.records_api import CaseApi

Pairs = list[tuple[str, str]]


def pairs(answer: dict[str, Any]) -> Pairs:
    return [(w["field"], w["term"]) for w in answer["warnings"]]


async def version_of(cm: CaseApi, case_id: str) -> int:
    return int((await cm.plan(case_id))["version"])


# --------------------------------------------------------------------------------------------
# every staff-written free-text field of every write is checked, and the warning names it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    name: str
    method: str
    path: str  # formatted with the ids the setup made
    body: dict[str, Any] | None
    expected: Pairs  # (field, term), in the order the answer gives them
    status: int = 200


async def prepared_case(cm: CaseApi) -> dict[str, str]:
    """A case with one of everything a write can name, an agreed plan and a pending review."""
    case = await cm.open_case()
    ids: dict[str, str] = {"case": case}
    ids["strength"] = await cm.strength(case)
    ids["goal"] = await cm.goal(case)
    for title in ("Find a flat", "Get my licence back"):  # at the cap of 3 active goals
        await cm.goal(case, title=title)
    ids["step"] = await cm.step(case, ids["goal"])
    ids["support"] = (await cm.call("POST", f"/v1/cases/{case}/supports",
                                    {"name": "Coach Lee"}, expect=201))["id"]
    ids["requirement"] = (await cm.call("POST", f"/v1/cases/{case}/requirements",
                                        {"title": "Attend weekly check-in"}, expect=201))["id"]
    ids["future_goal"] = await cm.goal(case, title="Learn to drive", status="future")
    await cm.agree(case)
    ids["review"] = (await cm.plan(case))["next_review"]["review_id"]
    return ids


C = "/v1/cases/{case}"
WRITES = [
    Write("participant-reason", "PATCH", C + "/participant",
          {"preferred_name": "JoJo", "reason": "Jo asked; the old name was from when Jo was"
                                                " an inmate"}, [("reason", "inmate")]),
    Write("strength-revised", "PATCH", C + "/strengths/{strength}",
          {"description": "Fixes bikes, even when resistant to help",
           "reason": "Jo failed to mention the repair shop before"},
          [("description", "resistant"), ("reason", "failed to")]),
    Write("strength-removed-body", "DELETE", C + "/strengths/{strength}",
          {"reason": "Was a convict's hobby, Jo says"}, [("reason", "convict")]),
    Write("strength-removed-query", "DELETE",
          C + "/strengths/{strength}?reason=" + quote("Jo refused to keep it on the plan"),
          None, [("reason", "refused")]),
    Write("goal-revised", "PATCH", C + "/goals/{goal}",
          {"title": "Stop being a junkie", "reason": "Jo is in denial about the old title"},
          [("title", "junkie"), ("reason", "in denial")]),
    Write("goal-status-over-the-cap", "POST", C + "/goals/{future_goal}/status",
          {"status": "active", "reason": "No longer unmotivated",
           "override_reason": "The court says the parolee must drive"},
          [("reason", "unmotivated"), ("override_reason", "parolee")]),
    Write("step-revised", "PATCH", C + "/steps/{step}",
          {"description": "Call the probationer line", "reason": "Jo is lazy about email"},
          [("description", "probationer"), ("reason", "lazy")]),
    Write("step-no-longer-needed", "POST", C + "/steps/{step}/status",
          {"status": "no_longer_needed", "reason": "Jo refuses to go"},
          [("reason", "refuses")]),
    Write("step-completed-note", "POST", C + "/steps/{step}/complete",
          {"note": "Done, though Jo was uncooperative at first"},
          [("note", "uncooperative")]),
    Write("support-added", "POST", C + "/supports",
          {"name": "Dana", "relationship": "sponsor",
           "description": "Helps with the substance abuser group"},
          [("description", "substance abuser")], 201),
    Write("support-removed", "DELETE", C + "/supports/{support}",
          {"reason": "Coach Lee called Jo a felon"}, [("reason", "felon")]),
    Write("requirement-recorded", "POST", C + "/requirements",
          {"title": "Drug abuse classes", "description": "For the ex-con programme"},
          [("title", "drug abuse"), ("description", "ex-con")], 201),
    Write("requirement-not-met", "POST", C + "/requirements/{requirement}/status",
          {"status": "not_met", "reason": "Non-compliance with the check-in"},
          [("reason", "non-compliance")]),
    Write("review-rescheduled", "POST", C + "/reviews/{review}/reschedule",
          {"due_date": "2026-12-01", "reason": "Jo is attention-seeking, moved it"},
          [("reason", "attention-seeking")]),
    Write("case-transferred", "POST", C + "/transfer",
          {"case_manager": "cm-2", "reason": "Too manipulative for me"},
          [("reason", "manipulative")]),
    Write("case-closed", "POST", C + "/close",
          {"reason": "Jo, an alcoholic, moved away", "outcome": "moved"},
          [("reason", "alcoholic")]),
]


@pytest.mark.parametrize("write", WRITES, ids=[w.name for w in WRITES])
async def test_staff_text_of_every_write_is_checked_and_the_warning_names_the_field(
        cm: CaseApi, write: Write) -> None:
    """Decision 0101 rule 7: "Every field staff write is checked". Each write answers its own
    status with the version moved, the text recorded as given, and one warning per
    (field, term) naming the field, with a person-first suggestion."""
    ids = await prepared_case(cm)
    before = await version_of(cm, ids["case"])
    answer = await cm.call(write.method, write.path.format(**ids), write.body,
                           expect=write.status)
    assert pairs(answer) == write.expected, answer["warnings"]
    assert all(w["suggestion"].strip() and w["message"].strip() for w in answer["warnings"])
    assert answer["version"] == before + len(answer["events"]) > before
    # the flagged text is recorded as given (nothing rewritten)
    recorded = {k: v for e in answer["events"] for k, v in e["data"].items()}
    for field, _ in write.expected:
        if write.body is not None:
            assert recorded[field] == write.body[field], (field, recorded)


async def test_a_reopen_reason_is_checked(cm: CaseApi) -> None:
    case = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case}/close", {"reason": "Moved to the coast"},
                  expect=200)
    answer = await cm.call("POST", f"/v1/cases/{case}/reopen",
                           {"reason": "Back; no longer an addict, Jo says"}, expect=200)
    assert pairs(answer) == [("reason", "addict")]


async def test_a_step_set_back_to_completed_has_its_reason_checked(cm: CaseApi) -> None:
    """Completing a step by hand from "no longer needed" is a reversal with a reason
    (ActionStepCompleted.reason, a checked field)."""
    case = await cm.open_case()
    step = await cm.step(case, await cm.goal(case))
    await cm.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                  {"status": "no_longer_needed", "reason": "Jo moved the date"}, expect=200)
    answer = await cm.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                           {"status": "completed", "reason": "Marked wrongly: the criminal"
                                                             " record check is done"},
                           expect=200)
    assert [e["type"] for e in answer["events"]] == ["ActionStepCompleted"]
    assert pairs(answer) == [("reason", "criminal")]


async def test_a_goal_over_the_cap_has_its_override_reason_and_why_checked(cm: CaseApi) -> None:
    case = await cm.open_case()
    for title in ("Find steady work", "Find a flat", "Get my licence back"):
        await cm.goal(case, title=title)
    answer = await cm.call("POST", f"/v1/cases/{case}/goals", {
        "title": "Pay the fines", "domain": "legal", "source": "court",
        "why_it_matters": "Fines keep the offender label on Jo",
        "override_reason": "Jo fails to see the court date otherwise"}, expect=201)
    assert pairs(answer) == [("why_it_matters", "offender"), ("override_reason", "fails to")]


async def test_a_supports_contact_note_is_checked_like_its_relationship(cm: CaseApi) -> None:
    """Judgement (borderline on the documents). Decision 0101: "Every field staff write is
    checked, a support's `relationship` included". `contact` is a free 200-character field the
    case manager types the same way (how and when to reach the support), yet it alone of a
    support's staff-typed text is not checked, so a label written there is never answered."""
    case = await cm.open_case()
    answer = await cm.call("POST", f"/v1/cases/{case}/supports", {
        "name": "Uncle Ray", "relationship": "uncle",
        "contact": "555-0101, mornings; lives at the parolee hostel with other ex-cons"},
        expect=201)
    assert pairs(answer) == [("contact", "parolee"), ("contact", "ex-con")]


# --------------------------------------------------------------------------------------------
# the participant's own words are recorded verbatim and never flagged
# --------------------------------------------------------------------------------------------

VOICE = "I know I was an addict and a non-compliant offender; I failed to show up"

PARTICIPANT_VOICE = [
    ("strength-in-their-words", "POST", C + "/strengths",
     {"category": "past_success", "description": "Kept a job for a year",
      "in_their_words": VOICE}, 201),
    ("strength-revised-in-their-words", "PATCH", C + "/strengths/{strength}",
     {"in_their_words": VOICE}, 200),
    ("goal-in-their-words", "POST", C + "/goals",
     {"title": "Stay in work", "domain": "employment", "source": "participant",
      "status": "future", "in_their_words": VOICE}, 201),
    ("goal-revised-in-their-words", "PATCH", C + "/goals/{goal}", {"in_their_words": VOICE},
     200),
    ("review-participant-statement", "POST", C + "/reviews/{review}/held",
     {"participant_statement": VOICE}, 200),
]


@pytest.mark.parametrize(("method", "path", "body", "status"),
                         [p[1:] for p in PARTICIPANT_VOICE], ids=[p[0] for p in PARTICIPANT_VOICE])
async def test_the_participants_own_words_are_recorded_verbatim_and_not_flagged(
        cm: CaseApi, method: str, path: str, body: dict[str, Any], status: int) -> None:
    """Decision 0101 rule 7: in_their_words and participant_statement "are recorded verbatim
    and not checked: the guide is for how staff document"."""
    ids = await prepared_case(cm)
    answer = await cm.call(method, path.format(**ids), body, expect=status)
    assert answer["warnings"] == []
    field = next(k for k in body if k in ("in_their_words", "participant_statement"))
    assert answer["events"][0]["data"][field] == VOICE


async def test_an_agreement_statement_is_not_flagged(cm: CaseApi) -> None:
    case = await cm.open_case()
    await cm.goal(case)
    answer = await cm.call("POST", f"/v1/cases/{case}/agreements", {
        "participation": "phone", "present": ["Jo"], "participant_statement": VOICE},
        expect=201)
    assert answer["warnings"] == []
    assert answer["events"][0]["data"]["participant_statement"] == VOICE


# --------------------------------------------------------------------------------------------
# the write is never blocked
# --------------------------------------------------------------------------------------------


async def test_warnings_never_block_the_write_which_is_recorded_as_written(cm: CaseApi) -> None:
    """Rule 7: "the write succeeds and the response carries `warnings`"; the recorded note is
    the text as typed (nothing rewritten), it shows in the plan and in history, and a
    conditional write (If-Match) with warnings moves the version like any other."""
    case = await cm.open_case()
    text = "Jo was NON-COMPLIANT, an Addict and manipulative; I know Jo failed to call"
    response = await cm.client.post(f"/v1/cases/{case}/notes", json={"text": text},
                                    headers={"Authorization": f"Bearer {cm.token}",
                                             "If-Match": '"1"'})
    answer = await response.json()
    assert response.status == 201, answer
    assert response.headers["ETag"] == '"2"'
    assert answer["version"] == 2
    assert pairs(answer) == [("text", "non-compliant"), ("text", "addict"),
                             ("text", "manipulative"), ("text", "I know"),
                             ("text", "failed to")]
    for warning in answer["warnings"]:
        assert warning["suggestion"]
        assert warning["suggestion"] != warning["term"]
    [event] = answer["events"]
    assert (event["type"], event["data"]["text"]) == ("NoteAdded", text)
    plan = await cm.plan(case)
    assert plan["version"] == 2
    assert [n["text"] for n in plan["recent_notes"]] == [text]
    history = await cm.call("GET", f"/v1/cases/{case}/history?after_version=1", expect=200)
    assert [(e["type"], e["data"]["text"]) for e in history["events"]] == [("NoteAdded", text)]
    # the next write goes on from the new version
    await cm.call("POST", f"/v1/cases/{case}/notes", {"text": "Jo chose Tuesday"}, expect=201,
                  headers={"If-Match": '"2"'})


def test_no_person_first_suggestion_is_itself_flagged_by_the_guide() -> None:
    """A suggestion offered as the person-first wording must pass the same guide."""
    guide = load_base_guide()
    flagged = {t.term: [w.term for w in guide.check("suggestion", t.suggestion)]
               for t in guide.terms}
    assert {term: found for term, found in flagged.items() if found} == {}


# --------------------------------------------------------------------------------------------
# matching: what must and must not be flagged
# --------------------------------------------------------------------------------------------

NOT_FLAGGED = [
    ("names", "Addison Offenbach and Felonia Convictson came to group"),
    ("words-containing-terms", "Jo has the know-how and knowledge; Knowles is Jo's sponsor"),
    ("addiction-services", "Referred to addiction services; felony record sealed; convicted"
                           " in 2019 and since then thriving"),
    ("reflective", "It sounds like Jo knows what matters; I knew to listen"),
]


@pytest.mark.parametrize("text", [t for _, t in NOT_FLAGGED], ids=[n for n, _ in NOT_FLAGGED])
async def test_names_and_ordinary_words_that_contain_a_term_are_not_flagged(
        cm: CaseApi, text: str) -> None:
    case = await cm.open_case()
    answer = await cm.call("POST", f"/v1/cases/{case}/notes", {"text": text}, expect=201)
    assert answer["warnings"] == []


FLAGGED_VARIANTS = [
    ("non-breaking-hyphen", "Jo was non\u2011compliant", "non-compliant"),
    ("no-break-space", "Jo failed\u00a0to call", "failed to"),
    ("narrow-no-break-space", "Jo failed\u202fto call", "failed to"),
    ("ideographic-space", "Jo failed\u3000to call", "failed to"),
    ("line-break", "Jo failed\nto call", "failed to"),
    ("minus-sign", "Jo was non\u2212compliant", "non-compliant"),
    ("curly-possessive", "The addict\u2019s family came", "addict"),
    ("upper-case", "AN OFFENDER", "offender"),
    ("plural", "Offenders and addicts", "offender"),
    ("emoji-and-combining-before", "\U0001f389\U0001f44d\U0001f3fd Jose\u0301 is an"
                                   " ex-offender", "ex-offender"),
]


@pytest.mark.parametrize(("text", "term"), [v[1:] for v in FLAGGED_VARIANTS],
                         ids=[v[0] for v in FLAGGED_VARIANTS])
async def test_a_term_however_it_is_typed_is_flagged(cm: CaseApi, text: str, term: str) -> None:
    """Decision 0101 rule 7: case-insensitive, "a space or hyphen in a term matches any run of
    whitespace, hyphens and dashes", plurals accepted."""
    case = await cm.open_case()
    answer = await cm.call("POST", f"/v1/cases/{case}/notes", {"text": text}, expect=201)
    assert pairs(answer)[0] == ("text", term), answer["warnings"]


async def test_a_term_split_by_an_invisible_soft_hyphen_is_flagged(cm: CaseApi) -> None:
    """Judgement. Text pasted from a hyphenated court report or word processor carries soft
    hyphens (U+00AD): "offen\\u00adder" shows on every screen, in the plan and in the PDF
    export as "offender". The case manager sees the term and gets no warning."""
    case = await cm.open_case()
    text = "Pasted from the report: Jo is a repeat offen\u00adder and non-com\u00adpliant"
    answer = await cm.call("POST", f"/v1/cases/{case}/notes", {"text": text}, expect=201)
    assert {term for _, term in pairs(answer)} == {"offender", "non-compliant"}, \
        answer["warnings"]


ABSURD = [
    ("alcoholics-anonymous", "strengths",
     {"category": "community_resource",
      "description": "Goes to Alcoholics Anonymous every Tuesday, 2 years sober"}),
    ("non-alcoholic", "notes", {"text": "Brought non-alcoholic drinks to the family dinner"}),
    ("water-resistant", "notes", {"text": "Bought water-resistant boots for the site job"}),
]


@pytest.mark.parametrize(("path", "body"), [a[1:] for a in ABSURD], ids=[a[0] for a in ABSURD])
async def test_words_that_do_not_describe_a_person_are_not_flagged(
        cm: CaseApi, path: str, body: dict[str, Any]) -> None:
    """Judgement. A hyphen is read as a word break, so "non-alcoholic" drinks and
    "water-resistant" boots are answered with "person with an alcohol use disorder" and
    "not yet ready, has different priorities"; the name of a recovery fellowship recorded as
    a strength is answered as a deficit label. The guide is for labels put on a person
    (rule 7: "deficit or dehumanising terms"); none of these labels anyone."""
    case = await cm.open_case()
    answer = await cm.call("POST", f"/v1/cases/{case}/{path}", body, expect=201)
    assert answer["warnings"] == []


async def test_the_participants_words_quoted_in_a_note_are_not_flagged_as_the_writers(
        cm: CaseApi) -> None:
    """Judgement. Strengths-based notes quote the person; the guide's "I know" message ("no one
    fully knows another person's situation") is about staff presuming, and decision 0101
    says the guide is "not for correcting how a person describes their own life". Quoting Jo
    saying "I know I can do this" is answered as if the case manager presumed."""
    case = await cm.open_case()
    answer = await cm.call("POST", f"/v1/cases/{case}/notes",
                           {"text": "Jo said: \u201cI know I can do this.\u201d"}, expect=201)
    assert answer["warnings"] == []


@pytest.mark.parametrize("text", ["Jo is refusing to attend group", "Jo continues to refuse"
                                  " the referral"], ids=["refusing", "refuse"])
async def test_every_form_of_a_verb_the_guide_lists_is_flagged(cm: CaseApi, text: str) -> None:
    """Judgement. The guide flags "refuses" and "refused", and decision 0101 gives "failed to"
    its other forms as terms of their own "since plurals are the only endings matched" (fail
    to, fails to, failing to). "refuse" and "refusing" were left out, so "Jo refused" is
    flagged and "Jo is refusing" is not."""
    case = await cm.open_case()
    answer = await cm.call("POST", f"/v1/cases/{case}/notes", {"text": text}, expect=201)
    assert [term[:5] for _, term in pairs(answer)] == ["refus"], answer["warnings"]


# --------------------------------------------------------------------------------------------
# agency guides
# --------------------------------------------------------------------------------------------

NORTH = {
    "description": "North county",
    "terms": [{"term": "client", "suggestion": "participant"},
              {"term": "absconder", "suggestion": "person whose whereabouts are unknown"},
              {"term": "offender", "suggestion": "person under our supervision",
               "message": "North says: person under our supervision."},
              {"term": "won't engage", "suggestion": "has not yet found a reason to take part"}],
    "remove": ["Refused"],
}


@pytest.fixture
async def north_client(make_records_client: ClientFactory, fresh_database_url: str,
                       tmp_path: Path) -> TestClient:
    folder = tmp_path / "guides"
    folder.mkdir()
    (folder / "agency-north.json").write_text(json.dumps(NORTH))
    return await make_records_client(fresh_database_url,
                                     CASETRAIL_LANGUAGE_GUIDE_DIR=str(folder))


TEXT = "The client, an offender and absconder, refused and is an addict"


async def test_an_agency_guide_adds_replaces_and_removes_for_that_agency_only(
        north_client: TestClient, token: TokenFactory) -> None:
    """README: agency files hold "`terms` to add, `remove` to drop"; the base terms the file
    does not remove still apply to that agency, and another agency keeps the base guide."""
    north = CaseApi(north_client, token(agency="agency-north"))
    case = await north.open_case()
    answer = await north.call("POST", f"/v1/cases/{case}/notes", {"text": TEXT}, expect=201)
    assert [w["term"] for w in answer["warnings"]] == ["client", "offender", "absconder",
                                                       "addict"]
    offender = answer["warnings"][1]
    assert (offender["suggestion"], offender["message"]) == (
        "person under our supervision", "North says: person under our supervision.")

    south = CaseApi(north_client, token(agency="agency-south", sub="cm-9"))
    case = await south.open_case(case_manager="cm-9")
    answer = await south.call("POST", f"/v1/cases/{case}/notes", {"text": TEXT}, expect=201)
    assert [w["term"] for w in answer["warnings"]] == ["offender", "refused", "addict"]
    assert answer["warnings"][0]["suggestion"] != "person under our supervision"


async def test_an_agency_term_with_an_apostrophe_matches_a_curly_apostrophe(
        north_client: TestClient, token: TokenFactory) -> None:
    """Judgement. Phones and word processors turn ' into \u2019 as people type. An agency that
    adds "won't engage" gets a warning for notes typed on a desktop and none for the same
    words typed on a phone; the guide already treats every kind of hyphen alike "however
    written" (decision 0101), apostrophes are left out."""
    north = CaseApi(north_client, token(agency="agency-north"))
    case = await north.open_case()
    straight = await north.call("POST", f"/v1/cases/{case}/notes",
                                {"text": "Jo won't engage"}, expect=201)
    assert pairs(straight) == [("text", "won't engage")]
    curly = await north.call("POST", f"/v1/cases/{case}/notes",
                             {"text": "Jo won\u2019t engage"}, expect=201)
    assert pairs(curly) == [("text", "won't engage")]


async def test_a_supervisors_write_in_an_agency_uses_that_agencys_guide(
        north_client: TestClient, token: TokenFactory) -> None:
    """The agency's guide applies to every writer of the agency, not only the case manager:
    a supervisor's transfer reason is checked with the north file's terms."""
    north = CaseApi(north_client, token(agency="agency-north"))
    case = await north.open_case()
    supervisor = token(role="supervisor", sub="sup-1", agency="agency-north")
    answer = await north.call("POST", f"/v1/cases/{case}/transfer",
                              {"case_manager": "cm-2", "reason": "The client refused cm-1"},
                              expect=200, token=supervisor)
    assert pairs(answer) == [("reason", "client")]


@pytest.mark.parametrize(("file_name", "body", "said"), [
    ("agency-north.json", {"terms": [{"term": "client"}]}, "'suggestion'"),
    ("agency-north.json", {"term": [{"term": "client", "suggestion": "participant"}]},
     "unknown keys ['term']"),
    ("agency-north.json", "", "not valid JSON"),
    ("north county.json", {"terms": []}, "name the file <agency>.json"),
], ids=["no-suggestion", "misspelt-terms", "empty-file", "bad-file-name"])
def test_casetrail_records_stops_on_a_malformed_guide_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        file_name: str, body: object, said: str) -> None:
    """Decision 0102: a malformed file stops the start; `casetrail records` prints
    `casetrail: configuration: <file>: <problem>` and exits 2, before the database."""
    path = tmp_path / file_name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/unused")
    monkeypatch.setenv("CASETRAIL_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("CASETRAIL_LANGUAGE_GUIDE_DIR", str(tmp_path))
    assert main(["records", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert f"casetrail: configuration: {path}: " in error, error
    assert said in error, error
    assert "Traceback" not in error
