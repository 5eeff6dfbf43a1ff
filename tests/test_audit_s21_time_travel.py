"""Audit (session 21) of time travel on the records service, read as a supervisor, a court, a
participant and a case manager would: `?as_of_version=`, `?as_of=` at and around the
microsecond an event was recorded, in every offset and spelling RFC 3339 allows, diffs and
history at their bounds, who may ask for which (README "Who may do what", decisions 0004 and
0006), and whether the plan time travel answers is the plan the write left."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.application.queries import diff_documents
from tests.conftest import FakeClock, TokenFactory, bearer, wait_until
from tests.records_api import CaseApi

US = timedelta(microseconds=1)
PROBLEM = "application/problem+json"


def _z(moment: datetime) -> str:
    """A UTC time as the API writes one (microseconds kept)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def _get(client: TestClient, path: str, token: str) -> tuple[int, Any, str | None]:
    """GET ``path`` as given (a raw ``+`` in it is sent raw): status, body, ETag."""
    response = await client.get(path, headers=bearer(token))
    body = await response.json()
    if response.status >= 400:
        assert response.status < 500, body
        assert response.content_type == PROBLEM, (path, response.content_type)
        assert isinstance(body.get("detail"), str), body
        assert len(body["detail"]) > 10, body
    return response.status, body, response.headers.get("ETag")


async def _log(db: asyncpg.Pool, case_id: str) -> list[tuple[str, str, str | None]]:
    rows = await db.fetch(
        "SELECT actor_sub, what, refused FROM records.access_log WHERE case_id = $1 ORDER BY id",
        case_id,
    )
    return [(r["actor_sub"], r["what"], r["refused"]) for r in rows]


# -- a case written at known microseconds ------------------------------------------------------

OPENED = datetime(2026, 3, 2, 9, 0, 0, 250000, tzinfo=UTC)
SECOND = datetime(2026, 3, 2, 10, 0, 0, 500001, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)


async def _two_versions(cm: CaseApi, clock: FakeClock) -> str:
    """Version 1 recorded at OPENED, version 2 at SECOND; the service's now is NOW."""
    clock.now = OPENED
    case_id = await cm.open_case()
    clock.now = SECOND
    await cm.strength(case_id)
    clock.now = NOW
    return case_id


# (as_of as it goes into the query string, raw; the version answered)
AS_OF_ANSWERED = [
    ("2026-03-02T10:00:00.500001Z", 2),  # exactly the event's stamp
    ("2026-03-02T10:00:00.500001z", 2),  # RFC 3339 5.6: "Z" may be lower case
    ("2026-03-02t10:00:00.500001z", 2),  # and so may "T"
    ("2026-03-02T10:00:00.500001%2B00:00", 2),
    ("2026-03-02T10:00:00.500001-00:00", 2),  # RFC 3339 4.3: UTC, local offset unknown
    ("2026-03-03T00:00:00.500001%2B14:00", 2),  # Kiritimati
    ("2026-03-01T22:00:00.500001-12:00", 2),  # Baker Island
    ("2026-03-03T00:00:00.500001+14:00", 2),  # a raw "+", read as a space
    ("2026-03-02%2010:00:00.500001Z", 2),  # a space instead of "T" (RFC 3339 5.6 note)
    ("2026-03-02T10:00:00.500000Z", 1),  # one microsecond before
    ("2026-03-02T10:00:00.500002Z", 2),  # one after
    ("2026-03-02T10:00:00.500000999Z", 1),  # nanoseconds: never rounded up into the event
    ("2026-03-02T10:00:00.500001000Z", 2),
    ("2026-03-03T00:00:00.500000999%2B14:00", 1),
    ("2026-03-02T09:00:00.250000Z", 1),  # exactly the opening
    ("2026-03-02T12:00:00Z", 2),  # exactly now
]


@pytest.mark.parametrize(("as_of", "version"), AS_OF_ANSWERED)
async def test_as_of_at_and_around_an_events_microsecond(
    cm: CaseApi, client: TestClient, clock: FakeClock, as_of: str, version: int
) -> None:
    case_id = await _two_versions(cm, clock)
    status, body, etag = await _get(client, f"/v1/cases/{case_id}?as_of={as_of}", cm.token)
    assert (status, etag) == (200, f'"{version}"'), body
    assert body["version"] == version


