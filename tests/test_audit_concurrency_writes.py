"""Audit of the write side under concurrency: lost races, idempotency, group commit, the feed.

Real PostgreSQL, real HTTP through aiohttp's test server, several service instances on one
database where the race is between instances.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from schemas import api
from services.common.auth import Principal, Role
from services.records.application.cases import CaseCommands, WriteRequest
from services.records.application.language import LanguageGuides
from services.records.domain import commands as cmd
from services.records.store.events import (
    AppendResult,
    EventStore,
    IdempotencyClaim,
    NewEvent,
    VersionConflict,
)
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi, event_count
from tests.test_rebuild import rebuild_and_compare

OWNER = Principal("cm-1", Role.CASE_MANAGER, "agency-a")
GOAL = {"title": "Find steady work", "domain": "employment", "source": "agency"}


async def instances(make: ClientFactory, url: str, token: TokenFactory,
                    count: int) -> list[CaseApi]:
    return [CaseApi(await make(url), token()) for _ in range(count)]


def outcome(answer: Any) -> Any:
    """'ok' for a write that landed, else the problem's status."""
    return "ok" if "version" in answer and "case_id" in answer else answer["status"]


def note(case_id: uuid.UUID, text: str) -> WriteRequest:
    return WriteRequest(case_id, cmd.AddNote(uuid.uuid4(), api.NoteInput(text=text)), OWNER)


class ContestedStore(EventStore):
    """A real store on which another instance lands a real write between every optimistic
    read and append of this one (up to ``rounds`` times): the worst timing a busy case
    written through several instances can give a writer."""

    def __init__(self, pool: asyncpg.Pool, clock: FakeClock, rival: CaseCommands,
                 rounds: int) -> None:
        super().__init__(pool, clock)
        self.rival = rival
        self.rounds = rounds
        self.beaten = 0

    async def append(self, stream_id: uuid.UUID, events: Sequence[NewEvent],
                     **kwargs: Any) -> AppendResult:
        # a writer holding the case's head cannot be overtaken; the rival would only wait
        if kwargs.get("locked") is None and self.beaten < self.rounds:
            self.beaten += 1
            await self.rival.execute(note(stream_id, f"from the other instance {self.beaten}"))
        return await super().append(stream_id, events, **kwargs)


async def test_a_writer_that_keeps_losing_races_to_another_instance_still_lands(
        fresh_pool: asyncpg.Pool) -> None:
    """Without If-Match a write succeeds or fails on its merits, never on timing. A writer
    overtaken on every try used to run through its 30 attempts and answer 503; now, after a
    few lost races, it holds the case's head while it decides, and lands."""
    clock = FakeClock()
    rival = CaseCommands(EventStore(fresh_pool, clock), LanguageGuides(None), clock)
    store = ContestedStore(fresh_pool, clock, rival, rounds=100)
    commands = CaseCommands(store, LanguageGuides(None), clock)
    case_id = uuid.uuid4()
    await rival.execute(WriteRequest(case_id, cmd.OpenCase(
        agency="agency-a", body=api.OpenCase.model_validate({
            "participant": {"name": "Jordan"}, "case_manager": "cm-1",
            "risk_level": "moderate"})), OWNER))

    written = await commands.execute(note(case_id, "Jo chose the library for our meetings"))

    assert store.beaten < 10, "overtaken long after it should have held the head"
    assert written.version == 2 + store.beaten
    events = await store.read_stream(case_id)
    assert [e.version for e in events] == list(range(1, written.version + 1))
    assert [e.data.get("text") for e in events].count(
        "Jo chose the library for our meetings") == 1
    assert (await store.verify(case_id)).valid


@pytest.mark.parametrize("aborted", ["the retry", "the holder"])
async def test_a_held_head_and_a_keyed_retry_elsewhere_end_as_a_lost_race_not_an_error(
        fresh_pool: asyncpg.Pool, fresh_database_url: str, aborted: str) -> None:
    """A writer holding a case's head appends with an Idempotency-Key that the same
    request, retried on another instance, has just claimed while it waits for that head: a
    lock cycle. PostgreSQL breaks it by aborting one (the first to look, after its
    deadlock_timeout); that one is a lost race (retried and then replayed by the
    application), never a database error answered 500."""
    patient = {"deadlock_timeout": "60s"}
    other_pool = await asyncpg.create_pool(
        fresh_database_url, min_size=1, max_size=2,
        server_settings=patient if aborted == "the holder" else {})
    holder_pool = await asyncpg.create_pool(
        fresh_database_url, min_size=1, max_size=2,
        server_settings=patient if aborted == "the retry" else {})
    assert other_pool is not None
    assert holder_pool is not None
    try:
        await _lock_cycle(fresh_pool, EventStore(holder_pool), EventStore(other_pool))
    finally:
        await other_pool.close()
        await holder_pool.close()


