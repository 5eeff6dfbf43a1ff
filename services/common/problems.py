"""RFC 9457 problem details: every error answer of both services has this shape."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from services.common.database import DATABASE_UNAVAILABLE

PROBLEM_TYPE_BASE = "https://casetrail.dev/problems/"
log = structlog.get_logger("casetrail.http")
REQUEST_ID_KEY = web.RequestKey("request_id", str)


class Problem(Exception):
    """Raise anywhere in a handler to answer with a problem body."""

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 kind: str | None = None, errors: Sequence[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.errors = list(errors or [])
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None) -> dict[str, Any]:
        """The problem+json body; ``instance`` None leaves it out (a request whose line could
        not be read)."""
        body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + self.kind, "title": self.title,
                                "status": self.status}
        if instance is not None:
            body["instance"] = instance
        if self.detail:
            body["detail"] = self.detail
        body["errors"] = self.errors  # always a list, empty when no field is to blame
        body.update(self.extra)
        return body


def problem_response(problem: Problem, request: web.Request) -> web.Response:
    body = problem.body(request.path)
    if request_id := request.get(REQUEST_ID_KEY):
        body["request_id"] = request_id
    return web.Response(status=problem.status, text=json.dumps(body, default=str),
                        content_type="application/problem+json", headers=problem.headers)


MAX_LISTED_ERRORS = 50  # a body of 20,000 unknown keys once answered with a 2 MB list


def validation_problem(error: ValidationError, *, location: str = "body") -> Problem:
    found = error.errors(include_url=False)
    errors = [{"field": ".".join(str(p) for p in (location, *e["loc"])), "message": e["msg"],
               "code": e["type"]} for e in found[:MAX_LISTED_ERRORS]]
    detail = "one or more fields are not valid"
    if len(found) > MAX_LISTED_ERRORS:
        detail += f" ({len(found)} in all; the first {MAX_LISTED_ERRORS} are listed)"
    return Problem(422, "Invalid request", detail, kind="validation", errors=errors)


_STATUS_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
                  405: "Method not allowed", 406: "Not acceptable", 409: "Conflict",
                  412: "Precondition failed", 413: "Request body too large",
                  415: "Unsupported media type", 422: "Invalid request"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _detail_of(error: web.HTTPException, request: web.Request) -> str | None:
    """What aiohttp's own refusal says, in words: its text is only "405: Method Not Allowed",
    which the problem left out, so a 405 or a path served by no route said nothing."""
    if error.text and not error.text.startswith(str(error.status)):
        return error.text
    if isinstance(error, web.HTTPMethodNotAllowed):
        return (f"{request.method} is not taken at this path; it takes"
                f" {', '.join(sorted(error.allowed_methods))}")
    if isinstance(error, web.HTTPNotFound):
        return "nothing is served at this path; the routes are listed at /openapi.json"
    return None


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a problem body; an unexpected one is logged and hidden."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request)
    except ValidationError as error:
        return problem_response(validation_problem(error), request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        title = _STATUS_TITLES.get(error.status, error.reason)
        headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        return problem_response(Problem(error.status, title, _detail_of(error, request),
                                        headers=headers), request)
    except DATABASE_UNAVAILABLE as error:
        log.warning("database unavailable", path=request.path, error=repr(error))
        # a timeout is a statement unanswered: the server hung, or a lock held long (a
        # projection rebuild), not necessarily unreachable
        why = ("the database did not answer in time" if isinstance(error, TimeoutError)
               else "the database cannot be reached")
        return problem_response(Problem(503, "Service unavailable", f"{why}; try again shortly",
                                        kind="database-unavailable",
                                        headers={"Retry-After": "5"}), request)
    except Exception:
        log.exception("unhandled error", path=request.path, method=request.method)
        return problem_response(Problem(500, "Internal error",
                                        "the error was logged; please report the request_id",
                                        kind="internal"), request)
