"""Audit s21: HTTP-protocol edges on both services, over a real socket as they are served
(ServiceRunner) and through aiohttp's test server.

The contract (../shared/design.md, Security): "every bad input gets a clear 4xx problem and
writes nothing; the server never answers 500 to any input"; README: errors are RFC 9457
problem bodies, a query parameter a /v1 route does not take is refused, the operations routes
ignore queries, the plan and the operations routes answer HEAD; docs/decisions/0001: a method
a path does not take is a 405 problem with ``Allow``. Beyond that, RFC 9110/9112 as any
production HTTP server keeps them: pipelined requests answered in order, a request carrying
``Connection: close`` answered before the close, no answer in a protocol version the server
does not speak.

Probed here: methods (HEAD, OPTIONS, unknown ones), paths (slashes, dot segments, encoded
slashes and braces, bytes that are not UTF-8, NUL, 8 and 64 KB), query strings (repeated and
empty names, ``;``, ``+``, unknown names, past the request line's limit), headers
(``bearer`` in lower case, Content-Length spelled oddly or twice, Content-Type variants),
bodies in UTF-16/32 and numbers where text is expected, and connection use (pipelining,
HTTP/1.0 without Host, ``Connection: close``, ``Upgrade``).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.common.http import Api
from services.notifier.http import routes as notifier_routes  # noqa: F401  (its routes)
from services.notifier.http.app import api as notifier_api
from services.notifier.http.app import create_app as create_notifier_app
from services.records.http import routes as records_routes  # noqa: F401  (its routes)
from services.records.http.app import api as records_api
from tests.conftest import TokenFactory, bearer, serve
from tests.notifier_helpers import NotifierRig, notifier_settings
from tests.records_api import CaseApi, event_count

SERVICES = ["records", "notifier"]
OPENING = {
    "participant": {"name": "Jordan Rivera"},
    "case_manager": "cm-1",
    "risk_level": "moderate",
}
PREFERENCES = {
    "email": "cm-1@example.org",
    "delivery": "immediate",
    "timezone": "UTC",
    "celebrations": True,
}
CASE_ID = "6d1f7c52-1111-4b7e-9a0e-3c9a4f1e2d10"  # a well-formed id no case has


# --------------------------------------------------------------------------------------------
# Raw HTTP over a socket
# --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        """The answer's problem body, checked for its shape (RFC 9457, as the README says)."""
        assert self.headers.get("content-type", "").startswith("application/problem+json"), (
            self.status,
            self.headers,
            self.body[:300],
        )
        problem: dict[str, Any] = json.loads(self.body)
        assert problem["status"] == self.status, problem
        assert problem["type"], problem
        assert problem["title"], problem
        return problem


