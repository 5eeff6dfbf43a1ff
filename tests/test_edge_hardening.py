"""The HTTP edge and token checks a security audit hardened: bounded request heads (and chunked
bodies' trailers), headers that keep answers out of caches and browsers' guesses, tokens for
another audience or signed with a shared key, a doubled Authorization header, and a public
readiness check that names no internal address."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from multidict import CIMultiDict

from services.common.http import protect_answer
from services.common.server import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_HEAD_BYTES,
)
from services.common.settings import ConfigurationError
from services.notifier.feed import FeedError
from services.records.http.app import create_app
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer, free_port, make_settings
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig
from tests.records_api import CaseApi, event_count
from tests.test_server import _exchange

_HEAD = b"GET /healthz HTTP/1.1\r\nHost: casetrail\r\n"
# what a browser sends and proxies and tracing add on the way: the limits must never bite these
_ORDINARY = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Accept: application/json", "Accept-Language: en-GB,en;q=0.9",
    "Accept-Encoding: gzip, deflate", "Cache-Control: no-cache", "Pragma: no-cache",
    "Sec-Fetch-Site: same-origin", "Sec-Fetch-Mode: cors", "Sec-Fetch-Dest: empty",
    'Sec-Ch-Ua: "Chromium";v="126"', "Sec-Ch-Ua-Mobile: ?0", 'Sec-Ch-Ua-Platform: "Linux"',
    "Referer: https://casetrail.example/cases", "Origin: https://casetrail.example",
    "Cookie: " + "session=" + "c" * 3000, "DNT: 1", "Priority: u=1, i",
    "X-Forwarded-For: 203.0.113.7, 10.0.0.2", "X-Forwarded-Proto: https",
    "X-Forwarded-Host: casetrail.example", "X-Forwarded-Port: 443", "X-Real-IP: 203.0.113.7",
    "Forwarded: for=203.0.113.7;proto=https", "Via: 1.1 ingress", "X-Request-Id: edge-1",
    "Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "Tracestate: vendor=" + "t" * 500, "Baggage: tenant=agency-a", "X-B3-TraceId: 4bf92f35",
    "X-B3-SpanId: 00f067aa", "X-B3-Sampled: 1", "X-Envoy-Attempt-Count: 1",
    "X-Envoy-External-Address: 203.0.113.7", "X-Amzn-Trace-Id: Root=1-5759e988",
]


def _malformed(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert status == 400, body
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    problem: dict[str, Any] = json.loads(body)
    assert problem["type"] == "https://casetrail.dev/problems/malformed-request"
    return problem


# X1: one request's headers are bounded in number and in bytes


async def test_more_headers_than_the_limit_are_refused_before_the_request_ends(
        served_records: tuple[int, asyncpg.Pool]) -> None:
    """aiohttp's default let 128 headers of 64 KiB each through: 8 MiB held per request. The
    head is never finished here; the answer comes anyway."""
    port, pool = served_records
    before = await event_count(pool)
    many = b"".join(b"X-Filler-%d: a\r\n" % n for n in range(MAX_HEADERS + 2))
    problem = _malformed(*await _exchange(port, _HEAD + many))
    assert problem["detail"] == "Too many headers received"
    assert await event_count(pool) == before


async def test_headers_adding_up_past_the_limit_are_refused_before_they_are_read(
        served_records: tuple[int, asyncpg.Pool]) -> None:
    """Each header under the per-header limit, together past the request's: refused once the
    limit is reached, without waiting for (or holding) the rest."""
    port, _ = served_records
    field = b"a" * (MAX_HEADER_BYTES - 100)
    padding = b"".join(b"X-Padding-%d: %s\r\n" % (n, field)
                       for n in range(MAX_REQUEST_HEAD_BYTES // len(field) + 1))
    assert len(padding) > MAX_REQUEST_HEAD_BYTES
    problem = _malformed(*await _exchange(port, _HEAD + padding))  # no blank line: unfinished
    assert problem["detail"] == (f"the request headers came to more than"
                                 f" {MAX_REQUEST_HEAD_BYTES} bytes")


async def test_trailers_of_a_chunked_body_adding_up_past_the_limit_are_refused(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    """Trailers (headers after a chunked body) are read like headers, each up to the
    per-header limit: 90 of them held 11 MiB per connection, past the bound on the head."""
    port, pool = served_records
    before = await event_count(pool)
    field = b"a" * (MAX_HEADER_BYTES - 100)
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (n, field)
                        for n in range(MAX_REQUEST_HEAD_BYTES // len(field) + 1))
    request = (b"POST /v1/cases HTTP/1.1\r\nHost: casetrail\r\nAuthorization: Bearer %s\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\n" % token().encode()) + trailers  # never finished
    status, _, body = await _exchange(port, request)
    assert status == 400, body
    problem = json.loads(body)
    assert problem["type"].endswith("/malformed-body")
    assert problem["detail"] == (f"the body could not be read: the request carried more than"
                                 f" {MAX_REQUEST_HEAD_BYTES} bytes besides its body")
    assert await event_count(pool) == before
    # answered before its body was read (no token): the connection ends, no error is logged
    anonymous = request.replace(b"Authorization: Bearer ", b"X-Unused: ")
    status, _, body = await _exchange(port, anonymous)
    assert status == 401, body
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}]


async def test_a_chunked_body_is_still_taken(served_records: tuple[int, asyncpg.Pool],
                                             token: TokenFactory) -> None:
    port, _ = served_records
    opening = json.dumps({"participant": {"name": "Jordan Rivera"}, "case_manager": "cm-1",
                          "risk_level": "moderate"}).encode()

    async def in_small_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(opening), 16):
            yield opening[start:start + 16]

    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/v1/cases", data=in_small_chunks(),
            headers={**bearer(token()), "Content-Type": "application/json"}) as answer:
        assert answer.status == 201, await answer.text()
    assert answer.request_info.headers.get("Transfer-Encoding") == "chunked"


async def test_a_300_case_auditor_token_still_fits_beside_a_browsers_and_proxies_headers(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    port, _ = served_records
    cases = [str(uuid.uuid4()) for _ in range(300)]
    auditor = token(role="auditor", sub="court-1", cases=cases)
    lines = [f"Authorization: Bearer {auditor}", *_ORDINARY]
    request = (f"GET /v1/cases/{cases[0]} HTTP/1.1\r\nHost: casetrail\r\nConnection: close\r\n"
               + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()
    status, _, body = await _exchange(port, request)
    assert status == 404, body  # read as the auditor, who may see it: it does not exist
    assert json.loads(body)["type"].endswith("/not-found")


async def test_a_request_after_a_long_body_is_not_counted_as_head(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """The bound counts a request's head, not its body: a body past the head limit, then a
    second request on the same connection, are both answered."""
    port, _ = served_records
    note = json.dumps({"text": "n" * (MAX_REQUEST_HEAD_BYTES * 2)}).encode()
    first = (b"POST /v1/cases/%s/notes HTTP/1.1\r\nHost: casetrail\r\n"
             b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % (str(uuid.uuid4()).encode(), token().encode(),
                                              len(note))) + note
    second = _HEAD + b"Connection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first + second)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"422", b"200"], answer[:600]  # the note is too long for a note


# X2: no answer is cached or sniffed; HTML pages carry a content security policy


def _protected(response: aiohttp.ClientResponse) -> None:
    assert response.headers.get("Cache-Control") == "no-store", response.url
    assert response.headers.get("X-Content-Type-Options") == "nosniff", response.url


async def test_every_answer_of_the_records_service_is_kept_out_of_caches(
        client: TestClient, cm: CaseApi, token: TokenFactory) -> None:
    case_id = await cm.open_case()
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    reads = {f"/v1/cases/{case_id}": bearer(cm.token),
             f"/v1/cases/{case_id}/history": bearer(cm.token),
             "/v1/cases": supervisor, "/v1/access-log": supervisor,
             f"/v1/cases/{uuid.uuid4()}": bearer(cm.token),  # a problem: 404
             "/v1/cases?limit=0": supervisor,  # a problem: 422
             "/healthz": {}, "/openapi.json": {}, "/metrics": {}}
    for path, headers in reads.items():
        response = await client.get(path, headers=headers)
        await response.read()
        _protected(response)
    refused = await client.get("/v1/cases")  # 401 from the authentication middleware
    assert refused.status == 401
    _protected(refused)


async def test_a_streamed_export_is_kept_out_of_caches(
        client: TestClient, cm: CaseApi) -> None:
    case_id = await cm.open_case()
    async with client.get(f"/v1/cases/{case_id}/export", headers=bearer(cm.token)) as response:
        assert response.status == 200
        _protected(response)
        await response.read()


async def test_a_handlers_own_cache_control_is_kept() -> None:
    async def cached(request: web.Request) -> web.Response:
        return web.Response(text="{}", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.on_response_prepare.append(protect_answer)
    app.router.add_get("/cached", cached)
    async with TestClient(TestServer(app)) as test_client:
        response = await test_client.get("/cached")
        assert response.headers["Cache-Control"] == "max-age=60"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def _policy(response: aiohttp.ClientResponse) -> dict[str, str]:
    raw = response.headers.get("Content-Security-Policy", "")
    return {name: value for name, _, value in
            (part.strip().partition(" ") for part in raw.split(";") if part.strip())}


async def test_the_docs_page_carries_a_content_security_policy(client: TestClient) -> None:
    response = await client.get("/docs")
    assert response.content_type == "text/html"
    _protected(response)
    policy = _policy(response)
    assert policy["default-src"] == "'none'"  # no script, no fetch, no plugin
    assert policy["frame-ancestors"] == "'none'"
    assert "script-src" not in policy
    json_answer = await client.get("/openapi.json")
    assert "Content-Security-Policy" not in json_answer.headers


async def test_the_notifiers_answers_and_mail_page_are_protected(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, tmp_path: Path,
        token: TokenFactory) -> None:
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_DEV_MAIL_DIR=str(tmp_path))
    (tmp_path / "1700000000000000000-1.eml").write_bytes(
        b"From: a@example.org\r\nTo: jo@example.org\r\nSubject: A small win\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<style>p{color:#555}</style><p>Well done</p>\r\n")
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    for path, headers in {"/v1/notifications": supervisor, "/v1/schedule": supervisor,
                          "/v1/notifications/1": {}, "/readyz": {}}.items():
        response = await rig.client.get(path, headers=headers)
        await response.read()
        _protected(response)
    for page in ("/mail", "/mail?file=1700000000000000000-1.eml"):
        response = await rig.client.get(page)
        assert (response.status, response.content_type) == (200, "text/html"), page
        _protected(response)
        policy = _policy(response)
        assert policy["default-src"] == "'none'"
        # the message is shown in a sandboxed srcdoc frame, which inherits this policy: its
        # <style>, and the frame's own style attribute, need inline styles
        assert policy["style-src"] == "'unsafe-inline'"
    raw = await rig.client.get("/mail?file=1700000000000000000-1.eml&raw=1")
    assert raw.content_type == "text/plain"
    _protected(raw)


# X3: a token for another application is refused even where no audience is configured


async def test_a_token_naming_an_audience_is_refused_where_none_is_configured(
        client: TestClient, token: TokenFactory) -> None:
    foreign = token(role="supervisor", sub="sup-1", extra={"aud": "some-other-app"})
    response = await client.get("/v1/cases", headers=bearer(foreign))
    problem = await response.json()
    assert response.status == 401, problem
    assert problem["detail"] == ("token names an audience, and this service is configured with"
                                 " none: set CASETRAIL_JWT_AUDIENCE")
    plain = token(role="supervisor", sub="sup-1")
    assert (await client.get("/v1/cases", headers=bearer(plain))).status == 200


async def test_a_configured_audience_still_takes_its_own_tokens(
        make_records_client: ClientFactory, database_url: str, token: TokenFactory) -> None:
    client = await make_records_client(database_url, CASETRAIL_JWT_AUDIENCE="casetrail")
    ours = token(role="supervisor", sub="sup-1", extra={"aud": "casetrail"})
    assert (await client.get("/v1/cases", headers=bearer(ours))).status == 200
    theirs = token(role="supervisor", sub="sup-1", extra={"aud": "some-other-app"})
    assert (await client.get("/v1/cases", headers=bearer(theirs))).status == 401


# X4: the JWKS file holds public keys only


def _encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_symmetric_key_in_the_jwks_file_stops_the_start(database_url: str,
                                                          tmp_path: Path) -> None:
    """An HS256 token signed with an `oct` key of the identity provider's file was accepted:
    whoever can read that file (every pod, the deployment) could sign any token."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa-1"}
    shared = {"kty": "oct", "kid": "shared-1", "k": _encoded(b"s" * 32)}
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public, shared]}))
    with pytest.raises(ConfigurationError, match="'shared-1'") as refused:
        create_app(make_settings(database_url, CASETRAIL_JWT_SECRET=None,
                                 CASETRAIL_JWKS_FILE=jwks_file))
    assert "CASETRAIL_JWKS_FILE" in str(refused.value)
    jwks_file.write_text(json.dumps({"keys": [public]}))
    create_app(make_settings(database_url, CASETRAIL_JWT_SECRET=None,
                             CASETRAIL_JWKS_FILE=jwks_file))  # public keys alone: starts


