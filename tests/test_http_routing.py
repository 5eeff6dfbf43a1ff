"""Route resolution through RouteTree answers exactly as aiohttp's own router would."""

from __future__ import annotations

import itertools

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.common.http import Api, RouteTree
from services.notifier.http import routes as notifier_routes  # noqa: F401  (registers them)
from services.notifier.http.app import api as notifier_api
from services.records.http import routes  # noqa: F401  (registers the case routes)
from services.records.http.app import api as records_api

CASE = "/v1/cases/0b7e4f1c-2d3a-4e5f-8a9b-1c2d3e4f5a6b"
PATHS = [
    "/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/v1", "/v1/cases",
    "/v1/cases/", "/v1/events", "/v1/access-log", CASE, f"{CASE}/", "/v1/cases//notes",
    f"{CASE}/notes", f"{CASE}/notes/", f"{CASE}/notes/x", f"{CASE}/participant",
    f"{CASE}/strengths", f"{CASE}/strengths/s-1", f"{CASE}/strengths/s-1/status",
    f"{CASE}/goals/g-1", f"{CASE}/goals/g-1/status", f"{CASE}/goals/g-1/steps",
    f"{CASE}/goals/status", f"{CASE}/steps/s-2/complete", f"{CASE}/steps/s-2/status",
    f"{CASE}/supports/x", f"{CASE}/requirements/r/status", f"{CASE}/reviews/r/held",
    f"{CASE}/reviews/r/reschedule", f"{CASE}/history", f"{CASE}/diff", f"{CASE}/verify",
    f"{CASE}/close", f"{CASE}/reopen", f"{CASE}/transfer", f"{CASE}/agreements",
    "/v1/cases/not-a-uuid/notes", "/v1/cases/a%2Fb/notes", "/v1/cases/%7Bx%7D/notes",
    "/v1/cases/caf%C3%A9/history", "/v1/cases/{x}/notes", "/v1/notifications",
    "/v1/notifications/abc", "/v1/notifications/abc/retry", "/v1/preferences/u-1",
    "/v1/preferences/u-1/x", "/nope/notes",
]
METHODS = ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]


def reference_app(api: Api) -> web.Application:
    """The routes as aiohttp registers them one by one (a GET with its HEAD, if any)."""
    app = web.Application()
    for op in api.operations:
        if op.head:
            app.router.add_get(op.path, op.handler)
        else:
            app.router.add_route(op.method, op.path, op.handler)
    return app


def tree_app(api: Api) -> web.Application:
    app = web.Application()
    api.add_routes(app)
    return app


async def resolved(app: web.Application, method: str, path: str) -> tuple[object, ...]:
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    error = match.http_exception
    if error is not None:
        return error.status, error.headers.get("Allow")
    resource = match.route.resource
    assert resource is not None
    return match.handler, dict(match), resource.canonical


@pytest.mark.parametrize("api", [records_api, notifier_api], ids=["records", "notifier"])
async def test_every_path_and_method_resolves_as_aiohttp_would(api: Api) -> None:
    reference, tree = reference_app(api), tree_app(api)
    for method, path in itertools.product(METHODS, PATHS):
        assert await resolved(tree, method, path) == await resolved(reference, method, path), \
            f"{method} {path}"


async def test_each_operation_resolves_to_its_own_handler() -> None:
    app = tree_app(records_api)
    for op in records_api.operations:
        path = op.path.replace("{case_id}", CASE.rsplit("/", 1)[1]).replace("{", "").replace(
            "}", "")
        match = await app.router.resolve(make_mocked_request(op.method, path, app=app))
        assert match.handler is op.handler, f"{op.method} {op.path}"
        resource = match.route.resource
        assert resource is not None
        assert resource.canonical == op.path


def test_the_router_lists_every_route() -> None:
    listed = {(route.method, route.resource.canonical)
              for route in tree_app(records_api).router.routes() if route.resource}
    assert listed == {(op.method, op.path) for op in records_api.operations} | {
        ("HEAD", op.path) for op in records_api.operations if op.head}


@pytest.mark.parametrize(("path", "prefix"), [
    ("/v1/cases", None), ("/v1/cases/{case_id}/notes", "/v1/cases"), ("/{a}/b", "/"),
    ("/files/{name}.txt", None), ("/v1/{tail:.*}", None), ("/a/b{c}", None),
])
def test_only_whole_segment_placeholders_go_into_a_tree(path: str, prefix: str | None) -> None:
    assert RouteTree.prefix_of(path) == prefix


async def test_paths_outside_a_tree_still_route() -> None:
    api = Api(title="t", version="1")

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    for path in ["/{a}/b", "/{a}/c", "/files/{name}.txt", "/x/{tail:.*}"]:
        api.route("GET", path, "s")(handler)
    reference, tree = reference_app(api), tree_app(api)
    for method, path in itertools.product(["GET", "POST"], [
            "/q/b", "/q/c", "/q/d", "/files/a.txt", "/x/y/z", "/files/a.txt/"]):
        assert await resolved(tree, method, path) == await resolved(reference, method, path)
