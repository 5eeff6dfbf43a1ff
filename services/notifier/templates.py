"""Text and HTML bodies from the files in templates/ (person-first, strengths-based wording).

A ``.txt`` template starts with a ``Subject:`` line; the ``.html`` template is the body inside
layout.html. Values are escaped and set apart (dir="auto") for HTML; templates are
``string.Template`` files, so they hold no logic: the few optional sentences are built here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    # what a digest shows of it: the first paragraph (one line) and which case, text and HTML
    summary: str = ""
    case_line: str = ""
    case_html: str = ""
    subject_html: str = ""
    summary_html: str = ""


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


_NAMED_DAYS = {0: "today", 1: "tomorrow", -1: "yesterday"}
# Values from the record are marked while a message is built: the text part drops the marks;
# the HTML part escapes everything and sets each value apart (dir="auto"), so a right-to-left
# name inside an English sentence keeps its own direction and does not carry the words around
# it. Stored text never holds NUL, so the marks cannot be forged.
_OPEN, _CLOSE = "\x00[", "\x00]"


def _mark(value: object) -> str:
    return f"{_OPEN}{value}{_CLOSE}"


def _as_text(marked: str) -> str:
    """The plain text: marks dropped, and a value holding a bidi control (U+202E, say) set in
    an isolate (FSI…PDI), which ends any override it opens: left bare, it reversed the rest of
    the sentence and the Subject, where the HTML part's dir="auto" already contained it."""
    return _MARKED.sub(_isolated_if_it_steers, marked)


_MARKED = re.compile(re.escape(_OPEN) + "(.*?)" + re.escape(_CLOSE), re.DOTALL)
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _isolated_if_it_steers(mark: re.Match[str]) -> str:
    value = mark.group(1)
    return f"\u2068{value}\u2069" if _BIDI_CONTROL.search(value) else value


def _as_html(marked: str) -> str:
    return html.escape(marked).replace(_OPEN, '<span dir="auto">').replace(_CLOSE, "</span>")


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


def _plan_link(plan_url: str | None, case_id: object | None) -> str | None:
    """The plan's address from ``NOTIFIER_PLAN_URL`` (a template with ``{case_id}``)."""
    if not plan_url or case_id is None:
        return None
    return plan_url.replace("{case_id}", str(case_id))


def _case_line(participant: str, case_id: object | None, link: str | None) -> str:
    if link is not None:
        return f"Open {participant}'s plan: {link}"
    return f"Case {case_id}" if case_id else ""


def _case_html(participant: str, case_id: object | None, link: str | None) -> str:
    if link is None:
        return _as_html(_case_line(participant, case_id, None))
    words = _as_html(f"Open {participant}'s plan")
    return f'<a href="{html.escape(link)}">{words}</a>'


def template_values(context: dict[str, Any], case_id: object | None,
                    today: date, link: str | None = None) -> dict[str, str]:
    """Every placeholder a template may use, its values from the record marked (``_mark``);
    ``today`` is the reader's date."""
    participant = _mark(context.get("participant") or "the participant")
    words = _mark(context["in_their_words"]) if context.get("in_their_words") else None
    title = _mark(context["goal_title"]) if context.get("goal_title") else ""
    toward = words or title
    note = context.get("note")
    step = _mark(context["description"]) if context.get("description") else ""
    support = _mark(context["support_name"]) if context.get("support_name") else None
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
        "case_manager": _mark(context.get("case_manager") or "not recorded"),
        "description": step,
        "goal_title": title,
        "achievement": words or title,
        "words_line": f' In {participant}\'s words: "{words}".' if words else "",
        "goal_line": f' It is a step toward "{toward}".' if toward else "",
        "note_line": f" Note: {_mark(_sentence(str(note)))}" if note else "",
        "done_line": _done_line(context.get("owner"), participant, step),
        "owner_line": _owner_line(context.get("owner"), participant, support),
        "check_in": _check_in(context.get("owner"), participant, support),
        "case_link": _case_line(participant, case_id, link),
        **_handover_values(context, participant, today),
    }


_AS_TRANSFERRED = "when the case was transferred"


