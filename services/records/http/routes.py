"""The plan API: each write is one line in WRITES; reads are small handlers below.

Handlers are thin: parse, call the application, answer. Authorization and the rules live in
the application and domain layers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4, uuid5

import structlog
from aiohttp import web
from pydantic import BaseModel

from schemas import api
from schemas.events import uuid_from_text
from schemas.queries import (
    AccessLogQuery,
    CaseloadQuery,
    DiffQuery,
    ExportQuery,
    HistoryQuery,
    OutcomesQuery,
    PlanQuery,
    RemovalQuery,
)
from services.common.checkpoint import checkpoint_after
from services.common.http import (
    json_response,
    labelled,
    parse_body,
    parse_json_bytes,
    parse_query,
    principal,
)
from services.common.problems import REQUEST_ID_KEY, Problem
from services.records.application.cases import WriteRequest
from services.records.domain import commands as cmd
from services.records.export.formats import ExportFormat
from services.records.http.app import api as registry
from services.records.http.app import records
from services.records.http.errors import REASON_IN_QUERY
from services.records.store.events import IdempotencyClaim

log = structlog.get_logger("casetrail.records")

_IDEMPOTENCY_NAMESPACE = UUID("5b8f3c1e-6d0a-4c47-9a8e-2f1b7c9d4e60")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
# the strong tag the case answers with, or its bare number; a weak one (W/"3") is read too,
# but If-Match compares strongly (RFC 9110 13.1.1), so it never matches: 412
_ETAG = re.compile(r'^(W/)?"?([0-9]{1,9})"?$')
_NO_VERSION = -1  # what a weak tag is compared as
_TRACE_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def path_id(request: web.Request, name: str) -> UUID:
    raw = request.match_info[name]
    try:
        return uuid_from_text(raw)
    except ValueError as error:
        raise Problem(400, "Bad request", f"{name} must be a UUID", kind="bad-id",
                      errors=[{"field": f"path.{name}", "message": "not a UUID"}]) from error


def if_match(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    match = _ETAG.match(header.strip())
    if match is None:
        raise Problem(400, "Bad request", 'If-Match must be a case version such as "3"',
                      kind="bad-if-match", errors=[{"field": "header.If-Match",
                                                    "message": "not a version"}])
    return _NO_VERSION if match.group(1) else int(match.group(2))


def trace_id(request: web.Request, header: str) -> str | None:
    """X-Correlation-Id / X-Causation-Id, recorded in the events' metadata when given."""
    value = request.headers.get(header)
    if value is None:
        return None
    if not _TRACE_ID.match(value):
        raise Problem(400, "Bad request", f"{header} must be 1-200 visible characters",
                      kind="bad-trace-id", errors=[{"field": f"header.{header}",
                                                    "message": "invalid"}])
    return value


@dataclass(frozen=True)
class NewIds:
    """Ids for created items: derived from the Idempotency-Key when there is one, so a retried
    request answers with the same ids as the original."""

    claim: IdempotencyClaim | None

    def new(self, slot: int = 0) -> UUID:
        if self.claim is None:
            return uuid4()
        return uuid5(_IDEMPOTENCY_NAMESPACE, f"{self.claim.scope}\n{self.claim.key}\n{slot}")


