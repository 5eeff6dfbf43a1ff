"""The token verification cache over a long run: its memory is bounded, whatever the tokens.

A court's auditor token names the cases of its order (about 50 bytes a case; the servers take
headers up to 64 KiB for them), and a principal holds each named case as a UUID, so one cached
entry can cost some 200 KiB. Bounded by count alone (10,000 entries), a few weeks of such
tokens (each client refreshing its own) would have held about 2 GiB, four times the pod's
memory limit.
"""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from services.common.auth import Role, TokenVerifier, issue_token
from services.common.settings import ServiceSettings
from tests.conftest import JWT_SECRET

COURT_CASES = 1_200  # a court order of this many cases: a token of about 62 KB
TOKENS = 300
BUDGET_MIB = 20


def _court_tokens() -> list[str]:
    cases = [str(uuid4()) for _ in range(COURT_CASES)]
    window_from = datetime.now(UTC) - timedelta(days=90)
    return [issue_token(JWT_SECRET, sub=f"court-{n}", role=Role.AUDITOR, agency="agency-a",
                        cases=cases, window_from=window_from, extra={"jti": str(n)})
            for n in range(TOKENS)]


def _retained_mib(verifier: TokenVerifier, tokens: list[str]) -> float:
    """What verifying every token once leaves allocated (the tokens themselves excepted)."""
    gc.collect()
    tracemalloc.start()
    try:
        for token in tokens:
            verifier.verify(token)
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return retained / (1 << 20)


def test_many_large_court_tokens_stay_within_a_memory_budget() -> None:
    verifier = TokenVerifier(ServiceSettings(CASETRAIL_JWT_SECRET=JWT_SECRET))
    tokens = _court_tokens()
    assert len(tokens[0]) > 60_000

    retained = _retained_mib(verifier, tokens)

    assert retained < BUDGET_MIB, f"{TOKENS} court tokens kept {retained:.1f} MiB"
    # still a cache: the latest token is answered from memory, and stays right
    principal = verifier.verify(tokens[-1])
    assert principal.sub == f"court-{TOKENS - 1}"
    assert len(principal.cases) == COURT_CASES


def test_ordinary_tokens_are_still_cached_by_the_ten_thousand() -> None:
    """The budget leaves the usual tokens (a few hundred bytes) their 10,000 places: each of
    them, verified again, is answered from the cache (the same principal object)."""
    verifier = TokenVerifier(ServiceSettings(CASETRAIL_JWT_SECRET=JWT_SECRET))
    tokens = [issue_token(JWT_SECRET, sub=f"cm-{n}", role=Role.CASE_MANAGER, agency="agency-a",
                          extra={"jti": str(n)}) for n in range(10_000)]
    first = [verifier.verify(token) for token in tokens]
    again = [verifier.verify(token) for token in tokens]
    assert all(a is b for a, b in zip(first, again, strict=True))
