"""Test harness: a real PostgreSQL for every run, each run in databases of its own.

Server: ``CASETRAIL_TEST_DATABASE_URL`` or ``DATABASE_URL`` when set (any database on that
server; the run creates and drops its own), otherwise an embedded PostgreSQL started for the run.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.common.auth import issue_token
from services.common.database import embedded_postgres, with_database
from services.common.server import ServiceRunner
from services.common.settings import Settings
from services.notifier.http.app import migrate as migrate_notifier
from services.records.http.app import create_app, migrate
from tests.database_supply import DatabaseSupply

JWT_SECRET = "test-secret-" + secrets.token_hex(16)

# The shared fixtures of the records and notifier test modules, found by name without an import.
pytest_plugins = ["tests.records_api", "tests.notifier_helpers"]


async def _admin(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def _loggers_never_cached() -> Iterator[None]:
    """A service started in the test process (`cli.main(["records"])`) configures logging as
    in production, caching each logger on first use; a logger cached before the next such
    start kept that start's processors, out of reach of structlog.testing.capture_logs, and
    a later test's capture saw nothing (only in the whole suite's order). Here no logger is
    cached: each use reads the configuration of the moment."""
    configure = structlog.configure

    def uncached(**settings: object) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(structlog, "configure", uncached)
        yield


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    configured = os.environ.get("CASETRAIL_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    with ExitStack() as stack:
        yield configured or stack.enter_context(embedded_postgres())


@pytest.fixture(scope="session")
def template_database(postgres_server_url: str) -> Iterator[str]:
    """A migrated database nobody connects to, cloned for each database a test needs."""
    name = f"casetrail_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    asyncio.run(migrate(with_database(postgres_server_url, name)))
    asyncio.run(migrate_notifier(with_database(postgres_server_url, name)))
    yield name
    asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_supply(postgres_server_url: str, template_database: str) -> Iterator[DatabaseSupply]:
    """Clones of the template, made ahead of need and dropped after use."""
    supply = DatabaseSupply(postgres_server_url, template_database)
    yield supply
    supply.close()


@pytest.fixture(scope="session")
def database_url(database_supply: DatabaseSupply) -> Iterator[str]:
    """The run's shared database: tests keep apart by using case ids of their own."""
    with database_supply.borrowed() as url:
        yield url


@pytest.fixture
def fresh_database_url(database_supply: DatabaseSupply) -> Iterator[str]:
    """An empty, migrated database of the test's own (feed order, rebuilds, counts)."""
    with database_supply.borrowed() as url:
        yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=12)
    assert created is not None
    yield created
    await created.close()


@pytest.fixture
async def fresh_pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=20)
    assert created is not None
    yield created
    await created.close()


class FakeClock:
    """Injected time: starts at a fixed moment and moves only when told to."""

    def __init__(self, start: datetime = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET}
    values.update(overrides)
    return Settings.model_validate(values)


TokenFactory = Callable[..., str]


# an auditor token always carries a window (the services refuse one without); unless a test
# gives its own, the window a court would give for the whole record so far
WHOLE_RECORD = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def token() -> TokenFactory:
    def make(role: str = "case_manager", sub: str = "cm-1", agency: str = "agency-a",
             **kwargs: object) -> str:
        if role == "auditor" and "window_from" not in kwargs and "window_to" not in kwargs:
            kwargs["window_to"] = WHOLE_RECORD
        return issue_token(JWT_SECRET, sub=sub, role=role, agency=agency, **kwargs)  # type: ignore[arg-type]
    return make


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def records_client(aiohttp_client: Callable[..., Awaitable[TestClient]],
                         database_url: str) -> TestClient:
    return await aiohttp_client(create_app(make_settings(database_url)))


@pytest.fixture
def make_records_client(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> ClientFactory:
    async def make(database_url: str, **kwargs: object) -> TestClient:
        clock = kwargs.pop("clock", None)
        app = (create_app(make_settings(database_url, **kwargs), clock=clock)  # type: ignore[arg-type]
               if clock else create_app(make_settings(database_url, **kwargs)))
        return await aiohttp_client(app)
    return make


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, chosen at random below the
    range the kernel hands out to outgoing connections: one from that range (what binding
    port 0 gives) was taken by a connection of another test's before the test bound it
    (EADDRINUSE, with two test workers and a suite beside them)."""
    low, high = _unassigned_ports()
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {low}-{high}")


def _unassigned_ports() -> tuple[int, int]:
    """Ports the kernel does not hand out to outgoing connections: below its range, or above
    it when few lie below (a range starting at 1024)."""
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
                          .split()[:2])
    except (OSError, ValueError):
        return 10_000, 32_768  # below Linux's default range; elsewhere, ports most leave alone
    if first - 10_000 >= 5_000:
        return 10_000, first
    if 65_536 - (last + 1) >= 1_000:
        return last + 1, 65_536
    return 10_000, 65_536  # no room outside it: a port in it, as binding port 0 would give


async def serve(app: web.Application) -> tuple[ServiceRunner, int]:
    """``app`` served as the services serve it (ServiceRunner, a real socket), and its port."""
    runner = ServiceRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture
async def served_records(fresh_database_url: str) -> AsyncIterator[tuple[int, asyncpg.Pool]]:
    """The records service on a real socket (for raw HTTP), and a pool on its database."""
    runner, port = await serve(create_app(make_settings(fresh_database_url)))
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    yield port, pool
    await pool.close()
    await runner.cleanup()


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    """A folder for ``casetrail dev``; any PostgreSQL a failing test leaves running in it is
    stopped. It lies outside pytest's own temporary root on purpose: run as root, the embedded
    PostgreSQL opens every folder above its data to its own system user, and any pytest
    starting meanwhile (a parallel run, of this project or another) closes
    /tmp/pytest-of-root again, so initdb or pg_ctl failed with "Permission denied"."""
    folder = Path(tempfile.mkdtemp(prefix="casetrail-test-dev-"))
    yield folder / "dev"
    for pid in postgres_of(folder / "dev" / "pgdata"):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            if not gone(pid, seconds=15):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


def gone(pid: int, seconds: float = 10) -> bool:
    """The process ended (PostgreSQL removes postmaster.pid a moment before it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def postgres_of(pgdata: Path) -> list[int]:
    """The postmasters serving ``pgdata`` (its path is on their command line)."""
    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres"
            and str(pgdata.resolve()) in " ".join(p.info["cmdline"] or [])]


async def wait_until(pool: asyncpg.Pool | asyncpg.Connection, condition: str,
                     *args: object) -> None:
    """Wait (up to 20 s) until the SQL ``condition`` holds: another session got as far as a
    lock, a table appeared or went."""
    for _ in range(400):
        if await pool.fetchval(condition, *args):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {condition} {args}")
