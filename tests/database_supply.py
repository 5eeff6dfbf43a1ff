"""Databases for the tests, cloned from the migrated template ahead of need and dropped after
use, both off the tests' own path.

A clone costs PostgreSQL 30-170 ms, mostly waiting on the disk (CREATE DATABASE copies the
template through the WAL and flushes it), and a drop 15-50 ms. Made and dropped inline, they
were about a fifth of the suite's time; made here, on a thread of their own, they overlap
the tests.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import asyncpg

from services.common.database import with_database

T = TypeVar("T")

# Clones kept ready: enough that a test seldom waits for one, few enough that little is
# left to drop when the run ends.
AHEAD = 2
WAIT_SECONDS = 120


class DatabaseSupply:
    """Clones of ``template`` on ``server_url``: each :meth:`borrowed` for a while, then
    dropped (with any connection still open to it); :meth:`close` at the end."""

    def __init__(self, server_url: str, template: str) -> None:
        self._server_url = server_url
        self._template = template
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="database-supply")
        self._thread.start()
        self._drops: list[Future[None]] = []
        self._stopping = False
        self._run(self._start())

    @contextmanager
    def borrowed(self) -> Iterator[str]:
        """The URL of a new database, migrated as the template is, for the caller alone; it is
        dropped in the background afterwards (:meth:`close` waits for that)."""
        name = self._run(self._next())
        try:
            yield with_database(self._server_url, name)
        finally:
            self._drops.append(asyncio.run_coroutine_threadsafe(self._drop(name), self._loop))

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
        self._maker = asyncio.create_task(self._keep_ahead())

    async def _keep_ahead(self) -> None:
        while True:
            await self._room.acquire()
            if self._stopping:
                return
            name = f"{self._template}_{secrets.token_hex(3)}"
            await self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
            self._ready.put_nowait(name)

    async def _next(self) -> str:
        getter = asyncio.ensure_future(self._ready.get())
        await asyncio.wait({getter, self._maker}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():  # the maker stopped: say why rather than wait
            getter.cancel()
            self._maker.result()
            raise RuntimeError("the database supply has stopped")
        self._room.release()
        return getter.result()

    async def _drop(self, name: str) -> None:
        await self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _close(self) -> None:
        self._stopping = True
        self._room.release()  # wakes the maker if it waits for room; it then returns
        outcomes = await asyncio.gather(
            self._maker, *(asyncio.wrap_future(d) for d in self._drops), return_exceptions=True)
        while not self._ready.empty():
            await self._drop(self._ready.get_nowait())
        await self._admin.close()
        for outcome in outcomes:  # a database left behind is named, not forgotten
            if isinstance(outcome, BaseException):
                raise outcome