# X5: two Authorization headers are ambiguous


async def test_two_authorization_headers_are_a_400_problem(
        client: TestClient, token: TokenFactory) -> None:
    good = f"Bearer {token(role='supervisor', sub='sup-1')}"
    for pair in ((good, "Bearer junk"), ("Bearer junk", good), (good, good)):
        headers = CIMultiDict([("Authorization", pair[0]), ("Authorization", pair[1])])
        response = await client.get("/v1/cases", headers=headers)
        problem = await response.json()
        assert response.status == 400, problem
        assert problem["type"].endswith("/bad-authorization")
        assert "Authorization" in problem["detail"]
    assert (await client.get("/v1/cases", headers={"Authorization": good})).status == 200


async def test_a_write_with_two_authorization_headers_writes_nothing(
        cm: CaseApi, fresh_database_url: str, token: TokenFactory) -> None:
    case_id = await cm.open_case()
    good = f"Bearer {token()}"  # the owning case manager's
    conn = await asyncpg.connect(fresh_database_url)
    try:
        before = await event_count(conn)
        response = await cm.client.post(
            f"/v1/cases/{case_id}/notes", json={"text": "Met at the library"},
            headers=CIMultiDict([("Authorization", good), ("Authorization", good)]))
        assert response.status == 400
        assert (await response.json())["type"].endswith("/bad-authorization")
        assert await event_count(conn) == before
    finally:
        await conn.close()


