"""Reviving a dead daily digest after its cases changed hands. A digest's items kept their
reader when it was retried: a case transferred since the digest died had its notices mailed
to the case manager who had left (a participant's details they no longer hold), and the new
case manager never heard of them. Nor did a retried digest leave out what a single retry
refuses: a closed case's notices, a handover of a case transferred on, a celebration of
something taken back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, text_of
from tests.test_audit_smtp_peer import Peer, peer_rig

LANDLORD, BANK = "Call the landlord", "Open a bank account"
REFUSED = "550 5.2.1 mailbox disabled"
OVERDUE_DAY = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)  # a review due 1 May, two days' grace


@dataclass
class Dead:
    """A reader's digest that died, and the case and step of each small win in it."""

    digest: dict[str, Any]
    cases: dict[str, str]
    steps: dict[str, str]


async def celebrate(records: Records, step: str, manager: str) -> tuple[str, str]:
    """A case of ``manager``'s with ``step`` completed (``records`` writes as them): the case
    and the step's ids."""
    case = await records.open_case(manager)
    goal = await records.goal(case)
    step_id = await records.step(case, goal, step)
    await records.complete(case, step_id)
    return case, step_id


async def dead_digest(rig: NotifierRig, records: Records, peer: Peer, clock: FakeClock,
                      token: TokenFactory, reader: str = "cm-1") -> Dead:
    """``reader``'s digest, holding a small win of each of two cases of theirs (and whatever
    else is owed them), refused for good at RCPT: a dead letter, and its items with it."""
    await rig.set_prefs(reader, token(sub=reader), delivery="daily_digest")
    writer = Records(records.client, token(sub=reader))
    made = {step: await celebrate(writer, step, reader) for step in (LANDLORD, BANK)}
    await rig.catch_up()
    await rig.dispatch()
    peer.refuse = {f"{reader}@example.org": REFUSED}
    [digest] = await rig.rows(kind="daily_digest", recipient=reader)
    clock.now = digest["due_at"]
    await rig.notifier.dispatcher.send_digests()
    [digest] = await rig.rows(id=digest["id"])
    assert digest["status"] == "dead"
    assert {r["status"] for r in await rig.rows(digest_id=digest["id"])} == {"dead"}
    peer.refuse = {}
    return Dead(digest, {s: c for s, (c, _) in made.items()},
                {s: i for s, (_, i) in made.items()})


async def retry(rig: NotifierRig, token: TokenFactory, digest: dict[str, Any]) -> Any:
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    response = await rig.client.post(f"/v1/notifications/{digest['id']}/retry",
                                     headers=supervisor)
    assert response.status == 202, await response.text()
    return await response.json()


async def deliver(rig: NotifierRig) -> None:
    """A dispatch and a digest round, twice: what is owed goes, and only once."""
    for _ in range(2):
        await rig.dispatch()
        await rig.notifier.dispatcher.send_digests()


def mail_to(peer: Peer, user: str) -> list[str]:
    return [f"{m['Subject']}\n{text_of(m)}" for m in peer.received
            if m["To"] == f"{user}@example.org"]


def mentions(peer: Peer, step: str) -> int:
    """How many messages sent tell of ``step``."""
    return sum(step in f"{m['Subject']}\n{text_of(m)}" for m in peer.received)


async def small_win_of(rig: NotifierRig, step: str) -> dict[str, Any]:
    [row] = [r for r in await rig.rows(kind="small_win") if step in r["context"]]
    return row


@pytest.mark.parametrize("delivery", ["immediate", "daily_digest"])
async def test_a_revived_digest_sends_a_transferred_cases_notice_to_its_new_case_manager(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer,
        delivery: str) -> None:
    """The landlord case went to cm-2 after cm-1's digest died. Retried, the digest tells cm-1
    only of the bank account (their case still), and cm-2 hears of the landlord as cm-2's
    preferences say: at once, or in cm-2's own digest. Each goes once."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    await rig.set_prefs("cm-2", token(sub="cm-2"), delivery=delivery)
    dead = await dead_digest(rig, records, peer, clock, token)
    await records.transfer(dead.cases[LANDLORD], "cm-2",
                           token=token(role="supervisor", sub="sup-1"))
    await rig.catch_up()

    await retry(rig, token, dead.digest)
    await deliver(rig)

    [to_cm_1] = mail_to(peer, "cm-1")
    assert BANK in to_cm_1
    assert LANDLORD not in to_cm_1
    assert any(LANDLORD in m for m in mail_to(peer, "cm-2"))
    assert (mentions(peer, LANDLORD), mentions(peer, BANK)) == (1, 1)
    moved, kept = await small_win_of(rig, LANDLORD), await small_win_of(rig, BANK)
    assert (moved["status"], moved["recipient"]) == ("sent", "cm-2")
    assert moved["digest_id"] != dead.digest["id"]
    assert (moved["digest_id"] is None) == (delivery == "immediate")
    assert (kept["status"], kept["recipient"], kept["digest_id"]) == (
        "sent", "cm-1", dead.digest["id"])
    [digest] = await rig.rows(id=dead.digest["id"])
    assert digest["status"] == "sent"


async def test_a_revived_digest_whose_every_case_changed_hands_is_not_sent_empty(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """Both cases went to cm-2: nothing is left for cm-1, so the digest is given up at the
    retry, saying why, and cm-2 hears of both."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    dead = await dead_digest(rig, records, peer, clock, token)
    for case in dead.cases.values():
        await records.transfer(case, "cm-2", token=token(role="supervisor", sub="sup-1"))
    await rig.catch_up()

    shown = await retry(rig, token, dead.digest)
    await deliver(rig)

    assert shown["status"] == "cancelled"
    assert shown["last_error"].startswith("nothing left to send")
    assert mail_to(peer, "cm-1") == []
    assert (mentions(peer, LANDLORD), mentions(peer, BANK)) == (1, 1)
    for step in (LANDLORD, BANK):
        row = await small_win_of(rig, step)
        assert (row["status"], row["recipient"], row["digest_id"]) == ("sent", "cm-2", None)


