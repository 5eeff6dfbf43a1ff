"""An audit of the eighteenth session's notifier changes (0202, 0203), written as the
behaviour the decision notes promise or a person would expect:

1. a PUT of preferences sends the dead letters that died for want of what it gives
   (``send_mended``);
2. a retried dead daily digest sends its notices as their cases now read
   (``_revive_digest_items``);
3. a 2xx reply an SMTP step does not ask for is a failed attempt, not "sent".

Races are run over real HTTP, the real feed and real dispatch; where a race needs an order, a
lock held by a test connection gives it (a row of ``notifier.cases`` the feed writes last, a
digest's notice the dispatcher marks last). Real PostgreSQL, real SMTP, the injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from email.message import Message
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.notifier import delivery
from tests.conftest import FakeClock, TokenFactory, bearer, wait_until
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of
from tests.test_address_mends_dead_letters import OVERDUE_AT
from tests.test_audit_smtp_peer import Peer, one_notice, peer_rig, small_win
from tests.test_revive_dead_digest import BANK, LANDLORD, dead_digest

NO_ADDRESS = "no email address on file for cm-1"
# requests of this database's sessions waiting for a lock (other test runs share the server)
WAITING = ("SELECT count(*) >= $1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
           " WHERE NOT l.granted AND a.datname = current_database()")
DIGEST_READER = {"delivery": "daily_digest"}


def supervisor(token: TokenFactory) -> str:
    return token(role="supervisor", sub="sup-1")


def told(messages: list[Message], words: str) -> int:
    """How many of ``messages`` tell of ``words`` (subject or text)."""
    return sum(words in f"{m['Subject']}\n{text_of(m)}" for m in messages)


async def deliver(rig: NotifierRig, clock: FakeClock) -> None:
    """Dispatch and digest rounds now and over the next two days: whatever is owed goes."""
    for _ in range(3):
        await rig.dispatch()
        await rig.notifier.dispatcher.send_digests()
        await rig.dispatch()
        clock.advance(days=1)


async def step_of(rig: NotifierRig, step: str) -> dict[str, Any]:
    [row] = [r for r in await rig.rows(kind="small_win") if step in r["context"]]
    return row


async def put(rig: NotifierRig, user: str, token: str, **body: Any) -> tuple[int, str]:
    prefs = {"email": f"{user}@example.org", "delivery": "immediate", "timezone": "UTC",
             "celebrations": True, **body}
    response = await rig.client.put(f"/v1/preferences/{user}", json=prefs,
                                    headers=bearer(token))
    return response.status, await response.text()


async def post_retry(rig: NotifierRig, token: TokenFactory, row_id: object) -> tuple[int, str]:
    response = await rig.client.post(f"/v1/notifications/{row_id}/retry",
                                     headers=bearer(supervisor(token)))
    return response.status, await response.text()


async def dead_small_win(rig: NotifierRig, records: Records,
                         step: str = "Visit the job centre") -> tuple[str, dict[str, Any]]:
    """A case of cm-1's (no entry yet) with a small win, dead for want of an address."""
    case = await small_win(records, step)
    await rig.catch_up()
    await rig.dispatch()
    row = await step_of(rig, step)
    assert (row["status"], row["recipient"]) == ("dead", "cm-1")
    assert str(row["last_error"]).startswith(NO_ADDRESS)
    return case, row


