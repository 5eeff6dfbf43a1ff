"""The notifier API: preferences, notifications, schedule, dead-letter retry, the access log,
a participant's one-click unsubscribe link, dev mail page.

Tenancy as in the records service: everything is scoped to the caller's agency, and a case or
notification of another agency answers 404. As there, a supervisor's reads of a case's data are
written to an access log (docs/decisions/0203).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, time, timedelta
from typing import Any, NoReturn
from urllib.parse import quote, unquote
from uuid import UUID

import asyncpg
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import TypeAdapter, ValidationError

from schemas.events import ExactUserId, uuid_from_text
from schemas.queries import AccessLogQuery
from services.common.auth import WINDOW_SEES_THE_PAST, Principal, Role
from services.common.checkpoint import checkpoint_after
from services.common.http import (
    RouteHandler,
    json_response,
    parse_body,
    parse_query,
    principal,
)
from services.common.logs import without_addresses
from services.common.problems import REQUEST_ID_KEY, Problem
from services.notifier import mailbox
from services.notifier.delivery import DatedTiming, expected_send, waits_for_its_moment
from services.notifier.http import pages
from services.notifier.http.app import api, ctx
from services.notifier.http.models import (
    AccessLogPage,
    CaughtMailQuery,
    NotificationsQuery,
    NotificationView,
    PreferencesInput,
    PreferencesQuery,
    PreferencesView,
    ScheduleQuery,
)
from services.notifier.links import UNSUBSCRIBE_PATH
from services.notifier.rules import participant_recipient
from services.notifier.store import access_log, directory
from services.notifier.store import notifications as store
from services.notifier.store.access_log import Read
from services.notifier.store.cases import case_facts
from services.notifier.store.directory import PARTICIPANT, STAFF, Preferences, kind_of

# the ids the records service accepts for case managers (María López, say), percent-encoded in
# the path; it once took only visible ASCII, so such a manager could never be given an address
_USER = TypeAdapter(ExactUserId)
log = structlog.get_logger("casetrail.notifier.http")
_NOT_FOUND = Problem(404, "Not found", "no such notification", kind="not-found")


_WINDOW_REFUSED = Problem(
    403, "Forbidden", f"{WINDOW_SEES_THE_PAST}; the notifier holds them as they are now: read"
    " the record as it was from the records service, or ask here with a token without a"
    " window", kind="forbidden")


def _refusing_windows(handler: RouteHandler) -> RouteHandler:
    """Everything the notifier answers shows cases as they are now (their notices, schedule,
    directory, who read them), so a token with a time window (decision 0006) is refused
    from the token alone, before anything is looked up: the answer is the same for a case
    its window hides and for one that does not exist."""
    @functools.wraps(handler)
    async def refusing(request: web.Request) -> web.StreamResponse:
        if principal(request).has_window:
            raise _WINDOW_REFUSED
        return await handler(request)
    return refusing


def _shown(row: store.Row, deliver_after: datetime | None = None) -> dict[str, Any]:
    """A notification as readers get it. SMTP replies quote the address they refused, and a
    participant's own address is theirs and their supervisors' to read (preferences), not
    their case manager's: an error keeps its code and reason, never the address."""
    view = row.as_json()
    if view["last_error"]:
        view["last_error"] = without_addresses(view["last_error"])
    if deliver_after is not None:
        view["deliver_after"] = deliver_after.isoformat()
    return view


async def _shown_with_times(request: web.Request,
                            rows: Sequence[store.Row]) -> list[dict[str, Any]]:
    """The rows as readers get them, each waiting one with when it is to go to its reader
    (``expected_send``): a dated notice goes at 09:00 where its reader is, not at its due
    time in the schedule's zone."""
    c = ctx(request)
    readers = await directory.users(c.pool, {(r.agency, r.recipient) for r in rows
                                             if waits_for_its_moment(r)})
    timing = DatedTiming.of(c.settings)
    return [_shown(r, expected_send(r, readers.get((r.agency, r.recipient)), timing))
            for r in rows]


def _shown_attempts(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**a, "error": without_addresses(a["error"]) if a["error"] else a["error"]}
            for a in attempts]