# (as_of, raw; status; problem type)
AS_OF_REFUSED = [
    ("2026-03-02T09:00:00.249999Z", 404, "not-yet-opened"),  # a microsecond before opening
    ("0001-01-01T00:00:00Z", 404, "not-yet-opened"),
    ("0001-01-01T00:00:00-12:00", 404, "not-yet-opened"),
    ("2026-03-02T12:00:00.000001Z", 422, "as-of-in-the-future"),
    ("9999-12-31T23:59:59.999999Z", 422, "as-of-in-the-future"),
    ("9999-12-31T23:59:59%2B14:00", 422, "as-of-in-the-future"),
    ("0001-01-01T00:00:00%2B14:00", 422, "validation"),  # before the year 1 in UTC
    ("9999-12-31T23:59:59-12:00", 422, "validation"),  # past the year 9999 in UTC
    ("2026-03-02T10:00:00.500001", 422, "validation"),  # no offset
    ("2026-03-02", 422, "validation"),  # a date only
    ("2026-03-02T10:00Z", 422, "validation"),  # no seconds
    ("2026-02-29T10:00:00Z", 422, "validation"),  # no such day
    ("2026-03-02T24:00:00Z", 422, "validation"),
    ("2026-03-02T10:00:00%2B24:00", 422, "validation"),
    ("0000-01-01T00:00:00Z", 422, "validation"),
    ("1772442000", 422, "validation"),  # Unix seconds are not RFC 3339
    ("", 422, "validation"),
]


@pytest.mark.parametrize(("as_of", "status", "kind"), AS_OF_REFUSED)
async def test_as_of_the_record_cannot_answer_is_a_clear_problem(
    cm: CaseApi, client: TestClient, clock: FakeClock, as_of: str, status: int, kind: str
) -> None:
    case_id = await _two_versions(cm, clock)
    got, body, _ = await _get(client, f"/v1/cases/{case_id}?as_of={as_of}", cm.token)
    assert got == status, body
    assert body["type"].rsplit("/", 1)[1] == kind, body
    assert [e["field"] for e in body["errors"]] == ["query.as_of"], body


async def test_a_leap_second_is_an_rfc_3339_time(
    cm: CaseApi, client: TestClient, clock: FakeClock
) -> None:
    """RFC 3339 5.6 (time-second "00-58, 00-59, 00-60 based on leap second rules") and 5.7:
    2016-12-31T23:59:60Z is a real leap second (IERS Bulletin C 52). README: `?as_of=<RFC
    3339>`. It is a time before this case opened (404 not-yet-opened), not a malformed one
    ("unexpected extra characters at the end of the input")."""
    case_id = await _two_versions(cm, clock)
    status, body, _ = await _get(
        client, f"/v1/cases/{case_id}?as_of=2016-12-31T23:59:60Z", cm.token
    )
    assert (status, body["type"].rsplit("/", 1)[1]) == (404, "not-yet-opened"), body


async def test_a_fraction_of_more_than_nine_digits_is_an_rfc_3339_time(
    cm: CaseApi, client: TestClient, clock: FakeClock
) -> None:
    """RFC 3339 5.6: `time-secfrac = "." 1*DIGIT`, any number of digits. Nine are taken and
    cut to microseconds; a tenth was refused as "expected an RFC 3339 date-time", of an RFC
    3339 date-time."""
    case_id = await _two_versions(cm, clock)
    status, body, etag = await _get(
        client, f"/v1/cases/{case_id}?as_of=2026-03-02T10:00:00.5000010000Z", cm.token
    )
    assert (status, etag) == (200, '"2"'), body


