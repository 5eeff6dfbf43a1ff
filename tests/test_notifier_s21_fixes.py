"""The fixes to the twenty-first session's audit of time (tests/test_audit_s21_dst.py), pinned
where they are decided, without a database: quiet hours judged by moments as well as by the
clock, the early claim's span, when a waiting notice is to go, and a handed-on group row."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from uuid import uuid4

from services.notifier.delivery import DatedTiming, expected_send, quiet_until
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import EARLY_CLAIM_SPAN, Row


def prefs(timezone: str = "UTC", **changes: Any) -> Preferences:
    base = Preferences(
        "agency-a",
        "cm-1",
        "case_manager",
        "cm-1@example.org",
        "immediate",
        timezone,
        None,
        None,
        True,
    )
    return replace(base, **changes)


def row(
    kind: str,
    due: datetime,
    role: str = "case_manager",
    status: str = "scheduled",
    sent_at: datetime | None = None,
) -> Row:
    return Row(
        uuid4(),
        "k",
        kind,
        uuid4(),
        "agency-a",
        role,
        "cm-1",
        due,
        due,
        status,
        0,
        None,
        None,
        "<m@x>",
        {},
        None,
        sent_at,
        None,
        None,
    )


def test_quiet_hours_begun_hold_through_the_repeated_hour() -> None:
    """New York, 1 November 2026: quiet from 01:30; the clock reads 01:10 a second time
    (06:10 UTC) after they began at 01:30 EDT (05:30 UTC). Still quiet, until 06:00 EST."""
    night = prefs("America/New_York", quiet_start=time(1, 30), quiet_end=time(6))
    second_pass = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)
    assert quiet_until(night, second_pass) == datetime(2026, 11, 1, 11, 0, tzinfo=UTC)
    before_they_began = datetime(2026, 11, 1, 5, 10, tzinfo=UTC)  # the first 01:10
    assert quiet_until(night, before_they_began) is None


def test_the_claim_span_covers_a_digest_earlier_in_the_day_than_the_send_time() -> None:
    assert DatedTiming("Pacific/Honolulu", time(6), time(9)).claim_span == timedelta(hours=29)
    assert DatedTiming("UTC", time(8), time(9)).claim_span == timedelta(hours=27)
    assert DatedTiming("UTC", time(10), time(9)).claim_span == EARLY_CLAIM_SPAN


def test_a_dated_notice_is_expected_at_its_readers_moment() -> None:
    """A "due today" at 09:00 UTC on 1 May: 09:00 on Kiritimati is 19:00 UTC the day before;
    in a digest, 08:00 there; a small win goes when due."""
    due = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    timing = DatedTiming()
    kiritimati = prefs("Pacific/Kiritimati")
    assert expected_send(row("review_due_today", due), kiritimati, timing) == datetime(
        2026, 4, 30, 19, 0, tzinfo=UTC
    )
    assert expected_send(
        row("review_due_today", due), replace(kiritimati, delivery="daily_digest"), timing
    ) == datetime(2026, 4, 30, 18, 0, tzinfo=UTC)
    assert expected_send(row("small_win", due), kiritimati, timing) == due
    assert expected_send(row("review_due_today", due), None, timing) == due
