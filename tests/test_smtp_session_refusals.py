"""A mail server that refuses this notifier's session (its greeting, EHLO and HELO, STARTTLS,
the login, the sender in MAIL FROM) refuses every notice alike, until the operator puts the
configuration right or the server's operator lifts a block: each such refusal is a failed
attempt, said in words that name what to check, and retried. They were dead letters at the
first try, so a password rotation gone wrong turned a morning's reminders into dead letters
within seconds. A refusal of the recipient or of the message stays a dead letter at once
(tests/test_audit_smtp_peer.py, each stage)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from services.common.logs import mask_addresses
from services.notifier.store.notifications import insert_notices
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records
from tests.test_audit_smtp_peer import Peer, attempts_of, one_notice, peer_rig, small_win
from tests.test_notifier_delivery import due_notices
from tests.test_notifier_smtp_tls import Authority, TlsPeer, make_authority

Client = TestClient[Any, Any]
USERNAME, PASSWORD = "casetrail", "rotated-but-not-here"
STARTTLS = "STARTTLS (TLS)"  # the server is put right by serving TLS on the same port
SENDER = "casetrail@example.org"


@dataclass
class LinePeer(Peer):
    """The scripted peer, keeping each command line as it came (the MAIL options with it)."""

    lines: list[str] = field(default_factory=list)

    def _reply_to(self, verb: str, line: bytes) -> str:
        self.lines.append(line.decode(errors="replace").strip())
        return super()._reply_to(verb, line)


@pytest.fixture
async def peer() -> AsyncIterator[LinePeer]:
    server = LinePeer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path)


@dataclass(frozen=True)
class Refusal:
    """A session refusal: the settings and the server that bring it about, the code and the
    words recorded, and how the server is put right (``fix``: the script then; ``STARTTLS``:
    a server speaking TLS takes the port over)."""

    settings: dict[str, object]
    extensions: tuple[str, ...]
    script: dict[str, list[str]]
    code: int | None
    said: str
    fix: dict[str, list[str]] | str = field(default_factory=dict)
    fixed_extensions: tuple[str, ...] = ("8BITMIME",)


LOGIN: dict[str, object] = {"SMTP_USERNAME": USERNAME, "SMTP_PASSWORD": PASSWORD}
AUTH_REFUSED = "535 5.7.8 authentication credentials invalid"
REFUSALS = {
    "a 5xx greeting": Refusal(
        {}, ("8BITMIME",), {"GREETING": ["554 5.3.2 no SMTP service here"]}, 554,
        "554: the mail server refused this notifier's session at its greeting (5.3.2 no SMTP"
        " service here): it may be refusing this host's address for now; check SMTP_HOST and"
        " SMTP_PORT, and ask the mail server's operator"),
    "EHLO and HELO refused": Refusal(
        {}, ("8BITMIME",), {"EHLO": ["550 5.7.1 not from you"], "HELO": ["550 5.7.1 not from"
                                                                        " you"]}, 550,
        "550: the mail server refused this notifier's EHLO and HELO (5.7.1 not from you): it"
        " may not take the name this host gives itself; check SMTP_HOST and SMTP_PORT, and ask"
        " the mail server's operator"),
    "STARTTLS refused": Refusal(
        {"SMTP_STARTTLS": True}, ("STARTTLS",), {"STARTTLS": ["554 5.7.3 TLS not available"]},
        554, "554: the mail server refused STARTTLS (5.7.3 TLS not available): check"
        " SMTP_STARTTLS, and SMTP_PORT (SMTP_TLS for a server that speaks TLS from the first"
        " byte, usually port 465)", STARTTLS),
    "STARTTLS not offered": Refusal(
        {"SMTP_STARTTLS": True}, ("8BITMIME",), {}, None,
        "no reply: the mail server 127.0.0.1:{port} does not offer STARTTLS, which"
        " SMTP_STARTTLS asks for", STARTTLS),
    "the login refused": Refusal(
        LOGIN, ("AUTH PLAIN",), {"AUTH": [AUTH_REFUSED]},
        535, "535: the mail server refused the login (5.7.8 authentication credentials"
        " invalid): check SMTP_USERNAME and SMTP_PASSWORD",
        {"AUTH": ["235 2.7.0 accepted"]}, ("AUTH PLAIN",)),
    "no login offered": Refusal(
        LOGIN, ("8BITMIME",), {}, None,
        "no reply: the mail server 127.0.0.1:{port} does not offer a login (AUTH), which"
        " SMTP_USERNAME asks for: check SMTP_TLS and SMTP_STARTTLS (servers often offer it"
        " only inside TLS), or unset SMTP_USERNAME and SMTP_PASSWORD if it takes none",
        {"AUTH": ["235 2.7.0 accepted"]}, ("AUTH PLAIN",)),
    "the sender refused (553)": Refusal(
        {}, ("8BITMIME",), {"MAIL": ["553 5.7.1 sender not allowed"]}, 553,
        "553: the mail server refused the sender, NOTIFIER_FROM (5.7.1 sender not allowed):"
        " check NOTIFIER_FROM is an address this server lets this notifier send from, and the"
        " login (SMTP_USERNAME) if it asks for one"),
    "the sender refused (550)": Refusal(
        {}, ("8BITMIME",), {"MAIL": ["550 5.7.1 relaying denied"]}, 550,
        "550: the mail server refused the sender, NOTIFIER_FROM (5.7.1 relaying denied):"
        " check NOTIFIER_FROM is an address this server lets this notifier send from, and the"
        " login (SMTP_USERNAME) if it asks for one"),
    "a login asked for at MAIL": Refusal(
        {}, ("8BITMIME",), {"MAIL": ["530 5.7.0 authentication required"]}, 530,
        "530: the mail server refused the sender, NOTIFIER_FROM (5.7.0 authentication"
        " required): check NOTIFIER_FROM is an address this server lets this notifier send"
        " from, and the login (SMTP_USERNAME) if it asks for one")}


async def refused_rig(aiohttp_client: Callable[..., Awaitable[Client]], database_url: str,
                      records: Records, peer: Peer, clock: FakeClock, token: TokenFactory,
                      authority: Authority, refusal: Refusal) -> NotifierRig:
    peer.extensions, peer.script = refusal.extensions, refusal.script
    trust = {"SMTP_CA_FILE": str(authority.ca_file)} if refusal.fix == STARTTLS else {}
    return await peer_rig(aiohttp_client, database_url, records, peer, clock, token,
                          NOTIFIER_FROM=f"Casetrail <{SENDER}>", **trust, **refusal.settings)


async def put_right(peer: Peer, refusal: Refusal, authority: Authority) -> TlsPeer | None:
    """The server as it should be: the script then, or a TLS server on the same port."""
    if refusal.fix != STARTTLS:
        assert isinstance(refusal.fix, dict)
        peer.script, peer.extensions = dict(refusal.fix), refusal.fixed_extensions
        return None
    await peer.stop()
    return await TlsPeer(authority.server_context(), implicit=False, port=peer.port).start()


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refused_session_is_a_failed_attempt_saying_what_to_check_then_sent(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: LinePeer,
        authority: Authority, case: str) -> None:
    """Each of these refuses this notifier, not the notice: it was a dead letter at once
    ("refused permanently: 535: …"), each to be revived by hand once the cause was put
    right. Now it is retried with backoff and goes out once the server takes the session."""
    refusal = REFUSALS[case]
    rig = await refused_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                            authority, refusal)
    await small_win(records)
    await rig.catch_up()
    with structlog.testing.capture_logs([mask_addresses]) as logs:
        await rig.dispatch()
    row = await one_notice(rig)
    said = refusal.said.format(port=peer.port)
    assert (row["status"], row["attempts"], row["last_code"], row["last_error"]) == (
        "failed", 1, refusal.code, said)
    assert row["not_before"] > clock()
    assert await attempts_of(rig, row["id"]) == [(refusal.code, said)]
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert (warning["event"], warning["smtp_code"]) == (
        "notification not sent; it will be retried", refusal.code)
    assert warning["reason"] == said.replace(SENDER, "[address]")
    assert PASSWORD not in str(logs)
    assert (await counted(rig, "failed"), await counted(rig, "dead")) == (1, 0)
    tls_peer = await put_right(peer, refusal, authority)
    try:
        clock.now = row["not_before"]
        await rig.dispatch()
    finally:
        if tls_peer is not None:
            await tls_peer.stop()
    sent = await one_notice(rig)
    assert (sent["status"], sent["attempts"], sent["last_code"]) == ("sent", 2, 250)
    received = tls_peer.received if tls_peer is not None else peer.received
    assert [m["Message-ID"] for m in received] == [row["message_id"]]


async def test_a_message_too_big_for_the_server_at_mail_from_is_still_a_dead_letter(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: LinePeer) -> None:
    """A server offering SIZE (RFC 1870) is told the message's size in MAIL FROM, and a 552
    there refuses this message, not the sender: it stays permanent."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    peer.extensions = ("8BITMIME", "SIZE 1000")
    peer.script = {"MAIL": ["552 5.3.4 message size exceeds fixed maximum message size"]}
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await one_notice(rig)
    [mail] = [line for line in peer.lines if line.upper().startswith("MAIL")]
    assert " size=" in mail.lower(), mail
    assert (row["status"], row["last_code"], row["last_error"]) == (
        "dead", 552, "refused permanently: 552: 5.3.4 message size exceeds fixed maximum"
                     " message size")


