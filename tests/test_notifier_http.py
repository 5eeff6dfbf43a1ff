"""The notifier's HTTP API: preferences and who may set them, listings, the schedule, tenancy,
bad input (always a 4xx problem, never a 500) and the operational routes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from services.notifier.feed import FeedError
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import (
    PARTICIPANT,
    NotifierRig,
    Records,
    SmtpServer,
    free_port,
    make_rig,
)

GOOD = {"email": "sam@example.org", "delivery": "immediate", "timezone": "Europe/Berlin",
        "quiet_hours": {"start": "21:00", "end": "07:00"}, "celebrations": True}


async def put(rig: NotifierRig, user: str, token: str, body: Any) -> tuple[int, Any]:
    response = await rig.client.put(f"/v1/preferences/{user}", json=body, headers=bearer(token))
    return response.status, await response.json()


async def test_a_user_sets_their_own_preferences_and_reads_them_back(
        rig: NotifierRig, token: TokenFactory) -> None:
    status, body = await put(rig, "cm-1", token(), GOOD)
    assert status == 200
    assert body["role"] == "case_manager"
    assert body["agency"] == "agency-a"
    response = await rig.client.get("/v1/preferences/cm-1", headers=bearer(token()))
    assert (await response.json())["quiet_hours"] == {"start": "21:00", "end": "07:00"}


async def test_only_supervisors_set_other_peoples_preferences_within_their_agency(
        rig: NotifierRig, token: TokenFactory) -> None:
    assert (await put(rig, "cm-2", token(), GOOD))[0] == 403
    status, body = await put(rig, "cm-2", token(role="supervisor", sub="sup-1"),
                             {**GOOD, "role": "supervisor"})
    assert (status, body["role"]) == (200, "supervisor")
    other_agency = token(role="supervisor", sub="sup-9", agency="agency-b")
    response = await rig.client.get("/v1/preferences/cm-2", headers=bearer(other_agency))
    assert response.status == 404


async def test_a_put_that_leaves_out_optional_fields_keeps_their_stored_values(
        rig: NotifierRig, token: TokenFactory) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    case = "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"
    await put(rig, "jo", supervisor, {**GOOD, "role": "participant", "cases": [case]})
    await put(rig, "sup-2", supervisor, {**GOOD, "role": "supervisor"})
    without = {k: v for k, v in GOOD.items() if k != "quiet_hours"}
    status, body = await put(rig, "sup-2", supervisor, {**without, "email": "new@example.org"})
    assert status == 200
    assert (body["role"], body["email"]) == ("supervisor", "new@example.org")
    assert body["quiet_hours"] == GOOD["quiet_hours"]
    status, body = await put(rig, "jo", supervisor, {**without, "celebrations": False})
    assert (body["role"], body["cases"], body["celebrations"]) == ("participant", [case], False)
    status, body = await put(rig, "sup-2", supervisor, {**without, "quiet_hours": None})
    assert (body["role"], body["quiet_hours"]) == ("supervisor", None)
    response = await rig.client.get("/v1/preferences/jo", headers=bearer(supervisor))
    assert (await response.json())["cases"] == [case]


@pytest.mark.parametrize("role", ["service", "auditor", "analyst"])
async def test_roles_the_notifier_never_writes_to_keep_no_preferences(
        rig: NotifierRig, token: TokenFactory, role: str) -> None:
    status, body = await put(rig, "them", token(role=role, sub="them"), GOOD)
    assert (status, body["type"].rsplit("/", 1)[-1]) == (403, "forbidden")
    status, _ = await put(rig, "cm-2", token(role="supervisor", sub="sup-1"),
                          {**GOOD, "role": role})
    assert status == 422
    assert await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory") == 0


async def test_participants_cannot_choose_a_daily_digest(rig: NotifierRig,
                                                         token: TokenFactory) -> None:
    case = "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"
    digest = {**GOOD, "delivery": "daily_digest"}
    status, body = await put(rig, "jo", token(role="participant", sub="jo", cases=[case]),
                             digest)
    assert (status, body["errors"][0]["field"]) == (422, "body.delivery")
    supervisor = token(role="supervisor", sub="sup-1")
    assert (await put(rig, "jo", supervisor, {**digest, "role": "participant"}))[0] == 422
    entry = {**GOOD, "role": "participant", "cases": [case]}
    assert (await put(rig, "jo", supervisor, entry))[0] == 200
    assert (await put(rig, "jo", supervisor, digest))[0] == 422  # stored role: participant


async def test_a_user_cannot_give_themselves_another_role(rig: NotifierRig,
                                                          token: TokenFactory) -> None:
    status, body = await put(rig, "cm-1", token(), {**GOOD, "role": "supervisor"})
    assert status == 422
    assert body["errors"][0]["field"] == "body.role"


BAD_BODIES: dict[str, Any] = {
    "unknown field": {**GOOD, "colour": "blue"},
    "bad delivery": {**GOOD, "delivery": "weekly"},
    "bad time zone": {**GOOD, "timezone": "Mars/Olympus"},
    "path time zone": {**GOOD, "timezone": "../../etc/passwd"},
    # names ZoneInfo opens that are no IANA zone (a database server need not know them)
    "host's own zone file": {**GOOD, "timezone": "localtime"},
    "posix copy of a zone": {**GOOD, "timezone": "posix/Europe/Berlin"},
    "right copy of a zone": {**GOOD, "timezone": "right/UTC"},
    "bad quiet hours": {**GOOD, "quiet_hours": {"start": "25:00", "end": "07:00"}},
    "empty quiet hours": {**GOOD, "quiet_hours": {"start": "07:00", "end": "07:00"}},
    "bad email": {**GOOD, "email": "not an address"},
    # each was accepted, and the mail went elsewhere than the address stored
    "email with a comma": {**GOOD, "email": "jo,smith@example.com"},
    "email hiding another": {**GOOD, "email": "shown-address<actual@elsewhere.example>"},
    "email with a display name": {**GOOD, "email": '"Jo" jo@example.org'},
    "email with a zero-width space": {**GOOD, "email": "jo\u200b@example.org"},
    "email with a right-to-left override": {**GOOD, "email": "jo\u202e@example.org"},
    "celebrations not bool": {**GOOD, "celebrations": "yes"},
    "missing delivery": {k: v for k, v in GOOD.items() if k != "delivery"},
    "list body": [GOOD],
    "cases not uuids": {**GOOD, "cases": ["x"]},
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_bad_preferences_are_refused_with_a_problem(rig: NotifierRig, token: TokenFactory,
                                                          name: str) -> None:
    response = await rig.client.put("/v1/preferences/cm-1", json=BAD_BODIES[name],
                                    headers=bearer(token()))
    assert 400 <= response.status < 500
    assert response.content_type == "application/problem+json"
    assert await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory") == 0


@pytest.mark.parametrize(("method", "path", "extra"), [
    ("PUT", "/v1/preferences/cm-1", {"data": b"{not json", "headers": {
        "Content-Type": "application/json"}}),
    ("PUT", "/v1/preferences/cm-1", {"data": b"email=x", "headers": {
        "Content-Type": "application/x-www-form-urlencoded"}}),
    ("PUT", "/v1/preferences/" + "x" * 300, {"json": GOOD}),
    ("GET", "/v1/notifications?status=lost", {}),
    ("GET", "/v1/notifications?case_id=nope", {}),
    ("GET", "/v1/notifications?limit=0", {}),
    ("GET", "/v1/notifications?limit=5&limit=6", {}),
    ("GET", "/v1/notifications?colour=blue", {}),
    ("GET", "/v1/notifications/not-a-uuid", {}),
    ("POST", "/v1/notifications/not-a-uuid/retry", {}),
    ("POST", "/v1/notifications/6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10/retry", {}),
    ("GET", "/v1/schedule", {}),
    ("GET", "/v1/schedule?case_id=123", {}),
    ("GET", "/v1/schedule?case_id=6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10", {}),
    ("DELETE", "/v1/notifications", {}),
    ("GET", "/v1/nowhere", {}),
])
async def test_bad_requests_get_a_4xx_problem(rig: NotifierRig, token: TokenFactory,
                                              method: str, path: str,
                                              extra: dict[str, Any]) -> None:
    headers = {**bearer(token(role="supervisor", sub="sup-1")), **extra.pop("headers", {})}
    response = await rig.client.request(method, path, headers=headers, **extra)
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/problem+json"


CONTROL_CHARACTERS = ["\x00", "\x01", "\x1b", "\x7f", "\x85"]
QUERIES = [("/v1/notifications", name) for name in
           ("recipient", "case_id", "status", "kind", "limit", "offset")] + [
    ("/v1/schedule", "case_id")]


@pytest.mark.parametrize("bad", CONTROL_CHARACTERS)
@pytest.mark.parametrize(("path", "name"), QUERIES)
async def test_control_characters_in_a_query_are_refused(
        rig: NotifierRig, token: TokenFactory, path: str, name: str, bad: str) -> None:
    response = await rig.client.get(path, params={name: f"cm{bad}1"},
                                    headers=bearer(token(role="supervisor", sub="sup-1")))
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/problem+json"


def _with(body: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    if field.startswith("quiet_hours."):
        return {**body, "quiet_hours": {**body["quiet_hours"], field.split(".")[1]: value}}
    if field == "cases":
        return {**body, "cases": [value]}
    return {**body, field: value}


BODY_FIELDS = {"email": "sam@example.org", "delivery": "immediate", "timezone": "Europe/Berlin",
               "quiet_hours.start": "21:00", "quiet_hours.end": "07:00", "role": "supervisor",
               "cases": "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"}


@pytest.mark.parametrize("bad", CONTROL_CHARACTERS)
@pytest.mark.parametrize("field", sorted(BODY_FIELDS))
async def test_control_characters_in_a_body_field_are_refused_and_nothing_is_written(
        rig: NotifierRig, token: TokenFactory, field: str, bad: str) -> None:
    good = BODY_FIELDS[field]
    body = _with(GOOD, field, good[:2] + bad + good[2:])
    response = await rig.client.put("/v1/preferences/cm-2", json=body,
                                    headers=bearer(token(role="supervisor", sub="sup-1")))
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/problem+json"
    assert await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory") == 0


@pytest.mark.parametrize("path", ["/v1/preferences/cm%001", "/v1/preferences/cm%011",
                                  "/v1/notifications/%00", "/v1/notifications/%00/retry"])
async def test_control_characters_in_a_path_are_refused(rig: NotifierRig, token: TokenFactory,
                                                        path: str) -> None:
    method = "POST" if path.endswith("retry") else "GET"
    response = await rig.client.request(method, path,
                                        headers=bearer(token(role="supervisor", sub="sup-1")))
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/problem+json"


async def test_requests_without_a_token_are_401(rig: NotifierRig) -> None:
    response = await rig.client.get("/v1/notifications")
    assert response.status == 401
    assert (await response.json())["type"].endswith("/unauthorized")


async def test_listing_filters_and_tenancy(rig: NotifierRig, records: Records,
                                           token: TokenFactory) -> None:
    mine = await records.open_case()
    await records.agree(mine)
    elsewhere = Records(records.client, token(sub="cm-9", agency="agency-b"))
    theirs = await elsewhere.open_case(case_manager="cm-9")
    await elsewhere.agree(theirs)
    await rig.catch_up()

    async def listing(tok: str, query: str = "") -> list[dict[str, Any]]:
        response = await rig.client.get(f"/v1/notifications{query}", headers=bearer(tok))
        assert response.status == 200, await response.text()
        return list((await response.json())["notifications"])

    supervisor = token(role="supervisor", sub="sup-1")
    everything = await listing(supervisor)
    assert {n["case_id"] for n in everything} == {mine}
    assert len(await listing(supervisor, f"?case_id={mine}&recipient=supervisors")) == 1
    assert await listing(supervisor, "?status=sent") == []
    assert len(await listing(token())) == 4  # cm-1's own case
    assert await listing(token(sub="cm-2")) == []
    in_b = await listing(token(role="supervisor", sub="s", agency="agency-b"))
    assert {n["case_id"] for n in in_b} == {theirs}
    assert len(await listing(token(role="service", sub="ops"))) == 8
    one = everything[0]
    response = await rig.client.get(f"/v1/notifications/{one['id']}", headers=bearer(token()))
    assert (await response.json())["attempt_log"] == []
    other_agency = token(role="supervisor", sub="s", agency="agency-b")
    response = await rig.client.get(f"/v1/notifications/{one['id']}",
                                    headers=bearer(other_agency))
    assert response.status == 404
    analyst = await rig.client.get("/v1/notifications", headers=bearer(token(role="analyst")))
    assert analyst.status == 403


async def test_the_schedule_of_a_case_shows_what_is_still_to_be_sent(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    response = await rig.client.get(f"/v1/schedule?case_id={case}", headers=bearer(token()))
    body = await response.json()
    assert [n["kind"] for n in body["pending"]] == [
        "review_reminder", "review_due_today", "review_overdue", "review_overdue"]
    assert body["pending"][0]["due_at"] == "2026-04-28T09:00:00+00:00"
    for who, status in [(token(sub="cm-2"), 403),
                        (token(role="supervisor", sub="s", agency="agency-b"), 404)]:
        response = await rig.client.get(f"/v1/schedule?case_id={case}", headers=bearer(who))
        assert response.status == status


async def test_the_schedule_tells_no_one_outside_it_whether_a_case_exists(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Answered from the token first, as records answers: a real case the token does not
    name and a case that does not exist get the same status (403 before, for the real one)."""
    case = await records.open_case()
    await rig.catch_up()
    named = str(uuid.uuid4())
    for who, status in [(token(role="participant", sub="jo", cases=[named]), 404),
                        (token(role="auditor", sub="court-1", cases=[named]), 403),  # window
                        (token(role="analyst", sub="an-1"), 403)]:
        answers = {(await rig.client.get(f"/v1/schedule?case_id={case_id}",
                                         headers=bearer(who))).status
                   for case_id in (case, str(uuid.uuid4()))}
        assert answers == {status}, who