# X6: the public readiness check names a category, never an address or a reply's text


async def _feed_check(rig: NotifierRig) -> str:
    response = await rig.client.get("/readyz")
    assert response.status == 503
    check: str = (await response.json())["checks"]["feed"]
    return check


async def test_an_unreachable_feed_shows_on_readiness_without_its_address(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    port = free_port()
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         RECORDS_URL=f"http://127.0.0.1:{port}")
    with pytest.raises(FeedError, match=str(port)):  # the log keeps the detail
        await rig.notifier.subscriber.step(0)
    assert await _feed_check(rig) == "last read failed: feed unreachable"


async def test_a_feed_answering_an_error_shows_its_status_not_its_body(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503, text="pool exhausted at db-primary.internal:5432")

    failing_app = web.Application()
    failing_app.router.add_get("/v1/events", failing)
    failing_records = await aiohttp_client(failing_app)
    rig = await make_rig(aiohttp_client, fresh_database_url, failing_records, smtp, clock)
    with pytest.raises(FeedError, match=r"db-primary\.internal"):
        await rig.notifier.subscriber.step(0)
    assert await _feed_check(rig) == "last read failed: feed answered 503"


async def test_a_feed_refusing_the_token_shows_its_status_not_its_problem(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         RECORDS_TOKEN="not-a-token")
    with pytest.raises(FeedError, match="401"):
        await rig.notifier.subscriber.step(0)
    assert await _feed_check(rig) == "last read failed: feed answered 401"


def _not_the_feeds(failure: str | None) -> bool:
    return failure is not None and not failure.startswith("feed ")


async def test_a_database_failure_while_following_shows_its_kind_not_its_message(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        postgres_server_url: str, records: Records, smtp: SmtpServer,
        clock: FakeClock) -> None:
    """asyncpg's message names the database ('database "…" is not currently accepting
    connections')."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    name = urlsplit(fresh_database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_server_url)
    following = asyncio.create_task(rig.notifier.subscriber.run())
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = $1", name)
        subscriber = rig.notifier.subscriber
        # the records service, on the same database, fails too: wait for the notifier's own
        async with asyncio.timeout(20):
            while not _not_the_feeds(subscriber.last_error):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        failed = str(subscriber.last_error)
        assert name not in failed
        assert failed.startswith("the notifier's database failed (")
        assert failed.endswith("); the log has the details")
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()