async def _lock_cycle(pool: asyncpg.Pool, store: EventStore, other: EventStore) -> None:
    stream = uuid.uuid4()
    meta = {"actor": {"sub": "cm-1", "role": "case_manager"}}
    await store.append(stream, [NewEvent(uuid.uuid4(), "NoteAdded", 1, {"text": "first"})],
                       expected_version=0, agency="agency-a", metadata=meta)
    claim = IdempotencyClaim("agency-a:cm-1", "retried-" + uuid.uuid4().hex, "same request")

    def attempt() -> list[NewEvent]:
        return [NewEvent(uuid.uuid4(), "NoteAdded", 1, {"text": "the retried note"})]

    async def waiting_for_the_head() -> None:
        for _ in range(500):
            waiting = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()")
            if waiting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the keyed append never waited for the held head")

    head_taken = asyncio.Event()

    async def holder() -> AppendResult:
        async with store.locked(stream) as held:
            head_taken.set()
            await waiting_for_the_head()
            return await store.append(stream, attempt(), expected_version=1,
                                      agency="agency-a", metadata=meta, idempotency=claim,
                                      locked=held)

    async def retry_elsewhere() -> AppendResult:
        await head_taken.wait()  # a fixed sleep lost the race to a slow holder
        return await other.append(stream, attempt(), expected_version=1, agency="agency-a",
                                  metadata=meta, idempotency=claim)

    results = await asyncio.gather(holder(), retry_elsewhere(), return_exceptions=True)

    written = [r for r in results if isinstance(r, AppendResult) and not r.replayed]
    assert len(written) == 1, results
    # the aborted one: a lost race, or, when the other had committed by then, its replay
    (aborted,) = [r for r in results if r is not written[0]]
    assert isinstance(aborted, VersionConflict) or (
        isinstance(aborted, AppendResult) and aborted.events == written[0].events), results
    assert len(await store.read_stream(stream)) == 2
    replay = await store.find_idempotent(claim)
    assert replay is not None
    assert replay.events == written[0].events


