"""Bearer JWTs: who is asking (subject, role, agency, named cases) and proving it.

Development tokens are HS256 with ``CASETRAIL_JWT_SECRET``; production verifies RS256/EdDSA
signatures against a public key or a JWKS file, so the services never hold a signing key.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import TypeAdapter, ValidationError

from schemas.events import MAX_IDENTIFIER, ExactUserId, uuid_from_text
from services.common.quoting import quoted
from services.common.settings import ConfigurationError, ServiceSettings


class Role(StrEnum):
    CASE_MANAGER = "case_manager"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    ANALYST = "analyst"
    PARTICIPANT = "participant"
    SERVICE = "service"


# the roles whose tokens reach only the cases they name
NAMED_CASES_ROLES = frozenset({Role.PARTICIPANT, Role.AUDITOR})


class AuthError(Exception):
    """The request does not carry a token we accept; the message says why."""


# How both services begin refusing a token with a time window what shows cases as they are
# now (decision 0006); each adds why, and what to use instead.
WINDOW_SEES_THE_PAST = "this token sees cases only as they were inside its time window"


@dataclass(frozen=True)
class Principal:
    sub: str
    role: Role
    agency: str
    cases: frozenset[UUID] = frozenset()
    # auditors are scoped to a time window of the record as well as to named cases; either
    # bound may be open (None)
    window_from: datetime | None = None
    window_to: datetime | None = None

    def names_case(self, case_id: UUID) -> bool:
        return case_id in self.cases

    @property
    def reads_audited(self) -> bool:
        """Supervisors' and auditors' reads of a case are themselves logged (the brief's
        Security section), in each service's access log."""
        return self.role in (Role.SUPERVISOR, Role.AUDITOR)

    @property
    def has_window(self) -> bool:
        return self.window_from is not None or self.window_to is not None


_ASYMMETRIC = ["RS256", "ES256", "EdDSA"]
_VERIFIED_CACHE_SIZE = 10_000
# The cache also holds at most this many characters of token: a principal costs about three
# times its token's length (an auditor's named cases), and a token may fill the 64 KiB header
# limit, so 10,000 of the largest came to some 2 GiB. Ordinary tokens (a few hundred
# characters) still get their 10,000 places.
_VERIFIED_CACHE_CHARS = 4 << 20
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", re.ASCII)
_IDENTIFIER: TypeAdapter[str] = TypeAdapter(ExactUserId)


def check_secret(secret: str) -> None:
    """An HS256 secret both the services and `casetrail token` accept."""
    if len(secret.encode()) < 32:
        raise ConfigurationError("CASETRAIL_JWT_SECRET must be at least 32 bytes (RFC 7518 3.2)")


def expected_claims(settings: ServiceSettings) -> dict[str, str]:
    """The audience and issuer the services check, when set: a token this deployment signs
    with its secret must carry them, or the services refuse it."""
    claims = {"aud": settings.jwt_audience, "iss": settings.jwt_issuer}
    return {name: value for name, value in claims.items() if value}


