"""HTTP plumbing both services share: request ids, authentication, parsing, an OpenAPI registry."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import html
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import structlog
from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, JsonSchemaValue, models_json_schema
from yarl import URL

from schemas.api import Problem as ProblemBody
from schemas.queries import NoQuery
from services.common.auth import AuthError, Principal, TokenVerifier
from services.common.problems import (
    REQUEST_ID_KEY,
    Handler,
    Problem,
    problem_response,
    validation_problem,
)
from services.common.quoting import quoted

ModelT = TypeVar("ModelT", bound=BaseModel)
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_SECONDS = web.AppKey("request_seconds", Histogram)
VERIFIER = web.AppKey("token_verifier", TokenVerifier)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_UUID4_CLEAR = ~(0xC000 << 48 | 0xF000 << 64)
_UUID4_SET = 0x8000 << 48 | 0x4000 << 64
_PLACEHOLDER = re.compile(r"{[_a-zA-Z][_a-zA-Z0-9]*}")
_COMPONENT_REF = "#/components/schemas/{model}"
_Refs = dict[tuple[type[BaseModel], JsonSchemaMode], JsonSchemaValue]
# Every answer: no cache (a browser's, a proxy's) keeps a case's data, and no browser reads a
# JSON answer or a mail's raw text as HTML.
PROTECTIVE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# The HTML pages (/docs, the notifier's /mail) load nothing and run no script. /mail shows a
# caught message in a sandboxed srcdoc frame, which inherits this policy: the message's <style>
# and the frame's style attribute need inline styles.
HTML_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none';"
               " form-action 'none'; frame-ancestors 'none'")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _assign_request_id(request)
    _LOGGED_REQUEST_ID.set(request_id)
    try:
        return await handler(request)  # the answer carries it (protect_answer)
    finally:
        _LOGGED_REQUEST_ID.set(...)


class JsonAccessLogger(AbstractAccessLogger):
    """One structured line per request, carrying the request id its answer carried.

    The path is logged without its query: a query may hold free text (a removal's ``reason``)
    that has no place in an operations log."""

    _log = structlog.get_logger("casetrail.access")

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self._log.info("request", request_id=request.get(REQUEST_ID_KEY),
                       method=request.method, path=request.path, status=response.status,
                       bytes=response.body_length, duration_ms=round(time * 1000, 2),
                       remote=request.remote)


def _assign_request_id(request: web.Request) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is a sound one, else a new one;
    its log lines, problem body and answer carry it."""
    incoming = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID_KEY] = incoming if _REQUEST_ID.match(incoming) else new_request_id()
    return request[REQUEST_ID_KEY]


def new_request_id() -> str:
    """``uuid.uuid4().hex`` without building a UUID object: 122 random bits, version 4 and
    the RFC 4122 variant."""
    return f"{int.from_bytes(os.urandom(16), 'big') & _UUID4_CLEAR | _UUID4_SET:032x}"


def _structlog_variable(key: str) -> contextvars.ContextVar[Any]:
    """The variable ``structlog.contextvars.bind_contextvars(key=...)`` sets and
    ``unbind_contextvars(key)`` sets to ``...``; set directly, it skips their per-call name
    building and lookups."""
    token = structlog.contextvars.bind_contextvars(**{key: ...})[key]
    token.var.reset(token)
    return token.var


_LOGGED_REQUEST_ID = _structlog_variable("request_id")


@web.middleware
async def request_metrics_middleware(request: web.Request,
                                     handler: Handler) -> web.StreamResponse:
    """Observes each request's latency in the app's ``REQUEST_SECONDS`` histogram."""
    started = time.perf_counter()
    response = await handler(request)
    _observe(request, response.status, time.perf_counter() - started)
    return response


