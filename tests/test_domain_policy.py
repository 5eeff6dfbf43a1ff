"""The agency policy a case is held to (rules 1 and 6): its bounds, its calendar, its snapshot."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from schemas.events import RiskLevel
from services.records import domain as d


def with_interval(risk: RiskLevel, days: int) -> d.AgencyPolicy:
    """The default policy with the review interval for ``risk`` set to ``days``."""
    usual = d.AgencyPolicy()
    return d.AgencyPolicy(
        review_days_high=days if risk == "high" else usual.review_days_high,
        review_days_moderate=days if risk == "moderate" else usual.review_days_moderate,
        review_days_low=days if risk == "low" else usual.review_days_low)


@pytest.mark.parametrize("goals", [1, 20])
def test_a_cap_from_1_to_20_active_goals_is_a_policy(goals: int) -> None:
    assert d.AgencyPolicy(max_active_goals=goals).max_active_goals == goals


@pytest.mark.parametrize("goals", [0, 21])
def test_a_cap_outside_1_to_20_active_goals_is_refused(goals: int) -> None:
    with pytest.raises(ValueError, match="max_active_goals must be between 1 and 20"):
        d.AgencyPolicy(max_active_goals=goals)


@pytest.mark.parametrize("risk", ["high", "moderate", "low"])
@pytest.mark.parametrize("days", [1, 366])
def test_review_intervals_from_1_to_366_days_are_a_policy(risk: RiskLevel, days: int) -> None:
    # the order high <= moderate <= low is checked where files are read, not here
    assert with_interval(risk, days).review_interval(risk) == days


@pytest.mark.parametrize("risk", ["high", "moderate", "low"])
@pytest.mark.parametrize("days", [0, 367])
def test_review_intervals_outside_1_to_366_days_are_refused(risk: RiskLevel, days: int) -> None:
    with pytest.raises(ValueError, match="review intervals must be between 1 and 366 days"):
        with_interval(risk, days)


def test_the_agency_date_is_the_date_in_its_time_zone() -> None:
    evening_in_utc = datetime(2025, 1, 1, 20, tzinfo=UTC)
    assert d.AgencyPolicy().date_at(evening_in_utc) == date(2025, 1, 1)
    assert d.AgencyPolicy(timezone="Pacific/Auckland").date_at(evening_in_utc) == date(
        2025, 1, 2)
    assert d.AgencyPolicy(timezone="America/Los_Angeles").date_at(
        datetime(2025, 1, 2, 3, tzinfo=UTC)) == date(2025, 1, 1)


def test_the_snapshot_recorded_at_opening_gives_back_the_same_policy() -> None:
    policy = d.AgencyPolicy(max_active_goals=5, review_days_high=14, review_days_moderate=45,
                            review_days_low=120, timezone="America/Chicago")
    snapshot = policy.to_snapshot()
    assert (snapshot.max_active_goals, snapshot.timezone) == (5, "America/Chicago")
    assert snapshot.review_interval_days.model_dump() == {"high": 14, "moderate": 45,
                                                          "low": 120}
    assert d.AgencyPolicy.from_snapshot(snapshot) == policy
