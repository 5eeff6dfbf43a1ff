"""The notifier API: preferences, notifications, schedule, dead-letter retry, the access log,
dev mail page.

Tenancy as in the records service: everything is scoped to the caller's agency, and a case or
notification of another agency answers 404. As there, a supervisor's reads of a case's data are
written to an access log (docs/decisions/0203).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import time
from typing import Any
from urllib.parse import unquote
from uuid import UUID

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from schemas.events import ExactUserId
from schemas.queries import AccessLogQuery
from services.common.auth import Principal, Role
from services.common.checkpoint import checkpoint_after
from services.common.http import RouteHandler, json_response, parse_body, parse_query, principal
from services.common.logs import without_addresses
from services.common.problems import REQUEST_ID_KEY, Problem
from services.notifier import mailbox
from services.notifier.http.app import api, ctx
from services.notifier.http.models import (
    AccessLogPage,
    NotificationsQuery,
    NotificationView,
    PreferencesInput,
    PreferencesQuery,
    PreferencesView,
    ScheduleQuery,
)
from services.notifier.rules import participant_recipient
from services.notifier.store import access_log, directory
from services.notifier.store import notifications as store
from services.notifier.store.access_log import Read
from services.notifier.store.cases import case_facts
from services.notifier.store.directory import PARTICIPANT, STAFF, Preferences, kind_of

# the ids the records service accepts for case managers (María López, say), percent-encoded in
# the path; it once took only visible ASCII, so such a manager could never be given an address
_USER = TypeAdapter(ExactUserId)
_NOT_FOUND = Problem(404, "Not found", "no such notification", kind="not-found")


_WINDOW_REFUSED = Problem(
    403, "Forbidden", "this token sees cases only as they were inside its time window; the"
    " notifier holds them as they are now: read the record as it was from the records"
    " service, or ask here with a token without a window", kind="forbidden")


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


def _shown(row: store.Row) -> dict[str, Any]:
    """A notification as readers get it. SMTP replies quote the address they refused, and a
    participant's own address is theirs and their supervisors' to read (preferences), not
    their case manager's: an error keeps its code and reason, never the address."""
    view = row.as_json()
    if view["last_error"]:
        view["last_error"] = without_addresses(view["last_error"])
    return view


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
        return UUID(request.match_info["notification_id"])
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


def _directory_entry(who: Principal, user: str, body: PreferencesInput,
                     stored: Preferences | None, *, own: bool) -> Preferences:
    """The entry a PUT makes (``own``: the caller's). Optional fields left out of the body
    keep their stored values (``quiet_hours: null`` clears them): a supervisor changing
    someone's address must not silently reset their role or cases."""
    given = body.model_fields_set
    role = who.role.value if own else (
        body.role or (stored.role if stored else "case_manager"))
    cases = tuple(sorted(set(body.cases))) if body.cases is not None \
        else (stored.cases if stored else ())
    if own and who.role is Role.PARTICIPANT:
        if body.cases is not None and not set(cases) <= who.cases:
            raise Problem(422, "Invalid request", "participants name only their own cases",
                          kind="validation", errors=[{"field": "body.cases",
                                                      "message": "not your case"}])
        cases = tuple(sorted(who.cases)) if body.cases is None else cases
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
    entry = _directory_entry(who, user, body, stored.get(kind), own=own)
    await directory.save(ctx(request).pool, entry, who.sub, ctx(request).clock())
    return json_response(entry.as_json())


@api.route("GET", "/v1/preferences/{user}", "read a recipient's preferences",
           query=PreferencesQuery, response=PreferencesView, tag="notifier")
@_refusing_windows
async def get_preferences(request: web.Request) -> web.Response:
    who = principal(request)
    user = _path_user(request)
    _may_manage(who, user)
    query = parse_query(request, PreferencesQuery)
    stored = await directory.entries(ctx(request).pool, who.agency, user)
    found = stored.get(_entry_kind(who, user, query.role, stored, "query.role"))
    if found is None:
        raise Problem(404, "Not found", f"no preferences for {user}", kind="not-found")
    if found.role == Role.PARTICIPANT.value:  # their address: a read of their cases
        what = f"preferences role={query.role}" if query.role else "preferences"
        await _log_read(request, "read", what, found.cases or (None,), participant=user)
    return json_response(found.as_json())


