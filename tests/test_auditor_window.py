"""Auditors see a case only as it was inside their token's time window, on every read.

The case below is written one day apart (versions 1-4); the auditor's window opens an hour
before version 2 and closes an hour after version 3, so the plan as the window opened is
version 1 and the window's own events are versions 2 and 3.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.common.auth import issue_token
from services.records.export.verify import summary, verify_export
from tests.conftest import JWT_SECRET, ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@dataclass
class Scene:
    client: TestClient
    token: TokenFactory
    db: asyncpg.Pool
    case_id: str
    times: list[datetime]  # recorded_at of versions 1..4

    def auditor(self, start: datetime | None, end: datetime | None, **claims: Any) -> str:
        return self.token(role="auditor", sub="court-1", cases=[self.case_id],
                          window_from=start, window_to=end, **claims)

    def inside(self) -> str:
        return self.auditor(self.times[1] - HOUR, self.times[2] + HOUR)

    async def get(self, path: str, token: str) -> tuple[int, Any, str | None]:
        if path.startswith("/v1/access-log"):
            await self.log_settled()
        response = await self.client.get(path.format(c=f"/v1/cases/{self.case_id}"),
                                         headers=bearer(token))
        return response.status, await response.json(), response.headers.get("ETag")

    async def log_settled(self) -> None:
        """The access log hands out entries in commit order, holding one back while any older
        transaction on the server is open (other test runs share it): wait until none is."""
        for _ in range(1500):  # up to 30 s
            if not await self.db.fetchval(
                    "SELECT count(*) FROM records.access_log"
                    " WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("access-log entries still held back after 30 s")


@pytest.fixture
async def scene(make_records_client: ClientFactory, fresh_database_url: str,
                token: TokenFactory) -> AsyncIterator[Scene]:
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock)
    cm = CaseApi(client, token(sub="cm-1"))
    times = [clock.now]
    case_id = await cm.open_case()
    for write in (lambda: cm.strength(case_id), lambda: cm.goal(case_id),
                  lambda: cm.call("POST", f"/v1/cases/{case_id}/notes",
                                  {"text": "Met at the library"}, expect=201)):
        clock.advance(days=1)
        times.append(clock.now)
        await write()
    db = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    yield Scene(client, token, db, case_id, times)
    await db.close()


def _at(moment: datetime) -> str:
    return quote(moment.isoformat())


# (path, status, ETag or None, the versions of the events the answer carries)
READS_INSIDE_THE_WINDOW: list[tuple[str, int, str | None, list[int]]] = [
    ("{c}", 200, '"3"', []),  # the plan as the window closed, not the current version 4
    ("{c}?as_of_version=1", 200, '"1"', []),  # the plan as the window opened
    ("{c}?as_of_version=3", 200, '"3"', []),
    ("{c}/history", 200, None, [2, 3]),
    ("{c}/history?after_version=2", 200, None, [3]),
    ("{c}/diff?from_version=1&to_version=3", 200, None, [2, 3]),
    ("{c}/diff?from_version=2&to_version=3", 200, None, [3]),
]
READS_OUTSIDE_THE_WINDOW = [
    "{c}?as_of_version=4",
    "{c}/diff?from_version=0&to_version=1",
    "{c}/diff?from_version=2&to_version=4",
    "{c}/diff?from_version=3&to_version=4",
]


@pytest.mark.parametrize(("path", "status", "etag", "versions"), READS_INSIDE_THE_WINDOW)
async def test_reads_inside_the_window(scene: Scene, path: str, status: int, etag: str | None,
                                       versions: list[int]) -> None:
    code, body, got_etag = await scene.get(path, scene.inside())
    assert code == status, body
    if etag is not None:
        assert got_etag == etag
    if "events" in body:
        assert [e["version"] for e in body["events"]] == versions


@pytest.mark.parametrize("path", READS_OUTSIDE_THE_WINDOW)
async def test_reads_outside_the_window_are_refused(scene: Scene, path: str) -> None:
    code, body, _ = await scene.get(path, scene.inside())
    assert code == 403, body
    assert "audit window" in body["detail"]
    assert "4" not in body["detail"].split("versions")[-1]  # the head is not given away


async def test_as_of_inside_and_outside_the_window(scene: Scene) -> None:
    inside = await scene.get(f"{{c}}?as_of={_at(scene.times[1] + HOUR)}", scene.inside())
    assert (inside[0], inside[2]) == (200, '"2"')
    for moment in (scene.times[0] + HOUR, scene.times[3]):
        code, body, _ = await scene.get(f"{{c}}?as_of={_at(moment)}", scene.inside())
        assert code == 403, body
        assert "audit window" in body["detail"]


async def test_history_pages_stay_inside_the_window(scene: Scene) -> None:
    first = await scene.get("{c}/history?limit=1", scene.inside())
    assert [e["version"] for e in first[1]["events"]] == [2]
    assert first[1]["next_after_version"] == 2
    second = await scene.get("{c}/history?after_version=2&limit=1", scene.inside())
    assert [e["version"] for e in second[1]["events"]] == [3]
    assert second[1]["next_after_version"] is None  # version 4 exists but is not hinted at


async def test_verify_checks_the_chain_through_the_window_only(scene: Scene) -> None:
    supervisor = scene.token(role="supervisor", sub="sup-1")
    history = (await scene.get("{c}/history", supervisor))[1]["events"]
    whole = (await scene.get("{c}/verify", supervisor))[1]
    assert (whole["valid"], whole["events_checked"]) == (True, 4)
    code, report, _ = await scene.get("{c}/verify", scene.inside())
    assert code == 200
    assert report["valid"] is True
    assert report["events_checked"] == 3
    assert report["head_hash"] == history[2]["hash"]


async def test_an_export_holds_the_window_and_verifies_from_its_first_event(
        scene: Scene) -> None:
    response = await scene.client.get(f"/v1/cases/{scene.case_id}/export",
                                      headers=bearer(scene.inside()))
    assert response.status == 200
    raw = (await response.read()).splitlines(keepends=True)
    header = json.loads(raw[0])
    assert (header["first_version"], header["last_version"]) == (2, 3)
    assert [json.loads(line)["version"] for line in raw[1:-1]] == [2, 3]
    report = verify_export(raw)
    assert report.ok
    assert report.events == 2


async def test_a_fhir_export_shows_the_plan_as_the_window_closed(scene: Scene) -> None:
    cm = CaseApi(scene.client, scene.token(sub="cm-1"))
    await cm.goal(scene.case_id, "Learn to drive")  # version 5, after the window
    response = await scene.client.get(f"/v1/cases/{scene.case_id}/export?format=fhir",
                                      headers=bearer(scene.inside()))
    assert response.status == 200
    raw = await response.read()
    entries = [e["resource"] for e in json.loads(raw)["entry"]]
    assert [r["description"]["text"] for r in entries if r["resourceType"] == "Goal"] \
        == ["Find steady work"]
    recorded = [json.loads(r["extension"][0]["valueString"])["version"]
                for r in entries if r["resourceType"] == "Provenance"]
    assert recorded == [2, 3]
    report = verify_export(raw.splitlines(keepends=True))
    assert report.ok, report.problems
    assert report.events == 2


async def test_open_ended_windows(scene: Scene) -> None:
    from_version_3 = scene.auditor(scene.times[2] - HOUR, None)
    plan = await scene.get("{c}", from_version_3)
    assert plan[2] == '"4"'  # no end: the current plan
    history = await scene.get("{c}/history", from_version_3)
    assert [e["version"] for e in history[1]["events"]] == [3, 4]
    until_version_2 = scene.auditor(None, scene.times[1] + HOUR)
    assert (await scene.get("{c}", until_version_2))[2] == '"2"'
    history = await scene.get("{c}/history", until_version_2)
    assert [e["version"] for e in history[1]["events"]] == [1, 2]
    diff = await scene.get("{c}/diff?from_version=0&to_version=2", until_version_2)
    assert diff[0] == 200


async def test_a_window_holds_the_events_recorded_at_its_very_edges(scene: Scene) -> None:
    """A court order "from 2 March 09:00 to 3 March 09:00" includes what was recorded at
    exactly those moments."""
    edges = scene.auditor(scene.times[1], scene.times[2])
    history = await scene.get("{c}/history", edges)
    assert [e["version"] for e in history[1]["events"]] == [2, 3]


@pytest.mark.parametrize("path", ["{c}", "{c}?as_of_version=1", "{c}/history",
                                  "{c}/diff?from_version=0&to_version=1", "{c}/verify"])
async def test_a_window_that_closed_before_the_case_opened_sees_no_case(scene: Scene,
                                                                        path: str) -> None:
    early = scene.auditor(scene.times[0] - 10 * DAY, scene.times[0] - DAY)
    assert (await scene.get(path, early))[0] == 404


async def test_a_write_tells_an_auditor_no_more_than_a_read(scene: Scene) -> None:
    """The window closed before the case opened, so reads answer 404; a write to it answered
    403 "may not write", and to a named case that does not exist 404: the difference told the
    auditor the case exists. Both are refused alike now, and nothing is written."""
    missing = str(uuid.uuid4())
    early = scene.token(role="auditor", sub="court-1", cases=[scene.case_id, missing],
                        window_from=scene.times[0] - 10 * DAY, window_to=scene.times[0] - DAY)
    answers = []
    for case in (scene.case_id, missing):
        for path, body in ((f"/v1/cases/{case}/notes", {"text": "hello"}),
                           (f"/v1/cases/{case}/transfer", {"case_manager": "cm-2",
                                                           "reason": "court order"})):
            response = await scene.client.post(path, json=body, headers=bearer(early))
            problem = await response.json()
            answers.append((response.status, problem["detail"]))
    assert answers[:2] == answers[2:], answers
    assert {status for status, _ in answers} == {403}
    assert await scene.db.fetchval("SELECT max(version) FROM records.events") == 4


@pytest.mark.parametrize("path", ["{c}", "{c}/history", "{c}/verify",
                                  "{c}/diff?from_version=1&to_version=2"])
async def test_a_case_the_auditor_does_not_name_is_404_whatever_the_window(scene: Scene,
                                                                           path: str) -> None:
    other = scene.token(role="auditor", sub="court-1", window_from=scene.times[0] - DAY,
                        window_to=scene.times[3] + DAY)
    assert (await scene.get(path, other))[0] == 404


async def test_a_window_that_holds_no_event_shows_the_plan_as_it_stood(scene: Scene) -> None:
    quiet = scene.auditor(scene.times[1] + HOUR, scene.times[1] + 2 * HOUR)
    assert (await scene.get("{c}", quiet))[2] == '"2"'
    assert (await scene.get("{c}/history", quiet))[1]["events"] == []
    assert (await scene.get("{c}/diff?from_version=1&to_version=2", quiet))[0] == 403
    export = await scene.client.get(f"/v1/cases/{scene.case_id}/export", headers=bearer(quiet))
    assert export.status == 200
    report = verify_export((await export.read()).splitlines(keepends=True))
    assert report.ok
    assert report.events == 0
    assert "chain:     no events in this export" in summary(report)
    # the header's empty range (versions 3 to 2) is said as what it means
    assert "events:    0 (none: nothing was recorded in the window; the case stood at version" \
        " 2)" in summary(report)
    assert export.headers["Content-Disposition"].endswith(f'case-{scene.case_id}-v2-unchanged'
                                                          '.jsonl"')


async def test_every_auditor_read_is_logged_even_when_refused(scene: Scene) -> None:
    paths = [p for p, *_ in READS_INSIDE_THE_WINDOW] + READS_OUTSIDE_THE_WINDOW + ["{c}/verify"]
    for path in paths:
        await scene.get(path, scene.inside())
    rows = await scene.db.fetch("SELECT actor_sub, actor_role, case_id::text AS case_id"
                                " FROM records.access_log")
    assert len(rows) == len(paths)
    assert {(r["actor_sub"], r["actor_role"], r["case_id"]) for r in rows} == {
        ("court-1", "auditor", scene.case_id)}


@pytest.mark.parametrize("claims", [
    {"window_from": "2026-03-01"},
    {"window_to": "1772323200"},
    {"window_from": [1772323200]},
    {"window_to": {"at": 1}},
    {"window_from": True},
    {"window_to": float("nan")},
    {"window_to": float("inf")},
    {"window_from": 1e300},
    {"window_from": -1e300},
    {"window_from": 1772409600, "window_to": 1772323200},  # ends before it starts
])
async def test_malformed_window_claims_make_the_token_invalid(scene: Scene,
                                                             claims: dict[str, Any]) -> None:
    token = scene.token(role="auditor", sub="court-1", cases=[scene.case_id], extra=claims)
    for path in ("{c}", "{c}/history", "{c}/verify"):
        response = await scene.client.get(path.format(c=f"/v1/cases/{scene.case_id}"),
                                          headers=bearer(token))
        assert response.status == 401, (claims, await response.text())
        assert response.content_type == "application/problem+json"
        assert "window" in (await response.json())["detail"]


async def test_an_auditor_token_without_a_window_is_refused(scene: Scene) -> None:
    """Auditors are scoped to named cases and a stretch of their record: a token that names
    no stretch is not read as "all of it"."""
    token = issue_token(JWT_SECRET, sub="court-1", role="auditor", agency="agency-a",
                        cases=[str(scene.case_id)])
    for path in ("{c}", "{c}/history", "{c}/export"):
        response = await scene.client.get(path.format(c=f"/v1/cases/{scene.case_id}"),
                                          headers=bearer(token))
        assert response.status == 401, await response.text()
        assert "audit window" in (await response.json())["detail"]


async def test_numeric_window_claims_are_accepted(scene: Scene) -> None:
    start, end = scene.times[1] - HOUR, scene.times[2] + HOUR
    token = scene.token(role="auditor", sub="court-1", cases=[scene.case_id],
                        extra={"window_from": start.timestamp() + 0.5,
                               "window_to": int(end.timestamp())})
    assert (await scene.get("{c}", token))[2] == '"3"'


# the access-log export --------------------------------------------------------------------


async def test_supervisors_export_their_agencys_access_log(scene: Scene) -> None:
    supervisor = scene.token(role="supervisor", sub="sup-1")
    await scene.get("{c}", supervisor)
    await scene.get("{c}/history", scene.inside())
    await scene.get("{c}/verify", scene.inside())
    first = await scene.get("/v1/access-log?limit=2", supervisor)
    assert first[0] == 200
    assert [(e["actor_sub"], e["action"], e["what"]) for e in first[1]["entries"]] == [
        ("sup-1", "read_plan", "plan"),
        ("court-1", "audit", "history after_version=0 limit=100 window_versions=1-3")]
    assert first[1]["entries"][0]["case_id"] == scene.case_id
    rest = await scene.get(f"/v1/access-log?after={first[1]['next_after']}", supervisor)
    assert [e["actor_sub"] for e in rest[1]["entries"]] == ["court-1"]
    assert rest[1]["next_after"] is None
    other_case = await scene.get("/v1/access-log?case_id=7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e",
                                 supervisor)
    assert other_case[1]["entries"] == []
    this_case = await scene.get(f"/v1/access-log?case_id={scene.case_id}", supervisor)
    assert len(this_case[1]["entries"]) == 3


async def test_paging_the_access_log_never_skips_an_entry_committed_late(
        scene: Scene) -> None:
    """Entries commit out of id order. An entry whose transaction is still open holds back
    the ones behind it, so a reader following the pages never passes over it."""
    supervisor = scene.token(role="supervisor", sub="sup-1")
    async with scene.db.acquire() as slow:
        late = slow.transaction()
        await late.start()
        await slow.execute(
            "INSERT INTO records.access_log (at, agency, actor_sub, actor_role, case_id, action,"
            " what) VALUES (now(), 'agency-a', 'sup-2', 'supervisor', $1, 'read_plan', 'plan')",
            uuid.UUID(scene.case_id))
        await scene.get("{c}", supervisor)  # a later id, committed first
        response = await scene.client.get("/v1/access-log", headers=bearer(supervisor))
        page = await response.json()
        assert page["entries"] == []
        await late.commit()
    rest = (await scene.get(f"/v1/access-log?after={page['checkpoint']}", supervisor))[1]
    assert [e["actor_sub"] for e in rest["entries"]] == ["sup-2", "sup-1"]
    assert (await scene.get(f"/v1/access-log?after={rest['checkpoint']}",
                            supervisor))[1]["entries"] == []


@pytest.mark.parametrize(("read", "what"), [
    ("{c}?as_of_version=2", "plan as_of_version=2"),
    ("{c}?as_of=2026-03-02T10:00:00Z", "plan as_of=2026-03-02T10:00:00+00:00"),
    ("{c}/diff?from_version=1&to_version=3", "diff from_version=1 to_version=3"),
    ("{c}/history?after_version=1&limit=5", "history after_version=1 limit=5"),
    ("{c}/verify", "verify"),
    ("{c}/export?format=csv", "export format=csv"),
])
async def test_the_access_log_says_which_part_of_the_record_was_read(
        scene: Scene, read: str, what: str) -> None:
    supervisor = scene.token(role="supervisor", sub="sup-1")
    response = await scene.client.get(read.format(c=f"/v1/cases/{scene.case_id}"),
                                      headers=bearer(supervisor))
    assert response.status == 200, await response.text()
    [entry] = (await scene.get("/v1/access-log", supervisor))[1]["entries"]
    assert entry["what"] == what


async def test_a_supervisors_caseload_listing_is_logged_once_per_case_shown(
        scene: Scene) -> None:
    """A listing shows each case's participant, review dates and progress: a read of each."""
    supervisor = scene.token(role="supervisor", sub="sup-1")
    cm = CaseApi(scene.client, scene.token(sub="cm-2"))
    other = await cm.open_case(case_manager="cm-2")
    await scene.get("/v1/cases?status=open", supervisor)
    entries = (await scene.get("/v1/access-log", supervisor))[1]["entries"]
    assert sorted((e["case_id"], e["action"], e["what"]) for e in entries) == sorted(
        (case_id, "list", "caseload status=open") for case_id in (scene.case_id, other))
    await scene.get("/v1/cases", scene.token(sub="cm-2"))  # a case manager's own: not audited
    assert (await scene.get("/v1/access-log", supervisor))[1]["entries"] == entries


