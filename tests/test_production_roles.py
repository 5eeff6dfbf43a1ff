"""deploy/production-roles.sql: the services run as a role that appends events but, like
everyone, never changes them; every capability still works under it."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.common.database import MigrationError
from services.records.http.app import migrate
from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.notifier_helpers import (  # noqa: F401  (fixtures)
    Records,
    SmtpServer,
    clock,
    make_rig,
    records,
    smtp,
)
from tests.records_api import CaseApi

ROLES_SQL = Path(__file__).resolve().parent.parent / "deploy" / "production-roles.sql"


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
async def app_url(fresh_database_url: str) -> AsyncIterator[str]:
    """The database as the application role (a name of this test's own: roles are per server)."""
    role = f"casetrail_app_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(fresh_database_url)
    await admin.execute(ROLES_SQL.read_text().replace("casetrail_app", role))
    try:
        yield as_role(fresh_database_url, role)
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_every_capability_works_as_the_application_role(
        make_records_client: ClientFactory, app_url: str, token: TokenFactory) -> None:
    client = await make_records_client(app_url)
    try:
        cm = CaseApi(client, token(sub="cm-1"))
        case_id = await cm.open_case()
        goal = await cm.goal(case_id)
        step = await cm.step(case_id, goal)
        await cm.agree(case_id)
        await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
        await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                      {"status": "achieved"}, expect=200)
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Good week"},
                      headers={"Idempotency-Key": "note-1"}, expect=201)
        supervisor = bearer(token(role="supervisor", sub="sup-1"))
        for path in (f"/v1/cases/{case_id}", f"/v1/cases/{case_id}/history",
                     f"/v1/cases/{case_id}/verify", f"/v1/cases/{case_id}/export",
                     "/v1/access-log", "/v1/analytics/outcomes"):
            response = await client.get(path, headers=supervisor)
            assert response.status == 200, (path, await response.text())
        outcomes = await (await client.get("/v1/analytics/outcomes", headers=supervisor)).json()
        assert outcomes["goals_achieved"]["total"] == 1
    finally:
        await client.close()
    pool = await asyncpg.create_pool(app_url, min_size=1, max_size=2)
    try:
        stats = await rebuild_projections(pool)
        assert stats.cases == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("statement", [
    "UPDATE records.events SET type = 'Changed'", "DELETE FROM records.events",
    "TRUNCATE records.events"])
async def test_the_application_role_cannot_change_events(app_url: str, statement: str) -> None:
    conn = await asyncpg.connect(app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_the_notifier_runs_as_the_application_role(
        aiohttp_client: Callable[..., Awaitable[TestClient]], app_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:  # noqa: F811
    rig = await make_rig(aiohttp_client, app_url, records.client, smtp, clock)
    case = await records.open_case()
    await records.agree(case)
    assert await rig.catch_up() >= 3
    assert len(await rig.rows(case_id=UUID(case))) == 4  # the review's reminders, scheduled


async def test_a_role_that_may_not_migrate_is_told_to_migrate_as_the_owner(
        fresh_database_url: str, app_url: str) -> None:
    admin = await asyncpg.connect(fresh_database_url)
    try:  # a release whose newest migration the owner has not applied yet
        newest = await admin.fetchval(
            "DELETE FROM records.schema_migrations WHERE version ="
            " (SELECT max(version) FROM records.schema_migrations) RETURNING name")
        tables_before = await admin.fetchval("SELECT count(*) FROM pg_tables")
    finally:
        await admin.close()
    with pytest.raises(MigrationError, match=f"{newest} not applied.*as the database owner"):
        await migrate(app_url)

    environment = {**os.environ, "DATABASE_URL": app_url, "CASETRAIL_JWT_SECRET": "s" * 32}
    started = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.cli", "records", "--port", "0"],
        env=environment, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert f"{newest} not applied" in started.stderr
    assert "Traceback" not in started.stderr
    admin = await asyncpg.connect(fresh_database_url)
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
        await migrate(owner_url)
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