class TokenVerifier:
    def __init__(self, settings: ServiceSettings) -> None:
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._secret = settings.jwt_secret
        self._public_key = (settings.jwt_public_key_file.read_text()
                            if settings.jwt_public_key_file else None)
        self._public_algorithm = (_algorithm_of(self._public_key)
                                  if self._public_key is not None else None)
        self._jwks = _public_key_set(settings.jwks_file) if settings.jwks_file else None
        # least recently used first: a burst of other tokens must not push out the ones in use
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._verified_chars = 0
        if self._secret is not None:
            check_secret(self._secret)
        if not (self._secret or self._public_key or self._jwks):
            raise ConfigurationError("set CASETRAIL_JWT_SECRET, CASETRAIL_JWT_PUBLIC_KEY_FILE"
                               " or CASETRAIL_JWKS_FILE")

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if self._jwks is not None and header.get("kid"):
            for key in self._jwks.keys:
                if key.key_id == header["kid"]:
                    # the key decides the algorithm, never the token's header: a header naming
                    # another key type must be refused, not handed to the wrong verifier
                    return key.key, [key.algorithm_name]
            raise AuthError("token signed with an unknown key id")
        if algorithm == "HS256" and self._secret:
            return self._secret, ["HS256"]
        if algorithm in _ASYMMETRIC and self._public_algorithm:
            return self._public_key, [self._public_algorithm]
        # the header is unsigned: what it names is quoted cut short, not echoed whole
        raise AuthError(f"tokens signed with {quoted(algorithm, 40)} are not accepted here")

    def verify(self, token: str) -> Principal:
        """The token's principal; a token verified before is answered from memory until it
        expires, leeway included (a client sends the same token with every request)."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached[1] > time.time():
                self._verified.move_to_end(token)
                return cached[0]
            self._forget(token)  # expired: verified again below, which refuses it
        principal, expires = self._verify(token)
        self._remember(token, principal, expires)
        return principal

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        """Cache a verified token, forgetting the least recently used past either bound."""
        self._verified[token] = (principal, expires)
        self._verified_chars += len(token)
        while (len(self._verified) > _VERIFIED_CACHE_SIZE
               or self._verified_chars > _VERIFIED_CACHE_CHARS):
            self._forget(next(iter(self._verified)))

    def _forget(self, token: str) -> None:
        del self._verified[token]
        self._verified_chars -= len(token)

    def _verify(self, token: str) -> tuple[Principal, float]:
        if not _COMPACT_JWS.fullmatch(token):  # PyJWT raises no PyJWTError on non-ASCII
            raise AuthError("the token is not a JWT (three base64url parts joined by dots)")
        try:
            key, algorithms = self._key_for(token)
            # PyJWT's default with no audience configured: a token naming one is refused (it
            # was minted for another application)
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=self._audience, issuer=self._issuer,
                leeway=self._leeway, options={"require": ["exp", "sub", "role", "agency"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token has expired") from error
        except jwt.InvalidAudienceError as error:
            if self._audience is None:
                raise AuthError("token names an audience, and this service is configured with"
                                " none: set CASETRAIL_JWT_AUDIENCE") from error
            raise AuthError(f"token rejected: {error}") from error
        except jwt.PyJWTError as error:
            raise AuthError(f"token rejected: {error}") from error
        _numeric_date(claims, "exp")  # refuses an exp no calendar holds (required above)
        # PyJWT takes the token while int(exp) > now - leeway; the cache keeps it that long
        return principal_from_claims(claims), int(claims["exp"]) + self._leeway


def _public_key_set(path: Path) -> jwt.PyJWKSet:
    """The identity provider's public keys. A symmetric (``oct``) key there would let anyone
    who can read the file sign tokens, so it stops the start; so does a key of ``alg: none``
    or a file of no key that verifies. Other keys are passed over: one published for
    encryption, and one PyJWT cannot use."""
    try:
        document = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigurationError(f"CASETRAIL_JWKS_FILE is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise ConfigurationError('CASETRAIL_JWKS_FILE must hold a JSON object: {"keys": [...]}')
    keys = document.get("keys")
    if not isinstance(keys, list) or not all(isinstance(key, dict) for key in keys):
        raise ConfigurationError('CASETRAIL_JWKS_FILE must hold {"keys": [...]}, a list of'
                                 " JSON objects (one per key)")
    unusable = [_unusable(key) or _not_for_signatures(key) for key in keys]
    signing = [key for key, why in zip(keys, unusable, strict=True) if why is None]
    try:
        return jwt.PyJWKSet.from_dict({**document, "keys": signing})
    except jwt.PyJWKSetError as error:
        named = "; ".join(why for why in unusable if why) or "it holds no key"
        raise ConfigurationError(f"CASETRAIL_JWKS_FILE holds no key that verifies tokens:"
                                 f" {named}") from error


def _not_for_signatures(key: dict[str, Any]) -> str | None:
    """Why the JWKS ``key`` is not one to verify signatures with (None: it is). A key the
    provider publishes for encryption (RFC 7517 4.2 and 4.3: ``use`` other than ``sig``, or
    ``key_ops`` without ``verify``) verified tokens: whatever decrypts with it could sign."""
    use, operations = key.get("use"), key.get("key_ops")
    for_encryption = use is not None and use != "sig"
    not_to_verify = operations is not None and (not isinstance(operations, list)
                                                or "verify" not in operations)
    if for_encryption or not_to_verify:
        return f"key {key.get('kid')!r} is published for {use or operations!r}, not to verify"
    return None


def _unusable(key: dict[str, Any]) -> str | None:
    """Why PyJWT cannot verify with the JWKS ``key`` (None: it can)."""
    named = f"key {key.get('kid')!r} (alg {key.get('alg')!r})"
    if not all(isinstance(key.get(name, ""), str) for name in ("kty", "alg", "kid")):
        # PyJWT fails on such a key with a TypeError, a traceback at start
        raise ConfigurationError(f"CASETRAIL_JWKS_FILE: {named}: kty, alg and kid are strings")
    if key.get("kty") == "oct":
        raise ConfigurationError(f"CASETRAIL_JWKS_FILE holds a symmetric (oct) key,"
                                 f" {key.get('kid')!r}: it must hold public keys only")
    try:
        jwt.PyJWK(key)
    except NotImplementedError as error:  # "none": PyJWT raises this, not a PyJWTError
        raise ConfigurationError(f"CASETRAIL_JWKS_FILE: {named} verifies no signature;"
                                 " remove it") from error
    except jwt.PyJWTError:  # its message repeats the whole key
        return f"{named} is not one PyJWT verifies with"
    return None


def _algorithm_of(public_key_pem: str) -> str:
    """The one signing algorithm a public key verifies (RS256, ES256 or EdDSA)."""
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigurationError(f"CASETRAIL_JWT_PUBLIC_KEY_FILE holds no PEM public key this"
                                 f" service reads: {error}") from error
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"  # the only curve ES256 signs with: another one would refuse every token
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ConfigurationError("CASETRAIL_JWT_PUBLIC_KEY_FILE must hold an RSA, EC (P-256) or Ed25519"
                       " public key")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    try:
        role = Role(claims["role"])
    except ValueError as error:
        raise AuthError(f"unknown role {claims['role']!r}") from error
    sub, agency = identity(claims, "sub"), identity(claims, "agency")
    raw_cases = claims.get("cases", [])
    if not isinstance(raw_cases, list):
        raise AuthError("cases must be a list of case ids")
    try:
        cases = frozenset(uuid_from_text(str(c)) for c in raw_cases)
    except ValueError as error:
        raise AuthError("cases must be a list of case ids") from error
    window_from = _numeric_date(claims, "window_from")
    window_to = _numeric_date(claims, "window_to")
    if window_from is not None and window_to is not None and window_from > window_to:
        raise AuthError("window_from must not be later than window_to")
    if role is Role.AUDITOR and window_from is None and window_to is None:
        # an auditor's scope is named cases *and* a stretch of their record (a court order);
        # a token without one is refused rather than read as "all of it"
        raise AuthError("an auditor token must carry an audit window: window_from,"
                        " window_to or both")
    return Principal(sub, role, agency, cases, window_from, window_to)


def identity(claims: dict[str, Any], name: str) -> str:
    """``sub`` and ``agency`` are recorded with every event and every audited read, so they
    must be what the records accept as an identifier: a NUL or a lone surrogate used to reach
    PostgreSQL and answer 500, and a right-to-left override was recorded as the actor."""
    value = claims[name]
    if isinstance(value, str):
        with suppress(ValidationError):
            return str(_IDENTIFIER.validate_python(value))
    raise AuthError(f"{name} must be an identifier of 1-{MAX_IDENTIFIER} characters, without"
                    " surrounding spaces, control or formatting characters (such as U+200B or"
                    " U+202E) or invalid Unicode")


def _numeric_date(claims: dict[str, Any], name: str) -> datetime | None:
    """A time claim (``exp``, the audit window) is a NumericDate, Unix seconds; anything else,
    or a time no calendar holds, makes the token invalid rather than silently widening or
    breaking its scope."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"{name} must be a time in Unix seconds")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise AuthError(f"{name} is not a representable time") from error


