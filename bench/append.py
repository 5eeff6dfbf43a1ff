"""HTTP append throughput and latency against the running records service, beside the raw
asyncpg single-row insert rate on the same database in the same run, and beside the floor: a
minimal aiohttp + asyncpg service answering the same request with one INSERT
(`bench/floor_app.py`), driven the same way.

    .venv/bin/python -m bench.append [--seconds 20] [--clients 16] [--processes 1]
                                     [--rounds 1]

Uses DATABASE_URL's server when set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from typing import cast

import aiohttp
import asyncpg

from bench.common import (
    CpuSample,
    cpu_per_operation,
    cpu_sample,
    free_port,
    insert_rows,
    percentile,
    postgres_server,
    scratch_database,
    wait_ready,
)
from services.common.auth import issue_token
from services.common.http import new_event_loop


async def raw_insert_rate(database_url: str, clients: int,
                          seconds: float) -> tuple[float, CpuSample | None]:
    """One row per transaction from each of ``clients`` connections; rate and CPU per insert."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigint GENERATED ALWAYS AS"
                       " IDENTITY PRIMARY KEY, stream_id uuid, data jsonb)")
    await conn.close()
    before, started = cpu_sample(), time.perf_counter()
    count = await insert_rows(database_url, "bench_raw", clients, seconds)
    elapsed = time.perf_counter() - started
    return count / elapsed, cpu_per_operation(before, cpu_sample(), count)


@dataclass(frozen=True)
class HttpAppends:
    rate: float
    latencies: list[float]
    errors: int
    cpu_ms: CpuSample | None  # per append: machine, service processes, load generator


class KeepAliveClient(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection sending prepared requests, one at a time.

    The load generator shares the two cores with the service and PostgreSQL, so it is kept
    lean: no header parsing beyond the status line and Content-Length (the service always
    sends one), no JSON decoding. Every answer is still read to its last byte.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._answer: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._answer is None:
            return
        head = bytes(self._buffer[:end]).lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[:end + 4 + length]
        self._answer.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or ConnectionError("the service closed"))

    async def send(self, request: bytes) -> int:
        """The answer's status code."""
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer


def note_request(port: int, token: str, case_id: str) -> bytes:
    body = json.dumps({"text": "Met at the library; a good talk"}).encode()
    return (f"POST /v1/cases/{case_id}/notes HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def open_cases(url: str, token: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        case_ids = []
        for n in range(count):
            async with session.post(f"{url}/v1/cases", json={
                    "participant": {"name": f"Participant {n}"}, "case_manager": "cm-bench",
                    "risk_level": "moderate"}) as response:
                case_ids.append((await response.json())["case_id"])
    return case_ids


async def http_append(port: int, token: str, clients: int, seconds: float,
                      service_pids: list[int]) -> HttpAppends:
    case_ids = await open_cases(f"http://127.0.0.1:{port}", token, clients)
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(KeepAliveClient, "127.0.0.1", port))[1]
                   for _ in case_ids]
    requests = [note_request(port, token, case_id) for case_id in case_ids]
    latencies: list[float] = []
    errors = 0

    async def client(connection: KeepAliveClient, request: bytes, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            if await connection.send(request) != 201:
                errors += 1
            latencies.append(time.perf_counter() - started)

    pairs = list(zip(connections, requests, strict=True))
    await asyncio.gather(*[client(c, r, time.perf_counter() + 2) for c, r in pairs])  # warm-up
    latencies.clear()
    before, started = cpu_sample(service_pids), time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*[client(c, r, deadline) for c, r in pairs])
    elapsed = time.perf_counter() - started
    cpu = cpu_per_operation(before, cpu_sample(service_pids), len(latencies))
    return HttpAppends(len(latencies) / elapsed, latencies, errors, cpu)


