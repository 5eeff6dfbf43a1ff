"""Rule 7, strengths-based documentation: the language guide is data, checking it is pure.

The guide lists deficit or dehumanising terms with person-first suggestions. Matching is
case-insensitive on word boundaries, a space or a hyphen in a term matches any run of
whitespace, hyphens and dashes (people write "substance-abuse" as often as "substance abuse"),
and a plural ``s``/``es`` is accepted ("addicts"). Where terms overlap ("ex-offender" and
"offender") only the longest match is reported.

A write always succeeds; its answer carries the warnings. They are computed from the recorded
events (:func:`warnings_for`), so an idempotent replay rebuilds exactly the same warnings.

The participant's own words (``in_their_words``, ``participant_statement``) are recorded
verbatim and are not checked: the guide is for how staff document, not for correcting how a
person speaks about their own life. Nor are words a writer quotes (in double quotes, "…",
“…”, „…“ or «…»), which are most often the participant's, except where the quotes only wrap
the writer's own words: a text that is all quotes, and a scare-quoted label (a quote of a few
words that nothing in its sentence attributes to a speaker: Jo is an “offender”). Phrases that
hold a term but say nothing of a person ("Alcoholics Anonymous", "water-resistant") are listed
as ``not_flagged``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from schemas.api import LanguageWarning
from schemas.events import EventPayload

MAX_TERM = 100
MAX_SUGGESTION = 500

# Free-text fields written by staff, per event type. Every event type is listed (a test checks
# it) so that a new event cannot silently skip the guide.
CHECKED_FIELDS: dict[str, tuple[str, ...]] = {
    "CaseOpened": (),
    "ParticipantDetailsUpdated": ("reason",),
    "CaseTransferred": ("reason",),
    "StrengthRecorded": ("description",),
    "StrengthRevised": ("description", "reason"),
    "StrengthRemoved": ("reason",),
    "GoalSet": ("title", "why_it_matters", "override_reason"),
    "GoalRevised": ("title", "why_it_matters", "reason"),
    "GoalStatusChanged": ("reason", "override_reason"),
    "ActionStepAdded": ("description",),
    "ActionStepRevised": ("description", "reason"),
    "ActionStepStatusChanged": ("reason",),
    "ActionStepCompleted": ("note", "reason"),
    "SupportAdded": ("relationship", "contact", "description"),
    "SupportRemoved": ("reason",),
    "RequirementRecorded": ("title", "description"),
    "RequirementStatusChanged": ("reason",),
    "PlanAgreed": (),
    "ReviewScheduled": ("reason",),
    "ReviewHeld": ("summary",),
    "NoteAdded": ("text",),
    "CaseClosed": ("reason",),
    "CaseReopened": ("reason",),
}


# hyphens, dashes, minus and white space: what joins the words of a term, however written
_JOINER = r"[-\u2010-\u2015\u2212\s]+"
# an apostrophe however written: phones and word processors curl it
_APOSTROPHES = "'\u2019\u02bc"
# invisible characters a pasted text may carry inside a word (a soft hyphen from a hyphenated
# report, a zero-width space): "offen\u00adder" reads as "offender" on every screen
_INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
# what a writer quotes: most often the participant's own words, left as they are (save the
# writer's own words in quotes, below). A straight quote opens only before a word and closes
# only after one, within a line: an inch mark (5'10") must not pair with the next quote and
# hide the writer's words between them
_QUOTED = re.compile(r'(?<!\w)"(?=\w)[^"\n]{0,300}(?<=\S)"(?!\w)'
                     r"|\u201c[^\u201d]*\u201d|\u201e[^\u201c\u201d]*[\u201c\u201d]"
                     r"|\u00ab[^\u00bb]*\u00bb")
# what a quote or a phrase not flagged leaves in the text: no word, and no joiner either, so
# the words around it cannot make a term together ('frequent "x" flyer')
_GAP = "\ufffc"

# Quotes are left out so that staff can quote the participant's own words ("Jo said: “I was an
# addict, and I am proud of my recovery”"). Quote marks also serve to wrap the writer's own
# words, and those are read like any other:
# - a text that is all quotes (no word outside them, whatever the punctuation): nothing in it
#   says whose words they are, and a whole note in quotes ('"Jo is an addict."') is the
#   writer's note all the same;
# - a scare-quoted label: a quote of at most _LABEL_WORDS words that is not attributed, as no
#   speech word ("said", "told", "calls", "in her words"…) comes before it in its sentence or
#   just after it (within _LABEL_WORDS words: '"resistant," he said'), and no colon just
#   before it. Quotes around a label (Jo is an “offender”) distance the writer from the word,
#   yet the participant, the court and the next worker read the label as the writer's. A word
#   named as a word ("Jo dislikes the word “addict”") is talked about, not used: also exempt.
# A short quote with no term in it gives no warning when read, so only labels are affected; a
# longer quote stays exempt, attributed or not, as it is most often what someone said.
_LABEL_WORDS = 3
_QUOTE_WORD = re.compile(r"\w+(?:[-\u2010-\u2015" + _APOSTROPHES + r"]\w+)*")
_SPEECH = re.compile(
    r"(?<!\w)(?:say|says|said|saying|told|tells|asked|asks|call|calls|called|calling|stated"
    r"|wrote|writes|replied|explained|described|describes|according\s+to"
    r"|(?:their|her|his|my|our|your|own)\s+words|(?:the|this|that)\s+(?:word|term|label))"
    r"(?!\w)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;\n\u2026]")


def _atoms(term: str) -> list[str]:
    """The term as regex fragments, one per character (a run of spaces and hyphens is one)."""
    atoms: list[str] = []
    for index, piece in enumerate(re.split(r"([\s-]+)", term.strip())):
        if index % 2:  # a captured run of spaces and hyphens
            atoms.append(_JOINER)
        else:
            atoms.extend(f"[{_APOSTROPHES}]" if char in _APOSTROPHES else re.escape(char)
                         for char in piece)
    return atoms


def _staff_text(text: str) -> str:
    """What of ``text`` the guide reads: the writer's own words, as a screen shows them."""
    text = _INVISIBLE.sub("", text)
    # the text with every quote blanked out (same length, no word, no sentence end): where
    # the words around a quote are looked for
    outside = _QUOTED.sub(lambda quote: _GAP * len(quote.group()), text)
    if outside == text or not re.search(r"\w", outside):  # no quote, or nothing but quotes
        return text
    return _QUOTED.sub(lambda quote: quote.group() if _is_label(quote, outside) else _GAP,
                       text)