@dataclass
class Exchange:
    answers: list[Answer]
    closed: bool  # the server closed the connection (else it still waited for more)
    leftover: bytes


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> Exchange:
    """Send ``data`` in one write; read until the server closes or ``wait`` passes quietly."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        writer.close()
    answers, leftover = parse_answers(received)
    return Exchange(answers, closed, leftover)


def parse_answers(raw: bytes) -> tuple[list[Answer], bytes]:
    answers = []
    rest = raw
    while rest.startswith(b"HTTP/") and b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        length = int(headers.get("content-length", "0"))
        body, rest = rest[:length], rest[length:]
        version, status = status_line.split()[:2]
        if int(status) >= 200:
            answers.append(Answer(version, int(status), headers, body))
    return answers, rest


def get(path: str, *extra: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"GET "
        + path.encode()
        + b" "
        + version
        + b"\r\nHost: casetrail\r\n"
        + b"".join(extra)
        + b"\r\n"
    )


def header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode()


CLOSE = header("Connection", "close")


# --------------------------------------------------------------------------------------------
# Both services on a real socket, with what a write changes
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def served_notifier(fresh_database_url: str) -> AsyncIterator[tuple[int, asyncpg.Pool]]:
    """The notifier as it is served (ServiceRunner, a real socket), its loops stopped."""
    settings = notifier_settings(fresh_database_url, "http://127.0.0.1:9", smtp_port=9)
    runner, port = await serve(create_notifier_app(settings, background=False))
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    yield port, pool
    await pool.close()
    await runner.cleanup()


@dataclass
class Served:
    name: str
    port: int
    pool: asyncpg.Pool
    token: str  # the case manager cm-1

    @property
    def auth(self) -> bytes:
        return header("Authorization", f"Bearer {self.token}")

    async def state(self) -> Any:
        """What a refused write must leave as it was."""
        if self.name == "records":
            return await event_count(self.pool)
        directory = await self.pool.fetchval("SELECT count(*) FROM notifier.directory")
        history = await self.pool.fetchval("SELECT count(*) FROM notifier.history")
        return int(directory), int(history)

    @property
    def write_status(self) -> int:
        return 201 if self.name == "records" else 200

    def write(
        self, *extra: bytes, body: bytes | None = None, auth: bool = True, length: str | None = None
    ) -> bytes:
        """The service's ordinary write: records opens a case, the notifier saves cm-1's own
        preferences."""
        if body is None:
            body = json.dumps(OPENING if self.name == "records" else PREFERENCES).encode()
        line = (
            b"POST /v1/cases HTTP/1.1\r\n"
            if self.name == "records"
            else b"PUT /v1/preferences/cm-1 HTTP/1.1\r\n"
        )
        return (
            line
            + b"Host: casetrail\r\nContent-Type: application/json\r\n"
            + (self.auth if auth else b"")
            + b"".join(extra)
            + header("Content-Length", length or str(len(body)))
            + b"\r\n"
            + body
        )

    @property
    def read_path(self) -> str:
        """An authenticated read the case manager may make, answering 200."""
        return "/v1/cases" if self.name == "records" else "/v1/notifications"


@pytest.fixture(params=SERVICES)
def served(request: pytest.FixtureRequest, token: TokenFactory, fresh_database_url: str) -> Served:
    port, pool = request.getfixturevalue(f"served_{request.param}")
    return Served(request.param, port, pool, token())


def assert_app_problem(answer: Answer) -> dict[str, Any]:
    """A problem the application answered: it carries the request id, as its header does."""
    problem = answer.problem()
    assert problem.get("request_id") == answer.headers.get("x-request-id"), (
        problem,
        answer.headers,
    )
    assert problem["request_id"], problem
    return problem


# --------------------------------------------------------------------------------------------
# C: connection use
# --------------------------------------------------------------------------------------------


async def test_two_requests_pipelined_on_one_connection_are_answered_in_order(
    served: Served,
) -> None:
    """A write and then a read sent together on one keep-alive connection: both answered, in
    the order sent, and the write made once."""
    before = await served.state()
    ex = await exchange(served.port, served.write() + get(served.read_path, served.auth, CLOSE))
    assert [a.status for a in ex.answers] == [served.write_status, 200], ex
    assert ex.answers[1].body.startswith(b"{"), ex.answers[1]
    assert ex.closed
    assert await served.state() != before


async def test_the_body_of_a_write_refused_before_it_is_read_is_not_taken_as_a_request(
    served: Served,
) -> None:
    """A write without a token is refused before its body is read; the body, which spells a
    whole request, is skipped by its Content-Length and never answered as one. The request
    after it is."""
    before = await served.state()
    hidden = get("/healthz")
    ex = await exchange(served.port, served.write(auth=False, body=hidden) + get("/readyz", CLOSE))
    assert [a.status for a in ex.answers][:1] == [401], ex
    assert len(ex.answers) == 2, ex
    assert_app_problem(ex.answers[0])
    assert b'"checks"' in ex.answers[1].body, ex.answers[1]  # /readyz's, not /healthz's
    assert await served.state() == before


FOLLOWERS = {
    "nothing": b"",
    "a stray byte": b"x",
    "another request": get("/healthz"),
}


async def test_a_write_with_connection_close_is_answered_then_the_connection_closes(
    served: Served,
) -> None:
    """RFC 9112 9.6: a server that receives "close" closes the connection after it sends the
    final response to the request that carried it."""
    before = await served.state()
    ex = await exchange(served.port, served.write(CLOSE))
    assert [a.status for a in ex.answers] == [served.write_status], ex
    assert ex.answers[0].headers.get("connection", "").lower() == "close", ex.answers[0]
    assert ex.closed
    assert await served.state() != before


TRAILING = {name: follower for name, follower in FOLLOWERS.items() if follower}


@pytest.mark.parametrize("follower", TRAILING.values(), ids=TRAILING.keys())
async def test_bytes_sent_after_a_closing_write_in_one_read_refuse_it_and_write_nothing(
    served: Served, follower: bytes
) -> None:
    """A client must send nothing after a request carrying "close" (RFC 9112 9.6). aiohttp's
    parser (llhttp, strict) refuses such bytes when they come in the same read as that
    request, and drops the request with them (a known limit, decision 0001): the answer is a
    400 problem, nothing is written, and the connection closes. Never half a write."""
    before = await served.state()
    ex = await exchange(served.port, served.write(CLOSE) + follower)
    assert [a.status for a in ex.answers] == [400], ex
    assert ex.answers[0].problem()["type"].endswith("/malformed-request"), ex.answers[0]
    assert ex.closed
    assert await served.state() == before


async def test_an_http_1_0_request_without_host_is_answered_then_closed(served: Served) -> None:
    """HTTP/1.0 needs no Host, and its connection closes after the answer unless it asks for
    keep-alive: the request is answered in HTTP/1.x."""
    ex = await exchange(served.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert [a.status for a in ex.answers] == [200], ex
    assert ex.answers[0].version in {"HTTP/1.0", "HTTP/1.1"}, ex.answers[0]
    assert json.loads(ex.answers[0].body) == {"status": "ok"}
    assert ex.closed


async def test_http_1_0_keep_alive_serves_a_second_request(served: Served) -> None:
    first = get("/healthz", header("Connection", "keep-alive"), version=b"HTTP/1.0")
    ex = await exchange(served.port, first + get("/readyz", version=b"HTTP/1.0"))
    assert [a.status for a in ex.answers][:1] == [200], ex
    assert len(ex.answers) == 2, ex
    assert ex.closed


H2C = (
    header("Connection", "Upgrade, HTTP2-Settings")
    + header("Upgrade", "h2c")
    + header("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")
)


async def test_a_request_offering_an_upgrade_is_answered_then_its_connection_closed(
    served: Served,
) -> None:
    """``curl --http2`` on an http:// address offers ``Upgrade: h2c``. The services switch to
    no other protocol: the request is answered in HTTP/1.1 and the connection closed
    (aiohttp's parser, declining the upgrade, drops what followed the request in the same
    read, so a request pipelined after it hung unanswered until its client gave up; closed,
    the connection tells the client to send it again)."""
    ex = await exchange(served.port, get("/healthz", H2C) + get("/readyz", CLOSE))
    assert [a.status for a in ex.answers] == [200], ex
    assert ex.answers[0].version == "HTTP/1.1", ex.answers[0]
    assert ex.answers[0].headers.get("connection", "").lower() == "close", ex.answers[0]
    assert ex.closed


async def test_a_write_offering_an_upgrade_is_written_once_then_its_connection_closed(
    served: Served,
) -> None:
    before = await served.state()
    ex = await exchange(served.port, served.write(H2C) + get("/healthz", CLOSE))
    assert [a.status for a in ex.answers] == [served.write_status], ex
    assert ex.closed
    assert await served.state() != before


VERSIONS = {
    "HTTP/2.0": get("/healthz", CLOSE, version=b"HTTP/2.0"),
    "HTTP/3.0": get("/healthz", CLOSE, version=b"HTTP/3.0"),
    "HTTP/1.2": get("/healthz", CLOSE, version=b"HTTP/1.2"),
    "no version (HTTP/0.9)": b"GET /healthz\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", VERSIONS.values(), ids=VERSIONS.keys())
async def test_a_request_line_of_another_http_version_gets_an_http_1_answer(
    served: Served, request_bytes: bytes
) -> None:
    """RFC 9110 2.5: a server "MUST NOT send a version to which it is not conformant"; it
    answers with the highest version it speaks (HTTP/1.1) or refuses the request (a 4xx, or
    505 HTTP Version Not Supported), as a problem. An answer whose status line reads
    "HTTP/2.0 200 OK" in HTTP/1 framing is neither."""
    ex = await exchange(served.port, request_bytes)
    assert len(ex.answers) == 1, ex
    answer = ex.answers[0]
    assert answer.version in {"HTTP/1.0", "HTTP/1.1"}, (answer.version, answer.status)
    if answer.status >= 400:
        assert answer.status in {400, 505}, answer
        answer.problem()
    else:
        assert answer.status == 200, answer


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
async def test_a_write_of_another_http_version_is_refused_and_writes_nothing(
    served: Served, version: bytes
) -> None:
    before = await served.state()
    ex = await exchange(served.port, served.write().replace(b"HTTP/1.1", version, 1))
    assert [a.status for a in ex.answers] == [400], ex
    assert ex.answers[0].version in {"HTTP/1.0", "HTTP/1.1"}, ex.answers[0]
    assert ex.answers[0].problem()["type"].endswith("/malformed-request"), ex.answers[0]
    assert ex.closed
    assert await served.state() == before


# --------------------------------------------------------------------------------------------
# M: methods
# --------------------------------------------------------------------------------------------


def _concrete(path: str, case_id: str) -> str:
    """A route's path with its placeholders filled: the case, or well-formed ids none has."""
    path = path.replace("{case_id}", case_id).replace("{user}", "cm-1")
    path = path.replace("{token}", "not-a-signed-link")
    return re.sub(r"{\w+_id}", CASE_ID, path)