def _handover_values(context: dict[str, Any], participant: str,
                     today: date) -> dict[str, str]:
    """The sentences of a handover (``case_transferred``): who handed the case on and why,
    and what in the plan may need attention first, as the notifier knew it at the transfer
    (the notice may be read days later, in a digest)."""
    handed_on_by = context.get("from_case_manager")
    by = context.get("transferred_by")
    reason = context.get("reason")
    return {
        "from_case_manager": _mark(handed_on_by or "the previous case manager"),
        "by_line": f" by {_mark(by)}" if by and by != handed_on_by else "",
        "reason_line": f" The reason given: {_mark(_sentence(str(reason)))}" if reason else "",
        "attention_line": _attention_line(context),
        "review_line": _review_line(context, participant, today),
        "steps_block": _steps_block_text(_LateSteps.of(context)),
    }


def _attention_line(context: dict[str, Any]) -> str:
    """What a digest shows of a handover, beside who handed it on: how much is past its
    date (the rest of the message says which)."""
    review = _day(context.get("review_due"))
    count = int(context.get("overdue_step_count") or 0)
    needs = [f"the plan review due on {_nice_date(review)}"] if context.get(
        "review_overdue") else []
    if count:
        needs.append(f"{count} step{'s' if count > 1 else ''} past the hoped-for date")
    if not needs:
        return f" Nothing in the plan was past its date {_AS_TRANSFERRED}."
    return f" What may need attention first: {' and '.join(needs)}."


def _review_line(context: dict[str, Any], participant: str, today: date) -> str:
    review = _day(context.get("review_due"))
    if review is None:
        return f"No plan review was scheduled {_AS_TRANSFERRED}."
    when = f"{_nice_date(review)} ({_when(review, today)})"
    if not context.get("review_overdue"):
        is_or_was = _is_or_was(review, today)
        return f"The next plan review with {participant} {is_or_was} due on {when}."
    return (f"The plan review with {participant} was due on {when} and had not been recorded"
            f" {_AS_TRANSFERRED}. If it took place, recording it keeps the plan current; if"
            " not, finding a time together soon is a good first step.")


@dataclass(frozen=True)
class _LateSteps:
    """The steps past their dates a handover lists (each marked, and its date in words),
    and how many more the plan holds."""

    listed: list[tuple[str, str]]
    more: int

    @classmethod
    def of(cls, context: dict[str, Any]) -> _LateSteps:
        steps = context.get("overdue_steps") or []
        listed = [(_mark(step["description"]), _nice_date(_day(step.get("due_date"))))
                  for step in steps]
        return cls(listed, int(context.get("overdue_step_count") or 0) - len(listed))

    @property
    def more_line(self) -> str:
        return f"and {self.more} more in the plan" if self.more > 0 else ""


_STEPS_HEADING = f"Steps past the hoped-for date {_AS_TRANSFERRED}:"


def _steps_block_text(late: _LateSteps) -> str:
    if not late.listed:
        return ""
    lines = [f'"{step}" (hoped-for date: {day})' for step, day in late.listed]
    lines += [late.more_line] if late.more_line else []
    return "".join([f"\n\n{_STEPS_HEADING}", *(f"\n- {line}" for line in lines)])


def _steps_block_html(late: _LateSteps) -> str:
    if not late.listed:
        return ""
    items = [f"<q>{_as_html(step)}</q> (hoped-for date: {html.escape(day)})"
             for step, day in late.listed]
    items += [html.escape(late.more_line)] if late.more_line else []
    listed = "".join(f"<li>{item}</li>" for item in items)
    return f"\n<p>{html.escape(_STEPS_HEADING)}</p>\n<ul>{listed}</ul>"


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


def _owner_line(owner: object, participant: str, support: object) -> str:
    """Whose step a nudge is about, when it is not the participant's."""
    if owner == "case_manager":
        return " The case manager took this step on."
    if owner == "support":
        who = f"{support}, one of {participant}'s supports," if support else \
            f"One of {participant}'s supports"
        return f" {who} took this step on."
    return ""


def _check_in(owner: object, participant: str, support: object) -> str:
    """What a nudge suggests, for whoever took the step on."""
    if owner == "case_manager":
        return (f"Plans change, and that is fine: if the date no longer fits, agree a new one"
                f" with {participant}.")
    if owner == "support":
        together = f"{participant} and {support}" if support else participant
        return (f"Plans change, and that is fine: a quick check-in with {together} can show"
                " what would help, or agree a new date that fits.")
    return (f"Plans change, and that is fine: a quick check-in with {participant} can show what"
            " support would help, or agree a new date that fits.")


