"""Upgrading a database written by an earlier release, from that release's own data.

Each fixture under ``tests/fixtures/upgrade/`` is a ``pg_dump --inserts`` of the ``records``
and ``notifier`` schemas that an earlier release's services wrote through their HTTP APIs
(cases with goals, steps completed and taken back, reviews held and moved, notes, transfers,
closes and reopens; notices sent, waiting and failed), made portable by renumbering its
transaction ids (``tests/fixtures/upgrade/README.md`` says how). Each test loads one into an
empty database, migrates it with this code and checks what an operator relies on: the record
and its hash chains are untouched, every case reads, the projections a migration leaves differ
from a rebuild only where ``deploy/README.md`` says the release needs one, and the notifier
sends what was waiting without sending anything again.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services import cli
from services.common.database import TransactionIdsAhead, with_database
from services.notifier.http.app import migrate as migrate_notifier
from services.records.http.app import migrate as migrate_records
from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, FakeClock, TokenFactory, _admin, bearer
from tests.notifier_helpers import SmtpServer, make_rig

FIXTURES = Path(__file__).parent / "fixtures" / "upgrade"
# after the first two fixtures' last write (10:11 UTC): what failed then is due for its retry
AFTER_UPGRADE = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)


class Release:
    def __init__(self, name: str, records_pending: list[str], notifier_pending: list[str],
                 facts_needing_rebuild: set[str], *, plans_need_rebuild: bool = True,
                 after_upgrade: datetime = AFTER_UPGRADE) -> None:
        self.name = name
        self.records_pending = records_pending
        self.notifier_pending = notifier_pending
        # outcome-fact kinds the release's code did not write: only a rebuild derives them
        self.facts_needing_rebuild = facts_needing_rebuild
        # its plan documents differ from a rebuild's (v1 completions from "no longer needed")
        self.plans_need_rebuild = plans_need_rebuild
        # after the fixture's last write: what failed then is due for its retry
        self.after_upgrade = after_upgrade


RELEASES = [
    Release("release-2026-11-23",
            ["0005_events_owner_privileges.sql", "0006_access_log_what.sql",
             "0007_access_log_commit_order.sql", "0008_outcome_review_due.sql",
             "0009_drop_events_stream_time.sql", "0010_overdue_steps_of_active_goals.sql",
             "0011_outcome_facts_local_days_and_goals.sql", "0012_caseload_by_review.sql",
             "0013_access_log_refused.sql", "0014_streams_answered_until.sql"],
            ["0005_cause_recorded_at.sql", "0006_step_owner.sql", "0007_directory_kinds.sql",
             "0008_access_log.sql", "0009_handed_on_status.sql", "0010_recalled_at.sql"],
            {"review_due", "step_uncompleted"}),
    Release("release-2026-12-06-tenth-session",
            ["0010_overdue_steps_of_active_goals.sql",
             "0011_outcome_facts_local_days_and_goals.sql", "0012_caseload_by_review.sql",
             "0013_access_log_refused.sql", "0014_streams_answered_until.sql"],
            ["0006_step_owner.sql", "0007_directory_kinds.sql", "0008_access_log.sql",
             "0009_handed_on_status.sql", "0010_recalled_at.sql"], set()),
    Release("release-2026-12-06-thirteenth-session",
            ["0013_access_log_refused.sql", "0014_streams_answered_until.sql"],
            ["0008_access_log.sql", "0009_handed_on_status.sql", "0010_recalled_at.sql"], set(),
            plans_need_rebuild=False,
            after_upgrade=datetime(2026, 12, 6, 15, 30, tzinfo=UTC)),  # written at 15:09
]


def _dump(release: Release) -> str:
    return gzip.decompress((FIXTURES / f"{release.name}.sql.gz").read_bytes()).decode()


def _database_holding(server_url: str, prefix: str, sql: str) -> Iterator[str]:
    """An empty database (no migrations of this code) holding ``sql``, dropped after."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    asyncio.run(_admin(url, sql))
    yield url
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=RELEASES, ids=lambda r: r.name)
def release(request: pytest.FixtureRequest) -> Release:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def old_database_url(postgres_server_url: str, release: Release) -> Iterator[str]:
    yield from _database_holding(postgres_server_url, "casetrail_upgrade", _dump(release))