def _is_label(quote: re.Match[str], outside: str) -> bool:
    """Whether a quote is a scare-quoted label: a few words, attributed to no one."""
    if len(_QUOTE_WORD.findall(quote.group(), 1, len(quote.group()) - 1)) > _LABEL_WORDS:
        return False
    before = _SENTENCE_END.split(outside[:quote.start()])[-1]
    after = _SENTENCE_END.split(outside[quote.end():], maxsplit=1)[0]
    just_after = " ".join(_QUOTE_WORD.findall(after)[:_LABEL_WORDS])
    return not (before.rstrip().endswith(":") or _SPEECH.search(before)
                or _SPEECH.search(just_after))


def _compile(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + "".join(_atoms(term)) + r"(?:s|es)?(?!\w)", re.IGNORECASE)


_Trie = dict[str, "_Trie"]
_END = ""  # key marking where a term ends: the rest of its branch is not needed


def _trie_source(trie: _Trie) -> str:
    if _END in trie:
        return ""
    branches = [atom + _trie_source(child) for atom, child in trie.items()]
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def _prefilter(terms: Iterable[str]) -> re.Pattern[str] | None:
    """One regex that finds where any term could start: the terms without their word
    boundaries and plural endings, merged on shared prefixes so that the engine tries one
    branch per first character instead of every term at every position. Every match of a term
    starts with a match of this, so a text it does not match has no warnings."""
    trie: _Trie = {}
    for term in terms:
        node = trie
        for atom in _atoms(term):
            if _END in node:  # a prefix of this term is already enough
                break
            node = node.setdefault(atom, {})
        else:
            node.clear()
            node[_END] = {}
    return re.compile(_trie_source(trie), re.IGNORECASE) if trie else None


