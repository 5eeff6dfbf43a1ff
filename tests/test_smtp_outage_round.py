"""A mail server that is down or busy (it refuses the connection, drops it, stays silent,
answers 421 "too many connections" at its greeting or EHLO, or 454 to the login) gives this
notifier no usable session, whichever notice it is for. Once a round of dispatch has met
that, it opens no new connection until the next round: the round's other notices are failed
attempts saying so, and the next round tries them all again. It used to open a connection per
notice, 100 for a batch of 100 (a server saying "too many connections" was answered with
more, and a silent one held the round for SMTP_TIMEOUT x 100 / NOTIFIER_SMTP_CONNECTIONS).
A failure once the session is up is about that message or that connection, and the round
goes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.notifier.store.notifications import insert_notices
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records
from tests.test_audit_smtp_peer import DROP, HANG, Peer, attempts_of, peer_rig
from tests.test_notifier_delivery import due_notices

Client = TestClient[Any, Any]
BATCH = 100
CONNECTIONS = 4  # NOTIFIER_SMTP_CONNECTIONS in these tests
REFUSED_ENDING = ("; not tried for this notice: the mail server refused this notifier's"
                  " session moments before")
UNREACHED_ENDING = ("; not tried for this notice: this notifier could not open a session with"
                    " the mail server moments before")
LOGIN: dict[str, object] = {"SMTP_USERNAME": "casetrail", "SMTP_PASSWORD": "for-loopback"}


@dataclass(frozen=True)
class Outage:
    """A server giving no usable session: its script (``None``: the port is closed), the
    settings it needs, and the code and words each notice tried is recorded with."""

    script: dict[str, list[str]] | None
    code: int | None
    said: str
    settings: dict[str, object] = field(default_factory=dict)
    extensions: tuple[str, ...] = ("8BITMIME",)

    @property
    def ending(self) -> str:
        return UNREACHED_ENDING if self.code is None else REFUSED_ENDING


OUTAGES = {
    "421 at the greeting": Outage(
        {"GREETING": ["421 4.7.0 too many connections, try later"] * BATCH}, 421,
        "421: 4.7.0 too many connections, try later"),
    "421 at EHLO": Outage(
        {"EHLO": ["421 4.3.2 service shutting down"] * BATCH}, 421,
        "421: 4.3.2 service shutting down"),
    "454 to the login": Outage(
        {"AUTH": ["454 4.7.0 temporary authentication failure"] * BATCH}, 454,
        "454: 4.7.0 temporary authentication failure", LOGIN, ("AUTH PLAIN",)),
    "the connection refused": Outage(
        None, None, "no reply: the mail server 127.0.0.1:{port} refused the connection"),
    "the connection dropped at once": Outage(
        {"GREETING": [DROP] * BATCH}, None,
        "no reply: the mail server 127.0.0.1:{port} closed the connection before answering"),
    "a silent greeting": Outage(
        {"GREETING": [HANG] * BATCH}, None,
        "no reply: the mail server 127.0.0.1:{port} did not answer within 0.5 s",
        {"SMTP_TIMEOUT": 0.5})}
# What a round waits for an answer where no outage is a silence. Not 0.5 s: on a loaded
# machine one answer of the hundred can take that long, and the test would fail a notice
# the server was ready to take.
PATIENT: dict[str, object] = {"SMTP_TIMEOUT": 10}


async def batch_rig(aiohttp_client: Callable[..., Awaitable[Client]], database_url: str,
                    records: Records, peer: Peer, clock: FakeClock, token: TokenFactory,
                    **settings: object) -> NotifierRig:
    rig = await peer_rig(aiohttp_client, database_url, records, peer, clock, token,
                         NOTIFIER_SMTP_CONNECTIONS=CONNECTIONS, **settings)
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, due_notices(BATCH), "test", clock(), cause_recorded_at=clock())
    return rig


@pytest.mark.parametrize("case", list(OUTAGES))
async def test_a_server_giving_no_session_is_not_given_a_connection_per_notice(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer,
        case: str) -> None:
    outage = OUTAGES[case]
    peer.extensions = outage.extensions
    rig = await batch_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                          **{**PATIENT, **outage.settings})
    if outage.script is None:
        await peer.stop()
    else:
        peer.script = outage.script
    assert await rig.dispatch() == BATCH
    rows = await rig.rows()
    said = outage.said.format(port=peer.port)
    assert {(r["status"], r["attempts"], r["last_code"]) for r in rows} == {
        ("failed", 1, outage.code)}
    tried = [r for r in rows if r["last_error"] == said]
    not_tried = [r for r in rows if r not in tried]
    # the notices tried are those whose send was connecting when the first failure came
    assert 1 <= len(tried) <= CONNECTIONS, len(tried)
    assert peer.connections <= CONNECTIONS
    assert {r["last_error"] for r in not_tried} == {said + outage.ending}
    assert await attempts_of(rig, not_tried[0]["id"]) == [(outage.code, said + outage.ending)]
    assert all(r["not_before"] > clock() for r in rows)
    assert peer.received == []
    await put_right(peer)
    clock.now = max(r["not_before"] for r in rows)
    assert await rig.dispatch() == BATCH
    after = await rig.rows()
    assert {(r["status"], r["attempts"]) for r in after} == {("sent", 2)}, [
        (r["status"], r["last_error"]) for r in after if r["status"] != "sent"]
    assert len(peer.received) == len({m["Message-ID"] for m in peer.received}) == BATCH


async def put_right(peer: Peer) -> None:
    peer.script = {"AUTH": ["235 2.7.0 accepted"] * BATCH}
    if peer._server is None:  # the port was closed: a server listens on it again
        await peer.start()


@pytest.mark.parametrize(("stage", "reply", "code"), [
    ("MAIL", "451 4.3.0 try later", 451), ("RCPT", "451 4.2.1 mailbox busy", 451),
    ("DATA", "451 4.3.0 not now", 451), ("MID-DATA", "drop", None),
    ("END", HANG, None)])
async def test_a_failure_once_the_session_is_up_holds_back_no_other_notice(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer, stage: str,
        reply: str, code: int | None) -> None:
    """A 4xx to MAIL, RCPT or DATA, a connection lost mid-message or no answer after the
    data is about that message or that connection: the round's other notices are sent."""
    rig = await batch_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                          **({} if reply == HANG else PATIENT))
    peer.script = {stage: [reply]}
    assert await rig.dispatch() == BATCH
    rows = await rig.rows()
    [failed] = [r for r in rows if r["status"] != "sent"]
    assert (failed["status"], failed["last_code"]) == ("failed", code)
    assert "not tried for this notice" not in str(failed["last_error"])
    assert len({m["Message-ID"] for m in peer.received}) == BATCH - 1


