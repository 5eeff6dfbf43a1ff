"""Setting the address a dead letter asked for sends it (0203).

A notice to a staff member with no entry in the directory, no address, an address stored
before addresses were checked or a time zone this notifier does not know becomes a dead letter
naming the PUT that mends it; a supervisors' notice with no supervisor in the directory, one
saying to add one. The person did what the letter said and nothing happened: a case manager
added on their second day never got their first day's notices, until someone retried each by
hand. Now the PUT that mends it schedules it again, through the usual path. Real records
service, real PostgreSQL, real SMTP, the injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of

NO_ADDRESS = "no email address on file for cm-1"
OVERDUE_AT = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)  # a review agreed on 2 March, not held


async def small_win(records: Records, description: str = "Visit the job centre",
                    case_manager: str = "cm-1") -> str:
    case = await records.open_case(case_manager)
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, description))
    return case


async def handled(rig: NotifierRig) -> None:
    await rig.catch_up()
    await rig.dispatch()


async def only(rig: NotifierRig, **where: Any) -> dict[str, Any]:
    [row] = await rig.rows(**where)
    return row


async def dead_small_win_for_cm_1(rig: NotifierRig, records: Records) -> dict[str, Any]:
    await small_win(records)
    await handled(rig)
    row = await only(rig, kind="small_win")
    assert (row["status"], row["recipient"]) == ("dead", "cm-1")
    return row


async def stored_before_the_checks(rig: NotifierRig, token: TokenFactory, column: str,
                                   value: str) -> None:
    """cm-1's entry as one stored before addresses and zones were checked could be."""
    await rig.set_prefs("cm-1", token())
    await rig.notifier.pool.execute(f"UPDATE notifier.directory SET {column} = $1", value)


@pytest.mark.parametrize(("before", "reason"), [
    ("no entry", NO_ADDRESS),
    ("an entry without an address", NO_ADDRESS),
    ("an address stored before addresses were checked", "not a plain address"),
    ("a time zone stored before zones were checked", "is not one this notifier knows"),
])
async def test_setting_the_address_a_dead_letter_asked_for_sends_it_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, before: str, reason: str) -> None:
    if before == "an entry without an address":
        await rig.set_prefs("cm-1", token(), email=None)
    elif before.startswith("an address"):
        await stored_before_the_checks(rig, token, "email", "jo,smith@example.com")
    elif before.startswith("a time zone"):
        await stored_before_the_checks(rig, token, "timezone", "Mars/Olympus_Mons")
    dead = await dead_small_win_for_cm_1(rig, records)
    assert reason in str(dead["last_error"])
    assert smtp.received == []
    clock.advance(hours=20)  # the second day
    answer = await rig.set_prefs("cm-1", token())
    assert answer == await (await rig.client.get("/v1/preferences/cm-1",
                                                 headers=bearer(token()))).json()
    await rig.dispatch()
    await rig.dispatch()
    [mail] = smtp.received
    assert (mail["To"], mail["Message-ID"]) == ("cm-1@example.org", dead["message_id"])
    sent = await only(rig, kind="small_win")
    assert (sent["id"], sent["status"], sent["attempts"]) == (dead["id"], "sent", 1)


