"""Rule 7, an audit of the language guide (twenty-seventh session): quoted labels, missing
terms and phrases that label no one. Pure domain: the packaged guide and recorded events.

design.md rule 7: free text is checked against a guide of "deficit or dehumanising terms" and
answered with person-first suggestions; the write always succeeds. Quotes are left out so that
staff can quote the participant's own words, but a whole note in quotes, or a label in scare
quotes, is the writer's own wording and is read like the rest.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from uuid import uuid4

import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d


@pytest.fixture(scope="module")
def guide() -> d.LanguageGuide:
    return d.load_base_guide()


def terms(guide: d.LanguageGuide, text: str) -> list[str]:
    return [w.term for w in guide.check("text", text)]


def noted(text: str) -> list[tuple[str, str]]:
    """(field, term) of the warnings a note written through the domain answers."""
    case = d.InMemoryCase(uuid4(), d.DecisionContext(today=date(2025, 6, 1)),
                          datetime(2025, 6, 1, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Jo"}, "case_manager": "cm", "risk_level": "low"})))
    events = case.execute(d.AddNote(uuid4(), api.NoteInput(text=text)))
    return [(w.field, w.term) for w in d.warnings_for(events, d.load_base_guide())]


# --------------------------------------------------------------------------------------------
# gap 1: quotes that wrap the writer's own words are read
# --------------------------------------------------------------------------------------------

WRITERS_WORDS_IN_QUOTES = [
    ("whole-note-straight", '"Jo is a manipulative addict who is non-compliant..."',
     ["manipulative", "addict", "non-compliant"]),
    ("whole-note-curly", "\u201cJo is an offender.\u201d", ["offender"]),
    ("whole-note-spaced-and-punctuated", "  \u2014 \u201cJo is an offender\u201d.  \n",
     ["offender"]),
    ("whole-note-in-two-quotes", "\u201cJo is an offender.\u201d \u201cAnd an addict.\u201d",
     ["offender", "addict"]),
    ("whole-note-low-high-quotes", "\u201eJo is an offender.\u201c", ["offender"]),
    ("whole-note-guillemets", "\u00abJo is an offender.\u00bb", ["offender"]),
    ("scare-quoted-labels", "Jo is an \u201coffender\u201d and \u201caddict\u201d",
     ["offender", "addict"]),
    ("scare-quoted-straight", 'Seemed "resistant" today, and "lazy".', ["resistant", "lazy"]),
    ("scare-quoted-two-words", "Jo is \u201cin denial\u201d about the debt", ["in denial"]),
    ("scare-quoted-three-words", "Jo is a \u201crepeat ex-offender, sadly\u201d now",
     ["ex-offender"]),
    ("scare-quoted-other-marks", "Jo was \u201enon-compliant\u201c and \u00ablazy\u00bb",
     ["non-compliant", "lazy"]),
    # a speech word in another sentence attributes nothing here
    ("speech-in-another-sentence", "Jo said she would come; she is an \u201caddict\u201d",
     ["addict"]),
    ("speech-in-an-earlier-sentence", "Jo told me about work. Still an \u201caddict\u201d.",
     ["addict"]),
    ("speech-too-far-after", "An \u201caddict\u201d in the eyes of everyone who said hello",
     ["addict"]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in WRITERS_WORDS_IN_QUOTES],
                         ids=[c[0] for c in WRITERS_WORDS_IN_QUOTES])
def test_quotes_around_the_writers_own_words_do_not_hide_them(
        guide: d.LanguageGuide, text: str, expected: list[str]) -> None:
    assert terms(guide, text) == expected


def test_a_note_wholly_in_quotes_is_answered_with_warnings_through_the_domain() -> None:
    assert noted('"Jo is a manipulative addict who is non-compliant..."') == [
        ("text", "manipulative"), ("text", "addict"), ("text", "non-compliant")]
    assert noted("Jo is an \u201coffender\u201d and \u201caddict\u201d") == [
        ("text", "offender"), ("text", "addict")]


REAL_QUOTATIONS = [
    ("said-colon", "Jo said: \u201cI was an addict, and I am proud of my recovery\u201d"),
    ("long-quote-attributed-after",
     "\u201cI was an offender for years and I know I can change that now,\u201d Jo told me."),
    ("long-quote-unattributed",
     "Group went well. \u201cI was an addict and now I run the Tuesday group\u201d"),
    ("short-quote-said-before", "Jo said she was an \u201caddict\u201d once"),
    ("short-quote-said-just-after", "\u201cAddict,\u201d Jo\u2019s mother said."),
    ("short-quote-straight-he-said", '"Resistant" he said; not the word I would use'),
    ("calls-herself", "Jo calls herself an \u201caddict in recovery\u201d"),
    ("called-by-another", "Coach Lee called Jo a \u201cfelon\u201d at the game"),
    ("colon-just-before", "Jo\u2019s word for it: \u201cjunkie\u201d"),
    ("in-her-words", "In her words, an \u201caddict\u201d who is doing the work"),
    ("her-words-after", "Jo is an \u201caddict\u201d (her words) and proud of 90 days"),
    ("the-word-named", "Jo dislikes the word \u201coffender\u201d; we use participant"),
    ("told-with-curly-apostrophe", "Jo told me she\u2019s \u201cdone being a junkie\u201d"),
]


@pytest.mark.parametrize("text", [c[1] for c in REAL_QUOTATIONS],
                         ids=[c[0] for c in REAL_QUOTATIONS])
def test_what_someone_said_stays_theirs_and_is_not_flagged(guide: d.LanguageGuide,
                                                           text: str) -> None:
    assert terms(guide, text) == []


def test_a_real_quotation_leaves_the_writers_words_around_it_checked(
        guide: d.LanguageGuide) -> None:
    text = "Jo said: \u201cI was an addict, and I am proud of my recovery\u201d; manipulative"
    assert terms(guide, text) == ["manipulative"]
    assert noted("Jo said: \u201cI was an addict, and I am proud of my recovery\u201d") == []


def test_a_label_is_a_quote_of_at_most_three_words(guide: d.LanguageGuide) -> None:
    """Past three words a quote reads as a quotation, attributed or not."""
    assert terms(guide, "Jo is a \u201cpretty lazy offender\u201d") == ["lazy", "offender"]
    assert terms(guide, "Jo is a \u201cpretty lazy offender today\u201d") == []
    # a hyphenated or apostrophised word counts once
    assert terms(guide, "Jo is the \u201cgroup\u2019s lazy ex-offender\u201d") == [
        "lazy", "ex-offender"]


def test_a_quote_read_as_the_writers_still_joins_no_words_into_a_term(
        guide: d.LanguageGuide) -> None:
    assert terms(guide, 'a frequent "x" flyer') == []
    assert terms(guide, "Goes to \u201cAlcoholics Anonymous\u201d on Tuesdays") == []


# --------------------------------------------------------------------------------------------
# gap 2: terms the guide was missing
# --------------------------------------------------------------------------------------------

MISSING_TERMS = [
    ("Jo has a history of alcohol abuse", "alcohol abuse"),
    ("Jo is an alcohol-abuser", "alcohol abuser"),
    ("Two alcohol abusers in the group", "alcohol abuser"),
    ("Warrant for failure to appear", "failure to appear"),
    ("Jo manipulates staff", "manipulates"),
    ("Jo was manipulating the group", "manipulating"),
    ("Jo tries to manipulate the schedule", "manipulate"),
    ("Her partner is an abuser", "abuser"),
    ("Jo is mentally ill", "mentally ill"),
    ("Jo is a schizophrenic", "schizophrenic"),
    ("Known as a druggie on the block", "druggie"),
    ("Known as a crackhead at the shelter", "crackhead"),
    ("A crack head, the neighbour says", "crack-head"),
    ("Another dirty UA this week", "dirty UA"),
    ("Two dirty UAs", "dirty UA"),
    ("Dirty urine on Monday", "dirty urine"),
]


@pytest.mark.parametrize(("text", "term"), MISSING_TERMS,
                         ids=[term + "-" + str(i) for i, (_, term) in enumerate(MISSING_TERMS)])
def test_each_missing_term_is_flagged_with_a_person_first_suggestion(
        guide: d.LanguageGuide, text: str, term: str) -> None:
    [warning] = guide.check("text", text)
    assert warning.term == term
    assert warning.suggestion.strip()
    assert warning.message.strip()
    assert term.casefold() not in warning.suggestion.casefold()
    assert guide.check("suggestion", warning.suggestion) == []


def test_the_longer_abuse_terms_win_over_abuser(guide: d.LanguageGuide) -> None:
    assert terms(guide, "a drug abuser, a substance-abuser and an alcohol abuser") == [
        "drug abuser", "substance abuser", "alcohol abuser"]


def test_a_dirty_test_result_is_answered_with_what_the_test_showed(
        guide: d.LanguageGuide) -> None:
    [warning] = guide.check("text", "dirty UA")
    assert "positive test" in warning.suggestion
    assert "positive test" in warning.message


@pytest.mark.parametrize("text", ["I understand the deadline", "Jo was drunk at the party",
                                  "The car had defects", "Jo was manipulated by her ex",
                                  "Survivor of abuse; safety plan made"],
                         ids=["i-understand", "drunk", "defects", "manipulated-by",
                              "abuse-survived"])
def test_words_left_out_of_the_guide_for_their_false_positives_stay_out(
        guide: d.LanguageGuide, text: str) -> None:
    assert terms(guide, text) == []


# --------------------------------------------------------------------------------------------
# gap 3: phrases holding a term that label no one
# --------------------------------------------------------------------------------------------

LABELS_NO_ONE = [
    ("criminal-conviction", "Jo is a person with a criminal conviction"),
    ("criminal-convictions", "Two criminal convictions, both from 2015"),
    ("criminal-court", "Attend Criminal Court hearing on the 4th"),
    ("criminal-justice", "Referred by the criminal-justice liaison"),
    ("alcoholic-beverages", "No alcoholic beverages at the shelter"),
    ("alcoholic-drink", "Chose a soft drink over an alcoholic drink"),
    ("samhsa", "Found a clinic on the Substance Abuse and Mental Health Services"
               " Administration locator"),
    ("treatment-resistant", "Managing treatment-resistant depression with a new plan"),
]


@pytest.mark.parametrize("text", [c[1] for c in LABELS_NO_ONE], ids=[c[0] for c in LABELS_NO_ONE])
def test_phrases_that_label_no_one_are_not_flagged(guide: d.LanguageGuide, text: str) -> None:
    assert terms(guide, text) == []
    assert noted(text) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("Jo is a criminal", ["criminal"]),
    # a record is what the guide's suggestion names ("legal history (for a record)")
    ("The criminal record check is done", ["criminal"]),
    ("Jo, an alcoholic, came to group", ["alcoholic"]),
    ("Jo is resistant to treatment", ["resistant"]),
    ("Substance abuse classes on Monday", ["substance abuse"]),
    ("Alcoholic beverage seller, and an alcoholic", ["alcoholic"]),
], ids=["criminal-person", "criminal-record", "alcoholic-person", "resistant-person",
        "substance-abuse", "phrase-then-label"])
def test_the_same_words_labelling_a_person_are_still_flagged(
        guide: d.LanguageGuide, text: str, expected: list[str]) -> None:
    assert terms(guide, text) == expected


def test_an_agency_phrase_not_flagged_covers_its_plural_too(guide: d.LanguageGuide) -> None:
    agency = guide.merge({"not_flagged": ["offender management unit"]})
    assert terms(agency, "Called the offender management units") == []
    assert terms(guide, "Called the offender management units") == ["offender"]


def test_warnings_rebuilt_from_stored_events_match_the_new_rules(
        guide: d.LanguageGuide) -> None:
    note = ev.NoteAdded(note_id=uuid4(), text="Jo is a \u201cdruggie\u201d. No alcoholic drinks")
    rebuilt = ev.parse_event("NoteAdded", 1, ev.dump_event(note))
    assert [w.term for w in d.warnings_for([rebuilt], guide)] == ["druggie"]
    assert d.warnings_for([rebuilt], guide) == d.warnings_for([note], guide)
