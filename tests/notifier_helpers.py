"""Test harness of the notifier: a scripted SMTP server (aiosmtpd, in this event loop), a
records API writer and a notifier wired to a records test server, all on one FakeClock."""

from __future__ import annotations

import asyncio
import email
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP

from services.notifier.http.app import NOTIFIER, create_app
from services.notifier.service import Notifier
from services.notifier.settings import NotifierSettings
from services.notifier.store.notifications import schedule_snapshot

if TYPE_CHECKING:
    from tests.test_audit_smtp_peer import Peer

from tests.conftest import (
    JWT_SECRET,
    ClientFactory,
    FakeClock,
    TokenFactory,
    bearer,
    free_port,
)

PARTICIPANT = {"name": "Jordan Rivera", "preferred_name": "Jo", "pronouns": "they/them",
               "email": "jo@example.org"}


@dataclass
class SmtpServer:
    """A real SMTP server. ``replies`` scripts the answers to DATA (then 250 for the rest);
    the reply ``"drop"`` keeps the message and closes the connection instead of answering.
    ``received`` holds every message accepted (``recipients`` their envelope recipients,
    ``raw`` their bytes),
    ``refused`` every one answered otherwise; ``delay`` makes it a slow server (seconds before
    it answers DATA); ``smtputf8`` makes it offer SMTPUTF8 (RFC 6531)."""

    port: int = field(default_factory=free_port)
    delay: float = 0.0
    smtputf8: bool = False
    replies: list[str] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    refused: list[tuple[str, Message]] = field(default_factory=list)
    sessions: list[SMTP] = field(default_factory=list)
    _server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        message = email.message_from_bytes(data)
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.replies.pop(0) if self.replies else "250 OK"
        if reply.startswith("2") or reply == "drop":
            self.received.append(message)
            self.recipients.append(list(envelope.rcpt_tos))
            self.raw.append(data)
            self.arrived.set()
        else:
            self.refused.append((reply, message))
        if reply == "drop":  # stored, but the "250" never reaches the client
            server.transport.close()
        return "250 OK" if reply == "drop" else reply

    def _session(self) -> SMTP:
        session = SMTP(self, hostname="test-smtp", enable_SMTPUTF8=self.smtputf8)
        self.sessions.append(session)
        return session

    def open_connections(self) -> int:
        return sum(1 for s in self.sessions if s.transport is not None)

    def close_connections(self) -> None:
        """Close every connection from the server's side (as one that times idle clients out)."""
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()

    async def start(self) -> SmtpServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.received]

    def to(self, address: str) -> list[Message]:
        return [m for m in self.received if m["To"] == address]


def text_of(message: Message) -> str:
    """The plain-text part of a message as sent (text first, then HTML)."""
    part = message.get_payload()[0]  # type: ignore[index]
    return str(part.get_payload(decode=True).decode())  # type: ignore[union-attr]


def notifier_settings(database_url: str, records_url: str, smtp_port: int,
                      **overrides: object) -> NotifierSettings:
    values: dict[str, object] = {
        "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
        "RECORDS_URL": records_url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": smtp_port,
        "NOTIFIER_RETRY_BASE_SECONDS": 60, "NOTIFIER_RETRY_ATTEMPTS": 4,
        "NOTIFIER_SMTP_CONNECTIONS": 4, "SMTP_TIMEOUT": 5}
    values.update(overrides)
    return NotifierSettings.model_validate(values)


