"""Long runs: the services' memory, file descriptors, tasks and pools under hours of traffic.

    .venv/bin/python -m bench.soak [--cases 20000] [--notes 2] [--clients 16]
                                   [--sample-seconds 15] [--big-events 6000] [--pdf-abandons 6]
                                   [--no-notifier]

Runs `casetrail records` and `casetrail notifier` (each through ``--serve``, which starts the
service exactly as the CLI does and adds a sampler that writes its in-process figures to a file
every second) against a scratch database, with an SMTP sink in this process, and drives them:
for every case a journey of its own (opened with an Idempotency-Key by a token of its own, so
the token cache sees as many distinct tokens as cases; notes, each keyed; the plan; a history
page; a supervisor's read, access-logged; a bad body, 422; a made-up token, 401; every 10th a
goal, a step and its completion, a small win the notifier mails; every 25th a JSON Lines export
of a long case abandoned after its first bytes), and a few PDF exports of a long case abandoned
while they render (the largest spill their spooled file to disk). Every ``--sample-seconds`` it
prints each service's resident memory (VmRSS), open file descriptors (and how many are deleted
temporary files), asyncio tasks, pool connections (in use/open), the sizes of the in-process
caches and the Prometheus series, and the request rate; then the same once the load has stopped
and the services have idled, and the rows each table gained. Something that keeps growing with
the number of distinct cases or tokens, instead of levelling off, is a leak.

Uses DATABASE_URL's server when set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiosmtpd.controller import Controller

from bench.common import free_port, postgres_server, scratch_database, wait_ready
from bench.export import fill, resident_kib
from services.common.auth import issue_token
from services.common.settings import ServiceSettings

AGENCY = "bench"  # bench.export.fill's agency: the long case belongs to it
MANAGERS = 50
STATS_ENV = "SOAK_STATS_FILE"
NOTE = "Met at the library and talked about the workshop next week."


# --- the service side: the real app, plus a sampler of what only the process can see ---------

def _records_figures(app: web.Application) -> dict[str, Any]:
    from services.common.http import VERIFIER
    from services.records.http.app import RECORDS

    records = app[RECORDS]
    commands, store = records.commands, records.store
    return {"pool_open": records.pool.get_size(),
            "pool_busy": records.pool.get_size() - records.pool.get_idle_size(),
            "state_cache": len(commands._cache._states),
            "known_heads": len(store._heads._heads),
            "case_locks": len(commands.case_locks._turns),
            "tokens_cached": len(app[VERIFIER]._verified),
            "series": _series(records.metrics.registry)}


def _notifier_figures(app: web.Application) -> dict[str, Any]:
    from services.common.http import VERIFIER
    from services.notifier.http.app import NOTIFIER

    context = app[NOTIFIER]
    return {"pool_open": context.pool.get_size(),
            "pool_busy": context.pool.get_size() - context.pool.get_idle_size(),
            "smtp_idle": len(context.notifier.dispatcher._smtp._idle),
            "tokens_cached": len(app[VERIFIER]._verified),
            "series": _series(context.metrics.registry)}


def _series(registry: Any) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def _sampled(app: web.Application, figures: Callable[[web.Application], dict[str, Any]],
             path: Path) -> Callable[[web.Application], Awaitable[None]]:
    async def start(app: web.Application) -> None:
        async def sample() -> None:
            while True:
                stats = {"tasks": len(asyncio.all_tasks()), "gc_objects": len(gc.get_objects()),
                         **figures(app)}
                path.with_suffix(".tmp").write_text(json.dumps(stats))
                path.with_suffix(".tmp").replace(path)
                await asyncio.sleep(1.0)

        task = asyncio.get_running_loop().create_task(sample())
        app.on_cleanup.append(lambda app: _cancelled(task))

    return start


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()


def serve(service: str) -> None:
    """As `casetrail records` / `casetrail notifier`, with the sampler."""
    from services.common.logs import configure_logging
    from services.common.server import serve as serve_app

    stats = Path(os.environ[STATS_ENV])
    port = int(os.environ["SOAK_PORT"])
    settings: ServiceSettings
    if service == "records":
        from services.common.settings import Settings
        from services.records.http.app import create_app

        settings = Settings()
        app = create_app(settings)
        app.on_startup.append(_sampled(app, _records_figures, stats))
    else:
        from services.notifier.http.app import create_app as create_notifier
        from services.notifier.settings import NotifierSettings

        settings = notifier_settings = NotifierSettings()
        app = create_notifier(notifier_settings)
        app.on_startup.append(_sampled(app, _notifier_figures, stats))
    configure_logging(settings.log_level)
    serve_app(app, host="127.0.0.1", port=port, choose="SOAK_PORT")


# --- the load side --------------------------------------------------------------------------

class Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


@dataclass
class Service:
    name: str
    process: asyncio.subprocess.Process
    stats: Path
    url: str
    most_deleted_fds: int = 0  # the most deleted files (spilled temporary files) open at once

    def deleted_fds(self) -> int:
        pid = self.process.pid
        deleted = sum(1 for fd in os.listdir(f"/proc/{pid}/fd") if _deleted(pid, fd))
        self.most_deleted_fds = max(self.most_deleted_fds, deleted)
        return deleted

    def figures(self) -> dict[str, Any]:
        pid = self.process.pid
        found: dict[str, Any] = {"rss_mib": resident_kib(pid) / 1024,
                                 "fds": len(os.listdir(f"/proc/{pid}/fd")),
                                 "deleted_fds": self.deleted_fds()}
        with contextlib.suppress(OSError, ValueError):  # not written yet, or being replaced
            found.update(json.loads(self.stats.read_text()))
        return found


def _deleted(pid: int, fd: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").endswith("(deleted)")
    except OSError:
        return False


@dataclass
class Load:
    url: str
    secret: str
    long_case: str
    history: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    journeys: int = 0
    abandoned: int = 0

    def token(self, sub: str, role: str = "case_manager", **extra: Any) -> str:
        return issue_token(self.secret, sub=sub, role=role, agency=AGENCY, ttl_seconds=86_400,
                           extra=extra)

    async def call(self, session: aiohttp.ClientSession, method: str, path: str, token: str,
                   body: Any = None, key: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with session.request(method, self.url + path, json=body,
                                   headers=headers) as response:
            payload = await response.read()
        self.requests += 1
        self.statuses[response.status] += 1
        return json.loads(payload) if payload else None

    async def journey(self, session: aiohttp.ClientSession, n: int, notes: int) -> None:
        manager = f"cm-{n % MANAGERS}"
        token = self.token(manager, jti=str(n))  # a token of its own: distinct in the cache
        opened = await self.call(session, "POST", "/v1/cases", token, {
            "participant": {"name": f"Participant {n}"}, "case_manager": manager,
            "risk_level": "moderate"}, key=f"open-{n}")
        case = f"/v1/cases/{opened['case_id']}"
        for k in range(notes):
            await self.call(session, "POST", f"{case}/notes", token, {"text": f"{NOTE} ({k})"},
                            key=f"note-{n}-{k}")
        await self.call(session, "GET", case, token)
        await self.call(session, "GET", f"{case}/history?limit=2", token)
        await self.call(session, "GET", case, self.token("sup-1", "supervisor"))
        await self.call(session, "POST", f"{case}/notes", token, {"txt": "a typo"})
        await self.call(session, "GET", case, f"{secrets.token_urlsafe(16)}.e30.{n}")
        if n % 10 == 0:
            await self._small_win(session, case, token)
        if n % 25 == 0:
            await self.abandon(session, "jsonl")
        if self.history:  # a case with a long history, written to: into the state cache
            await self.call(session, "POST", f"/v1/cases/{self.history[n % len(self.history)]}"
                            "/notes", self.token("cm-bench"), {"text": NOTE}, key=f"long-{n}")
        self.journeys += 1

    async def _small_win(self, session: aiohttp.ClientSession, case: str, token: str) -> None:
        goal = await self.call(session, "POST", f"{case}/goals", token, {
            "title": "Find steady work", "domain": "employment", "source": "participant",
            "in_their_words": "I want a job where I use my hands"})
        if "id" not in goal:
            raise RuntimeError(f"a goal was refused: {goal}")
        step = await self.call(session, "POST", f"{case}/goals/{goal['id']}/steps", token,
                               {"description": "Visit the job centre", "owner": "participant"})
        await self.call(session, "POST", f"{case}/steps/{step['id']}/complete", token, {})

    async def abandon(self, session: aiohttp.ClientSession, export_format: str) -> None:
        """An export of the long case, left after its first bytes (the connection closed)."""
        token = self.token("sup-1", "supervisor")
        async with session.get(f"{self.url}/v1/cases/{self.long_case}/export",
                               params={"format": export_format},
                               headers={"Authorization": f"Bearer {token}"}) as response:
            self.statuses[response.status] += 1
            await response.content.read(1024)
            response.close()
        self.requests += 1
        self.abandoned += 1


async def _start(name: str, env: dict[str, str], folder: Path) -> Service:
    port = free_port()
    stats = folder / f"{name}.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", "--serve", name,
        env={**env, STATS_ENV: str(stats), "SOAK_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url)
    return Service(name, process, stats, url)


async def _stop(service: Service) -> None:
    if service.process.returncode is None:
        service.process.terminate()
        await service.process.wait()


def _row(elapsed: float, load: Load, rate: float, services: list[Service]) -> str:
    parts = [f"{elapsed:7.0f}s {load.journeys:>6} cases {load.requests:>7} requests"
             f" {rate:>6.0f}/s"]
    for service in services:
        f = service.figures()
        text = (f"{service.name}: RSS {f['rss_mib']:.1f} MiB, fds {f['fds']}"
                f" ({f['deleted_fds']} deleted), tasks {f.get('tasks', '?')},"
                f" pool {f.get('pool_busy', '?')}/{f.get('pool_open', '?')},"
                f" gc objects {f.get('gc_objects', '?')}, series {f.get('series', '?')},"
                f" tokens {f.get('tokens_cached', '?')}")
        if service.name == "records":
            text += (f", states {f.get('state_cache', '?')}, heads {f.get('known_heads', '?')},"
                     f" locks {f.get('case_locks', '?')}")
        else:
            text += f", smtp idle {f.get('smtp_idle', '?')}"
        parts.append(text)
    return "\n    ".join(parts)


async def _watch_deleted_fds(services: list[Service]) -> None:
    """Often enough to see a PDF's spilled temporary file while it is open."""
    while True:
        for service in services:
            service.deleted_fds()
        await asyncio.sleep(0.25)


