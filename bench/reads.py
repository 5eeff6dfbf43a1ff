"""Reads that scan many rows, timed at scale: outcome analytics, a supervisor's caseload over a
whole agency, and the notifier's listings.

    .venv/bin/python -m bench.reads [--cases 20000] [--notifications 100000] [--requests 30]

One agency ("bench") of ``--cases`` cases over the past year and ``--notifications`` notices in
the notifier's schedule. One template case is decided by the real domain, appended through the
event store and projected by a rebuild (so its plan row and view are real); the agency's other
plan rows are copies of that row made by SQL, each with its own case id, case manager (200 of
them, a hundred cases each), next review date and open step due dates. The outcome facts are
written by SQL, up to twenty a case (fewer once those not yet due are left out) in the shapes
the projection writes: the case opened (some before the year began), its plan agreed (co-
created or not), steps completed (a few taken back), a goal achieved (a few taken back),
reviews due and held on time or late, one case in five closed. The notifications are written by
SQL too: five per case, to its case manager, its participant or a supervisor, sent if due in
the past and scheduled if due later (none due now, so nothing is dispatched while the bench
runs).

`casetrail records` and `casetrail notifier` run as processes of their own; each read is asked
``--requests`` times in turn over one keep-alive connection (after one unmeasured ask), with
p50 and p99 of the latencies and the growth of the service's resident memory (the largest
seen, sampled every 20 ms, less the size before that read's first ask). Uses DATABASE_URL's
server when set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import aiohttp
import asyncpg

from bench.common import free_port, percentile, postgres_server, scratch_database, wait_ready
from bench.export import peak_resident, resident_kib
from bench.rebuild import one_case
from schemas.queries import CaseloadCursor
from services.common.auth import issue_token
from services.common.database import create_pool
from services.notifier.http.app import migrate as migrate_notifier
from services.records.http.app import migrate as migrate_records
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore, NewEvent

AGENCY = "bench"
MANAGERS = 200

# The template's plan row copied once per case, with its own id, manager, review and steps.
_PLANS = """
INSERT INTO records.plans (case_id, agency, version, status, case_manager, risk_level,
    participant_name, next_review_due, open_step_due_dates, active_goals, opened_at,
    updated_at, view)
SELECT gen_random_uuid(), t.agency, t.version,
       CASE WHEN i % 5 = 0 THEN 'closed' ELSE 'open' END, 'cm-' || (i % $2), t.risk_level,
       'Participant ' || i,
       CASE WHEN i % 5 = 0 OR i % 17 = 0 THEN NULL ELSE $3::date - 30 + i % 120 END,
       CASE WHEN i % 5 = 0 THEN '{}'::date[]
            ELSE ARRAY[$3::date - 20 + i % 40, $3::date + i % 60] END,
       t.active_goals, t.opened_at, t.updated_at, t.view
FROM records.plans t, generate_series(1, $1) AS i
WHERE t.case_id = $4"""

# About twenty facts a case, each (offset from the opening in days, kind, ...) with the case's
# own variations; a fact dated after today has not happened and is left out.
_FACTS = """
WITH cases AS (
    SELECT case_id, (row_number() OVER (ORDER BY case_id))::int AS i FROM records.plans
    WHERE agency = $1 AND case_id <> $3),
