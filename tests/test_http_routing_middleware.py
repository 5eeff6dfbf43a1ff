"""The request id middleware: made ids keep uuid4's form, logs carry the id during a request."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from services.common import http
from services.common.http import protect_answer, request_id_middleware
from services.common.problems import problem_middleware

MakeClient = Callable[[web.Application], Awaitable[TestClient]]


async def context(request: web.Request) -> web.Response:
    return web.json_response(structlog.contextvars.get_contextvars())


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


@pytest.fixture
async def client(aiohttp_client: MakeClient) -> TestClient:
    app = web.Application(middlewares=[request_id_middleware, problem_middleware])
    app.on_response_prepare.append(protect_answer)  # it puts the request id on the answer
    app.router.add_get("/context", context)
    app.router.add_get("/crash", crash)
    return await aiohttp_client(app)


async def test_the_request_id_is_in_the_logging_context_only_during_the_request() -> None:
    structlog.contextvars.bind_contextvars(other="kept")
    try:
        request = make_mocked_request("GET", "/", headers={"X-Request-Id": "req-7"})
        response = await request_id_middleware(request, context)
        assert isinstance(response, web.Response)
        assert response.text is not None
        assert json.loads(response.text) == {"other": "kept", "request_id": "req-7"}
        assert structlog.contextvars.get_contextvars() == {"other": "kept"}
    finally:
        structlog.contextvars.unbind_contextvars("other")


async def test_an_unhandled_error_is_logged_with_the_request_id(client: TestClient) -> None:
    with structlog.testing.capture_logs([structlog.contextvars.merge_contextvars]) as logs:
        response = await client.get("/crash")
    request_id = response.headers["X-Request-Id"]
    assert (await response.json())["request_id"] == request_id
    assert logs == [{"event": "unhandled error", "path": "/crash", "method": "GET",
                     "request_id": request_id, "exc_info": True, "log_level": "error"}]


async def test_made_request_ids_are_uuid4_hex(client: TestClient) -> None:
    made = {(await client.get("/context")).headers["X-Request-Id"] for _ in range(20)}
    assert len(made) == 20
    assert all(uuid.UUID(hex=made_id).version == 4 and uuid.UUID(hex=made_id).hex == made_id
               for made_id in made)


@pytest.mark.parametrize("random", [bytes(16), b"\xff" * 16, bytes(range(16)),
                                    bytes(range(200, 216))])
def test_made_request_ids_are_uuid4s_of_the_random_bytes(
        random: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http.os, "urandom", lambda size: random)
    assert http.new_request_id() == uuid.UUID(bytes=random, version=4).hex
