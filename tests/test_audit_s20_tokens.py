"""Bearer-token audit of both services, as a security reviewer would run it (twentieth session).

design.md, Security: "Bearer JWTs (HS256 secret for development, RS256/EdDSA public keys or a
JWKS file in production), with sub, role, agency". The README ("Tokens, roles and tenancy",
the CASETRAIL_JWT_* / CASETRAIL_JWKS_FILE settings), docs/decisions/0001 ("the key decides the
algorithm ... never the token's header"), 0004 (identities, audience, JWKS contents, one
Authorization header) and 0013 (header limits) say what is taken and what is refused.

Each probe goes through the HTTP surface of the records API and of the notifier's API (they
share one verifier and one middleware, services/common), with tokens crafted here with PyJWT
and cryptography when the test runs. A refusal must be a 401 problem with an RFC 6750
``WWW-Authenticate`` challenge, write nothing, and leave the token out of the answer and the
logs. What earlier audits already pinned (tests/test_audit_security.py's JOSE header tricks,
tests/test_http_shell.py's bad tokens, tests/test_readiness_and_production_tokens.py's key
setups, the leeway and cache tests) is not repeated here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
import structlog
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from services.notifier.http.app import create_app as create_notifier_app
from services.records.http.app import create_app as create_records_app
from tests.conftest import JWT_SECRET, ClientFactory, bearer, make_settings, serve
from tests.notifier_helpers import notifier_settings
from tests.records_api import PARTICIPANT, event_count

AGENCY = "agency-a"
INVALID_TOKEN = 'Bearer error="invalid_token"'

# --- token crafting ------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, Any]:
    """A case manager's claims, valid for ten minutes; None drops a claim."""
    base: dict[str, Any] = {"sub": "cm-1", "role": "case_manager", "agency": AGENCY,
                            "iat": int(time.time()), "exp": int(time.time()) + 600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def _hmac(header: bytes, payload: bytes, secret: bytes = JWT_SECRET.encode(),
          digest: Callable[..., Any] = hashlib.sha256) -> str:
    """A compact JWS of exactly these header and payload bytes (duplicate names, NaN, any
    ``alg``), its signature an HMAC with ``secret``: what a holder of the secret, or of the
    bytes a confused verifier takes for one, can write."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    mac = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(mac)}"


def _raw(header: dict[str, Any], claims: dict[str, Any], secret: bytes = JWT_SECRET.encode(),
         digest: Callable[..., Any] = hashlib.sha256) -> str:
    return _hmac(json.dumps(header).encode(), json.dumps(claims).encode(), secret, digest)


def _good() -> str:
    return jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwk(key: rsa.RSAPrivateKey, **members: object) -> dict[str, Any]:
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), **members}


# --- the two services ----------------------------------------------------------------------

# a route each service answers 200 for the case manager _good() names, and one that writes
READ = {"records": "/v1/cases", "notifier": "/v1/notifications"}
PREFERENCES = {"email": "cm-1@agency.example", "delivery": "immediate", "timezone": "UTC",
               "celebrations": True}

Clients = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def service_client(aiohttp_client: Clients, database_url: str) -> Clients:
    """A test client of either service on the run's shared database, with the settings given
    (the development HS256 secret unless told otherwise)."""
    async def make(service: str, **settings: object) -> TestClient:
        if service == "records":
            return await aiohttp_client(create_records_app(make_settings(database_url,
                                                                         **settings)))
        # no feed or dispatch loop: the records URL and the mail server are never called
        if settings.get("CASETRAIL_JWT_SECRET", JWT_SECRET) is None:
            settings = {"RECORDS_TOKEN": "the feed is never read here", **settings}
        config = notifier_settings(database_url, "http://127.0.0.1:9", 9, **settings)
        return await aiohttp_client(create_notifier_app(config, background=False))
    return make


async def _refused(response: ClientResponse, token: str, what: object) -> dict[str, Any]:
    """The answer is RFC 6750's invalid_token challenge with a problem body, the token not
    echoed in it."""
    text = await response.text()
    assert response.status == 401, (what, response.status, text[:500])
    assert response.content_type == "application/problem+json", what
    assert response.headers.get("WWW-Authenticate") == INVALID_TOKEN, (what, response.headers)
    problem: dict[str, Any] = json.loads(text)
    assert problem["status"] == 401, what
    assert problem["type"].endswith("/unauthorized"), (what, problem)
    assert problem["detail"], what
    signature = token.rsplit(".", 1)[-1]
    if len(signature) > 8:
        assert signature not in text, what
    assert token not in text, what
    return problem


SERVICES = ["records", "notifier"]


@pytest.mark.parametrize("service", SERVICES)
async def test_a_sound_token_is_taken_by_both_services(service_client: Clients,
                                                       service: str) -> None:
    """The control for every refusal below: the same route answers a sound token."""
    client = await service_client(service)
    response = await client.get(READ[service], headers=bearer(_good()))
    assert response.status == 200, await response.text()


# --- algorithm confusion and forged headers --------------------------------------------------


def _stranger_signed(algorithm: str) -> Callable[[], str]:
    def make() -> str:
        key: Any = {"RS256": _rsa, "PS256": _rsa,
                    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
                    "EdDSA": ed25519.Ed25519PrivateKey.generate}[algorithm]()
        return jwt.encode(_claims(), key, algorithm=algorithm)
    return make


def _embedded_jwk() -> str:
    stranger = _rsa()
    return jwt.encode(_claims(), stranger, algorithm="RS256",
                      headers={"jwk": _jwk(stranger)})


def _unsigned(alg: str, signature: str | None) -> str:
    parts = [_b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()),
             _b64(json.dumps(_claims()).encode())]
    return ".".join(parts if signature is None else [*parts, signature])


FORGED: dict[str, Callable[[], str]] = {
    "alg none, empty signature": lambda: _unsigned("none", ""),
    "alg none, no signature part": lambda: _unsigned("none", None),
    "alg None capitalised": lambda: _unsigned("None", ""),
    "alg NONE": lambda: _unsigned("NONE", ""),
    # the secret holder's own signature, under an algorithm name that is not HS256
    "hs256 in lower case": lambda: _raw({"alg": "hs256", "typ": "JWT"}, _claims()),
    "HS384 with the secret": lambda: _raw({"alg": "HS384"}, _claims(),
                                          digest=hashlib.sha384),
    "HS512 with the secret": lambda: _raw({"alg": "HS512"}, _claims(),
                                          digest=hashlib.sha512),
    # asymmetric algorithms nobody configured here
    "RS256 by a stranger": _stranger_signed("RS256"),
    "PS256 by a stranger": _stranger_signed("PS256"),
    "ES256 by a stranger": _stranger_signed("ES256"),
    "EdDSA by a stranger": _stranger_signed("EdDSA"),
    "jwk header carrying the stranger's key": _embedded_jwk,
    # RFC 7515 4.1.11: an extension the verifier does not understand listed in crit
    "crit with an unknown extension": lambda: _raw(
        {"alg": "HS256", "crit": ["http://example.com/policy"],
         "http://example.com/policy": "lenient"}, _claims()),
    # RFC 7797: the payload is not base64url, so the claims read are not the ones signed
    "b64 false": lambda: _raw({"alg": "HS256", "b64": False, "crit": ["b64"]}, _claims()),
    # RFC 7515 4: a parser either refuses duplicate names or takes the last one: none here
    "duplicate alg, none last": lambda: _hmac(b'{"alg":"HS256","alg":"none"}',
                                              json.dumps(_claims()).encode()),
    "signed with another secret": lambda: _raw({"alg": "HS256"}, _claims(),
                                               secret=b"another-secret-of-at-least-32-bytes!"),
}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("forgery", sorted(FORGED))
async def test_forged_and_unconfigured_algorithms_are_refused(service_client: Clients,
                                                              service: str,
                                                              forgery: str) -> None:
    """Only HS256 is configured (the development secret): an unsigned token, the secret's
    HMAC under another name, or any asymmetric algorithm is an invalid token, 401."""
    client = await service_client(service)
    token = FORGED[forgery]()
    await _refused(await client.get(READ[service], headers=bearer(token)), token, forgery)


def _configured_with(kind: str, tmp_path: Path) -> tuple[dict[str, object], bytes, str | None]:
    """Settings verifying with public keys only, the public bytes a confused verifier might
    take for an HMAC secret, and the key id a token names."""
    if kind == "ed25519 pem":
        pem = _pem(ed25519.Ed25519PrivateKey.generate().public_key())
        (tmp_path / "public.pem").write_bytes(pem)
        return {"CASETRAIL_JWT_SECRET": None,
                "CASETRAIL_JWT_PUBLIC_KEY_FILE": tmp_path / "public.pem"}, pem, None
    jwk = _jwk(_rsa(), kid="idp-1", use="sig", alg="RS256")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    settings: dict[str, object] = {"CASETRAIL_JWT_SECRET": None,
                                   "CASETRAIL_JWKS_FILE": tmp_path / "jwks.json"}
    if kind == "jwks, the jwk's json":
        return settings, json.dumps(jwk).encode(), "idp-1"
    return settings, base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "idp-1"


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("kind", ["ed25519 pem", "jwks, the jwk's json", "jwks, the modulus"])
async def test_public_key_bytes_as_an_hmac_secret_are_refused(service_client: Clients,
                                                              tmp_path: Path, service: str,
                                                              kind: str) -> None:
    """The classic confusion, for an EdDSA key file and for a JWKS (the RSA PEM case is pinned
    elsewhere): anyone holds the public key, so an HS256 token keyed with its bytes must not
    verify. The key decides the algorithm (decision 0001)."""
    settings, public, kid = _configured_with(kind, tmp_path)
    client = await service_client(service, **settings)
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    token = _raw(header, _claims(), secret=public)
    await _refused(await client.get(READ[service], headers=bearer(token)), token, kind)


async def test_a_jwks_key_decides_the_algorithm_even_against_its_own_signature(
        service_client: Clients, tmp_path: Path) -> None:
    """A JWKS key published for RS512 verifies RS512 tokens only: an RS256 signature by the
    very same key, naming its kid, is refused (the key's ``alg`` decides, not the token's)."""
    key = _rsa()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_jwk(key, kid="k", alg="RS512")]}))
    client = await service_client("records", CASETRAIL_JWT_SECRET=None,
                                  CASETRAIL_JWKS_FILE=tmp_path / "jwks.json")
    taken = jwt.encode(_claims(), key, algorithm="RS512", headers={"kid": "k"})
    assert (await client.get("/v1/cases", headers=bearer(taken))).status == 200
    token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k"})
    await _refused(await client.get("/v1/cases", headers=bearer(token)), token, "RS256 on RS512")


@pytest.mark.parametrize("service", SERVICES)
async def test_a_key_published_for_encryption_verifies_no_token(service_client: Clients,
                                                                tmp_path: Path,
                                                                service: str) -> None:
    """README, CASETRAIL_JWKS_FILE: "a key it cannot use beside usable ones (an encryption key)
    is passed over". An identity provider's JWKS lists its encryption key beside its signing
    keys; RFC 7517 4.2 marks it ``"use": "enc"`` (encrypting data to the provider). A token
    naming that key's kid and signed with its private half must not be taken as one the
    provider signed: an encryption key is not a signing key, and whatever decrypts with it (an
    RSA decryption oracle is enough to forge PKCS#1 v1.5 signatures) would mint any token."""
    signing, encrypting = _rsa(), _rsa()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [
        _jwk(signing, kid="sig-1", use="sig", alg="RS256"),
        _jwk(encrypting, kid="enc-1", use="enc")]}))
    client = await service_client(service, CASETRAIL_JWT_SECRET=None,
                                  CASETRAIL_JWKS_FILE=tmp_path / "jwks.json")
    signed = jwt.encode(_claims(), signing, algorithm="RS256", headers={"kid": "sig-1"})
    assert (await client.get(READ[service], headers=bearer(signed))).status == 200
    token = jwt.encode(_claims(), encrypting, algorithm="RS256", headers={"kid": "enc-1"})
    await _refused(await client.get(READ[service], headers=bearer(token)), token,
                   "signed with the encryption key")