def _path_user(request: web.Request) -> str:
    try:
        # decoded strictly from the raw path: the router leaves a byte that is not UTF-8
        # (x%FFy) as the text "%FF", which is then another user's id (x%25FFy)
        user = unquote(request.rel_url.raw_parts[-1], errors="strict")
        return _USER.validate_python(user)
    except (ValidationError, UnicodeDecodeError) as error:
        raise Problem(400, "Bad request", "user must be a user id of 1-200 characters"
                      " (percent-encoded), without surrounding spaces or control characters",
                      kind="bad-id", errors=[{"field": "path.user", "message": "invalid"}]
                      ) from error


def _path_id(request: web.Request) -> UUID:
    try:
        return uuid_from_text(request.match_info["notification_id"])
    except ValueError as error:
        raise Problem(400, "Bad request", "notification_id must be a UUID", kind="bad-id",
                      errors=[{"field": "path.notification_id", "message": "not a UUID"}]
                      ) from error


async def _log_read(request: web.Request, action: str, what: str,
                    case_ids: Sequence[UUID | None], participant: str | None = None) -> None:
    """An audited reader's read, one entry per case it showed (none: nothing to log)."""
    who = principal(request)
    if who.reads_audited:
        c = ctx(request)
        await access_log.record_read(c.pool, Read(
            c.clock(), who.agency, who.sub, who.role.value, action, what,
            request.get(REQUEST_ID_KEY), participant), case_ids)


_NO_MAIL_ROLES = (Role.SERVICE, Role.AUDITOR, Role.ANALYST)
_SCHEDULE_READERS = Problem(403, "Forbidden", "the case manager and supervisors read the"
                            " schedule", kind="forbidden")


def _may_manage(who: Principal, user: str) -> None:
    if who.role in _NO_MAIL_ROLES:
        raise Problem(403, "Forbidden", f"the notifier sends nothing to the {who.role} role,"
                      " so it keeps no preferences for it", kind="forbidden")
    if who.sub != user and who.role is not Role.SUPERVISOR:
        raise Problem(403, "Forbidden", "you may read and set your own preferences;"
                      " supervisors those of their agency", kind="forbidden")


def _entry_kind(who: Principal, user: str, role: str | None, stored: dict[str, Preferences],
                field: str) -> str:
    """Which of the user id's entries (a staff member's, a participant's) a request is about:
    the caller's own, of their token's kind (its role cannot be changed); for a supervisor,
    the one ``role`` names, else the one stored (the staff one when there are both)."""
    if who.sub == user and not (who.role is Role.SUPERVISOR and role == Role.PARTICIPANT):
        if role is not None and role != who.role.value:
            raise Problem(422, "Invalid request", "your role comes from your token",
                          kind="validation", errors=[{"field": field,
                                                      "message": f"your role is {who.role}"}])
        return kind_of(who.role.value)
    if role is not None:
        return kind_of(role)
    return PARTICIPANT if PARTICIPANT in stored and STAFF not in stored else STAFF


def _own_role(who: Principal, stored: Preferences | None) -> str:
    """The role of the caller's own entry: their token's, but a supervisor stays one with
    the case_manager token they write their own cases with (0004); only a supervisor
    changes a role. That token took them off the supervisors' overdue notices."""
    if who.role is Role.CASE_MANAGER and stored is not None \
            and stored.role == Role.SUPERVISOR.value:
        return stored.role
    return who.role.value


def _first_role(kind: str) -> str:
    """The role of a first entry of ``kind`` whose body names none. The kind was chosen from
    the entries read before the PUT's transaction: one removed meanwhile left a participant
    entry to be made as a case manager's, refused as another's (a 500)."""
    return Role.PARTICIPANT.value if kind == PARTICIPANT else Role.CASE_MANAGER.value