async def test_reading_the_access_log_is_not_itself_a_case_read(scene: Scene) -> None:
    supervisor = scene.token(role="supervisor", sub="sup-1")
    await scene.get("/v1/access-log", supervisor)
    assert (await scene.get("/v1/access-log", supervisor))[1]["entries"] == []


async def test_another_agency_never_sees_the_entries(scene: Scene) -> None:
    await scene.get("{c}", scene.token(role="supervisor", sub="sup-1"))
    elsewhere = scene.token(role="supervisor", sub="sup-x", agency="agency-b")
    for path in ("/v1/access-log", f"/v1/access-log?case_id={scene.case_id}"):
        code, body, _ = await scene.get(path, elsewhere)
        assert (code, body["entries"]) == (200, [])


@pytest.mark.parametrize("who", [
    {"role": "auditor", "sub": "court-1"}, {"role": "case_manager", "sub": "cm-1"},
    {"role": "participant", "sub": "p-1"}, {"role": "analyst", "sub": "an-1"},
    {"role": "service", "sub": "notifier"},
])
async def test_only_supervisors_read_the_access_log(scene: Scene, who: dict[str, str]) -> None:
    code, body, _ = await scene.get("/v1/access-log", scene.token(**who))
    assert code == 403, body


@pytest.mark.parametrize("query", ["after=-1", "limit=0", "limit=501", "case_id=nope",
                                   "after=x", "agency=agency-b"])