@pytest.mark.parametrize("kid", ["' OR '1'='1", "../../../../etc/passwd", "idp-1\u0000",
                                 "IDP-1"])
async def test_a_kid_that_names_no_key_of_the_jwks_is_refused(service_client: Clients,
                                                              tmp_path: Path, kid: str) -> None:
    """A key id is looked up in the JWKS and nowhere else, exactly (no files, no queries, no
    case folding): one that names none of its keys is an invalid token, whatever it holds."""
    key = _rsa()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_jwk(key, kid="idp-1")]}))
    client = await service_client("records", CASETRAIL_JWT_SECRET=None,
                                  CASETRAIL_JWKS_FILE=tmp_path / "jwks.json")
    token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": kid})
    await _refused(await client.get("/v1/cases", headers=bearer(token)), token, kid)


# --- claims: signed with the secret, so only the services' own checks stand between ---------


def _signed_claims(**overrides: object) -> Callable[[], str]:
    return lambda: _raw({"alg": "HS256", "typ": "JWT"}, _claims(**overrides))


def _without(name: str) -> Callable[[], str]:
    def make() -> str:
        claims = _claims()
        del claims[name]
        return _raw({"alg": "HS256"}, claims)
    return make


def _with_null(name: str) -> Callable[[], str]:
    def make() -> str:
        claims: dict[str, Any] = {**_claims(), name: None}
        return _raw({"alg": "HS256"}, claims)
    return make