async def readiness(rig: NotifierRig) -> tuple[int, dict[str, Any]]:
    response = await rig.client.get("/readyz")
    return response.status, (await response.json())["checks"]


async def test_operational_routes(rig: NotifierRig) -> None:
    assert (await rig.client.get("/healthz")).status == 200
    assert await readiness(rig) == (503, {"database": "ok", "migrations": "current",
                                          "feed": "not read yet"})
    await rig.catch_up()
    assert await readiness(rig) == (200, {"database": "ok", "migrations": "current",
                                          "feed": "ok"})
    metrics = await (await rig.client.get("/metrics")).text()
    assert "casetrail_notifier_feed_lag_seconds" in metrics
    spec = await (await rig.client.get("/openapi.json")).json()
    assert "/v1/preferences/{user}" in spec["paths"]
    assert "PreferencesInput" in spec["components"]["schemas"]
    for path in ("/docs", "/metrics", "/openapi.json"):  # each answer has the documented type
        documented = set(spec["paths"][path]["get"]["responses"]["200"]["content"])
        served = (await rig.client.get(path)).content_type
        assert documented == {served}, path
    assert (await rig.client.get("/mail")).status == 404  # no catcher configured


async def test_not_ready_while_the_feed_cannot_be_read(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         RECORDS_URL=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FeedError):
        await rig.catch_up()
    status, checks = await readiness(rig)
    assert status == 503
    assert checks["feed"].startswith("last read failed: feed unreachable")