async def _sample_until(done: asyncio.Event, started: float, load: Load,
                        services: list[Service], every: float) -> None:
    last_time, last_requests = started, 0
    watcher = asyncio.create_task(_watch_deleted_fds(services))
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every)
        now = time.perf_counter()
        rate = (load.requests - last_requests) / max(now - last_time, 1e-9)
        last_time, last_requests = now, load.requests
        print(_row(now - started, load, rate, services), flush=True)
    watcher.cancel()


TABLES = ("records.events", "records.streams", "records.plans", "records.idempotency_keys",
          "records.access_log", "records.outcome_facts", "notifier.cases",
          "notifier.notifications", "notifier.attempts")


async def _table_rows(database_url: str) -> dict[str, tuple[int, int]]:
    conn = await asyncpg.connect(database_url)
    try:
        present = [t for t in TABLES if await conn.fetchval("SELECT to_regclass($1)", t)]
        return {table: (await conn.fetchval(f"SELECT count(*) FROM {table}"),
                        await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table))
                for table in present}
    finally:
        await conn.close()


async def _drive(load: Load, cases: int, notes: int, clients: int, pdf_abandons: int) -> None:
    next_case = iter(range(cases))

    async def client(session: aiohttp.ClientSession) -> None:
        for n in next_case:
            await load.journey(session, n, notes)

    async def pdfs(session: aiohttp.ClientSession) -> None:
        for _ in range(pdf_abandons):
            await asyncio.sleep(1.0)
            await load.abandon(session, "pdf")

    connector = aiohttp.TCPConnector(limit=clients + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*[client(session) for _ in range(clients)], pdfs(session))


