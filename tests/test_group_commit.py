"""Group commit: batching, one item per key per batch, failures that stay with their item.

The store's own tests (test_event_store.py) run it against PostgreSQL; these pin the queueing
rules with a writer that only records what it was given.
"""

from __future__ import annotations

import asyncio

import pytest

from services.records.store.group_commit import GroupCommit


class StatementError(Exception):
    """Stands for an error a single statement can cause (a unique violation, say)."""


class Recorder:
    def __init__(self, fail_when: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self._fail_when = fail_when

    async def write(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await self.release.wait()
        if self._fail_when is not None and self._fail_when in items:
            raise StatementError(f"{self._fail_when} cannot be written")
        return [f"wrote {item}" for item in items]


def group(recorder: Recorder, max_batch: int = 64) -> GroupCommit[str, str]:
    return GroupCommit(recorder.write, key=lambda item: item.split(":")[0],
                       retry_alone=lambda error: isinstance(error, StatementError),
                       max_batch=max_batch)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def submit_behind(commit: GroupCommit[str, str], recorder: Recorder, first: str,
                        later: list[str]) -> list[str | BaseException]:
    """Submit ``first``, then ``later`` while it is being written; every answer, in order."""
    tasks = [asyncio.create_task(commit.submit(first))]
    await settle()
    tasks += [asyncio.create_task(commit.submit(item)) for item in later]
    await settle()
    recorder.release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_lone_item_is_written_at_once() -> None:
    recorder = Recorder()
    recorder.release.set()
    assert await group(recorder).submit("a:1") == "wrote a:1"
    assert recorder.batches == [["a:1"]]


async def test_items_arriving_during_a_write_go_together_in_the_next() -> None:
    recorder = Recorder()
    answers = await submit_behind(group(recorder), recorder, "a:1", ["b:1", "c:1", "d:1"])
    assert answers == ["wrote a:1", "wrote b:1", "wrote c:1", "wrote d:1"]
    assert recorder.batches == [["a:1"], ["b:1", "c:1", "d:1"]]


async def test_two_items_for_one_key_never_share_a_batch() -> None:
    recorder = Recorder()
    await submit_behind(group(recorder), recorder, "x:0", ["a:1", "a:2", "b:1"])
    assert recorder.batches == [["x:0"], ["a:1", "b:1"], ["a:2"]]


async def test_batches_hold_at_most_max_batch_items() -> None:
    recorder = Recorder()
    await submit_behind(group(recorder, max_batch=2), recorder, "x:0",
                        [f"{key}:1" for key in "abcde"])
    assert [len(batch) for batch in recorder.batches] == [1, 2, 2, 1]


async def test_a_statement_error_stays_with_the_item_that_caused_it() -> None:
    recorder = Recorder(fail_when="bad:1")
    answers = await submit_behind(group(recorder), recorder, "x:0", ["a:1", "bad:1", "b:1"])
    assert answers[:2] == ["wrote x:0", "wrote a:1"]
    assert isinstance(answers[2], StatementError)
    assert answers[3] == "wrote b:1"
    # the shared batch failed, then each of its items was written alone
    assert ["a:1"] in recorder.batches
    assert ["b:1"] in recorder.batches


async def test_an_error_that_is_not_the_items_fails_the_whole_batch_once() -> None:
    class ConnectionLost(Exception):
        pass

    calls = 0

    async def lose_connection(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        raise ConnectionLost

    commit: GroupCommit[str, str] = GroupCommit(
        lose_connection, key=lambda item: item,
        retry_alone=lambda error: isinstance(error, StatementError))
    answers = await asyncio.gather(*[commit.submit(item) for item in "abc"],
                                   return_exceptions=True)
    assert all(isinstance(answer, ConnectionLost) for answer in answers)
    assert calls == 2  # "a" alone, then "b" and "c" together; no retries one by one


async def test_an_item_given_up_before_its_batch_is_not_written() -> None:
    recorder = Recorder()
    commit = group(recorder)
    first = asyncio.create_task(commit.submit("x:0"))
    await settle()
    abandoned = asyncio.create_task(commit.submit("a:1"))
    kept = asyncio.create_task(commit.submit("b:1"))
    await settle()
    abandoned.cancel()
    recorder.release.set()
    assert await kept == "wrote b:1"
    await first
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert recorder.batches == [["x:0"], ["b:1"]]


async def test_on_batch_reports_each_batch_size() -> None:
    recorder = Recorder()
    sizes: list[int] = []
    commit: GroupCommit[str, str] = GroupCommit(
        recorder.write, key=lambda item: item, retry_alone=lambda error: False,
        on_batch=sizes.append)
    await submit_behind(commit, recorder, "a", ["b", "c"])
    assert sizes == [1, 2]
