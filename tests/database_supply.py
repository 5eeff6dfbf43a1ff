"""Databases for the tests, cloned from the migrated template ahead of need and, after use,
brought back to the template's state and handed out again, all off the tests' own path.

A clone costs PostgreSQL 30-170 ms, mostly waiting on the disk (CREATE DATABASE copies the
template through the WAL and flushes it), and a drop 15-50 ms and a forced checkpoint. Made
and dropped inline, they were about a fifth of the suite's time; made here, on a thread of
their own, they overlap the tests; used again (tests/database_baseline.py), most are never
made at all.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import asyncpg

from services.common.database import with_database
from tests.database_baseline import Baseline, DifferentDatabase

T = TypeVar("T")

# Clones kept ready: enough that a test seldom waits for one, few enough that little is
# left to drop when the run ends.
AHEAD = 2
WAIT_SECONDS = 120
# How long a used database's sessions may take to close before the supply ends them.
GRACE_SECONDS = 2.0
# How long the maker waits for a used database to be brought back before it clones one.
REUSE_WAIT_SECONDS = 0.5
SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
SESSIONS_ENDED = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1"


class DatabaseSupply:
    """Clones of ``template`` on ``server_url``: each :meth:`borrowed` for a while, then
    brought back to the template's state for the next borrower (or dropped, with any
    connection still open to it, when it cannot be); :meth:`close` drops them all."""

    def __init__(self, server_url: str, template: str) -> None:
        self._server_url = server_url
        self._template = template
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="database-supply")
        self._thread.start()
        self._returns: list[Future[None]] = []
        self._stopping = False
        self._run(self._start())

    @contextmanager
    def borrowed(self) -> Iterator[str]:
        """The URL of a database as migrated as the template, for the caller alone; it is
        brought back or dropped in the background afterwards (:meth:`close` waits for that)."""
        name = self._run(self._next())
        try:
            yield with_database(self._server_url, name)
        finally:
            self._returns.append(
                asyncio.run_coroutine_threadsafe(self._give_back(name), self._loop))

    def close(self) -> None:
        try:
            self._run(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(WAIT_SECONDS)

    async def _start(self) -> None:
        admin = await asyncpg.create_pool(self._server_url, min_size=1, max_size=4)
        assert admin is not None
        self._admin = admin
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._room = asyncio.Semaphore(AHEAD)
        self._reusable: list[str] = []
        self._restoring = 0
        self._changed = asyncio.Condition()
        first = await self._clone()
        self._baseline = await self._on(first, Baseline.read)
        self._reusable.append(first)
        self._maker = asyncio.create_task(self._keep_ahead())

    async def _keep_ahead(self) -> None:
        while True:
            await self._room.acquire()
            if self._stopping:
                return
            self._ready.put_nowait(await self._reused() or await self._clone())

    async def _reused(self) -> str | None:
        """A database brought back; one being brought back is waited for a while, as it is
        usually ready long before a clone would be."""
        async with self._changed:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: bool(self._reusable) or not self._restoring), REUSE_WAIT_SECONDS)
        return self._reusable.pop() if self._reusable else None

    async def _clone(self) -> str:
        name = f"{self._template}_{secrets.token_hex(3)}"
        await self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        return name

    async def _next(self) -> str:
        getter = asyncio.ensure_future(self._ready.get())
        await asyncio.wait({getter, self._maker}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():  # the maker stopped: say why rather than wait
            getter.cancel()
            self._maker.result()
            raise RuntimeError("the database supply has stopped")
        self._room.release()
        return getter.result()

    async def _give_back(self, name: str) -> None:
        if self._stopping:
            await self._drop(name)
            return
        self._restoring += 1
        try:
            await self._disconnect_all(name)
            await self._on(name, self._baseline.restore)
        except (DifferentDatabase, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self._drop(name)
        else:
            self._reusable.append(name)
        finally:
            self._restoring -= 1
            async with self._changed:
                self._changed.notify_all()

    async def _disconnect_all(self, name: str) -> None:
        """Waits for the sessions on ``name`` to end, ending those a test left open.

        A test's database is given back before the fixtures it set up earlier close their
        pools (the app's, say), so those get a grace period to close themselves: ended by the
        server first, their close would write to a broken pipe and fail the teardown."""
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + GRACE_SECONDS
        for _ in range(1000):
            query = SESSIONS if loop.time() < grace_ends else SESSIONS_ENDED
            if not await self._admin.fetchval(query, name):
                return
            await asyncio.sleep(0.01)
        raise DifferentDatabase("its sessions did not end")

    async def _on(self, name: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        conn = await asyncpg.connect(with_database(self._server_url, name))
        try:
            return await work(conn)
        finally:
            await conn.close()

    async def _drop(self, name: str) -> None:
        await self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _close(self) -> None:
        self._stopping = True
        self._room.release()  # wakes the maker if it waits for room; it then returns
        outcomes = await asyncio.gather(
            self._maker, *(asyncio.wrap_future(r) for r in self._returns),
            return_exceptions=True)
        leftovers = self._reusable + [self._ready.get_nowait() for _ in range(self._ready.qsize())]
        for name in leftovers:
            await self._drop(name)
        await self._admin.close()
        for outcome in outcomes:  # a database left behind is named, not forgotten
            if isinstance(outcome, BaseException):
                raise outcome