def _raw_payload(text: str) -> Callable[[], str]:
    """Claims written as JSON text (NaN, duplicates), {exp} the usual expiry."""
    return lambda: _hmac(b'{"alg":"HS256"}', text.replace("{exp}", str(int(time.time()) + 600))
                         .encode())


def _named_cases(role: str, cases: object) -> Callable[[], str]:
    extra: dict[str, object] = {"window_to": 4102444800} if role == "auditor" else {}
    return _signed_claims(sub="court-1" if role == "auditor" else "pa-1", role=role,
                          cases=cases, **extra)


BAD_CLAIMS: dict[str, Callable[[], str]] = {
    **{f"{name} missing": _without(name) for name in ("sub", "role", "agency")},
    **{f"{name} null": _with_null(name) for name in ("sub", "role", "agency", "exp")},
    "sub a list": _signed_claims(sub=["cm-1"]),
    "sub an object": _signed_claims(sub={"id": "cm-1"}),
    "sub of 201 characters": _signed_claims(sub="c" * 201),
    "role a number": _signed_claims(role=1),
    "role a list": _signed_claims(role=["supervisor"]),
    "role true": _signed_claims(role=True),
    "role empty": _signed_claims(role=""),
    "role Supervisor": _signed_claims(role="Supervisor"),
    "role SUPERVISOR": _signed_claims(role="SUPERVISOR"),
    "role with a trailing space": _signed_claims(role="supervisor "),
    "role admin": _signed_claims(role="admin"),
    "agency a number": _signed_claims(agency=7),
    "agency a list": _signed_claims(agency=[AGENCY]),
    "agency empty": _signed_claims(agency=""),
    "agency of 201 characters": _signed_claims(agency="a" * 201),
    "exp a numeric string": lambda: _raw({"alg": "HS256"},
                                         _claims(exp=str(int(time.time()) + 600))),
    "exp a word": _signed_claims(exp="tomorrow"),
    "exp true": _signed_claims(exp=True),
    "exp NaN": _raw_payload('{"sub":"cm-1","role":"case_manager","agency":"agency-a",'
                            '"exp":NaN}'),
    "exp Infinity": _raw_payload('{"sub":"cm-1","role":"case_manager","agency":"agency-a",'
                                 '"exp":Infinity}'),
    "nbf a word": _signed_claims(nbf="now"),
    "nbf in a year": lambda: _raw({"alg": "HS256"}, _claims(nbf=int(time.time()) + 31536000)),
    "iat a word": _signed_claims(iat="now"),
    "participant cases a string": lambda: _named_cases("participant", str(uuid.uuid4()))(),
    "participant cases an object": lambda: _named_cases("participant",
                                                        {"id": str(uuid.uuid4())})(),
    "participant cases [null]": _named_cases("participant", [None]),
    "participant cases [42]": _named_cases("participant", [42]),
    "participant cases [true]": _named_cases("participant", [True]),
    "auditor cases not uuids": _named_cases("auditor", ["case-1", "case-2"]),
    "auditor cases nested": lambda: _named_cases("auditor", [[str(uuid.uuid4())]])(),
}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("claim", sorted(BAD_CLAIMS))
async def test_a_token_whose_claims_are_not_what_the_readme_says_is_refused(
        service_client: Clients, service: str, claim: str) -> None:
    """README: "Requests carry Authorization: Bearer <JWT> with sub, role, agency and exp";
    roles are the six named, in lower case; sub and agency are identifiers of 1-200 characters
    (decision 0004); cases are case ids. A token that is anything else is invalid, 401 —
    never a principal built of a coerced value, and never a 500."""
    client = await service_client(service)
    token = BAD_CLAIMS[claim]()
    await _refused(await client.get(READ[service], headers=bearer(token)), token, claim)