def _directory_entry(who: Principal, user: str, body: PreferencesInput,
                     stored: Preferences | None, *, own: bool, kind: str) -> Preferences:
    """The entry a PUT makes (``own``: the caller's). Optional fields left out of the body
    keep their stored values (``quiet_hours: null`` clears them): a supervisor changing
    someone's address must not silently reset their role or cases."""
    given = body.model_fields_set
    role = _own_role(who, stored) if own else (
        body.role or (stored.role if stored else _first_role(kind)))
    cases = tuple(sorted(set(body.cases))) if body.cases is not None \
        else (stored.cases if stored else ())
    if own and who.role is Role.PARTICIPANT:
        if body.cases is not None and not set(cases) <= who.cases:
            raise Problem(422, "Invalid request", "participants name only their own cases",
                          kind="validation", errors=[{"field": "body.cases",
                                                      "message": "not your case"}])
        # left out: the cases they chose before (a change of quiet hours put back a case they
        # had left out); a first entry, or one naming none, takes their token's
        if body.cases is None and not cases:
            cases = tuple(sorted(who.cases))
    if role == Role.PARTICIPANT.value and not cases:  # nothing could ever be sent to it
        raise Problem(422, "Invalid request", "a participant's preferences name the cases"
                      " they belong to: they hear of those cases' milestones",
                      kind="validation", errors=[{"field": "body.cases",
                                                  "message": "name at least one case"}])
    if role == Role.PARTICIPANT.value and body.delivery == "daily_digest":
        raise Problem(422, "Invalid request", "participants hear of each milestone as it"
                      " happens; daily digests are for staff", kind="validation",
                      errors=[{"field": "body.delivery", "message": "use immediate"}])
    quiet: tuple[time | None, time | None]
    if "quiet_hours" in given:
        quiet = body.quiet_hours.times() if body.quiet_hours else (None, None)
    else:
        quiet = (stored.quiet_start, stored.quiet_end) if stored else (None, None)
    return Preferences(who.agency, user, role, body.email, body.delivery, body.timezone,
                       quiet[0], quiet[1], body.celebrations, cases)


@api.route("PUT", "/v1/preferences/{user}", "set a recipient's preferences (own; supervisors:"
           " their agency's)", body=PreferencesInput, response=PreferencesView,
           tag="notifier")
@_refusing_windows
async def put_preferences(request: web.Request) -> web.Response:
    who = principal(request)
    user = _path_user(request)
    _may_manage(who, user)
    body = await parse_body(request, PreferencesInput)
    stored = await directory.entries(ctx(request).pool, who.agency, user)
    kind = _entry_kind(who, user, body.role, stored, "body.role")
    own = who.sub == user and kind == kind_of(who.role.value)
    entry_of = functools.partial(_directory_entry, who, user, body, own=own, kind=kind)
    entry_of(stored.get(kind))  # refused here when it can be, before any lock is taken
    # made again of the entry as locked: one read before may have changed since (0203)
    c = ctx(request)
    try:
        saved = await directory.save(c.pool, (who.agency, kind, user), entry_of, who.sub,
                                     c.clock(),
                                     recent=timedelta(hours=c.settings.stale_after_hours))
    except directory.CaseOnAnotherEntry as error:
        raise _case_elsewhere(who, error) from error
    if saved.dead_letters_rescheduled:
        log.info("dead_letters_rescheduled", user=user, count=saved.dead_letters_rescheduled)
    if saved.milestones_rescheduled or saved.dead_letters_rescheduled:
        c.notifier.poke()
    await _log_participant_entry_read(request, saved.entry)  # the answer shows it whole
    return json_response(saved.entry.as_json())


def _case_elsewhere(who: Principal, error: directory.CaseOnAnotherEntry) -> Problem:
    """A participant is not told whose entry holds their case: that is another person's id."""
    if who.role is Role.PARTICIPANT:
        detail = ("your case's milestones already go to another person's preferences, so"
                  " they cannot come to you too: ask your case manager to put it right")
    else:
        detail = (f"{error}: a case's milestones reach one participant; take it off that"
                  f" entry first (PUT it without the case, or DELETE"
                  f" /v1/preferences/{quote(error.user_id, safe='')}?role=participant)")
    return Problem(409, "Conflict", detail, kind="case-on-another-entry")


@api.route("DELETE", "/v1/preferences/{user}", "take a recipient out of the directory (own;"
           " supervisors: their agency's)", query=PreferencesQuery, status=204, tag="notifier")
