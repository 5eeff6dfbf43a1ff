"""The words in the mail, as the reader gets them on the day they read it."""

from __future__ import annotations

from datetime import date

import pytest

from services.notifier.rules import Kind
from services.notifier.templates import render

REMINDER = {"participant": "Jo", "due_date": "2026-03-13"}


@pytest.mark.parametrize(("read_on", "subject"), [
    ("2026-03-10", "Plan review with Jo is due on Friday 13 March 2026 (in 3 days)"),
    ("2026-03-14", "Plan review with Jo was due on Friday 13 March 2026 (yesterday)"),
])
def test_a_reminders_subject_agrees_with_its_body_on_the_day_it_is_read(
        read_on: str, subject: str) -> None:
    """A reminder may be read after the review's date (a digest, quiet hours, a retried dead
    letter): its body said "was due ... yesterday" under a subject saying "coming up"."""
    out = render(Kind.REVIEW_REMINDER, REMINDER, today=date.fromisoformat(read_on))
    assert out.subject == subject
    assert "coming up" not in out.subject


def test_every_review_notice_calls_it_a_plan_review() -> None:
    """One name for one thing: the reminder said "Review with Jo", the others "Plan review"."""
    today = date(2026, 3, 10)
    for kind in (Kind.REVIEW_REMINDER, Kind.REVIEW_DUE_TODAY, Kind.REVIEW_OVERDUE):
        assert render(kind, REMINDER, today=today).subject.startswith("Plan review with Jo")
