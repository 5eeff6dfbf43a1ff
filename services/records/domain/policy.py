"""Agency policy and the context a decision is made in (injected: no clock reads in the domain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from schemas.events import PolicySnapshot, ReviewIntervals, RiskLevel


@dataclass(frozen=True, slots=True)
class AgencyPolicy:
    """Per-agency practice settings (defaults from the brief)."""

    max_active_goals: int = 3
    review_days_high: int = 30
    review_days_moderate: int = 60
    review_days_low: int = 90
    timezone: str = "UTC"  # IANA name: the agency's dates are days there
    # analytics withhold a count that fewer participants stand behind (decision 0011); the
    # agency's current choice, never snapshotted: it governs answers, not a case's rules
    analytics_min_cell: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.max_active_goals <= 20:
            raise ValueError("max_active_goals must be between 1 and 20")
        if not 1 <= self.analytics_min_cell <= 100:
            raise ValueError("analytics_min_cell must be between 1 and 100")
        for days in (self.review_days_high, self.review_days_moderate, self.review_days_low):
            if not 1 <= days <= 366:
                raise ValueError("review intervals must be between 1 and 366 days")

    def date_at(self, moment: datetime) -> date:
        """The agency's date at ``moment`` (its "today" when ``moment`` is now)."""
        return moment.astimezone(ZoneInfo(self.timezone)).date()

    def review_interval(self, risk_level: RiskLevel) -> int:
        if risk_level == "high":
            return self.review_days_high
        if risk_level == "moderate":
            return self.review_days_moderate
        return self.review_days_low

    def to_snapshot(self) -> PolicySnapshot:
        return PolicySnapshot(
            max_active_goals=self.max_active_goals,
            review_interval_days=ReviewIntervals(
                high=self.review_days_high, moderate=self.review_days_moderate,
                low=self.review_days_low,
            ),
            timezone=self.timezone,
        )

    @classmethod
    def from_snapshot(cls, snapshot: PolicySnapshot) -> AgencyPolicy:
        days = snapshot.review_interval_days
        return cls(max_active_goals=snapshot.max_active_goals, review_days_high=days.high,
                   review_days_moderate=days.moderate, review_days_low=days.low,
                   timezone=snapshot.timezone)


@dataclass(frozen=True, slots=True)
class Actor:
    sub: str
    role: str


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """What a decision may depend on besides the state and the command.

    ``today`` is the agency's local date, read by the caller. ``policy`` is the agency's current
    policy; when None, the policy snapshotted in the case's CaseOpened event applies (and the
    defaults when opening a case).
    """

    today: date
    actor: Actor = field(default_factory=lambda: Actor(sub="system", role="service"))
    policy: AgencyPolicy | None = None