# -- as_of_version and both points together ----------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "version"),
    [
        ("as_of_version=1", 200, 1),
        ("as_of_version=2", 200, 2),  # the current version
        ("as_of_version=01", 200, 1),  # plain digits
        ("as_of_version=0", 422, None),
        ("as_of_version=3", 422, None),  # current + 1
        ("as_of_version=10000000", 422, None),
        ("as_of_version=10000001", 422, None),
        ("as_of_version=99999999999999999999999", 422, None),
        ("as_of_version=-1", 422, None),
        ("as_of_version=%2B1", 422, None),
        ("as_of_version=1.0", 422, None),
        ("as_of_version=1e0", 422, None),
        ("as_of_version=%201", 422, None),
        ("as_of_version=%D9%A1", 422, None),  # an Arabic-Indic one
        ("as_of_version=", 422, None),
        ("as_of_version=1&as_of=2026-03-02T10:00:00Z", 422, None),
        ("as_of_version=1&as_of_version=1", 400, None),
        ("As_Of_Version=1", 422, None),
    ],
)
async def test_as_of_version_bounds(
    cm: CaseApi, client: TestClient, clock: FakeClock, query: str, status: int, version: int | None
) -> None:
    case_id = await _two_versions(cm, clock)
    got, body, etag = await _get(client, f"/v1/cases/{case_id}?{query}", cm.token)
    assert got == status, body
    if version is not None:
        assert (etag, body["version"]) == (f'"{version}"', version)
    else:
        assert body["errors"], body
        assert all(e["field"].startswith("query") for e in body["errors"]), body


async def test_a_version_past_the_latest_names_the_latest(
    cm: CaseApi, client: TestClient, clock: FakeClock
) -> None:
    case_id = await _two_versions(cm, clock)
    for path, field in (
        (f"/v1/cases/{case_id}?as_of_version=3", "query.as_of_version"),
        (f"/v1/cases/{case_id}?as_of_version=10000000", "query.as_of_version"),
        (f"/v1/cases/{case_id}/diff?from_version=1&to_version=3", "query.to_version"),
    ):
        status, body, _ = await _get(client, path, cm.token)
        assert (status, body["type"].rsplit("/", 1)[1]) == (422, "version-out-of-range"), body
        assert body["current_version"] == 2
        assert [e["field"] for e in body["errors"]] == [field]


async def test_both_points_in_time_are_refused_saying_so(
    cm: CaseApi, client: TestClient, clock: FakeClock
) -> None:
    case_id = await _two_versions(cm, clock)
    status, body, _ = await _get(
        client, f"/v1/cases/{case_id}?as_of_version=1&as_of=2026-03-02T10:00:00Z", cm.token
    )
    assert status == 422
    assert "not both" in body["detail"] or any(
        "not both" in e["message"] for e in body["errors"]
    ), body


# -- diff and history at their bounds ----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("from_version=0&to_version=1", 200),
        ("from_version=1&to_version=2", 200),
        ("from_version=0&to_version=2", 200),
        ("from_version=2&to_version=1", 422),  # backwards
        ("from_version=2&to_version=2", 422),  # no range
        ("from_version=0&to_version=0", 422),
        ("from_version=1&to_version=3", 422),  # past the latest
        ("from_version=3&to_version=4", 422),
        ("from_version=-1&to_version=1", 422),
        ("from_version=1", 422),
        ("to_version=2", 422),
        ("", 422),
        ("from_version=1&to_version=2&as_of_version=1", 422),
    ],
)
async def test_diff_bounds(
    cm: CaseApi, client: TestClient, clock: FakeClock, query: str, status: int
) -> None:
    case_id = await _two_versions(cm, clock)
    got, body, _ = await _get(client, f"/v1/cases/{case_id}/diff?{query}", cm.token)
    assert got == status, body
    if status == 200:
        start, end = (int(p.split("=")[1]) for p in query.split("&"))
        assert [e["version"] for e in body["events"]] == list(range(start + 1, end + 1))
    else:
        assert body["errors"], body


@pytest.mark.parametrize(
    ("query", "status", "versions", "next_after"),
    [
        ("", 200, [1, 2], None),
        ("after_version=1", 200, [2], None),
        ("after_version=2", 200, [], None),  # caught up
        ("after_version=10000000", 200, [], None),
        ("limit=1", 200, [1], 1),
        ("after_version=1&limit=1", 200, [2], None),
        ("limit=500", 200, [1, 2], None),
        ("limit=0", 422, None, None),
        ("limit=501", 422, None, None),
        ("after_version=-1", 422, None, None),
        ("after_version=10000001", 422, None, None),
        ("after_version=1.5", 422, None, None),
        ("after=1", 422, None, None),
    ],
)
async def test_history_bounds(
    cm: CaseApi,
    client: TestClient,
    clock: FakeClock,
    query: str,
    status: int,
    versions: list[int] | None,
    next_after: int | None,
) -> None:
    case_id = await _two_versions(cm, clock)
    got, body, _ = await _get(client, f"/v1/cases/{case_id}/history?{query}", cm.token)
    assert got == status, body
    if status == 200:
        assert [e["version"] for e in body["events"]] == versions
        assert body["next_after_version"] == next_after