def idempotency(request: web.Request, body: BaseModel) -> IdempotencyClaim | None:
    """The request's idempotency claim. Its fingerprint is of the validated body (the fields
    sent, in the model's order), so a retry that re-encodes the same JSON is the same
    request; an explicit null still differs from a field left out (PATCH)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise Problem(400, "Bad request", "Idempotency-Key must be 1-200 visible characters",
                      kind="bad-idempotency-key",
                      errors=[{"field": "header.Idempotency-Key", "message": "invalid"}])
    who = principal(request)
    canonical = body.model_dump_json(exclude_unset=True)
    fingerprint = hashlib.sha256(
        f"{request.method} {_canonical_path_qs(request)}\n{canonical}".encode()).hexdigest()
    return IdempotencyClaim(idempotency_scope(who.agency, who.sub), key, fingerprint)


def _canonical_path_qs(request: web.Request) -> str:
    """``request.path_qs`` (the decoded path and the query as sent) with each id as the
    service reads it (``str(UUID(...))``): a retry spelling the case id in capitals, which
    addresses the same case, was refused as another write under the same key. Lower-case ids
    read as spelled, so fingerprints recorded before still match."""
    path = "/".join(_canonical_segment(segment) for segment in request.path.split("/"))
    query = request.rel_url.raw_query_string
    return f"{path}?{query}" if query else path


def _canonical_segment(segment: str) -> str:
    if len(segment) < 32:  # no UUID is shorter: the path's words are not parsed
        return segment
    try:
        return str(uuid_from_text(segment))
    except ValueError:
        return segment


def idempotency_scope(agency: str, sub: str) -> str:
    """Whose keys these are, as ``agency:sub`` with ``%`` and ``:`` escaped in each part: agency
    ``a:b`` with sub ``c`` and agency ``a`` with sub ``b:c`` once shared a scope, and the second
    was handed the first one's case. Names without either character read as before."""
    def part(name: str) -> str:
        return name.replace("%", "%25").replace(":", "%3A")
    return f"{part(agency)}:{part(sub)}"


Build = Callable[[web.Request, Any, NewIds], cmd.AnyCommand]


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.method == "DELETE" and not request.can_read_body:
        query = parse_query(request, RemovalQuery)
        if query.reason:
            request[REASON_IN_QUERY] = True
        return parse_json_bytes(json.dumps({"reason": query.reason}).encode()
                                if query.reason else b"{}", model)
    if request.method == "DELETE" and request.query:
        raise Problem(400, "Bad request", "give the reason in the body or ?reason=, not both",
                      kind="bad-query")
    return await parse_body(request, model)


def write(method: str, path: str, summary: str, body: type[BaseModel], build: Build,
          *, status: int = 200) -> None:
    """Register one write operation: parse → command → execute → answer."""
    async def handler(request: web.Request) -> web.Response:
        parsed = await _body(request, body)
        claim = idempotency(request, parsed)
        ids = NewIds(claim)
        command = build(request, parsed, ids)
        case_id = ids.new(1000) if isinstance(command, cmd.OpenCase) \
            else path_id(request, "case_id")
        request_id = request.get(REQUEST_ID_KEY)
        outcome = await records(request).commands.execute(WriteRequest(
            case_id, command, principal(request), if_match(request), claim, request_id,
            trace_id(request, "X-Correlation-Id"), trace_id(request, "X-Causation-Id")))
        headers = {"ETag": f'"{outcome.version}"'}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        else:
            for event in outcome.events:
                labelled(records(request).metrics.events_appended, event.type).inc()
        if status == 201:
            headers["Location"] = f"/v1/cases/{outcome.case_id}"
        return json_response(outcome.as_view(), status=status, headers=headers)

    handler.__name__ = re.sub(r"\W+", "_", f"{method.lower()}_{summary}").strip("_")
    registry.route(method, path, summary, body=body, response=api.WriteResult, status=status,
                   query=RemovalQuery if method == "DELETE" else None)(handler)


CASE = "/v1/cases/{case_id}"


def _id(request: web.Request, name: str) -> UUID:
    return path_id(request, name)


write("POST", "/v1/cases", "open a case", api.OpenCase,
      lambda r, b, ids: cmd.OpenCase(agency=principal(r).agency, body=b), status=201)
write("PATCH", f"{CASE}/participant", "update participant details", api.UpdateParticipant,
      lambda r, b, ids: cmd.UpdateParticipantDetails(body=b))
write("POST", f"{CASE}/strengths", "record a strength", api.StrengthInput,
      lambda r, b, ids: cmd.RecordStrength(ids.new(), b), status=201)
write("PATCH", f"{CASE}/strengths/{{strength_id}}", "revise a strength", api.StrengthRevision,
      lambda r, b, ids: cmd.ReviseStrength(_id(r, "strength_id"), b))