async def test_a_2xx_the_login_does_not_ask_for_sends_nothing_and_is_not_recorded_sent(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """aiosmtplib raises the server's reply when it is not the one a step asks for, and a 2xx
    there was taken for the message accepted: a server answering the login 250 (it asks for
    235) had every notice recorded sent, and none went out."""
    peer.extensions = ("AUTH PLAIN",)
    rig = await batch_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                          **LOGIN)
    peer.script = {"AUTH": ["250 2.0.0 OK"] * BATCH}
    assert await rig.dispatch() == BATCH
    rows = await rig.rows()
    said = "250: the mail server's reply does not open the session (2.0.0 OK)"
    assert {(r["status"], r["last_code"]) for r in rows} == {("failed", 250)}
    assert {r["last_error"] for r in rows} == {said, said + REFUSED_ENDING}
    assert peer.connections <= CONNECTIONS
    assert peer.offered == []


async def test_no_session_holds_new_connections_for_half_the_first_retry_delay(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """The hold outlasts the round, and the digest job's round does not lift it: rounds come
    every second (and the digest job's between them), so a hold for one round still opened a
    connection a second, 3,600 failed logins an hour, enough for a provider to lock the
    account. It lasts half NOTIFIER_RETRY_BASE_SECONDS, the soonest a held notice is retried."""
    outage = OUTAGES["454 to the login"]
    peer.extensions = outage.extensions
    rig = await batch_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                          NOTIFIER_RETRY_BASE_SECONDS=30, **outage.settings)
    peer.script = {"AUTH": ["454 4.7.0 temporary authentication failure"] * 1000}
    start = clock()
    assert await rig.dispatch() == BATCH
    opened = peer.connections
    for _ in range(14):  # a round a second, the digest job's among them, for 14 s
        clock.advance(seconds=1)
        async with rig.notifier.pool.acquire() as conn:
            await insert_notices(conn, due_notices(1, clock()), "test", clock(),
                                 cause_recorded_at=clock())
        await rig.notifier.dispatcher.send_digests()
        assert await rig.dispatch() == 1
    assert peer.connections == opened
    held = [r for r in await rig.rows() if r["attempts"] == 1 and r["due_at"] > start]
    assert len(held) == 14
    assert {r["last_error"] for r in held} == {outage.said + REFUSED_ENDING}
    clock.advance(seconds=1)  # 15 s: half the first retry delay of 30 s
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, due_notices(1, clock()), "test", clock(),
                             cause_recorded_at=clock())
    await rig.dispatch()
    assert peer.connections > opened