@pytest.fixture
async def old_pool(old_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(old_database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


async def _rows(pool: asyncpg.Pool, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(sql)]


EVENTS = ("SELECT global_position, transaction_id::text AS tx, stream_id, version, event_id,"
          " type, schema_version, data, metadata, recorded_at, prev_hash, hash"
          " FROM records.events ORDER BY global_position")
PLANS = "SELECT * FROM records.plans ORDER BY case_id"
FACTS = "SELECT * FROM records.outcome_facts ORDER BY event_id, kind"


async def _cases(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return await _rows(pool, "SELECT case_id, agency, case_manager, version,"
                             " view::text AS view FROM records.plans ORDER BY case_id")


# --------------------------------------------------------------------------- the record itself


async def test_migrating_applies_each_pending_migration_once_and_leaves_the_record_untouched(
        old_database_url: str, old_pool: asyncpg.Pool, release: Release) -> None:
    events_before = await _rows(old_pool, EVENTS)
    assert await migrate_records(old_database_url) == release.records_pending
    assert await migrate_notifier(old_database_url) == release.notifier_pending
    assert await migrate_records(old_database_url) == []
    assert await migrate_notifier(old_database_url) == []
    assert await _rows(old_pool, EVENTS) == events_before


async def test_every_case_reads_verifies_and_shows_its_whole_history_after_the_upgrade(
        old_database_url: str, old_pool: asyncpg.Pool, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    await migrate_records(old_database_url)
    client = await make_records_client(old_database_url)
    for case in await _cases(old_pool):
        auth = bearer(token(role="supervisor", sub="sup-1", agency=case["agency"]))
        path = f"/v1/cases/{case['case_id']}"
        verify = await (await client.get(f"{path}/verify", headers=auth)).json()
        head = await old_pool.fetchval("SELECT hash FROM records.events WHERE stream_id = $1"
                                       " ORDER BY version DESC LIMIT 1", case["case_id"])
        assert verify["valid"] is True, verify
        assert verify["first_broken_link"] is None
        assert (verify["events_checked"], verify["head_hash"]) == (case["version"], head)
        history = await client.get(f"{path}/history?limit=500", headers=auth)
        assert history.status == 200, await history.text()
        assert [e["version"] for e in (await history.json())["events"]] == \
            list(range(1, case["version"] + 1))
        for version in range(1, case["version"] + 1):  # every event folds, upcast or not
            as_of = await client.get(f"{path}?as_of_version={version}", headers=auth)
            assert as_of.status == 200, (version, await as_of.text())


# --------------------------------------------------------------------------- projections


def _completed_from_no_longer_needed_v1(events: list[dict[str, Any]]) -> set[str]:
    """Steps whose completion in force is a v1 event from no_longer_needed: its note was the
    reason the status route required, which the v1 -> v2 upcaster moves to ``reason``."""
    last: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["type"] in ("ActionStepCompleted", "ActionStepStatusChanged"):
            last[json.loads(e["data"])["step_id"]] = e
    return {step for step, e in last.items()
            if e["type"] == "ActionStepCompleted" and e["schema_version"] == 1
            and json.loads(e["data"])["from_status"] == "no_longer_needed"}


def _view_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            found.append(f"{path}: {a!r} -> {b!r}")

    walk(old, new, "")
    return found


def _status_reasons(events: list[dict[str, Any]]) -> dict[str, str | None]:
    """The reason recorded with each goal's and step's latest status change, by id (a v1
    completion from no_longer_needed: its note, which the upcaster moves to ``reason``)."""
    found: dict[str, str | None] = {}
    for e in events:
        data = json.loads(e["data"])
        if e["type"] == "GoalStatusChanged":
            found[data["goal_id"]] = data.get("reason")
        elif e["type"] == "ActionStepStatusChanged":
            found[data["step_id"]] = data.get("reason")
        elif e["type"] == "ActionStepCompleted":
            v1_reversal = e["schema_version"] == 1 and data["from_status"] == "no_longer_needed"
            found[data["step_id"]] = data.get("note") if v1_reversal else data.get("reason")
    return found


def _documented_view_change(old: dict[str, Any], new: dict[str, Any],
                            events: list[dict[str, Any]]) -> list[str]:
    """What in a plan document changed for a documented reason: a v1 reversal's reason is no
    longer a completion note (ActionStepCompleted v2), a closed case's review reads as
    cancelled (2026-12-06: the view shows a closed case's review as cancelled), and goals and
    steps show the reason of their latest status change (``status_reason``, 0103)."""
    moved = _completed_from_no_longer_needed_v1(events)
    closed = any(e["type"] == "CaseClosed" for e in events)
    reasons = _status_reasons(events)
    expected = json.loads(json.dumps(old))
    for goal in expected["goals"]:
        goal.setdefault("status_reason", reasons.get(goal["goal_id"]))
        for step in goal["steps"]:
            step.setdefault("status_reason", reasons.get(step["step_id"]))
            if step["step_id"] in moved:
                step["completion_note"] = None
    if closed:
        for review, now in zip(expected["reviews"], new["reviews"], strict=True):
            if (review["status"], now["status"]) == ("scheduled", "cancelled"):
                review["status"] = "cancelled"
    return _view_differences(expected, new)


async def test_a_rebuild_changes_only_what_the_release_notes_say_needs_one(
        old_database_url: str, old_pool: asyncpg.Pool, release: Release) -> None:
    """Plans: rebuilt documents equal the migrated ones but for the documented changes (so
    the rebuild after the roll is needed, and no more than that; a release that needs none
    leaves them exactly); caseload columns (0010) and the re-dated facts (0011, an Auckland
    agency among them) equal a rebuild's exactly."""
    await migrate_records(old_database_url)
    plans, facts = await _rows(old_pool, PLANS), await _rows(old_pool, FACTS)
    events = await _rows(old_pool, EVENTS)
    await rebuild_projections(old_pool)
    rebuilt_plans, rebuilt_facts = await _rows(old_pool, PLANS), await _rows(old_pool, FACTS)

    assert [{k: v for k, v in p.items() if k != "view"} for p in plans] == \
        [{k: v for k, v in p.items() if k != "view"} for p in rebuilt_plans]
    differences: list[str] = []
    for migrated, rebuilt in zip(plans, rebuilt_plans, strict=True):
        old, new = json.loads(migrated["view"]), json.loads(rebuilt["view"])
        case_events = [e for e in events if e["stream_id"] == migrated["case_id"]]
        assert _documented_view_change(old, new, case_events) == []
        differences += _view_differences(old, new)
    # every release's documents lack status_reason: a read folds such a plan from its events
    # (projections/plans.py), so the rebuild is not needed for it, only saves that fold
    assert any(".status_reason: '<absent>' -> " in d for d in differences)
    differences = [d for d in differences if ".status_reason: '<absent>' -> " not in d]
    if release.plans_need_rebuild:  # the fixture holds what the rebuild is for
        assert any("completion_note" in d for d in differences)
    else:
        assert differences == []

    by_key = {(f["event_id"], f["kind"]): f for f in facts}
    rebuilt_by_key = {(f["event_id"], f["kind"]): f for f in rebuilt_facts}
    assert set(by_key) <= set(rebuilt_by_key)
    assert {k[1] for k in set(rebuilt_by_key) - set(by_key)} == release.facts_needing_rebuild
    for key, fact in by_key.items():
        differs = {c for c in fact if fact[c] != rebuilt_by_key[key][c]}
        # review_held facts name their review only when written by 0008's code
        assert differs <= ({"review_id"} if release.facts_needing_rebuild else set()), key


async def test_analytics_after_the_upgrade_and_rebuild_match_the_record_and_a_second_rebuild(
        old_database_url: str, old_pool: asyncpg.Pool, make_records_client: ClientFactory,
        token: TokenFactory, tmp_path: Path) -> None:
    await migrate_records(old_database_url)
    await rebuild_projections(old_pool)
    (tmp_path / "agency-a.json").write_text('{"analytics_min_cell": 1}')  # every figure exact
    client = await make_records_client(old_database_url, CASETRAIL_POLICY_DIR=str(tmp_path))
    auth = bearer(token(role="analyst", sub="an-1", agency="agency-a"))
    query = "/v1/analytics/outcomes?from=2026-01-01&to=2026-12-31"
    first = await (await client.get(query, headers=auth)).json()
    await rebuild_projections(old_pool)
    assert await (await client.get(query, headers=auth)).json() == first

    count = "SELECT count(*) FROM records.events e JOIN records.plans p ON p.case_id =" \
            " e.stream_id WHERE p.agency = 'agency-a' AND e.type = $1"
    agreements = await old_pool.fetchval(count, "PlanAgreed")
    assert first["co_creation"]["agreements"] == agreements > 0
    reviews = first["reviews"]  # those fallen due by today: the fixtures' are all ahead
    assert reviews["on_time"] <= reviews["held"] <= reviews["due"]
    assert first["goals_achieved"]["total"] == await old_pool.fetchval(
        "SELECT count(*) FROM records.plans p, jsonb_array_elements(p.view->'goals') g"
        " WHERE p.agency = 'agency-a' AND g->>'status' = 'achieved'")


# --------------------------------------------------------------------------- notifier


async def test_the_upgraded_notifier_sends_what_was_waiting_and_nothing_again(
        old_database_url: str, old_pool: asyncpg.Pool, make_records_client: ClientFactory,
        aiohttp_client: Callable[..., Awaitable[TestClient]], smtp: SmtpServer,
        token: TokenFactory, release: Release) -> None:
    notices = "SELECT id, key, status, message_id FROM notifier.notifications ORDER BY key"
    before = await _rows(old_pool, notices)
    sent = {n["message_id"] for n in before if n["status"] == "sent"}
    failed = {n["message_id"] for n in before if n["status"] == "failed"}
    assert sent  # the fixture holds both
    assert failed
    await migrate_records(old_database_url)
    await migrate_notifier(old_database_url)
    clock = FakeClock(release.after_upgrade)
    records = await make_records_client(old_database_url, clock=clock)
    rig = await make_rig(aiohttp_client, old_database_url, records, smtp, clock,
                         NOTIFIER_RETRY_ATTEMPTS=8)

    assert await rig.catch_up() == 0  # the checkpoint the old notifier left holds
    await rig.dispatch()
    received = [str(m["Message-ID"]) for m in smtp.received]
    assert len(received) == len(set(received))
    assert not set(received) & sent
    assert failed <= set(received)
    after = {n["key"]: n for n in await _rows(old_pool, notices)}
    assert all(after[n["key"]]["status"] == "sent" for n in before if n["status"] == "sent")

    # a step completed after the upgrade is celebrated once, as before
    step = await old_pool.fetchrow(
        "SELECT p.case_id, p.case_manager, s->>'step_id' AS step_id FROM records.plans p,"
        " jsonb_array_elements(p.view->'goals') g, jsonb_array_elements(g->'steps') s"
        " WHERE p.status = 'open' AND p.agency = 'agency-a' AND g->>'status' = 'active'"
        " AND s->>'status' = 'not_started' ORDER BY 1, 3 LIMIT 1")
    auth = bearer(token(sub=step["case_manager"]))
    done = await records.post(f"/v1/cases/{step['case_id']}/steps/{step['step_id']}/complete",
                              json={"note": "Done after the upgrade"}, headers=auth)
    assert done.status == 200, await done.text()
    before_new = len(smtp.received)
    assert await rig.catch_up() >= 1
    await rig.dispatch()
    await rig.catch_up()
    await rig.dispatch()
    wins = [m for m in smtp.received[before_new:] if "small win" in str(m["Subject"]).lower()]
    assert len(wins) == 1


# --------------------------------------------------------------------------- moving the database

# A cluster's transaction ids run on (xid8 counts wraparound epochs): pg_dump/pg_restore or
# logical replication into a new cluster keeps the stored transaction_id values while the new
# cluster's counter starts low. Here the dump comes from a cluster five epochs on.
EPOCHS_AHEAD = 5 << 32


@pytest.fixture
def restored_database_url(postgres_server_url: str) -> Iterator[str]:
    moved = re.sub(
        r"^(INSERT INTO records\.(?:events|access_log) OVERRIDING SYSTEM VALUE VALUES \(.*?')"
        r"(1\d{3})('[,)])", lambda m: f"{m[1]}{int(m[2]) + EPOCHS_AHEAD}{m[3]}",
        _dump(RELEASES[1]), flags=re.MULTILINE)
    yield from _database_holding(postgres_server_url, "casetrail_restored", moved)


async def test_a_database_restored_into_another_cluster_is_refused_with_the_way_out(
        restored_database_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its events keep the old cluster's transaction ids, which the feed orders and holds
    back by: served as it is, the feed held every restored event back and ordered the new
    ones before them (a notifier's checkpoint from before the move would skip those)."""
    with pytest.raises(TransactionIdsAhead, match="pg_resetwal --epoch=5 "):
        await migrate_records(restored_database_url)
    monkeypatch.setenv("DATABASE_URL", restored_database_url)
    assert await asyncio.to_thread(cli.main, ["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("casetrail: migrations: this database's rows (records.events,"
                          " records.access_log) carry transaction ids")
    assert "Traceback" not in err


async def test_the_transaction_id_check_passes_an_ordinary_database(
        fresh_database_url: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    case = {"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"}
    opened = await client.post("/v1/cases", json=case, headers=bearer(token()))
    assert opened.status == 201
    assert await migrate_records(fresh_database_url) == []  # the check runs after migrating


async def test_the_way_out_names_a_transaction_id_pg_resetwal_takes(
        fresh_database_url: str) -> None:
    """Newest id at the last of an epoch: "one past it" is the next epoch's first normal id
    (3), not the 33-bit 4294967296 pg_resetwal refuses."""
    await migrate_records(fresh_database_url)
    last_of_epoch = (5 << 32) + 0xFFFFFFFF
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(
            "INSERT INTO records.events (stream_id, version, event_id, type, schema_version,"
            " data, metadata, agency, recorded_at, prev_hash, hash, transaction_id)"
            " VALUES (gen_random_uuid(), 1, gen_random_uuid(), 'NoteAdded', 1, '{}', '{}',"
            " 'agency-a', now(), '', '', $1::text::xid8)", str(last_of_epoch))
    finally:
        await conn.close()
    with pytest.raises(TransactionIdsAhead,
                       match=r"pg_resetwal --epoch=6 --next-transaction-id=3\)"):
        await migrate_records(fresh_database_url)


LOGS_AHEAD = {  # an access log row from a cluster whose counter ran ahead: migrate, its table
    "records": (migrate_records, "INSERT INTO records.access_log (at, agency, actor_sub,"
                " actor_role, case_id, action, what, transaction_id) VALUES (now(), 'agency-a',"
                " 'sup-1', 'supervisor', gen_random_uuid(), 'read', 'plan', $1::text::xid8)"),
    "notifier": (migrate_notifier, "INSERT INTO notifier.access_log (at, agency, actor_sub,"
                 " actor_role, action, what, transaction_id) VALUES (now(), 'agency-a', 'sup-1',"
                 " 'supervisor', 'read', 'schedule', $1::text::xid8)"),
}


@pytest.mark.parametrize("service", LOGS_AHEAD)
async def test_an_access_log_restored_from_another_cluster_is_refused_too(
        fresh_database_url: str, service: str) -> None:
    """The access logs page in commit order as the feed does: entries restored with ids
    ahead of this cluster would be held back from supervisors, and a checkpoint from before
    the move would skip what was logged after it. An audit found only events checked (the
    notifier's log, written by reads alone, runs ahead of events most of all)."""
    migrate, insert = LOGS_AHEAD[service]
    await migrate(fresh_database_url)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(insert, str((5 << 32) + 1000))
    finally:
        await conn.close()
    with pytest.raises(TransactionIdsAhead, match="pg_resetwal --epoch=5 "):
        await migrate(fresh_database_url)
