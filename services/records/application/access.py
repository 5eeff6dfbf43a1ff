"""Who may do what to which case: pure functions over the principal and the case.

Tenancy first: a case of another agency is invisible (404, never 403), and so is a case a
participant or auditor token does not name. Inside the agency, a role that may not do
something gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from services.common.auth import NAMED_CASES_ROLES, WINDOW_SEES_THE_PAST, Principal, Role


class Action(StrEnum):
    READ_PLAN = "read_plan"
    AUDIT = "audit"  # history, diff, verify, time travel
    EXPORT = "export"  # a signed export of the history: allowed as AUDIT is
    WRITE = "write"
    TRANSFER = "transfer"
    REOPEN = "reopen"  # allowed as TRANSFER is: both say who holds the case, not the plan
    OPEN = "open"
    LIST = "list"


class NotVisible(Exception):
    """The case does not exist for this principal (404)."""


class Forbidden(Exception):
    """The principal sees the case but may not do this (403)."""


@dataclass(frozen=True)
class CaseFacts:
    """What authorization needs to know about a case."""

    case_id: object
    agency: str
    case_manager: str


_NO_CASES = {Role.ANALYST, Role.SERVICE}
_CHANGES = {Action.WRITE, Action.TRANSFER, Action.REOPEN}

# A window narrows a token to the record as it was inside it (decision 0006): whatever shows
# cases as they are now, or changes them, is refused from the token alone, so that the answer
# is the same for a case the window hides and for one that does not exist.
_WINDOW_NEVER_WRITES = ("it reads the record as it was and never changes it: write with a"
                        " token without a window")


def refuse_window(who: Principal, why: str) -> None:
    """403 for a token with a time window, saying why (``why``) and what to use instead."""
    if who.has_window:
        raise Forbidden(f"{WINDOW_SEES_THE_PAST}; {why}")


def check_visible(who: Principal, case: CaseFacts) -> None:
    if case.agency != who.agency:
        raise NotVisible
    if who.role in NAMED_CASES_ROLES and case.case_id not in who.cases:
        raise NotVisible


def authorize(who: Principal, action: Action, case: CaseFacts) -> None:
    """Raise NotVisible or Forbidden unless ``who`` may do ``action`` on ``case``."""
    check_visible(who, case)
    owner = who.role is Role.CASE_MANAGER and case.case_manager == who.sub
    allowed = {
        Action.READ_PLAN: owner or who.role in {Role.SUPERVISOR, Role.AUDITOR, Role.PARTICIPANT},
        Action.AUDIT: owner or who.role in {Role.SUPERVISOR, Role.AUDITOR},
        Action.EXPORT: owner or who.role in {Role.SUPERVISOR, Role.AUDITOR},
        Action.WRITE: owner,
        Action.TRANSFER: owner or who.role is Role.SUPERVISOR,
        Action.REOPEN: owner or who.role is Role.SUPERVISOR,
    }.get(action, False)
    if not allowed:
        raise Forbidden(_why(who, action))


def refuse_from_token(who: Principal, action: Action, case_id: UUID) -> None:
    """Refusals the token alone decides, before the case is read, so that the answer is the
    same whether the case exists or not: analysts and the service read no individual case (a
    403 for a real case beside a 404 for a made-up id told an analyst which ids exist),
    auditors and participants never write (a write told an auditor that a named case exists
    outside their window, where reads answer 404), a token with a time window never writes
    (a case manager's wrote to a case its window hides), and a participant reaches only the
    cases their token names (reading another first made its 404 slower than a made-up id's).
    Auditors' reads of cases not named are still looked up: their refusals are logged."""
    if who.role in _NO_CASES:
        raise Forbidden(_why(who, action))
    if who.role is Role.PARTICIPANT and case_id not in who.cases:
        raise NotVisible
    if who.role in NAMED_CASES_ROLES and action in _CHANGES:
        if case_id not in who.cases:
            raise NotVisible
        raise Forbidden(_why(who, action))
    if action in _CHANGES:
        refuse_window(who, _WINDOW_NEVER_WRITES)


def authorize_open(who: Principal, case_manager: str) -> None:
    """Case managers open cases on their own caseload; supervisors on any of the agency's."""
    if who.role not in {Role.SUPERVISOR, Role.CASE_MANAGER}:
        raise Forbidden(f"the {who.role} role does not open cases")
    refuse_window(who, _WINDOW_NEVER_WRITES)
    if who.role is Role.CASE_MANAGER and case_manager != who.sub:
        raise Forbidden("case managers open cases on their own caseload")


def authorize_listing(who: Principal, case_manager: str | None) -> str | None:
    """The case manager filter the listing must apply (None: the whole agency). A token
    limited to a time window may not list: the listing shows every case as it is now."""
    if who.role in {Role.SUPERVISOR, Role.CASE_MANAGER}:
        refuse_window(who, "the caseload listing shows them as they are now: read each case")
    if who.role is Role.SUPERVISOR:
        return case_manager
    if who.role is Role.CASE_MANAGER:
        if case_manager not in (None, who.sub):
            raise Forbidden("case managers list their own caseload")
        return who.sub
    raise Forbidden(f"the {who.role} role does not list caseloads")


def authorize_access_log(who: Principal) -> None:
    """The access log is exported by the agency's supervisors; it names who read which case."""
    if who.role is not Role.SUPERVISOR:
        raise Forbidden(f"the {who.role} role does not read the access log")
    refuse_window(who, "the access log names the cases read up to now, those it hides"
                       " included: export it with a token without a window")


def authorize_analytics(who: Principal) -> None:
    """Outcome analytics (aggregates of the agency, no personal data) are for analysts and
    supervisors."""
    if who.role not in {Role.ANALYST, Role.SUPERVISOR}:
        raise Forbidden(f"the {who.role} role does not read outcome analytics")
    refuse_window(who, "outcome analytics count the agency's cases in any period, up to"
                       " now: ask with a token without a window")


class OutsideWindow(Forbidden):
    """The principal asked for a point of the record outside its audit window (403)."""


@dataclass(frozen=True)
class WindowVersions:
    """The versions a windowed token sees: ``first`` is the plan as the window opened (0: the
    case did not exist yet), ``last`` the plan as it closed; the events in between are the ones
    recorded inside the window."""

    first: int
    last: int

    def covers(self, version: int) -> bool:
        return self.first <= version <= self.last


def point_in_window(who: Principal, versions: WindowVersions, as_of_version: int | None,
                    as_of: datetime | None) -> tuple[int | None, datetime | None]:
    """The point of the record a windowed plan read answers: the one asked for when it lies
    inside the window, otherwise refused; by default the plan as the window closed."""
    if as_of_version is not None:
        if not versions.covers(as_of_version):
            raise OutsideWindow(f"version {as_of_version} is outside your audit window, which "
                                f"covers versions {max(versions.first, 1)} to {versions.last}")
        return as_of_version, None
    if as_of is not None:
        too_early = who.window_from is not None and as_of < who.window_from
        too_late = who.window_to is not None and as_of > who.window_to
        if too_early or too_late:
            raise OutsideWindow(f"as_of is outside your audit window ({_describe_window(who)})")
        return None, as_of
    return versions.last, None


def check_diff_in_window(versions: WindowVersions, from_version: int, to_version: int) -> None:
    if not (versions.covers(from_version) and versions.covers(to_version)):
        raise OutsideWindow(f"your audit window covers versions {versions.first} to "
                            f"{versions.last}; a diff must stay between them")


def _describe_window(who: Principal) -> str:
    start = who.window_from.isoformat() if who.window_from else "the beginning"
    end = who.window_to.isoformat() if who.window_to else "now"
    return f"from {start} to {end}"


def _why(who: Principal, action: Action) -> str:
    """What the role may do instead; it depends on the role and action only, never on the
    case (auditors and participants are refused writes before the case is read)."""
    if who.role is Role.CASE_MANAGER:
        return "this case is not on your caseload; a supervisor can transfer it to you"
    if who.role in {Role.ANALYST, Role.SERVICE}:
        return f"the {who.role} role does not read individual cases"
    if who.role is Role.SUPERVISOR:
        return ("supervisors read, audit, reopen and transfer a case; its case manager writes"
                " the plan")
    if who.role is Role.AUDITOR:
        return "auditors read a case; they never change it"
    if action in _CHANGES:
        return "participants read their plan; their case manager records changes with them"
    return "participants read their own current plan; its history, diffs and exports are for staff"