@_refusing_windows
async def delete_preferences(request: web.Request) -> web.Response:
    who, key, _, _ = await _entry_asked_for(request)
    c = ctx(request)
    removed = await directory.remove(c.pool, key, c.clock())
    if removed is None:
        raise _no_entry(key)
    log.info("preferences_removed", user=removed.user_id, role=removed.role, by=who.sub,
             by_role=who.role.value)
    return web.Response(status=204)


async def _entry_asked_for(request: web.Request) -> tuple[
        Principal, directory.EntryKey, Preferences | None, PreferencesQuery]:
    """The entry a GET or DELETE names (its key, and the entry as stored, if any), once the
    caller may manage it."""
    who = principal(request)
    user = _path_user(request)
    _may_manage(who, user)
    query = parse_query(request, PreferencesQuery)
    stored = await directory.entries(ctx(request).pool, who.agency, user)
    kind = _entry_kind(who, user, query.role, stored, "query.role")
    return who, (who.agency, kind, user), stored.get(kind), query


def _no_entry(key: directory.EntryKey) -> Problem:
    return Problem(404, "Not found", f"no preferences for {key[2]}", kind="not-found")


@api.route("GET", "/v1/preferences/{user}", "read a recipient's preferences",
           query=PreferencesQuery, response=PreferencesView, tag="notifier")
@_refusing_windows
async def get_preferences(request: web.Request) -> web.Response:
    _, key, found, query = await _entry_asked_for(request)
    if found is None:
        raise _no_entry(key)
    await _log_participant_entry_read(
        request, found, f"preferences role={query.role}" if query.role else "preferences")
    return json_response(found.as_json())


async def _log_participant_entry_read(request: web.Request, entry: Preferences,
                                      what: str = "preferences") -> None:
    """A participant's entry shown to an audited reader is a read of their cases: their
    address, and the cases it names (a supervisor's PUT answers the stored ones too)."""
    if entry.role == Role.PARTICIPANT.value:
        await _log_read(request, "read", what, entry.cases or (None,),
                        participant=entry.user_id)


# A participant's one-click unsubscribe link (RFC 8058; links.py, 0203). No token: it is
# followed from a mail. The link names one participant entry and is signed; any other is 404.

_LINK_NOT_VALID = ("this unsubscribe link is not valid: it may have been copied only in part,"
                   " or the preferences it names no longer exist; ask your case manager to stop"
                   " these emails")
_ONE_CLICK = ("List-Unsubscribe", "One-Click")
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
_UNSUBSCRIBE = UNSUBSCRIBE_PATH + "{token}"


class _EntryGone(LookupError):
    """The entry a link names was removed while the request ran."""


async def _linked_entry(request: web.Request) -> Preferences | None:
    """The participant entry the link names, if this notifier signed it and it still exists
    (only that agency's entries are looked at)."""
    c = ctx(request)
    named = c.links.entry(request.match_info["token"]) if c.links is not None else None
    if named is None:
        return None
    return (await directory.entries(c.pool, named.agency, named.user_id)).get(PARTICIPANT)


def _not_valid(request: web.Request) -> web.Response:
    """404: a page for a browser, else a problem (a mail provider's POST, a script)."""
    if pages.prefers_html(",".join(request.headers.getall("Accept", ()))):
        return pages.not_valid()
    raise Problem(404, "Not found", _LINK_NOT_VALID, kind="not-found")


async def _one_click_form(request: web.Request) -> None:
    """The body of an unsubscribe POST: the one-click form, or an empty one (the page's)."""
    if not request.body_exists:
        return
    if request.content_type not in _FORMS:
        raise Problem(415, "Unsupported media type", "send List-Unsubscribe=One-Click as a"
                      " form (application/x-www-form-urlencoded), or no body",
                      kind="unsupported-media-type")
    try:
        fields = list((await request.post()).items())
    # LookupError: an unknown charset; RuntimeError: aiohttp's multipart reader on an unknown
    # Content-Transfer-Encoding (it answered 500)
    except (ValueError, LookupError, RuntimeError, RequestPayloadError) as error:
        raise Problem(400, "Bad request", f"the form could not be read: {error}",
                      kind="malformed-body") from error
    if fields not in ([], [_ONE_CLICK]):
        raise Problem(400, "Bad request", "the form holds List-Unsubscribe=One-Click and"
                      " nothing else (RFC 8058), or nothing", kind="malformed-body",
                      errors=[{"field": "body", "message": "not the one-click form"}])


