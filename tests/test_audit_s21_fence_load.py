"""Audit (twenty-first session): "an answer as of T stays the answer" (decision 0002) under
load, with the real clock: many writers on a few cases at once (notes, goals, step
completions, keyed and unkeyed, some with If-Match) while readers ask `as_of` their own "now"
and times just behind it, auditors with windows ending "now" read plan, history and export,
and the projections are rebuilt online (decision 0014). Every write lands once, every answer
given is given again, the chains verify and the rebuild equals the live projections."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.export.signing import load_signer, write_key_pair
from services.records.export.verify import verify_export
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi
from tests.test_rebuild import snapshot

WRITERS = 32
WRITES_EACH = 10
AUDITORS = 3
STEPS_PER_CASE = 16
BEHIND = [
    timedelta(0),
    timedelta(microseconds=1),
    timedelta(milliseconds=1),
    timedelta(milliseconds=20),
]


ELSEWHERE = timezone(timedelta(hours=5, minutes=30))


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("%2B", "+"))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "export.pem"
    write_key_pair(path)
    return path


async def _request(
    client: TestClient,
    method: str,
    path: str,
    token: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str | None]:
    response = await client.request(
        method, path, json=body, headers={**bearer(token), **(headers or {})}
    )
    raw = await response.read()
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw
    return response.status, payload, response.headers.get("ETag")


class Storm:
    """What the writers, readers and auditors saw, for checking afterwards."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, int, Any]] = []  # case, what, status, body
        self.answers: list[tuple[str, str, int, Any, str | None]] = []  # case, T, status...
        # case, token, window end (as the service reads it), path, status, (body, ETag)
        self.windowed: list[tuple[str, str, datetime, str, int, Any]] = []
        self.failures: list[str] = []
        # windows still open: case, token, start (as the service reads it), path, status, body
        self.open_windows: list[tuple[str, str, datetime, str, int, Any]] = []
        self.writing = True


async def _writer(
    n: int,
    client: TestClient,
    cm: str,
    cases: list[str],
    steps: dict[str, list[str]],
    goals: dict[str, str],
    storm: Storm,
) -> None:
    case = cases[n % len(cases)]
    base = f"/v1/cases/{case}"
    for i in range(WRITES_EACH):
        kind = (n + i) % 5
        headers: dict[str, str] = {}
        if kind == 0:
            what, method, path = "note", "POST", f"{base}/notes"
            body: Any = {"text": f"Note {n}-{i}"}
        elif kind == 1:
            what, method, path = "keyed note", "POST", f"{base}/notes"
            body = {"text": f"Keyed note {n}-{i}"}
            headers["Idempotency-Key"] = f"fence-{case}-{n}-{i}"
        elif kind == 2:
            what, method, path = "goal", "POST", f"{base}/goals"
            body = {
                "title": f"Goal {n}-{i}",
                "domain": "employment",
                "source": "participant",
                "in_their_words": "I want to work",
                "status": "future",
            }
        elif kind == 3 and steps[case]:
            step = steps[case].pop()
            what, method, path = "complete", "POST", f"{base}/steps/{step}/complete"
            body = {}
        elif n % 8 == 0 and i == WRITES_EACH - 1:  # a stale If-Match: refused, nothing written
            what, method, path = 'stale if-match "1"', "POST", f"{base}/notes"
            body = {"text": f"Stale note {n}-{i}"}
            headers["If-Match"] = '"1"'
        else:
            status, _, etag = await _request(client, "GET", base, cm)
            assert status == 200
            assert etag is not None
            what, method, path = f"if-match {etag}", "POST", f"{base}/notes"
            body = {"text": f"Matched note {n}-{i}", "goal_id": goals[case]}
            headers["If-Match"] = etag
        if kind == 1:  # the same keyed request twice at once: one write, the same answer
            (status, payload, _), twin = await asyncio.gather(
                _request(client, method, path, cm, body, headers),
                _request(client, method, path, cm, body, headers),
            )
            storm.writes.append((case, "replay", twin[0], twin[1]))
            if twin[0] in (200, 201) and status in (200, 201):
                ids = [e["event_id"] for e in payload["events"]]
                if ids != [e["event_id"] for e in twin[1]["events"]]:
                    storm.failures.append(f"{what} {headers}: {ids} and {twin[1]['events']}")
        else:
            status, payload, _ = await _request(client, method, path, cm, body, headers)
        storm.writes.append((case, what, status, payload))
        if status in (200, 201):  # the plan as of the write's own time holds the write
            stamp = payload["events"][-1]["recorded_at"]
            asked = await _request(client, "GET", f"{base}?as_of={stamp}", cm)
            storm.answers.append((case, stamp, *asked))
            if asked[0] != 200 or asked[1]["version"] < payload["version"]:
                storm.failures.append(
                    f"{what} on {case} recorded version {payload['version']} at {stamp};"
                    f" as_of={stamp}: {asked[0]} version {asked[2]} {str(asked[1])[:200]}"
                )
        if status in (200, 201):  # read-your-writes (decision 0005), rebuild or not
            seen = await _request(client, "GET", base, cm)
            if seen[0] != 200 or seen[1]["version"] < payload["version"]:
                storm.failures.append(
                    f"{what} on {case} answered version {payload['version']};"
                    f" the plan read next: {seen[0]} version {seen[2]}"
                )
        if kind == 1 and status in (200, 201):  # the same key again: a replay, not a write
            again = await _request(client, method, path, cm, body, headers)
            storm.writes.append((case, "replay", again[0], again[1]))
            if again[0] in (200, 201) and [e["event_id"] for e in again[1]["events"]] != [
                e["event_id"] for e in payload["events"]
            ]:
                storm.failures.append(f"{what} {headers} replayed other events")
        await asyncio.sleep(0)


