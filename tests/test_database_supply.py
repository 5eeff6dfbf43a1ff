"""The test harness's promise: every database a test borrows is as migrated as the template,
empty, with the migrations' own rows and fresh sequences, even when it was used before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import ClientFactory, TokenFactory
from tests.database_baseline import Baseline, DifferentDatabase
from tests.database_supply import AHEAD, DatabaseSupply
from tests.records_api import CaseApi


@pytest.fixture
async def conn(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(fresh_database_url)
    yield connection
    await connection.close()


async def use_everything(url: str, conn: asyncpg.Connection, make_records_client: ClientFactory,
                         token: TokenFactory) -> None:
    """Writes the way the services do: events, projections, access log, feed checkpoint."""
    api = CaseApi(await make_records_client(url), token())
    case_id = await api.open_case()
    await api.step(case_id, await api.goal(case_id))
    await api.plan(case_id)
    await conn.execute("UPDATE notifier.checkpoint SET position = '41'")
    await conn.execute("DELETE FROM records.schema_migrations WHERE version = 1")
    await conn.execute("SELECT nextval('notifier.access_log_id_seq')")


async def test_a_used_database_is_brought_back_to_the_template_state(
        fresh_database_url: str, conn: asyncpg.Connection, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    fresh = await Baseline.read(conn)
    checkpoint = await conn.fetch("SELECT * FROM notifier.checkpoint")
    migrations = await conn.fetch("SELECT * FROM records.schema_migrations ORDER BY version")
    await use_everything(fresh_database_url, conn, make_records_client, token)
    assert await conn.fetchval("SELECT count(*) FROM records.events") == 3
    assert await Baseline.read(conn) != fresh

    await fresh.restore(conn)

    assert await Baseline.read(conn) == fresh
    for table in ("records.events", "records.streams", "records.plans", "records.access_log"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert await conn.fetch("SELECT * FROM notifier.checkpoint") == checkpoint
    assert await conn.fetch(
        "SELECT * FROM records.schema_migrations ORDER BY version") == migrations
    assert await conn.fetchval("SELECT nextval('records.events_global_position_seq')") == 1
    assert await conn.fetchval("SELECT nextval('notifier.access_log_id_seq')") == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # events still refuse a TRUNCATE
        await conn.execute("TRUNCATE records.events")


SCHEMA_CHANGES = {
    "a column": "ALTER TABLE records.streams ADD COLUMN extra text",
    "a table": "CREATE TABLE records.extra (id int)",
    "a grant": "GRANT SELECT ON records.events TO PUBLIC",
    "a trigger switched off": "ALTER TABLE records.events DISABLE TRIGGER events_no_truncate",
    "a function body": "CREATE OR REPLACE FUNCTION records.notify_appended() RETURNS trigger"
                       " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END; $$",
    "an index": "CREATE INDEX extra ON records.streams (stream_id)",
    "a database setting": "DO $$ BEGIN EXECUTE format("
                          "'ALTER DATABASE %I SET work_mem = ''8MB''', current_database()); END $$",
    "a sequence": "ALTER SEQUENCE records.events_global_position_seq INCREMENT BY 2",
}


@pytest.mark.parametrize("change", SCHEMA_CHANGES.values(), ids=SCHEMA_CHANGES.keys())
async def test_a_database_whose_schema_changed_is_not_used_again(
        conn: asyncpg.Connection, change: str) -> None:
    fresh = await Baseline.read(conn)
    await conn.execute(change)
    with pytest.raises(DifferentDatabase):
        await fresh.restore(conn)


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")  # a socket's URL ends in ?host=/its/folder


async def exists(server: asyncpg.Connection, name: str) -> bool:
    return bool(await server.fetchval("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
                                      name))


async def test_the_supply_hands_a_used_database_out_again_and_drops_a_changed_one(
        postgres_server_url: str, template_database: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    supply = DatabaseSupply(postgres_server_url, template_database)
    server = await asyncpg.connect(postgres_server_url)
    urls: list[str] = []
    try:
        with supply.borrowed() as used_url, supply.borrowed() as changed_url:
            used = await asyncpg.connect(used_url)
            fresh = await Baseline.read(used)
            await use_everything(used_url, used, make_records_client, token)
            changed = await asyncpg.connect(changed_url)
            await changed.execute("CREATE TABLE records.extra (id int)")
            await changed.close()
            # `used` stays open: the supply ends the sessions a test leaves behind
        changed_name = database_name(changed_url)
        for _ in range(500):
            if not await exists(server, changed_name):
                break
            await asyncio.sleep(0.02)
        assert not await exists(server, changed_name)

        for _ in range(1000):  # the session left open is ended after a grace period
            if used.is_closed():
                break
            await asyncio.sleep(0.02)
        assert used.is_closed()

        with ExitStack() as held:  # held at once, so none goes back round before it is found
            while used_url not in urls and len(urls) < AHEAD + 8:
                urls.append(held.enter_context(supply.borrowed()))
            assert used_url in urls
            again = await asyncpg.connect(used_url)
            assert await Baseline.read(again) == fresh
            await again.close()
    finally:
        supply.close()
    try:
        for name in {database_name(url) for url in [used_url, *urls]}:
            assert not await exists(server, name), name
    finally:
        await server.close()