opened AS (SELECT case_id, i, $2::date - 400 + i * 7919 % 400 AS day FROM cases),
facts AS (
    SELECT case_id, day AS occurred_on, 0 AS seq, 'case_opened' AS kind, NULL::text AS domain,
           NULL::int AS days, NULL::boolean AS agreed, NULL::boolean AS co_created,
           NULL::boolean AS on_time, NULL::uuid AS review_id, NULL::date AS due_on,
           NULL::uuid AS goal_id
    FROM opened
    UNION ALL
    SELECT case_id, day + 7, 1, 'plan_agreed', NULL, NULL, i % 10 <> 0, i % 10 <> 0 AND i % 3 <> 0,
           NULL, NULL, NULL, NULL FROM opened
    UNION ALL
    SELECT case_id, day + 10 + 15 * s, 2 + s, 'step_completed', NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL FROM opened, generate_series(0, 7) AS s
    UNION ALL
    SELECT case_id, day + 50, 20, 'step_uncompleted', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL FROM opened WHERE i % 7 = 0
    UNION ALL
    SELECT case_id, day + 60 + i % 90, 21, 'goal_achieved',
           (ARRAY['employment', 'housing', 'health', 'education', 'family', 'income'])[1 + i % 6],
           60 + i % 90, NULL, NULL, NULL, NULL, NULL,
           md5(case_id::text || 'goal')::uuid FROM opened
    UNION ALL
    SELECT case_id, day + 160 + i % 90, 22, 'goal_unachieved',
           (ARRAY['employment', 'housing', 'health', 'education', 'family', 'income'])[1 + i % 6],
           NULL, NULL, NULL, NULL, NULL, NULL, md5(case_id::text || 'goal')::uuid
    FROM opened WHERE i % 20 = 0
    UNION ALL
    SELECT case_id, day + 90 * r, 30 + 2 * r, 'review_due', NULL, NULL, NULL, NULL, NULL,
           md5(case_id::text || r)::uuid, day + 90 * (r + 1), NULL
    FROM opened, generate_series(0, 3) AS r
    UNION ALL
    SELECT case_id, day + 90 * (r + 1) + i % 5 - 2, 31 + 2 * r, 'review_held', NULL,
           NULL, NULL, NULL, i % 5 <= 2, md5(case_id::text || r)::uuid, NULL, NULL
    FROM opened, generate_series(0, 2) AS r
    UNION ALL
    SELECT case_id, day + 200, 50, 'case_closed', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM opened WHERE i % 5 = 0)
INSERT INTO records.outcome_facts (event_id, case_id, version, agency, kind, occurred_on,
    domain, days, agreed, co_created, on_time, review_id, due_on, goal_id)
SELECT gen_random_uuid(), case_id,
       row_number() OVER (PARTITION BY case_id ORDER BY occurred_on, seq)::int, $1, kind,
       occurred_on, domain, days, agreed, co_created, on_time, review_id, due_on, goal_id
FROM facts WHERE occurred_on <= $2"""

_NOTIFIER_CASES = """
INSERT INTO notifier.cases (case_id, agency, case_manager, status, participant_name,
    last_version, updated_at)
SELECT case_id, agency, case_manager, status, participant_name, version, updated_at
FROM records.plans"""

# Five a case: due from 300 days ago to 65 days ahead, sent when past, scheduled when ahead.
_NOTIFICATIONS = """
WITH cases AS (SELECT case_id, case_manager, row_number() OVER (ORDER BY case_id) AS c
               FROM notifier.cases),
numbered AS (
    SELECT case_id, case_manager, n, gen_random_uuid() AS id,
           $2::timestamptz - interval '300 days' + (n * 7907 % 365) * interval '1 day'
             + interval '9 hours' AS due
    FROM generate_series(1, $1) AS n JOIN cases ON c = 1 + n % (SELECT count(*) FROM cases))
INSERT INTO notifier.notifications (id, key, kind, case_id, agency, recipient_role, recipient,
    due_at, not_before, status, attempts, message_id, context, sent_at, created_at, updated_at)
SELECT id, 'bench:' || n, (ARRAY['review_reminder', 'step_nudge', 'small_win',
       'review_overdue', 'goal_target_date'])[1 + n % 5], case_id, $3,
       CASE n % 5 WHEN 2 THEN 'participant' WHEN 3 THEN 'supervisors' ELSE 'case_manager' END,
       CASE n % 5 WHEN 2 THEN 'participant:' || case_id WHEN 3 THEN 'sup-' || n % 4
            ELSE case_manager END,
       due, due,
       CASE WHEN due > $2 + interval '2 days' THEN 'scheduled'
            WHEN due > $2 THEN 'cancelled' ELSE 'sent' END,
       CASE WHEN due > $2 THEN 0 ELSE 1 END, '<' || id || '@casetrail.local>',
       jsonb_build_object('participant', 'Participant ' || n, 'due_date', due::date),
       CASE WHEN due > $2 THEN NULL ELSE due END, due - interval '3 days', due