class Records:
    """Writes to the records service through its HTTP API."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200,
                   token: str | None = None) -> Any:
        response = await self.client.request(method, path, json=body,
                                             headers=bearer(token or self.token))
        payload = await response.json()
        assert response.status == expect, (response.status, payload)
        return payload

    async def open_case(self, case_manager: str = "cm-1", risk: str = "moderate",
                        participant: dict[str, Any] | None = None) -> str:
        body = {"participant": participant or PARTICIPANT, "case_manager": case_manager,
                "risk_level": risk}
        return str((await self.call("POST", "/v1/cases", body, 201))["case_id"])

    async def goal(self, case_id: str, title: str = "Find steady work",
                   words: str = "I want a job where I use my hands", **extra: Any) -> str:
        body = {"title": title, "domain": "employment", "source": "participant",
                "in_their_words": words, **extra}
        return str((await self.call("POST", f"/v1/cases/{case_id}/goals", body, 201))["id"])

    async def step(self, case_id: str, goal_id: str, description: str = "Visit the job centre",
                   **extra: Any) -> str:
        body = {"description": description, "owner": "participant", **extra}
        path = f"/v1/cases/{case_id}/goals/{goal_id}/steps"
        return str((await self.call("POST", path, body, 201))["id"])

    async def complete(self, case_id: str, step_id: str, note: str | None = None) -> None:
        await self.call("POST", f"/v1/cases/{case_id}/steps/{step_id}/complete",
                        {"note": note} if note else {})

    async def achieve(self, case_id: str, goal_id: str) -> None:
        await self.call("POST", f"/v1/cases/{case_id}/goals/{goal_id}/status",
                        {"status": "achieved"})

    async def agree(self, case_id: str, add_goal: bool = True) -> str:
        """Agree the plan (a plan needs a goal: one is set first unless told not to);
        returns the id of the review it scheduled."""
        if add_goal:
            await self.goal(case_id, "Keep my flat", "A home of my own")
        result = await self.call("POST", f"/v1/cases/{case_id}/agreements", {
            "participation": "in_person", "present": ["Jo"],
            "participant_statement": "This is my plan"}, 201)
        return next(e["data"]["review_id"] for e in result["events"]
                    if e["type"] == "ReviewScheduled")

    async def hold_review(self, case_id: str, review_id: str) -> str:
        result = await self.call("POST", f"/v1/cases/{case_id}/reviews/{review_id}/held",
                                 {"summary": "We looked at what is working"})
        return next(e["data"]["review_id"] for e in result["events"]
                    if e["type"] == "ReviewScheduled")

    async def transfer(self, case_id: str, to: str, token: str | None = None) -> None:
        await self.call("POST", f"/v1/cases/{case_id}/transfer",
                        {"case_manager": to, "reason": "caseload balancing"}, token=token)

    async def close(self, case_id: str) -> None:
        await self.call("POST", f"/v1/cases/{case_id}/close", {"reason": "plan completed"})

    async def reopen(self, case_id: str) -> None:
        await self.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "asked for help"})

    async def revise_step(self, case_id: str, step_id: str, due: str) -> None:
        await self.call("PATCH", f"/v1/cases/{case_id}/steps/{step_id}",
                        {"due_date": due, "reason": "agreed a new date"})


@dataclass
class NotifierRig:
    """A notifier app (background loops off: tests drive feed and dispatch) and its client."""

    client: TestClient
    clock: FakeClock

    @property
    def notifier(self) -> Notifier:
        return self.client.app[NOTIFIER].notifier

    async def catch_up(self) -> int:
        await self.feed_shows_every_event()
        return await self.notifier.subscriber.catch_up()

    async def feed_shows_every_event(self) -> None:
        """The feed holds an event back while any older transaction on the server is open
        (other test runs share it), so wait until every event written so far is visible."""
        async with asyncio.timeout(30):
            while await self.notifier.pool.fetchval(  # noqa: ASYNC110  (polling the database)
                    "SELECT count(*) FROM records.events"
                    " WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"):
                await asyncio.sleep(0.02)

    async def dispatch(self) -> int:
        return await self.notifier.dispatcher.dispatch_due()

    async def snapshot(self) -> list[tuple[Any, ...]]:
        return await schedule_snapshot(self.notifier.pool)

    async def rows(self, **where: Any) -> list[dict[str, Any]]:
        clauses = " AND ".join(f"{k} = ${i}" for i, k in enumerate(where, 1)) or "true"
        found = await self.notifier.pool.fetch(
            f"SELECT * FROM notifier.notifications WHERE {clauses} ORDER BY due_at, key",
            *where.values())
        return [dict(r) for r in found]

    async def set_prefs(self, user: str, token: str, **body: Any) -> Any:
        prefs = {"email": f"{user}@example.org", "delivery": "immediate", "timezone": "UTC",
                 "celebrations": True, **body}
        response = await self.client.put(f"/v1/preferences/{user}", json=prefs,
                                         headers=bearer(token))
        assert response.status == 200, await response.text()
        return await response.json()


class ClockFailingOnce(FakeClock):
    """A clock whose next reading, once armed, raises ``error``: something unforeseen while
    applying a page."""

    failures_left = 0
    error: Exception = RuntimeError("unforeseen")

    def __call__(self) -> datetime:
        if self.failures_left:
            self.failures_left -= 1
            raise self.error
        return super().__call__()


RigFactory = Callable[..., Awaitable[NotifierRig]]


async def make_rig(aiohttp_client: Callable[..., Awaitable[TestClient]], database_url: str,
                   records: TestClient, smtp: SmtpServer, clock: FakeClock,
                   **overrides: object) -> NotifierRig:
    records_url = str(records.make_url("")).rstrip("/")
    settings = notifier_settings(database_url, records_url, smtp.port, **overrides)
    client = await aiohttp_client(create_app(settings, clock=clock, background=False))
    return NotifierRig(client, clock)


# Fixtures shared by the notifier test modules (registered in conftest.py, found by name).


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    server = await SmtpServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def records(fresh_database_url: str, make_records_client: ClientFactory,
                  clock: FakeClock, token: TokenFactory) -> Records:
    client = await make_records_client(fresh_database_url, clock=clock)
    return Records(client, token())


@pytest.fixture
async def rig(fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
              records: Records, smtp: SmtpServer, clock: FakeClock) -> NotifierRig:
    return await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)


PUBLIC_URL = "https://notices.agency.example"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A secret that signs unsubscribe links (NOTIFIER_LINK_SECRET_FILE)."""
    path = tmp_path / "link-secret"
    path.write_text(secrets.token_urlsafe(48) + "\n")
    return path


@pytest.fixture
async def linked(fresh_database_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]],
                 records: Records, smtp: SmtpServer, clock: FakeClock,
                 secret_file: Path) -> NotifierRig:
    """A notifier with a public address, so a participant's mail carries the unsubscribe
    link and the link's routes take it."""
    return await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                          NOTIFIER_PUBLIC_URL=PUBLIC_URL,
                          NOTIFIER_LINK_SECRET_FILE=str(secret_file))


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    """A scripted SMTP peer (``tests/test_audit_smtp_peer.py``, where its own tests are)."""
    from tests.test_audit_smtp_peer import Peer

    server = await Peer().start()
    yield server
    await server.stop()
