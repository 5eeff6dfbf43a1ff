"""Audit (session 23): the records and notifier services against their own OpenAPI documents,
as schemathesis 4.32.5 (`st run … --checks all`, coverage, fuzzing and stateful phases) saw
them, each finding reproduced by hand here through real HTTP on the test's own database.

What a document says is read from the `/openapi.json` the service itself serves; a test fails
when an answer (its status, its media type) is not one the document declares, or when the
document states a rule the server keeps in words JSON Schema does not know. Findings the
spec cannot express (NUL characters, text that is only white space, cross-field and state
rules; docs/decisions/0100-event-catalog.md, "What it cannot say") are not tested here."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig
from tests.records_api import CaseApi

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


async def spec_of(client: TestClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status == 200
    return dict(await response.json())


def documented(spec: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any] | None:
    """The response object the document declares for ``status`` (exact code first, then its
    range such as ``4XX``), or None."""
    responses = spec["paths"][path][method.lower()]["responses"]
    return responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")


def media_of(response_object: dict[str, Any] | None) -> set[str]:
    return set((response_object or {}).get("content", {}))


def plain(content_type: str) -> str:
    return content_type.split(";")[0].strip()


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------


async def test_as_of_version_bounds_are_published_in_json_schema_keywords(
        client: TestClient, cm: CaseApi) -> None:
    """0100: "Request schemas say what the server accepts where JSON Schema can say it". The
    server refuses ?as_of_version=0 (held), but the document states the bound as pydantic's
    `ge`/`le`, words JSON Schema ignores: to any client or tool, 0 and -5 are valid.
    (schemas/queries.py:62, `Field(ge=1, le=…)` on `QueryInt | None`.)"""
    case = await cm.open_case()
    refused = await client.get(f"/v1/cases/{case}?as_of_version=0", headers=bearer(cm.token))
    assert refused.status == 422
    assert refused.content_type == "application/problem+json"
    spec = await spec_of(client)
    [param] = [p for p in spec["paths"]["/v1/cases/{case_id}"]["get"]["parameters"]
               if p["name"] == "as_of_version"]
    [integer] = [s for s in param["schema"]["anyOf"] if s.get("type") == "integer"]
    assert (integer.get("minimum"), integer.get("maximum")) == (1, 10_000_000), integer
    assert not {"ge", "le", "gt", "lt"} & set(integer), integer


async def _no_body_step_complete(client: TestClient, cm: CaseApi) -> tuple[str, str, str]:
    case = await cm.open_case()
    step = await cm.step(case, await cm.goal(case))
    return "POST", f"/v1/cases/{case}/steps/{step}/complete", \
        "/v1/cases/{case_id}/steps/{step_id}/complete"


async def _no_body_review_held(client: TestClient, cm: CaseApi) -> tuple[str, str, str]:
    case = await cm.open_case()
    await cm.goal(case)
    agreed = await cm.agree(case)
    review = next(e["data"]["review_id"] for e in agreed["events"]
                  if e["type"] == "ReviewScheduled")
    return "POST", f"/v1/cases/{case}/reviews/{review}/held", \
        "/v1/cases/{case_id}/reviews/{review_id}/held"


async def _reason_in_query_only(client: TestClient, cm: CaseApi) -> tuple[str, str, str]:
    case = await cm.open_case()
    strength = await cm.strength(case)
    return "DELETE", f"/v1/cases/{case}/strengths/{strength}?reason=recorded%20twice", \
        "/v1/cases/{case_id}/strengths/{strength_id}"


@pytest.mark.parametrize("prepare", [_no_body_step_complete, _no_body_review_held,
                                     _reason_in_query_only],
                         ids=["step-complete", "review-held", "removal-reason-in-query"])
async def test_a_request_the_server_takes_without_a_body_is_not_documented_as_needing_one(
        client: TestClient, cm: CaseApi,
        prepare: Callable[[TestClient, CaseApi], Awaitable[tuple[str, str, str]]]) -> None:
    """schemathesis ST201 "Schema-violating request accepted": every write's document says
    `requestBody.required: true`, yet the server takes no body at all where the body's model
    needs no field (services/common/http.py:232, "…/complete, the short form") and a removal
    whose reason is in ?reason= (README: "removal needs a reason, body or ?reason=";
    services/records/http/routes.py:159). The generator writes `required: True` for every
    body (services/common/http.py:643)."""
    method, url, template = await prepare(client, cm)
    response = await client.request(method, url, headers=bearer(cm.token))
    assert response.status == 200, await response.text()
    spec = await spec_of(client)
    body = spec["paths"][template][method.lower()]["requestBody"]
    assert body["required"] is False, (
        f"{method} {template} answered 200 without a body, but the document says the body is"
        " required")


async def test_what_held_schema_violating_input_is_refused_as_a_documented_problem(
        client: TestClient, cm: CaseApi) -> None:
    """What held under ~108,000 records test cases: no 5xx, no answer outside its declared
    schema, and input the document calls invalid refused with a problem it declares."""
    spec = await spec_of(client)
    problem = Draft202012Validator({"$ref": "#/components/schemas/Problem",
                                    "components": spec["components"]})
    case = await cm.open_case()
    for method, url, body in [
            ("GET", "/v1/cases?limit=0", None),
            ("GET", "/v1/cases?limit=201", None),
            ("GET", "/v1/cases?status=archived", None),
            ("GET", f"/v1/cases/{case}/history?after_version=-1", None),
            ("GET", f"/v1/cases/{case}?as_of=yesterday", None),
            ("POST", "/v1/cases", {"participant": {"name": "Ana"}, "case_manager": "cm-1",
                                   "risk_level": "extreme"}),
            ("POST", f"/v1/cases/{case}/notes", {"text": "Ana chose Tuesday", "mood": "ok"}),
            ("POST", f"/v1/cases/{case}/strengths", {"category": "skill"})]:
        response = await client.request(method, url, json=body, headers=bearer(cm.token))
        assert response.status in (400, 422), (method, url, response.status)
        assert response.content_type == "application/problem+json", (method, url)
        errors = sorted(e.message for e in problem.iter_errors(await response.json()))
        assert errors == [], (method, url, errors)


# --------------------------------------------------------------------------------------------
# notifier
# --------------------------------------------------------------------------------------------


async def test_removing_preferences_answers_a_status_the_document_declares(
        rig: NotifierRig, token: TokenFactory) -> None:
    """docs/notifier.md: `DELETE /v1/preferences/{user}` "…: 204". The handler answers 204
    (services/notifier/http/routes.py:285) but the route is registered with the default status
    (routes.py:274), so the document declares 200 with a JSON object, and 4XX."""
    await rig.set_prefs("cm-1", token())
    response = await rig.client.delete("/v1/preferences/cm-1", headers=bearer(token()))
    assert response.status == 204, await response.text()
    spec = await spec_of(rig.client)
    assert documented(spec, "DELETE", "/v1/preferences/{user}", 204) is not None, \
        sorted(spec["paths"]["/v1/preferences/{user}"]["delete"]["responses"])


async def test_retrying_a_dead_letter_answers_a_status_the_document_declares(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """The retry answers 202 (services/notifier/http/routes.py:549, and docs/notifier.md's
    table), but the route (routes.py:528) is registered with the default status: the document
    declares only 200 and 4XX. cm-1 has no address on file, so their small win is a dead
    letter at once."""
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(kind="small_win")
    assert row["status"] == "dead", row
    response = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                     headers=bearer(token(role="supervisor", sub="sup-1")))
    assert response.status == 202, await response.text()
    spec = await spec_of(rig.client)
    path = "/v1/notifications/{notification_id}/retry"
    assert documented(spec, "POST", path, 202) is not None, \
        sorted(spec["paths"][path]["post"]["responses"])


async def test_the_mail_page_is_documented_as_the_media_types_it_answers(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, tmp_path: Path) -> None:
    """schemathesis ST105 "Undocumented Content-Type": `GET /mail` (development catcher) is
    declared as `application/json` (an object), but answers an HTML page, and a message's raw
    text as text/plain (services/notifier/http/routes.py:623, registered without the
    `media_types` /docs and /metrics give theirs)."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_DEV_MAIL_DIR=str(tmp_path))
    (tmp_path / "1700000000000000000-1.eml").write_bytes(
        b"From: a@example.org\r\nTo: c@example.org\r\nSubject: hello\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello there\r\n")
    spec = await spec_of(rig.client)
    declared = media_of(documented(spec, "GET", "/mail", 200))
    served = set()
    for query in ("", "?file=1700000000000000000-1.eml", "?file=1700000000000000000-1.eml&raw"):
        response = await rig.client.get("/mail" + query)
        assert response.status == 200, query
        served.add(plain(response.headers["Content-Type"]))
    assert served == {"text/html", "text/plain"}
    assert served <= declared, (served, declared)