async def test_one_key_sent_at_once_through_three_instances_writes_once(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """The same request resent many times at once: one write, every answer the original's.
    The same key with other bodies at once: one write, the rest refused as a reused key."""
    apis = await instances(make_records_client, fresh_database_url, token, 3)
    case_id = await apis[0].open_case()
    before = await event_count(fresh_pool)

    same = await asyncio.gather(*[apis[n % 3].call(
        "POST", f"/v1/cases/{case_id}/goals", GOAL, headers={"Idempotency-Key": "goal-once"})
        for n in range(12)])
    assert {outcome(a) for a in same} == {"ok"}, same
    assert {(a["version"], a["id"]) for a in same} == {(2, same[0]["id"])}
    assert await event_count(fresh_pool) == before + 1

    others = await asyncio.gather(*[apis[n % 3].call(
        "POST", f"/v1/cases/{case_id}/notes", {"text": f"note {n}"},
        headers={"Idempotency-Key": "note-once"}) for n in range(12)])
    assert Counter(outcome(a) for a in others) == {"ok": 1, 422: 11}, others
    assert all(a["type"].endswith("/idempotency-key-reused")
               for a in others if outcome(a) != "ok")
    assert await event_count(fresh_pool) == before + 2


async def test_the_goal_cap_holds_across_instances(make_records_client: ClientFactory,
                                                   fresh_database_url: str,
                                                   token: TokenFactory) -> None:
    apis = await instances(make_records_client, fresh_database_url, token, 4)
    case_id = await apis[0].open_case()
    answers = await asyncio.gather(*[apis[n % 4].call(
        "POST", f"/v1/cases/{case_id}/goals", {**GOAL, "title": f"goal {n}"})
        for n in range(8)])
    assert Counter(outcome(a) for a in answers) == {"ok": 3, 422: 5}, answers
    assert {a["type"] for a in answers if outcome(a) == 422} == {
        "https://casetrail.dev/problems/active-goal-limit"}
    plan = await apis[3].plan(case_id)
    assert [g["status"] for g in plan["goals"]] == ["active"] * 3


async def test_one_step_completed_at_once_through_three_instances(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    apis = await instances(make_records_client, fresh_database_url, token, 3)
    case_id = await apis[0].open_case()
    step = await apis[0].step(case_id, await apis[0].goal(case_id))
    answers = await asyncio.gather(*[apis[n % 3].call(
        "POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}) for n in range(9)])
    assert Counter(outcome(a) for a in answers) == {"ok": 1, 409: 8}, answers
    history = await apis[1].call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert [e["type"] for e in history["events"]].count("ActionStepCompleted") == 1


async def test_after_a_storm_the_chains_hold_and_the_projection_is_the_fold(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """Mixed writes (keyed and not, rules that refuse) to a few cases through three instances
    at once: every chain verifies, each plan is at its case's last version, and rebuilding
    the projections from the events changes nothing."""
    apis = await instances(make_records_client, fresh_database_url, token, 3)
    cases = [await apis[0].open_case() for _ in range(5)]
    goals = {case: await apis[0].goal(case) for case in cases}

    def write(n: int) -> Any:
        case, api_ = cases[n % 5], apis[n % 3]
        base = f"/v1/cases/{case}"
        match n % 4:
            case 0:
                return api_.call("POST", f"{base}/goals", {**GOAL, "title": f"goal {n}"})
            case 1:
                return api_.call("POST", f"{base}/goals/{goals[case]}/steps",
                                 {"description": f"step {n}", "owner": "participant",
                                  "due_date": "2026-01-05"})
            case 2:
                return api_.call("POST", f"{base}/strengths",
                                 {"category": "skill", "description": f"skill {n}"})
        return api_.call("POST", f"{base}/notes", {"text": f"note {n % 20}"},
                         headers={"Idempotency-Key": f"storm-{n % 20}-{case}"})

    answers = await asyncio.gather(*[write(n) for n in range(300)])
    assert set(Counter(outcome(a) for a in answers)) <= {"ok", 422}, answers

    for n, case in enumerate(cases):
        verified = await apis[n % 3].call("GET", f"/v1/cases/{case}/verify", expect=200)
        assert verified["first_broken_link"] is None, verified
        history = await apis[0].call("GET", f"/v1/cases/{case}/history?limit=500", expect=200)
        plan = await apis[2].plan(case)
        assert plan["version"] == history["events"][-1]["version"], (case, plan["version"], [
            (e["version"], e["type"]) for e in history["events"][-3:]])
    await rebuild_and_compare(fresh_database_url)


async def test_the_feed_skips_and_repeats_nothing_behind_a_held_open_transaction(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """A reader follows /v1/events while two instances append and a long-running writer
    holds an earlier event uncommitted: nothing passes the open transaction, and once it
    commits every event arrives once, the late one in its transaction's place."""
    apis = await instances(make_records_client, fresh_database_url, token, 2)
    cases = [await apis[0].open_case() for _ in range(4)]
    service = bearer(token(role="service", sub="notifier", agency="*"))
    seen: list[str] = []
    done = asyncio.Event()

    async def follow() -> None:
        after = ""
        while True:
            finished = done.is_set()
            response = await apis[1].client.get(
                "/v1/events?limit=13&wait=0.2" + (f"&after={after}" if after else ""),
                headers=service)
            page = await response.json()
            assert response.status == 200, page
            seen.extend(e["event_id"] for e in page["events"])
            after = page["checkpoint"]
            if finished and not page["events"]:
                return

    slow = await fresh_pool.acquire()
    held = slow.transaction()
    await held.start()
    late = uuid.uuid4()
    await slow.execute(
        "INSERT INTO records.events (stream_id, version, event_id, type, schema_version, data,"
        " metadata, agency, recorded_at, prev_hash, hash)"
        " VALUES ($1, 1, $2, 'NoteAdded', 1, '{}', '{}', 'agency-a', now(), '', '')",
        uuid.uuid4(), late)
    reading = asyncio.create_task(follow())
    try:
        await asyncio.gather(*[apis[n % 2].call(
            "POST", f"/v1/cases/{cases[n % 4]}/notes", {"text": f"note {n}"}, expect=201)
            for n in range(120)])
        await asyncio.sleep(0.5)
        assert str(late) not in seen
        assert len(seen) <= 4, "the feed passed an open transaction"
        await held.commit()
    finally:
        await fresh_pool.release(slow)
    everything = {str(r["event_id"]) for r in await fresh_pool.fetch(
        "SELECT event_id FROM records.events")}
    for _ in range(300):  # another run's transaction on this server may hold the horizon
        if len(seen) >= len(everything):
            break
        await asyncio.sleep(0.1)
    done.set()
    await reading
    assert len(seen) == len(set(seen)), "the feed repeated an event"
    assert set(seen) == everything, "the feed skipped an event"
    assert seen.index(str(late)) == 4, "the late event is not in its transaction's place"


async def test_a_write_the_database_refuses_in_a_batch_fails_alone_and_leaves_nothing(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """One append of a shared statement is refused by the database (here a trigger stands for
    any constraint): the others land, each completely; the refused one writes nothing at all
    (no event, head or plan change) and gets a problem body."""
    await fresh_pool.execute("""
        CREATE FUNCTION records.refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.data->>'text' = 'refused by the database' THEN
                RAISE check_violation USING MESSAGE = 'refused';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_marked BEFORE INSERT ON records.events
            FOR EACH ROW EXECUTE FUNCTION records.refuse_marked()""")
    cm = CaseApi(await make_records_client(fresh_database_url), token())
    cases = [await cm.open_case() for _ in range(24)]
    before = await event_count(fresh_pool)

    async def post(n: int) -> tuple[int, str]:
        text = "refused by the database" if n == 7 else f"note {n}"
        response = await cm.client.post(f"/v1/cases/{cases[n]}/notes", json={"text": text},
                                        headers=bearer(cm.token))
        await response.read()
        return response.status, response.content_type

    answers = await asyncio.gather(*[post(n) for n in range(24)])

    assert [status for n, (status, _) in enumerate(answers) if n != 7] == [201] * 23
    assert answers[7][0] >= 400
    assert answers[7][1] == "application/problem+json"
    assert await event_count(fresh_pool) == before + 23
    assert await fresh_pool.fetchval(
        "SELECT version FROM records.streams WHERE stream_id = $1", uuid.UUID(cases[7])) == 1
    assert await fresh_pool.fetchval(
        "SELECT count(*) FROM records.plans p JOIN records.streams s"
        " ON s.stream_id = p.case_id WHERE p.version <> s.version") == 0


async def test_a_keyed_write_refused_by_the_rules_is_decided_again_when_retried(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """A refusal is not remembered under its key (decision 0005): nothing was written, so a
    retry is decided against the plan as it is then (here, once a goal has been set aside)."""
    cm = CaseApi(await make_records_client(fresh_database_url), token())
    case_id = await cm.open_case()
    goals = [await cm.goal(case_id, title=f"goal {n}") for n in range(3)]
    key = {"Idempotency-Key": "fourth-goal"}
    refused = await cm.call("POST", f"/v1/cases/{case_id}/goals", {**GOAL, "title": "fourth"},
                            headers=key, expect=422)
    assert refused["type"].endswith("/active-goal-limit")
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goals[0]}/status",
                  {"status": "future", "reason": "Jo wants to start with housing"}, expect=200)
    landed = await cm.call("POST", f"/v1/cases/{case_id}/goals", {**GOAL, "title": "fourth"},
                           headers=key, expect=201)
    again = await cm.call("POST", f"/v1/cases/{case_id}/goals", {**GOAL, "title": "fourth"},
                          headers=key, expect=201)
    assert again == landed



async def test_a_held_head_of_a_case_opened_meanwhile_by_another_is_a_lost_race(
        fresh_pool: asyncpg.Pool) -> None:
    """A keyed append through a held head that finds the case opened by another instance
    (the one race a held head can still lose) left its key claimed in its transaction, and
    read that claim back as a replay with no events: IndexError, a 500."""
    store = EventStore(fresh_pool)
    stream = uuid.uuid4()
    meta = {"actor": {"sub": "cm-1", "role": "case_manager"}}
    claim = IdempotencyClaim("agency-a:cm-1", "open-" + uuid.uuid4().hex, "same request")

    def opening(text: str) -> list[NewEvent]:
        return [NewEvent(uuid.uuid4(), "NoteAdded", 1, {"text": text})]

    async def open_while_held() -> None:
        async with store.locked(stream) as held:
            await EventStore(fresh_pool).append(stream, opening("elsewhere"), expected_version=0,
                                                agency="agency-a", metadata=meta)
            await store.append(stream, opening("held"), expected_version=0, agency="agency-a",
                               metadata=meta, idempotency=claim, locked=held)

    with pytest.raises(VersionConflict):
        await open_while_held()
    assert await store.find_idempotent(claim) is None
    assert [e.data["text"] for e in await store.read_stream(stream)] == ["elsewhere"]