def _methods_by_path(api: Api) -> dict[str, set[str]]:
    taken: dict[str, set[str]] = {}
    for op in api.operations:
        taken.setdefault(op.path, set()).add(op.method)
        if op.head:
            taken[op.path].add("HEAD")
    return taken


@dataclass
class AppClient:
    """A service through aiohttp's test server: its client and API, a supervisor's headers,
    what a refused request must leave as it was, and a case id for the paths."""

    client: TestClient
    api: Api
    headers: dict[str, str]
    state: Callable[[], Awaitable[Any]]
    case: Callable[[], Awaitable[str]]


@pytest.fixture(params=SERVICES)
def app_client(
    request: pytest.FixtureRequest, token: TokenFactory, fresh_database_url: str
) -> AppClient:
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    if request.param == "records":
        cm: CaseApi = request.getfixturevalue("cm")
        pool: asyncpg.Pool = request.getfixturevalue("fresh_pool")

        async def records_state() -> Any:
            return await event_count(pool)

        return AppClient(cm.client, records_api, supervisor, records_state, cm.open_case)
    rig: NotifierRig = request.getfixturevalue("rig")

    async def notifier_state() -> Any:
        pool = rig.notifier.pool
        return (
            await pool.fetchval("SELECT count(*) FROM notifier.directory"),
            await pool.fetchval("SELECT count(*) FROM notifier.history"),
            await pool.fetchval("SELECT count(*) FROM notifier.notifications"),
        )

    async def no_case() -> str:
        return CASE_ID

    return AppClient(rig.client, notifier_api, supervisor, notifier_state, no_case)


