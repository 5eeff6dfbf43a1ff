"""What the gap-free feed costs (decision 0003), measured on plain tables so that nothing else
differs:

1. writes: single-row inserts (one per transaction, 16 connections) into a table with the
   feed's `transaction_id xid8` column and `(transaction_id, global_position)` index, beside
   the same table without them; rounds interleaved;
2. delivery: writers whose transactions commit out of position order (each sleeps 0-5 ms
   between its INSERT and its COMMIT), one reader following the feed the way the records
   service does (rows below `pg_snapshot_xmin`, ordered by transaction id and position), one
   following `global_position > last`; how long after its commit the feed reader saw each row,
   and how many rows the naive reader never saw.

    .venv/bin/python -m bench.feed [--seconds 10] [--rounds 3] [--writers 8]

Uses DATABASE_URL's server when set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import asyncpg

from bench.common import insert_rows, percentile, postgres_server, scratch_database

TABLES = """
CREATE TABLE plain (global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    stream_id uuid NOT NULL, data jsonb NOT NULL);
CREATE TABLE with_feed (global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                        stream_id uuid NOT NULL, data jsonb NOT NULL,
                        transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX with_feed_order ON with_feed (transaction_id, global_position);
"""
ROW = '{"text": "Met at the library; a good talk"}'


async def insert_rate(url: str, table: str, clients: int, seconds: float) -> float:
    started = time.perf_counter()
    count = await insert_rows(url, table, clients, seconds)
    return count / (time.perf_counter() - started)


async def delivery(url: str, writers: int, seconds: float) -> tuple[list[float], int, int]:
    """Delays (s) from commit to the feed reader seeing each row; rows written; rows the
    naive reader skipped."""
    committed: dict[int, float] = {}
    seen_by_feed: dict[int, float] = {}
    seen_naively: set[int] = set()
    stop = time.perf_counter() + seconds
    rng = random.Random(7)

    async def writer() -> None:
        conn = await asyncpg.connect(url)
        while time.perf_counter() < stop:
            async with conn.transaction():
                position = await conn.fetchval(
                    "INSERT INTO with_feed (stream_id, data) VALUES (gen_random_uuid(), $1)"
                    " RETURNING global_position", ROW)
                await asyncio.sleep(rng.uniform(0, 0.005))
            committed[position] = time.perf_counter()
        await conn.close()

    async def feed_reader() -> None:
        conn = await asyncpg.connect(url)
        after = ("0", 0)
        while time.perf_counter() < stop + 1 or len(seen_by_feed) < len(committed):
            rows = await conn.fetch(
                "SELECT transaction_id::text AS tx, global_position FROM with_feed"
                " WHERE (transaction_id, global_position) > ($1::text::xid8, $2::bigint)"
                " AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
                " ORDER BY transaction_id, global_position LIMIT 500", *after)
            now = time.perf_counter()
            for row in rows:
                seen_by_feed[row["global_position"]] = now
            if rows:
                after = (rows[-1]["tx"], rows[-1]["global_position"])
            else:
                await asyncio.sleep(0.002)
        await conn.close()

    async def naive_reader() -> None:
        conn = await asyncpg.connect(url)
        last = 0
        while time.perf_counter() < stop + 1:
            rows = await conn.fetch("SELECT global_position FROM with_feed"
                                    " WHERE global_position > $1 ORDER BY global_position"
                                    " LIMIT 500", last)
            seen_naively.update(r["global_position"] for r in rows)
            if rows:
                last = rows[-1]["global_position"]
            else:
                await asyncio.sleep(0.002)
        await conn.close()

    await asyncio.gather(feed_reader(), naive_reader(), *[writer() for _ in range(writers)])
    delays = [seen_by_feed[p] - at for p, at in committed.items() if p in seen_by_feed]
    return delays, len(committed), len(set(committed) - seen_naively)


async def main(seconds: float, rounds: int, clients: int, writers: int) -> None:
    with postgres_server() as server:
        async with scratch_database(server) as url:
            conn = await asyncpg.connect(url)
            await conn.execute(TABLES)
            await conn.close()
            # delivery first: the insert rounds leave the server flushing and vacuuming
            delays, written, skipped = await delivery(url, writers, seconds)
            rates: dict[str, list[float]] = {"plain": [], "with_feed": []}
            for _ in range(rounds):
                for table in rates:
                    rates[table].append(await insert_rate(url, table, clients, seconds))
    print(f"inserts: {clients} connections, 1 row per transaction, {rounds} interleaved"
          f" rounds of {seconds:g} s")
    for table, label in (("plain", "without the feed column and index"),
                         ("with_feed", "with transaction_id xid8 + index")):
        print(f"  {label:<36}{' '.join(f'{r:>8.0f}' for r in rates[table])}  rows/s")
    ratios = [f / p for f, p in zip(rates["with_feed"], rates["plain"], strict=True)]
    print(f"  with/without per round: {', '.join(f'{r:.1%}' for r in ratios)}")
    print(f"\ndelivery: {writers} writers committing out of order for {seconds:g} s,"
          f" {written} rows")
    print(f"  feed reader (snapshot horizon): saw {len(delays)} of {written};"
          f" after commit p50 {percentile(delays, 0.5) * 1000:.1f} ms,"
          f" p90 {percentile(delays, 0.9) * 1000:.1f} ms,"
          f" p99 {percentile(delays, 0.99) * 1000:.1f} ms,"
          f" max {max(delays) * 1000:.1f} ms")
    print(f"  naive reader (global_position > last): skipped {skipped} of {written} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--writers", type=int, default=8)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.rounds, options.clients, options.writers))