def _celebrations_off(stored: Preferences | None) -> Preferences:
    if stored is None:
        raise _EntryGone
    return replace(stored, celebrations=False)


@api.route("GET", _UNSUBSCRIBE, "a participant's unsubscribe link, opened: a page with a"
           " button that confirms (changes nothing)", public=True, tag="notifier",
           media_types=("text/html",), pages_for_browsers=True)
async def unsubscribe_page(request: web.Request) -> web.Response:
    entry = await _linked_entry(request)
    if entry is None:
        return _not_valid(request)
    return pages.confirm() if entry.celebrations else pages.already_off()


@api.route("POST", _UNSUBSCRIBE, "a participant's unsubscribe link, confirmed (one click,"
           " RFC 8058): celebrations off for that participant", public=True, tag="notifier",
           media_types=("text/html",), form=True, pages_for_browsers=True)
async def unsubscribe(request: web.Request) -> web.Response:
    """As a PUT turning celebrations off (``directory.save``: what waits for them is decided
    afresh), recorded as updated by the participant through the link. A second one answers
    the same and writes nothing."""
    entry = await _linked_entry(request)
    if entry is None:
        return _not_valid(request)
    await _one_click_form(request)
    if entry.celebrations:
        c = ctx(request)
        try:
            await directory.save(c.pool, (entry.agency, PARTICIPANT, entry.user_id),
                                 _celebrations_off, f"{entry.user_id} (unsubscribe link)",
                                 c.clock(), recent=timedelta(hours=c.settings.stale_after_hours))
        except _EntryGone:
            return _not_valid(request)
    return pages.done()


_NOTIFICATION_READERS = (Role.SERVICE, Role.SUPERVISOR, Role.CASE_MANAGER, Role.PARTICIPANT)


def _listing_filter(who: Principal, query: NotificationsQuery) -> store.Filter | None:
    """What the caller may list under ``query``; None when no notice can match (a participant
    naming another recipient: none of the participant's notices is theirs)."""
    _refuse_non_readers(who)
    base = store.Filter(who.agency, query.recipient, query.case_id, query.status, query.kind)
    match who.role:
        case Role.SERVICE:
            return replace(base, agency=None)
        case Role.SUPERVISOR:
            return base
        case Role.CASE_MANAGER:
            return replace(base, visible_to_manager=who.sub)
        case Role.PARTICIPANT:
            if query.case_id is None or query.case_id not in who.cases:
                raise Problem(422, "Invalid request", "participants list by one of their cases",
                              kind="validation", errors=[{"field": "query.case_id",
                                                          "message": "name your case"}])
            own = participant_recipient(query.case_id)
            return replace(base, recipient=own) if query.recipient in (None, own) else None
    raise AssertionError(f"{who.role} reads notifications but has no listing")


def _refuse_non_readers(who: Principal) -> None:
    """403 for a role that reads no notification (an analyst reads aggregates only),
    decided from the token before any row is looked up, as the records service refuses such
    a role a case."""
    if who.role not in _NOTIFICATION_READERS:
        raise Problem(403, "Forbidden", f"the {who.role} role does not read notifications",
                      kind="forbidden")


@api.route("GET", "/v1/notifications", "notifications, filtered by recipient, case, status",
           query=NotificationsQuery, tag="notifier")
@_refusing_windows
async def list_notifications(request: web.Request) -> web.Response:
    query = parse_query(request, NotificationsQuery)
    listed = _listing_filter(principal(request), query)
    rows = [] if listed is None else await store.list_rows(
        ctx(request).pool, listed, limit=query.limit, offset=query.offset)
    if principal(request).reads_audited:
        asked = {"recipient": query.recipient, "status": query.status, "kind": query.kind}
        await _log_read(request, "list",
                        " ".join(["notifications", *(f"{k}={v}" for k, v in asked.items() if v)]),
                        list(dict.fromkeys(r.case_id for r in rows if r.case_id is not None)))
    return json_response({"notifications": await _shown_with_times(request, rows),
                          "next_offset": query.offset + len(rows)
                          if len(rows) == query.limit else None})


