"""Rule 7: the language guide is data; checks are case-insensitive, on word boundaries."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from uuid import uuid4

import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d
from services.records.domain.language import MAX_TERM


@pytest.fixture(scope="module")
def guide() -> d.LanguageGuide:
    return d.load_base_guide()


def terms(warnings: list[d.LanguageWarning]) -> list[str]:
    return [w.term for w in warnings]


def test_the_base_guide_holds_the_terms_of_the_brief(guide: d.LanguageGuide) -> None:
    listed = {t.term for t in guide.terms}
    for term in ("non-compliant", "noncompliant", "addict", "offender", "manipulative",
                 "failed to", "I know", "resistant", "junkie", "criminal", "convict"):
        assert term in listed
    assert all(t.suggestion and t.message for t in guide.terms)


def test_check_names_the_field_term_and_a_person_first_suggestion(
        guide: d.LanguageGuide) -> None:
    [warning] = guide.check("text", "He has been NON-COMPLIANT with curfew.")
    assert (warning.field, warning.term) == ("text", "non-compliant")
    assert "requirement" in warning.suggestion
    assert "non-compliant" in warning.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Addicts need support", ["addict"]),
        ("addiction services referral", []),
        ("an offender", ["offender"]),
        ("an ex-offender program", ["ex-offender"]),  # the longer term only
        ("an ex-offender, once an addict", ["ex-offender", "addict"]),
        ("non compliant again", ["non-compliant"]),
        ("she failed   to attend", ["failed to"]),
        ("Jo fails to report and keeps failing to call", ["fails to", "failing to"]),
        ("they fail to see it", ["fail to"]),
        ("Jo was non\u2013compliant, then non\u2014compliant", ["non-compliant"]),  # dashes
        ("i know how that feels", ["I know"]),
        ("Told Jo I understand how you feel", ["I understand how you feel"]),
        ("I understand the deadline", []),
        ("I knowingly chose this", []),
        ("unmanipulative", []),
        ("Convicted in 2019", []),
        ("junkies and criminals", ["junkie", "criminal"]),
        ("Seemed resistant; in denial about the debt", ["resistant", "in denial"]),
        ("Cooked dinner for the family", []),
        ("Sam refuses to engage and is addicted to drugs; a drug abuser",
         ["refuses", "addicted", "drug abuser"]),
    ],
)
def test_matching_is_on_word_boundaries(guide: d.LanguageGuide, text: str,
                                        expected: list[str]) -> None:
    assert terms(guide.check("text", text)) == expected


def test_each_term_is_reported_once_per_field(guide: d.LanguageGuide) -> None:
    assert terms(guide.check("text", "addict, addict, addicts")) == ["addict"]
    assert terms(guide.check("text", "addict, addict and an offender")) == ["addict",
                                                                            "offender"]


def test_an_agency_extends_replaces_and_removes_terms(guide: d.LanguageGuide) -> None:
    agency = guide.merge({
        "terms": [
            {"term": "client", "suggestion": "participant"},
            {"term": "offender", "suggestion": "person under supervision (agency wording)"},
        ],
        "remove": ["Refused"],
    })
    assert terms(agency.check("text", "The client refused")) == ["client"]
    [warning] = agency.check("text", "offender")
    assert warning.suggestion == "person under supervision (agency wording)"
    # the base guide is unchanged
    assert terms(guide.check("text", "The client refused")) == ["refused"]
    assert guide.check("text", "offender")[0].suggestion != warning.suggestion
    assert len(agency.terms) == len(guide.terms)  # +1 client, -1 refused, offender replaced


def test_an_agency_term_is_reported_with_the_agency_message(guide: d.LanguageGuide) -> None:
    agency = guide.merge({"terms": [{"term": "client", "suggestion": "participant",
                                     "message": "We say participant: they take part."}]})
    [warning] = agency.check("text", "The client called")
    assert (warning.suggestion, warning.message) == ("participant",
                                                     "We say participant: they take part.")


def test_an_agency_file_without_a_remove_list_only_adds_terms(guide: d.LanguageGuide) -> None:
    agency = guide.merge({"terms": [{"term": "client", "suggestion": "participant"}]})
    assert len(agency.terms) == len(guide.terms) + 1
    assert terms(agency.check("text", "The client refused")) == ["client", "refused"]


@pytest.mark.parametrize(("length", "accepted"), [(MAX_TERM, True), (MAX_TERM + 1, False)])
def test_a_guide_term_is_at_most_100_characters(guide: d.LanguageGuide, length: int,
                                                accepted: bool) -> None:
    extension = {"terms": [{"term": "x" * length, "suggestion": "y"}]}
    if accepted:
        assert len(guide.merge(extension).terms) == len(guide.terms) + 1
    else:
        with pytest.raises(ValueError, match="at most 100 characters"):
            guide.merge(extension)


def test_a_longer_agency_term_is_reported_instead_of_the_base_term_it_extends(
        guide: d.LanguageGuide) -> None:
    agency = guide.merge({"terms": [{"term": "failed to attend", "suggestion": "did not come"}]})
    assert terms(agency.check("text", "Jo failed to attend group")) == ["failed to attend"]
    assert terms(agency.check("text", "Jo failed to call")) == ["failed to"]


def test_guides_merge_with_guides_too(guide: d.LanguageGuide) -> None:
    extra = d.LanguageGuide.from_data({"terms": [{"term": "frequent flyer",
                                                  "suggestion": "person we see often"}]})
    assert terms(guide.merge(extra).check("f", "a frequent flyer")) == ["frequent flyer"]


# Agency terms that overlap each other and themselves, share prefixes with the base guide's,
# or fold case unusually; and the pieces texts are made of, with Unicode spaces and hyphens.
TRICKY_TERMS = ("no no", "failed to attend", "ex", "I", "in", "at-risk", "frequent  flyer",
                "\u0130stanbul", "\u017ftra\u00dfe", "K")
FRAGMENTS = ("addict", "Addicts", "ADDICTION", "es", "s", " ", "  ", "\n", "\u00a0", "-",
             "\u2010", "\u2011", "non", "compliant", "compliance", "ex", "offender", "no",
             "I", "know", "ing", "in", "denial", "failed", "to", "attend", "at", "risk",
             "frequent", "flyer", ",", ".", "'", "\u00e9", "\u212a", "\u017f", "k", "x",
             "\u0130", "istanbul", "strasse", "refused", "FAILED", "junkie", "_")


def reference_terms(guide: d.LanguageGuide, text: str) -> list[str]:
    """The check as first written: every term's pattern over the whole text; where matches
    overlap the earliest wins, then the longest (then the earlier term); each term once."""
    found = [(m.start(), m.end(), t.term) for t in guide.terms for m in t.pattern.finditer(text)]
    found.sort(key=lambda m: (m[0], m[0] - m[1]))
    out: list[str] = []
    end = -1
    for start, stop, term in found:
        if start < end:
            continue
        end = stop
        if term not in out:
            out.append(term)
    return out


def test_the_check_finds_what_the_term_patterns_find_one_by_one(
        guide: d.LanguageGuide) -> None:
    tricky = guide.merge({"terms": [{"term": t, "suggestion": "reworded"} for t in TRICKY_TERMS],
                          "remove": ["offender"]})
    rng = random.Random(3)
    texts = ["".join(rng.choices(FRAGMENTS, k=rng.randrange(16))) for _ in range(4000)]
    with_warnings = 0
    for text in texts:
        for checked in (guide, tricky):
            expected = reference_terms(checked, text)
            assert terms(checked.check("f", text)) == expected, text
            with_warnings += bool(expected)
    assert 1000 < with_warnings < 7000  # both kinds of text were checked
    assert d.LanguageGuide().check("f", "addict") == []


@pytest.mark.parametrize(
    "bad",
    [
        {"terms": "addict"},
        {"terms": [{"term": "", "suggestion": "x"}]},
        {"terms": [{"term": "x"}]},
        {"terms": [{"term": "x", "suggestion": "y", "severity": "high"}]},
        {"terms": [], "remove": "addict"},
    ],
)
def test_malformed_guide_files_are_refused_clearly(guide: d.LanguageGuide,
                                                   bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="language guide"):
        guide.merge(bad)


def test_a_guide_that_is_not_an_object_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="language guide: expected a JSON object"):
        d.LanguageGuide.from_data(["addict"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# warnings from recorded events
# --------------------------------------------------------------------------------------------


def test_every_event_type_declares_which_fields_are_checked() -> None:
    assert set(d.CHECKED_FIELDS) == set(ev.EVENT_TYPES)
    for event_type, fields in d.CHECKED_FIELDS.items():
        model_fields = ev.EVENT_TYPES[event_type].model_fields
        for field in fields:
            assert field in model_fields, f"{event_type}.{field}"


# what staff write in their own words; the participant's own words (in_their_words, the
# statement on agreeing) are theirs and never checked
STAFF_TEXT = {"reason", "description", "title", "why_it_matters", "override_reason", "note",
              "summary", "text", "relationship", "contact"}
# copies, for subscribers, of text checked when it was first written
SNAPSHOTS = {("ActionStepCompleted", "description"), ("GoalStatusChanged", "title")}


@pytest.mark.parametrize("event_type", sorted(ev.EVENT_TYPES))
def test_every_field_of_staff_text_is_checked(event_type: str, guide: d.LanguageGuide) -> None:
    fields = {f for f in set(ev.EVENT_TYPES[event_type].model_fields) & STAFF_TEXT
              if (event_type, f) not in SNAPSHOTS}
    assert set(d.CHECKED_FIELDS[event_type]) == fields
    event = ev.EVENT_TYPES[event_type].model_construct(
        **dict.fromkeys(fields, "the offender was non-compliant"))
    assert {w.field for w in d.warnings_for([event], guide)} == fields


def test_warnings_come_from_the_staff_text_of_recorded_events(guide: d.LanguageGuide) -> None:
    case = d.InMemoryCase(uuid4(), d.DecisionContext(today=date(2025, 6, 1)),
                          datetime(2025, 6, 1, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Kim"}, "case_manager": "cm", "risk_level": "low"})))
    events = case.execute(d.SetGoal(uuid4(), api.GoalInput(
        title="Stop being an addict", domain="substance_use", source="participant",
        in_their_words="I'm an addict and I want my kids back",
        why_it_matters="Kim failed to keep custody")))
    warnings = d.warnings_for(events, guide)
    assert [(w.field, w.term) for w in warnings] == [("title", "addict"),
                                                     ("why_it_matters", "failed to")]
    # the participant's own words are recorded verbatim and never flagged
    assert all(w.field != "in_their_words" for w in warnings)


def test_warnings_can_be_rebuilt_from_stored_events(guide: d.LanguageGuide) -> None:
    note = ev.NoteAdded(note_id=uuid4(), text="Manipulative and non-compliant")
    stored = ev.dump_event(note)
    rebuilt = ev.parse_event("NoteAdded", 1, stored)
    assert d.warnings_for([note], guide) == d.warnings_for([rebuilt], guide)
    assert terms(d.warnings_for([rebuilt], guide)) == ["manipulative", "non-compliant"]


def test_a_revision_that_gives_only_a_reason_has_its_reason_checked(
        guide: d.LanguageGuide) -> None:
    revised = ev.StrengthRevised(strength_id=uuid4(), in_their_words="my own way",
                                 reason="He is manipulative about it")
    assert [(w.field, w.term) for w in d.warnings_for([revised], guide)] == [
        ("reason", "manipulative")]


def test_warnings_name_each_field_and_term_once_over_the_events(
        guide: d.LanguageGuide) -> None:
    notes = [ev.NoteAdded(note_id=uuid4(), text=text)
             for text in ("Seemed resistant", "Still resistant", "An addict")]
    assert [(w.field, w.term) for w in d.warnings_for(notes, guide)] == [
        ("text", "resistant"), ("text", "addict")]


def test_participant_statements_are_not_checked(guide: d.LanguageGuide) -> None:
    agreed = ev.PlanAgreed(participation="in_person",
                           participant_statement="I know I was resistant before")
    held = ev.ReviewHeld(review_id=uuid4(), held_on=date(2025, 1, 1), due_date=date(2025, 1, 1),
                         participant_statement="I know", summary="Seemed resistant")
    assert [(w.field, w.term) for w in d.warnings_for([agreed, held], guide)] == [
        ("summary", "resistant")]


@pytest.mark.parametrize(("text", "flagged"), [
    # an inch mark is no quotation: the writer's words after it are read
    ('Jo is 5\'10" and resistant; she said "ok"', ["resistant"]),
    ('6" taller and "resistant" he said; manipulative', ["manipulative"]),
    # what a quote leaves out joins no words into a term
    ('frequent "x" flyer', []),
    ("Goes to Alcoholics Anonymous, and that frequent flyer joke", ["frequent flyer"]),
    ('Jo said "I know I can", and I know it too', ["I know"]),
], ids=["inch-mark", "inch-mark-then-quote", "quote-between-words", "phrase-not-flagged",
        "quoted-then-own"])
def test_only_what_the_writer_quotes_is_left_out(guide: d.LanguageGuide, text: str,
                                                 flagged: list[str]) -> None:
    """A review's cases: a straight quote pairs only around words, within a line, and what
    a quote or a phrase not flagged leaves in the text is no word and no joiner."""
    assert [w.term for w in guide.check("text", text)] == flagged