async def _reader(
    n: int, client: TestClient, supervisor: str, cases: list[str], storm: Storm
) -> None:
    i = 0
    while storm.writing:
        case = cases[(n + i) % len(cases)]
        moment = datetime.now(UTC) - BEHIND[i % len(BEHIND)]
        stamp = _z(moment)
        if i % 3 == 1:  # the same kind of instant, spelt at another offset
            stamp = moment.astimezone(ELSEWHERE).isoformat().replace("+", "%2B")
        status, body, etag = await _request(
            client, "GET", f"/v1/cases/{case}?as_of={stamp}", supervisor
        )
        storm.answers.append((case, stamp, status, body, etag))
        i += 1


async def _auditor(
    n: int,
    client: TestClient,
    token: TokenFactory,
    cases: list[str],
    storm: Storm,
    opened: datetime,
) -> None:
    i = 0
    while storm.writing:
        case = cases[(n + i) % len(cases)]
        end = datetime.now(UTC)
        court = token(
            role="auditor",
            sub=f"court-{n}",
            cases=[case],
            window_from=opened - timedelta(days=1),
            window_to=end,
        )
        end = datetime.fromtimestamp(end.timestamp(), UTC)  # as the token carries it
        for path in (
            f"/v1/cases/{case}",
            f"/v1/cases/{case}/history?limit=500",
            f"/v1/cases/{case}/export",
        ):
            status, body, etag = await _request(client, "GET", path, court)
            if path.endswith("/export") and status == 200:
                body = body if isinstance(body, bytes) else json.dumps(body).encode()
            storm.windowed.append((case, court, end, path, status, (body, etag)))
        start = datetime.now(UTC)
        open_window = token(
            role="auditor",
            sub=f"court-open-{n}",
            cases=[case],
            window_from=start,
            window_to=start + timedelta(hours=1),
        )
        start = datetime.fromtimestamp(start.timestamp(), UTC)
        path = f"/v1/cases/{case}/history?limit=500"
        status, body, _ = await _request(client, "GET", path, open_window)
        storm.open_windows.append((case, open_window, start, path, status, body))
        i += 1


async def _rebuilder(pool: asyncpg.Pool, storm: Storm) -> int:
    runs = 0
    while storm.writing:
        await rebuild_projections(pool)
        runs += 1
        await asyncio.sleep(0.05)
    return runs