async def test_a_browsers_404_for_a_bad_unsubscribe_link_is_a_documented_answer(
        rig: NotifierRig) -> None:
    """0203: a link not signed here "is 404 (a problem, or a page for a browser)". The page
    is text/html, but the document declares 4XX only as application/problem+json
    (services/notifier/http/routes.py:351, `_not_valid`; the generator writes one problem
    media type for every 4XX, services/common/http.py:632)."""
    spec = await spec_of(rig.client)
    for method in ("GET", "POST"):
        response = await rig.client.request(method, "/v1/unsubscribe/not-a-link",
                                            headers=BROWSER)
        assert response.status == 404, method
        served = plain(response.headers["Content-Type"])
        assert served == "text/html", method
        declared = media_of(documented(spec, method, "/v1/unsubscribe/{token}", 404))
        assert served in declared, (method, served, declared)


async def test_not_ready_answers_a_status_the_document_declares(rig: NotifierRig) -> None:
    """`/readyz` answers 503 with its Health body until the feed has been read (by design,
    services/notifier/http/app.py:118; records the same, services/records/http/app.py:168),
    but both documents declare only 200 and 4XX for it: no 503, no 5XX."""
    response = await rig.client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["checks"]["feed"] == "not read yet"
    spec = await spec_of(rig.client)
    declared = sorted(spec["paths"]["/readyz"]["get"]["responses"])
    assert documented(spec, "GET", "/readyz", 503) is not None, declared
    assert any(re.fullmatch(r"503|5XX", code) for code in declared), declared


async def test_the_mail_page_refuses_a_parameter_it_does_not_take_and_an_overlong_file(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, tmp_path: Path) -> None:
    """docs/notifier.md: `/mail` takes `file` (up to 255 characters) and `raw` and refuses any
    other parameter as the API routes do: a 422 problem naming it."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_DEV_MAIL_DIR=str(tmp_path))
    for query, field in (("?fiel=x.eml", "query.fiel"), ("?file=" + "a" * 256, "query.file")):
        response = await rig.client.get("/mail" + query)
        assert response.status == 422, query
        assert response.content_type == "application/problem+json"
        body = await response.json()
        assert [e["field"] for e in body["errors"]] == [field], body
    assert (await rig.client.get("/mail?file=nothing-here.eml")).status == 404
