"""Notifier benchmarks: end-to-end celebration latency and reminder dispatch throughput.

    .venv/bin/python -m bench.notify [--celebrations 500] [--reminders 10000] [--writers 4]

1. latency: a step completed over the records HTTP API (records runs as its own process) until
   the small-win email arrives at an SMTP server (aiosmtpd in this process); p50/p99.
2. throughput: 10,000 review reminders already due, written into the notifier's schedule, until
   the SMTP server has received every one.

Uses DATABASE_URL's server when set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aiohttp
from aiohttp import web
from aiosmtpd.smtp import SMTP

from bench.common import free_port, percentile, postgres_server, scratch_database, wait_ready
from services.common.auth import issue_token
from services.common.http import new_event_loop
from services.common.logs import configure_logging
from services.notifier.http.app import NOTIFIER, create_app
from services.notifier.rules import Kind, Notice, RecipientRole
from services.notifier.settings import NotifierSettings
from services.notifier.store.notifications import insert_notices

_STEP = re.compile(rb"Subject: [^\r\n]*bench step (\d+)")


class TimingSink:
    """An SMTP server noting when each message arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.count = 0
        self.changed = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        # a raw search, not a parse: the sink shares this process's CPU with the notifier
        match = _STEP.search(envelope.original_content[:2000])
        if match:
            self.arrived[match.group(1).decode()] = now
        self.count += 1
        self.changed.set()
        return "250 OK"

    async def wait_for(self, predicate: Any, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()



async def prepare_steps(session: aiohttp.ClientSession, url: str,
                        count: int) -> list[tuple[str, str, str]]:
    """Cases with a goal and ten steps each; returns (case, step, number) to complete."""
    steps = []
    for first in range(0, count, 10):
        async with session.post(f"{url}/v1/cases", json={
                "participant": {"name": "Bench Participant", "preferred_name": "Bench"},
                "case_manager": "cm-bench", "risk_level": "moderate"}) as r:
            case = (await r.json())["case_id"]
        async with session.post(f"{url}/v1/cases/{case}/goals", json={
                "title": "Steady work", "domain": "employment", "source": "participant",
                "in_their_words": "A job I am proud of"}) as r:
            goal = (await r.json())["id"]
        for n in range(first, min(first + 10, count)):
            async with session.post(f"{url}/v1/cases/{case}/goals/{goal}/steps", json={
                    "description": f"bench step {n}", "owner": "participant"}) as r:
                steps.append((case, (await r.json())["id"], str(n)))
    return steps


async def celebration_latency(url: str, token: str, sink: TimingSink, count: int,
                              writers: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        steps = await prepare_steps(session, url, count)
        started: dict[str, float] = {}

        async def writer(mine: list[tuple[str, str, str]]) -> None:
            for case, step, number in mine:
                started[number] = time.perf_counter()
                async with session.post(f"{url}/v1/cases/{case}/steps/{step}/complete",
                                        json={}) as r:
                    assert r.status == 200, await r.text()
                await asyncio.sleep(0.01)

        # one writer per case group, so writes to one case never race each other
        groups: list[list[tuple[str, str, str]]] = [[] for _ in range(writers)]
        for index, item in enumerate(steps):
            groups[(index // 10) % writers].append(item)
        await asyncio.gather(*(writer(g) for g in groups))
        await sink.wait_for(lambda: len(sink.arrived) >= count, 120)
    return [sink.arrived[n] - started[n] for n in started]


async def dispatch_throughput(app: web.Application, sink: TimingSink, count: int) -> float:
    notifier = app[NOTIFIER].notifier
    due = datetime.now(UTC)  # not before the notifier started: that would not be sent
    case_id = uuid4()
    notices = [Notice(f"bench:{case_id}:{n}", Kind.REVIEW_REMINDER, case_id, "bench",
                      RecipientRole.CASE_MANAGER, "cm-bench", due,
                      {"participant": f"Person {n}", "due_date": "2026-06-01"})
               for n in range(count)]
    before = sink.count
    async with notifier.pool.acquire() as conn:  # called for at their due time
        await insert_notices(conn, notices, "bench.casetrail", due, cause_recorded_at=due)
    started = time.perf_counter()
    notifier.poke()
    await sink.wait_for(lambda: sink.count - before >= count, 600)
    return time.perf_counter() - started


async def run(database_url: str, celebrations: int, reminders: int, writers: int,
              connections: int) -> None:
    secret = secrets.token_urlsafe(32)
    records_port, smtp_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": secret,
           "CASETRAIL_LOG_LEVEL": "warning"}
    records = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "records", "--port", str(records_port), env=env)
    sink = TimingSink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, hostname="bench-sink"), "127.0.0.1", smtp_port)
    records_url = f"http://127.0.0.1:{records_port}"
    settings = NotifierSettings.model_validate({
        "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": secret,
        "RECORDS_URL": records_url, "SMTP_PORT": smtp_port, "CASETRAIL_LOG_LEVEL": "warning",
        "NOTIFIER_SMTP_CONNECTIONS": connections, "NOTIFIER_DB_POOL_MAX": connections + 4})
    runner = web.AppRunner(create_app(settings))
    try:
        await wait_ready(records_url)
        await runner.setup()
        token = issue_token(secret, sub="cm-bench", role="case_manager", agency="bench")
        await _set_preferences(runner.app, token)
        latencies = await celebration_latency(records_url, token, sink, celebrations, writers)
        seconds = await dispatch_throughput(runner.app, sink, reminders)
    finally:
        await runner.cleanup()
        server.close()
        records.terminate()
        await records.wait()
    print(f"celebrations: {celebrations} ({writers} writers), reminders: {reminders},"
          f" SMTP connections: {connections}, CPUs: {os.cpu_count()}")
    print(f"{'measurement':<44}{'value':>12}")
    print(f"{'append -> SMTP arrival, p50 (ms)':<44}{percentile(latencies, 0.5) * 1000:>12.1f}")
    print(f"{'append -> SMTP arrival, p99 (ms)':<44}{percentile(latencies, 0.99) * 1000:>12.1f}")
    print(f"{'append -> SMTP arrival, max (ms)':<44}{max(latencies) * 1000:>12.1f}")
    print(f"{f'{reminders} due reminders dispatched (s)':<44}{seconds:>12.2f}")
    print(f"{'dispatch rate (messages/s)':<44}{reminders / seconds:>12.0f}")


async def _set_preferences(app: web.Application, token: str) -> None:
    """The bench recipient's address, written as the API would (same store call)."""
    from services.notifier.store import directory
    from services.notifier.store.directory import Preferences

    await directory.upsert(app[NOTIFIER].pool, Preferences(
        "bench", "cm-bench", "case_manager", "cm-bench@example.org", "immediate", "UTC", None,
        None, True), "bench", datetime.now(UTC))


async def main(celebrations: int, reminders: int, writers: int, connections: int) -> None:
    configure_logging("warning")
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            await run(database_url, celebrations, reminders, writers, connections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--celebrations", type=int, default=500)
    parser.add_argument("--reminders", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    options = parser.parse_args()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main(options.celebrations, options.reminders, options.writers,
                        options.connections))
