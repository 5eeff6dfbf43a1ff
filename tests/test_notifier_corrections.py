"""Later events correct what is still waiting to be sent, wherever it waits: handed on to each
supervisor, inside a digest, or held back by quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of


def recipients_of(smtp: SmtpServer) -> list[str]:
    return [address for sent in smtp.recipients for address in sent]


async def overdue_handed_to_supervisor(rig: NotifierRig, records: Records, token: TokenFactory,
                                       clock: FakeClock) -> tuple[str, str]:
    """A review (due 1 May) whose overdue notice fell due at 09:00 UTC on 3 May and was handed
    on to the supervisor, who lives in Los Angeles: it reaches them at 09:00 their time."""
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"),
                        timezone="America/Los_Angeles")
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)
    await rig.dispatch()
    [handed_on] = await rig.rows(kind="review_overdue", recipient="sup-1")
    assert handed_on["status"] == "scheduled"
    return case, review


@pytest.mark.parametrize("correction", ["held", "rescheduled"])
async def test_a_review_held_or_moved_withdraws_the_overdue_notice_handed_to_a_supervisor(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, correction: str) -> None:
    case, review = await overdue_handed_to_supervisor(rig, records, token, clock)
    clock.now = datetime(2026, 5, 3, 10, 0, tzinfo=UTC)  # 03:00 in Los Angeles
    if correction == "held":
        await records.hold_review(case, review)
    else:
        await records.call("POST", f"/v1/cases/{case}/reviews/{review}/reschedule",
                           {"due_date": "2026-05-06", "reason": "Jo is away this week"})
    await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 16, 0, tzinfo=UTC)  # 09:00 in Los Angeles
    await rig.dispatch()
    assert "sup-1@example.org" not in recipients_of(smtp)
    [withdrawn] = await rig.rows(kind="review_overdue", recipient="sup-1")
    assert withdrawn["status"] == "cancelled"
    assert ("ReviewHeld" if correction == "held" else "ReviewScheduled") in \
        withdrawn["last_error"]


async def test_a_nudge_back_after_a_reopening_reaches_the_next_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The nudge sat in Tuesday's digest when the case closed; the digest went out empty
    (cancelled); the case reopened, and the nudge must find a digest of its own again."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Call the landlord", due_date="2026-03-01")
    await rig.catch_up()
    await rig.dispatch()  # Monday 09:00: into Tuesday's digest
    clock.now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    await records.close(case)
    await rig.catch_up()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()  # nothing left in it
    clock.now = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    await records.reopen(case)
    await rig.catch_up()
    await rig.dispatch()  # into Wednesday's digest
    clock.now = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [digest] = smtp.received
    assert "Call the landlord" in digest.get_payload()[0].get_payload(decode=True).decode()
    [nudge] = await rig.rows(kind="step_nudge")
    assert nudge["status"] == "sent"


async def test_a_new_name_reaches_celebrations_still_waiting(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A participant who now goes by another name is never congratulated by the old one."""
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "08:00", "end": "12:00"})
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal))
    await rig.catch_up()
    await rig.dispatch()  # 09:00: quiet hours, held back until 12:00
    clock.now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    await records.call("PATCH", f"/v1/cases/{case}/participant",
                       {"preferred_name": "Sam", "reason": "Sam asked to be called Sam"})
    await rig.catch_up()
    clock.now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    await rig.dispatch()
    [win] = smtp.received
    assert str(win["Subject"]).startswith("A small win for Sam:")
    text = win.get_payload()[0].get_payload(decode=True).decode()
    assert "Sam completed the step" in text
    assert "Jo" not in text


async def test_a_review_moved_early_in_a_readers_morning_still_gets_its_reminders(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """At 07:00 in Los Angeles (14:00 UTC, after the schedule's 09:00 UTC) one review moves to
    Friday and another to today: at 09:00 there the manager hears of both; a manager in UTC,
    whose 09:00 had passed, hears of neither, and the reason is on the notice."""
    await rig.set_prefs("cm-1", token(), timezone="America/Los_Angeles")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    cm2 = Records(records.client, token(sub="cm-2"))
    west_a, west_b = await records.open_case(), await records.open_case()
    here = await cm2.open_case("cm-2")
    reviews = {west_a: await records.agree(west_a), west_b: await records.agree(west_b),
               here: await cm2.agree(here)}
    await rig.catch_up()
    clock.now = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
    for writer, case, due in ((records, west_a, "2026-03-13"), (records, west_b, "2026-03-10"),
                              (cm2, here, "2026-03-13")):
        await writer.call("POST", f"/v1/cases/{case}/reviews/{reviews[case]}/reschedule",
                          {"due_date": due, "reason": "a day that suits Jo"})
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    clock.now = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)  # 09:00 in Los Angeles
    await rig.dispatch()
    assert sorted(str(m["Subject"]).endswith("due today") for m in smtp.received) == [
        False, True]  # the reminder for Friday, and today's review
    assert recipients_of(smtp) == ["cm-1@example.org"] * 2
    [passed] = [r for r in await rig.rows(kind="review_reminder", recipient="cm-2")
                if ":2026-03-13:" in r["key"]]
    assert passed["status"] == "cancelled"
    assert "had passed when it was called for" in passed["last_error"]