_STOP_ASKING = "tell your case manager"


def _stop_ways(unsubscribe_url: str | None) -> str:
    """How a participant stops their mail, after turning celebrations off themselves: asking
    their case manager, and the one-click link when this notifier has a public address."""
    if unsubscribe_url is None:
        return f"or {_STOP_ASKING}."
    return f"{_STOP_ASKING}, or open this link:\n{unsubscribe_url}"


def _stop_ways_html(unsubscribe_url: str | None) -> str:
    if unsubscribe_url is None:
        return html.escape(_stop_ways(None))
    return (f'{_STOP_ASKING}, or <a href="{html.escape(unsubscribe_url)}">stop them with'
            " this link</a>.")


def render(kind: str, context: dict[str, Any], case_id: object | None = None,
           *, today: date, for_participant: bool = False,
           plan_url: str | None = None, unsubscribe_url: str | None = None) -> Rendered:
    """The message for a notice read on ``today`` (the reader's local date). ``plan_url``:
    ``NOTIFIER_PLAN_URL``; staff mail then links to the plan. A participant's mail carries
    neither the link nor the case id: staff records are not theirs to open from an email.
    ``unsubscribe_url``: the participant's one-click link (``links.py``), offered beside
    asking their case manager."""
    name = f"{kind}_participant" if for_participant else kind
    link = None if for_participant else _plan_link(plan_url, case_id)
    values = template_values(context, case_id, today, link)
    values["stop_ways"] = _stop_ways(unsubscribe_url)
    subject, text = _subject_and_text(_template(f"{name}.txt"), values)
    escaped = {k: _as_html(v) for k, v in values.items()}
    escaped["case_link"] = _case_html(values["participant"], case_id, link)
    escaped["stop_ways"] = _stop_ways_html(unsubscribe_url)
    escaped["steps_block"] = _steps_block_html(_LateSteps.of(context))
    body = _template(f"{name}.html").safe_substitute(escaped)
    summary = _summary(text)
    return replace(_with_layout(_as_text(subject), _as_text(text), body),
                   summary=_as_text(summary), case_line=_as_text(values["case_link"]),
                   case_html=escaped["case_link"], subject_html=_as_html(subject),
                   summary_html=_as_html(summary))


def render_digest(items: Sequence[Rendered]) -> Rendered:
    text_items = "\n".join(_digest_text_item(item) for item in items)
    html_items = "".join(_digest_html_item(item) for item in items)
    count = len(items)
    values = {"count": str(count), "updates": "update" if count == 1 else "updates"}
    subject, text = _subject_and_text(_template("daily_digest.txt"), {**values,
                                                                      "items": text_items})
    body = _template("daily_digest.html").safe_substitute(values, items=html_items)
    return _with_layout(subject, text, body)


def _subject_and_text(template: Template, values: dict[str, str]) -> tuple[str, str]:
    """The Subject line and the text body. The template is split before values go in: a step
    written over two lines once cut the subject at its line break and began the body with the
    rest."""
    first, _, body = template.template.partition("\n")
    subject = Template(first.removeprefix("Subject:")).safe_substitute(values)
    return " ".join(subject.split()), Template(body).safe_substitute(values)


def _digest_text_item(item: Rendered) -> str:
    lines = [f"- {item.subject}", f"  {item.summary}"]
    return "\n".join(lines + ([f"  {item.case_line}"] if item.case_line else []))


def _digest_html_item(item: Rendered) -> str:
    case = f"<br>{item.case_html}" if item.case_html else ""
    return f"<li><strong>{item.subject_html}</strong><br>{item.summary_html}{case}</li>"


def _summary(text: str) -> str:
    """The first paragraph after the greeting, as one line: what the notice says, whole (a
    template's first line broke off mid-sentence, dropping the case manager's name)."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    said = [p for p in paragraphs if p and not p.startswith("Hello")]
    return said[0] if said else ""


def _with_layout(subject: str, text: str, body: str) -> Rendered:
    """The message with the footer both parts carry (the text part used to have none)."""
    page = _template("layout.html").safe_substitute(subject=html.escape(subject), body=body,
                                                    footer=html.escape(FOOTER))
    return Rendered(subject, f"{text.strip()}\n\n-- \n{FOOTER}\n", page)