async def _history(cm: CaseApi, case: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await cm.call(
            "GET", f"/v1/cases/{case}/history?after_version={after}&limit=500", expect=200
        )
        events += page["events"]
        if page["next_after_version"] is None:
            return events
        after = page["next_after_version"]


def _export_events(raw: bytes) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return [r for r in rows if "hash" in r and "version" in r]


@pytest.mark.parametrize(("case_count", "instance_count", "reader_count"), [(2, 2, 8)])
async def test_answers_stay_and_writes_land_once_under_a_real_clock_storm(
    make_records_client: ClientFactory,
    fresh_database_url: str,
    token: TokenFactory,
    fresh_pool: asyncpg.Pool,
    key_file: Path,
    case_count: int,
    instance_count: int,
    reader_count: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decision 0002: "a read as of T first sets the stream's answered_until to T ... the
    answer stays the answer"; decision 0014: the rebuild is online; every write without a
    stale If-Match is decided again when it loses a race, never refused for timing."""
    # the services' own clock: no FakeClock
    clients = [
        await make_records_client(
            fresh_database_url, CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file)
        )
        for _ in range(instance_count)
    ]
    client = clients[0]
    cm_token = token(sub="cm-1")
    supervisor = token(role="supervisor", sub="sup-1")
    cm = CaseApi(client, cm_token)
    opened = datetime.now(UTC)
    cases = [await cm.open_case() for _ in range(case_count)]
    goals: dict[str, str] = {}
    steps: dict[str, list[str]] = {}
    for case in cases:
        goals[case] = await cm.goal(case)
        steps[case] = []
        second = await cm.goal(case, title="Learn to drive")
        for s in range(STEPS_PER_CASE):
            goal = goals[case] if s % 2 else second
            steps[case].append(await cm.step(case, goal, description=f"Step {s}"))
    setup_version = {case: (await cm.plan(case))["version"] for case in cases}

    storm = Storm()
    chain = EventStore._chain
    restamps: list[datetime] = []

    def spy(self: EventStore, *args: Any, **kwargs: Any) -> Any:
        not_before = args[6] if len(args) > 6 else kwargs.get("not_before")
        if not_before is not None:
            restamps.append(not_before)
        return chain(self, *args, **kwargs)

    monkeypatch.setattr(EventStore, "_chain", spy)
    readers = [
        asyncio.create_task(_reader(n, clients[n % instance_count], supervisor, cases, storm))
        for n in range(reader_count)
    ]
    auditors = [
        asyncio.create_task(
            _auditor(n, clients[(n + 1) % instance_count], token, cases, storm, opened)
        )
        for n in range(AUDITORS)
    ]
    rebuilder = asyncio.create_task(_rebuilder(fresh_pool, storm))
    try:
        await asyncio.gather(
            *[
                _writer(n, clients[n % instance_count], cm_token, cases, steps, goals, storm)
                for n in range(WRITERS)
            ]
        )
    finally:
        storm.writing = False
        await asyncio.gather(*readers, *auditors, return_exceptions=False)
        rebuilt_runs = await rebuilder
    assert rebuilt_runs >= 1

    problems: list[str] = list(storm.failures)

    # -- every valid write succeeded, once ------------------------------------------------
    landed: dict[str, set[str]] = {case: set() for case in cases}
    for case, what, status, payload in storm.writes:
        if status in (200, 201):
            ids = {e["event_id"] for e in payload["events"]}
            if what == "replay":
                continue
            landed[case] |= ids
        elif what.startswith("stale"):
            if status != 412 or payload.get("current_version", 0) <= 1:
                problems.append(f"{what} on {case}: {status} {str(payload)[:300]}")
        elif status == 412 and what.startswith("if-match"):
            sent = int(what.split('"')[1])
            if payload.get("current_version") == sent:
                problems.append(f"412 naming the version sent ({sent}): {payload}")
        else:
            problems.append(f"{what} on {case}: {status} {str(payload)[:300]}")
    final_stamps: dict[str, list[tuple[int, datetime]]] = {}
    for case in cases:
        events = await _history(cm, case)
        after = {e["event_id"] for e in events if e["version"] > setup_version[case]}
        if after != landed[case]:
            problems.append(
                f"{case}: {len(after)} events after setup, {len(landed[case])}"
                f" answered; only in store {sorted(after - landed[case])[:3]},"
                f" only answered {sorted(landed[case] - after)[:3]}"
            )
        stamps = [(e["version"], _parse(e["recorded_at"])) for e in events]
        final_stamps[case] = stamps
        for (v1, t1), (v2, t2) in itertools.pairwise(stamps):
            if t2 < t1:
                problems.append(f"{case}: version {v2} recorded {t2} before version {v1} at {t1}")
        verified = await cm.call("GET", f"/v1/cases/{case}/verify", expect=200)
        if verified.get("first_broken_link") is not None:
            problems.append(f"{case}: verify {verified}")

        # the versions each as_of answered are the versions its time selects now
        for asked_case, stamp, status, body, _etag in storm.answers:
            if asked_case != case:
                continue
            if status != 200:
                problems.append(f"as_of={stamp} on {case}: {status} {body}")
                continue
            moment = _parse(stamp)
            expected = max(v for v, t in stamps if t <= moment)
            if body["version"] != expected:
                problems.append(
                    f"as_of={stamp} on {case} answered version {body['version']};"
                    f" the record now selects {expected}"
                )

    # -- the plan as of a time is the plan as of the version it selected ------------------
    by_version: dict[tuple[str, int], Any] = {}
    for case, stamp, status, body, _etag in storm.answers:
        if status != 200:
            continue
        key = (case, body["version"])
        if key not in by_version:
            by_version[key] = await _request(
                client, "GET", f"/v1/cases/{case}?as_of_version={body['version']}", supervisor
            )
        if by_version[key][1] != body:
            problems.append(f"as_of={stamp} on {case}: not the plan as of version {key[1]}")

    # -- every as_of answer, asked again, is the same --------------------------------------
    for case, stamp, status, body, etag in storm.answers:
        again = await _request(client, "GET", f"/v1/cases/{case}?as_of={stamp}", supervisor)
        in_utc = await _request(
            client, "GET", f"/v1/cases/{case}?as_of={_z(_parse(stamp))}", supervisor
        )
        if (status, body, etag) != again or in_utc[1:] != again[1:]:
            problems.append(
                f"as_of={stamp} on {case}: first {status} {etag}"
                f" v{body.get('version') if isinstance(body, dict) else '?'},"
                f" then {again[0]} {again[2]}"
            )

    # -- every windowed answer (window ended at minting), asked again, is the same ---------
    trusted = load_signer(key_file).public_key
    for case, court, end, path, status, (body, etag) in storm.windowed:
        if status != 200:
            problems.append(f"auditor {path}: {status} {body!r:.300}")
            continue
        inside = [v for v, t in final_stamps[case] if t <= end]
        if path.endswith("/export"):
            shown = [e["version"] for e in _export_events(body)]
        elif "/history" in path:
            shown = [e["version"] for e in body["events"]]
        else:
            shown = list(range(1, body["version"] + 1))
        if shown != inside:
            problems.append(
                f"auditor {path} window ending {_z(end)}: versions {shown[-3:]}, the record"
                f" has {inside[-3:]} by then"
            )
        again_status, again_body, again_etag = await _request(client, "GET", path, court)
        if path.endswith("/export"):
            report = verify_export(body.splitlines(keepends=True), trusted)
            if not report.ok:
                problems.append(f"export of {case} does not verify: {report.problems}")
            first_events = [(e["version"], e["hash"]) for e in _export_events(body)]
            again_events = [(e["version"], e["hash"]) for e in _export_events(again_body)]
            if first_events != again_events:
                problems.append(f"export {path}: {first_events[-1:]} then {again_events[-1:]}")
        elif (again_status, again_body, again_etag) != (200, body, etag):
            problems.append(f"auditor {path}: first {etag}, then {again_status} {again_etag}")

    # -- a window still open: what it showed first stays its beginning ---------------------
    for case, court, start, path, status, body in storm.open_windows:
        if status != 200:
            problems.append(f"open window {path}: {status} {str(body)[:300]}")
            continue
        before = [v for v, t in final_stamps[case] if t < start]
        shown = [e["version"] for e in body["events"]]
        again = await _request(client, "GET", path, court)
        later = [e["version"] for e in again[1]["events"]] if again[0] == 200 else []
        if shown and shown[0] != len(before) + 1:
            problems.append(
                f"open window from {_z(start)} on {case} began at version {shown[0]};"
                f" {len(before)} versions are recorded before it"
            )
        if later[: len(shown)] != shown:
            problems.append(
                f"open window from {_z(start)} on {case}: first {shown[:3]}..{shown[-1:]},"
                f" then {later[:3]}..{later[-1:]}"
            )

    # -- the projections, rebuilt, are the live ones --------------------------------------
    live = await snapshot(fresh_pool)
    await rebuild_projections(fresh_pool)
    if await snapshot(fresh_pool) != live:
        problems.append("the rebuilt projections differ from the live ones")
    for case in cases:
        plan = await cm.plan(case)
        last = (await _history(cm, case))[-1]["version"]
        if plan["version"] != last:
            problems.append(f"{case}: plan at {plan['version']}, history at {last}")

    summary = (
        f"\n({len(problems)} in all; {len(storm.writes)} writes, {len(storm.answers)} as_of"
        f" answers, {len(storm.windowed)} windowed reads, {rebuilt_runs} rebuilds,"
        f" {len(restamps)} appends stamped again)"
    )
    assert not problems, "\n".join(problems[:40]) + summary
