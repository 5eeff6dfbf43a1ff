"""Per-agency practice policy (rules 1 and 6): ``<agency>.json`` files read at startup.

A file overrides what it names and keeps the defaults for the rest, in the shape of the
``policy`` recorded in ``CaseOpened``::

    {"max_active_goals": 2, "review_interval_days": {"high": 14}, "timezone": "America/Chicago",
     "analytics_min_cell": 11}

An agency without a file gets the defaults (3 active goals; reviews after 30, 60, 90 days for
high, moderate, low risk; analytics withhold counts under 5). A case is held to the policy in
force when it was opened (docs/decisions/0102-agency-policy.md).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.events import TimeZoneName
from services.common.settings import ConfigurationError
from services.records.application.agency_files import read_agency_files
from services.records.domain import AgencyPolicy

SETTING = "CASETRAIL_POLICY_DIR"
DEFAULT_POLICY = AgencyPolicy()


class _PolicyFilePart(BaseModel):
    # Strict: a quoted number or true in a policy file is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReviewIntervalDays(_PolicyFilePart):
    high: int = Field(DEFAULT_POLICY.review_days_high, ge=1, le=366)
    moderate: int = Field(DEFAULT_POLICY.review_days_moderate, ge=1, le=366)
    low: int = Field(DEFAULT_POLICY.review_days_low, ge=1, le=366)

    @model_validator(mode="after")
    def _higher_risk_reviewed_no_less_often(self) -> ReviewIntervalDays:
        """Rule 6: more often for higher risk. Checked here, not in AgencyPolicy, so the
        policies recorded in past CaseOpened events always read back."""
        if not self.high <= self.moderate <= self.low:
            raise ValueError(f"higher risk must be reviewed at least as often: high {self.high},"
                             f" moderate {self.moderate}, low {self.low} days")
        return self


class PolicyFile(_PolicyFilePart):
    description: str | None = Field(None, max_length=2000)
    max_active_goals: int = Field(DEFAULT_POLICY.max_active_goals, ge=1, le=20)
    review_interval_days: ReviewIntervalDays = ReviewIntervalDays()
    timezone: TimeZoneName = DEFAULT_POLICY.timezone
    analytics_min_cell: int = Field(DEFAULT_POLICY.analytics_min_cell, ge=1, le=100)

    def to_policy(self) -> AgencyPolicy:
        days = self.review_interval_days
        return AgencyPolicy(max_active_goals=self.max_active_goals, review_days_high=days.high,
                            review_days_moderate=days.moderate, review_days_low=days.low,
                            timezone=self.timezone,
                            analytics_min_cell=self.analytics_min_cell)


class AgencyPolicies:
    def __init__(self, folder: Path | None) -> None:
        self._by_agency = {agency: _load(path, raw)
                           for agency, (path, raw) in read_agency_files(folder, SETTING).items()}

    def for_agency(self, agency: str) -> AgencyPolicy:
        return self._by_agency.get(agency, DEFAULT_POLICY)


def _load(path: Path, raw: bytes) -> AgencyPolicy:
    try:
        return PolicyFile.model_validate_json(raw).to_policy()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'the file'}: {e['msg']}"
            for e in error.errors())
        raise ConfigurationError(f"{path}: {problems}") from None