async def test_a_refused_login_does_not_open_a_connection_for_every_notice_in_the_batch(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: LinePeer,
        authority: Authority) -> None:
    """A batch of 100 notices against a server refusing the login opened 100 connections,
    each a failed login in a tight loop (a server may lock the account for that). Once the
    session is refused, no new connection is opened for the rest of the dispatch: only the
    sends already connecting meet the refusal; the others are failed attempts saying so, and
    all go out once the login is put right."""
    refusal = REFUSALS["the login refused"]
    rig = await refused_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                            authority, replace(refusal, script={"AUTH": [AUTH_REFUSED] * 100}))
    async with rig.notifier.pool.acquire() as conn:
        await insert_notices(conn, due_notices(100), "test", clock(), cause_recorded_at=clock())
    assert await rig.dispatch() == 100
    rows = await rig.rows()
    assert len(rows) == 100
    assert {(r["status"], r["attempts"], r["last_code"]) for r in rows} == {("failed", 1, 535)}
    tried = [r for r in rows if r["last_error"] == refusal.said]
    assert len(tried) == peer.connections <= 4  # NOTIFIER_SMTP_CONNECTIONS in these tests
    assert {r["last_error"] for r in rows if r not in tried} == {refusal.said + NOT_TRIED}
    assert await counted(rig, "failed", "review_due_today") == 100
    peer.script = {"AUTH": ["235 2.7.0 accepted"] * 100}
    clock.now = max(r["not_before"] for r in rows)
    await rig.dispatch()
    assert {r["status"] for r in await rig.rows()} == {"sent"}
    assert len({m["Message-ID"] for m in peer.received}) == 100