@pytest.mark.parametrize("service", SERVICES)
async def test_every_lower_case_role_is_taken_and_only_that_spelling(service_client: Clients,
                                                                    service: str) -> None:
    """The control for the role refusals above: the six roles, spelt as the README spells
    them, are tokens the middleware takes (whatever the route then allows)."""
    client = await service_client(service)
    for role in ("case_manager", "supervisor", "analyst", "participant", "service", "auditor"):
        extra: dict[str, object] = {}
        if role in ("participant", "auditor"):
            extra["cases"] = [str(uuid.uuid4())]
        if role == "auditor":
            extra["window_to"] = 4102444800
        token = jwt.encode(_claims(sub=f"{role}-1", role=role, **extra), JWT_SECRET, "HS256")
        response = await client.get(READ[service], headers=bearer(token))
        assert response.status != 401, (role, await response.text())


@pytest.mark.parametrize("service", SERVICES)
async def test_duplicate_claim_names_resolve_to_the_last_as_rfc_7519_allows(
        service_client: Clients, service: str) -> None:
    """RFC 7519 4: a parser either refuses a claims set with duplicate names or takes the
    lexically last one. Whichever, both services must read one token alike: a token naming
    case_manager then supervisor is either refused or a supervisor's, and one naming
    supervisor then case_manager either refused or a case manager's."""
    client = await service_client(service)
    exp = int(time.time()) + 600
    answers = []
    for first, last in (("case_manager", "supervisor"), ("supervisor", "case_manager")):
        payload = (f'{{"sub":"cm-1","role":"{first}","agency":"{AGENCY}","exp":{exp},'
                   f'"role":"{last}"}}')
        token = _hmac(b'{"alg":"HS256"}', payload.encode())
        # the access log is the supervisors' alone, in both services
        response = await client.get("/v1/access-log", headers=bearer(token))
        answers.append(response.status)
        if response.status != 401:
            assert response.status == (200 if last == "supervisor" else 403), (first, last)
    assert answers in ([200, 403], [401, 401]), answers


