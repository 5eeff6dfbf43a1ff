"""Query-string contracts of the records API (validated like bodies: unknown keys refused)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Literal, Self, TypeAlias
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.events import DaysFrom, GivenUserId, WireDate, WireDateTime, uuid_from_text

_DIGITS = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


def _plain_digits(value: object) -> object:
    """A number in a query is written with the digits 0-9 alone: Python would also read
    ``1_0`` as 10, `` 1`` and ``+1`` as 1, and other scripts' digits."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be a whole number written with the digits 0-9")
    return value


def _plain_decimal(value: object) -> object:
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        raise ValueError("must be a number written with the digits 0-9 and an optional '.'")
    return value


QueryInt: TypeAlias = Annotated[int, BeforeValidator(_plain_digits)]
QuerySeconds: TypeAlias = Annotated[float, BeforeValidator(_plain_decimal)]


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoQuery(_Query):
    """A route that takes no query parameters: one sent by mistake (``?reason=`` on a
    revision) is refused, not silently dropped."""


# A date-time whose offset's "+" arrived as a space: form encoding reads an unencoded "+" in
# a query string as one, as a browser or curl sends ?as_of=2026-03-01T10:00:00+01:00
_PLUS_READ_AS_SPACE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?)"
    r" ([0-9]{2}:[0-9]{2})")


class PlanQuery(_Query):
    # the bounds on the int itself, where the document states them as minimum and maximum:
    # on the optional field they came out as pydantic's ge and le, which JSON Schema ignores
    as_of_version: Annotated[int, Field(ge=1, le=10_000_000),
                             BeforeValidator(_plain_digits)] | None = None
    as_of: WireDateTime | None = Field(default=None, description="RFC 3339 with a time zone")

    @field_validator("as_of", mode="before")
    @classmethod
    def plus_restored(cls, value: object) -> object:
        if isinstance(value, str) and (match := _PLUS_READ_AS_SPACE.fullmatch(value)):
            return f"{match[1]}+{match[2]}"
        return value

    @field_validator("as_of")
    @classmethod
    def in_utc(cls, value: datetime | None) -> datetime | None:
        try:
            return value.astimezone(UTC) if value is not None else None
        except OverflowError as error:
            raise ValueError("as_of is outside the supported range of dates") from error

    @model_validator(mode="after")
    def one_point_in_time(self) -> Self:
        if self.as_of_version is not None and self.as_of is not None:
            raise ValueError("give as_of_version or as_of, not both")
        return self


CaseloadOrder: TypeAlias = Literal["case_id", "next_review"]
_REVIEW_CURSOR = re.compile(r"(-|[0-9]{4}-[0-9]{2}-[0-9]{2})~([0-9a-fA-F-]{36})")


@dataclass(frozen=True)
class CaseloadCursor:
    """Where a caseload page ended: its last case and, in the review order, that case's next
    review date (None: no review). On the wire the case id alone in the id order, and
    ``<date or ->~<case id>`` in the review order: the order's sort key."""

    case_id: UUID
    review_due: date | None = None

    def encode(self, order: CaseloadOrder) -> str:
        if order == "case_id":
            return str(self.case_id)
        due = self.review_due.isoformat() if self.review_due is not None else "-"
        return f"{due}~{self.case_id}"

    @classmethod
    def parse(cls, order: CaseloadOrder, raw: str) -> CaseloadCursor:
        review = _REVIEW_CURSOR.fullmatch(raw)
        if order == "case_id":
            if review is not None:
                raise ValueError("this is a cursor of order=next_review: ask with that order,"
                                 " or leave after out to start from the first page")
            return cls(_case_id(raw))
        if review is None:
            raise ValueError("must be the next_after of a page in order=next_review:"
                             " <YYYY-MM-DD or ->~<case id>")
        due, case_id = review.groups()
        return cls(_case_id(case_id), None if due == "-" else _calendar_date(due))


def _case_id(raw: str) -> UUID:
    try:
        return uuid_from_text(raw)
    except ValueError as error:
        raise ValueError("must be the next_after of an earlier page (a case id)") from error


def _calendar_date(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError as error:
        raise ValueError(f"{raw} is not a calendar date") from error


class CaseloadQuery(_Query):
    # held to a body's case manager (0004): a filter outside that rule matched no one and
    # answered an empty page, which a supervisor took for an empty caseload
    case_manager: GivenUserId | None = Field(
        default=None,
        description="a case manager's user id, as a body names one: 1-200 characters once "
                    "surrounding spaces are dropped, no control or formatting characters")
    status: Literal["open", "closed"] | None = None
    review_due_before: WireDate | None = None
    order: CaseloadOrder = Field(
        default="case_id",
        description="case_id (the default): by case id, which nothing changes, so paging "
                    "shows every case once. next_review: soonest next review first (overdue "
                    "ones first of all), cases with no review scheduled last, ties by case "
                    "id; paging shows once every case whose next review did not move while "
                    "the pages were read (one moved later may show again, one moved earlier "
                    "not at all)")
    after: str | None = Field(default=None, min_length=1, max_length=64,
                              description="next_after of the previous page, in the same order")
    limit: QueryInt = Field(default=50, ge=1, le=200)

    @field_validator("after")
    @classmethod
    def a_cursor_of_the_order(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "order" in info.data:  # (a bad order is refused itself)
            CaseloadCursor.parse(info.data["order"], value)
        return value

    def cursor(self) -> CaseloadCursor | None:
        return CaseloadCursor.parse(self.order, self.after) if self.after is not None else None


# the most events one answer lists: a history page, and the events a diff shows
MAX_EVENTS_LISTED = 500


class HistoryQuery(_Query):
    after_version: QueryInt = Field(default=0, ge=0, le=10_000_000)
    limit: QueryInt = Field(default=100, ge=1, le=MAX_EVENTS_LISTED)


class DiffQuery(_Query):
    from_version: QueryInt = Field(ge=0, le=10_000_000)
    to_version: QueryInt = Field(ge=1, le=10_000_000)

    @model_validator(mode="after")
    def forwards(self) -> Self:
        if self.from_version >= self.to_version:
            raise ValueError("from_version must be lower than to_version")
        return self


class RemovalQuery(_Query):
    reason: str | None = Field(default=None, min_length=1, max_length=4000)


class AccessLogQuery(_Query):
    case_id: UUID | None = None
    after: str | None = Field(default=None, min_length=1, max_length=64,
                              description="next_after or checkpoint of an earlier page")
    limit: QueryInt = Field(default=100, ge=1, le=500)


class ExportQuery(_Query):
    format: Literal["jsonl", "csv", "pdf", "fhir"] = Field(
        default="jsonl",
        description="JSON Lines, CSV for spreadsheets, PDF for people to read, or a FHIR R4 "
                    "Bundle (the plan as resources, each event as a Provenance); all signed")


# Periods stay well inside what date arithmetic can reach (a default period reaches a year back).
EARLIEST, LATEST = date(1900, 1, 1), date(9000, 12, 31)

PeriodDay: TypeAlias = Annotated[WireDate, DaysFrom(EARLIEST, LATEST)]


class OutcomesQuery(_Query):
    """A period of whole days of the agency (its policy's time zone, decision 0011); by default the
    365 days through today."""

    model_config = ConfigDict(extra="forbid", validate_by_name=False, validate_by_alias=True)

    period_from: PeriodDay | None = Field(default=None, alias="from")
    period_to: PeriodDay | None = Field(default=None, alias="to")

    @model_validator(mode="after")
    def ordered(self) -> Self:
        if self.period_from and self.period_to and self.period_from > self.period_to:
            raise ValueError("from must not be later than to")
        return self