OTHER_METHODS = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "PROPFIND",
    "TRACE",
    "SEARCH",
]


async def test_every_route_answers_a_method_it_does_not_take_with_405_allow_and_a_problem(
    app_client: AppClient,
) -> None:
    """decisions/0001: a method a path does not take is 405 with ``Allow``; the Allow header
    lists exactly what the route takes (HEAD where it answers HEAD), and the body is a
    problem carrying the request id. Nothing is written."""
    client, api, headers = app_client.client, app_client.api, app_client.headers
    case_id = await app_client.case()
    before = await app_client.state()
    for path, taken in _methods_by_path(api).items():
        url = _concrete(path, case_id)
        for method in OTHER_METHODS:
            if method in taken:
                continue
            response = await client.request(method, url, headers=headers)
            body = await response.read()
            shown = (method, path, response.status, body[:200])
            assert response.status == 405, shown
            allowed = {m.strip() for m in response.headers.get("Allow", "").split(",")}
            assert allowed == taken, (shown, response.headers.get("Allow"))
            assert response.headers["Content-Type"].startswith("application/problem+json")
            if method != "HEAD":  # a HEAD answer has no body
                problem = json.loads(body)
                assert problem["status"] == 405, shown
                assert problem["request_id"] == response.headers["X-Request-Id"], shown
                assert method in problem["detail"], shown
    assert await app_client.state() == before


async def test_head_answers_as_get_does_without_a_body(app_client: AppClient) -> None:
    """README: the plan and the operations routes also answer HEAD: the GET's status and
    headers, no body (RFC 9110 9.3.2)."""
    client, api, headers = app_client.client, app_client.api, app_client.headers
    case_id = await app_client.case()
    heads = [op.path for op in api.operations if op.head]
    assert {"/healthz", "/readyz", "/openapi.json", "/docs", "/metrics"} <= set(heads)
    varying = {"date", "x-request-id", "content-length"}
    for path in heads:
        url = _concrete(path, case_id)
        got = await client.get(url, headers=headers)
        body = await got.read()
        head = await client.head(url, headers=headers)
        assert head.status == got.status, (path, head.status, got.status)
        assert await head.read() == b"", path
        same = {k: v for k, v in got.headers.items() if k.lower() not in varying}
        assert {k: v for k, v in head.headers.items() if k.lower() not in varying} == same, path
        if path != "/metrics":  # metrics move between two reads
            assert head.headers.get("Content-Length") == str(len(body)), path


METHOD_NAMES = {
    "unknown method": b"FOO",
    "lower-case get": b"get",
    "method with an @": b"G@T",
    "method with a slash": b"GE/T",
    "WebDAV PROPFIND": b"PROPFIND",
    "CONNECT": b"CONNECT",
}


