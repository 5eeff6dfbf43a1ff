"""The floor for `bench/append.py`: the same HTTP request through the same stack, doing only what
any append must do (read the JSON body, insert one row in its own transaction, answer JSON).

No authentication, validation, decision, hash chain or projection: what this process answers
per second bounds what any service on aiohttp + asyncpg can append on the same machine.

    python -m bench.floor_app --port PORT [--reuse-port]      (DATABASE_URL must be set)
"""

from __future__ import annotations

import argparse
import os
from uuid import UUID, uuid4

import asyncpg
import orjson
from aiohttp import web

from services.common.http import new_event_loop

_POOL = web.AppKey("pool", asyncpg.Pool)


async def open_case(request: web.Request) -> web.Response:
    return web.json_response({"case_id": str(uuid4())}, status=201)


async def add_note(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    case_id = UUID(request.match_info["case_id"])
    await request.app[_POOL].execute(
        "INSERT INTO bench_floor_notes (case_id, data) VALUES ($1, $2)",
        case_id, orjson.dumps(body).decode())
    return web.Response(body=orjson.dumps({"case_id": str(case_id)}), status=201,
                        content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def make_app(database_url: str, pool_size: int) -> web.Application:
    app = web.Application()
    pool = await asyncpg.create_pool(database_url, min_size=pool_size, max_size=pool_size)
    await pool.execute("CREATE TABLE IF NOT EXISTS bench_floor_notes (id bigint GENERATED"
                       " ALWAYS AS IDENTITY PRIMARY KEY, case_id uuid, data jsonb)")
    app[_POOL] = pool

    async def close_pool(app: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close_pool)
    app.router.add_post("/v1/cases", open_case)
    app.router.add_post("/v1/cases/{case_id}/notes", add_note)
    app.router.add_get("/readyz", ready)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuse-port", action="store_true")
    options = parser.parse_args()
    app = make_app(os.environ["DATABASE_URL"], int(os.environ.get("CASETRAIL_DB_POOL_MAX", 16)))
    web.run_app(app, host="127.0.0.1", port=options.port, reuse_port=options.reuse_port or None,
                print=None, access_log=None, loop=new_event_loop())