FROM numbered"""


async def seed(database_url: str, cases: int, notifications: int, today: date) -> int:
    """Fill the scratch database; returns the number of outcome facts."""
    await migrate_records(database_url)
    await migrate_notifier(database_url)
    pool = await create_pool(database_url, max_size=2, command_timeout=None)
    try:
        template = one_case(50, AGENCY)
        await EventStore(pool).append(
            template.case_id, [NewEvent(uuid4(), e.event_type, e.schema_version,
                                        e.model_dump(mode="json")) for e, _, _ in template.stream],
            expected_version=0, agency=AGENCY,
            metadata={"actor": {"sub": "cm-1", "role": "case_manager"}})
        await rebuild_projections(pool)  # the template's plan row, as bench/export.py makes it
        await pool.execute(_PLANS, cases - 1, MANAGERS, today, template.case_id)
        await pool.execute("DELETE FROM records.outcome_facts")  # the template's, not a year's
        await pool.execute(_FACTS, AGENCY, today, template.case_id)
        await pool.execute(_NOTIFIER_CASES)
        await pool.execute(_NOTIFICATIONS, notifications, datetime.now(UTC), AGENCY)
        await pool.execute("ANALYZE")
        return int(await pool.fetchval("SELECT count(*) FROM records.outcome_facts"))
    finally:
        await pool.close()


async def deep_cursors(database_url: str, depth: int) -> dict[str, str]:
    """The ``after`` of the page that starts ``depth`` cases into each order."""
    conn = await asyncpg.connect(database_url)
    try:
        by_id = await conn.fetchval("SELECT case_id FROM records.plans WHERE agency = $1"
                                    " ORDER BY case_id OFFSET $2 LIMIT 1", AGENCY, depth)
        by_review = await conn.fetchrow(
            "SELECT case_id, next_review_due FROM records.plans WHERE agency = $1"
            " ORDER BY coalesce(next_review_due, 'infinity'::date), case_id OFFSET $2 LIMIT 1",
            AGENCY, depth)
        some_case = await conn.fetchval("SELECT case_id FROM notifier.cases OFFSET 7 LIMIT 1")
    finally:
        await conn.close()
    return {"case_id": CaseloadCursor(by_id).encode("case_id"),
            "next_review": CaseloadCursor(by_review["case_id"],
                                          by_review["next_review_due"]).encode("next_review"),
            "case": str(some_case)}


@dataclass(frozen=True)
class Read:
    name: str
    path: str
    token: str


@dataclass(frozen=True)
class Figures:
    name: str
    rows: int
    p50: float
    p99: float
    growth_kib: int


def _rows(body: dict[str, object]) -> int:
    for key in ("cases", "notifications", "pending"):
        if isinstance(listed := body.get(key), list):
            return len(listed)
    return 1


async def measure(session: aiohttp.ClientSession, url: str, pid: int, read: Read,
                  requests: int) -> Figures:
    headers = {"Authorization": f"Bearer {read.token}"}

    async def ask() -> int:
        async with session.get(url + read.path, headers=headers) as response:
            assert response.status == 200, await response.text()
            return _rows(await response.json())

    before = resident_kib(pid)
    latencies = []
    async with peak_resident(pid) as peak:
        rows = await ask()
        for _ in range(requests):
            started = time.perf_counter()
            await ask()
            latencies.append(time.perf_counter() - started)
    return Figures(read.name, rows, percentile(latencies, 0.5) * 1000,
                   percentile(latencies, 0.99) * 1000, peak[0] - before)


def records_reads(secret: str, today: date, deep: dict[str, str]) -> list[Read]:
    analyst = issue_token(secret, sub="an-bench", role="analyst", agency=AGENCY)
    supervisor = issue_token(secret, sub="sup-bench", role="supervisor", agency=AGENCY)
    month = (today - timedelta(days=30)).isoformat()
    return [
        Read("analytics, one year", "/v1/analytics/outcomes", analyst),
        Read("analytics, one month", f"/v1/analytics/outcomes?from={month}", analyst),
        Read("caseload by id, first page", "/v1/cases", supervisor),
        Read("caseload by id, deep page", f"/v1/cases?after={deep['case_id']}", supervisor),
        Read("caseload by review, first page", "/v1/cases?order=next_review", supervisor),
        Read("caseload by review, deep page",
             f"/v1/cases?order=next_review&after={deep['next_review']}", supervisor),
    ]


def notifier_reads(secret: str, deep: dict[str, str]) -> list[Read]:
    supervisor = issue_token(secret, sub="sup-bench", role="supervisor", agency=AGENCY)
    manager = issue_token(secret, sub="cm-7", role="case_manager", agency=AGENCY)
    case = deep["case"]
    return [
        Read("notifications by recipient", "/v1/notifications?recipient=cm-7", supervisor),
        Read("  and status=sent", "/v1/notifications?recipient=cm-7&status=sent", supervisor),
        Read("  deep (offset 200)", "/v1/notifications?recipient=cm-7&offset=200", supervisor),
        Read("notifications by case", f"/v1/notifications?case_id={case}", supervisor),
        Read("a case manager's own", "/v1/notifications", manager),
        Read("the agency's, first page", "/v1/notifications", supervisor),
        Read("the agency's, offset 50,000", "/v1/notifications?offset=50000", supervisor),
        Read("schedule of a case", f"/v1/schedule?case_id={case}", supervisor),
    ]


async def start(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", *args,
                                                env=env)


async def main(cases: int, notifications: int, requests: int) -> None:
    today = datetime.now(UTC).date()  # the agency's policy is UTC
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            started = time.perf_counter()
            facts = await seed(database_url, cases, notifications, today)
            seeded = time.perf_counter() - started
            deep = await deep_cursors(database_url, cases - 60)
            secret = secrets.token_urlsafe(32)
            records_port, notifier_port = free_port(), free_port()
            records_url = f"http://127.0.0.1:{records_port}"
            notifier_url = f"http://127.0.0.1:{notifier_port}"
            env = {**os.environ, "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": secret,
                   "CASETRAIL_LOG_LEVEL": "warning", "RECORDS_URL": records_url,
                   "SMTP_PORT": str(free_port())}
            records = await start(["records", "--port", str(records_port)], env)
            notifier = await start(["notifier", "--port", str(notifier_port)], env)
            results: list[tuple[str, Figures]] = []
            try:
                await wait_ready(records_url)
                await wait_ready(notifier_url)
                async with aiohttp.ClientSession() as session:
                    for read in records_reads(secret, today, deep):
                        figures = await measure(session, records_url, records.pid, read,
                                                requests)
                        results.append(("records", figures))
                    for read in notifier_reads(secret, deep):
                        figures = await measure(session, notifier_url, notifier.pid, read,
                                                requests)
                        results.append(("notifier", figures))
            finally:
                for process in (records, notifier):
                    process.terminate()
                    await process.wait()
    print(f"{cases} cases, {facts} outcome facts, {notifications} notifications;"
          f" seeded in {seeded:.1f} s; {requests} requests each")
    print(f"{'service':<10}{'read':<32}{'rows':>6}{'p50 ms':>9}{'p99 ms':>9}{'growth MiB':>12}")
    for service, f in results:
        print(f"{service:<10}{f.name:<32}{f.rows:>6}{f.p50:>9.1f}{f.p99:>9.1f}"
              f"{f.growth_kib / 1024:>12.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--notifications", type=int, default=100000)
    parser.add_argument("--requests", type=int, default=30)
    options = parser.parse_args()
    asyncio.run(main(options.cases, options.notifications, options.requests))
