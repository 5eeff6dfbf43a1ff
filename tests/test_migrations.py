"""Versioned migrations: applied once, safe when two processes start at once, tamper-checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from services.common.database import (
    MigrationError,
    apply_migrations,
    load_migrations,
    pending_migrations,
)
from services.records.http.app import MIGRATIONS, migrate
from tests.conftest import ClientFactory, TokenFactory
from tests.records_api import CaseApi

SCHEMA = "scratch_migrations"


def write(folder: Path, name: str, sql: str) -> None:
    (folder / name).write_text(sql)


async def test_applying_twice_changes_nothing(fresh_database_url: str) -> None:
    assert await migrate(fresh_database_url) == []  # the template is already current
    conn = await asyncpg.connect(fresh_database_url)
    try:
        assert await pending_migrations(conn, "records", MIGRATIONS) == []
        rows = await conn.fetch("SELECT name FROM records.schema_migrations ORDER BY version")
        assert [r["name"] for r in rows] == [m.name for m in load_migrations(MIGRATIONS)]
    finally:
        await conn.close()


async def test_two_processes_starting_at_once_apply_each_migration_once(
        fresh_database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql", f"CREATE TABLE {SCHEMA}.counter (n int);"
                                      f" INSERT INTO {SCHEMA}.counter VALUES (1);")
    write(tmp_path, "0002_second.sql", f"UPDATE {SCHEMA}.counter SET n = n + 1;")
    connections = [await asyncpg.connect(fresh_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *[apply_migrations(c, SCHEMA, tmp_path) for c in connections])
        applied = [name for result in results for name in result]
        assert sorted(applied) == ["0001_first.sql", "0002_second.sql"]
        assert await connections[0].fetchval(f"SELECT n FROM {SCHEMA}.counter") == 2
    finally:
        for conn in connections:
            await conn.close()


async def test_a_changed_applied_migration_is_refused(fresh_database_url: str,
                                                      tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql", f"CREATE TABLE {SCHEMA}.t (n int);")
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await apply_migrations(conn, SCHEMA, tmp_path)
        write(tmp_path, "0001_first.sql", f"CREATE TABLE {SCHEMA}.t (n bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, SCHEMA, tmp_path)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(fresh_database_url: str,
                                                         tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql", f"CREATE TABLE {SCHEMA}.t (n int);")
    write(tmp_path, "0002_broken.sql", "THIS IS NOT SQL;")
    conn = await asyncpg.connect(fresh_database_url)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await apply_migrations(conn, SCHEMA, tmp_path)
        assert await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.t") is None
    finally:
        await conn.close()


@pytest.mark.parametrize("names", [["0001_a.sql", "0003_c.sql"], ["1_bad-name.sql"]])
def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        write(tmp_path, name, "SELECT 1;")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)



async def test_migration_0010_recounts_overdue_steps_as_the_projection_now_does(
        fresh_database_url: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    """Rows written before 0010 kept every open step's date; the migration recomputes them
    from each plan's own document, to what the projection now writes."""
    cm = CaseApi(await make_records_client(fresh_database_url), token())
    for close in (False, True):
        case_id = await cm.open_case()
        for status in ("active", "paused", "discontinued", "achieved"):
            goal = await cm.goal(case_id, title=f"a goal, {status}")
            await cm.step(case_id, goal, due_date="2030-01-15")
            if status != "active":
                await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                              {"status": status, "reason": "Jo chose another focus"},
                              expect=200)
        if close:
            await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Jo moved"},
                          expect=200)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        projected = await conn.fetch(
            "SELECT case_id, open_step_due_dates FROM records.plans ORDER BY case_id")
        assert sorted(len(r["open_step_due_dates"]) for r in projected) == [0, 1]
        await conn.execute(  # as rows written before 0010 had them
            "UPDATE records.plans SET open_step_due_dates = ARRAY(SELECT (s->>'due_date')::date"
            " FROM jsonb_array_elements(view->'goals') g, jsonb_array_elements(g->'steps') s"
            " WHERE s->>'status' IN ('not_started', 'in_progress') ORDER BY 1)")
        await conn.execute((MIGRATIONS / "0010_overdue_steps_of_active_goals.sql").read_text())
        assert await conn.fetch("SELECT case_id, open_step_due_dates FROM records.plans"
                                " ORDER BY case_id") == projected
    finally:
        await conn.close()


async def test_migration_0011_dates_facts_in_agency_days_and_names_their_goals(
        fresh_database_url: str, make_records_client: ClientFactory, token: TokenFactory,
        tmp_path: Path) -> None:
    """Facts written before 0011 had UTC days and no goal; the migration gives them what the
    projection now writes: the date, and an achievement's days, in the case's zone."""
    import json
    from datetime import UTC, datetime

    from tests.conftest import FakeClock

    (tmp_path / "agency-akl.json").write_text(json.dumps({"timezone": "Pacific/Auckland"}))
    clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))  # 22:00 on the 2nd in Auckland
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(tmp_path))
    for agency in ("agency-akl", "agency-a"):
        cm = CaseApi(client, token(agency=agency))
        case_id = await cm.open_case()
        goal = await cm.goal(case_id)
        clock.advance(hours=3)  # 01:00 on the 3rd in Auckland: a day later there, not in UTC
        for status in ("achieved", "active"):
            await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                          {"status": status, "reason": "it fell through"}, expect=200)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        facts = ("SELECT event_id, occurred_on, goal_id, days FROM records.outcome_facts"
                 " ORDER BY 1")
        projected = await conn.fetch(facts)
        assert sum(r["goal_id"] is not None for r in projected) == 4
        assert sorted(r["days"] for r in projected if r["days"] is not None) == [0, 1]
        await conn.execute(  # as rows written before 0011 had them
            "UPDATE records.outcome_facts f SET goal_id = NULL,"
            " occurred_on = (e.recorded_at AT TIME ZONE 'UTC')::date,"
            " days = CASE WHEN f.kind = 'goal_achieved' THEN 0 END"
            " FROM records.events e WHERE e.event_id = f.event_id")
        assert await conn.fetch(facts) != projected
        sql = (MIGRATIONS / "0011_outcome_facts_local_days_and_goals.sql").read_text()
        await conn.execute(sql.replace("ALTER TABLE records.outcome_facts ADD COLUMN goal_id"
                                       " uuid;", ""))
        assert await conn.fetch(facts) == projected
    finally:
        await conn.close()