# --- audience and issuer ---------------------------------------------------------------------

ISSUER = "https://id.agency.example"
AUDIENCE = "casetrail"

WRONG_AUDIENCE_OR_ISSUER: dict[str, dict[str, Any]] = {
    "audience list without ours": {"aud": ["billing", "crm"], "iss": ISSUER},
    "audience a number": {"aud": 5, "iss": ISSUER},
    "audience list holding a number": {"aud": [AUDIENCE, 5], "iss": ISSUER},
    "audience in upper case": {"aud": AUDIENCE.upper(), "iss": ISSUER},
    "issuer in upper case": {"aud": AUDIENCE, "iss": ISSUER.upper()},
    "issuer with a trailing slash": {"aud": AUDIENCE, "iss": ISSUER + "/"},
    "issuer a list": {"aud": AUDIENCE, "iss": [ISSUER]},
    "no audience": {"iss": ISSUER},
    "no issuer": {"aud": AUDIENCE},
}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_configured_audience_and_issuer_are_matched_exactly(service_client: Clients,
                                                                   service: str) -> None:
    """README: CASETRAIL_JWT_AUDIENCE and CASETRAIL_JWT_ISSUER are "checked when set", the same
    in both services (0013). RFC 7519 4.1.3 lets ``aud`` be a list: one naming us among others
    is ours; anything not naming us exactly, or not a string, is refused."""
    client = await service_client(service, CASETRAIL_JWT_AUDIENCE=AUDIENCE,
                                  CASETRAIL_JWT_ISSUER=ISSUER)
    for taken in ({"aud": AUDIENCE, "iss": ISSUER}, {"aud": ["crm", AUDIENCE], "iss": ISSUER}):
        token = _raw({"alg": "HS256"}, _claims(**taken))
        response = await client.get(READ[service], headers=bearer(token))
        assert response.status == 200, (taken, await response.text())
    for name, wrong in WRONG_AUDIENCE_OR_ISSUER.items():
        token = _raw({"alg": "HS256"}, _claims(**wrong))
        await _refused(await client.get(READ[service], headers=bearer(token)), token, name)


