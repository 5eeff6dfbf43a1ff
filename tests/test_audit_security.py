"""A security review of both services' HTTP surfaces, as an attacker holding a token of some
role in some agency, or a forged one: headers given twice, bodies that do not decode, JOSE
header tricks, Unicode and number tricks in bodies, and another agency's ids on every route."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from multidict import CIMultiDict

from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records
from tests.records_api import PARTICIPANT, CaseApi, event_count
from tests.test_authorization import READS, WRITES, Case, _path, build_case

# S1: a header that says how to write (which version, which retry, which trace) given twice


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("Idempotency-Key", ("first-try", "second-try")),
        ("If-Match", ('"1"', '"1"')),
        ("X-Correlation-Id", ("trace-a", "trace-b")),
        ("X-Causation-Id", ("cause-a", "cause-b")),
    ],
)
async def test_a_write_header_given_twice_is_a_400_problem_and_writes_nothing(
    cm: CaseApi, fresh_pool: asyncpg.Pool, name: str, values: tuple[str, str]
) -> None:
    """The first one counted and the second was dropped: a proxy or cache keying on the other
    one (a retry's key, the version) disagreed with the service about what was written."""
    case_id = await cm.open_case()
    before = await event_count(fresh_pool)
    headers = CIMultiDict([*bearer(cm.token).items(), (name, values[0]), (name, values[1])])
    response = await cm.client.post(
        f"/v1/cases/{case_id}/notes", headers=headers, json={"text": "Met at the library"}
    )
    problem = await response.json()
    assert response.status == 400, problem
    assert response.content_type == "application/problem+json"
    assert problem["type"].endswith("/repeated-header")
    assert name in problem["detail"]
    assert problem["errors"] == [{"field": f"header.{name}", "message": "given more than once"}]
    assert await event_count(fresh_pool) == before
    once = CIMultiDict([*bearer(cm.token).items(), (name, values[0])])
    response = await cm.client.post(
        f"/v1/cases/{case_id}/notes", headers=once, json={"text": "Met at the library"}
    )
    assert response.status == 201, await response.text()


# S2: a body that does not decode under its Content-Encoding, where no body is taken


async def test_a_dead_letter_retry_whose_body_does_not_decode_is_400_not_500(
    rig: NotifierRig, token: TokenFactory
) -> None:
    headers = {
        **bearer(token(role="supervisor", sub="sup-1")),
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    response = await rig.client.post(
        f"/v1/notifications/{uuid.uuid4()}/retry", headers=headers, data=b'{"note": "not gzip"}'
    )
    problem = await response.json()
    assert response.status == 400, problem
    assert response.content_type == "application/problem+json"
    assert problem["type"].endswith("/malformed-body")


# S3: an undecodable body is refused once, not logged as a server error after the answer


async def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a connection of its own and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _open_case(port: int, token: str) -> str:
    async with ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
        body = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "moderate"}
        async with session.post("/v1/cases", json=body, headers=bearer(token)) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["case_id"])


NOT_GZIP = b'{"text": "plain, not gzip"}'


