"""How the records service answers the refusals of its inner layers."""

from __future__ import annotations

import structlog
from aiohttp import web

from schemas.events import EventDecodeError
from services.common.problems import Handler, Problem
from services.records.application.access import Forbidden, NotVisible
from services.records.application.cases import PreconditionFailed, TooMuchContention
from services.records.application.queries import (
    ExportTooLarge,
    NotYetHappened,
    NotYetOpened,
    VersionOutOfRange,
)
from services.records.domain import DomainError
from services.records.store.events import IdempotencyKeyReused, OutcomeUnknown, RecordOutOfStep

log = structlog.get_logger("casetrail.records")


def _problem(error: Exception) -> Problem | None:
    match error:
        case DomainError():
            errors = [{"field": f"body.{error.field}", "message": error.detail}] \
                if error.field else []
            titles = {404: "Not found", 409: "Conflict", 422: "Invalid request"}
            return Problem(error.status, titles.get(error.status, "Bad request"), error.detail,
                           kind=error.code.replace("_", "-"), errors=errors)
        case NotVisible():
            return Problem(404, "Not found", "no such case", kind="not-found")
        case Forbidden():
            return Problem(403, "Forbidden", str(error), kind="forbidden")
        case PreconditionFailed():
            return Problem(412, "Precondition failed",
                           f"If-Match does not match: the case is at version "
                           f"{error.current_version}", kind="version-mismatch",
                           current_version=error.current_version,
                           headers={"ETag": f'"{error.current_version}"'})
        case IdempotencyKeyReused():
            return Problem(422, "Invalid request", str(error), kind="idempotency-key-reused",
                           errors=[{"field": "header.Idempotency-Key", "message": str(error)}])
        case NotYetOpened():
            return Problem(404, "Not found", str(error), kind="not-yet-opened",
                           errors=[{"field": "query.as_of", "message": str(error)}])
        case NotYetHappened():
            return Problem(422, "Invalid request", str(error), kind="as-of-in-the-future",
                           errors=[{"field": "query.as_of", "message": str(error)}])
        case VersionOutOfRange():
            return Problem(422, "Invalid request", str(error), kind="version-out-of-range",
                           current_version=error.current_version,
                           errors=[{"field": f"query.{error.parameter}",
                                    "message": str(error)}])
        case ExportTooLarge():
            return Problem(422, "Invalid request", str(error), kind="export-too-large",
                           errors=[{"field": "query.format", "message": str(error)}])
        case EventDecodeError():
            # stored data this code cannot read (an event from a newer version, say after a
            # rollback): not the caller's fault, but said plainly rather than "internal"
            return Problem(500, "Unreadable record",
                           f"this case holds an event this version of the service cannot read:"
                           f" {error}. Run the version that wrote it.",
                           kind="unreadable-event")
        case RecordOutOfStep():
            # not the caller's fault either, and no retry mends it: said, not "internal"
            return Problem(409, "Record out of step",
                           f"this case's record holds an event its head (version"
                           f" {error.head_version}) does not account for, which this service"
                           f" never writes; no write can be recorded until it is looked into."
                           f" GET /v1/cases/{error.stream_id}/verify names it.",
                           kind="record-out-of-step")
        case OutcomeUnknown():
            why = ("the database did not answer in time" if error.timed_out
                   else "the connection to the database was lost")
            return Problem(503, "Service unavailable",
                           f"{why} while this write was being recorded, so it may have been"
                           f" recorded: read the case's history before sending it again (if"
                           f" it was, it is version {error.version}). A write sent with an"
                           f" Idempotency-Key can be sent again as it is.",
                           kind="write-outcome-unknown", version_if_recorded=error.version,
                           headers={"Retry-After": "5"})
        case TooMuchContention():
            return Problem(503, "Busy", "the case kept changing; try again",
                           kind="contention", headers={"Retry-After": "1"})
    return None


# set on a removal whose reason came as ``?reason=``: a refusal of it names the query's field
REASON_IN_QUERY = web.RequestKey("reason_in_query", bool)


def _naming_the_query(problem: Problem) -> Problem:
    for error in problem.errors:
        if error.get("field") == "body.reason":
            error["field"] = "query.reason"
    return problem


@web.middleware
async def records_errors_middleware(request: web.Request,
                                    handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        if request.get(REASON_IN_QUERY):
            raise _naming_the_query(problem) from None
        raise
    except Exception as error:
        refusal = _problem(error)
        if refusal is None:
            raise
        if isinstance(error, OutcomeUnknown):  # an outage, as the 503s the shell answers are
            log.warning("database unavailable", path=request.path, error=repr(error.__cause__),
                        outcome="unknown")
        if request.get(REASON_IN_QUERY):
            _naming_the_query(refusal)
        raise refusal from error