# -- the plan time travel answers is the plan each write left ----------------------------------


async def test_every_version_by_number_and_by_its_recorded_time_is_the_plan_the_write_left(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory
) -> None:
    """Each write's answer names its version and its events' recorded_at; the plan read right
    after it is the plan of that version. Read back later as `as_of_version=N`, as `as_of=`
    its recorded time (in three offsets), and a microsecond before (the plan before it), by
    the supervisor, by the case manager who received the case by transfer (the owner reads
    its whole record, decision 0004) and by a court whose window holds every version."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case(risk_level="high")
    live: dict[int, Any] = {1: await cm.plan(case_id)}
    stamps: dict[int, str] = {}
    answers: list[Any] = []

    async def write(method: str, path: str, body: Any, *, by: str | None = None) -> None:
        clock.advance(minutes=7, microseconds=13)
        response = await client.request(
            method, f"/v1/cases/{case_id}/{path}", json=body, headers=bearer(by or cm.token)
        )
        answer = await response.json()
        assert response.status in (200, 201), answer
        answers.append(answer)
        plan = await cm.call("GET", f"/v1/cases/{case_id}", token=supervisor, expect=200)
        assert plan["version"] == answer["version"]
        live[answer["version"]] = plan

    strength = None
    await write(
        "PATCH",
        "participant",
        {"pronouns": "she/her", "preferred_name": "Jordy", "reason": "Jordan asked"},
    )
    await write("POST", "strengths", {"category": "skill", "description": "Fixes bikes"})
    strength = answers[-1]["id"]
    await write(
        "POST",
        "goals",
        {
            "title": "Find steady work",
            "domain": "employment",
            "source": "participant",
            "strength_ids": [strength],
            "in_their_words": "A job where I use my hands",
        },
    )
    goal = answers[-1]["id"]
    await write(
        "POST",
        f"goals/{goal}/steps",
        {"description": "Visit the job centre", "owner": "participant"},
    )
    await write(
        "POST",
        "agreements",
        {
            "participation": "in_person",
            "present": ["Jordan"],
            "participant_statement": "It is my plan",
        },
    )
    await write("PATCH", "participant", {"email": "jordy@example.org", "pronouns": None})
    await write("POST", "notes", {"text": "Met at the library"})
    await write(
        "POST", "transfer", {"case_manager": "cm-2", "reason": "Caseload balance"}, by=supervisor
    )
    cm2 = token(sub="cm-2")
    await write("POST", "close", {"reason": "Jordan moved away"}, by=cm2)
    await write("POST", "reopen", {"reason": "Jordan came back"}, by=cm2)
    await write("PATCH", "participant", {"name": "Jordan Rivera-Lee"}, by=cm2)
    head = answers[-1]["version"]
    for answer in answers:
        stamps[answer["version"]] = answer["events"][-1]["recorded_at"]
        assert {e["recorded_at"] for e in answer["events"]} == {stamps[answer["version"]]}

    # the history says what the writes said
    history = await cm.call(
        "GET", f"/v1/cases/{case_id}/history?limit=500", token=supervisor, expect=200
    )
    assert [e["version"] for e in history["events"]] == list(range(1, head + 1))
    by_version = {e["version"]: e for e in history["events"]}
    for answer in answers:
        for event in answer["events"]:
            assert by_version[event["version"]] == event
    court = token(
        role="auditor",
        sub="court-1",
        cases=[case_id],
        window_from=_parse(by_version[1]["recorded_at"]),
        window_to=_parse(stamps[head]),
    )
    clock.advance(hours=1)
    for reader in (supervisor, cm2, court):
        for version, plan in live.items():
            status, body, etag = await _get(
                client, f"/v1/cases/{case_id}?as_of_version={version}", reader
            )
            assert (status, etag, body) == (200, f'"{version}"', plan), version
        for version, stamp in stamps.items():
            moment = _parse(stamp)
            for offset in (UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))):
                as_of = quote(moment.astimezone(offset).isoformat())
                status, body, etag = await _get(
                    client, f"/v1/cases/{case_id}?as_of={as_of}", reader
                )
                assert (status, etag, body) == (200, f'"{version}"', live[version]), stamp
            before = quote(_z(moment - US))
            status, body, etag = await _get(client, f"/v1/cases/{case_id}?as_of={before}", reader)
            previous = version - len(next(a for a in answers if a["version"] == version)["events"])
            assert (status, etag, body) == (200, f'"{previous}"', live[previous]), stamp
    # diffs across the participant's updates, the transfer, the close and the reopen
    for start, end in pairwise(sorted(live)):
        diff = await cm.call(
            "GET",
            f"/v1/cases/{case_id}/diff?from_version={start}&to_version={end}",
            token=cm2,
            expect=200,
        )
        assert diff["changes"] == diff_documents(live[start], live[end]), (start, end)
    first_update = answers[0]["version"]
    diff = await cm.call(
        "GET",
        f"/v1/cases/{case_id}/diff?from_version=1&to_version={first_update}",
        token=supervisor,
        expect=200,
    )
    assert {
        c["path"]: (c["from"], c["to"])
        for c in diff["changes"]
        if c["path"].startswith("participant.")
    } == {
        "participant.pronouns": ("they/them", "she/her"),
        "participant.preferred_name": ("Jo", "Jordy"),
    }


# -- who may travel in time --------------------------------------------------------------------

TIME_TRAVEL = [
    "?as_of_version=1",
    "?as_of_version=2",
    "?as_of=2026-03-02T10:00:00.500001Z",
    "/diff?from_version=0&to_version=2",
    "/history",
    "/history?after_version=1",
]
PAST_THE_RECORD = [
    "?as_of_version=3",
    "?as_of_version=10000000",
    "?as_of=2030-01-01T00:00:00Z",
    "?as_of=2020-01-01T00:00:00Z",
    "/diff?from_version=1&to_version=9",
]


@pytest.mark.parametrize("path", TIME_TRAVEL + PAST_THE_RECORD)
async def test_a_participant_reads_their_plan_but_never_travels_in_it(
    cm: CaseApi,
    client: TestClient,
    clock: FakeClock,
    token: TokenFactory,
    fresh_pool: asyncpg.Pool,
    path: str,
) -> None:
    """Decision 0004: participant, own case: read plan yes; history, diff, verify, time travel
    403, whatever the point asked for (a version past the latest tells a participant nothing
    a 403 does not). Not logged: a participant's reads are not."""
    case_id = await _two_versions(cm, clock)
    participant = token(role="participant", sub="jo", cases=[case_id])
    assert (await _get(client, f"/v1/cases/{case_id}", participant))[0] == 200
    status, body, _ = await _get(client, f"/v1/cases/{case_id}{path}", participant)
    assert status == 403, body
    assert "participant" in body["detail"], body
    other = token(role="participant", sub="jo", cases=["00000000-0000-4000-8000-000000000021"])
    assert (await _get(client, f"/v1/cases/{case_id}{path}", other))[0] == 404
    assert await _log(fresh_pool, case_id) == []


