"""Group commit: appends that arrive while one is being written go together in the next write.

A lone append is written at once; under load, everything that queued up behind the write in
flight is written by the next one, in one statement and one transaction, so PostgreSQL's
per-statement and per-commit costs (and the client's per-call costs) are shared. Each item
still succeeds or fails on its own: a version check that fails for one stream fails only
that stream's append. Knows nothing of SQL; ``write_batch`` does the writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class _Waiting(Generic[ItemT, ResultT]):
    item: ItemT
    answer: asyncio.Future[ResultT] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[ItemT, ResultT]):
    """Queues items and writes them in batches with ``write_batch`` (one result per item,
    in order). At most ``max_in_flight`` batches run at once, each of at most ``max_batch``
    items with distinct keys (a second item for the same key waits for the next batch, so
    two appends to one stream are never decided inside one statement).

    When a batch of several fails and ``retry_alone`` says the failure may belong to one
    item (a statement error, not a lost connection), each item is written alone, so one bad
    append cannot fail the appends that happened to share its batch.
    """

    def __init__(self, write_batch: Callable[[list[ItemT]], Awaitable[list[ResultT]]],
                 key: Callable[[ItemT], Hashable], *,
                 retry_alone: Callable[[BaseException], bool],
                 max_batch: int = 64, max_in_flight: int = 1,
                 on_batch: Callable[[int], None] = lambda size: None) -> None:
        self._write_batch = write_batch
        self._on_batch = on_batch
        self._key = key
        self._retry_alone = retry_alone
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[_Waiting[ItemT, ResultT]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> ResultT:
        waiting: _Waiting[ItemT, ResultT] = _Waiting(item)
        self._queue.append(waiting)
        self._start_batches()
        return await waiting.answer

    def _start_batches(self) -> None:
        while self._queue and len(self._in_flight) < self._max_in_flight:
            task = asyncio.create_task(self._write(self._next_batch()))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start_batches()

    def _next_batch(self) -> list[_Waiting[ItemT, ResultT]]:
        batch: list[_Waiting[ItemT, ResultT]] = []
        later: list[_Waiting[ItemT, ResultT]] = []
        keys: set[Hashable] = set()
        for waiting in self._queue:
            key = self._key(waiting.item)
            if len(batch) < self._max_batch and key not in keys:
                keys.add(key)
                batch.append(waiting)
            else:
                later.append(waiting)
        self._queue = later
        return batch

    async def _write(self, batch: list[_Waiting[ItemT, ResultT]]) -> None:
        live = [w for w in batch if not w.answer.cancelled()]
        if not live:
            return
        self._on_batch(len(live))
        try:
            results = await self._write_batch([w.item for w in live])
        except asyncio.CancelledError:  # shutting down: nobody may wait forever
            for waiting in live:
                waiting.answer.cancel()
            raise
        except Exception as error:
            if len(live) > 1 and self._retry_alone(error):
                await asyncio.gather(*[self._write([w]) for w in live])
            else:
                for waiting in live:
                    _answer_error(waiting.answer, error)
            return
        for waiting, result in zip(live, results, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(result)


def _answer_error(answer: asyncio.Future[ResultT], error: BaseException) -> None:
    if not answer.done():
        answer.set_exception(error)
