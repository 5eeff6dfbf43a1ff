"""Text and HTML bodies from the files in templates/ (person-first, strengths-based wording).

A ``.txt`` template starts with a ``Subject:`` line; the ``.html`` template is the body inside
layout.html. Values are escaped for HTML; templates are ``string.Template`` files, so they hold
no logic: the few optional sentences are built here.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"
FOOTER = ("Sent by Casetrail. You can change how and when you hear from us in your notification"
          " preferences.")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


_NAMED_DAYS = {0: "today", 1: "tomorrow", -1: "yesterday"}


def _day(value: Any) -> date | None:
    return date.fromisoformat(str(value)) if value else None


def _nice_date(day: date | None) -> str:
    return "" if day is None else f"{day:%A} {day.day} {day:%B %Y}"


def _when(day: date | None, today: date) -> str:
    """A day as the reader counts it on the day they read the message (a notice may wait in a
    digest or out quiet hours, so it is never worded when it is scheduled)."""
    if day is None:
        return ""
    days = (day - today).days
    if days in _NAMED_DAYS:
        return _NAMED_DAYS[days]
    return f"in {days} days" if days > 0 else f"{-days} days ago"


def _is_or_was(day: date | None, today: date) -> str:
    return "was" if day is not None and day < today else "is"


def template_values(context: dict[str, Any], case_id: object | None,
                    today: date) -> dict[str, str]:
    """Every placeholder a template may use, as plain text; ``today`` is the reader's date."""
    participant = str(context.get("participant") or "the participant")
    words = context.get("in_their_words")
    title = str(context.get("goal_title") or "")
    toward = words or title
    note = context.get("note")
    due, target = _day(context.get("due_date")), _day(context.get("target_date"))
    return {
        "participant": participant,
        "due_date": _nice_date(due),
        "due_when": _when(due, today),
        "due_is": _is_or_was(due, today),
        "target_date": _nice_date(target),
        "target_when": _when(target, today),
        "target_is": _is_or_was(target, today),
        "grace_days": str(context.get("grace_days", "")),
        "case_manager": str(context.get("case_manager") or "not recorded"),
        "description": str(context.get("description") or ""),
        "goal_title": title,
        "achievement": str(words or title),
        "words_line": f' In {participant}\'s words: "{words}".' if words else "",
        "goal_line": f' It is a step toward "{toward}".' if toward else "",
        "note_line": f" Note: {_sentence(str(note))}" if note else "",
        "done_line": _done_line(context.get("owner"), participant,
                                str(context.get("description") or "")),
        "case_link": f"Case {case_id}" if case_id else "",
    }


def _sentence(text: str) -> str:
    """Free text ended as a sentence, so what the template says next does not run into it."""
    text = text.strip()
    return text if text.endswith((".", "!", "?", "…", '"', "'", ")")) else f"{text}."


def _done_line(owner: object, participant: str, step: str) -> str:
    """Who a small win belongs to: a step the case manager or a support took on is still a
    step in the participant's plan, but not one the participant did."""
    if owner == "case_manager":
        return f'The step "{step}" in {participant}\'s plan is done; the case manager took it on.'
    if owner == "support":
        return (f'The step "{step}" in {participant}\'s plan is done, with one of'
                f" {participant}'s supports.")
    return f'{participant} completed the step "{step}".'


def render(kind: str, context: dict[str, Any], case_id: object | None = None,
           *, today: date, for_participant: bool = False) -> Rendered:
    """The message for a notice read on ``today`` (the reader's local date)."""
    name = f"{kind}_participant" if for_participant else kind
    values = template_values(context, case_id, today)
    first, _, text = _template(f"{name}.txt").safe_substitute(values).partition("\n")
    subject = " ".join(first.removeprefix("Subject:").split())
    escaped = {k: html.escape(v) for k, v in values.items()}
    body = _template(f"{name}.html").safe_substitute(escaped)
    return _with_layout(subject, text, body)


def render_digest(items: Sequence[Rendered]) -> Rendered:
    text_items = "\n".join(f"- {item.subject}\n  {_first_line(item.text)}" for item in items)
    html_items = "".join(f"<li><strong>{html.escape(item.subject)}</strong><br>"
                         f"{html.escape(_first_line(item.text))}</li>" for item in items)
    count = str(len(items))
    first, _, text = _template("daily_digest.txt").safe_substitute(
        count=count, items=text_items).partition("\n")
    subject = first.removeprefix("Subject:").strip()
    body = _template("daily_digest.html").safe_substitute(count=count, items=html_items)
    return _with_layout(subject, text, body)


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and line.strip() != "Hello,"]
    return lines[0].strip() if lines else ""


def _with_layout(subject: str, text: str, body: str) -> Rendered:
    """The message with the footer both parts carry (the text part used to have none)."""
    page = _template("layout.html").safe_substitute(subject=html.escape(subject), body=body,
                                                    footer=html.escape(FOOTER))
    return Rendered(subject, f"{text.strip()}\n\n-- \n{FOOTER}\n", page)