@pytest.mark.parametrize("path", TIME_TRAVEL + PAST_THE_RECORD)
async def test_another_agency_gets_404_whatever_the_point_and_leaves_no_entry(
    cm: CaseApi,
    client: TestClient,
    clock: FakeClock,
    token: TokenFactory,
    fresh_pool: asyncpg.Pool,
    path: str,
) -> None:
    case_id = await _two_versions(cm, clock)
    for who in (
        token(role="supervisor", sub="sup-9", agency="agency-b"),
        token(sub="cm-1", agency="agency-b"),
        token(role="auditor", sub="court-9", agency="agency-b", cases=[case_id]),
    ):
        status, body, _ = await _get(client, f"/v1/cases/{case_id}{path}", who)
        assert (status, body["type"].rsplit("/", 1)[1]) == (404, "not-found"), body
    assert await _log(fresh_pool, case_id) == []


@pytest.mark.parametrize("path", TIME_TRAVEL)
async def test_the_case_manager_who_transferred_the_case_away_reads_none_of_it(
    cm: CaseApi,
    client: TestClient,
    clock: FakeClock,
    token: TokenFactory,
    fresh_pool: asyncpg.Pool,
    path: str,
) -> None:
    """Decision 0004: a case manager who is not the owner gets 403 on history, diff and time
    travel, also of the versions when it was theirs; the one who received it reads it all."""
    case_id = await _two_versions(cm, clock)
    supervisor = token(role="supervisor", sub="sup-1")
    await cm.call(
        "POST",
        f"/v1/cases/{case_id}/transfer",
        {"case_manager": "cm-2", "reason": "Caseload balance"},
        token=supervisor,
        expect=200,
    )
    status, body, _ = await _get(client, f"/v1/cases/{case_id}{path}", cm.token)
    assert status == 403, body
    assert "caseload" in body["detail"]
    assert (await _get(client, f"/v1/cases/{case_id}{path}", token(sub="cm-2")))[0] == 200
    assert await _log(fresh_pool, case_id) == []  # case managers' reads are not logged


