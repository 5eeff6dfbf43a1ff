"""Starting our HTTP servers: aiohttp's runner, with a problem body for every error aiohttp
answers itself, before any middleware of ours runs.

aiohttp's HTTP parser refuses a malformed request (a request line or header past its limit, an
unknown method, a ``Content-Encoding`` it cannot decode) with a plain-text 400 and logs it as an
error with a traceback. A client that sent it gets the same RFC 9457 body as every other refusal,
and the operations log gets one line at ``info``: a client's mistake is not the service's error.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
from collections.abc import Awaitable
from contextlib import suppress
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest
from yarl import URL

from services.common.http import PROTECTIVE_HEADERS, JsonAccessLogger, new_event_loop
from services.common.problems import Problem

# aiohttp's default refuses a header over 8190 bytes; an auditor's token naming the cases of a
# court order (about 50 bytes a case) outgrows that at some 150 cases. aiohttp's limit is per
# header, so every header may be that long: the two bounds below keep one request's head small.
MAX_HEADER_BYTES = 64 * 1024
# A browser sends about 20 headers and proxies and tracing add up to some 30 (X-Forwarded-*,
# Via, traceparent, B3, X-Envoy-*); Apache, Envoy and Tomcat refuse past 100 by default.
MAX_HEADERS = 100
# The request line and all headers together: the Authorization header at its limit and 32 KiB
# for the rest (nginx's default for a whole request head). aiohttp bounds only each header and
# their number: 128 of 64 KiB, held twice (bytes and text), came to some 15 MiB a connection.
MAX_REQUEST_HEAD_BYTES = MAX_HEADER_BYTES + 32 * 1024
KEEPALIVE_SECONDS = 75.0
# How long requests in flight (a long export) may finish after a stop signal: aiohttp's 60 s
# outlasted the deployment's grace (deploy/kubernetes: 45 s less a 5 s preStop pause), so a
# pod was killed mid-shutdown, before the pool and the feed listener were closed.
SHUTDOWN_SECONDS = 35.0
# what aiohttp answers itself: (problem kind, title)
_HTTP_1 = (HttpVersion10, HttpVersion11)
_OWN_ANSWERS = {400: ("malformed-request", "Bad request"), 500: ("internal", "Internal error")}
# aiohttp's messages quote what it could not read (a query, a header's value); the log keeps
# no query or header values, so neither does the detail (the client has what it sent).
_QUOTED = re.compile(r"""(bytearray\(|b?['"]).*$""", re.DOTALL)
_INSTALL_ADVICE = re.compile(r"\.?\s*Please install.*$", re.DOTALL)
log = structlog.get_logger("casetrail.http")


def parser_problem(status: int, message: str | None) -> dict[str, Any]:
    """The body for an error aiohttp answers itself. No ``instance``: the request line may be
    the very thing that could not be read."""
    kind, title = _OWN_ANSWERS.get(status, ("http-error", HTTPStatus(status).phrase))
    detail = "the error was logged" if status >= 500 else _unquoted(message or "")
    return Problem(status, title, detail, kind=kind).body(None)


def _unquoted(message: str) -> str:
    return _INSTALL_ADVICE.sub("", _QUOTED.sub("", message)).strip().rstrip(":").strip()


class _ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own refusals with a problem body and
    bounding what the parser holds of a request besides its body: the head, and a chunked
    body's trailers (headers after the body, read like headers and as long)."""

    __slots__ = ("_beside_body", "_body", "_chunked", "_head_bytes", "_refused")

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_bytes = 0  # of the request head being read
        self._body: StreamReader = EMPTY_PAYLOAD  # of the last request whose head was read
        self._chunked = False  # that body is chunked
        self._beside_body = 0  # its bytes that were not body: chunk sizes, trailers
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head():
            self._take_head(data)
        elif self._chunked:
            self._take_chunked(data)
        else:
            self._parse(data)

    def _reading_head(self) -> bool:
        return (not self._upgraded and self._payload_parser is None
                and not (self._force_close or self._close) and self._body.is_eof())

    def _take_head(self, data: bytes) -> None:
        room = MAX_REQUEST_HEAD_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._parse(data)
        elif self._parse(data[:room]):  # the parser is never given more head than the bound
            self.data_received(data[room:])
        else:
            self._refuse_head()

    def _take_chunked(self, data: bytes) -> None:
        read_before = self._body.total_bytes
        if not self._parse(data) and not self._body.is_eof():
            # piece by piece, not in sum: a compressed body's decoded bytes must not hide
            # trailers
            self._beside_body += max(0, len(data) - (self._body.total_bytes - read_before))
            self._check_beside_body()

    def _parse(self, data: bytes) -> bool:
        """Feed aiohttp's parser; whether a request head was completed (the counts restart)."""
        before = self._request_count
        super().data_received(data)
        if self._request_count == before:
            return False
        self._check_new_requests(self._request_count - before)
        message, self._body = self._messages[-1] if self._messages else (None, EMPTY_PAYLOAD)
        self._chunked = isinstance(message, RawRequestMessage) and message.chunked
        self._head_bytes = 0
        # the piece the head ended in may hold trailers already: what it held besides body
        # counts, the head's end with it
        self._beside_body = max(0, len(data) - self._body.total_bytes) if self._chunked else 0
        self._check_beside_body()
        return True

    def _check_new_requests(self, parsed: int) -> None:
        """The requests just parsed, in order. One of another HTTP version than 1.0 or 1.1 is
        answered 400, and nothing after it is read: aiohttp's parser takes ``HTTP/2.0`` and a
        bare request line (HTTP/0.9), and aiohttp answered them 200 under that version, in
        HTTP/1 framing. One offering another protocol (``Upgrade: h2c``, as ``curl --http2``
        sends) is answered in HTTP/1.1 and the connection then closed: we switch to no
        protocol, and aiohttp's parser, declining, drops whatever followed the request in the
        same read, so a request pipelined after it waited for an answer that never came.
        Closed, the connection tells its client to send that request again."""
        for index in range(len(self._messages) - parsed, len(self._messages)):
            message, payload = self._messages[index]
            if not isinstance(message, RawRequestMessage):
                continue
            if message.version not in _HTTP_1:
                while len(self._messages) > index:
                    self._messages.pop()
                error = BadHttpMessage("this service speaks HTTP/1.1 (and 1.0) only")
                self._messages.append((_ErrInfo(status=400, exc=error, message=error.message),
                                       EMPTY_PAYLOAD))
                self._refused = True
                return
            if message.upgrade:
                self._messages[index] = (message._replace(should_close=True), payload)

    def _check_beside_body(self) -> None:
        if self._chunked and self._beside_body > MAX_REQUEST_HEAD_BYTES and not self._refused:
            self._refuse_chunked()

    def _refuse_head(self) -> None:
        """Answer 400 as aiohttp answers a header past its limit; read nothing more."""
        self._refused = True
        error = BadHttpMessage(f"the request headers came to more than"
                               f" {MAX_REQUEST_HEAD_BYTES} bytes")
        self._messages.append((_ErrInfo(status=400, exc=error, message=error.message),
                               EMPTY_PAYLOAD))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _refuse_chunked(self) -> None:
        """Read nothing more. A handler reading the body, now or once its turn comes, fails
        to (400, nothing written); after an answer, the wait for the body's end is over."""
        self._refused = True
        # the end first: it wakes a wait for it without an error, where aiohttp, draining the
        # body of a request already answered, would log the error as unhandled
        self._body.feed_eof()
        self._body.set_exception(RequestPayloadError(
            f"the request carried more than {MAX_REQUEST_HEAD_BYTES} bytes besides its body"))
        self.close()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            self.log_exception("Error handling request after the answer began", exc_info=exc)
            raise ConnectionError("the answer had begun; no problem body can follow it")
        problem = parser_problem(status, message)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
        else:
            log.info("malformed request refused", status=status, detail=problem.get("detail"))
        response = web.Response(status=status, text=json.dumps(problem),
                                content_type="application/problem+json",
                                headers=PROTECTIVE_HEADERS)  # no app: its signal never runs
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """An AppRunner with our access log, header limit and problem bodies; every server of
    ours starts on one (tests through aiohttp's test client use its own runner)."""

    def __init__(self, app: web.Application, *, handle_signals: bool = False) -> None:
        # keepalive_timeout: web.run_app's 75 s (a bare runner would keep an idle client an hour)
        super().__init__(app, handle_signals=handle_signals, access_log_class=JsonAccessLogger,
                         max_field_size=MAX_HEADER_BYTES, max_headers=MAX_HEADERS,
                         keepalive_timeout=KEEPALIVE_SECONDS, shutdown_timeout=SHUTDOWN_SECONDS)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProblemServer  # aiohttp builds the Server; we build its handlers
        return server


def http_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets (``http://[::1]:8080``)."""
    return str(URL.build(scheme="http", host=host, port=port))


def host_and_port(host: str, port: int) -> str:
    """``host:port`` as a person would type it, an IPv6 address in brackets."""
    return URL.build(scheme="http", host=host, port=port).raw_authority


class PortTaken(OSError):
    """A port something else listens on; ``choose`` names the flag and variable that pick
    another (where several servers start, the message must say which one)."""

    def __init__(self, error: OSError, choose: str) -> None:
        super().__init__(error.errno, error.strerror)
        self.choose = choose


async def listening(start: Awaitable[None], choose: str) -> None:
    """Await a server's start; a port already in use raises PortTaken naming ``choose``."""
    try:
        await start
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(error, choose) from error
        raise


async def _serve_until_stopped(app: web.Application, host: str, port: int,
                               reuse_port: bool | None, choose: str) -> None:
    runner = ServiceRunner(app, handle_signals=True)
    await runner.setup()
    try:
        await listening(web.TCPSite(runner, host, port, reuse_port=reuse_port).start(), choose)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve(app: web.Application, *, host: str, port: int, choose: str,
          reuse_port: bool | None = None) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut it down cleanly (web.run_app's loop,
    on a ServiceRunner); ``choose`` names how to pick another port if this one is taken."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_until_stopped(app, host, port, reuse_port, choose))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        _cancel_the_rest(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