def _sent_as_gzip(request_line: str, headers: list[str], framing: str = "length") -> bytes:
    """A request whose body says it is gzip and is not."""
    head = "".join(f"{line}\r\n" for line in [request_line, "Host: records", *headers])
    head += "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
    if framing == "length":
        return f"{head}Content-Length: {len(NOT_GZIP)}\r\n\r\n".encode() + NOT_GZIP
    chunk = f"{len(NOT_GZIP):x}\r\n".encode() + NOT_GZIP + b"\r\n"
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunk + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_that_does_not_decode_is_refused_without_an_unhandled_exception(
    served_records: tuple[int, asyncpg.Pool],
    token: TokenFactory,
    caplog: pytest.LogCaptureFixture,
    framing: str,
) -> None:
    """aiohttp reads what is left of a body after the answer; a body that failed to decode
    failed again there, and each such request logged "Unhandled exception" at error level with
    a traceback, as a fault of the server. The connection closes after the answer either way
    (nothing more of the body is read): the answer now says so."""
    port, pool = served_records
    case_id = await _open_case(port, token())
    before = await event_count(pool)
    request = _sent_as_gzip(
        f"POST /v1/cases/{case_id}/notes HTTP/1.1", [f"Authorization: Bearer {token()}"], framing
    )
    with caplog.at_level(logging.INFO):
        answer = await _raw_exchange(port, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"/malformed-body" in answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert b"Connection: close" in answer
    assert await event_count(pool) == before


# what each answers, the body unread: (request line with {c} for a real case, headers, status)
ANSWERED_UNREAD = {
    "health, no token": ("GET /healthz", [], 200),
    "no such route": ("GET /v1/nowhere", [], 404),
    "case list": ("GET /v1/cases", ["Authorization: Bearer {t}"], 200),
    "a case": ("GET /v1/cases/{c}", ["Authorization: Bearer {t}"], 200),
    "a case's head": ("HEAD /v1/cases/{c}", ["Authorization: Bearer {t}"], 200),
    "a case's history": ("GET /v1/cases/{c}/history", ["Authorization: Bearer {t}"], 200),
    "a note, no token": ("POST /v1/cases/{c}/notes", [], 401),
    "a note, two tokens": (
        "POST /v1/cases/{c}/notes",
        ["Authorization: Bearer {t}", "Authorization: Bearer {t}"],
        400,
    ),
    "a note, two keys": (
        "POST /v1/cases/{c}/notes",
        ["Authorization: Bearer {t}", "Idempotency-Key: a", "Idempotency-Key: b"],
        400,
    ),
}


@pytest.mark.parametrize("what", sorted(ANSWERED_UNREAD))
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_that_does_not_decode_and_is_never_read_logs_no_error(
    served_records: tuple[int, asyncpg.Pool],
    token: TokenFactory,
    caplog: pytest.LogCaptureFixture,
    what: str,
    framing: str,
) -> None:
    """Where a route answers without reading the body (a read, a refusal before the body), the
    drain after the answer failed to decode it and logged "Unhandled exception" with a
    traceback: one unauthenticated request to /healthz made an error-level log line. The
    answer stands; the connection closes after it, the rest of the body unread."""
    port, pool = served_records
    case_id = await _open_case(port, token())
    before = await event_count(pool)
    line, headers, status = ANSWERED_UNREAD[what]
    request = _sent_as_gzip(
        f"{line.format(c=case_id)} HTTP/1.1", [h.format(t=token()) for h in headers], framing
    )
    with caplog.at_level(logging.INFO):
        answer = await _raw_exchange(port, request)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert b"Connection: close" in answer
    assert await event_count(pool) == before


@pytest.mark.parametrize(("line", "status"), [("GET /healthz", 200), ("GET /v1/schedule", 401)])
async def test_the_notifier_answers_a_body_it_never_reads_without_logging_an_error(
    rig: NotifierRig, caplog: pytest.LogCaptureFixture, line: str, status: int
) -> None:
    port = rig.client.port
    assert port is not None
    with caplog.at_level(logging.INFO):
        answer = await _raw_exchange(port, _sent_as_gzip(f"{line} HTTP/1.1", []))
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert b"Connection: close" in answer


# S4: JOSE header tricks against a service that verifies with public keys


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, object]:
    return {
        "sub": "sup-1",
        "role": "supervisor",
        "agency": "agency-a",
        "exp": int(time.time()) + 600,
        **overrides,
    }


def _unsigned(header: dict[str, object]) -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(_claims()).encode()), _b64(b"x" * 256)]
    )


async def test_jose_header_tricks_are_refused(
    make_records_client: ClientFactory, database_url: str, tmp_path: Path
) -> None:
    """What a verifier may be talked into: a key the token brings along (``jwk``, ``jku``,
    ``x5u``), an extension it does not understand (``crit``), a key id that is a path or not a
    string, an algorithm that is not a string, the public key's bytes as an HMAC secret."""
    ours = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attackers = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = ours.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(
        json.dumps(
            {"keys": [{**json.loads(RSAAlgorithm.to_jwk(ours.public_key())), "kid": "2026-12"}]}
        )
    )
    pem_file = tmp_path / "public.pem"
    pem_file.write_bytes(pem)
    client = await make_records_client(
        database_url,
        CASETRAIL_JWT_SECRET=None,
        CASETRAIL_JWKS_FILE=jwks_file,
        CASETRAIL_JWT_PUBLIC_KEY_FILE=pem_file,
    )
    good = jwt.encode(_claims(), ours, algorithm="RS256", headers={"kid": "2026-12"})
    assert (await client.get("/v1/cases", headers=bearer(good))).status == 200
    attacker_jwk = json.loads(RSAAlgorithm.to_jwk(attackers.public_key()))
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64(json.dumps(_claims()).encode())
    pem_as_secret = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
        f"{header}.{payload}".encode(), pem
    )
    refused = {
        "key carried in the token": jwt.encode(
            _claims(), attackers, algorithm="RS256", headers={"jwk": attacker_jwk}
        ),
        "key set named by url": jwt.encode(
            _claims(),
            attackers,
            algorithm="RS256",
            headers={"jku": "https://attacker.example/jwks"},
        ),
        "certificate named by url": jwt.encode(
            _claims(), attackers, algorithm="RS256", headers={"x5u": "https://attacker.example/c"}
        ),
        "unknown critical extension": jwt.encode(
            _claims(),
            ours,
            algorithm="RS256",
            headers={"kid": "2026-12", "crit": ["exp-policy"], "exp-policy": "lenient"},
        ),
        "key id that is a path": jwt.encode(
            _claims(), attackers, algorithm="RS256", headers={"kid": "../../../dev/null"}
        ),
        "key id that is a list": _unsigned({"alg": "RS256", "kid": ["2026-12"]}),
        "algorithm that is a list": _unsigned({"alg": ["RS256", "none"]}),
        "no algorithm": _unsigned({"alg": "none"}),
        "public key as HMAC secret": f"{header}.{payload}.{_b64(pem_as_secret)}",
    }
    for name, token in refused.items():
        response = await client.get("/v1/cases", headers=bearer(token))
        problem = await response.json()
        assert response.status == 401, (name, problem)
        assert response.content_type == "application/problem+json"
        assert token not in json.dumps(problem), name  # never echoed


