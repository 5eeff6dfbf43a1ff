"""Readiness tells the truth when the database is away or behind; production key setups."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from services.common.auth import TokenVerifier
from services.common.settings import ConfigurationError, ServiceSettings
from tests.conftest import ClientFactory, TokenFactory, bearer


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"sub": "notifier", "role": "service", "agency": "*",
                               "exp": int(time.time()) + 600}
    base.update(overrides)
    return base


async def test_readyz_is_503_while_a_migration_is_pending(make_records_client: ClientFactory,
                                                          fresh_database_url: str,
                                                          fresh_pool: asyncpg.Pool) -> None:
    client = await make_records_client(fresh_database_url)
    newest = await fresh_pool.fetchval("SELECT max(version) FROM records.schema_migrations")
    await fresh_pool.execute("DELETE FROM records.schema_migrations WHERE version = $1", newest)
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 503
    assert body["checks"]["migrations"].startswith("pending: ")


async def test_readyz_and_requests_are_503_while_the_database_refuses_connections(
        make_records_client: ClientFactory, fresh_database_url: str,
        postgres_server_url: str, token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    name = urlsplit(fresh_database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = $1", name)
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503, body
        assert body["checks"]["database"].startswith("unreachable")
        for _ in range(3):  # pooled connections die one by one: every request is a clear 503
            listing = await client.get("/v1/cases", headers=bearer(token(role="supervisor")))
            problem = await listing.json()
            assert listing.status == 503, problem
            assert listing.content_type == "application/problem+json"
            assert listing.headers["Retry-After"]
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    again = await client.get("/readyz")
    assert again.status == 200


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_rs256_tokens_verify_and_an_hs256_token_is_not_accepted_in_their_place(
        make_records_client: ClientFactory, database_url: str, tmp_path: Path) -> None:
    key = _rsa_key()
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(_public_pem(key))
    client = await make_records_client(database_url, CASETRAIL_JWT_SECRET=None,
                                       CASETRAIL_JWT_PUBLIC_KEY_FILE=key_file)
    good = jwt.encode(claims(), key, algorithm="RS256")
    assert (await client.get("/v1/events", headers=bearer(good))).status == 200
    forged = jwt.encode(claims(), _rsa_key(), algorithm="RS256")
    # the classic confusion: the public key used as an HMAC secret
    confused = jwt.encode(claims(), "x" * 64, algorithm="HS256")
    for token in (forged, confused):
        response = await client.get("/v1/events", headers=bearer(token))
        assert response.status == 401
        assert response.content_type == "application/problem+json"


def _verifier_for(key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> TokenVerifier:
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return TokenVerifier(ServiceSettings.model_validate(
        {"CASETRAIL_JWT_SECRET": None, "CASETRAIL_JWT_PUBLIC_KEY_FILE": key_file}))


def test_an_ec_key_verifies_es256_on_p256_and_another_curve_stops_the_start(
        tmp_path: Path) -> None:
    """ES256 is ECDSA on P-256: a key on another curve was taken at start, and every token
    refused after."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    principal = _verifier_for(p256, tmp_path).verify(jwt.encode(claims(), p256, "ES256"))
    assert principal.sub == claims()["sub"]
    with pytest.raises(ConfigurationError, match="CASETRAIL_JWT_PUBLIC_KEY_FILE must hold"):
        _verifier_for(ec.generate_private_key(ec.SECP384R1()), tmp_path)


async def test_a_jwks_file_picks_the_key_by_its_id(make_records_client: ClientFactory,
                                                  database_url: str, tmp_path: Path) -> None:
    current, previous = _rsa_key(), _rsa_key()
    keys = []
    for kid, key in (("2026-11", current), ("2026-05", previous)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": keys}))
    client = await make_records_client(database_url, CASETRAIL_JWT_SECRET=None,
                                       CASETRAIL_JWKS_FILE=jwks_file)
    for kid, key in (("2026-11", current), ("2026-05", previous)):
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": kid})
        assert (await client.get("/v1/events", headers=bearer(token))).status == 200, kid
    refused = {
        "unknown kid": jwt.encode(claims(), current, algorithm="RS256", headers={"kid": "x"}),
        "kid of another key": jwt.encode(claims(), previous, algorithm="RS256",
                                         headers={"kid": "2026-11"}),
    }
    for name, token in refused.items():
        response = await client.get("/v1/events", headers=bearer(token))
        assert response.status == 401, name


def _forged(header: dict[str, str]) -> str:
    """A token anyone can write: any header, valid claims, a signature of nothing."""
    def encoded(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return ".".join([encoded(json.dumps(header).encode()), encoded(json.dumps(claims()).encode()),
                     encoded(b"x" * 64)])


async def test_a_header_naming_another_algorithm_than_the_keys_is_a_401_not_a_500(
        make_records_client: ClientFactory, database_url: str, tmp_path: Path) -> None:
    edwards, rivest = ed25519.Ed25519PrivateKey.generate(), _rsa_key()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [
        {**json.loads(OKPAlgorithm.to_jwk(edwards.public_key())), "kid": "ed"},
        {**json.loads(RSAAlgorithm.to_jwk(rivest.public_key())), "kid": "rsa"}]}))
    pem_file = tmp_path / "public.pem"
    pem_file.write_bytes(_public_pem(rivest))
    by_jwks = await make_records_client(database_url, CASETRAIL_JWT_SECRET=None,
                                        CASETRAIL_JWKS_FILE=jwks_file)
    by_pem = await make_records_client(database_url, CASETRAIL_JWT_SECRET=None,
                                       CASETRAIL_JWT_PUBLIC_KEY_FILE=pem_file)
    good = jwt.encode(claims(), edwards, algorithm="EdDSA", headers={"kid": "ed"})
    assert (await by_jwks.get("/v1/events", headers=bearer(good))).status == 200
    refused = [(by_jwks, {"alg": "RS256", "kid": "ed"}), (by_jwks, {"alg": "ES256", "kid": "ed"}),
               (by_jwks, {"alg": "EdDSA", "kid": "rsa"}), (by_jwks, {"alg": "ES256", "kid": "rsa"}),
               (by_pem, {"alg": "EdDSA"}), (by_pem, {"alg": "ES256"})]
    for client, header in refused:
        response = await client.get("/v1/events", headers=bearer(_forged(header)))
        assert response.status == 401, header
        assert response.content_type == "application/problem+json"


async def test_issuer_and_audience_are_checked_when_configured(
        make_records_client: ClientFactory, database_url: str, tmp_path: Path) -> None:
    key = _rsa_key()
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(_public_pem(key))
    client = await make_records_client(
        database_url, CASETRAIL_JWT_SECRET=None, CASETRAIL_JWT_PUBLIC_KEY_FILE=key_file,
        CASETRAIL_JWT_ISSUER="https://id.agency.example", CASETRAIL_JWT_AUDIENCE="casetrail")
    right = {"iss": "https://id.agency.example", "aud": "casetrail"}
    token = jwt.encode(claims(**right), key, algorithm="RS256")
    assert (await client.get("/v1/events", headers=bearer(token))).status == 200
    for name, wrong in {"no issuer": {"aud": "casetrail"},
                        "other issuer": {**right, "iss": "https://elsewhere.example"},
                        "no audience": {"iss": right["iss"]},
                        "other audience": {**right, "aud": "billing"}}.items():
        token = jwt.encode(claims(**wrong), key, algorithm="RS256")
        response = await client.get("/v1/events", headers=bearer(token))
        assert response.status == 401, name
