"""Text in words (rules 2 and 5; docs/decisions/0101-plan-domain.md).

Every free text a request body gives, names included, holds a letter or a digit, in any script:
"." or "-" filled a required field and said nothing, and a goal titled
"." was shown to the participant, mailed and exported to a court. Only what a body gives is
judged: a field left out, or cleared with null, gives nothing; a revision sending back a text
the item already holds (recorded before the rule) gives nothing new; and text copied from events
recorded before (a step's description in its completion) is not judged again.

A reason (rule 5) says more: it is how the record answers "why?" to the participant,
supervisors and courts, so a placeholder ("n/a", "none", "tbd") or a single letter is not one
(``check_reason``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from services.records.domain.errors import RuleViolation

# Free text a person writes into the plan, by its field in the bodies, and how a refusal says
# it. Reasons (``reason``, ``override_reason``) are judged on the events decided instead.
WORDED_FIELDS: Mapping[str, str] = {
    "title": "the title",
    "description": "the description",
    "in_their_words": "the participant's own words",
    "why_it_matters": "why it matters",
    "risk_factors": "each risk factor",
    "note": "the note",
    "text": "the note",
    "summary": "the review's summary",
    "participant_statement": "what the participant said",
    "relationship": "the relationship",
    "contact": "how to reach them",
    "pronouns": "the pronouns",
    "external_ref": "the reference",
    "reference": "the reference",
    # names: a digit is enough, as a helpline's name ("211") is one
    "name": "the name",
    "preferred_name": "the preferred name",
    "support_name": "the support's name",
    "present": "each person present",
}

_SHOWN = 20  # characters of the refused text quoted back


def has_words(text: str | None) -> bool:
    """Whether ``text`` holds a letter or a digit, in any script."""
    return text is not None and any(char.isalnum() for char in text)


# Rule 5: what fills a reason field and says nothing, compared with a reason's letters and
# digits only, case ignored ("N/A", "n.a.", "No reason!" are "na", "na", "noreason"). Only a
# whole reason is compared: "Whereabouts unknown since March" says why, "unknown" does not
# (whoever acts knows why they act, even when a fact is unknown). Shorter forms (".", "-",
# "x", "?") are refused by the count below. The list is data: a placeholder found in use is
# one more line here, not new logic.
NON_REASONS: tuple[str, ...] = (
    "n/a", "na", "not applicable", "none", "nil", "null", "nothing", "no reason",
    "no reason given", "tbd", "tba", "tbc", "xx", "xxx", "test", "unknown", "idk",
)
_MIN_REASON = 2  # letters or digits, in any script, in a reason


def _bare(text: str) -> str:
    """``text``'s letters and digits only, case folded and in their compatibility forms
    (full-width N/A is "N/A"): what a reason says, for comparing."""
    return "".join(char for char in unicodedata.normalize("NFKC", text)
                   if char.isalnum()).casefold()


_NON_REASONS = frozenset(_bare(text) for text in NON_REASONS)


def check_reason(reason: str, field: str = "reason") -> None:
    """Refuse (422 ``reason_required``, naming ``field``) a reason that does not say why: fewer
    than two letters or digits, or only a placeholder from ``NON_REASONS``.

    The one check of every reason recorded (``reason``, ``override_reason``); other texts are
    judged by ``has_words`` alone.
    """
    bare = _bare(reason)
    if len(bare) >= _MIN_REASON and bare not in _NON_REASONS:
        return
    shown = reason if len(reason) <= _SHOWN else reason[:_SHOWN] + "\u2026"
    raise RuleViolation("reason_required", f"Say why, in words ({field}): the reason stays in"
                        " the record so the participant, supervisors and courts can see why"
                        f' this was done, and "{shown}" does not tell them.', field=field)


def check_body_words(body: BaseModel, prefix: str = "", recorded: object = None) -> None:
    """Refuse (422 ``words_required``, naming the field) the first text ``body`` gives without
    words; nested bodies are named by their path.

    ``recorded`` is the item a revision revises: a text it already holds, sent back unchanged
    (a client echoing the whole item), is not new text and is not judged.
    """
    for name, info in type(body).model_fields.items():
        value = getattr(body, name)
        path = prefix + name
        if isinstance(value, BaseModel):
            check_body_words(value, f"{path}.")
            continue
        refused = _first_refused(name, _new_text(value, getattr(recorded, name, None)))
        if refused is not None:
            raise RuleViolation("words_required", _detail(name, path, refused,
                                                          info.is_required()), field=path)


def _first_refused(name: str, value: Any) -> str | None:
    if name not in WORDED_FIELDS:
        return None
    return next((text for text in _texts(value) if not has_words(text)), None)


def _new_text(value: Any, recorded: Any) -> Any:
    """What of ``value`` the item does not already hold: an unchanged text gives nothing, and a
    list only its items not recorded before (each risk factor is judged on its own)."""
    if recorded is None:
        return value
    if isinstance(value, str):
        return None if value == recorded else value
    if isinstance(value, list | tuple) and isinstance(recorded, list | tuple):
        return [item for item in value if item not in recorded]
    return value


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []  # None: left out or cleared


def _detail(name: str, path: str, text: str, required: bool) -> str:
    shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "\u2026"
    way_on = "" if required else " Leave it out when there is nothing to write."
    return (f'Write {WORDED_FIELDS[name]} in words ({path}): "{shown}" has no letter or digit,'
            f" in any script.{way_on}")
