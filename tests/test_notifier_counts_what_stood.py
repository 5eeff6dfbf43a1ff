"""The delivery counters (`casetrail_notifications_{sent,failed,dead,cancelled}_total`) and
the warnings beside them tell what became of each notice. An outcome decided for a notice
the feed cancelled while a dispatcher held it (its case closed, its review held) was counted
and logged as a failure or a dead letter, though the notice stays cancelled: an operator's
dashboard showed dead letters the notifications listing did not have. Now such an outcome is
counted only if it is the notice's fate; a mail that went is counted as it went."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from services.notifier.store import notifications as store
from services.notifier.store.notifications import Outcome
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer
from tests.test_audit_smtp_peer import small_win
from tests.test_notifier_delivery import due_notices
from tests.test_notifier_s22_fixes import _overdue_claimed
from tests.test_smtp_session_refusals import counted


async def test_a_dead_letter_decided_for_a_notice_the_feed_cancelled_is_not_counted(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """cm-1 has no address and no supervisor is known: both overdue notices die for want of
    a reader, decided after the review was held. Both stay cancelled, and are not counted
    dead (each was: two dead letters on the dashboard, none in the listing)."""
    case, review, rows = await _overdue_claimed(rig, records, token, clock, supervisors=False)
    await records.hold_review(case, review)
    await rig.catch_up()
    await rig.notifier.dispatcher._handle_batch(rows, digests=False)
    overdue = [r for r in await rig.rows(kind="review_overdue") if review in r["key"]]
    assert {r["status"] for r in overdue} == {"cancelled"}
    assert len(overdue) == 2
    assert await counted(rig, "dead", "review_overdue") == 0


async def test_a_dead_letter_that_stands_is_counted(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """The same notices, their review not held: they are dead letters, and counted so."""
    _, review, rows = await _overdue_claimed(rig, records, token, clock, supervisors=False)
    await rig.notifier.dispatcher._handle_batch(rows, digests=False)
    overdue = [r for r in await rig.rows(kind="review_overdue") if review in r["key"]]
    assert [r["status"] for r in overdue] == ["dead", "dead"]
    assert await counted(rig, "dead", "review_overdue") == 2


async def test_a_mail_that_went_while_the_feed_cancelled_its_notice_is_counted_sent(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """The case is closed while its small win's mail is on its way: the mail went, and is
    recorded and counted as sent."""
    await rig.set_prefs("cm-1", token())
    case = await small_win(records)
    await rig.catch_up()
    smtp.delay = 1.0
    dispatching = asyncio.create_task(rig.dispatch())
    for _ in range(1000):  # the mail is on its way: the server holds it a second
        if smtp.sessions:
            break
        await asyncio.sleep(0.01)
    assert smtp.sessions
    await records.close(case)
    await rig.catch_up()
    [row] = await rig.rows(kind="small_win")
    assert row["status"] == "cancelled"  # the feed settled it while the mail was going
    await dispatching
    [row] = await rig.rows(kind="small_win")
    assert row["status"] == "sent"
    assert len(smtp.received) == 1
    assert await counted(rig, "sent", "small_win") == 1


async def test_recording_tells_which_outcomes_stood(rig: NotifierRig, clock: FakeClock) -> None:
    """Of three notices claimed together, one the feed cancelled meanwhile: its failure is
    not its fate; the other two's failure and mail sent are theirs."""
    pool = rig.notifier.pool
    async with pool.acquire() as conn:
        await store.insert_notices(conn, due_notices(3), "test", clock(),
                                   cause_recorded_at=clock())
    rows = await store.claim_due(pool, owner="a", now=clock(), limit=10,
                                 lease=timedelta(minutes=5), digests=False)
    cancelled, failing, sending = sorted(rows, key=lambda r: r.id)
    await pool.execute("UPDATE notifier.notifications SET status = 'cancelled' WHERE id = $1",
                       cancelled.id)
    token = rows[0].claim_token
    assert token is not None
    recorded = await store.record_outcomes(pool, [
        Outcome(cancelled.id, "failed", True, 1, 451, "busy", clock() + timedelta(minutes=1),
                attempt_outcome="transient"),
        Outcome(failing.id, "failed", True, 1, 451, "busy", clock() + timedelta(minutes=1),
                attempt_outcome="transient"),
        Outcome(sending.id, "sent", True, 1, 250, attempt_outcome="sent")], clock(), token)
    assert recorded.lost == []
    assert recorded.stood == {failing.id, sending.id}
    statuses = {r["id"]: r["status"] for r in await rig.rows()}
    assert statuses == {cancelled.id: "cancelled", failing.id: "failed", sending.id: "sent"}


async def test_a_digest_notice_the_feed_cancelled_is_not_given_up(
        rig: NotifierRig, clock: FakeClock) -> None:
    """A notice that cannot be rendered into its digest is a dead letter, unless the feed
    cancelled it meanwhile: it stays cancelled and is not reported given up."""
    pool = rig.notifier.pool
    async with pool.acquire() as conn:
        await store.insert_notices(conn, due_notices(2), "test", clock(),
                                   cause_recorded_at=clock())
    kept, unreadable = sorted([r["id"] for r in await rig.rows()])
    await pool.execute("UPDATE notifier.notifications SET status = 'cancelled' WHERE id = $1",
                       kept)
    given_up = await store.give_up_items(pool, [
        Outcome(kept, "dead", False, 0, error="could not render the message: x"),
        Outcome(unreadable, "dead", False, 0, error="could not render the message: y")],
        clock())
    assert given_up == {unreadable}
    statuses = {r["id"]: r["status"] for r in await rig.rows()}
    assert statuses == {kept: "cancelled", unreadable: "dead"}
