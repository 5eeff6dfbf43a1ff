"""The records service's HTTP shell: authentication, problem bodies, health, OpenAPI."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.common.settings import ConfigurationError, Settings
from tests.conftest import JWT_SECRET, ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi, event_count


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"sub": "cm-1", "role": "service", "agency": "agency-a",
                               "exp": int(time.time()) + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _signed(*, key: object = JWT_SECRET, algorithm: str = "HS256",
            **overrides: object) -> Callable[[], str]:
    return lambda: jwt.encode(claims(**overrides), key, algorithm=algorithm)  # type: ignore[arg-type]


# Minted when a test runs: a token minted at import expired before its test ran late in a
# long suite (CI, 2026-12-07).
BAD_TOKENS: dict[str, Callable[[], str]] = {
    "garbage": lambda: "not-a-jwt",
    "wrong secret": _signed(key="another-secret-that-is-long-enough-32b"),
    # past the 30 s leeway for clock skew (CASETRAIL_JWT_LEEWAY_SECONDS)
    "expired": lambda: jwt.encode(claims(exp=int(time.time()) - 60), JWT_SECRET,
                                  algorithm="HS256"),
    "no exp": _signed(exp=None),
    "no agency": _signed(agency=None),
    "unknown role": _signed(role="offender"),
    "empty sub": _signed(sub=""),
    # each of these reached PostgreSQL as the actor of an audited read or a write: 500
    "NUL in sub": _signed(sub="cm\u00001"),
    "lone surrogate in agency": _signed(agency="a\udc00"),
    "spaces around sub": _signed(sub=" cm-1 "),
    "control character in sub": _signed(sub="cm\t1"),
    "overlong agency": _signed(agency="a" * 201),
    "numeric sub": _signed(sub=7),
    "bad cases": _signed(cases=["nope"]),
    "alg none": _signed(key=None, algorithm="none"),
    # times no calendar holds: PyJWT accepts them, and reading them overflowed (500)
    "exp past any calendar": _signed(exp=10**400),
    "window past any calendar": _signed(role="auditor", cases=[str(uuid.uuid4())],
                                        window_to=10**400),
    "window before any calendar": _signed(role="auditor", cases=[str(uuid.uuid4())],
                                          window_from=-(10**400)),
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_a_problem(records_client: TestClient,
                                                     name: str) -> None:
    response = await records_client.get("/v1/events", headers=bearer(BAD_TOKENS[name]()))
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["status"] == 401
    assert body["detail"]


IDENTITY_TOKENS = ("NUL in sub", "lone surrogate in agency", "spaces around sub",
                   "control character in sub", "overlong agency")


@pytest.mark.parametrize("name", sorted(IDENTITY_TOKENS))
async def test_a_write_under_a_token_with_an_unstorable_identity_is_401_and_writes_nothing(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        name: str) -> None:
    client = await make_records_client(fresh_database_url)
    claims_of = jwt.decode(BAD_TOKENS[name](), JWT_SECRET, algorithms=["HS256"])
    token = jwt.encode({**claims_of, "role": "supervisor"}, JWT_SECRET, algorithm="HS256")
    response = await client.post("/v1/cases", headers=bearer(token), json={
        "participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"})
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert await event_count(fresh_pool) == 0


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "token"])
async def test_missing_or_malformed_authorization_is_401(records_client: TestClient,
                                                          header: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = await records_client.get("/v1/events", headers=headers)
    assert response.status == 401
    assert (await response.json())["type"].endswith("/unauthorized")


async def test_eddsa_tokens_verify_against_a_public_key(make_records_client: ClientFactory,
                                                        database_url: str, tmp_path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public_pem)
    client = await make_records_client(database_url, CASETRAIL_JWT_PUBLIC_KEY_FILE=key_file)
    good = jwt.encode(claims(), private, algorithm="EdDSA")
    assert (await client.get("/v1/events", headers=bearer(good))).status == 200
    forged = jwt.encode(claims(), ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA")
    assert (await client.get("/v1/events", headers=bearer(forged))).status == 401


async def test_health_and_readiness(records_client: TestClient) -> None:
    health = await records_client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"
    ready = await records_client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200, body
    assert body["checks"] == {"database": "ok", "migrations": "current"}


async def test_head_answers_like_get_without_a_body(records_client: TestClient,
                                                    token: TokenFactory) -> None:
    health = await records_client.head("/healthz")
    assert (health.status, await health.read()) == (200, b"")
    cm = CaseApi(records_client, token())
    case_id = await cm.open_case()
    plan = await records_client.head(f"/v1/cases/{case_id}", headers=bearer(token()))
    assert (plan.status, plan.headers["ETag"], await plan.read()) == (200, '"1"', b"")
    missing = await records_client.head(f"/v1/cases/{uuid.uuid4()}", headers=bearer(token()))
    assert missing.status == 404
    # not on a stream or an audited read, where it would log a read while showing nothing
    for path in (f"/v1/cases/{case_id}/export", f"/v1/cases/{case_id}/history", "/v1/cases"):
        assert (await records_client.head(path, headers=bearer(token()))).status == 405, path


async def test_openapi_is_generated_from_the_models(records_client: TestClient) -> None:
    response = await records_client.get("/openapi.json")
    spec = await response.json()
    assert spec["openapi"].startswith("3.1")
    feed = spec["paths"]["/v1/events"]["get"]
    assert {p["name"] for p in feed["parameters"]} >= {"after", "limit", "wait"}
    assert "FeedPage" in spec["components"]["schemas"]
    assert feed["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    docs = await records_client.get("/docs")
    assert docs.status == 200
    assert "/v1/events" in await docs.text()


async def test_unknown_route_and_wrong_method_are_problems(records_client: TestClient,
                                                           token: TokenFactory) -> None:
    missing = await records_client.get("/v1/nothing-here", headers=bearer(token()))
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    wrong = await records_client.delete("/healthz")
    assert wrong.status == 405
    assert (await wrong.json())["status"] == 405


async def test_request_ids_are_echoed_or_made(records_client: TestClient) -> None:
    given = await records_client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = await records_client.get("/healthz", headers={"X-Request-Id": "bad id!"})
    assert len(made.headers["X-Request-Id"]) == 32


async def test_metrics_are_exposed(records_client: TestClient) -> None:
    await records_client.get("/healthz")
    text = await (await records_client.get("/metrics")).text()
    assert "casetrail_http_request_seconds" in text


def test_short_hs256_secrets_are_refused(database_url: str) -> None:
    from services.records.http.app import create_app

    settings = Settings.model_validate({"DATABASE_URL": database_url,
                                        "CASETRAIL_JWT_SECRET": "short"})
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        create_app(settings)