@dataclass(frozen=True, slots=True)
class GuideTerm:
    term: str
    suggestion: str
    message: str
    # derived from the term, never given: the guide's prefilter is built from the same atoms
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.term))

    @classmethod
    def create(cls, term: str, suggestion: str, message: str | None = None) -> GuideTerm:
        return cls(
            term=term,
            suggestion=suggestion,
            message=message or (f'"{term}" can label a person by a deficit; consider '
                                f"person-first, strengths-based wording: {suggestion}."),
        )


def _optional_text(entry: Mapping[str, Any], key: str, limit: int, where: str) -> str | None:
    return None if entry.get(key) is None else _text(entry, key, limit, where)


def _text(entry: Mapping[str, Any], key: str, limit: int, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"{where}: '{key}' must be a non-empty string of at most {limit} "
                         "characters")
    return value.strip()


def _parse_not_flagged(data: Mapping[str, Any]) -> list[str]:
    """Phrases holding a term that say nothing of a person ("Alcoholics Anonymous",
    "water-resistant"): the text they cover is not read for terms."""
    raw = data.get("not_flagged", [])
    if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip()
                                           and len(p) <= MAX_TERM for p in raw):
        raise ValueError(f"language guide: 'not_flagged' must be a list of phrases of at most"
                         f" {MAX_TERM} characters")
    return [p.strip() for p in raw]


def _masking(phrases: Iterable[str]) -> re.Pattern[str] | None:
    by_length = sorted(phrases, key=len, reverse=True)  # the longest phrase covers most
    if not by_length:
        return None
    alternatives = "|".join("".join(_atoms(phrase)) for phrase in by_length)
    # a plural is accepted as it is for terms ("alcoholic beverages")
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?:s|es)?(?!\w)", re.IGNORECASE)