@pytest.mark.parametrize("method", METHOD_NAMES.values(), ids=METHOD_NAMES.keys())
async def test_an_odd_method_name_on_a_write_route_is_a_4xx_problem_that_writes_nothing(
    served: Served, method: bytes
) -> None:
    before = await served.state()
    request = method + b" " + served.write(CLOSE).partition(b" ")[2]
    ex = await exchange(served.port, request)
    assert len(ex.answers) == 1, ex
    answer = ex.answers[0]
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])
    answer.problem()
    assert await served.state() == before


# --------------------------------------------------------------------------------------------
# P: paths
# --------------------------------------------------------------------------------------------


def records_paths(case_id: str) -> dict[str, tuple[str, set[int]]]:
    """Path spellings for a GET of the plan: (path, the statuses that may answer it)."""
    refused = {400, 404}
    return {
        "trailing slash": (f"/v1/cases/{case_id}/", refused),
        "double slash before the id": (f"/v1/cases//{case_id}", refused),
        "leading double slash": (f"//v1/cases/{case_id}", refused),
        "encoded braces as the id": ("/v1/cases/%7Bid%7D", refused),
        "the id in braces": (f"/v1/cases/%7B{case_id}%7D", refused | {200}),
        "an encoded slash inside the id": (f"/v1/cases/{case_id[:8]}%2F{case_id[9:]}", refused),
        "an encoded slash before a route word": (f"/v1/cases/{case_id}%2Fhistory", refused),
        "dot segments to the feed": ("/v1/cases/../events", refused | {403}),
        "encoded dot segments to the feed": ("/v1/cases/%2E%2E/events", refused | {403}),
        "dot segment inside the case": (f"/v1/cases/{case_id}/history/../verify", refused | {200}),
        "capital id": (f"/v1/cases/{case_id.upper()}", {200}),
        "id without dashes": (f"/v1/cases/{case_id.replace('-', '')}", {200}),
        "overlong UTF-8 slash": ("/v1/cases/%C0%AF", refused),
        "overlong slash inside the id": (f"/v1/cases/{case_id}%C0%AF", refused),
        "NUL": ("/v1/cases/%00", refused),
        "NUL after the id": (f"/v1/cases/{case_id}%00", refused),
        "bare percent": ("/v1/cases/%", refused),
        "8 KB id": ("/v1/cases/" + "a" * 8 * 1024, refused),
        "64 KB path": ("/v1/cases/" + "a" * 64 * 1024, refused),
        "8 KB of slashes": ("/v1/cases" + "/" * 8 * 1024, refused),
    }


async def test_path_spellings_on_the_records_service_are_a_4xx_problem_or_the_case(
    served_records: tuple[int, asyncpg.Pool], token: TokenFactory
) -> None:
    """Sent as raw bytes (a client would normalise some), each spelling of the plan's path
    answers the case itself or a 4xx problem; none reaches another route (the feed), none is
    a 500."""
    port, _ = served_records
    cm = token()
    ex = await exchange(port, _raw_write(cm, "/v1/cases", OPENING, CLOSE))
    case_id = json.loads(ex.answers[0].body)["case_id"]
    for label, (path, allowed) in records_paths(case_id).items():
        [answer] = (
            await exchange(port, get(path, header("Authorization", f"Bearer {cm}"), CLOSE))
        ).answers
        shown = (label, answer.status, answer.body[:200])
        assert answer.status in allowed, shown
        if answer.status == 200:
            assert json.loads(answer.body)["case_id"] == case_id, shown
        elif "instance" in answer.problem():  # the application answered it
            assert_app_problem(answer)


def _raw_write(token: str, path: str, body: Any, *extra: bytes, method: str = "POST") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"{method} {path} HTTP/1.1\r\nHost: casetrail\r\n".encode()
        + header("Authorization", f"Bearer {token}")
        + header("Content-Type", "application/json")
        + b"".join(extra)
        + header("Content-Length", str(len(data)))
        + b"\r\n"
        + data
    )


