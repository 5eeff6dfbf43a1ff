"""deploy/production-roles.sql: each service runs as a role of its own with exactly the privileges
its code uses. Records appends events and the access log but, like everyone, never changes
them; the notifier has no way into records' tables; every capability still works under them."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.common.database import MigrationError
from services.notifier.http.app import migrate as migrate_notifier
from services.records.http.app import migrate as migrate_records
from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.notifier_helpers import Records, SmtpServer, make_rig
from tests.records_api import CaseApi

ROLES_SQL = Path(__file__).resolve().parent.parent / "deploy" / "production-roles.sql"
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

# What each role may do, table by table: what the code uses and nothing more. A table a later
# migration adds and this list does not name gets SELECT, INSERT for its own schema's service
# (the script's default privileges), and nothing for the other.
RECORDS_TABLES = {
    "events": {"SELECT", "INSERT"},
    "streams": {"SELECT", "INSERT", "UPDATE"},
    "idempotency_keys": {"SELECT", "INSERT"},
    "plans": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "outcome_facts": {"SELECT", "INSERT", "DELETE"},
    "access_log": {"SELECT", "INSERT"},
    "schema_migrations": {"SELECT"},
}
NOTIFIER_TABLES = {
    "checkpoint": {"SELECT", "UPDATE"},
    "cases": {"SELECT", "INSERT", "UPDATE"},
    "goals": {"SELECT", "INSERT", "DELETE"},
    "steps": {"SELECT", "INSERT", "DELETE"},
    "reviews": {"SELECT", "INSERT", "DELETE"},
    "directory": {"SELECT", "INSERT", "UPDATE"},
    "notifications": {"SELECT", "INSERT", "UPDATE"},
    "attempts": {"SELECT", "INSERT"},
    "history": {"SELECT", "INSERT"},
    "access_log": {"SELECT", "INSERT"},
    "schema_migrations": {"SELECT"},
}


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Roles:
    """The two service roles of one test (names of its own: roles are per server)."""

    records: str
    notifier: str
    owner_url: str

    @property
    def records_url(self) -> str:
        return as_role(self.owner_url, self.records)

    @property
    def notifier_url(self) -> str:
        return as_role(self.owner_url, self.notifier)

    def script(self) -> str:
        return (ROLES_SQL.read_text().replace("casetrail_records", self.records)
                .replace("casetrail_notifier", self.notifier))


@pytest.fixture
async def roles(fresh_database_url: str) -> AsyncIterator[Roles]:
    suffix = secrets.token_hex(4)
    made = Roles(f"casetrail_records_{suffix}", f"casetrail_notifier_{suffix}",
                 fresh_database_url)
    admin = await asyncpg.connect(fresh_database_url)
    try:
        await admin.execute(made.script())
        yield made
    finally:
        for role in (made.records, made.notifier):
            if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await admin.execute(f"DROP OWNED BY {role}")
                await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def refused(url: str, statement: str) -> bool:
    """Whether ``statement`` is refused for lack of a privilege (rolled back either way)."""
    conn = await asyncpg.connect(url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(statement)
        except asyncpg.InsufficientPrivilegeError:
            return True
        finally:
            await transaction.rollback()
        return False
    finally:
        await conn.close()


async def privileges(conn: asyncpg.Connection, role: str) -> dict[str, set[str]]:
    """Every table of both schemas with the privileges ``role`` holds on it."""
    rows = await conn.fetch(
        "SELECT schemaname || '.' || tablename AS name, array(SELECT p FROM unnest($2::text[]) p"
        "   WHERE has_table_privilege($1, format('%I.%I', schemaname, tablename), p)) AS held"
        " FROM pg_tables WHERE schemaname IN ('records', 'notifier')", role,
        list(TABLE_PRIVILEGES))
    return {row["name"]: set(row["held"]) for row in rows}


async def assert_exact_privileges(owner_url: str, roles: Roles) -> None:
    conn = await asyncpg.connect(owner_url)
    try:
        for role, schema, own, other in ((roles.records, "records", RECORDS_TABLES, "notifier"),
                                         (roles.notifier, "notifier", NOTIFIER_TABLES,
                                          "records")):
            held = await privileges(conn, role)
            assert {f"{schema}.{table}" for table in own} <= set(held)  # the list is current
            assert held == {
                name: own.get(name.partition(".")[2], {"SELECT", "INSERT"})
                if name.startswith(f"{schema}.") else set() for name in held}, role
            assert await conn.fetchval("SELECT has_schema_privilege($1, $2, 'USAGE')",
                                       role, schema)
            for name, privilege in ((schema, "CREATE"), (other, "USAGE"), (other, "CREATE")):
                assert not await conn.fetchval(
                    "SELECT has_schema_privilege($1, $2, $3)", role, name, privilege), (
                    role, name, privilege)
    finally:
        await conn.close()


async def test_each_role_holds_exactly_what_its_service_uses(roles: Roles) -> None:
    await assert_exact_privileges(roles.owner_url, roles)


async def test_the_script_runs_again_and_takes_back_what_it_does_not_grant(
        roles: Roles) -> None:
    admin = await asyncpg.connect(roles.owner_url)
    try:  # granted by hand, or by an earlier version of the script
        await admin.execute(f"GRANT UPDATE, DELETE ON records.access_log TO {roles.records}")
        await admin.execute(f"GRANT USAGE ON SCHEMA records TO {roles.notifier}")
        await admin.execute(f"GRANT SELECT ON records.events TO {roles.notifier}")
        await admin.execute(roles.script())
        await admin.execute(roles.script())
    finally:
        await admin.close()
    await assert_exact_privileges(roles.owner_url, roles)


async def test_every_capability_works_as_the_records_role(
        make_records_client: ClientFactory, roles: Roles, token: TokenFactory) -> None:
    client = await make_records_client(roles.records_url)
    try:
        assert (await client.get("/readyz")).status == 200
        cm = CaseApi(client, token(sub="cm-1"))
        case_id = await cm.open_case()
        goal = await cm.goal(case_id)
        step = await cm.step(case_id, goal)
        await cm.agree(case_id)
        await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
        await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                      {"status": "achieved"}, expect=200)
        for _ in range(2):  # the retry is answered from the idempotency key
            await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Good week"},
                          headers={"Idempotency-Key": "note-1"}, expect=201)
        supervisor = bearer(token(role="supervisor", sub="sup-1"))
        for path in (f"/v1/cases/{case_id}", f"/v1/cases/{case_id}/history",
                     f"/v1/cases/{case_id}/verify", f"/v1/cases/{case_id}/export",
                     "/v1/access-log", "/v1/analytics/outcomes"):
            response = await client.get(path, headers=supervisor)
            assert response.status == 200, (path, await response.text())
        outcomes = await (await client.get("/v1/analytics/outcomes", headers=supervisor)).json()
        assert "goals_achieved.total" in outcomes["withheld"]  # 1, under the default k of 5
        service = bearer(token(role="service", sub="notifier"))
        feed = await client.get("/v1/events?wait=0", headers=service)
        assert feed.status == 200, await feed.text()
    finally:
        await client.close()
    pool = await asyncpg.create_pool(roles.records_url, min_size=1, max_size=2)
    try:  # rewrites the plans and the outcome facts
        stats = await rebuild_projections(pool)
        assert stats.cases == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("statement", [
    "UPDATE records.events SET type = 'Changed'", "DELETE FROM records.events",
    "TRUNCATE records.events",
    # the access log is the record of who read which case: appended to, never changed
    "UPDATE records.access_log SET actor_sub = 'someone-else'",
    "DELETE FROM records.access_log", "TRUNCATE records.access_log",
    "UPDATE records.idempotency_keys SET fingerprint = ''",
    "DELETE FROM records.idempotency_keys",
    "DELETE FROM records.streams", "TRUNCATE records.plans",
    "DELETE FROM records.schema_migrations",
    "INSERT INTO records.schema_migrations (version, name, checksum) VALUES (99, 'x', 'x')",
    "CREATE TABLE records.anything (x int)",
    # the notifier's schema, which holds the recipients' addresses, is not records' business
    "SELECT * FROM notifier.directory", "SELECT * FROM notifier.notifications"])
async def test_what_the_records_role_may_not_do(roles: Roles, statement: str) -> None:
    assert await refused(roles.records_url, statement)


@pytest.mark.parametrize("statement", [
    # the notifier reads cases only through the feed: no personal data of records' own
    "SELECT * FROM records.events", "SELECT * FROM records.plans",
    "SELECT * FROM records.access_log", "SELECT * FROM records.streams",
    "SELECT * FROM records.outcome_facts", "SELECT * FROM records.idempotency_keys",
    "INSERT INTO records.access_log SELECT * FROM records.access_log",
    "UPDATE notifier.schema_migrations SET checksum = ''",
    "DELETE FROM notifier.schema_migrations",
    "INSERT INTO notifier.schema_migrations (version, name, checksum) VALUES (99, 'x', 'x')",
    "DELETE FROM notifier.notifications", "DELETE FROM notifier.attempts",
    "TRUNCATE notifier.notifications", "CREATE TABLE notifier.anything (x int)"])
async def test_what_the_notifier_role_may_not_do(roles: Roles, statement: str) -> None:
    assert await refused(roles.notifier_url, statement)


async def test_a_table_a_later_migration_adds_is_read_and_appended_by_its_own_service_only(
        roles: Roles) -> None:
    admin = await asyncpg.connect(roles.owner_url)
    try:  # as `casetrail migrate` would, as the owner
        for schema in ("records", "notifier"):
            await admin.execute(f"CREATE TABLE {schema}.later"
                                " (id bigint GENERATED ALWAYS AS IDENTITY, x int)")
    finally:
        await admin.close()
    for url, own, other in ((roles.records_url, "records", "notifier"),
                            (roles.notifier_url, "notifier", "records")):
        assert not await refused(url, f"INSERT INTO {own}.later (x) VALUES (1)")
        assert not await refused(url, f"SELECT * FROM {own}.later")
        for change in (f"UPDATE {own}.later SET x = 2", f"DELETE FROM {own}.later",
                       f"SELECT * FROM {other}.later", f"INSERT INTO {other}.later (x) VALUES (1)"):
            assert await refused(url, change), (url, change)


async def feed_shows_every_event(owner_url: str) -> None:
    """The feed holds events back while an older transaction is open on the server (other test
    runs share it); wait, as the owner (the notifier's role may not read records.events), until
    every event written so far is visible."""
    conn = await asyncpg.connect(owner_url)
    try:
        async with asyncio.timeout(30):
            while await conn.fetchval(  # noqa: ASYNC110  (polling the database)
                    "SELECT count(*) FROM records.events"
                    " WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def test_the_notifier_works_as_the_notifier_role_beside_records_as_its_own(
        aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
        make_records_client: ClientFactory, roles: Roles, token: TokenFactory,
        smtp: SmtpServer, clock: FakeClock) -> None:
    records = Records(await make_records_client(roles.records_url, clock=clock), token())
    rig = await make_rig(aiohttp_client, roles.notifier_url, records.client, smtp, clock)
    await rig.set_prefs("cm-1", token())  # the directory
    case = await records.open_case()
    review = await records.agree(case)
    goal = await records.goal(case, "Find steady work")
    await records.complete(case, await records.step(case, goal))
    await feed_shows_every_event(roles.owner_url)
    assert await rig.notifier.subscriber.catch_up() >= 5
    rows = await rig.rows(case_id=UUID(case))
    assert len([r for r in rows if r["kind"] != "small_win"]) == 4  # the review's reminders
    smtp.replies = ["550 5.1.1 no such mailbox"]
    await rig.dispatch()  # claimed, refused: a dead letter
    [dead] = await rig.rows(kind="small_win")
    assert dead["status"] == "dead"
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    retried = await rig.client.post(f"/v1/notifications/{dead['id']}/retry", headers=supervisor)
    assert retried.status == 202
    assert await rig.dispatch() == 1
    [sent] = await rig.rows(kind="small_win")
    assert sent["status"] == "sent"
    assert len(smtp.received) == 1
    await records.hold_review(case, review)  # cancels the reminders, schedules the next review
    await feed_shows_every_event(roles.owner_url)
    assert await rig.notifier.subscriber.catch_up() >= 2
    for path in ("/readyz", f"/v1/schedule?case_id={case}", "/v1/notifications"):
        response = await rig.client.get(path, headers=supervisor)
        assert response.status == 200, (path, await response.text())


MIGRATIONS = {"records": migrate_records, "notifier": migrate_notifier}


@pytest.mark.parametrize("service", sorted(MIGRATIONS))
async def test_a_role_that_may_not_migrate_is_told_to_migrate_as_the_owner(
        roles: Roles, service: str) -> None:
    admin = await asyncpg.connect(roles.owner_url)
    try:  # a release whose newest migration the owner has not applied yet
        newest = await admin.fetchval(
            f"DELETE FROM {service}.schema_migrations WHERE version ="
            f" (SELECT max(version) FROM {service}.schema_migrations) RETURNING name")
        tables_before = await admin.fetchval("SELECT count(*) FROM pg_tables")
    finally:
        await admin.close()
    url = roles.records_url if service == "records" else roles.notifier_url
    with pytest.raises(MigrationError, match=f"{newest} not applied.*as the database owner"):
        await MIGRATIONS[service](url)

    environment = {**os.environ, "DATABASE_URL": url, "CASETRAIL_JWT_SECRET": "s" * 32}
    started = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.cli", service, "--port", "0"],
        env=environment, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert f"{newest} not applied" in started.stderr
    assert "Traceback" not in started.stderr
    admin = await asyncpg.connect(roles.owner_url)
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_tables") == tables_before
    finally:
        await admin.close()


async def test_the_owner_cannot_change_events_even_with_the_triggers_disabled(
        postgres_server_url: str) -> None:
    """Trigger and privileges: an owner that is not a superuser may disable the table's
    triggers, and still has no right to update, delete or truncate events."""
    suffix = secrets.token_hex(4)
    role, name = f"casetrail_owner_{suffix}", f"casetrail_owned_{suffix}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute(f'CREATE DATABASE "{name}" OWNER {role}')
    try:
        owner_url = as_role(urlunsplit(urlsplit(postgres_server_url)._replace(path=f"/{name}")),
                            role)
        await migrate_records(owner_url)
        owner = await asyncpg.connect(owner_url)
        try:
            await owner.execute("ALTER TABLE records.events DISABLE TRIGGER USER")
            for change in ("UPDATE records.events SET type = type", "DELETE FROM records.events",
                           "TRUNCATE records.events"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await owner.execute(change)
        finally:
            await owner.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