async def test_a_supervisors_entry_sends_the_overdue_notice_that_found_no_supervisor(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.agree(case)  # review due Friday 1 May, overdue on 3 May
    await rig.catch_up()
    clock.now = OVERDUE_AT
    await rig.dispatch()
    dead = await only(rig, recipient_role="supervisors")
    assert dead["status"] == "dead"
    assert "no supervisor of agency agency-a in the directory" in str(dead["last_error"])
    overdue_mail = len(smtp.received)
    await rig.set_prefs("cm-1", token(), timezone="Europe/Berlin")  # not a supervisor's entry
    await rig.dispatch()
    assert (await only(rig, recipient_role="supervisors"))["status"] == "dead"
    clock.advance(hours=3)
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"))
    await rig.dispatch()
    await rig.dispatch()
    [to_supervisor] = smtp.to("sup-1@example.org")
    assert "not yet recorded" in str(to_supervisor["Subject"])
    assert "(case manager: cm-1)" in text_of(to_supervisor)
    assert len(smtp.received) == overdue_mail + 1
    await rig.set_prefs("sup-2", token(role="supervisor", sub="sup-1"), role="supervisor")
    await rig.dispatch()
    await rig.dispatch()
    assert smtp.to("sup-2@example.org") == []  # handed on before sup-2 came: not again


async def test_an_overdue_notice_sent_after_a_transfer_names_the_case_manager_now(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """As a waiting notice follows a transfer, and a retried dead letter does."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    clock.now = OVERDUE_AT
    await rig.dispatch()
    assert (await only(rig, recipient_role="supervisors"))["status"] == "dead"
    supervisor = token(role="supervisor", sub="sup-1")
    await records.transfer(case, "cm-2", token=supervisor)
    await rig.catch_up()
    await rig.set_prefs("sup-1", supervisor)
    await rig.dispatch()
    await rig.dispatch()
    [to_supervisor] = [m for m in smtp.to("sup-1@example.org")
                       if "not yet recorded" in str(m["Subject"])]
    assert "(case manager: cm-2)" in text_of(to_supervisor)


async def test_a_dead_letter_for_another_reason_stays_dead(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A mail server refusing the recipient is not something an entry in the directory
    mends: a person decides whether to retry it."""
    await rig.set_prefs("cm-1", token())
    smtp.replies = ["550 5.1.1 mailbox unavailable"]
    await small_win(records)
    await handled(rig)
    dead = await only(rig, kind="small_win")
    assert str(dead["last_error"]).startswith("refused permanently: 550")
    clock.advance(hours=1)
    await rig.set_prefs("cm-1", token(), email="cm-1@elsewhere.example.org")
    await rig.dispatch()
    assert smtp.received == []
    after = await only(rig, kind="small_win")
    assert (after["status"], after["last_error"], after["updated_at"]) == (
        "dead", dead["last_error"], dead["updated_at"])


async def test_one_now_too_late_to_be_useful_is_cancelled_not_sent(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Scheduled again as any waiting notice, it is judged afresh: 73 hours after it was due
    it is too late (NOTIFIER_STALE_AFTER_HOURS, 72), unlike a person's explicit retry."""
    await dead_small_win_for_cm_1(rig, records)
    clock.advance(hours=73)
    await rig.set_prefs("cm-1", token())
    await rig.dispatch()
    assert smtp.received == []
    row = await only(rig, kind="small_win")
    assert row["status"] == "cancelled"
    assert str(row["last_error"]).startswith("too late to be useful")


async def test_another_users_and_another_agencys_dead_letters_are_left_alone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await small_win(records, "Call the landlord")
    await small_win(records_as(records, token, sub="cm-2"), "Ask about training", "cm-2")
    await small_win(records_as(records, token, agency="agency-b"), "Open a bank account")
    await handled(rig)
    before = {r["id"]: r for r in await rig.rows(kind="small_win")}
    assert [r["status"] for r in before.values()] == ["dead"] * 3
    clock.advance(hours=1)
    await rig.set_prefs("cm-1", token())
    await rig.dispatch()
    [mail] = smtp.received
    assert "Call the landlord" in text_of(mail)
    after = {r["id"]: r for r in await rig.rows(kind="small_win")}
    untouched = [after[i] for i in before if after[i]["status"] != "sent"]
    assert sorted((r["agency"], r["recipient"]) for r in untouched) == [
        ("agency-a", "cm-2"), ("agency-b", "cm-1")]
    assert all(r == before[r["id"]] for r in untouched)


def records_as(records: Records, token: TokenFactory, **claims: Any) -> Records:
    """The records service written to with another case manager's token."""
    return Records(records.client, token(**claims))


async def test_a_second_put_sends_nothing_more(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await dead_small_win_for_cm_1(rig, records)
    clock.advance(hours=1)
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-1", token(), quiet_hours=None)  # before it went
    await rig.dispatch()
    await rig.set_prefs("cm-1", token(), email="cm-1@elsewhere.example.org")  # after
    await rig.set_prefs("cm-1", token(), email=None)
    await rig.set_prefs("cm-1", token())
    await rig.dispatch()
    assert len(smtp.received) == 1


@pytest.mark.parametrize("since", ["the case closed", "the case was transferred",
                                   "the achievement was taken back"])
async def test_a_dead_letter_the_record_no_longer_bears_out_stays_dead(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, since: str) -> None:
    """What a retry of it is refused for (case-closed, taken-back) leaves it dead; so does a
    transfer: the case is no longer the one who set their address's to hear of."""
    case = await records.open_case()
    goal = await records.goal(case)
    await records.achieve(case, goal)
    await handled(rig)
    dead = await only(rig, kind="milestone", recipient="cm-1")
    assert (dead["status"], dead["recipient_role"]) == ("dead", "case_manager")
    if since == "the case closed":
        await records.close(case)
    elif since == "the case was transferred":
        await records.transfer(case, "cm-2", token=token(role="supervisor", sub="sup-1"))
    else:
        await records.call("POST", f"/v1/cases/{case}/goals/{goal}/status",
                           {"status": "active", "reason": "recorded too early"})
    await rig.catch_up()
    clock.advance(hours=1)
    await rig.set_prefs("cm-1", token())
    await rig.dispatch()
    assert smtp.to("cm-1@example.org") == []
    after = await only(rig, kind="milestone", recipient="cm-1")
    assert (after["status"], after["last_error"]) == ("dead", dead["last_error"])


@pytest.mark.parametrize("address_went", ["before the notice", "after it joined the digest"])
async def test_a_digest_readers_notices_go_in_their_next_digest_once_the_address_is_set(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, address_went: str) -> None:
    """A digest reader with no address: a notice dies on its own (no address: it joins no
    digest), or, when the address went after it joined one, the digest dies and its notices
    with it ("digest not delivered: no email address on file …"). Either way, setting the
    address sends them as their reader takes them: in the next digest, each judged afresh.
    The dead digest is given up, saying why, so a retry of it sends nothing twice."""
    digest_reader = {"delivery": "daily_digest"}
    if address_went == "before the notice":
        await rig.set_prefs("cm-1", token(), email=None, **digest_reader)
    else:
        await rig.set_prefs("cm-1", token(), **digest_reader)
    await small_win(records, "Call the landlord")
    await handled(rig)
    if address_went == "after it joined the digest":
        await rig.set_prefs("cm-1", token(), email=None, **digest_reader)
        [digest] = await rig.rows(kind="daily_digest")
        clock.now = digest["due_at"]
        await rig.notifier.dispatcher.send_digests()
        digest = await only(rig, kind="daily_digest")
        assert (digest["status"], digest["last_error"]) == ("dead", NO_ADDRESS)
    dead = await only(rig, kind="small_win")
    assert dead["status"] == "dead"
    assert NO_ADDRESS in str(dead["last_error"])
    clock.advance(minutes=5)
    await rig.set_prefs("cm-1", token(), **digest_reader)
    await rig.dispatch()
    assert smtp.received == []  # a digest reader's: it waits for their digest
    [waiting] = await rig.rows(kind="daily_digest", status="scheduled")
    clock.now = waiting["due_at"]
    assert await rig.notifier.dispatcher.send_digests() == 1
    [mail] = smtp.received
    assert "Call the landlord" in text_of(mail)
    assert (await only(rig, kind="small_win"))["status"] == "sent"
    if address_went == "after it joined the digest":
        given_up = await only(rig, id=digest["id"])
        assert given_up["status"] == "cancelled"
        retried = await rig.client.post(f"/v1/notifications/{digest['id']}/retry",
                                        headers=bearer(token(role="supervisor", sub="sup-1")))
        assert retried.status == 409
    await rig.set_prefs("cm-1", token(), **digest_reader)
    clock.advance(days=1)
    await rig.dispatch()
    await rig.notifier.dispatcher.send_digests()
    assert len(smtp.received) == 1
