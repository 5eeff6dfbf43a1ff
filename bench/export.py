"""Export rate and the records service's memory while it streams a signed export.

    .venv/bin/python -m bench.export [--events 1000 50000]
                                     [--format jsonl|csv|pdf|fhir|verify] [--note-chars 24]

For each size, one case with that many events (notes, chained by the event store), exported
(JSON Lines by default) through `casetrail records` by a client that reads and drops the stream; the
service's resident memory is sampled every 20 ms during the export. Constant memory means the
growth does not follow the number of events. ``--format verify`` reads the case's chain check
(`GET …/verify`) instead, which walks the same history. Uses DATABASE_URL's server when set,
otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import uuid4

import aiohttp

from bench.common import free_port, postgres_server, scratch_database, wait_ready
from services.common.auth import issue_token
from services.common.database import create_pool
from services.records.http.app import migrate
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore, NewEvent

CHUNK = 500  # events per append while filling


async def fill(database_url: str, sizes: list[int], note_chars: int = 0) -> list[str]:
    """One case per size, each with that many events (notes padded to ``note_chars``); its
    plan row by a rebuild."""
    await migrate(database_url)
    pool = await create_pool(database_url, max_size=2)
    try:
        store = EventStore(pool)
        metadata = {"actor": {"sub": "cm-bench", "role": "case_manager"}}
        opened = {"participant": {"name": "Participant"}, "case_manager": "cm-bench",
                  "risk_level": "moderate", "agency": "bench"}
        case_ids = []
        for size in sizes:
            case_id = uuid4()
            events = [NewEvent(uuid4(), "CaseOpened", 1, opened)]
            events += [NewEvent(uuid4(), "NoteAdded", 1, {"note_id": str(uuid4()),
                                                           "text": _note(n, note_chars)})
                       for n in range(size - 1)]
            for start in range(0, size, CHUNK):
                await store.append(case_id, events[start:start + CHUNK],
                                   expected_version=start, agency="bench", metadata=metadata)
            case_ids.append(str(case_id))
        await rebuild_projections(pool)
        return case_ids
    finally:
        await pool.close()


def _note(n: int, chars: int) -> str:
    text = f"Met at the library ({n})."
    return (text + " We talked about the workshop" * (chars // 28 + 1))[:max(chars, len(text))]


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@asynccontextmanager
async def peak_resident(pid: int) -> AsyncIterator[list[int]]:
    """The largest resident memory (KiB) of ``pid`` seen while the block runs, in ``[0]``."""
    peak = [resident_kib(pid)]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_kib(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        done.set()
        await sampler


async def export_once(url: str, token: str, case_id: str, pid: int,
                      export_format: str) -> tuple[int, float, int]:
    """Bytes, seconds, and the largest resident memory (KiB) seen while it streamed."""
    received = 0
    async with peak_resident(pid) as peak:
        started = time.perf_counter()
        async with aiohttp.ClientSession() as session, session.get(
                f"{url}/v1/cases/{case_id}/{_read_of(export_format)}",
                headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            async for chunk in response.content.iter_chunked(1 << 16):
                received += len(chunk)
        elapsed = time.perf_counter() - started
    return received, elapsed, peak[0]


def _read_of(export_format: str) -> str:
    return "verify" if export_format == "verify" else f"export?format={export_format}"


async def main(sizes: list[int], export_format: str, note_chars: int) -> None:
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            case_ids = await fill(database_url, sizes, note_chars)
            secret = secrets.token_urlsafe(32)
            port = free_port()
            env = {**os.environ, "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": secret,
                   "CASETRAIL_LOG_LEVEL": "warning"}
            service = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", "records", "--port", str(port), env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                await wait_ready(url)
                token = issue_token(secret, sub="sup-bench", role="supervisor", agency="bench")
                await export_once(url, token, case_ids[0], service.pid, export_format)  # warm-up
                rows = []
                for size, case_id in zip(sizes, case_ids, strict=True):
                    before = resident_kib(service.pid)
                    received, elapsed, peak = await export_once(url, token, case_id,
                                                                service.pid, export_format)
                    rows.append((size, received, elapsed, before, peak))
            finally:
                service.terminate()
                await service.wait()
    print(f"format: {export_format}, notes of {note_chars or 'about 25'} characters")
    print(f"{'events':>8}{'MB':>8}{'seconds':>9}{'events/s':>10}"
          f"{'RSS before MiB':>16}{'peak MiB':>10}{'growth MiB':>12}")
    for size, received, elapsed, before, peak in rows:
        print(f"{size:>8}{received / 1e6:>8.1f}{elapsed:>9.2f}{size / elapsed:>10.0f}"
              f"{before / 1024:>16.1f}{peak / 1024:>10.1f}{(peak - before) / 1024:>12.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[1000, 50000])
    parser.add_argument("--format", default="jsonl",
                        choices=["jsonl", "csv", "pdf", "fhir", "verify"])
    parser.add_argument("--note-chars", type=int, default=0,
                        help="pad each note to this many characters")
    options = parser.parse_args()
    asyncio.run(main(options.events, options.format, options.note_chars))