async def appends_per_statement(url: str) -> float:
    """The service's mean group-commit batch size, from its Prometheus histogram."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                  if line.startswith("casetrail_append_batch_size_"))
    count = float(values.get("casetrail_append_batch_size_count", 0))
    return float(values.get("casetrail_append_batch_size_sum", 0)) / count if count else 0.0


RECORDS = ("services.cli", "records")
FLOOR = ("bench.floor_app",)


async def start_services(module: tuple[str, ...], port: int, env: dict[str, str],
                         processes: int) -> list[asyncio.subprocess.Process]:
    """``processes`` processes of ``module`` sharing ``port`` (SO_REUSEPORT when more than one)."""
    command = [sys.executable, "-m", *module, "--port", str(port)]
    if processes > 1:
        command.append("--reuse-port")
    first = await asyncio.create_subprocess_exec(*command, env=env)
    await wait_ready(f"http://127.0.0.1:{port}")  # the first one has migrated the database
    others = [await asyncio.create_subprocess_exec(*command, env=env)
              for _ in range(processes - 1)]
    if others:
        await asyncio.sleep(3)  # the shared port cannot tell which process answered; wait
    return [first, *others]


async def measure(module: tuple[str, ...], env: dict[str, str], token: str, clients: int,
                  seconds: float, processes: int) -> tuple[HttpAppends, float]:
    """Appends through ``processes`` processes of ``module``; and their mean appends per
    statement (0 where the process does not report it)."""
    port = free_port()
    services = await start_services(module, port, env, processes)
    try:
        appends = await http_append(port, token, clients, seconds,
                                    [service.pid for service in services])
        per_statement = (await appends_per_statement(f"http://127.0.0.1:{port}")
                         if module == RECORDS else 0.0)
    finally:
        for service in services:
            service.terminate()
            await service.wait()
    return appends, per_statement


@dataclass(frozen=True)
class Round:
    """One measurement of each: the records service, the floor and raw inserts."""

    appends: HttpAppends
    per_statement: float
    floor: HttpAppends
    raw: float
    raw_cpu: CpuSample | None
    backwards: bool  # measured raw, floor, service

    @property
    def order(self) -> str:
        return "raw, floor, service" if self.backwards else "service, floor, raw"


async def measure_round(database_url: str, env: dict[str, str], token: str, clients: int,
                        seconds: float, processes: int, *, backwards: bool) -> Round:
    """The three measurements, in the order service, floor, raw, or ``backwards``: the
    machine's speed drifts within minutes, and a drift would otherwise favour one of them
    in every round."""
    async def service() -> tuple[HttpAppends, float]:
        return await measure(RECORDS, env, token, clients, seconds, processes)

    async def floor() -> tuple[HttpAppends, float]:
        return await measure(FLOOR, env, token, clients, seconds, processes)

    async def raw() -> tuple[float, CpuSample | None]:
        return await raw_insert_rate(database_url, clients, seconds)

    if backwards:
        raw_rate, raw_cpu = await raw()
        floor_appends, _ = await floor()
        appends, per_statement = await service()
    else:
        appends, per_statement = await service()
        floor_appends, _ = await floor()
        raw_rate, raw_cpu = await raw()
    return Round(appends, per_statement, floor_appends, raw_rate, raw_cpu, backwards)


async def main(seconds: float, clients: int, processes: int, rounds: int) -> None:
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            secret = secrets.token_urlsafe(32)
            env = {**os.environ, "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": secret,
                   "CASETRAIL_LOG_LEVEL": "warning", "CASETRAIL_DB_POOL_MAX": str(clients)}
            token = issue_token(secret, sub="cm-bench", role="case_manager", agency="bench")
            measured = [await measure_round(database_url, env, token, clients, seconds,
                                            processes, backwards=n % 2 == 1)
                        for n in range(rounds)]
    print(f"clients: {clients}, service processes: {processes},"
          f" seconds per measurement: {seconds}")
    for n, one in enumerate(measured, 1):
        if rounds > 1:
            print(f"\nround {n} of {rounds} ({one.order})")
        print_round(one)
    if rounds > 1:
        print_spread(measured)


def print_round(one: Round) -> None:
    appends, floor, raw = one.appends, one.floor, one.raw
    print(f"{'measurement':<44}{'rate/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'raw asyncpg insert (1 row/tx)':<44}{raw:>10.0f}{'':>10}{'':>10}")
    for label, http in (("HTTP append (POST …/notes)", appends),
                        ("floor: aiohttp + 1 INSERT (bench/floor_app)", floor)):
        print(f"{label:<44}{http.rate:>10.0f}"
              f"{percentile(http.latencies, 0.5) * 1000:>10.1f}"
              f"{percentile(http.latencies, 0.99) * 1000:>10.1f}")
    print(f"ratio HTTP/raw: {appends.rate / raw:.1%}   floor/raw: {floor.rate / raw:.1%}"
          f"   HTTP/floor: {appends.rate / floor.rate:.1%}"
          f"\nnon-201 answers: {appends.errors} (floor: {floor.errors})"
          f"\nappends per statement (mean of one process, incl. warm-up):"
          f" {one.per_statement:.1f}")
    print_cpu(appends.cpu_ms, floor.cpu_ms, one.raw_cpu)


def print_spread(measured: list[Round]) -> None:
    """Each ratio's median and range over the rounds."""
    print("\nover the rounds: median (lowest to highest)")
    for label, ratios in (
            ("HTTP/raw", [r.appends.rate / r.raw for r in measured]),
            ("floor/raw", [r.floor.rate / r.raw for r in measured]),
            ("HTTP/floor", [r.appends.rate / r.floor.rate for r in measured])):
        print(f"{label:<12}{statistics.median(ratios):>8.1%}"
              f"  ({min(ratios):.1%} to {max(ratios):.1%})")
    print(f"{'appends/s':<12}{statistics.median(r.appends.rate for r in measured):>8.0f}"
          f"  ({min(r.appends.rate for r in measured):.0f}"
          f" to {max(r.appends.rate for r in measured):.0f})")


def print_cpu(http: CpuSample | None, floor: CpuSample | None, raw: CpuSample | None) -> None:
    """Where one operation's CPU goes, over all cores (the rest: PostgreSQL and the kernel)."""
    if http is None or floor is None or raw is None:
        return
    print(f"\nCPU ms per operation{'machine':>18}{'service':>10}{'loadgen':>10}{'rest':>10}")
    for label, sample in (("HTTP append", http), ("floor", floor)):
        rest = sample.machine - sample.process - sample.own
        print(f"{label:<20}{sample.machine:>18.3f}{sample.process:>10.3f}{sample.own:>10.3f}"
              f"{rest:>10.3f}")
    print(f"{'raw insert':<20}{raw.machine:>18.3f}{'':>10}{raw.own:>10.3f}"
          f"{raw.machine - raw.own:>10.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1,
                        help="records processes sharing the port (casetrail records --reuse-port)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each this many times, every other round in reverse"
                             " order, and print each ratio's median and range")
    options = parser.parse_args()
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main(options.seconds, options.clients, options.processes, options.rounds))