def _addressed_to(who: Principal, row: store.Row) -> bool:
    """A participant's notices are addressed to their case (``participant:<case>``), a staff
    member's to their user id: only a notice to one person (a user id may spell a group's
    recipient, ``supervisors``, or a participant's)."""
    if who.role is Role.PARTICIPANT:
        return (row.case_id is not None and row.case_id in who.cases
                and row.recipient == participant_recipient(row.case_id))
    return row.recipient == who.sub and row.recipient_role in store.TO_ONE_STAFF_MEMBER


async def _visible_row(request: web.Request) -> store.Row:
    """The notification named in the path, if the caller may see it (else 404)."""
    who = principal(request)
    row = await _agency_row(request)
    if _sees_as_reader(who, row):
        return row
    # the case is read only when it decides: a case manager sees the notices of their cases
    if who.role is Role.CASE_MANAGER and _manages(who, await _facts_of(request, row)):
        return row
    raise _NOT_FOUND


async def _agency_row(request: web.Request) -> store.Row:
    """The notification named in the path, if it is of the caller's agency (else 404)."""
    who = principal(request)
    _refuse_non_readers(who)
    # the service role serves every agency; any other reads only its own agency's rows
    agency = None if who.role is Role.SERVICE else who.agency
    row = await store.get_row(ctx(request).pool, _path_id(request), agency)
    if row is None:
        raise _NOT_FOUND
    return row


async def _facts_of(request: web.Request, row: store.Row) -> asyncpg.Record | None:
    return await case_facts(ctx(request).pool, row.case_id) if row.case_id is not None else None


def _sees_as_reader(who: Principal, row: store.Row) -> bool:
    return who.role in (Role.SERVICE, Role.SUPERVISOR) or _addressed_to(who, row)


def _manages(who: Principal, facts: asyncpg.Record | None) -> bool:
    return (who.role is Role.CASE_MANAGER and facts is not None
            and facts["case_manager"] == who.sub)


@api.route("GET", "/v1/notifications/{notification_id}", "one notification with its attempts",
           response=NotificationView, tag="notifier")
@_refusing_windows
async def get_notification(request: web.Request) -> web.Response:
    row = await _visible_row(request)
    await _log_read(request, "read", f"notification {row.id}",
                    [row.case_id] if row.case_id is not None else [])
    attempts = await store.attempts_of(ctx(request).pool, row.id)
    [shown] = await _shown_with_times(request, [row])
    return json_response({**shown, "attempt_log": _shown_attempts(attempts)})


@api.route("POST", "/v1/notifications/{notification_id}/retry",
           "send a dead letter again (same Message-ID)", status=202, tag="notifier")
@_refusing_windows
async def retry_notification(request: web.Request) -> web.Response:
    who = principal(request)
    row = await _agency_row(request)
    # the case read once: it decides who may see and retry the notice
    facts = await _facts_of(request, row)
    if not (_sees_as_reader(who, row) or _manages(who, facts)):
        raise _NOT_FOUND
    if not _may_retry(who, row, facts):
        raise Problem(403, "Forbidden", "supervisors, the recipient and the case's manager (of"
                      " a notice to its case manager) retry dead letters", kind="forbidden")
    # the answer shows the notification (or, refused, its status): a read like its GET's
    await _log_read(request, "read", f"notification {row.id} retry",
                    [row.case_id] if row.case_id is not None else [])
    c = ctx(request)
    revived = await store.revive_dead(c.pool, row.id, c.clock())
    if isinstance(revived, store.NotRevived):
        _refuse(revived, row)
    c.notifier.poke()
    return json_response(_shown(revived), status=202)