@pytest.mark.parametrize("service", SERVICES)
async def test_an_issuer_is_not_checked_where_none_is_configured_but_an_audience_is(
        service_client: Clients, service: str) -> None:
    """README: with no audience set "a token naming one (aud) is refused"; the issuer is only
    "checked when set", so an identity provider's ``iss`` alone does not lock anyone out."""
    client = await service_client(service)
    with_issuer = _raw({"alg": "HS256"}, _claims(iss=ISSUER))
    assert (await client.get(READ[service], headers=bearer(with_issuer))).status == 200
    with_audience = _raw({"alg": "HS256"}, _claims(aud=[AUDIENCE]))
    problem = await _refused(await client.get(READ[service], headers=bearer(with_audience)),
                             with_audience, "audience list")
    assert "CASETRAIL_JWT_AUDIENCE" in problem["detail"]


# --- how the token travels -------------------------------------------------------------------


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[int]:
    """The records service served as in production (ServiceRunner: its header limits, its
    access log, its own answers to what aiohttp refuses), on a real socket."""
    runner, port = await serve(create_records_app(make_settings(database_url)))
    yield port
    await runner.cleanup()


async def _exchange(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw request on a connection of its own: the status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(head)
        with contextlib.suppress(ConnectionResetError):  # answered before the head ended
            await writer.drain()
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                answer += chunk
    finally:
        writer.close()
    assert answer, "no answer at all"
    raw_head, _, body = answer.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _request(authorization: bytes | None, target: str = "/v1/cases") -> bytes:
    head = f"GET {target} HTTP/1.1\r\nHost: records\r\nConnection: close\r\n".encode()
    if authorization is not None:
        head += b"Authorization: " + authorization + b"\r\n"
    return head + b"\r\n"


ACCEPTED_SPELLINGS: dict[str, Callable[[str], bytes]] = {
    # RFC 7235 2.1: the scheme is case-insensitive, and 1*SP separates it from the token
    "lower-case scheme": lambda t: f"bearer {t}".encode(),
    "upper-case scheme": lambda t: f"BEARER {t}".encode(),
    "two spaces": lambda t: f"Bearer  {t}".encode(),
    # RFC 9110 5.5: whitespace around a field value is not part of it
    "surrounding whitespace": lambda t: f"  Bearer {t}  ".encode(),
}


@pytest.mark.parametrize("spelling", sorted(ACCEPTED_SPELLINGS))
async def test_a_sound_token_is_taken_however_http_lets_it_be_spelt(served: int,
                                                                    spelling: str) -> None:
    status, _, body = await _exchange(served, _request(ACCEPTED_SPELLINGS[spelling](_good())))
    assert status == 200, (spelling, body[:300])


NOT_A_BEARER_TOKEN: dict[str, Callable[[str], bytes]] = {
    "a trailing dot": lambda t: f"Bearer {t}.".encode(),
    "base64 padding on the signature": lambda t: f"Bearer {t}=".encode(),
    "base64 padding on every part": lambda t: ("Bearer " + ".".join(
        part + "=" * (-len(part) % 4 or 4) for part in t.split("."))).encode(),
    "in quotes": lambda t: f'Bearer "{t}"'.encode(),
    "two tokens": lambda t: f"Bearer {t} {t}".encode(),
    "a tab instead of the space": lambda t: f"Bearer\t{t}".encode(),
    "a comma after it": lambda t: f"Bearer {t},".encode(),
    "non-ASCII after it": lambda t: f"Bearer {t}".encode() + "\u00e9".encode(),
    "non-ASCII inside it": lambda t: t.replace(".", "\u2024", 1).join(["Bearer ", ""]).encode(),
    "a raw 0xff byte before it": lambda t: b"Bearer \xff" + t.encode(),
    "another scheme": lambda t: f"Token {t}".encode(),
    "Basic credentials": lambda t: b"Basic " + base64.b64encode(b"cm-1:" + t.encode()),
    "the scheme alone": lambda t: b"Bearer",
    # HTTP's optional white space is spaces and tabs only; a proxy may read others as token
    "a no-break space before it": lambda t: f"Bearer \u00a0{t}".encode(),
    "an ideographic space after it": lambda t: f"Bearer {t}\u3000".encode(),
}


@pytest.mark.parametrize("spelling", sorted(NOT_A_BEARER_TOKEN))
async def test_anything_but_one_bearer_token_is_a_401_challenge(served: int,
                                                                spelling: str) -> None:
    """RFC 6750 2.1: ``Bearer 1*SP b64token``. A sound token spelt any other way is not one:
    401 with a problem body and a ``WWW-Authenticate: Bearer`` challenge (never a 500, and
    never the token read after mending it)."""
    token = _good()
    status, headers, body = await _exchange(served, _request(NOT_A_BEARER_TOKEN[spelling](token)))
    assert status == 401, (spelling, status, body[:300])
    assert headers.get("content-type", "").startswith("application/problem+json"), spelling
    assert headers.get("www-authenticate", "").startswith("Bearer"), (spelling, headers)
    assert token.rsplit(".", 1)[1].encode() not in body, spelling


async def test_no_credentials_get_a_challenge_without_an_error_code(served: int) -> None:
    """RFC 6750 3.1: "If the request lacks any authentication information ... the resource
    server SHOULD NOT include an error code"; a token that fails says invalid_token."""
    status, headers, body = await _exchange(served, _request(None))
    assert status == 401, body[:300]
    assert headers.get("www-authenticate") == "Bearer"
    status, headers, _ = await _exchange(served, _request(b"Bearer not.a.token"))
    assert status == 401
    assert headers.get("www-authenticate") == INVALID_TOKEN


@pytest.mark.parametrize("where", ["access_token", "token", "jwt", "authorization"])
async def test_a_token_in_the_query_string_is_not_taken(served: int, where: str) -> None:
    """RFC 6750 2.3 advises against tokens in URIs (they end up in logs and histories); the
    README takes them in the Authorization header only."""
    status, _, body = await _exchange(served, _request(None, f"/v1/cases?{where}={_good()}"))
    # 400 when the listing refuses the unknown parameter, 401 when the middleware asks first:
    # either way the token was not taken
    assert status in (400, 401), (where, status, body[:300])
    assert status != 200


async def test_a_token_over_the_header_limit_is_a_4xx_problem_that_echoes_nothing(
        served: int) -> None:
    """Decision 0013: headers are read up to 64 KiB and a request head up to 96 KiB; past that
    a 400 problem (RFC 6585's 431 would do too), neither a 500 nor a dropped connection,
    and the answer quotes none of the token. 10,000 named cases come to some 380 KB."""
    cases = [str(uuid.uuid4()) for _ in range(10_000)]
    huge = jwt.encode(_claims(sub="court-1", role="auditor", cases=cases,
                              window_to=4102444800), JWT_SECRET, "HS256")
    for token in (huge, _good() + "A" * 100_000):
        status, headers, body = await _exchange(served, _request(f"Bearer {token}".encode()))
        assert status in (400, 431), (status, body[:300])
        assert headers.get("content-type", "").startswith("application/problem+json")
        assert token[-40:].encode() not in body
        assert len(body) < 2000, len(body)


# --- a refusal writes nothing and logs no token ---------------------------------------------


def _refused_tokens() -> dict[str, str]:
    stranger = _rsa()
    return {
        "forged signature": _raw({"alg": "HS256"}, _claims(role="supervisor"),
                                 secret=b"not-the-secret-but-at-least-32-bytes"),
        "alg none": _unsigned("none", ""),
        "expired": jwt.encode(_claims(exp=int(time.time()) - 3600), JWT_SECRET, "HS256"),
        "unknown role": jwt.encode(_claims(role="root"), JWT_SECRET, "HS256"),
        "stranger's RS256": jwt.encode(_claims(), stranger, algorithm="RS256"),
        "not a JWT": "opaque-" + uuid.uuid4().hex * 4,
        # white space HTTP does not allow around a value (it was dropped, and the token taken)
        "a no-break space before a sound token": "\u00a0" + _good(),
    }


async def test_a_refused_token_writes_nothing_in_either_service(
        aiohttp_client: Clients, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        make_records_client: ClientFactory) -> None:
    records = await make_records_client(fresh_database_url)
    notifier = await aiohttp_client(create_notifier_app(
        notifier_settings(fresh_database_url, "http://127.0.0.1:9", 9), background=False))
    case = {"participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "moderate"}
    before_events = await event_count(fresh_pool)
    before_directory = await fresh_pool.fetchval("SELECT count(*) FROM notifier.directory")
    for name, token in _refused_tokens().items():
        await _refused(await records.post("/v1/cases", json=case, headers=bearer(token)),
                       token, ("records", name))
        await _refused(await notifier.put("/v1/preferences/cm-1", json=PREFERENCES,
                                          headers=bearer(token)), token, ("notifier", name))
    assert await event_count(fresh_pool) == before_events
    assert await fresh_pool.fetchval("SELECT count(*) FROM notifier.directory") == \
        before_directory
    # the control: the same writes under a sound token do write
    assert (await records.post("/v1/cases", json=case, headers=bearer(_good()))).status == 201
    put = await notifier.put("/v1/preferences/cm-1", json=PREFERENCES, headers=bearer(_good()))
    assert put.status == 200, await put.text()
    assert await event_count(fresh_pool) > before_events


async def test_no_log_line_carries_a_refused_or_misplaced_token(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A token is a credential for its whole lifetime: neither the refusal of one nor a token
    sent in the query string may put it (or its signature) into the service's logs."""
    runner, port = await serve(create_records_app(make_settings(database_url)))
    tokens = _refused_tokens()
    misplaced = _good()
    caplog.set_level(logging.DEBUG)
    try:
        with structlog.testing.capture_logs() as lines:
            async with ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
                for token in tokens.values():
                    async with session.get("/v1/cases", headers=bearer(token)) as response:
                        assert response.status == 401
                async with session.get(f"/v1/cases?access_token={misplaced}") as response:
                    assert response.status in (400, 401)
    finally:
        await runner.cleanup()
    logged = json.dumps(lines, default=str) + caplog.text
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) == len(tokens) + 1, lines  # the log was captured
    for name, token in [*tokens.items(), ("in the query", misplaced)]:
        for part in token.split(".")[1:]:
            if len(part) > 8:
                assert part not in logged, name


async def test_an_unsigned_algorithm_name_is_quoted_cut_short(
        service_client: Clients) -> None:
    """The header is unsigned: an ``alg`` of any length came back whole in the 401's detail
    (4,000 characters here: the test server refuses longer headers before us)."""
    token = _raw({"alg": "X" * 4_000, "typ": "JWT"}, _claims())
    for service in ("records", "notifier"):
        client = await service_client(service)
        answer = await client.get(READ[service], headers=bearer(token))
        assert answer.status == 401
        assert len(await answer.read()) < 2_000, service