async def test_a_revived_digest_leaves_out_a_closed_cases_notice_which_stays_dead(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """A single dead letter of a case closed since is not sent again (409 case-closed); in a
    retried digest it was. It stays a dead letter, out of the digest, saying why."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    dead = await dead_digest(rig, records, peer, clock, token)
    await records.close(dead.cases[LANDLORD])
    await rig.catch_up()

    await retry(rig, token, dead.digest)
    await deliver(rig)

    [to_cm_1] = mail_to(peer, "cm-1")
    assert BANK in to_cm_1
    assert LANDLORD not in to_cm_1
    closed = await small_win_of(rig, LANDLORD)
    assert (closed["status"], closed["digest_id"]) == ("dead", None)
    assert closed["last_error"] == ("not sent again with its digest: the case is closed")


async def test_a_revived_digest_with_only_closed_cases_is_given_up(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    dead = await dead_digest(rig, records, peer, clock, token)
    for case in dead.cases.values():
        await records.close(case)
    await rig.catch_up()

    shown = await retry(rig, token, dead.digest)
    await deliver(rig)

    assert shown["status"] == "cancelled"
    assert peer.received == []
    assert {r["status"] for r in await rig.rows(kind="small_win")} == {"dead"}


async def test_a_revived_digest_leaves_out_a_celebration_taken_back(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """The landlord step was marked not done after the digest died: a single retry of its
    small win is refused (409 taken-back), and the digest leaves it out."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    dead = await dead_digest(rig, records, peer, clock, token)
    case, step = dead.cases[LANDLORD], dead.steps[LANDLORD]
    await records.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                       {"status": "in_progress", "reason": "Marked done too early"})
    await rig.catch_up()

    await retry(rig, token, dead.digest)
    await deliver(rig)

    [to_cm_1] = mail_to(peer, "cm-1")
    assert BANK in to_cm_1
    assert LANDLORD not in to_cm_1
    taken_back = await small_win_of(rig, LANDLORD)
    assert (taken_back["status"], taken_back["digest_id"]) == ("dead", None)
    assert taken_back["last_error"] == (
        "not sent again with its digest: what it celebrates was taken back since")


async def test_a_revived_digest_leaves_out_a_handover_of_a_case_transferred_on(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """cm-2's digest held the handover of a case transferred to them, and died. The case went
    on to cm-3: a single retry of the handover is refused (409 transferred-on), and the
    retried digest leaves it out; cm-2's own cases' notices still go."""
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-3", token(sub="cm-3"))
    case = await records.open_case()
    await records.transfer(case, "cm-2", token=supervisor)
    dead = await dead_digest(rig, records, peer, clock, token, reader="cm-2")
    await records.transfer(case, "cm-3", token=supervisor)
    await rig.catch_up()
    [handover] = await rig.rows(kind="case_transferred", recipient="cm-2")
    assert (handover["status"], handover["digest_id"]) == ("dead", dead.digest["id"])

    await retry(rig, token, dead.digest)
    await deliver(rig)

    assert not any("transferred to you" in m for m in mail_to(peer, "cm-2"))
    [handover] = await rig.rows(id=handover["id"])
    assert (handover["status"], handover["digest_id"]) == ("dead", None)
    assert handover["last_error"] == (
        "not sent again with its digest: the case has been transferred on since")
    assert any("transferred to you" in m for m in mail_to(peer, "cm-3"))


async def test_a_revived_digests_copy_of_an_overdue_notice_names_the_case_manager_now(
        aiohttp_client: ClientFactory, fresh_database_url: str,
        records: Records, clock: FakeClock, token: TokenFactory, peer: Peer) -> None:
    """sup-1's digest held their copy of an overdue notice of cm-1's case, and died; the case
    then went to cm-2. The copy stays sup-1's, and names cm-2 as a single retry of it does:
    it named cm-1, who no longer holds the case."""
    supervisor = token(role="supervisor", sub="sup-1")
    rig = await peer_rig(aiohttp_client, fresh_database_url, records, peer, clock, token)
    await rig.set_prefs("sup-1", supervisor, delivery="daily_digest")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    clock.now = OVERDUE_DAY
    await rig.dispatch()
    await rig.dispatch()  # the supervisors' copies, handed on by the first round
    [digest] = await rig.rows(kind="daily_digest", recipient="sup-1")
    peer.refuse = {"sup-1@example.org": REFUSED}
    clock.now = digest["due_at"]
    await rig.notifier.dispatcher.send_digests()
    [copy] = await rig.rows(digest_id=digest["id"], status="dead")
    assert copy["kind"] == "review_overdue"
    peer.refuse = {}
    await records.transfer(case, "cm-2", token=supervisor)
    await rig.catch_up()

    await retry(rig, token, digest)
    await deliver(rig)

    [to_sup_1] = mail_to(peer, "sup-1")
    assert "case manager: cm-2" in to_sup_1
    assert "cm-1" not in to_sup_1
    [copy] = await rig.rows(id=copy["id"])
    assert (copy["status"], copy["recipient"], copy["digest_id"]) == (
        "sent", "sup-1", digest["id"])
