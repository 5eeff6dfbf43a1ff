"""Audit (session 21): several records instances on one database whose clocks disagree.

Records instances are stateless behind a load balancer, and each stamps `recorded_at` with its
own clock (decision 0002, "Time travel"): one may run a few seconds ahead of another. These
tests build two or three records apps on one fresh database, each with its own injected clock,
and send them interleaved writes, `as_of` reads at each one's "now", auditors' windows closed
in the past, keyed writes and case openings racing reads. Promises checked: "An answer as of T
stays the answer" (0002), a write without If-Match succeeds on its merits and never on timing
(0005), verify holds, and the projections rebuilt from the events equal the live ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import asyncpg
from aiohttp.test_utils import TestClient

from services.records.http.app import RECORDS
from services.records.http.routes import _IDEMPOTENCY_NAMESPACE, idempotency_scope
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import StreamHead
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import PARTICIPANT
from tests.test_rebuild import snapshot

BASE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
US = timedelta(microseconds=1)

Answer = tuple[int, Any, str | None]


def _z(moment: datetime) -> str:
    """A UTC time as the API writes one (microseconds kept)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Instance:
    """One records app with its own clock, on the shared database."""

    def __init__(self, name: str, client: TestClient, clock: FakeClock) -> None:
        self.name = name
        self.client = client
        self.clock = clock

    async def request(
        self,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        response = await self.client.request(
            method, path, json=body, headers={**bearer(token), **(headers or {})}
        )
        payload = await response.json()
        assert response.status < 500, (self.name, method, path, response.status, payload)
        return response.status, payload, response.headers

    async def get(self, path: str, token: str) -> Answer:
        status, body, headers = await self.request("GET", path, token)
        return status, body, headers.get("ETag")

    async def as_of(self, case_id: str, moment: datetime, token: str) -> Answer:
        return await self.get(f"/v1/cases/{case_id}?as_of={_z(moment)}", token)

    async def open_case(
        self, token: str, key: str | None = None
    ) -> tuple[int, Any, Mapping[str, str]]:
        body = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "moderate"}
        headers = {"Idempotency-Key": key} if key else None
        return await self.request("POST", "/v1/cases", token, body, headers)

    async def note(
        self, case_id: str, text: str, token: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Mapping[str, str]]:
        return await self.request(
            "POST", f"/v1/cases/{case_id}/notes", token, {"text": text}, headers
        )


async def _instances(
    make_records_client: ClientFactory, url: str, **offsets: float
) -> dict[str, Instance]:
    """One app per name, its clock ``offsets[name]`` seconds from BASE."""
    made = {}
    for name, seconds in offsets.items():
        clock = FakeClock(BASE + timedelta(seconds=seconds))
        made[name] = Instance(name, await make_records_client(url, clock=clock), clock)
    return made


async def _history(node: Instance, case_id: str, token: str) -> list[dict[str, Any]]:
    status, page, _ = await node.get(f"/v1/cases/{case_id}/history?limit=500", token)
    assert status == 200, page
    assert page["next_after_version"] is None
    return list(page["events"])


def _expected_version(history: list[dict[str, Any]], moment: datetime) -> int:
    """Decision 0002: the last version whose recorded_at is at or before the moment."""
    return max((e["version"] for e in history if _parse(e["recorded_at"]) <= moment), default=0)


async def _rebuilt_equals_live(url: str) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        live = await snapshot(pool)
        stats = await rebuild_projections(pool)
        assert stats.cases == len(live[0])
        assert await snapshot(pool) == live
    finally:
        await pool.close()


# -- interleaved writes ------------------------------------------------------------------------