async def test_supervisors_time_travel_is_logged_as_asked(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory, fresh_pool: asyncpg.Pool
) -> None:
    """Decision 0006: `what` names the read and its parameters; an `as_of` in any offset is
    logged as the instant it names (UTC); reads the record cannot answer are not logged."""
    case_id = await _two_versions(cm, clock)
    supervisor = token(role="supervisor", sub="sup-1")
    for path, status in [
        ("?as_of_version=1", 200),
        ("?as_of=2026-03-03T00:00:00.500001+14:00", 200),
        ("?as_of=2026-03-01T22:00:00.5000009-12:00", 200),
        ("/diff?from_version=0&to_version=2", 200),
        ("/history?after_version=1&limit=7", 200),
        ("?as_of_version=3", 422),
        ("?as_of=2026-03-02T12:00:01Z", 422),
        ("?as_of=2026-03-02T09:00:00Z", 404),
        ("/diff?from_version=1&to_version=3", 422),
        ("?as_of_version=0", 422),
        ("/diff?from_version=2&to_version=1", 422),
    ]:
        assert (await _get(client, f"/v1/cases/{case_id}{path}", supervisor))[0] == status
    assert await _log(fresh_pool, case_id) == [
        ("sup-1", "plan as_of_version=1", None),
        ("sup-1", "plan as_of=2026-03-02T10:00:00.500001+00:00", None),
        ("sup-1", "plan as_of=2026-03-02T10:00:00.500000+00:00", None),
        ("sup-1", "diff from_version=0 to_version=2", None),
        ("sup-1", "history after_version=1 limit=7", None),
    ]


def _describe(start: datetime, end: datetime) -> str:
    return f"from {start.isoformat()} to {end.isoformat()}"


# -- a court's window, to the microsecond ------------------------------------------------------


async def _four_versions(cm: CaseApi, clock: FakeClock) -> tuple[str, list[datetime]]:
    """Versions 1-4, a day apart, each at an odd microsecond."""
    times = []
    clock.now = datetime(2026, 3, 2, 9, 0, 0, 123457, tzinfo=UTC)
    times.append(clock.now)
    case_id = await cm.open_case()
    for write in (
        lambda: cm.strength(case_id),
        lambda: cm.goal(case_id),
        lambda: cm.call(
            "POST", f"/v1/cases/{case_id}/notes", {"text": "Met at the library"}, expect=201
        ),
    ):
        clock.advance(days=1, microseconds=333_333)
        times.append(clock.now)
        await write()
    clock.advance(days=1)
    return case_id, times