def _observe(request: web.Request, status: int, seconds: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    labelled(request.app[REQUEST_SECONDS], request.method, route, str(status)).observe(seconds)


MetricT = TypeVar("MetricT", bound=MetricWrapperBase)


@functools.lru_cache(maxsize=4096)
def _labelled(metric: MetricWrapperBase, values: tuple[str, ...]) -> MetricWrapperBase:
    return metric.labels(*values)


def labelled(metric: MetricT, *values: str) -> MetricT:
    """``metric.labels(*values)``, looked up once: ``labels()`` checks and converts its values
    on every call, and the child it returns for the same values is always the same one."""
    return cast(MetricT, _labelled(metric, values))


async def protect_answer(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the protective headers and the request id on every answer, a
    streamed export's too (a middleware sees it only after it was sent). A handler's own
    Cache-Control stays. A body that failed to read, or an encoded one the handler left
    unread, is read no further."""
    headers = response.headers
    for name, value in PROTECTIVE_HEADERS.items():
        headers.setdefault(name, value)
    # set here, not after the handler: a streamed export has been sent by then
    if request_id := request.get(REQUEST_ID_KEY):
        headers["X-Request-Id"] = request_id
    if response.content_type == "text/html":
        headers.setdefault("Content-Security-Policy", HTML_POLICY)
    if _body_unreadable(request):
        _stop_reading_body(request, response)


def _body_unreadable(request: web.BaseRequest) -> bool:
    body = request.content
    return body.exception() is not None or (
        "Content-Encoding" in request.headers and not body.is_eof())


def _stop_reading_body(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """After the answer aiohttp reads what is left of an unread body; one that does not decode
    fails there and is logged as an unhandled exception (error level, a traceback), on any
    route that answers without reading the body (/healthz, a read, a 401). Nothing more of it
    is read, so the connection cannot carry another request: it closes after this answer."""
    request.content.feed_eof()
    response.force_close()
    # aiohttp chose the Connection header before this hook runs, from keep-alive as it was
    response.headers["Connection"] = "close"


# Headers that say how to write (which version, which retry, which trace): one value each.
# Given twice, the first counted and the second was dropped, while a proxy or cache in front
# may key on the other one (an Idempotency-Key is a structured field item, RFC 8941, which two
# lines joined into a list no longer are). aiohttp itself refuses RFC 9110's singletons twice.
ONCE_ONLY_HEADERS = ("Idempotency-Key", "If-Match", "X-Correlation-Id", "X-Causation-Id")


def refuse_repeated_headers(request: web.Request) -> None:
    for name in ONCE_ONLY_HEADERS:
        if len(request.headers.getall(name, ())) > 1:
            raise Problem(400, "Bad request", f"send one {name} header, not several",
                          kind="repeated-header", errors=[{"field": f"header.{name}",
                                                           "message": "given more than once"}])


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route_handler = request.match_info.route.handler
    if getattr(route_handler, "public", False) or request.match_info.http_exception:
        return await handler(request)
    sent = request.headers.getall("Authorization", ())
    if len(sent) > 1:
        # which one counts is a guess, and a proxy in front may have guessed the other one
        raise Problem(400, "Bad request", "send one Authorization header, not several",
                      kind="bad-authorization")
    refuse_repeated_headers(request)
    header = sent[0] if sent else ""
    scheme, _, token = header.partition(" ")
    # only the spaces and tabs HTTP allows around a value: a proxy in front may read other
    # white space (U+00A0, U+3000) as part of the token
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or not token:
        raise Problem(401, "Unauthorized", "send a bearer token: Authorization: Bearer <jwt>",
                      kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    try:
        request[PRINCIPAL] = request.app[VERIFIER].verify(token)
    except AuthError as error:
        raise Problem(401, "Unauthorized", str(error), kind="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from error
    return await handler(request)


def principal(request: web.Request) -> Principal:
    found: Principal = request[PRINCIPAL]
    return found


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """A JSON object body validated by ``model``; every failure is a 4xx problem. A request
    with no body at all stands for ``{}`` where the model needs no field (``…/complete``, the
    short form, with nothing to add)."""
    if not request.body_exists and not any(f.is_required() for f in model.model_fields.values()):
        return model.model_validate({})
    if request.content_type != "application/json":
        raise Problem(415, "Unsupported media type", "send the body as application/json",
                      kind="unsupported-media-type")
    return parse_json_bytes(await read_body(request), model)


async def read_body(request: web.Request) -> bytes:
    """The request's body; one that cannot be read is a 400 problem."""
    _refuse_transfer_codings(request)
    try:
        return await request.read()
    except RequestPayloadError as error:  # e.g. Content-Encoding: gzip on a plain body
        # the connection closes after this answer (protect_answer)
        raise Problem(400, "Bad request", f"the body could not be read: {error.__cause__ or error}",
                      kind="malformed-body") from error
    except ConnectionResetError as error:
        # the client went away before its body ended: a client's doing, not the database's
        # (an OSError, it was answered and logged as "database unavailable", 503)
        raise Problem(400, "Bad request", "the connection closed before the body ended",
                      kind="body-incomplete") from error


def _refuse_transfer_codings(request: web.Request) -> None:
    """Only ``chunked`` is taken as a transfer coding. aiohttp checks only that the last one is
    chunked, and read ``gzip, chunked`` as plain chunks: a body the sender, or a proxy that
    decodes it, never meant (RFC 9112 6.1 suggests 501; bad input is a 4xx here)."""
    codings = request.headers.get("Transfer-Encoding")
    if codings is not None and codings.strip().lower() != "chunked":
        raise Problem(400, "Bad request", "the only transfer coding taken is chunked; send the"
                      " body plain, or compressed with Content-Encoding", kind="transfer-coding",
                      errors=[{"field": "header.Transfer-Encoding", "message": "not chunked"}])


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` answered as aiohttp does; any other expectation refused with
    a problem body (aiohttp's own refusal is plain text, sent before any middleware runs)."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's own output has not begun
        return None
    started = time.perf_counter()
    _assign_request_id(request)  # answered before any middleware runs: their work done here
    response = problem_response(Problem(417, "Expectation failed", "the only expectation taken"
                                        " is 100-continue", kind="expectation-failed",
                                        errors=[{"field": "header.Expect",
                                                 "message": "not 100-continue"}]), request)
    _observe(request, response.status, time.perf_counter() - started)
    return response


class _KeyGivenTwice(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_of_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice: ``{"text": "a", "text": "b"}`` is
    ambiguous (parsers disagree on which one counts), so it must not write either."""
    document = dict(pairs)
    if len(document) != len(pairs):  # the usual case costs one comparison; find which key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _KeyGivenTwice(key)
            seen.add(key)
    return document


# made once: ``json.loads(raw, object_pairs_hook=...)`` builds a decoder on every call (some
# 1.5 µs a body, doubling the parse); this one parses as fast as plain ``json.loads``
_DECODER = json.JSONDecoder(object_pairs_hook=_object_of_unique_keys)


def _decode(raw: bytes) -> Any:
    """``json.loads(raw)``, its decoding of the bytes included, with duplicate keys refused."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


# ``\u0000`` in a JSON string: after an even number of backslashes (an odd one escapes the
# backslash: ``"\\u0000"`` is the text ``\u0000``, a note may quote it)
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def parse_json_bytes(raw: bytes, model: type[ModelT]) -> ModelT:
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):
        raise Problem(400, "Bad request", "text may not contain NUL characters",
                      kind="malformed-body")
    try:
        document = _decode(raw or b"null")
    except _KeyGivenTwice as error:
        raise Problem(400, "Bad request", f"body gives the key {quoted(error.key)} more than"
                      " once; give each key once", kind="malformed-body") from error
    except RecursionError as error:
        raise Problem(400, "Bad request", "body is nested too deeply",
                      kind="malformed-body") from error
    except ValueError as error:  # also a number too long to convert, and bad UTF-8
        raise Problem(400, "Bad request", f"body is not valid JSON: {error}",
                      kind="malformed-body") from error
    if not isinstance(document, dict):
        raise Problem(400, "Bad request", "body must be a JSON object", kind="malformed-body")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise validation_problem(error) from error


def parse_query(request: web.Request, model: type[ModelT]) -> ModelT:
    raw: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise Problem(400, "Bad request", f"query parameter {key!r} given more than once;"
                          " give it once", kind="bad-query",
                          errors=[{"field": f"query.{key}", "message": "given more than once"}])
        if any(ord(char) < 0x20 or char == "\x7f" for char in values[0]):
            raise Problem(400, "Bad request", f"query parameter {key!r} holds control characters",
                          kind="bad-query", errors=[{"field": f"query.{key}",
                                                     "message": "control characters"}])
        raw[key] = values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise validation_problem(error, location="query") from error


def json_response(body: BaseModel | Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer; a pydantic model is encoded by its own (compiled) serializer."""
    text = body.model_dump_json() if isinstance(body, BaseModel) \
        else json.dumps(body, default=str)
    return web.Response(status=status, text=text, content_type="application/json",
                        headers=headers)


@dataclass
class _Segment:
    literals: dict[str, _Segment] = field(default_factory=dict)
    placeholder: _Segment | None = None
    resources: list[tuple[int, web.DynamicResource]] = field(default_factory=list)


class RouteTree(web.AbstractResource):
    """The dynamic resources aiohttp would index under one prefix, found by segment.

    aiohttp tries every resource under a prefix with its regex in turn (the case routes: ~25
    under /v1/cases, on every request). Here a walk over the path's segments picks the few
    whose literal segments fit, and each of those still resolves by its own regex in
    registration order, so matches, 404s and 405s stay aiohttp's own.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix
        self._root = _Segment()
        self._resources: list[web.DynamicResource] = []

    @staticmethod
    def prefix_of(path: str) -> str | None:
        """aiohttp's index key for ``path`` when every placeholder is a whole ``{name}``
        segment after it; None for the paths left to aiohttp's router."""
        if "{" not in path:
            return None
        prefix = path.partition("{")[0].rpartition("/")[0] or "/"
        rest = path[len(prefix.rstrip("/")) + 1:].split("/")
        whole = all(_PLACEHOLDER.fullmatch(part) or not ({"{", "}"} & set(part))
                    for part in rest)
        return prefix if whole else None

    def add_resource(self, path: str) -> web.DynamicResource:
        if self._resources and self._resources[-1].raw_match(path):
            return self._resources[-1]
        resource = web.DynamicResource(path)
        node = self._root
        for part in self._segments(resource.canonical):
            if _PLACEHOLDER.fullmatch(part):
                node.placeholder = node.placeholder or _Segment()
                node = node.placeholder
            else:
                node = node.literals.setdefault(part, _Segment())
        node.resources.append((len(self._resources), resource))
        self._resources.append(resource)
        return resource

    def _segments(self, path: str) -> list[str]:
        return path[len(self._prefix.rstrip("/")) + 1:].split("/")

    def _candidates(self, path: str) -> list[web.DynamicResource]:
        nodes = [self._root]
        for part in self._segments(path):
            nodes = [child for node in nodes
                     for child in (node.literals.get(part), node.placeholder) if child]
            if not nodes:
                return []
        found = sorted(entry for node in nodes for entry in node.resources)
        return [resource for _, resource in found]

    async def resolve(self, request: web.Request) -> tuple[
            web.UrlMappingMatchInfo | None, set[str]]:
        allowed: set[str] = set()
        for resource in self._candidates(request.rel_url.path_safe):
            match_info, methods = await resource.resolve(request)
            if match_info is not None:
                return match_info, methods
            allowed |= methods
        return None, allowed

    @property
    def canonical(self) -> str:
        return self._prefix

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError("url_for() belongs to the resources inside a RouteTree")

    def add_prefix(self, prefix: str) -> None:
        self._prefix = prefix + self._prefix.rstrip("/")
        for resource in self._resources:
            resource.add_prefix(prefix)

    def get_info(self) -> dict[str, Any]:  # type: ignore[override]
        return {"prefix": self._prefix}

    def freeze(self) -> None:
        for resource in self._resources:
            resource.freeze()

    def raw_match(self, path: str) -> bool:
        return False  # so aiohttp's router never adds a route to the tree itself

    def __len__(self) -> int:
        return sum(len(resource) for resource in self._resources)

    def __iter__(self) -> Iterator[web.ResourceRoute]:
        return (route for resource in self._resources for route in resource)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    handler: RouteHandler
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    public: bool = False
    tag: str = "records"
    media_types: tuple[str, ...] = ("application/json",)
    head: bool = False  # also answers HEAD
    # statuses answered with the success answer's body too, each with what it means
    also_answers: tuple[tuple[int, str], ...] = ()
    pages_for_browsers: bool = False  # a refusal is a page for a browser that asks for HTML


def _taking_no_query(handler: RouteHandler) -> RouteHandler:
    """An API route declared without a query refuses one (422) rather than ignoring it:
    ``?reason=`` on a revision, say, was silently dropped."""
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        if request.query:  # the usual write has none: nothing to validate
            parse_query(request, NoQuery)
        return await handler(request)
    return checked


def _taking_no_body(handler: RouteHandler) -> RouteHandler:
    """A write declared without a body refuses one (400) rather than ignoring it: options a
    client thought it passed to a retry were dropped while the retry went ahead."""
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        if request.body_exists and (await read_body(request)).strip() not in (b"", b"{}"):
            raise Problem(400, "Bad request", "this request takes no body", kind="unexpected-body")
        return await handler(request)
    return checked


@dataclass
class Api:
    """The one list of operations: routes are registered and OpenAPI is generated from it."""

    title: str
    version: str
    operations: list[Operation] = field(default_factory=list)

    def route(self, method: str, path: str, summary: str, *, body: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
              status: int = 200, public: bool = False, tag: str = "records",
              media_types: tuple[str, ...] = ("application/json",), head: bool = False,
              form: bool = False, also_answers: tuple[tuple[int, str], ...] = (),
              pages_for_browsers: bool = False) -> Callable[[RouteHandler], RouteHandler]:
        """Register a handler; ``response`` is the model its success answer is built from
        (``media_types`` name the answer's types when it is not JSON). A public GET also
        answers HEAD, and so does one registered with ``head``: not an audited read, a
        stream or a long-poll, where a HEAD would log a read or wait while showing nothing.
        ``form``: the handler reads and checks a body that is no JSON model (a form).
        ``also_answers`` and ``pages_for_browsers`` only describe answers in the document."""
        def register(handler: RouteHandler) -> RouteHandler:
            handler.public = public  # type: ignore[attr-defined]
            served = handler if query is not None or public else _taking_no_query(handler)
            if body is None and not form and method not in ("GET", "HEAD"):
                served = _taking_no_body(served)
            self.operations.append(Operation(
                method, path, summary, served, body, query, response, status, public, tag,
                media_types, head=method == "GET" and (head or public),
                also_answers=also_answers, pages_for_browsers=pages_for_browsers))
            return handler
        return register

    def add_operations_routes(self, registry: Callable[[web.Request], CollectorRegistry]) -> None:
        """``/openapi.json``, ``/docs`` and ``/metrics``, the same on every service;
        ``registry`` finds the request's app's metrics."""

        @self.route("GET", "/openapi.json", "this API's OpenAPI 3.1 description", public=True,
                    tag="ops")
        async def openapi(request: web.Request) -> web.Response:
            return json_response(self.openapi())

        @self.route("GET", "/docs", "human-readable list of operations", public=True, tag="ops",
                    media_types=("text/html",))
        async def docs(request: web.Request) -> web.Response:
            return web.Response(text=self.docs_page(), content_type="text/html")

        @self.route("GET", "/metrics", "Prometheus metrics", public=True, tag="ops",
                    media_types=("text/plain",))
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry(request)),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

    def add_routes(self, app: web.Application) -> None:
        """Serve the operations on ``app``, every answer with the protective headers."""
        if protect_answer not in app.on_response_prepare:
            app.on_response_prepare.append(protect_answer)
        trees: dict[str, RouteTree] = {}
        for op in self.operations:
            methods = (op.method, "HEAD") if op.head else (op.method,)
            prefix = RouteTree.prefix_of(op.path)
            if prefix is None:
                for method in methods:
                    app.router.add_route(method, op.path, op.handler,
                                         expect_handler=expect_continue)
                continue
            if prefix not in trees:
                trees[prefix] = RouteTree(prefix)
                app.router.register_resource(trees[prefix])
            resource = trees[prefix].add_resource(op.path)
            for method in methods:  # HEAD: the GET's headers, no body (aiohttp drops it)
                resource.add_route(method, op.handler, expect_handler=expect_continue)

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document: request bodies in pydantic's validation schema, answers in
        its serialization schema (what the service actually sends), all in one components map."""
        models = self._models()
        generated, definitions = models_json_schema(models, ref_template=_COMPONENT_REF)
        refs: _Refs = {key: generated[key] for key in models}
        paths: dict[str, Any] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = self._operation(op, refs)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {
                "schemas": dict(sorted(definitions.get("$defs", {}).items())),
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
            },
        }

    def _models(self) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
        wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
            (ProblemBody, "serialization"): None}
        for op in self.operations:
            if op.body is not None:
                wanted[(op.body, "validation")] = None
            if op.response is not None:
                wanted[(op.response, "serialization")] = None
        return list(wanted)

    @staticmethod
    def _parameters(op: Operation) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "format": "uuid"} if name.endswith("_id")
             else {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        if op.query is not None:
            query_schema = op.query.model_json_schema()
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required,
                                   "schema": prop})
        return parameters

    def _operation(self, op: Operation, refs: _Refs) -> dict[str, Any]:
        def answer(media: str) -> dict[str, Any]:
            if op.response:
                return refs[(op.response, "serialization")]
            is_json = media == "application/json" or media.endswith("+json")
            return {"type": "object" if is_json else "string"}

        problem: dict[str, Any] = {
            "application/problem+json": {"schema": refs[(ProblemBody, "serialization")]}}
        if op.pages_for_browsers:
            problem["text/html"] = {"schema": {"type": "string"}}
        content = {media: {"schema": answer(media)} for media in op.media_types}
        responses: dict[str, Any] = {
            str(op.status): ({"description": "success, no content"} if op.status == 204
                             else {"description": "success", "content": content}),
            **{str(status): {"description": meaning, "content": content}
               for status, meaning in op.also_answers},
            "4XX": {"description": "problem (RFC 9457)", "content": problem},
        }
        spec: dict[str, Any] = {"summary": op.summary, "tags": [op.tag],
                                "operationId": op.handler.__name__,
                                "parameters": self._parameters(op), "responses": responses}
        if op.body is not None:
            # no body at all stands for {} where the model needs no field (parse_body), and a
            # field the query also carries may come there instead (a removal's ?reason=)
            in_query = set(op.query.model_fields) if op.query is not None else set()
            needed = any(field.is_required() and name not in in_query
                         for name, field in op.body.model_fields.items())
            spec["requestBody"] = {"required": needed, "content": {"application/json": {
                "schema": refs[(op.body, "validation")]}}}
        if not op.public:
            spec["security"] = [{"bearer": []}]
        return spec

    def docs_page(self) -> str:
        rows = "".join(
            f"<tr><td><code>{op.method}</code></td><td><code>{html.escape(op.path)}</code></td>"
            f"<td>{html.escape(op.summary)}</td></tr>" for op in self.operations)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{self.title}</title>"
                f"</head><body><h1>{html.escape(self.title)}</h1><p>Machine-readable: "
                f"<a href='/openapi.json'>/openapi.json</a></p><table>{rows}</table>"
                "</body></html>")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): a faster loop and socket transport."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