async def test_a_note_sent_to_a_path_spelled_otherwise_is_on_the_case_or_writes_nothing(
    served_records: tuple[int, asyncpg.Pool], token: TokenFactory
) -> None:
    port, pool = served_records
    cm = token()
    first = await exchange(port, _raw_write(cm, "/v1/cases", OPENING, CLOSE))
    case_id = json.loads(first.answers[0].body)["case_id"]
    other = await exchange(port, _raw_write(cm, "/v1/cases", OPENING, CLOSE))
    other_id = json.loads(other.answers[0].body)["case_id"]
    for path in [
        f"/v1/cases/{other_id}/../{case_id}/notes",
        f"/v1/cases/{case_id}//notes",
        f"/v1/cases/{case_id}/notes/",
        f"/v1/cases/{case_id}/./notes",
        f"/v1/cases/{case_id}/notes%2F",
        f"/v1/cases/{case_id}%2Fnotes",
        f"/v1/cases/{case_id}/notes/..%2F..%2F{other_id}%2Fnotes",
        f"/v1/cases/{case_id}/%6Eotes",
        f"/v1/cases/{case_id}/NOTES",
    ]:
        before = {c: await _version(pool, c) for c in (case_id, other_id)}
        [answer] = (
            await exchange(port, _raw_write(cm, path, {"text": "Met at the library"}, CLOSE))
        ).answers
        after = {c: await _version(pool, c) for c in (case_id, other_id)}
        if answer.status == 201:
            written = json.loads(answer.body)["case_id"]
            assert written in path, (path, written)  # the case the path names, not the other
            assert after[written] == before[written] + 1, path
        else:
            assert 400 <= answer.status < 500, (path, answer.status, answer.body[:200])
            assert_app_problem(answer)
            assert after == before, path


async def _version(pool: asyncpg.Pool, case_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM records.events WHERE stream_id = $1", uuid.UUID(case_id)
        )
    )


NOTIFIER_PATHS = {
    "trailing slash": ("/v1/preferences/cm-1/", "GET"),
    "double slash": ("/v1//preferences/cm-1", "GET"),
    "dot segments above the user": ("/v1/preferences/x/../cm-1", "GET"),
    "encoded dot segments as the user": ("/v1/preferences/%2E%2E", "GET"),
    "encoded braces as the id": ("/v1/notifications/%7Bid%7D", "GET"),
    "an encoded slash in the id": (f"/v1/notifications/{CASE_ID[:8]}%2F{CASE_ID[9:]}", "GET"),
    "overlong UTF-8 as the user": ("/v1/preferences/%C0%AF", "PUT"),
    "NUL in the user": ("/v1/preferences/cm-1%00", "PUT"),
    "NUL as the id": ("/v1/notifications/%00/retry", "POST"),
    "bare percent in the user": ("/v1/preferences/%", "PUT"),
    "8 KB user": ("/v1/preferences/" + "a" * 8 * 1024, "PUT"),
    "64 KB user": ("/v1/preferences/" + "a" * 64 * 1024, "PUT"),
    "dot segments to the unsubscribe link": ("/v1/preferences/../unsubscribe/x", "POST"),
}


@pytest.mark.parametrize(("path", "method"), NOTIFIER_PATHS.values(), ids=NOTIFIER_PATHS.keys())
async def test_path_spellings_on_the_notifier_are_a_4xx_problem_that_changes_nothing(
    served_notifier: tuple[int, asyncpg.Pool], token: TokenFactory, path: str, method: str
) -> None:
    port, pool = served_notifier
    before = await pool.fetchval("SELECT count(*) FROM notifier.directory")
    [answer] = (
        await exchange(port, _raw_write(token(), path, PREFERENCES, CLOSE, method=method))
    ).answers
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])
    if "instance" in answer.problem():
        assert_app_problem(answer)
    assert await pool.fetchval("SELECT count(*) FROM notifier.directory") == before


# --------------------------------------------------------------------------------------------
# Q: query strings
# --------------------------------------------------------------------------------------------


QUERIES = {  # (records, notifier, the status that must answer)
    "a parameter twice, differing": ("?limit=1&limit=500", "?limit=1&limit=500", 400),
    "a filter twice": ("?status=open&status=closed", "?status=sent&status=dead", 400),
    "a parameter twice, the same": ("?limit=5&limit=5", "?limit=5&limit=5", 400),
    "an empty name": ("?=x", "?=x", 422),
    "an empty name and value": ("?=", "?=", 422),
    "a name with no value": ("?limit", "?limit", 422),
    "an empty value": ("?limit=", "?limit=", 422),
    "a ; separator": ("?limit=1;status=open", "?limit=1;status=sent", 422),
    "an unknown parameter": ("?colour=blue", "?colour=blue", 422),
    "a name that is not UTF-8": ("?%C0%AF=1", "?%C0%AF=1", 422),
    "a NUL in a value": ("?status=op%00en", "?status=se%00nt", 400),
    "a raw + read as a space": ("?status=open+", "?status=sent+", 422),
    "only separators": ("?&&", "?&&", 200),
}


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
async def test_query_strings_on_a_listing_are_answered_or_refused_as_documented(
    served: Served, query: tuple[str, str, int]
) -> None:
    """README: a query parameter the route does not take is refused (422), not ignored; a
    parameter given twice is refused (400 ``bad-query``, nothing says which counts); control
    characters are 400 ``bad-query``."""
    records_query, notifier_query, status = query
    path = served.read_path + (records_query if served.name == "records" else notifier_query)
    [answer] = (await exchange(served.port, get(path, served.auth, CLOSE))).answers
    assert answer.status == status, (path, answer.status, answer.body[:300])
    if status >= 400:
        problem = assert_app_problem(answer)
        assert problem["errors"], problem
        assert all(e["field"].startswith("query.") for e in problem["errors"]), problem


