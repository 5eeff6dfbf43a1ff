"""The services as they are started outside tests (ServiceRunner, a real socket): what aiohttp's
own HTTP parser refuses is answered with a problem body too, and long headers fit."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from services.common.server import KEEPALIVE_SECONDS, MAX_HEADER_BYTES, ServiceRunner
from services.notifier.http.app import create_app as create_notifier_app
from tests.conftest import TokenFactory, bearer, serve
from tests.notifier_helpers import notifier_settings
from tests.records_api import event_count


async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the whole answer up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in
               (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


_POST_CASE = b"POST /v1/cases HTTP/1.1\r\nHost: casetrail\r\n"
_SECRET = b"reason=private"  # what a refused request carried, which no answer or log repeats
MALFORMED = {  # name: (request, the problem's detail)
    "method with a control character": (
        b"GE\x01T /healthz?" + _SECRET + b" HTTP/1.1\r\nHost: casetrail\r\n\r\n",
        "Invalid method encountered"),
    "request line past 8 KiB": (
        b"GET /?" + _SECRET + b"a" * 9000 + b" HTTP/1.1\r\nHost: casetrail\r\n\r\n",
        "Got more than 8190 bytes when reading"),
    "header past the limit": (
        b"GET /healthz HTTP/1.1\r\nHost: casetrail\r\nX-Padding: " + _SECRET
        + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n",
        f"Got more than {MAX_HEADER_BYTES} bytes when reading"),
    "header name with a space": (
        b"GET /healthz HTTP/1.1\r\nBad Name: " + _SECRET + b"\r\n\r\n",
        "Invalid header token"),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                        "Received HTTPS traffic on an HTTP port"),
    "body in an encoding it cannot decode": (
        _POST_CASE + b"Content-Type: application/json\r\nContent-Encoding: br\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        "Can not decode content-encoding: brotli (br)"),
}


@pytest.mark.parametrize(("request_bytes", "detail"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_what_the_http_parser_refuses_is_a_problem_and_writes_nothing(
        served_records: tuple[int, asyncpg.Pool], request_bytes: bytes, detail: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    port, pool = served_records
    before = await event_count(pool)
    status, headers, body = await _exchange(port, request_bytes)
    assert status == 400
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem == {"type": "https://casetrail.dev/problems/malformed-request",
                       "title": "Bad request", "status": 400, "detail": detail, "errors": []}
    assert await event_count(pool) == before
    logged = capsys.readouterr()
    assert "malformed request refused" in logged.out
    assert _SECRET.decode() not in logged.out + logged.err


async def test_a_malformed_request_is_logged_as_the_clients_not_as_an_error(
        served_records: tuple[int, asyncpg.Pool], caplog: pytest.LogCaptureFixture) -> None:
    port, _ = served_records
    await _exchange(port, MALFORMED["header name with a space"][0])
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}]


async def test_the_server_still_serves_after_a_malformed_request(
        served_records: tuple[int, asyncpg.Pool]) -> None:
    port, _ = served_records
    await _exchange(port, MALFORMED["not HTTP at all"][0])
    status, _, body = await _exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: casetrail\r\nConnection: close\r\n\r\n")
    assert status == 200, body


async def test_a_token_that_is_not_utf8_is_401_not_500(
        served_records: tuple[int, asyncpg.Pool]) -> None:
    """aiohttp reads header bytes that are not UTF-8 as lone surrogates, on which PyJWT raised
    an error of its own kind (500)."""
    port, _ = served_records
    status, headers, body = await _exchange(
        port, b"GET /v1/cases HTTP/1.1\r\nHost: casetrail\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe.e30.x\r\n\r\n")
    assert status == 401, body
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["type"].endswith("/unauthorized")


async def test_an_auditor_token_naming_300_cases_fits_in_a_header(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """A court order can name hundreds of cases; aiohttp's default (8190 bytes) refused the
    token at about 150."""
    port, _ = served_records
    cases = [str(uuid.uuid4()) for _ in range(300)]
    auditor = token(role="auditor", sub="court-1", cases=cases)
    assert len(auditor) > 8190
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/v1/cases/{cases[0]}", headers=bearer(auditor)) as answer:
        body: dict[str, Any] = await answer.json(content_type=None)
    assert answer.status == 404, body  # read as the auditor, who may see it: it does not exist
    assert body["type"].endswith("/not-found")


async def test_the_notifier_answers_a_malformed_request_with_a_problem(
        fresh_database_url: str) -> None:
    settings = notifier_settings(fresh_database_url, "http://127.0.0.1:9", smtp_port=9)
    runner, port = await serve(create_notifier_app(settings))
    try:
        status, headers, body = await _exchange(port, MALFORMED["request line past 8 KiB"][0])
    finally:
        await runner.cleanup()
    assert status == 400
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["type"].endswith("/malformed-request")


async def test_an_idle_client_is_let_go_after_75_seconds_as_run_app_did() -> None:
    """A bare AppRunner keeps an idle keep-alive connection for an hour."""
    runner = ServiceRunner(web.Application())
    await runner.setup()
    try:
        assert runner.server is not None
        handler = runner.server()
        assert handler.keepalive_timeout == KEEPALIVE_SECONDS == 75.0
    finally:
        await runner.cleanup()
