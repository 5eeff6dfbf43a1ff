"""Following the records feed over HTTP: long-poll, durable checkpoint, backoff on errors.

The checkpoint lives in ``notifier.checkpoint`` and moves in the same transaction as the
page's effects (services/notifier/schedule.py), so a crash anywhere replays at most one page,
and a replayed page changes nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import structlog
from pydantic import ValidationError

from schemas.feed import FeedPage
from services.common.auth import Role, expected_claims, issue_token
from services.common.database import DATABASE_UNAVAILABLE
from services.common.retry import doubling
from services.common.settings import ConfigurationError
from services.notifier.casemodel import FeedItem, actor_of
from services.notifier.metrics import NotifierMetrics
from services.notifier.rules import RuleSettings
from services.notifier.schedule import FEED_CHECKPOINT, PageResult, apply_page
from services.notifier.settings import NotifierSettings
from services.notifier.store.cases import load_checkpoint

log = structlog.get_logger("casetrail.notifier.feed")
Clock = Callable[[], datetime]
_TOKEN_TTL = 3600


class FeedError(RuntimeError):
    """The feed could not be read. The message, for the log, may quote an address or the
    reply; ``summary`` says what went wrong without either, for the public /readyz."""

    def __init__(self, detail: str, summary: str) -> None:
        super().__init__(detail)
        self.summary = summary


class FeedToken:
    """The service token the feed is read with: the one in RECORDS_TOKEN_FILE, read afresh
    for every request (a token carries an expiry, and a Kubernetes Secret renewed in place
    reaches a running pod only through a mounted file; a few hundred bytes a request cost
    nothing beside the request); else RECORDS_TOKEN; else a service token signed here,
    renewed before it expires and after a 401."""

    def __init__(self, settings: NotifierSettings) -> None:
        self._file = settings.records_token_file
        self._fixed = settings.records_token
        self._secret = settings.jwt_secret
        self._claims = expected_claims(settings)
        self._token = ""
        self._renew_at = 0.0
        if not (self._file or self._fixed or self._secret):
            raise ConfigurationError("set RECORDS_TOKEN_FILE, RECORDS_TOKEN or CASETRAIL_JWT_SECRET"
                               " to read the feed")

    def value(self) -> str:
        if self._file is not None:
            return self._from_file(self._file)
        if self._fixed:
            return self._fixed
        if time.time() >= self._renew_at:
            assert self._secret is not None
            self._token = issue_token(self._secret, sub="notifier", role=Role.SERVICE,
                                      agency="casetrail", ttl_seconds=_TOKEN_TTL,
                                      extra=self._claims)
            self._renew_at = time.time() + _TOKEN_TTL / 2
        return self._token

    def refused(self) -> None:
        """The feed answered 401: a token signed here is signed afresh next time."""
        self._renew_at = 0.0

    @staticmethod
    def _from_file(path: Path) -> str:
        try:
            found = path.read_text().strip()
        except (OSError, UnicodeError) as error:
            raise FeedError(f"cannot read RECORDS_TOKEN_FILE {path}: {error}",
                            "RECORDS_TOKEN_FILE unreadable") from error
        if not found:
            raise FeedError(f"RECORDS_TOKEN_FILE {path} is empty", "RECORDS_TOKEN_FILE empty")
        return found


@dataclass(frozen=True)
class Page:
    items: list[FeedItem]
    checkpoint: str
    held_back_since: datetime | None = None  # the oldest event an open transaction holds back


def _items(page: FeedPage) -> list[FeedItem]:
    return [FeedItem(e.checkpoint, e.case_id, e.version, e.event_id, e.type, e.schema_version,
                     e.data, e.agency, e.recorded_at, actor_of(e.metadata))
            for e in page.events]


class FeedSubscriber:
    def __init__(self, pool: asyncpg.Pool, settings: NotifierSettings, rules: RuleSettings,
                 clock: Clock, metrics: NotifierMetrics,
                 on_new_work: Callable[[], None] = lambda: None) -> None:
        self._pool = pool
        self._settings = settings
        self._rules = rules
        self._clock = clock
        self._metrics = metrics
        self._on_new_work = on_new_work
        self._token = FeedToken(settings)
        self._session: aiohttp.ClientSession | None = None
        self.healthy = False
        self.last_error: str | None = None
        self._lag = 0.0
        self._last_read = clock()  # the last page read and applied (or the start)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.feed_wait_seconds + 30))
        return self._session

    async def fetch(self, after: str, wait: float) -> Page:
        params: dict[str, str] = {"limit": str(self._settings.feed_page_size),
                                  "wait": str(wait)}
        if after:
            params["after"] = after
        url = self._settings.records_url.rstrip("/") + "/v1/events"
        headers = {"Authorization": f"Bearer {self._token.value()}"}
        try:
            async with self._client().get(url, params=params, headers=headers) as response:
                body = await response.read()
                if response.status == 401:
                    self._token.refused()
                if response.status != 200:
                    raise FeedError(f"feed answered {response.status}: {body[:300]!r}",
                                    f"feed answered {response.status}")
            page = FeedPage.model_validate_json(body)
        except (aiohttp.ClientError, TimeoutError, ValidationError) as error:
            raise FeedError(f"feed unreachable or unreadable: {error}",
                            _failed_read(error)) from error
        return Page(_items(page), page.checkpoint, page.held_back_since)

    async def step(self, wait: float) -> int:
        """Read one page after the stored checkpoint and apply it; the number of events."""
        after = await load_checkpoint(self._pool, FEED_CHECKPOINT)
        try:
            page = await self.fetch(after, wait)
        except FeedError as error:
            self._mark_unhealthy(error.summary)
            raise
        self.healthy, self.last_error = True, None
        if not page.items:
            self._set_lag(page, None)
            return 0
        result = await self._apply(after, page)
        if result is not None and result.celebrations:
            self._on_new_work()
        return len(page.items)

    async def _apply(self, after: str, page: Page) -> PageResult | None:
        now = self._clock()
        result = await apply_page(self._pool, page.items, after=after,
                                  checkpoint=page.checkpoint, rules=self._rules,
                                  domain=self._settings.message_id_domain, now=now)
        self._metrics.feed_events.inc(len(page.items))
        for why, count in (result.skipped.items() if result is not None else ()):
            self._metrics.feed_skipped.labels(why).inc(count)
        self._set_lag(page, page.items[-1].recorded_at)
        return result

    def _set_lag(self, page: Page, newest_handled: datetime | None) -> None:
        """How far behind the notifier is: the age of the newest event it handled, or of the
        oldest one the feed still holds back (an open transaction on the database server),
        whichever is older; 0 when caught up."""
        now = self._clock()
        self._last_read = now
        ages = [(now - at).total_seconds()
                for at in (newest_handled, page.held_back_since) if at is not None]
        self._lag = max([0.0, *ages])
        self._metrics.feed_lag.set(self._lag)

    def _lag_at_least_since_last_read(self) -> None:
        """While the feed cannot be read, or a page cannot be applied, the notifier falls
        behind by at least the time since its last page; the gauge must not read as caught up
        (it stayed 0 while the records service was down)."""
        self._lag = max(self._lag, (self._clock() - self._last_read).total_seconds())
        self._metrics.feed_lag.set(self._lag)

    async def catch_up(self) -> int:
        """Apply every page available now (no waiting); the number of events read."""
        total = 0
        while (count := await self.step(0)) > 0:
            total += count
        return total

    async def run(self) -> None:
        """Follow the feed until cancelled; back off (with jitter) while a page cannot be read
        or applied. The first read, and the first after a failure, does not wait: it tells at
        once whether the feed is readable (readiness), where a long-poll would hold that back."""
        delays, wait = _backoff(), 0.0
        while True:
            try:
                await self.step(wait)
                delays, wait = _backoff(), self._settings.feed_wait_seconds
                continue
            except (FeedError, *DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
                delay = next(delays)
                log.warning("feed read failed; retrying", error=str(error), retry_in=delay)
                # /readyz is public: the log has the message, which may name a host or database
                self._failed(error.summary if isinstance(error, FeedError) else
                             f"the notifier's database failed ({type(error).__name__});"
                             " the log has the details")
            except Exception as error:
                # A bug met while applying a page must not end the subscription for good:
                # the page is retried, and readiness and the metrics show it meanwhile.
                delay = next(delays)
                log.exception("feed page could not be applied; retrying", retry_in=delay)
                # /readyz is public: an exception's text may quote the event's data
                self._failed(f"a feed page could not be applied ({type(error).__name__});"
                             " the log has the details")
            wait = 0.0
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _failed(self, summary: str) -> None:
        self._metrics.feed_errors.inc()
        self._mark_unhealthy(summary)

    def _mark_unhealthy(self, summary: str) -> None:
        """``summary`` is shown on the public /readyz: what failed, never where or the text."""
        self.healthy, self.last_error = False, summary
        self._lag_at_least_since_last_read()


def _failed_read(error: Exception) -> str:
    """What a failed request for a page comes to, without the address aiohttp's message names."""
    if isinstance(error, TimeoutError):
        return "feed did not answer in time"
    if isinstance(error, aiohttp.ClientConnectionError):
        return "feed unreachable"
    if isinstance(error, ValidationError):
        return "feed sent a page that could not be read"
    return f"feed answer could not be read ({type(error).__name__})"


def _backoff() -> Iterator[float]:
    """The waits between tries while the feed cannot be read or applied (jittered by run)."""
    return doubling(0.5, 30.0)