async def test_the_operations_routes_ignore_queries_and_a_query_past_the_limit_is_a_problem(
    served: Served,
) -> None:
    """README: the operations routes ignore queries. A request line past aiohttp's 8 KB is
    refused by the parser, still as a problem body."""
    for path in ("/healthz?x=1&x=2", "/readyz?=", "/openapi.json?;;", "/docs?%00=%C0%AF"):
        [answer] = (await exchange(served.port, get(path, CLOSE))).answers
        assert answer.status in {200, 503}, (path, answer.status, answer.body[:200])
    huge = served.read_path + "?" + "&".join(f"k{n}=v" for n in range(2000))
    [answer] = (await exchange(served.port, get(huge, served.auth, CLOSE))).answers
    assert answer.status == 400, answer
    answer.problem()
    many = served.read_path + "?" + "&".join(f"k{n}=v" for n in range(600))
    [answer] = (await exchange(served.port, get(many, served.auth, CLOSE))).answers
    assert answer.status == 422, answer
    assert len(assert_app_problem(answer)["errors"]) == 50


# --------------------------------------------------------------------------------------------
# H: headers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_the_bearer_scheme_is_read_in_any_case(served: Served, scheme: str) -> None:
    """RFC 9110 11.1: the authentication scheme is case-insensitive."""
    [answer] = (
        await exchange(
            served.port,
            get(served.read_path, header("Authorization", f"{scheme} {served.token}"), CLOSE),
        )
    ).answers
    assert answer.status == 200, (answer.status, answer.body[:200])


CONTENT_LENGTHS = {
    "a plus sign": ("+{n}", False),
    "a minus sign": ("-{n}", False),
    "a list of two": ("{n}, {n}", False),
    "hexadecimal": ("0x{n}", False),
    "spaces inside": ("{n} 0", False),
    "leading zeros": ("000{n}", True),
}


@pytest.mark.parametrize(("spelled", "taken"), CONTENT_LENGTHS.values(), ids=CONTENT_LENGTHS.keys())
async def test_a_content_length_spelled_oddly_is_taken_as_its_digits_or_refused(
    served: Served, spelled: str, taken: bool
) -> None:
    """RFC 9110 8.6: Content-Length is 1*DIGIT; leading zeros are digits too. Anything else is
    a 400 problem that writes nothing."""
    before = await served.state()
    n = len(served.write().partition(b"\r\n\r\n")[2])
    ex = await exchange(served.port, served.write(CLOSE, length=spelled.format(n=n)))
    [answer] = ex.answers
    if taken:
        assert answer.status == served.write_status, (answer.status, answer.body[:200])
        assert await served.state() != before
    else:
        assert answer.status == 400, (answer.status, answer.body[:200])
        answer.problem()
        assert await served.state() == before


async def test_two_content_lengths_are_refused_whether_or_not_they_agree(served: Served) -> None:
    before = await served.state()
    n = len(served.write().partition(b"\r\n\r\n")[2])
    for second in (n, n + 1, n - 1):
        ex = await exchange(served.port, served.write(CLOSE, header("Content-Length", str(second))))
        [answer] = ex.answers
        assert answer.status == 400, (second, answer.status, answer.body[:200])
        answer.problem()
    assert await served.state() == before


async def test_a_content_length_beside_chunked_is_refused(served: Served) -> None:
    """RFC 9112 6.3: both framings on one request is how requests are smuggled."""
    before = await served.state()
    body = served.write().partition(b"\r\n\r\n")[2]
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = served.write(CLOSE, header("Transfer-Encoding", "chunked"), body=chunked)
    [answer] = (await exchange(served.port, request)).answers
    assert answer.status == 400, (answer.status, answer.body[:200])
    answer.problem()
    assert await served.state() == before


async def test_repeated_singleton_headers_are_refused_before_anything_is_written(
    served: Served,
) -> None:
    """Two Content-Types (the first saying JSON, the second not), two Hosts: a proxy in front
    may read the other one. Refused, writing nothing."""
    before = await served.state()
    for extra in (header("Content-Type", "text/plain"), header("Host", "elsewhere")):
        [answer] = (await exchange(served.port, served.write(CLOSE, extra))).answers
        assert answer.status == 400, (extra, answer.status, answer.body[:200])
        answer.problem()
    assert await served.state() == before


