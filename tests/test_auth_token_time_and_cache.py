"""Token times under clock skew, and which verified tokens the cache keeps.

An identity provider's clock and ours drift apart by a few seconds: a token that expired a
moment ago by our clock, or that becomes valid (``nbf``, ``iat``) a moment from now, is taken
within ``CASETRAIL_JWT_LEEWAY_SECONDS`` (30 by default), and the verified-token cache keeps
answering for a token exactly as long as verifying it again would.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jwt
import pytest

from services.common.auth import AuthError, Principal, Role, TokenVerifier, issue_token
from services.common.settings import ServiceSettings
from tests.conftest import JWT_SECRET, ClientFactory, bearer
from tests.test_cli import run


def _verifier(**settings: object) -> TokenVerifier:
    return TokenVerifier(ServiceSettings.model_validate(
        {"CASETRAIL_JWT_SECRET": JWT_SECRET, **settings}))


def _token(**times: float) -> str:
    """A service token with the given time claims, as offsets in seconds from now."""
    now = time.time()
    claims: dict[str, Any] = {"sub": "svc-1", "role": "service", "agency": "agency-a",
                              "exp": int(now) + 600}
    claims.update({name: int(now + offset) for name, offset in times.items()})
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def test_a_token_expired_ten_seconds_ago_is_taken_within_the_default_leeway() -> None:
    token = _token(exp=-10)
    assert _verifier().verify(token).sub == "svc-1"
    with pytest.raises(AuthError, match="token has expired"):
        _verifier(CASETRAIL_JWT_LEEWAY_SECONDS=0).verify(token)


def test_a_token_expired_past_the_leeway_is_refused() -> None:
    with pytest.raises(AuthError, match="token has expired"):
        _verifier().verify(_token(exp=-31))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_valid_from_moments_ahead_is_taken_within_the_leeway(claim: str) -> None:
    assert _verifier().verify(_token(**{claim: 10})).sub == "svc-1"
    with pytest.raises(AuthError, match="not yet valid"):
        _verifier().verify(_token(**{claim: 40}))
    with pytest.raises(AuthError, match="not yet valid"):
        _verifier(CASETRAIL_JWT_LEEWAY_SECONDS=0).verify(_token(**{claim: 10}))


async def test_the_services_answer_a_token_expired_within_the_leeway(
        make_records_client: ClientFactory, database_url: str) -> None:
    lenient = await make_records_client(database_url)
    strict = await make_records_client(database_url, CASETRAIL_JWT_LEEWAY_SECONDS=0)
    token = _token(exp=-10)
    assert (await lenient.get("/v1/events", headers=bearer(token))).status == 200
    refused = await strict.get("/v1/events", headers=bearer(token))
    assert refused.status == 401
    assert refused.content_type == "application/problem+json"


def _start_of_a_second() -> int:
    """The current whole second, waited for until at most 0.3 s of it has passed, so what
    follows has most of a second before the next one starts."""
    now = time.time()
    if now % 1 > 0.3:
        time.sleep(1 - now % 1 + 0.01)
    return math.floor(time.time())


def _cached_through_their_second(verifier: TokenVerifier) -> tuple[int, list[str]] | None:
    """Two tokens whose exp is the current second (one of them fractional), verified and then
    answered from the cache within that second: the second and the tokens. None when the
    second ended before the cache was asked (a stall of the machine): nothing was shown."""
    second = _start_of_a_second()
    tokens = [issue_token(JWT_SECRET, sub="cm-1", role=Role.CASE_MANAGER, agency="agency-a",
                          extra={"exp": second}),
              issue_token(JWT_SECRET, sub="cm-2", role=Role.CASE_MANAGER, agency="agency-a",
                          extra={"exp": second + 0.9})]
    try:
        first = [verifier.verify(token) for token in tokens]
        cached = [verifier.verify(token) is principal
                  for token, principal in zip(tokens, first, strict=True)]
    except AuthError:
        if math.floor(time.time()) == second:
            raise
        return None
    if math.floor(time.time()) != second:
        return None
    # served from the cache (the same principal) though exp has passed: within the leeway
    assert cached == [True, True]
    return second, tokens


def test_the_cache_answers_for_a_token_until_exp_plus_leeway_and_not_after() -> None:
    """PyJWT compares whole seconds: it takes a token while int(exp) > now - leeway. The
    cache must hold the token exactly that long: past its exp (the leeway), not past
    int(exp) + leeway (a fractional exp, or the leeway counted twice, would be later).
    PyJWT reads the wall clock, so the tokens must be verified and asked for again within
    the second they expire in; a stall of the machine past it is tried again (it failed the
    test, as an expired token, when the machine stalled for most of a second)."""
    verifier = _verifier(CASETRAIL_JWT_LEEWAY_SECONDS=1)
    for _ in range(20):
        if (cached := _cached_through_their_second(verifier)) is not None:
            break
    else:
        raise AssertionError("20 tries each stalled past their second: inconclusive")
    second, tokens = cached

    time.sleep(max(0.0, second + 1.05 - time.time()))
    for token in tokens:
        with pytest.raises(AuthError, match="token has expired"):
            verifier.verify(token)


def test_a_token_in_use_stays_cached_through_a_burst_of_other_tokens() -> None:
    """The notifier's service token, or a busy case manager's, is looked up between the
    others; it stays answered from the cache however many other tokens pass through, and the
    token least recently used goes instead."""
    verifier = _verifier()
    hot = issue_token(JWT_SECRET, sub="notifier", role=Role.SERVICE, agency="casetrail")
    hot_principal = verifier.verify(hot)
    burst = [issue_token(JWT_SECRET, sub=f"cm-{n}", role=Role.CASE_MANAGER,
                         agency="agency-a", extra={"jti": str(n)}) for n in range(10_500)]
    burst_principals: list[Principal] = []
    for token in burst:
        burst_principals.append(verifier.verify(token))
        assert verifier.verify(hot) is hot_principal
    assert verifier.verify(burst[-1]) is burst_principals[-1]
    # the size bound still holds: the first of the burst went to make room
    assert verifier.verify(burst[0]) is not burst_principals[0]


@pytest.mark.parametrize("command", ["records", "notifier"])
@pytest.mark.parametrize(("value", "said"), [
    ("301", "Input should be less than or equal to 300 (given '301')"),
    ("-1", "Input should be greater than or equal to 0 (given '-1')"),
    ("thirty", "Input should be a valid integer, unable to parse string as an integer"
               " (given 'thirty')"),
])
def test_a_leeway_outside_0_to_300_seconds_stops_the_start(command: str, value: str,
                                                           said: str) -> None:
    result = run(command, "--port", "0", env={
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
        "CASETRAIL_JWT_SECRET": JWT_SECRET, "CASETRAIL_JWT_LEEWAY_SECONDS": value})
    assert (result.returncode, result.stderr.strip()) == (
        2, f"casetrail: configuration: CASETRAIL_JWT_LEEWAY_SECONDS: {said}")


@pytest.mark.parametrize("value", ["0", "300"])
def test_the_leeway_bounds_themselves_are_settings_a_service_starts_with(value: str) -> None:
    settings = ServiceSettings.model_validate({"CASETRAIL_JWT_SECRET": JWT_SECRET,
                                               "CASETRAIL_JWT_LEEWAY_SECONDS": value})
    assert settings.jwt_leeway_seconds == int(value)
    TokenVerifier(settings)
