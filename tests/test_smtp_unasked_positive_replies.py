"""A 2xx where a step of the message's transaction asks for another reply (250 to MAIL, 354 to
DATA, 250 or 251 to RCPT): aiosmtplib stops the transaction there, so nothing was sent. It was
taken for the message accepted (any 2xx reads as "sent"), and the notice was recorded sent
though it never went out. It is a failed attempt, retried with the same Message-ID."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import Records
from tests.test_audit_smtp_peer import Peer, attempts_of, one_notice, peer_rig, small_win


@pytest.mark.parametrize(("stage", "reply"), [
    ("MAIL", "251 sender noted"),
    ("RCPT", "252 cannot verify the user, will try"),
    ("DATA", "250 ready when you are")])
async def test_a_2xx_the_step_does_not_ask_for_is_a_failed_attempt_not_a_sent_notice(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer, stage: str,
        reply: str) -> None:
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    peer.script = {stage: [reply]}
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await one_notice(rig)
    code, words = reply.split(" ", 1)
    fate = "may not have been sent" if stage == "DATA" else "was not sent"
    error = (f"{code}: the mail server's reply to {stage} is not the one it asks for, so the"
             f" message {fate} ({words}); it is tried again")
    assert (row["status"], row["attempts"], row["last_code"], row["last_error"]) == (
        "failed", 1, int(code), error)
    assert await attempts_of(rig, row["id"]) == [(int(code), error)]
    assert peer.received == []
    clock.now = row["not_before"]
    await rig.dispatch()
    assert (await one_notice(rig))["status"] == "sent"
    assert [m["Message-ID"] for m in peer.received] == [row["message_id"]]