def _refuse(not_revived: store.NotRevived, row: store.Row) -> NoReturn:
    """The retry's refusal, as ``revive_dead`` found the notification under its locks."""
    match not_revived.why:
        case store.CASE_CLOSED:
            raise Problem(409, "Conflict", "the case is closed: its notices were cancelled when"
                          " it closed, and this one is not sent again", kind="case-closed")
        case store.TRANSFERRED_ON:
            # a handover is its reader's only while they hold the case; the case manager now
            # is not named: the caller may be the one who left
            raise Problem(409, "Conflict", f"the case has been transferred on since: this"
                          f" handover to {row.recipient} is not sent", kind="transferred-on")
        case store.TAKEN_BACK:
            raise Problem(409, "Conflict", "what it celebrates was taken back since: this"
                          f" {row.kind.replace('_', ' ')} is not sent", kind="taken-back")
    if not_revived.status is None:
        raise _NOT_FOUND
    raise Problem(409, "Conflict", f"only dead notifications are retried; this one is"
                  f" {not_revived.status}", kind="not-dead", status_now=not_revived.status)


def _may_retry(who: Principal, row: store.Row, facts: asyncpg.Record | None) -> bool:
    """A notice to the case manager goes, retried, to the case's manager now (after a
    transfer: not to the one who left), so they may retry it too; they were refused."""
    return _sees_as_reader(who, row) or (row.recipient_role == "case_manager"
                                         and _manages(who, facts))


@api.route("GET", "/v1/schedule", "what is still to be sent for a case, and when",
           query=ScheduleQuery, tag="notifier")
@_refusing_windows
async def case_schedule(request: web.Request) -> web.Response:
    who = principal(request)
    query = parse_query(request, ScheduleQuery)
    # decided from the token before the case is looked up, as records does (0004): a case a
    # participant's or auditor's token does not name is 404 whether or not it exists
    if who.role in (Role.PARTICIPANT, Role.AUDITOR) and query.case_id not in who.cases:
        raise Problem(404, "Not found", "no such case", kind="not-found")
    if who.role not in (Role.SUPERVISOR, Role.CASE_MANAGER):
        raise _SCHEDULE_READERS
    facts = await case_facts(ctx(request).pool, query.case_id)
    if facts is None or facts["agency"] != who.agency:
        raise Problem(404, "Not found", "no such case", kind="not-found")
    if who.role is Role.CASE_MANAGER and facts["case_manager"] != who.sub:
        raise _SCHEDULE_READERS
    await _log_read(request, "read", "schedule", [query.case_id])
    rows = await store.list_rows(ctx(request).pool, store.Filter(
        who.agency, case_id=query.case_id, pending_only=True), limit=500)
    return json_response({"case_id": str(query.case_id), "case_manager": facts["case_manager"],
                          "status": facts["status"],
                          "pending": await _shown_with_times(request, rows)})


@api.route("GET", "/v1/access-log", "who read which case's data here (supervisors, own"
           " agency)", query=AccessLogQuery, response=AccessLogPage, tag="notifier")
@_refusing_windows
async def read_access_log(request: web.Request) -> web.Response:
    """As records' access log: supervisors only, their agency's entries, in commit order;
    reading it is not itself a read of a case. A page that caught up also says what an open
    transaction still holds back, so that it is not taken for the whole log."""
    who = principal(request)
    query = parse_query(request, AccessLogQuery)
    if who.role is not Role.SUPERVISOR:
        raise Problem(403, "Forbidden", f"the {who.role} role does not read the access log",
                      kind="forbidden")
    after = checkpoint_after(query.after)
    page = await access_log.read_page(ctx(request).pool, agency=who.agency,
                                      case_id=query.case_id, after=after, limit=query.limit)
    since = page["held_back_since"]
    return json_response({**page, "held_back_since": since.isoformat() if since else None})


@api.route("GET", "/mail", "development only: the mail the local catcher caught", public=True,
           tag="dev", query=CaughtMailQuery, media_types=("text/html", "text/plain"))
async def caught_mail(request: web.Request) -> web.Response:
    folder = ctx(request).settings.mail_dir
    if folder is None:
        raise Problem(404, "Not found", "no mail catcher in this deployment", kind="not-found")
    query = parse_query(request, CaughtMailQuery)
    if query.file is not None:
        raw = query.raw is not None
        message = (mailbox.read_caught if raw else mailbox.html_message)(folder, query.file)
        if message is None:
            raise Problem(404, "Not found", "no such message", kind="not-found")
        return web.Response(text=message, content_type="text/plain" if raw else "text/html")
    return web.Response(text=mailbox.html_index(folder), content_type="text/html")