async def feed_held_at_the_case(rig: NotifierRig, database_url: str, case: str,
                                meanwhile: Callable[[], Awaitable[None]]) -> None:
    """The feed has applied the case's new events (moved or cancelled its waiting notices)
    and is held, uncommitted, at its last step (``save_case`` rewriting the case's steps) by
    a lock taken here on those steps; ``meanwhile`` starts then. It may finish while the feed
    is held (reading the case as it was), or wait for the feed (the case, which the feed
    locks before anything else): once it does, the lock is let go, and both end."""
    holder = await asyncpg.connect(database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT FROM notifier.steps WHERE case_id = $1 FOR UPDATE", case)
        feed = asyncio.create_task(rig.catch_up())
        await wait_until(rig.notifier.pool, WAITING, 1)
        other = asyncio.create_task(meanwhile())
        try:
            for _ in range(400):  # until it is done, or waits behind the feed
                if other.done() or await rig.notifier.pool.fetchval(WAITING, 2):
                    break
                await asyncio.sleep(0.05)
        finally:
            await held.rollback()
            await feed
            await other
    finally:
        await holder.close()


# --------------------------------------------------------------------------------------------
# 1. a PUT sends what it mends
# --------------------------------------------------------------------------------------------


async def test_a_put_racing_the_feed_transferring_the_case_does_not_mail_the_one_who_left(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, fresh_database_url: str) -> None:
    """cm-1's small win died for want of an address; the case then goes to cm-2. cm-1 sets
    an address while the feed is applying the transfer: the small win must not reach cm-1,
    who no longer holds the case (0203: "Left dead: … a case manager's letter of a case now
    another's")."""
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case, _ = await dead_small_win(rig, records)
    await records.transfer(case, "cm-2", token=supervisor(token))
    clock.advance(hours=1)

    async def cm_1_sets_an_address() -> None:
        status, text = await put(rig, "cm-1", token())
        assert status == 200, text

    await feed_held_at_the_case(rig, fresh_database_url, case, cm_1_sets_an_address)
    await deliver(rig, clock)

    assert told(smtp.to("cm-1@example.org"), "Visit the job centre") == 0
    row = await step_of(rig, "Visit the job centre")
    assert (row["status"], row["recipient"]) != ("sent", "cm-1")


async def test_a_put_racing_the_feed_closing_the_case_does_not_send_its_dead_letter(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, fresh_database_url: str) -> None:
    """A closed case's dead letter stays dead (0203, as the retry route's 409 case-closed);
    a PUT mending it while the feed applies the closing must not send it either."""
    case, _ = await dead_small_win(rig, records)
    await records.close(case)
    clock.advance(hours=1)

    async def cm_1_sets_an_address() -> None:
        status, text = await put(rig, "cm-1", token())
        assert status == 200, text

    await feed_held_at_the_case(rig, fresh_database_url, case, cm_1_sets_an_address)
    await deliver(rig, clock)

    assert told(smtp.received, "Visit the job centre") == 0
    row = await step_of(rig, "Visit the job centre")
    assert row["status"] in ("dead", "cancelled"), row


async def test_a_mended_notice_that_had_been_tried_before_is_still_too_late_after_72_hours(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A mended letter is judged as any notice falling due: too late to be useful
    (NOTIFIER_STALE_AFTER_HOURS, 72) is cancelled, "not … sent however late: no person chose
    this" (0203). This one met a busy mail server once (451), then cm-1's address was taken
    off and it died for want of one; cm-1 sets an address four days later."""
    await rig.set_prefs("cm-1", token())
    smtp.replies = ["451 4.3.0 try again later"]
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    failed = await one_notice(rig)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    await rig.set_prefs("cm-1", token(), email=None)
    clock.now = failed["not_before"]
    await rig.dispatch()
    dead = await one_notice(rig)
    assert (dead["status"], str(dead["last_error"]).startswith(NO_ADDRESS)) == ("dead", True)

    clock.now = dead["due_at"] + timedelta(hours=96)
    await rig.set_prefs("cm-1", token())
    await rig.dispatch()

    assert smtp.received == []
    row = await one_notice(rig)
    assert row["status"] == "cancelled", (row["status"], row["last_error"])
    assert str(row["last_error"]).startswith("too late to be useful")


async def test_a_dead_letter_whose_retries_ran_out_is_not_sent_by_a_put(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Retries run out (NOTIFIER_RETRY_ATTEMPTS, 4 here): a person decides, not a PUT."""
    await rig.set_prefs("cm-1", token())
    smtp.replies = ["451 4.3.0 try again later"] * 4
    await small_win(records)
    await rig.catch_up()
    for _ in range(4):
        await rig.dispatch()
        row = await one_notice(rig)
        clock.now = max(clock.now, row["not_before"])
    dead = await one_notice(rig)
    assert (dead["status"], dead["attempts"]) == ("dead", 4)
    assert str(dead["last_error"]).startswith("gave up after 4 attempt(s)")
    clock.advance(minutes=5)
    await rig.set_prefs("cm-1", token(), email="cm-1@elsewhere.example.org")
    await rig.dispatch()
    assert smtp.received == []
    after = await one_notice(rig)
    assert (after["status"], after["last_error"], after["updated_at"]) == (
        "dead", dead["last_error"], dead["updated_at"])


async def test_two_puts_of_the_same_user_at_once_send_the_dead_letter_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    _, dead = await dead_small_win(rig, records)
    clock.advance(hours=1)
    answers = await asyncio.gather(
        put(rig, "cm-1", token()),
        put(rig, "cm-1", supervisor(token), email="cm-1@elsewhere.example.org"))
    assert [status for status, _ in answers] == [200, 200], answers
    await deliver(rig, clock)
    assert [m["Message-ID"] for m in smtp.received] == [dead["message_id"]]


async def test_a_put_racing_dispatch_of_the_readers_notices_is_no_500_and_sends_each_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A dead letter and a notice falling due, both cm-1's, while cm-1 sets an address and
    dispatch runs: no 500, and no notice mailed twice."""
    _, dead = await dead_small_win(rig, records, "Call the landlord")
    await small_win(records, "Open a bank account")
    await rig.catch_up()
    clock.advance(minutes=5)
    (status, text), _ = await asyncio.gather(put(rig, "cm-1", token()), rig.dispatch())
    assert status == 200, text
    await deliver(rig, clock)
    ids = [m["Message-ID"] for m in smtp.received]
    assert len(ids) == len(set(ids)), ids
    assert dead["message_id"] in ids


async def test_a_participant_who_sets_the_address_their_dead_milestone_asked_for_hears_of_it(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Jo opted in without an address (none on the case either); their milestone died saying
    "set it with PUT /v1/preferences/jo". Jo does, minutes later. 0203 says this is not
    covered ("opting in has its own rules"), but the letter told Jo to do just this."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case(participant={"name": "Jordan Rivera",
                                                "preferred_name": "Jo"})
    jo = token(role="participant", sub="jo", cases=[case])
    await rig.set_prefs("jo", jo, email=None, role="participant", cases=[case])
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()
    [dead] = await rig.rows(kind="milestone", recipient_role="participant")
    assert dead["status"] == "dead"
    assert "set it with PUT /v1/preferences/jo" in str(dead["last_error"])
    clock.advance(minutes=10)
    await rig.set_prefs("jo", jo, role="participant", cases=[case])
    await deliver(rig, clock)
    assert len(smtp.to("jo@example.org")) == 1
    [after] = await rig.rows(kind="milestone", recipient_role="participant")
    assert after["status"] == "sent"


async def test_a_supervisor_of_another_agency_sends_none_of_this_agencys_overdue_notices(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    clock.now = OVERDUE_AT
    await rig.dispatch()
    [dead] = await rig.rows(recipient_role="supervisors")
    assert dead["status"] == "dead"
    mail_before = len(smtp.received)
    clock.advance(hours=1)
    await rig.set_prefs("sup-9", token(role="supervisor", sub="sup-9", agency="agency-b"))
    await rig.dispatch()
    await rig.dispatch()
    assert len(smtp.received) == mail_before
    [after] = await rig.rows(recipient_role="supervisors")
    assert (after["status"], after["updated_at"]) == ("dead", dead["updated_at"])


# --------------------------------------------------------------------------------------------
# 2. a retried dead digest
# --------------------------------------------------------------------------------------------


async def test_a_retried_digest_racing_the_feed_closing_a_case_leaves_that_case_out(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """A retried digest leaves out a case closed since (0202); retried while the feed is
    applying the closing, it must too."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    dead = await dead_digest(rig, records, peer, clock, token)
    await records.close(dead.cases[LANDLORD])

    async def retried() -> None:
        status, text = await post_retry(rig, token, dead.digest["id"])
        assert status == 202, text

    await feed_held_at_the_case(rig, fresh_database_url, dead.cases[LANDLORD], retried)
    await deliver(rig, clock)

    assert told(peer.received, BANK) == 1
    assert told(peer.received, LANDLORD) == 0
    closed = await step_of(rig, LANDLORD)
    assert closed["status"] == "dead", closed


async def test_a_retried_digest_racing_the_feed_transferring_a_case_mails_the_new_manager(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """The landlord case goes to cm-2 while cm-1's dead digest is retried: cm-1, who no
    longer holds it, must not be told of it; cm-2 is (0202)."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    dead = await dead_digest(rig, records, peer, clock, token)
    await records.transfer(dead.cases[LANDLORD], "cm-2", token=supervisor(token))

    async def retried() -> None:
        status, text = await post_retry(rig, token, dead.digest["id"])
        assert status == 202, text

    await feed_held_at_the_case(rig, fresh_database_url, dead.cases[LANDLORD], retried)
    await deliver(rig, clock)

    to_cm_1 = [m for m in peer.received if m["To"] == "cm-1@example.org"]
    to_cm_2 = [m for m in peer.received if m["To"] == "cm-2@example.org"]
    assert told(to_cm_1, LANDLORD) == 0
    assert told(to_cm_2, LANDLORD) == 1


async def test_a_put_mending_a_dead_digest_and_its_retry_at_once_send_each_notice_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), **DIGEST_READER)
    for step in (LANDLORD, BANK):
        await small_win(records, step)
    await rig.catch_up()
    await rig.dispatch()
    await rig.set_prefs("cm-1", token(), email=None, **DIGEST_READER)
    [digest] = await rig.rows(kind="daily_digest")
    clock.now = digest["due_at"]
    await rig.notifier.dispatcher.send_digests()
    [digest] = await rig.rows(id=digest["id"])
    assert (digest["status"], digest["last_error"]) == ("dead", NO_ADDRESS)
    clock.advance(minutes=5)

    (put_status, put_text), (retry_status, retry_text) = await asyncio.gather(
        put(rig, "cm-1", token(), **DIGEST_READER), post_retry(rig, token, digest["id"]))

    assert put_status == 200, put_text
    assert retry_status in (202, 409), retry_text
    await deliver(rig, clock)
    assert (told(smtp.received, LANDLORD), told(smtp.received, BANK)) == (1, 1)
    assert all(told([m], LANDLORD) or told([m], BANK) for m in smtp.received)


async def test_two_retries_of_one_dead_digest_at_once_one_wins_and_it_goes_once(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    dead = await dead_digest(rig, records, peer, clock, token)
    answers = await asyncio.gather(*(post_retry(rig, token, dead.digest["id"])
                                     for _ in range(2)))
    assert sorted(status for status, _ in answers) == [202, 409], answers
    await deliver(rig, clock)
    assert len(peer.received) == 1
    assert (told(peer.received, LANDLORD), told(peer.received, BANK)) == (1, 1)


# --------------------------------------------------------------------------------------------
# 3. a 2xx no step asks for
# --------------------------------------------------------------------------------------------


async def test_a_2xx_other_than_250_at_the_end_of_data_is_retried_never_lost(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """251 at the end of the data: the server may have taken it. It is a failed attempt that
    says the message "may not have been sent", retried with its Message-ID; a second copy is
    the accepted at-least-once rule, a lost notice is not (0202)."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    peer.script = {"END": ["251 2.1.5 queued, will forward"]}
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await one_notice(rig)
    assert (row["status"], row["attempts"], row["last_code"]) == ("failed", 1, 251)
    assert "reply to DATA is not the one it asks for, so the message may not have been sent" \
        in str(row["last_error"])
    clock.now = row["not_before"]
    await rig.dispatch()
    await rig.dispatch()
    sent = await one_notice(rig)
    assert (sent["status"], sent["attempts"]) == ("sent", 2)
    assert [m["Message-ID"] for m in peer.received] == [row["message_id"]] * 2


async def test_a_2xx_other_than_250_to_noop_on_an_idle_connection_sends_on_a_new_one(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection idle 5 s or more is checked with NOOP; a 252 to it is no "250 OK":
    the connection is replaced, and the message goes once on the new one."""
    idle = [0.0]
    monkeypatch.setattr(delivery, "monotonic", lambda: time.monotonic() + idle[0])
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token,
                         NOTIFIER_SMTP_CONNECTIONS=1)
    await small_win(records, "Call the landlord")
    await rig.catch_up()
    await rig.dispatch()
    assert peer.connections == 1
    peer.script = {"NOOP": ["252 2.0.0 still here, maybe"]}
    idle[0] = 6.0
    await small_win(records, "Open a bank account")
    await rig.catch_up()
    await rig.dispatch()
    assert "NOOP" in peer.commands
    assert peer.connections == 2
    assert [r["status"] for r in await rig.rows(kind="small_win")] == ["sent", "sent"]
    assert (told(peer.received, "Call the landlord"), told(peer.received, "Open a bank account")
            ) == (1, 1)


async def test_a_2xx_to_rset_after_a_refusal_keeps_the_refusal(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """aiosmtplib resets the envelope after a refusal; a 2xx other than 250 to that RSET must
    not take the refusal's place nor make the notice "sent"."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    peer.refuse = {"cm-1@example.org": "550 5.1.1 no such mailbox"}
    peer.script = {"RSET": ["251 2.0.0 reset, sort of"]}
    await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    row = await one_notice(rig)
    assert (row["status"], row["last_code"]) == ("dead", 550)
    assert str(row["last_error"]).startswith("refused permanently: 550")
    assert peer.received == []