def _listing_filter(who: Principal, query: NotificationsQuery) -> store.Filter:
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
            return replace(base, recipient=participant_recipient(query.case_id))
    raise Problem(403, "Forbidden", f"the {who.role} role does not read notifications",
                  kind="forbidden")


@api.route("GET", "/v1/notifications", "notifications, filtered by recipient, case, status",
           query=NotificationsQuery, tag="notifier")
@_refusing_windows
async def list_notifications(request: web.Request) -> web.Response:
    query = parse_query(request, NotificationsQuery)
    rows = await store.list_rows(ctx(request).pool, _listing_filter(principal(request), query),
                                 limit=query.limit, offset=query.offset)
    if principal(request).reads_audited:
        asked = {"recipient": query.recipient, "status": query.status, "kind": query.kind}
        await _log_read(request, "list",
                        " ".join(["notifications", *(f"{k}={v}" for k, v in asked.items() if v)]),
                        list(dict.fromkeys(r.case_id for r in rows if r.case_id is not None)))
    return json_response({"notifications": [_shown(r) for r in rows],
                          "next_offset": query.offset + len(rows)
                          if len(rows) == query.limit else None})


def _addressed_to(who: Principal, row: store.Row) -> bool:
    """A participant's notices are addressed to their case (``participant:<case>``), a staff
    member's to their user id."""
    if who.role is Role.PARTICIPANT:
        return (row.case_id is not None and row.case_id in who.cases
                and row.recipient == participant_recipient(row.case_id))
    return row.recipient == who.sub


async def _visible_row(request: web.Request) -> store.Row:
    """The notification named in the path, if the caller may see it (else 404)."""
    who = principal(request)
    row_id = _path_id(request)
    row = await store.get_row(ctx(request).pool, row_id)
    if row is None or (who.role is not Role.SERVICE and row.agency != who.agency):
        raise _NOT_FOUND
    if who.role in (Role.SERVICE, Role.SUPERVISOR) or _addressed_to(who, row):
        return row
    if who.role is Role.CASE_MANAGER and row.case_id is not None:
        facts = await case_facts(ctx(request).pool, row.case_id)
        if facts is not None and facts["case_manager"] == who.sub:
            return row
    raise _NOT_FOUND


@api.route("GET", "/v1/notifications/{notification_id}", "one notification with its attempts",
           response=NotificationView, tag="notifier")
@_refusing_windows
async def get_notification(request: web.Request) -> web.Response:
    row = await _visible_row(request)
    await _log_read(request, "read", f"notification {row.id}",
                    [row.case_id] if row.case_id is not None else [])
    attempts = await store.attempts_of(ctx(request).pool, row.id)
    return json_response({**_shown(row), "attempt_log": _shown_attempts(attempts)})


@api.route("POST", "/v1/notifications/{notification_id}/retry",
           "send a dead letter again (same Message-ID)", tag="notifier")
@_refusing_windows
async def retry_notification(request: web.Request) -> web.Response:
    who = principal(request)
    row = await _visible_row(request)
    if who.role not in (Role.SUPERVISOR, Role.SERVICE) and not _addressed_to(who, row):
        raise Problem(403, "Forbidden", "supervisors and the recipient retry dead letters",
                      kind="forbidden")
    c = ctx(request)
    if not await store.revive_dead(c.pool, row.id, c.clock()):
        now = await store.get_row(c.pool, row.id)  # a retry racing this one may have won
        status = now.status if now is not None else row.status
        raise Problem(409, "Conflict", f"only dead notifications are retried; this one is"
                      f" {status}", kind="not-dead", status_now=status)
    c.notifier.poke()
    revived = await store.get_row(c.pool, row.id)
    assert revived is not None
    return json_response(_shown(revived), status=202)


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
                          "pending": [_shown(r) for r in rows]})


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
           tag="dev")
async def caught_mail(request: web.Request) -> web.Response:
    folder = ctx(request).settings.mail_dir
    if folder is None:
        raise Problem(404, "Not found", "no mail catcher in this deployment", kind="not-found")
    name = request.query.get("file")
    if name is not None:
        raw = "raw" in request.query
        message = (mailbox.read_caught if raw else mailbox.html_message)(folder, name)
        if message is None:
            raise Problem(404, "Not found", "no such message", kind="not-found")
        return web.Response(text=message, content_type="text/plain" if raw else "text/html")
    return web.Response(text=mailbox.html_index(folder), content_type="text/html")