async def test_a_courts_window_holds_its_edges_to_the_microsecond(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory, fresh_pool: asyncpg.Pool
) -> None:
    """Decision 0006: window from version 2's stamp to version 3's, both inclusive: *first* is
    1, *last* 3; `as_of` inside [window_from, window_to], `as_of_version` and diffs inside
    [first, last]; everything else 403, logged as refused, its detail naming the window and
    never the head (version 4)."""
    case_id, t = await _four_versions(cm, clock)
    court = token(role="auditor", sub="court-1", cases=[case_id], window_from=t[1], window_to=t[2])
    c = f"/v1/cases/{case_id}"
    allowed = [
        (f"{c}", '"3"'),
        (f"{c}?as_of={_z(t[1])}", '"2"'),
        (f"{c}?as_of={_z(t[2])}", '"3"'),
        (f"{c}?as_of={quote(t[2].astimezone(timezone(timedelta(hours=14))).isoformat())}", '"3"'),
        (f"{c}?as_of={_z(t[2] - US)}", '"2"'),
        (f"{c}?as_of_version=1", '"1"'),
        (f"{c}?as_of_version=3", '"3"'),
        (f"{c}/diff?from_version=1&to_version=3", None),
        (f"{c}/history", None),
    ]
    for path, etag in allowed:
        status, body, got = await _get(client, path, court)
        assert (status, got) == (200, etag), (path, body)
    history = (await _get(client, f"{c}/history?after_version=0&limit=1", court))[1]
    assert ([e["version"] for e in history["events"]], history["next_after_version"]) == ([2], 2)
    west = quote((t[1] - US).astimezone(timezone(timedelta(hours=-12))).isoformat())
    refused = [
        f"{c}?as_of={_z(t[1] - US)}",
        f"{c}?as_of={_z(t[2] + US)}",
        f"{c}?as_of={west}",
        f"{c}?as_of_version=4",
        f"{c}/diff?from_version=0&to_version=1",
        f"{c}/diff?from_version=2&to_version=4",
        f"{c}/diff?from_version=3&to_version=4",
    ]
    for path in refused:
        status, body, _ = await _get(client, path, court)
        assert status == 403, (path, body)
        assert "audit window" in body["detail"]
        assert "to 4" not in body["detail"], body["detail"]
        assert "1 to 3" in body["detail"] or _describe(t[1], t[2]) in body["detail"], body
    entries = await _log(fresh_pool, case_id)
    assert len(entries) == len(allowed) + 1 + len(refused)
    assert all(what.endswith(" window_versions=1-3") for _, what, _ in entries), entries
    assert [refused for _, _, refused in entries] == [None] * (len(allowed) + 1) + [
        "outside the audit window"
    ] * len(refused)
    # a microsecond further in, on either side, and the window holds one version less
    narrower = token(
        role="auditor", sub="court-1", cases=[case_id], window_from=t[1] + US, window_to=t[2] - US
    )
    assert (await _get(client, c, narrower))[2] == '"2"'
    assert [e["version"] for e in (await _get(client, f"{c}/history", narrower))[1]["events"]] == []
    assert (await _get(client, f"{c}?as_of_version=1", narrower))[0] == 403
    assert (await _get(client, f"{c}?as_of_version=2", narrower))[0] == 200
    assert (await _get(client, f"{c}?as_of={_z(t[1])}", narrower))[0] == 403


async def test_a_court_sees_no_point_before_the_case_opened_as_a_plan(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory
) -> None:
    """A window that opens before the case: `as_of` inside it but before the opening is the
    404 not-yet-opened a supervisor gets (naming a time that answers), never a plan."""
    case_id, t = await _four_versions(cm, clock)
    court = token(
        role="auditor",
        sub="court-1",
        cases=[case_id],
        window_from=t[0] - timedelta(days=30),
        window_to=t[1],
    )
    status, body, _ = await _get(client, f"/v1/cases/{case_id}?as_of={_z(t[0] - US)}", court)
    assert (status, body["type"].rsplit("/", 1)[1]) == (404, "not-yet-opened"), body
    assert t[0].isoformat() in body["detail"]
    assert (await _get(client, f"/v1/cases/{case_id}?as_of={_z(t[0])}", court))[2] == '"1"'
    status, body, _ = await _get(
        client, f"/v1/cases/{case_id}/diff?from_version=0&to_version=2", court
    )
    assert status == 200
    assert {c["change"] for c in body["changes"]} == {"added"}


# -- an answer once given is the answer -------------------------------------------------------