write("DELETE", f"{CASE}/strengths/{{strength_id}}", "remove a strength (reason)",
      api.RemovalReason, lambda r, b, ids: cmd.RemoveStrength(_id(r, "strength_id"), b))
write("POST", f"{CASE}/goals", "set a goal", api.GoalInput,
      lambda r, b, ids: cmd.SetGoal(ids.new(), b), status=201)
write("PATCH", f"{CASE}/goals/{{goal_id}}", "revise a goal", api.GoalRevision,
      lambda r, b, ids: cmd.ReviseGoal(_id(r, "goal_id"), b))
write("POST", f"{CASE}/goals/{{goal_id}}/status", "change a goal's status", api.GoalStatusInput,
      lambda r, b, ids: cmd.ChangeGoalStatus(_id(r, "goal_id"), b))
write("POST", f"{CASE}/goals/{{goal_id}}/steps", "add an action step", api.StepInput,
      lambda r, b, ids: cmd.AddActionStep(ids.new(), _id(r, "goal_id"), b), status=201)
write("PATCH", f"{CASE}/steps/{{step_id}}", "revise an action step", api.StepRevision,
      lambda r, b, ids: cmd.ReviseActionStep(_id(r, "step_id"), b))
write("POST", f"{CASE}/steps/{{step_id}}/status", "change an action step's status",
      api.StepStatusInput, lambda r, b, ids: cmd.ChangeActionStepStatus(_id(r, "step_id"), b))
write("POST", f"{CASE}/steps/{{step_id}}/complete", "complete an action step",
      api.StepCompleteInput, lambda r, b, ids: cmd.CompleteActionStep(_id(r, "step_id"), b))
write("POST", f"{CASE}/supports", "add a support", api.SupportInput,
      lambda r, b, ids: cmd.AddSupport(ids.new(), b), status=201)
write("DELETE", f"{CASE}/supports/{{support_id}}", "remove a support (reason)",
      api.RemovalReason, lambda r, b, ids: cmd.RemoveSupport(_id(r, "support_id"), b))
write("POST", f"{CASE}/requirements", "record a court requirement", api.RequirementInput,
      lambda r, b, ids: cmd.RecordRequirement(ids.new(), b), status=201)
write("POST", f"{CASE}/requirements/{{requirement_id}}/status",
      "change a requirement's status", api.RequirementStatusInput,
      lambda r, b, ids: cmd.ChangeRequirementStatus(_id(r, "requirement_id"), b))
write("POST", f"{CASE}/agreements", "record the participant's agreement (PlanAgreed)",
      api.AgreementInput, lambda r, b, ids: cmd.AgreePlan(ids.new(), b), status=201)
write("POST", f"{CASE}/reviews/{{review_id}}/held", "record a review held", api.ReviewHeldInput,
      lambda r, b, ids: cmd.HoldReview(_id(r, "review_id"), ids.new(), b))
write("POST", f"{CASE}/reviews/{{review_id}}/reschedule", "move a review's due date (reason)",
      api.RescheduleReviewInput,
      lambda r, b, ids: cmd.RescheduleReview(_id(r, "review_id"), b))
write("POST", f"{CASE}/notes", "add a note", api.NoteInput,
      lambda r, b, ids: cmd.AddNote(ids.new(), b), status=201)
write("POST", f"{CASE}/transfer", "transfer to another case manager", api.TransferInput,
      lambda r, b, ids: cmd.TransferCase(body=b))
write("POST", f"{CASE}/close", "close the case", api.CloseInput,
      lambda r, b, ids: cmd.CloseCase(body=b))
write("POST", f"{CASE}/reopen", "reopen the case", api.ReopenInput,
      lambda r, b, ids: cmd.ReopenCase(body=b))


@registry.route("GET", "/v1/cases", "caseload listing", query=CaseloadQuery,
                response=api.CaseloadPage)
async def list_cases(request: web.Request) -> web.Response:
    query = parse_query(request, CaseloadQuery)
    page = await records(request).queries.caseload(
        principal(request), case_manager=query.case_manager, status=query.status,
        review_due_before=query.review_due_before, order=query.order, after=query.cursor(),
        limit=query.limit, request_id=request.get(REQUEST_ID_KEY))
    return json_response(page)