async def test_a_reminder_read_in_the_next_mornings_digest_counts_the_days_left_then(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await records.agree(await records.open_case())  # review due Friday 1 May
    await rig.catch_up()
    clock.now = datetime(2026, 4, 28, 9, 0, tzinfo=UTC)  # the reminder's moment
    await rig.dispatch()  # into Wednesday's digest (08:00)
    clock.now = datetime(2026, 4, 29, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [digest] = smtp.received
    text = digest.get_payload()[0].get_payload(decode=True).decode()
    assert "due on Friday 1 May 2026, in 2 days." in text


@pytest.mark.parametrize("then", ["transfer", "close"])
async def test_a_celebration_waiting_to_retry_follows_a_transfer_and_ends_with_the_case(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, then: str) -> None:
    """A small win the mail server put off (451) waits as `failed`: a transfer sends it to the
    new case manager, a closing cancels it, like a notice not yet tried."""
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await rig.catch_up()
    smtp.replies = ["451 try again later"]
    await rig.dispatch()
    [win] = await rig.rows(kind="small_win")
    assert win["status"] == "failed"
    if then == "transfer":
        await records.transfer(case, "cm-2", token=token(role="supervisor", sub="sup-1"))
    else:
        await records.close(case)
    await rig.catch_up()
    clock.advance(hours=2)
    await rig.dispatch()
    [after] = await rig.rows(kind="small_win")
    if then == "transfer":  # the small win, and the handover of the case to cm-2
        assert (after["status"], recipients_of(smtp)) == ("sent", ["cm-2@example.org"] * 2)
    else:
        assert (after["status"], smtp.received) == ("cancelled", [])


async def test_days_are_counted_from_the_readers_own_date_not_the_servers(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """09:00 on 28 April in Auckland is still 27 April in UTC: the reminder counts from the
    reader's date (3 days to Friday 1 May), not the server's (4)."""
    await rig.set_prefs("cm-1", token(), timezone="Pacific/Auckland")
    await records.agree(await records.open_case())  # review due Friday 1 May
    await rig.catch_up()
    clock.now = datetime(2026, 4, 27, 21, 0, tzinfo=UTC)
    await rig.dispatch()  # claimed early: the reader's moment came before the schedule's
    [reminder] = smtp.received
    text = reminder.get_payload()[0].get_payload(decode=True).decode()
    assert "due on Friday 1 May 2026, in 3 days." in text



@pytest.mark.parametrize("transferred", ["before it fell due", "after it was handed on"])
async def test_the_supervisors_overdue_notice_names_the_case_manager_after_a_transfer(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, transferred: str) -> None:
    """The supervisor (in Los Angeles: their copy waits for 09:00 there) reads who manages the
    case now, as the new case manager's own notice does, however far the notice had gone."""
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    supervisor = token(role="supervisor", sub="sup-1")
    if transferred == "before it fell due":
        await rig.set_prefs("cm-1", token())
        await rig.set_prefs("sup-1", supervisor, timezone="America/Los_Angeles")
        case = await records.open_case()
        await records.agree(case)  # review due Friday 1 May
        await records.transfer(case, "cm-2", token=supervisor)
        await rig.catch_up()
        clock.now = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)
        await rig.dispatch()
    else:
        case, _ = await overdue_handed_to_supervisor(rig, records, token, clock)
        clock.now = datetime(2026, 5, 3, 10, 0, tzinfo=UTC)
        await records.transfer(case, "cm-2", token=supervisor)
        await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 16, 0, tzinfo=UTC)  # 09:00 in Los Angeles
    await rig.dispatch()
    [to_supervisor] = smtp.to("sup-1@example.org")
    assert "(case manager: cm-2)" in text_of(to_supervisor)