async def test_listing_pages_and_participants_see_only_their_own(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    await records.achieve(case, goal)
    await records.agree(await records.open_case())
    await rig.catch_up()
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    first = await (await rig.client.get("/v1/notifications?limit=4", headers=supervisor)).json()
    assert len(first["notifications"]) == 4
    assert first["next_offset"] == 4
    rest = await (await rig.client.get("/v1/notifications?limit=4&offset=4",
                                       headers=supervisor)).json()
    assert len(rest["notifications"]) == 2
    assert rest["next_offset"] is None
    assert {n["id"] for n in first["notifications"]}.isdisjoint(
        n["id"] for n in rest["notifications"])
    jo = bearer(token(role="participant", sub="jo", cases=[case]))
    mine = await (await rig.client.get(f"/v1/notifications?case_id={case}", headers=jo)).json()
    assert [n["recipient"] for n in mine["notifications"]] == [f"participant:{case}"]
    unnamed = await rig.client.get("/v1/notifications", headers=jo)
    assert unnamed.status == 422


async def test_case_manager_ids_the_records_service_accepts_can_be_given_preferences(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """The path took only visible ASCII, so María López (a case manager the records service
    accepts) could never be given an address, though her dead letters said to set one."""
    manager = "María López"
    hers = Records(records.client, token(sub=manager))
    case = await hers.open_case(case_manager=manager)
    await hers.step(case, await hers.goal(case))
    path = f"/v1/preferences/{quote(manager, safe='')}"
    for who in (token(role="supervisor", sub="sup-1"), token(sub=manager)):
        response = await rig.client.put(path, json=GOOD, headers=bearer(who))
        assert response.status == 200, await response.text()
        assert (await response.json())["user"] == manager
    response = await rig.client.get(path, headers=bearer(token(sub=manager)))
    assert (await response.json())["email"] == GOOD["email"]
    padded = await rig.client.put("/v1/preferences/%20cm-1", json=GOOD,
                                  headers=bearer(token(role="supervisor", sub="sup-1")))
    assert padded.status == 400  # " cm-1" is not cm-1
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    for broken in ("x%FFy", "x%ED%A0%80y"):  # not UTF-8; an encoded lone surrogate
        answer = await rig.client.put(f"/v1/preferences/{broken}", json=GOOD,
                                      headers=supervisor)
        assert answer.status == 400, broken  # it was the user "x%FFy" (x%25FFy)
        assert (await answer.json())["type"].endswith("/bad-id")
    users = await rig.notifier.pool.fetch("SELECT user_id FROM notifier.directory")
    assert [r["user_id"] for r in users] == [manager]


async def test_a_participant_opens_and_retries_their_own_notification(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Participants' notices are addressed to their case; reading one compared it with the
    token's subject and answered 404 to the very participant the listing showed it to."""
    case = await records.open_case(participant={k: v for k, v in PARTICIPANT.items()
                                                if k != "email"})
    jo_token = token(role="participant", sub="jo", cases=[case])
    jo = bearer(jo_token)
    await rig.set_prefs("jo", jo_token, email=None)
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()  # opted in, no address anywhere: a dead letter
    listing = await (await rig.client.get(f"/v1/notifications?case_id={case}",
                                          headers=jo)).json()
    [mine] = listing["notifications"]
    assert (mine["recipient"], mine["status"]) == (f"participant:{case}", "dead")
    response = await rig.client.get(f"/v1/notifications/{mine['id']}", headers=jo)
    assert response.status == 200
    assert (await response.json())["attempt_log"] == []
    others = bearer(token(role="participant", sub="sam", cases=[await records.open_case()]))
    assert (await rig.client.get(f"/v1/notifications/{mine['id']}",
                                 headers=others)).status == 404
    [for_manager] = await rig.rows(recipient="cm-1")
    assert (await rig.client.get(f"/v1/notifications/{for_manager['id']}",
                                 headers=jo)).status == 404  # not addressed to Jo
    response = await rig.client.post(f"/v1/notifications/{mine['id']}/retry", headers=jo)
    assert response.status == 202
    assert (await response.json())["status"] == "scheduled"


NO_QUERY_ROUTES = [("GET", "/v1/preferences/cm-1"), ("PUT", "/v1/preferences/cm-1"),
                   ("GET", "/v1/notifications/{id}"), ("POST", "/v1/notifications/{id}/retry")]


@pytest.mark.parametrize(("method", "path"), NO_QUERY_ROUTES)
async def test_a_query_parameter_a_route_does_not_take_is_refused(
        rig: NotifierRig, records: Records, token: TokenFactory, method: str,
        path: str) -> None:
    """``PUT /v1/preferences/cm-1?celebrations=false`` answered 200 and left celebrations on."""
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    await rig.set_prefs("cm-1", token())
    await records.agree(await records.open_case())
    await rig.catch_up()
    [row, *_] = await rig.rows()
    body = {"json": {**GOOD, "celebrations": True}} if method == "PUT" else {}
    response = await rig.client.request(method, path.format(id=row["id"]) + "?celebrations=false",
                                        headers=supervisor, **body)
    assert response.status == 422, await response.text()
    assert (await response.json())["errors"][0]["field"] == "query.celebrations"
    stored = await (await rig.client.get("/v1/preferences/cm-1", headers=supervisor)).json()
    assert stored["email"] == "cm-1@example.org"  # the PUT wrote nothing


async def test_the_mail_page_reads_a_message_in_a_charset_python_does_not_know(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, tmp_path: Path) -> None:
    """The development catcher takes any mail; showing one in charset x-unknown was a 500."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_DEV_MAIL_DIR=str(tmp_path))
    (tmp_path / "1700000000000000000-1.eml").write_bytes(
        b"From: a@example.org\r\nTo: c@example.org\r\nSubject: odd\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\nhello \xff there\r\n")
    response = await rig.client.get("/mail?file=1700000000000000000-1.eml")
    assert response.status == 200
    assert "hello \ufffd there" in await response.text()