def _parse_terms(data: Mapping[str, Any]) -> list[GuideTerm]:
    raw = data.get("terms", [])
    if not isinstance(raw, list):
        raise ValueError("language guide: 'terms' must be a list")
    out: list[GuideTerm] = []
    for index, entry in enumerate(raw):
        where = f"language guide terms[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: each term is an object")
        unknown = set(entry) - {"term", "suggestion", "message"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        term = _text(entry, "term", MAX_TERM, where)
        suggestion = _text(entry, "suggestion", MAX_SUGGESTION, where)
        message = _optional_text(entry, "message", MAX_SUGGESTION, where)
        out.append(GuideTerm.create(term, suggestion, message))
    return out


class LanguageGuide:
    """An immutable set of guide terms, and the phrases holding one that are not read for
    them; ``merge`` returns a new, extended guide."""

    __slots__ = ("_masking", "_not_flagged", "_prefilter", "_terms")

    def __init__(self, terms: Iterable[GuideTerm] = (), not_flagged: Iterable[str] = ()) -> None:
        by_key: dict[str, GuideTerm] = {}
        for term in terms:
            by_key[term.term.casefold()] = term
        self._terms: tuple[GuideTerm, ...] = tuple(by_key.values())
        self._prefilter = _prefilter(term.term for term in self._terms)
        phrases = {phrase.casefold(): phrase for phrase in not_flagged}
        self._not_flagged: tuple[str, ...] = tuple(phrases.values())
        self._masking = _masking(self._not_flagged)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> LanguageGuide:
        """A guide from its JSON shape ``{"terms": [{"term", "suggestion", "message"?}],
        "not_flagged"?: [phrase]}``."""
        if not isinstance(data, Mapping):
            raise ValueError("language guide: expected a JSON object")
        return cls(_parse_terms(data), _parse_not_flagged(data))

    @property
    def terms(self) -> tuple[GuideTerm, ...]:
        return self._terms

    @property
    def not_flagged(self) -> tuple[str, ...]:
        return self._not_flagged

    def merge(self, extension: Mapping[str, Any] | LanguageGuide) -> LanguageGuide:
        """This guide extended by an agency's: its terms are added (a term already present is
        replaced by the agency's wording), the terms in its ``remove`` list are dropped, and
        its ``not_flagged`` phrases join this guide's."""
        if isinstance(extension, LanguageGuide):
            added, removed = list(extension.terms), set[str]()
            not_flagged = list(extension.not_flagged)
        else:
            if not isinstance(extension, Mapping):
                raise ValueError("language guide extension: expected a JSON object")
            added = _parse_terms(extension)
            not_flagged = _parse_not_flagged(extension)
            remove = extension.get("remove", [])
            if not isinstance(remove, list) or not all(isinstance(t, str) for t in remove):
                raise ValueError("language guide extension: 'remove' must be a list of terms")
            removed = {t.strip().casefold() for t in remove}
        replacements = {t.term.casefold(): t for t in added}
        merged = [replacements.pop(t.term.casefold(), t) for t in self._terms
                  if t.term.casefold() not in removed]
        merged.extend(replacements.values())
        return LanguageGuide(merged, [*self._not_flagged, *not_flagged])

    def check(self, field: str, text: str) -> list[LanguageWarning]:
        """Warnings for the guide terms found in ``text`` (one per term, in text order): in
        the writer's own words (``_staff_text``), outside the phrases not flagged."""
        if self._prefilter is None:
            return []
        text = _staff_text(text)
        first = self._prefilter.search(text)
        if first is not None and self._masking is not None:
            text = self._masking.sub(_GAP, text)
            first = self._prefilter.search(text)
        if first is None:
            return []
        # no term matches before the first candidate; the patterns still see the text before it
        start = first.start()
        matches: list[tuple[int, int, GuideTerm]] = []
        for term in self._terms:
            for found in term.pattern.finditer(text, start):
                matches.append((found.start(), found.end(), term))
        if not matches:
            return []
        matches.sort(key=lambda m: (m[0], m[0] - m[1]))
        warnings: list[LanguageWarning] = []
        seen: set[str] = set()
        end = -1
        for start, stop, term in matches:
            if start < end:  # inside a longer, earlier match
                continue
            end = stop
            if term.term in seen:
                continue
            seen.add(term.term)
            warnings.append(LanguageWarning(field=field, term=term.term,
                                            suggestion=term.suggestion, message=term.message))
        return warnings


def warnings_for(events: Iterable[EventPayload], guide: LanguageGuide) -> list[LanguageWarning]:
    """The language warnings for the free text of recorded events (deduplicated per field and
    term), so a replayed write answers with the same warnings as the original."""
    out: list[LanguageWarning] = []
    seen: set[tuple[str, str]] = set()
    for event in events:
        for name in CHECKED_FIELDS.get(event.event_type, ()):
            value = getattr(event, name, None)
            if not isinstance(value, str):
                continue
            for warning in guide.check(name, value):
                key = (warning.field, warning.term)
                if key not in seen:
                    seen.add(key)
                    out.append(warning)
    return out


@functools.cache  # immutable, from a file that does not change while the service runs
def load_base_guide() -> LanguageGuide:
    """The guide packaged with the service (services/records/domain/language_guide.json)."""
    source = resources.files("services.records.domain").joinpath("language_guide.json")
    text = source.read_text("utf-8")
    return LanguageGuide.from_data(json.loads(text))