@registry.route("GET", CASE, "the current plan, or the plan as of a version or time",
                query=PlanQuery, response=api.PlanView, head=True)
async def get_case(request: web.Request) -> web.Response:
    case_id = path_id(request, "case_id")
    query = parse_query(request, PlanQuery)
    answer = await records(request).queries.plan(
        principal(request), case_id, as_of_version=query.as_of_version, as_of=query.as_of,
        request_id=request.get(REQUEST_ID_KEY))
    return json_response(answer.view, headers={"ETag": f'"{answer.version}"'})


@registry.route("GET", f"{CASE}/history", "events with actor, role, reason and time",
                query=HistoryQuery, response=api.HistoryPage)
async def case_history(request: web.Request) -> web.Response:
    case_id = path_id(request, "case_id")
    query = parse_query(request, HistoryQuery)
    page = await records(request).queries.history(
        principal(request), case_id, after_version=query.after_version, limit=query.limit,
        request_id=request.get(REQUEST_ID_KEY))
    return json_response(page)


@registry.route("GET", f"{CASE}/diff", "what changed between two versions, field by field",
                query=DiffQuery, response=api.DiffView)
async def case_diff(request: web.Request) -> web.Response:
    case_id = path_id(request, "case_id")
    query = parse_query(request, DiffQuery)
    body = await records(request).queries.diff(
        principal(request), case_id, query.from_version, query.to_version,
        request_id=request.get(REQUEST_ID_KEY))
    return json_response(body)


@registry.route("GET", f"{CASE}/verify", "recompute the case's hash chain",
                response=api.VerifyView)
async def verify_case(request: web.Request) -> web.Response:
    case_id = path_id(request, "case_id")
    report = await records(request).queries.verify(principal(request), case_id,
                                                   request_id=request.get(REQUEST_ID_KEY))
    view = api.VerifyView.model_validate({"case_id": case_id, **report.as_dict()})
    return json_response(view)


@registry.route("GET", f"{CASE}/export",
                "the case's history as a signed export (streamed; check with casetrail verify)",
                query=ExportQuery,
                media_types=tuple(f.media_type.partition(";")[0] for f in ExportFormat))
async def export_case(request: web.Request) -> web.StreamResponse:
    case_id = path_id(request, "case_id")
    query = parse_query(request, ExportQuery)
    export = await records(request).queries.export(
        principal(request), case_id, ExportFormat(query.format),
        request_id=request.get(REQUEST_ID_KEY))
    response = web.StreamResponse(headers={
        "Content-Type": export.media_type,
        "Content-Disposition": f'attachment; filename="{export.filename}"'})
    await response.prepare(request)
    async with aclosing(export.chunks) as chunks:
        try:
            async for chunk in chunks:
                try:
                    await response.write(chunk)
                except ConnectionResetError:  # the client went away: stop reading the case
                    log.info("export_abandoned", case_id=str(case_id))
                    return response
        except Exception:
            # the 200 has begun: a problem cannot follow it (one written after it left the
            # client waiting for the rest). Cut short, the download fails and never verifies.
            log.exception("export_cut_short", case_id=str(case_id))
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


@registry.route("GET", "/v1/analytics/outcomes",
                "outcomes across the agency's plans in a period (analysts, supervisors)",
                query=OutcomesQuery, response=api.OutcomesView, tag="analytics")
async def outcomes(request: web.Request) -> web.Response:
    query = parse_query(request, OutcomesQuery)
    view = await records(request).analytics.outcomes(principal(request), query.period_from,
                                                     query.period_to)
    return json_response(view)


@registry.route("GET", "/v1/access-log", "who read which case (supervisors, own agency)",
                query=AccessLogQuery, response=api.AccessLogPage)
async def access_log(request: web.Request) -> web.Response:
    query = parse_query(request, AccessLogQuery)
    page = await records(request).queries.access_log(
        principal(request), case_id=query.case_id, after=checkpoint_after(query.after),
        limit=query.limit)
    return json_response(api.AccessLogPage.model_validate(page))