async def test_bad_access_log_queries(scene: Scene, query: str) -> None:
    code, body, _ = await scene.get(f"/v1/access-log?{query}",
                                    scene.token(role="supervisor", sub="sup-1"))
    assert code in {400, 422}, body


@pytest.mark.parametrize("path", ["{c}", "{c}?as_of_version=4", "{c}/history",
                                  "{c}/diff?from_version=1&to_version=4", "{c}/verify",
                                  "{c}/export", "{c}/export?format=fhir"])
async def test_a_window_still_to_open_shows_nothing_yet(scene: Scene, path: str) -> None:
    """Before its window opened, a court's token read the plan as it was at that moment,
    which the window, once open, refused as outside it: it followed the case through a
    period it was never given. Nothing inside the window is recorded yet: 404, as for a case
    the token does not name, and the attempt is logged as outside the window."""
    later = scene.auditor(scene.times[3] + DAY, scene.times[3] + 2 * DAY)
    response = await scene.client.get(path.format(c=f"/v1/cases/{scene.case_id}"),
                                      headers=bearer(later))
    assert response.status == 404, await response.text()
    assert "ETag" not in response.headers
    assert response.content_type == "application/problem+json"
    await scene.log_settled()
    refused = await scene.db.fetchval(
        "SELECT refused FROM records.access_log ORDER BY id DESC LIMIT 1")
    assert refused == "outside the audit window"