# S5: Unicode and number tricks in a body never reach the hash chain or PostgreSQL


HOSTILE_BODIES = {
    "NUL in UTF-16": ('{"text": "a\\u0000b"}'.encode("utf-16"), 422),
    "NUL in a key": (b'{"text": "x", "a\\u0000": 1}', 400),
    "lone surrogate escaped": (b'{"text": "a\\ud800b"}', 422),
    "lone surrogate as raw bytes": (b'{"text": "a\xed\xa0\x80b"}', 422),
    "lone surrogate in UTF-16": ('{"text": "a\\udc00b"}'.encode("utf-16"), 422),
    "lone surrogate as a key": (b'{"text": "x", "\\ud800": 1}', 422),
    "number past any float": (b'{"text": 1e999}', 422),
    "NaN": (b'{"text": NaN}', 422),
    "Infinity": (b'{"text": -Infinity}', 422),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_BODIES))
async def test_hostile_bodies_are_refused_and_write_nothing(
    cm: CaseApi, fresh_pool: asyncpg.Pool, kind: str
) -> None:
    case_id = await cm.open_case()
    data, status = HOSTILE_BODIES[kind]
    before = await event_count(fresh_pool)
    response = await cm.client.post(
        f"/v1/cases/{case_id}/notes",
        data=data,
        headers={**bearer(cm.token), "Content-Type": "application/json"},
    )
    problem = await response.json()
    assert response.status == status, (kind, problem)
    assert response.content_type == "application/problem+json"
    assert await event_count(fresh_pool) == before


# S6: another agency's ids answer exactly as made-up ones, on every route of both services


def _comparable(status: int, body: Any) -> tuple[int, Any]:
    """An answer without what differs between any two requests (request id, path)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("request_id", "instance")}
    return status, body


async def _answer(
    client: TestClient, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    response = await client.request(method, path, headers=headers, json=body)
    raw = await response.read()
    return _comparable(response.status, json.loads(raw) if raw else None)


OTHER_AGENCY: dict[str, dict[str, Any]] = {
    "supervisor": {"role": "supervisor", "sub": "sup-b"},
    "case manager with the owner's sub": {"sub": "cm-1"},
    "participant naming the case": {"role": "participant", "sub": "p-1", "cases": True},
    "auditor naming the case": {"role": "auditor", "sub": "court-b", "cases": True},
    "analyst": {"role": "analyst", "sub": "an-b"},
}


@pytest.mark.parametrize("who", sorted(OTHER_AGENCY))
async def test_another_agencys_ids_answer_as_made_up_ones_everywhere(
    rig: NotifierRig, records: Records, token: TokenFactory, who: str
) -> None:
    case = await build_case(CaseApi(records.client, records.token))
    await rig.set_prefs("cm-1", records.token)
    await rig.catch_up()
    notification = str((await rig.rows())[0]["id"])
    made_up = Case(**{name: str(uuid.uuid4()) for name in vars(case)})
    spec = dict(OTHER_AGENCY[who])
    if spec.pop("cases", False):
        spec["cases"] = [case.id, made_up.id]  # an identity provider's mistake, say
    headers = bearer(token(agency="agency-b", **spec))
    for template, body in [
        *((read, None) for read in READS),
        ("HEAD {c}", None),
        ("GET {c}/export?format=fhir", None),
        *WRITES,
    ]:
        method, path = template.split(" ", 1)
        real = await _answer(records.client, method, _path(path, case), headers, body)
        assert real == await _answer(records.client, method, _path(path, made_up), headers, body), (
            template,
            real,
        )
    other = str(uuid.uuid4())
    for method, path in [
        ("GET", "/v1/notifications?case_id={c}"),
        ("GET", "/v1/notifications/{n}"),
        ("POST", "/v1/notifications/{n}/retry"),
        ("GET", "/v1/schedule?case_id={c}"),
        ("GET", "/v1/access-log?case_id={c}"),
    ]:
        real = await _answer(rig.client, method, path.format(c=case.id, n=notification), headers)
        assert real == await _answer(
            rig.client, method, path.format(c=made_up.id, n=other), headers
        ), (path, real)
    real = await _answer(records.client, "GET", f"/v1/access-log?case_id={case.id}", headers)
    assert real == await _answer(
        records.client, "GET", f"/v1/access-log?case_id={made_up.id}", headers
    )
    listing = await records.client.get("/v1/cases", headers=headers)
    assert case.id not in await listing.text()