def issue_token(secret: str, *, sub: str, role: Role | str, agency: str,
                cases: list[str] | None = None, ttl_seconds: int = 8 * 3600,
                window_from: datetime | None = None, window_to: datetime | None = None,
                extra: dict[str, Any] | None = None) -> str:
    """An HS256 development token."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": str(Role(role)), "agency": agency,
                              "iat": now, "exp": now + ttl_seconds}
    if cases:
        claims["cases"] = [str(uuid_from_text(c)) for c in cases]
    if window_from is not None:
        claims["window_from"] = _unix_seconds(window_from)
    if window_to is not None:
        claims["window_to"] = _unix_seconds(window_to)
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")


def _unix_seconds(moment: datetime) -> int | float:
    if moment.tzinfo is None:
        raise ValueError("window bounds need a time zone")
    seconds = moment.timestamp()
    return int(seconds) if seconds.is_integer() else seconds


def dev_secret(data_dir: Path) -> str:
    """The per-checkout development token secret."""
    return dev_secret_file(data_dir, "jwt-secret").read_text().strip()


def dev_secret_file(data_dir: Path, name: str, size: int = 32) -> Path:
    """A development secret of ``size`` random bytes, made once and kept in the dev data
    folder, readable by its owner only (as a production secret file would be)."""
    import secrets

    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(size))
    return path
