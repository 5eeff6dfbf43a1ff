"""A token with a time window (`window_from`/`window_to`, decision 0006) sees cases only as
they were inside it: it reads a case's record, and is refused, from the token alone, whatever
shows cases as they are now or changes them (records' writes, access log and analytics; every
notifier route). Auditors always carry one; an identity provider may put one on any role.

Each case below is opened a day after the windowed token's window closed, so reading it with
that token answers 404: the case did not exist inside the window."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records
from tests.pg_waits import until_nothing_held_back
from tests.records_api import PARTICIPANT, CaseApi

WINDOW = "time window"  # every refusal of a window says so


async def _answer(client: TestClient, method: str, path: str, token: str,
                  body: Any = None) -> tuple[int, str]:
    response = await client.request(method, path, json=body, headers=bearer(token))
    problem = await response.json()
    return response.status, str(problem.get("detail"))


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------


async def test_a_windowed_supervisor_reads_no_case_the_window_does_not_show_in_the_log(
        cm: CaseApi, client: TestClient, token: TokenFactory, clock: FakeClock,
        fresh_pool: asyncpg.Pool) -> None:
    """Commit 90418c4 refuses the caseload listing to a token with a window, since it shows
    cases as they are now, cases opened after the window included. The access log showed
    them all the same: a supervisor token whose window closed before a case was opened,
    answered 404 for the case, still read from the log that it exists, who read it and
    when."""
    start = clock.now
    clock.advance(days=1)
    case_id = await cm.open_case()
    supervisor = token(role="supervisor", sub="sup-2")
    await cm.call("GET", f"/v1/cases/{case_id}", token=supervisor, expect=200)
    windowed = token(role="supervisor", sub="sup-1", window_to=start)
    assert (await client.get(f"/v1/cases/{case_id}", headers=bearer(windowed))).status == 404
    await until_nothing_held_back(fresh_pool)
    for query in ("", f"?case_id={case_id}"):
        status, detail = await _answer(client, "GET", f"/v1/access-log{query}", windowed)
        assert status == 403, detail
        assert WINDOW in detail
        assert "without a window" in detail
    page = await cm.call("GET", "/v1/access-log", token=supervisor, expect=200)
    # the log holds the case: sup-2's read, and sup-1's, refused as outside the window
    assert {(e["case_id"], e["actor_sub"]) for e in page["entries"]} == {
        (case_id, "sup-2"), (case_id, "sup-1")}


async def test_a_windowed_case_manager_cannot_write_to_a_case_the_window_does_not_show(
        cm: CaseApi, client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    """The same window, on the case manager who owns the case: a read answered 404 (the case
    did not exist inside the window), a note was recorded (201) and its answer named the
    plan's current version. A window is for reading the record as it was, so a windowed
    token never writes: the same 403 for a case the window shows, one it hides and an id no
    case has, decided before the case is read."""
    shown = await cm.open_case()
    end = clock.now
    clock.advance(days=1)
    hidden = await cm.open_case()
    windowed = token(sub="cm-1", window_to=end)
    assert (await client.get(f"/v1/cases/{shown}", headers=bearer(windowed))).status == 200
    assert (await client.get(f"/v1/cases/{hidden}", headers=bearer(windowed))).status == 404
    answers = {await _answer(client, "POST", f"/v1/cases/{case_id}/notes", windowed,
                             {"text": "Called Jo"})
               for case_id in (shown, hidden, str(uuid.uuid4()))}
    [(status, detail)] = answers
    assert status == 403, detail
    assert WINDOW in detail
    assert "without a window" in detail
    for case_id in (shown, hidden):
        assert (await cm.plan(case_id))["version"] == 1  # nothing was written


async def test_a_windowed_token_opens_no_case_and_transfers_none(
        cm: CaseApi, client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    end = clock.now
    clock.advance(days=1)
    case_id = await cm.open_case()
    supervisor = token(role="supervisor", sub="sup-1", window_to=end)
    manager = token(sub="cm-1", window_to=end)
    opening = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "low"}
    for who in (supervisor, manager):
        status, detail = await _answer(client, "POST", "/v1/cases", who, opening)
        assert (status, WINDOW in detail) == (403, True), detail
    for target in (case_id, str(uuid.uuid4())):
        status, detail = await _answer(client, "POST", f"/v1/cases/{target}/transfer",
                                       supervisor, {"case_manager": "cm-2",
                                                    "reason": "caseload balancing"})
        assert (status, WINDOW in detail) == (403, True), detail
    listing = await cm.call("GET", "/v1/cases", expect=200)
    assert [(c["case_id"], c["case_manager"]) for c in listing["cases"]] == [(case_id, "cm-1")]


@pytest.mark.parametrize("role", ["supervisor", "analyst"])
async def test_a_windowed_token_reads_no_outcome_analytics(
        client: TestClient, token: TokenFactory, clock: FakeClock, role: str) -> None:
    """Analytics count the agency's cases in any period asked for, today's included."""
    status, detail = await _answer(client, "GET", "/v1/analytics/outcomes",
                                   token(role=role, sub="someone", window_to=clock.now))
    assert (status, WINDOW in detail) == (403, True), detail
    assert (await _answer(client, "GET", "/v1/analytics/outcomes",
                          token(role=role, sub="someone")))[0] == 200



async def test_a_windowed_service_token_reads_no_event_feed(
        cm: CaseApi, client: TestClient, token: TokenFactory, clock: FakeClock,
        fresh_pool: asyncpg.Pool) -> None:
    """The feed hands out every event up to now, those after the window included."""
    end = clock.now
    clock.advance(days=1)
    await cm.open_case()
    windowed = token(role="service", sub="notifier", agency="*", window_to=end)
    status, detail = await _answer(client, "GET", "/v1/events?wait=0", windowed)
    assert (status, WINDOW in detail) == (403, True), detail
    await until_nothing_held_back(fresh_pool, "records.events")  # another run's open transaction
    page = await cm.call("GET", "/v1/events?wait=0",
                         token=token(role="service", sub="notifier", agency="*"), expect=200)
    assert len(page["events"]) == 1

# --------------------------------------------------------------------------------------------
# notifier
# --------------------------------------------------------------------------------------------


def _notifier_requests(case: str, notification: str) -> list[tuple[str, str, Any]]:
    prefs = {"email": "x@example.org", "delivery": "immediate", "timezone": "UTC",
             "celebrations": True}
    return [("GET", f"/v1/notifications?case_id={case}", None),
            ("GET", f"/v1/schedule?case_id={case}", None),
            ("GET", f"/v1/notifications/{notification}", None),
            ("POST", f"/v1/notifications/{notification}/retry", None),
            ("GET", "/v1/preferences/jo", None),
            ("GET", "/v1/preferences/cm-1", None),
            ("PUT", "/v1/preferences/cm-1", prefs),
            ("GET", f"/v1/access-log?case_id={case}", None)]


@pytest.mark.parametrize("claims", [
    {"role": "supervisor", "sub": "sup-1"}, {"role": "case_manager", "sub": "cm-1"},
    {"role": "participant", "sub": "jo"}], ids=lambda claims: claims["role"])
async def test_the_notifier_refuses_a_windowed_token_whatever_the_case(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock,
        claims: dict[str, str]) -> None:
    """Everything the notifier holds is about cases as they are now: a case's notices and
    schedule, its participant's address, who read them. A windowed supervisor or case
    manager read them for a case their window hides (records: 404), and a supervisor read
    the notifier's access log. Each is refused from the token, the same for that case and
    for made-up ids, and nothing is logged or stored."""
    end = clock.now
    clock.advance(days=1)
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]))
    await rig.set_prefs("cm-1", token())
    supervisor = token(role="supervisor", sub="sup-1")
    listing = await rig.client.get(f"/v1/notifications?case_id={case}",
                                   headers=bearer(supervisor))
    notification = (await listing.json())["notifications"][0]["id"]
    logged = await _notifier_log_size(rig)
    windowed = token(**claims, cases=[case], window_to=end)
    real = _notifier_requests(case, notification)
    made_up = _notifier_requests(str(uuid.uuid4()), str(uuid.uuid4()))
    for (method, path, body), (_, other_path, _) in zip(real, made_up, strict=True):
        answer = await _answer(rig.client, method, path, windowed, body)
        assert (answer[0], WINDOW in answer[1]) == (403, True), (path, answer)
        assert await _answer(rig.client, method, other_path, windowed, body) == answer
    assert await _notifier_log_size(rig) == logged
    stored = await rig.client.get("/v1/preferences/cm-1", headers=bearer(token()))
    assert (await stored.json())["email"] == "cm-1@example.org"


async def _notifier_log_size(rig: NotifierRig) -> int:
    return int(await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.access_log"))