async def main(options: argparse.Namespace) -> None:
    sink = Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    services: list[Service] = []
    try:
        with postgres_server() as server, tempfile.TemporaryDirectory() as stats_folder:
            folder = Path(stats_folder)
            async with scratch_database(server) as database_url:
                long_case, *history = await fill(
                    database_url,
                    [options.big_events] + [options.history_notes] * options.history_cases, 60)
                secret = secrets.token_urlsafe(32)
                env = {**os.environ, "DATABASE_URL": database_url,
                       "CASETRAIL_JWT_SECRET": secret, "CASETRAIL_LOG_LEVEL": "warning",
                       "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                       "NOTIFIER_DISPATCH_INTERVAL": "1"}
                try:
                    services.append(await _start("records", env, folder))
                    load = Load(services[0].url, secret, long_case, history)
                    if options.notifier:
                        env["RECORDS_URL"] = services[0].url
                        services.append(await _start("notifier", env, folder))
                        await _preferences(services[1].url, load)
                    await _soak(options, load, services, database_url, sink)
                finally:  # before the database goes; the notifier before the feed it reads
                    for service in reversed(services):
                        await _stop(service)
    finally:
        smtp.stop()


async def _preferences(notifier_url: str, load: Load) -> None:
    async with aiohttp.ClientSession() as session:
        for m in range(MANAGERS):
            user = f"cm-{m}"
            async with session.put(
                    f"{notifier_url}/v1/preferences/{user}",
                    json={"email": f"{user}@example.org", "delivery": "immediate",
                          "timezone": "UTC", "celebrations": True},
                    headers={"Authorization": f"Bearer {load.token(user)}"}) as response:
                assert response.status in (200, 201), await response.text()


async def _soak(options: argparse.Namespace, load: Load, services: list[Service],
                database_url: str, sink: Sink) -> None:
    before = await _table_rows(database_url)
    print(f"cases {options.cases}, notes per case {options.notes}, clients {options.clients},"
          f" long case {options.big_events} events, PDF abandons {options.pdf_abandons},"
          f" {options.history_cases} cases of {options.history_notes} events written to")
    started = time.perf_counter()
    print(_row(0, load, 0, services), flush=True)
    done = asyncio.Event()
    sampler = asyncio.create_task(
        _sample_until(done, started, load, services, options.sample_seconds))
    try:
        await _drive(load, options.cases, options.notes, options.clients, options.pdf_abandons)
    finally:
        done.set()
        await sampler
    elapsed = time.perf_counter() - started
    print(f"load done: {load.requests} requests in {elapsed:.0f} s,"
          f" {load.requests / elapsed:.0f}/s; {load.abandoned} exports abandoned;"
          f" statuses {dict(sorted(load.statuses.items()))}; mail received {sink.count}")
    await asyncio.sleep(options.idle_seconds)
    print("most deleted (temporary) files open at once: "
          + ", ".join(f"{s.name} {s.most_deleted_fds}" for s in services))
    print(f"after {options.idle_seconds:.0f} s idle:")
    print(_row(time.perf_counter() - started, load, 0, services), flush=True)
    after = await _table_rows(database_url)
    print("rows gained (and bytes on disk at the end):")
    for table, (rows, size) in after.items():
        gained = rows - before[table][0] if table in before else rows
        print(f"    {table:<26}{gained:>9}{size / 1048576:>10.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=["records", "notifier"], help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=int, default=20_000, help="distinct cases (journeys)")
    parser.add_argument("--notes", type=int, default=2, help="notes appended to each case")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--sample-seconds", type=float, default=15.0,
                        help="seconds between samples")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="seconds the services idle before the last sample")
    parser.add_argument("--big-events", type=int, default=6000,
                        help="events of the long case whose exports are abandoned")
    parser.add_argument("--pdf-abandons", type=int, default=6,
                        help="PDF exports of the long case abandoned while they render")
    parser.add_argument("--history-cases", type=int, default=0,
                        help="cases with a long history, one note written to one per journey")
    parser.add_argument("--history-notes", type=int, default=500,
                        help="events of each case with a long history")
    parser.add_argument("--no-notifier", dest="notifier", action="store_false",
                        help="run the records service alone")
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve)
    else:
        asyncio.run(main(parsed))