async def test_the_plan_as_of_a_past_time_does_not_change_once_given(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory, fresh_pool: asyncpg.Pool
) -> None:
    """Decision 0006 refuses an `as_of` still to come because "the same question got another
    plan after the next write, and the log could not say which was shown". A write is stamped
    (`recorded_at`, covered by its hash) before its statement commits: while it waits (here on
    a lock, as on a group commit or a held head) a time after its stamp is already past. It
    was answered without the write, and once the write committed the same `as_of` answered
    another plan. Now the read waits for the write holding the head, and a write not yet
    holding it is stamped again after the moment answered (decision 0002): whichever gets
    the head first, the answer stays the answer."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()  # 09:00:00
    clock.advance(minutes=10)
    stamped = clock.now  # 09:10:00, the note's first stamp
    as_of = _z(stamped + timedelta(seconds=1))
    waiting_on_locks = (
        "SELECT count(*) >= {} FROM pg_stat_activity WHERE"
        " datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with fresh_pool.acquire() as held:
        transaction = held.transaction()
        await transaction.start()
        try:
            await held.execute(
                "SELECT 1 FROM records.streams WHERE stream_id = $1 FOR UPDATE", case_id
            )
            note = asyncio.ensure_future(
                cm.call(
                    "POST", f"/v1/cases/{case_id}/notes", {"text": "Called on Tuesday"}, expect=201
                )
            )
            await wait_until(fresh_pool, waiting_on_locks.format(1))
            clock.advance(seconds=2)  # 09:10:02: the question is about the past
            read = asyncio.ensure_future(
                _get(client, f"/v1/cases/{case_id}?as_of={as_of}", supervisor)
            )
            await wait_until(fresh_pool, waiting_on_locks.format(2))
        finally:
            await transaction.rollback()
    first = await read
    written = await note
    second = await _get(client, f"/v1/cases/{case_id}?as_of={as_of}", supervisor)
    assert first[0] == second[0] == 200, (first, second)
    assert (first[2], first[1]) == (second[2], second[1]), (
        f"as_of={as_of} answered version {first[2]}, then {second[2]}"
    )
    recorded_at = written["events"][0]["recorded_at"]
    if first[2] == '"1"':  # the read took the head first: the note was stamped after it
        assert recorded_at == _z(clock.now), recorded_at
    else:
        assert (first[2], recorded_at) == ('"2"', _z(stamped))
    logged = [what for _, what, _ in await _log(fresh_pool, case_id)]
    assert logged == [f"plan as_of={as_of.replace('Z', '+00:00')}"] * 2


async def test_a_write_stamped_before_a_moment_already_answered_is_stamped_again(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory
) -> None:
    """A reader answered as of the writer's own clock reading (one instance's clock a little
    ahead of another's, or an injected clock that has not moved): the write is recorded one
    microsecond after that moment, never refused for it, and the answer given stays."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()
    clock.advance(minutes=10)
    now = _z(clock.now)
    before = await _get(client, f"/v1/cases/{case_id}?as_of={now}", supervisor)
    written = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Called"}, expect=201)
    assert written["events"][0]["recorded_at"] == _z(clock.now + US)
    plan = await cm.call("GET", f"/v1/cases/{case_id}", expect=200)  # projected at the new stamp
    assert plan["updated_at"] == _z(clock.now + US), plan["updated_at"]
    again = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Again"}, expect=201)
    assert again["version"] == 3  # the cached state is the one recorded
    assert await _get(client, f"/v1/cases/{case_id}?as_of={now}", supervisor) == before


async def test_a_window_that_has_closed_shows_the_same_versions_after_a_later_write(
    cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory
) -> None:
    """A court's window ending now has closed: a write stamped at the very moment it ends
    (the same clock reading) would have joined it after the court was answered. It is
    recorded after the window's end instead, and the court's answer stays."""
    case_id = await cm.open_case()
    clock.advance(minutes=10)
    court = token(
        role="auditor",
        sub="court-1",
        cases=[case_id],
        window_from=clock.now - timedelta(days=1),
        window_to=clock.now,
    )
    before = await _get(client, f"/v1/cases/{case_id}", court)
    assert (before[0], before[2]) == (200, '"1"'), before
    written = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Called"}, expect=201)
    assert written["events"][0]["recorded_at"] == _z(clock.now + US)
    assert await _get(client, f"/v1/cases/{case_id}", court) == before