MEDIA_TYPES = {
    "capitals": ("application/JSON", True),
    "parameters in capitals": ("Application/Json; Charset=UTF-8", True),
    "no space before the parameter": ("application/json;charset=utf-8", True),
    "merge-patch": ("application/merge-patch+json", False),
    "problem+json": ("application/problem+json", False),
    "text/plain": ("text/plain", False),
    "empty": ("", False),
}


@pytest.mark.parametrize(("media", "taken"), MEDIA_TYPES.values(), ids=MEDIA_TYPES.keys())
async def test_a_content_type_is_read_as_a_case_insensitive_media_type(
    served: Served, media: str, taken: bool
) -> None:
    """RFC 9110 8.3.1: type, subtype and parameter names are case-insensitive. Another type
    than JSON (merge-patch included: the API documents application/json) is 415, writing
    nothing."""
    before = await served.state()
    request = served.write(CLOSE).replace(
        b"Content-Type: application/json", b"Content-Type: " + media.encode()
    )
    [answer] = (await exchange(served.port, request)).answers
    if taken:
        assert answer.status == served.write_status, (answer.status, answer.body[:200])
        assert await served.state() != before
    else:
        assert answer.status == 415, (answer.status, answer.body[:200])
        assert_app_problem(answer)
        assert await served.state() == before


async def test_a_patch_sent_as_merge_patch_is_refused_and_writes_nothing(
    cm: CaseApi, fresh_pool: asyncpg.Pool
) -> None:
    case_id = await cm.open_case()
    before = await event_count(fresh_pool)
    response = await cm.client.patch(
        f"/v1/cases/{case_id}/participant",
        data=b'{"pronouns": "she/her"}',
        headers={**bearer(cm.token), "Content-Type": "application/merge-patch+json"},
    )
    assert response.status == 415, await response.text()
    assert response.content_type == "application/problem+json"
    assert await event_count(fresh_pool) == before


ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_body_in_another_unicode_encoding_is_recorded_as_sent_or_refused(
    cm: CaseApi, fresh_pool: asyncpg.Pool, encoding: str
) -> None:
    """A JSON body in UTF-16 or UTF-32 (RFC 8259 8.1 asks for UTF-8): taken, the note says
    exactly what was sent; refused, a 4xx problem writing nothing. An escaped NUL in such a
    body is refused like one in UTF-8."""
    case_id = await cm.open_case()
    text = "Zoë met Jo at the café 🚲"
    before = await event_count(fresh_pool)
    response = await cm.client.post(
        f"/v1/cases/{case_id}/notes",
        data=json.dumps({"text": text}).encode(encoding),
        headers={**bearer(cm.token), "Content-Type": "application/json"},
    )
    answer = await response.text()
    if response.status == 201:
        plan = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
        assert plan["events"][-1]["data"]["text"] == text, answer
    else:
        assert 400 <= response.status < 500, answer
        assert response.content_type == "application/problem+json"
        assert await event_count(fresh_pool) == before
    before = await event_count(fresh_pool)
    response = await cm.client.post(
        f"/v1/cases/{case_id}/notes",
        data='{"text": "a\\u0000b"}'.encode(encoding),
        headers={**bearer(cm.token), "Content-Type": "application/json"},
    )
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/problem+json"
    assert await event_count(fresh_pool) == before


@pytest.mark.parametrize("number", ["1e400", "-1e400", "-0", "1.0", "0", "1E2", "-0.0"])
async def test_a_number_where_text_or_a_flag_is_expected_is_a_422_that_writes_nothing(
    cm: CaseApi, fresh_pool: asyncpg.Pool, rig: NotifierRig, token: TokenFactory, number: str
) -> None:
    case_id = await cm.open_case()
    before = await event_count(fresh_pool)
    for path, raw in [
        (f"/v1/cases/{case_id}/notes", '{"text": %s}'),
        (f"/v1/cases/{case_id}/close", '{"reason": %s}'),
    ]:
        response = await cm.client.post(
            path,
            data=(raw % number).encode(),
            headers={**bearer(cm.token), "Content-Type": "application/json"},
        )
        assert response.status == 422, (path, await response.text())
    assert await event_count(fresh_pool) == before
    body = json.dumps(PREFERENCES).replace("true", number).encode()
    response = await rig.client.put(
        "/v1/preferences/cm-1",
        data=body,
        headers={**bearer(token()), "Content-Type": "application/json"},
    )
    assert response.status == 422, await response.text()
    assert await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory") == 0
