"""What the benchmarks share: a scratch database, percentiles and CPU accounting."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass

import aiohttp
import asyncpg

from services.common.database import embedded_postgres, with_database


@contextmanager
def postgres_server() -> Iterator[str]:
    """``DATABASE_URL``'s server when set, otherwise an embedded PostgreSQL for this run."""
    with ExitStack() as stack:
        yield os.environ.get("DATABASE_URL") or stack.enter_context(embedded_postgres())


@asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    name = f"casetrail_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def insert_rows(database_url: str, table: str, clients: int, seconds: float) -> int:
    """Rows ``clients`` connections insert into ``table`` (``stream_id uuid, data jsonb``) in
    ``seconds``, one row per transaction: the raw rate the benches compare against."""
    count = 0

    async def client() -> None:
        nonlocal count
        conn = await asyncpg.connect(database_url)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await conn.execute(f"INSERT INTO {table} (stream_id, data)"
                               " VALUES (gen_random_uuid(), $1)", '{"text": "a small step"}')
            count += 1
        await conn.close()

    await asyncio.gather(*[client() for _ in range(clients)])
    return count


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: the whole machine (all cores), some processes, this one."""

    machine: float
    process: float
    own: float

    def __sub__(self, earlier: CpuSample) -> CpuSample:
        return CpuSample(self.machine - earlier.machine, self.process - earlier.process,
                         self.own - earlier.own)


def cpu_sample(pids: Sequence[int] = ()) -> CpuSample | None:
    """None where /proc is not there to read (the figures are Linux-only); ``process`` sums
    the processes ``pids``."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        process = 0.0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                after_name = stat.read().rsplit(")", 1)[1].split()
            process += (int(after_name[11]) + int(after_name[12])) / _TICKS
    except OSError:
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    times = os.times()
    return CpuSample(busy / _TICKS, process, times.user + times.system)


def cpu_per_operation(before: CpuSample | None, after: CpuSample | None,
                      operations: int) -> CpuSample | None:
    """Milliseconds of CPU per operation between two samples."""
    if before is None or after is None or operations == 0:
        return None
    used = after - before
    return CpuSample(used.machine * 1000 / operations, used.process * 1000 / operations,
                     used.own * 1000 / operations)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