NOT_TRIED = ("; not tried for this notice: the mail server refused this notifier's session"
             " moments before")


async def counted(rig: NotifierRig, outcome: str, kind: str = "small_win") -> float:
    metrics = await (await rig.client.get("/metrics")).text()
    line = f'casetrail_notifications_{outcome}_total{{kind="{kind}"}} '
    return float(next(m for m in metrics.splitlines() if m.startswith(line)).split()[-1])


async def test_a_refused_ehlo_before_a_non_ascii_address_is_followed_by_helo(
        aiohttp_client: Callable[..., Awaitable[Client]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: LinePeer) -> None:
    """Asking whether the server takes SMTPUTF8, the client said EHLO alone, and its refusal
    was taken for the session's (a dead letter quoting the 502): a server taking HELO only
    does not offer SMTPUTF8, and that is what the dead letter says."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    await rig.set_prefs("cm-1", token(), email="jörg@example.org")
    peer.script = {"EHLO": ["502 5.5.2 command not recognized"]}
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await one_notice(rig)
    assert (row["status"], row["last_code"]) == ("dead", None)
    assert str(row["last_error"]).startswith("cannot be sent: the address is not plain ASCII")
    assert "SMTPUTF8" in str(row["last_error"])
    assert [line.split()[0] for line in peer.lines][:2] == ["EHLO", "HELO"]
