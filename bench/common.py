"""What the benchmarks share: a scratch database and percentiles."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager

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