async def test_interleaved_writes_from_instances_apart_keep_one_valid_history(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Writes to one case alternate between an instance 5 s ahead, one on time and one 3 s
    behind. Each lands once, in turn, stamped by its instance's clock; the chain verifies; the
    plan, its `updated_at` and the caseload listing follow the last version; every `as_of`
    answers the rule of decision 0002 through every instance whose clock has reached it."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, on_time=0, behind=-3)
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await nodes["behind"].open_case(cm)
    assert status == 201, opened
    case_id = opened["case_id"]
    order = ["ahead", "behind", "on_time", "behind", "ahead", "on_time", "behind", "ahead"]
    stamps = [opened["events"][0]["recorded_at"]]
    for n, name in enumerate(order):
        for node in nodes.values():
            node.clock.advance(milliseconds=300)
        status, written, _ = await nodes[name].note(case_id, f"Note {n} via {name}", cm)
        assert (status, written["version"]) == (201, n + 2), written
        stamps.append(written["events"][0]["recorded_at"])
        # no reader answered anything yet: each event carries its instance's own time
        assert stamps[-1] == _z(nodes[name].clock.now), (name, stamps)
    history = await _history(nodes["on_time"], case_id, supervisor)
    assert [e["version"] for e in history] == list(range(1, len(order) + 2))
    assert [e["recorded_at"] for e in history] == stamps
    assert [e["data"].get("text") for e in history[1:]] == [
        f"Note {n} via {name}" for n, name in enumerate(order)
    ]
    for node in nodes.values():
        status, report, _ = await node.get(f"/v1/cases/{case_id}/verify", supervisor)
        assert (status, report["valid"]) == (200, True), report
        status, plan, etag = await node.get(f"/v1/cases/{case_id}", cm)
        assert (status, etag, plan["version"]) == (200, f'"{len(order) + 1}"', len(order) + 1)
        assert plan["updated_at"] == stamps[-1]
        status, listing, _ = await node.get("/v1/cases?case_manager=cm-1", supervisor)
        assert status == 200, listing
        [row] = [c for c in listing["cases"] if c["case_id"] == case_id]
        assert (row["version"], row["updated_at"]) == (len(order) + 1, stamps[-1])
    # each stamp, and a microsecond either side, through every instance that has reached it
    answers: dict[str, Answer] = {}
    for stamp in stamps:
        for moment in (_parse(stamp) - US, _parse(stamp), _parse(stamp) + US):
            for node in nodes.values():
                if moment > node.clock.now:
                    continue
                got = await node.as_of(case_id, moment, supervisor)
                expected = _expected_version(history, moment)
                if expected == 0:
                    assert got[0] == 404, got
                    continue
                assert (got[0], got[2]) == (200, f'"{expected}"'), (node.name, moment, got)
                first = answers.setdefault(_z(moment), got)
                assert got == first, (node.name, moment)
    await _rebuilt_equals_live(fresh_database_url)


# -- an answer through the instance ahead, writes through the one behind ------------------------


async def test_a_write_through_the_instance_behind_after_an_as_of_at_the_instance_aheads_now(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """The supervisor reads the plan as of the ahead instance's own "now"; the case manager's
    writes then go through the instance 4 s behind. Without If-Match they succeed (decision
    0002: "stamped again, after answered_until"), recorded after the moment answered; with
    If-Match the current version succeeds and a stale one is 412 naming the version. The
    same `as_of` asked again through the ahead instance gives the same plan."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=4, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    assert (await behind.note(case_id, "Met at the library", cm))[0] == 201
    moment = ahead.clock.now
    first = await ahead.as_of(case_id, moment, supervisor)
    assert (first[0], first[2]) == (200, '"2"'), first

    status, written, _ = await behind.note(case_id, "Called the housing office", cm)
    assert (status, written["version"]) == (201, 3), written
    assert _parse(written["events"][0]["recorded_at"]) > moment, written["events"][0]
    status, kept, headers = await behind.note(
        case_id, "Jo found a bike workshop", cm, headers={"If-Match": '"3"'}
    )
    assert (status, kept["version"], headers.get("ETag")) == (201, 4, '"4"'), kept
    assert _parse(kept["events"][0]["recorded_at"]) > moment
    status, stale, headers = await behind.note(
        case_id, "An older screen", cm, headers={"If-Match": '"3"'}
    )
    assert (status, stale.get("current_version"), headers.get("ETag")) == (412, 4, '"4"'), stale
    # the instance ahead writes too, at its own time, after the moment it answered
    ahead.clock.advance(milliseconds=1)
    status, own, _ = await ahead.note(case_id, "Jo asked for a call back", cm)
    assert (status, own["events"][0]["recorded_at"]) == (201, _z(ahead.clock.now)), own

    assert await ahead.as_of(case_id, moment, supervisor) == first
    history = await _history(behind, case_id, supervisor)
    assert [e["version"] for e in history] == [1, 2, 3, 4, 5]
    assert [_parse(e["recorded_at"]) <= moment for e in history] == [True] * 2 + [False] * 3
    status, plan, _ = await behind.get(f"/v1/cases/{case_id}", cm)
    assert (plan["version"], plan["updated_at"]) == (5, history[-1]["recorded_at"])
    for node in (ahead, behind):
        status, listing, _ = await node.get("/v1/cases?case_manager=cm-1", supervisor)
        [row] = [c for c in listing["cases"] if c["case_id"] == case_id]
        assert (row["version"], row["updated_at"]) == (5, history[-1]["recorded_at"]), row
    status, report, _ = await behind.get(f"/v1/cases/{case_id}/verify", supervisor)
    assert report["valid"] is True, report
    await _rebuilt_equals_live(fresh_database_url)


async def test_the_same_as_of_through_either_instance_gives_the_same_plan(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Behind a load balancer the same question lands on any instance. Once the instance 4 s
    ahead has answered as of its "now" (decision 0002: the stream's answered_until is set, and
    no later write is recorded at or before it), the answer is known and fixed: the instance
    behind must give that same plan, not 422 `as-of-in-the-future` ("a time the answer of
    which is not yet known is bad input"; this one is known)."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=4, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    _, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    assert (await ahead.note(case_id, "Met at the library", cm))[0] == 201
    moment = ahead.clock.now
    first = await ahead.as_of(case_id, moment, supervisor)
    assert (first[0], first[2]) == (200, '"2"'), first
    assert (await behind.note(case_id, "Called the housing office", cm))[0] == 201
    again = await behind.as_of(case_id, moment, supervisor)
    assert again == first, again


# -- an auditor's window closed in the past -----------------------------------------------------


async def test_a_courts_window_closed_through_one_instance_holds_against_writes_through_another(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """The court's window ends at a moment the instance ahead has passed and the one behind
    has not. Read through the instance ahead, the window has closed and is answered as of its
    end (decision 0002); writes through the instance behind afterwards are recorded after it.
    The court's plan, history and verify stay the same through both instances."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=6, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm = token()
    status, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    assert (await behind.note(case_id, "Met at the library", cm))[0] == 201
    window_to = behind.clock.now + timedelta(seconds=3)  # passed for ahead, not for behind
    court = token(
        role="auditor",
        sub="court-1",
        cases=[case_id],
        window_from=BASE - timedelta(days=1),
        window_to=window_to,
    )
    reads = ["", "/history", "/verify"]
    before = [await ahead.get(f"/v1/cases/{case_id}{path}", court) for path in reads]
    assert (before[0][0], before[0][2]) == (200, '"2"'), before[0]
    for n in range(3):
        status, written, _ = await behind.note(case_id, f"Follow-up {n}", cm)
        assert status == 201, written
        assert _parse(written["events"][0]["recorded_at"]) > window_to, written["events"]
    for node in (ahead, behind):
        after = [await node.get(f"/v1/cases/{case_id}{path}", court) for path in reads]
        assert after == before, node.name
    status, report, _ = await behind.get(
        f"/v1/cases/{case_id}/verify", token(role="supervisor", sub="sup-1")
    )
    assert (report["valid"], report["events_checked"]) == (True, 5), report


# -- many writers and readers at once ---------------------------------------------------------


async def _reader(
    node: Instance,
    case_id: str,
    token: str,
    answers: dict[str, Answer],
    stop: asyncio.Event,
    problems: list[str],
    step_ms: float,
) -> int:
    """As of this instance's now, again and again (its clock moving on), and each earlier
    answer its clock has reached asked again: every repeat must equal the first."""
    asked = 0
    while not stop.is_set() or asked < 5:
        node.clock.advance(milliseconds=step_ms)
        moment = node.clock.now
        got = await node.as_of(case_id, moment, token)
        asked += 1
        if got[0] != 200:
            problems.append(f"{node.name} as_of={_z(moment)}: {got[0]} {got[1]}")
            continue
        answers.setdefault(_z(moment), got)
        earlier = [m for m in list(answers) if _parse(m) <= moment]
        if earlier:
            again = earlier[asked % len(earlier)]
            repeat = await node.as_of(case_id, _parse(again), token)
            if repeat != answers[again]:
                problems.append(
                    f"{node.name} as_of={again}: {answers[again][2]} then {repeat[0]} {repeat[2]}"
                )
    return asked


async def test_many_writers_across_instances_while_as_of_readers_loop(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Twelve notes to one case through three instances (5 s ahead, on time, 3 s behind) at
    once, while each instance's reader asks `as_of` its own now in a loop. Every note lands
    exactly once (no 409/412/503 for a write without If-Match, no 5xx), every repeated
    `as_of` gives the first answer, the chain verifies and a rebuild equals the live plan."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, on_time=0, behind=-3)
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await nodes["behind"].open_case(cm)  # the earliest now
    case_id = opened["case_id"]
    names = list(nodes)
    texts = [f"Note {n:02d} via {names[n % 3]}" for n in range(12)]
    answers: dict[str, Answer] = {}
    problems: list[str] = []
    stop = asyncio.Event()
    readers = [
        asyncio.ensure_future(
            _reader(node, case_id, supervisor, answers, stop, problems, 0.7 + n * 0.3)
        )
        for n, node in enumerate(nodes.values())
    ]
    await asyncio.sleep(0)
    writes = await asyncio.gather(
        *(nodes[names[n % 3]].note(case_id, text, cm) for n, text in enumerate(texts))
    )
    stop.set()
    await asyncio.gather(*readers)
    assert [w[0] for w in writes] == [201] * 12, [(w[0], w[1]) for w in writes if w[0] != 201]
    assert sorted(w[1]["version"] for w in writes) == list(range(2, 14))
    assert problems == []
    history = await _history(nodes["ahead"], case_id, supervisor)
    assert sorted(e["data"].get("text") for e in history[1:]) == sorted(texts)
    for moment, first in answers.items():
        assert first[2] == f'"{_expected_version(history, _parse(moment))}"', moment
        for node in nodes.values():
            if _parse(moment) <= node.clock.now:
                assert await node.as_of(case_id, _parse(moment), supervisor) == first
    status, report, _ = await nodes["behind"].get(f"/v1/cases/{case_id}/verify", supervisor)
    assert (status, report["valid"], report["events_checked"]) == (200, True, 13), report
    await _rebuilt_equals_live(fresh_database_url)


def _readers_answer_between_restamps(
    behind: Instance, ahead: Instance, case_id: str, token: str, answered: list[Answer]
) -> None:
    """Whenever the instance behind looks at the case's head outside a held head (as its
    append does after a refusal, before stamping again), a supervisor first reads the plan as
    of the instance ahead's now, a millisecond on: the timing of readers looping on a busy
    case, made certain."""
    store = behind.client.app[RECORDS].store
    head = store.head

    async def head_then_a_reader(stream_id: UUID, db: Any = None) -> StreamHead | None:
        seen = await head(stream_id, db)
        if not isinstance(db, asyncpg.Connection):  # a held head would keep the reader waiting
            ahead.clock.advance(milliseconds=1)
            answered.append(await ahead.as_of(case_id, ahead.clock.now, token))
        return seen

    store.head = head_then_a_reader  # type: ignore[method-assign]


async def test_a_write_without_if_match_lands_however_often_readers_answer_between_restamps(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Decision 0005: a write without If-Match is decided on its merits, never on timing;
    one that keeps losing ends by holding the case's head. Readers answering as of the ahead
    instance's moving now between every restamp of a write through the instance behind (each
    refusal's restamp is stale at once) must not turn it into a 409/412/503."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    answered = [await ahead.as_of(case_id, ahead.clock.now, supervisor)]  # ahead of behind's now
    _readers_answer_between_restamps(behind, ahead, case_id, supervisor, answered)
    for n in range(3):
        status, body, _ = await behind.note(case_id, f"Note {n}", cm)
        assert (status, body.get("version")) == (201, n + 2), body
    assert len(answered) > 1, "no reader came between a refusal and its restamp"
    assert {a[0] for a in answered} == {200}, answered
    history = await _history(ahead, case_id, supervisor)
    assert [e["version"] for e in history] == [1, 2, 3, 4]


async def test_a_write_with_if_match_at_the_current_version_is_not_412_for_readers(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Nobody else writes: the case manager's notes go through the instance behind, each with
    If-Match naming the version the case is at, while supervisors read as of the ahead
    instance's moving now between each refusal and its restamp. A reader never changes the
    version, so the precondition holds and the write must land (RFC 9110 13.1.1: 412 only
    when the condition is false; decision 0005: "412 with `current_version` when stale").
    A 412 whose `current_version` is the very version sent tells the client to reload and
    retry against the version it already has. Seen without the interposed readers too: four
    supervisors looping `as_of` through the instance ahead, one of 15 such writes was 412."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    answered = [await ahead.as_of(case_id, ahead.clock.now, supervisor)]  # ahead of behind's now
    _readers_answer_between_restamps(behind, ahead, case_id, supervisor, answered)
    status, body, headers = await behind.note(
        case_id, "Jo found a bike workshop", cm, headers={"If-Match": '"1"'}
    )
    assert (status, body.get("version"), headers.get("ETag")) == (201, 2, '"2"'), body
    assert {a[0] for a in answered} == {200}, answered


# -- keyed writes and openings racing reads ------------------------------------------------------


async def test_keyed_writes_sent_to_both_instances_race_as_of_reads(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Each keyed note is sent to both instances at once (a client's retry through the load
    balancer), while readers ask `as_of` the ahead instance's now. Each key records exactly one
    event; both answers carry it; one of them says it was replayed."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    answers: dict[str, Answer] = {}
    problems: list[str] = []
    stop = asyncio.Event()
    readers = [
        asyncio.ensure_future(_reader(ahead, case_id, supervisor, answers, stop, problems, 0.5)),
        asyncio.ensure_future(_reader(behind, case_id, supervisor, answers, stop, problems, 0.5)),
    ]
    try:
        pairs = await asyncio.gather(
            *(
                asyncio.gather(
                    *(
                        node.note(
                            case_id, f"Keyed note {n}", cm, headers={"Idempotency-Key": f"k-{n}"}
                        )
                        for node in (behind, ahead)
                    )
                )
                for n in range(8)
            )
        )
    finally:
        stop.set()
        await asyncio.gather(*readers)
    for n, (one, other) in enumerate(pairs):
        assert (one[0], other[0]) == (201, 201), (n, one[1], other[1])
        assert one[1]["events"] == other[1]["events"], n
        replayed = [h.get("Idempotent-Replayed") for h in (one[2], other[2])]
        assert sorted(map(str, replayed)) == ["None", "true"], (n, replayed)
    history = await _history(ahead, case_id, supervisor)
    assert sorted(e["data"].get("text") for e in history[1:]) == sorted(
        f"Keyed note {n}" for n in range(8)
    )
    assert problems == []
    status, report, _ = await ahead.get(f"/v1/cases/{case_id}/verify", supervisor)
    assert (status, report["valid"]) == (200, True), report


async def test_openings_race_reads_of_the_case_they_open(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """A case opened with an Idempotency-Key is sent to both instances at once (expected
    version 0), while the case id it will have (derived from the key, decision 0005) is read,
    as of each instance's now and plain, through both. Reads say 404 before and the plan
    after, never 5xx; exactly one case is opened; both openings answer it; the first note
    after lands through either instance."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    seen: list[int] = []

    async def read_loop(node: Instance, case_id: str, target: asyncio.Future[Any]) -> None:
        while not target.done():
            node.clock.advance(milliseconds=1)
            for path in ("", f"?as_of={_z(node.clock.now)}"):
                status, _, _ = await node.get(f"/v1/cases/{case_id}{path}", supervisor)
                seen.append(status)
            await asyncio.sleep(0)

    for n in range(6):
        key = f"open-{n}"
        case_id = str(
            uuid5(_IDEMPOTENCY_NAMESPACE, f"{idempotency_scope('agency-a', 'cm-1')}\n{key}\n1000")
        )
        first, second = (behind, ahead) if n % 2 else (ahead, behind)
        openings = asyncio.gather(first.open_case(cm, key=key), second.open_case(cm, key=key))
        loops = [
            asyncio.ensure_future(read_loop(node, case_id, openings)) for node in nodes.values()
        ]
        one, other = await openings
        await asyncio.gather(*loops)
        assert (one[0], other[0]) == (201, 201), (one[1], other[1])
        assert one[1]["case_id"] == other[1]["case_id"] == case_id
        assert one[1]["events"] == other[1]["events"]
        for node in nodes.values():
            node.clock.advance(milliseconds=5)
        status, written, _ = await second.note(case_id, "First meeting", cm)
        assert (status, written["version"]) == (201, 2), written
        for node in nodes.values():
            status, plan, etag = await node.get(f"/v1/cases/{case_id}", supervisor)
            assert (status, etag) == (200, '"2"'), plan
    assert set(seen) <= {200, 404}, seen
    status, listing, _ = await ahead.get("/v1/cases?case_manager=cm-1", supervisor)
    assert len(listing["cases"]) == 6, listing
    await _rebuilt_equals_live(fresh_database_url)


async def test_writes_to_many_cases_through_the_instance_behind_after_answers_on_some(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """Six cases; three of them read as of the ahead instance's now. Then twelve notes go at
    once through the instance behind, two per case, so its group commit (decision 0008) puts
    answered and unanswered cases in one statement: each note lands once, those on answered
    cases after the moment answered, the others at the instance's own time."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    cases = []
    for _ in range(6):
        status, opened, _ = await behind.open_case(cm)
        assert status == 201, opened
        cases.append(opened["case_id"])
    behind.clock.advance(milliseconds=10)
    answered_at = ahead.clock.now
    firsts = [await ahead.as_of(case_id, answered_at, supervisor) for case_id in cases[:3]]
    writes = await asyncio.gather(
        *(behind.note(case_id, f"Note {n} on {case_id}", cm) for n in range(2) for case_id in cases)
    )
    assert [w[0] for w in writes] == [201] * 12, [w[1] for w in writes if w[0] != 201]
    for case_id in cases:
        history = await _history(behind, case_id, supervisor)
        assert [e["version"] for e in history] == [1, 2, 3]
        stamps = [_parse(e["recorded_at"]) for e in history[1:]]
        if case_id in cases[:3]:
            assert all(stamp > answered_at for stamp in stamps), (case_id, stamps)
        else:
            assert stamps == [behind.clock.now] * 2, (case_id, stamps)
        status, report, _ = await ahead.get(f"/v1/cases/{case_id}/verify", supervisor)
        assert (status, report["valid"]) == (200, True), report
    for case_id, first in zip(cases[:3], firsts, strict=True):
        assert await ahead.as_of(case_id, answered_at, supervisor) == first
    await _rebuilt_equals_live(fresh_database_url)


async def test_a_keyed_write_stamped_again_replays_as_recorded_through_the_other_instance(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """A keyed note through the instance behind, after an answer as of the ahead instance's
    now, is recorded after that moment; its retry through the instance ahead (the client's
    answer lost) replays exactly the event recorded, its stamp and hash included."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    _, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    moment = ahead.clock.now
    first = await ahead.as_of(case_id, moment, supervisor)
    key = {"Idempotency-Key": "note-after-the-answer"}
    status, written, _ = await behind.note(case_id, "Jo called back", cm, headers=key)
    assert status == 201, written
    assert written["events"][0]["recorded_at"] == _z(moment + US)
    ahead.clock.advance(seconds=1)
    status, again, headers = await ahead.note(case_id, "Jo called back", cm, headers=key)
    assert (status, headers.get("Idempotent-Replayed")) == (201, "true"), again
    assert again == written
    # behind's now is before the moment answered, so before the note as recorded
    assert await behind.as_of(case_id, behind.clock.now, supervisor) == first
    assert await ahead.as_of(case_id, moment, supervisor) == first
    history = await _history(behind, case_id, supervisor)
    assert [e["version"] for e in history] == [1, 2]


async def test_a_write_stamped_again_across_midnight_projects_what_a_rebuild_projects(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """The instance behind is still on 2 March at 23:59:58 when the supervisor reads as of the
    ahead instance's now, 3 March 00:00:03. The case manager then completes a step and closes
    the case through the instance behind: the events are recorded on 3 March, after the moment
    answered, and the plan and the outcome facts written with them equal those a rebuild
    folds from the events (decision 0008: read-your-writes; the facts' dates are the events')."""
    late = datetime(2026, 3, 2, 23, 59, 58, tzinfo=UTC) - BASE
    nodes = await _instances(
        make_records_client,
        fresh_database_url,
        ahead=late.total_seconds() + 5,
        behind=late.total_seconds(),
    )
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    _, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    goal = await _created(
        behind,
        case_id,
        "goals",
        cm,
        {
            "title": "Find steady work",
            "domain": "employment",
            "source": "participant",
            "in_their_words": "I want a job where I use my hands",
        },
    )
    step = await _created(
        behind,
        case_id,
        f"goals/{goal}/steps",
        cm,
        {"description": "Visit the job centre", "owner": "participant"},
    )
    behind.clock.advance(milliseconds=500)
    moment = ahead.clock.now
    assert moment.date() > behind.clock.now.date()
    first = await ahead.as_of(case_id, moment, supervisor)
    assert (first[0], first[2]) == (200, '"3"'), first
    status, done, _ = await behind.request(
        "POST", f"/v1/cases/{case_id}/steps/{step}/complete", cm, {}
    )
    assert status == 200, done
    status, closed, _ = await behind.request(
        "POST", f"/v1/cases/{case_id}/close", cm, {"reason": "Plan complete"}
    )
    assert status == 200, closed
    for event in done["events"] + closed["events"]:
        assert _parse(event["recorded_at"]) > moment, event
    assert await ahead.as_of(case_id, moment, supervisor) == first
    await _rebuilt_equals_live(fresh_database_url)


async def _created(node: Instance, case_id: str, path: str, token: str, body: Any) -> str:
    status, result, _ = await node.request("POST", f"/v1/cases/{case_id}/{path}", token, body)
    assert status == 201, result
    return str(result["id"])


async def test_a_courts_window_opened_in_the_past_keeps_what_it_showed_after_a_write_behind(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    """A court's window opens at a moment the instance ahead has passed and the one behind
    has not; it has no end (decision 0006: either bound may be left out). Through the instance
    ahead the court is shown the note recorded inside the window (history, and the plan as of
    that version). The case manager then writes through the instance behind. Whatever comes
    later, what the court was shown inside its window stays in it: a write after the court
    was answered is a later version, never one "recorded before the window opened" that
    pushes the window's first version past the note (decision 0006: *first* is "the plan as
    the window opened"; 0002: an answer as of T stays the answer)."""
    nodes = await _instances(make_records_client, fresh_database_url, ahead=5, behind=0)
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm = token()
    _, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    status, inside, _ = await ahead.note(case_id, "Met at the library", cm)  # at BASE + 5 s
    assert (status, inside["version"]) == (201, 2), inside
    court = token(
        role="auditor", sub="court-1", cases=[case_id], window_from=BASE + timedelta(seconds=2)
    )
    status, shown, _ = await ahead.get(f"/v1/cases/{case_id}/history", court)
    assert (status, [e["version"] for e in shown["events"]]) == (200, [2]), shown
    at_note = await ahead.get(f"/v1/cases/{case_id}?as_of_version=2", court)
    assert (at_note[0], at_note[2]) == (200, '"2"'), at_note

    behind.clock.advance(milliseconds=100)  # still before the window opened, for behind
    status, later, _ = await behind.note(case_id, "Called the housing office", cm)
    assert (status, later["version"]) == (201, 3), later

    for node in (ahead, behind):
        status, now_shown, _ = await node.get(f"/v1/cases/{case_id}/history", court)
        assert status == 200, now_shown
        assert [e["version"] for e in now_shown["events"]][:1] == [2], (node.name, now_shown)
        assert await node.get(f"/v1/cases/{case_id}?as_of_version=2", court) == at_note


async def test_an_instance_answers_as_of_the_time_it_stamped_a_write_after_a_moment_answered(
    fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory
) -> None:
    nodes = await _instances(make_records_client, fresh_database_url, ahead=4, behind=0)
    """A write through the instance behind is stamped after the moment the instance ahead
    answered, later than its own clock; asked as of that stamp (a client copying a write's
    recorded_at), the instance that wrote it answers too: it refused it as still to come."""
    ahead, behind = nodes["ahead"], nodes["behind"]
    cm, supervisor = token(), token(role="supervisor", sub="sup-1")
    status, opened, _ = await behind.open_case(cm)
    case_id = opened["case_id"]
    moment = ahead.clock.now
    assert (await ahead.as_of(case_id, moment, supervisor))[0] == 200
    status, written, _ = await behind.note(case_id, "Called the housing office", cm)
    assert status == 201
    stamp = _parse(written["events"][0]["recorded_at"])
    answer = await behind.get(f"/v1/cases/{case_id}?as_of={_z(stamp)}", supervisor)
    assert answer[0] == 200, answer
