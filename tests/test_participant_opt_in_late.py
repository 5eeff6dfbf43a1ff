"""A participant who opts in right after a milestone hears of it (0203).

In a meeting the order is often: the participant achieves a goal, the case manager records
it, then the participant says they would like to hear about these and their preferences are
set. The notifier had already cancelled that milestone ("not opted in"), and a cancelled
notice is never retried, so the first celebration, of the goal that made them opt in, never
came. Real records service, real PostgreSQL, real SMTP, the injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer

NOT_OPTED_IN = "the participant has not opted in to hear about their milestones"
TURNED_OFF = "the participant turned celebrations off in their preferences"


async def goal_status(records: Records, case: str, goal: str, status: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/goals/{goal}/status",
                       {"status": status, "reason": "recorded too early"})


async def a_milestone_handled(rig: NotifierRig, records: Records) -> tuple[str, str]:
    """A case with a goal achieved, its milestone already handled by the notifier."""
    case = await records.open_case()
    goal = await records.goal(case, "Find steady work", "A job where I use my hands")
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()
    return case, goal


async def participant_row(rig: NotifierRig, case: str) -> dict[str, Any]:
    [row] = await rig.rows(recipient=f"participant:{case}", kind="milestone")
    return row


async def opt_in(rig: NotifierRig, token: TokenFactory, case: str, **prefs: Any) -> None:
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]),
                        email="jo@example.org", **prefs)


async def test_opting_in_ten_minutes_after_a_milestone_sends_it_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case, _ = await a_milestone_handled(rig, records)
    before = await participant_row(rig, case)
    assert (before["status"], before["last_error"]) == ("cancelled", NOT_OPTED_IN)
    clock.advance(minutes=10)
    await opt_in(rig, token, case)
    await rig.dispatch()
    await rig.dispatch()
    [mail] = smtp.to("jo@example.org")
    assert mail["Message-ID"] == before["message_id"]
    assert "you did it" in str(mail["Subject"])
    after = await participant_row(rig, case)
    assert (after["status"], after["attempts"]) == ("sent", 1)
    # the case manager's copy (no entry for cm-1: a dead letter) is staff mail: left alone
    [staff] = await rig.rows(recipient="cm-1", kind="milestone")
    assert staff["status"] == "dead"
    assert len(smtp.received) == 1


async def test_opting_in_four_days_after_a_milestone_sends_nothing(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Past NOTIFIER_STALE_AFTER_HOURS (72) a milestone is too late to be useful."""
    case, _ = await a_milestone_handled(rig, records)
    clock.advance(days=4)
    await opt_in(rig, token, case)
    await rig.dispatch()
    assert smtp.received == []
    row = await participant_row(rig, case)
    assert (row["status"], row["last_error"]) == ("cancelled", NOT_OPTED_IN)


async def test_an_achievement_taken_back_before_opting_in_is_not_celebrated(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case, goal = await a_milestone_handled(rig, records)
    clock.advance(minutes=5)
    await goal_status(records, case, goal, "active")
    await rig.catch_up()
    clock.advance(minutes=5)
    await opt_in(rig, token, case)
    await rig.dispatch()
    assert smtp.received == []
    assert (await participant_row(rig, case))["status"] == "cancelled"


async def test_an_achievement_taken_back_and_achieved_again_is_celebrated_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Two milestones of one goal cancelled before the opt-in: only the latest is news."""
    case, goal = await a_milestone_handled(rig, records)
    clock.advance(minutes=1)
    await goal_status(records, case, goal, "active")
    clock.advance(minutes=1)
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()
    clock.advance(minutes=10)
    await opt_in(rig, token, case)
    await rig.dispatch()
    assert len(smtp.to("jo@example.org")) == 1
    rows = await rig.rows(recipient=f"participant:{case}", kind="milestone")
    assert [r["status"] for r in rows] == ["cancelled", "sent"]


async def test_celebrations_turned_back_on_after_a_milestone_send_it(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case = await records.open_case()
    await opt_in(rig, token, case)
    await opt_in(rig, token, case, celebrations=False)
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()
    assert (await participant_row(rig, case))["last_error"] == TURNED_OFF
    clock.advance(minutes=10)
    await opt_in(rig, token, case, celebrations=True)
    await rig.dispatch()
    assert len(smtp.to("jo@example.org")) == 1


async def test_a_second_put_does_not_send_it_again(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case, _ = await a_milestone_handled(rig, records)
    clock.advance(minutes=10)
    await opt_in(rig, token, case)
    await opt_in(rig, token, case)  # before it went
    await rig.dispatch()
    await opt_in(rig, token, case, celebrations=False)
    await opt_in(rig, token, case)  # after it went, off and on again
    await rig.dispatch()
    assert len(smtp.to("jo@example.org")) == 1


@pytest.mark.parametrize("closed", ["before the notifier saw the milestone",
                                    "after it was cancelled for not opting in",
                                    "and reopened after it was cancelled"])
async def test_a_milestone_of_a_closed_case_is_not_sent(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, closed: str) -> None:
    """Closing ends a waiting celebration and reopening does not bring it back (0201): nor
    one an opt-in would have sent."""
    case = await records.open_case()
    await records.achieve(case, await records.goal(case))
    if not closed.startswith("before"):
        await rig.catch_up()
        await rig.dispatch()
    await records.close(case)
    if closed.startswith("and reopened"):
        await records.reopen(case)
    await rig.catch_up()
    await rig.dispatch()
    clock.advance(minutes=10)
    await opt_in(rig, token, case)
    await rig.dispatch()
    assert smtp.received == []
    assert (await participant_row(rig, case))["status"] == "cancelled"


async def test_a_case_named_later_sends_its_recent_milestone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Opted in for one case, the participant adds the case whose goal they just achieved."""
    first = await records.open_case()
    case, _ = await a_milestone_handled(rig, records)
    both = token(role="participant", sub="jo", cases=[first, case])
    await rig.set_prefs("jo", both, email="jo@example.org", cases=[first])
    clock.advance(minutes=10)
    await rig.set_prefs("jo", both, email="jo@example.org", cases=[first, case])
    await rig.dispatch()
    assert len(smtp.to("jo@example.org")) == 1


async def test_a_refused_opt_in_schedules_nothing(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case, _ = await a_milestone_handled(rig, records)
    clock.advance(minutes=10)
    response = await rig.client.put(
        "/v1/preferences/jo", headers=bearer(token(role="participant", sub="jo", cases=[case])),
        json={"email": "jo@example.org", "delivery": "daily_digest", "timezone": "UTC",
              "celebrations": True})
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    await rig.dispatch()
    assert smtp.received == []
    row = await participant_row(rig, case)
    assert (row["status"], row["last_error"]) == ("cancelled", NOT_OPTED_IN)
    assert await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory") == 0


async def test_an_opt_in_meeting_a_deadlock_is_tried_again_not_answered_500(
        fresh_database_url: str, rig: NotifierRig, records: Records, smtp: SmtpServer,
        token: TokenFactory) -> None:
    """An opt-in locks the participant's entry, then their cancelled milestones; the feed, on a
    take-back or a closing, may hold such a milestone and then want the entry (another case of
    theirs in the same page). PostgreSQL then ends one transaction, here the opt-in's, which
    answered 500; it is tried again, as recording an attempt is."""
    case, _ = await a_milestone_handled(rig, records)
    await opt_in(rig, token, case, celebrations=False)
    pool = rig.notifier.pool
    other = await asyncpg.connect(fresh_database_url)
    try:
        async with other.transaction():
            await other.fetch("SELECT id FROM notifier.notifications WHERE recipient = $1"
                              " AND kind = 'milestone' FOR UPDATE", f"participant:{case}")
            turning_on = asyncio.ensure_future(opt_in(rig, token, case, celebrations=True))
            async with asyncio.timeout(30):
                while not await pool.fetchval(  # noqa: ASYNC110  (polling the database)
                        "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                        " current_database() AND wait_event_type = 'Lock'"):
                    await asyncio.sleep(0.05)
            await other.fetch("SELECT * FROM notifier.directory WHERE user_id = 'jo'"
                              " FOR UPDATE")
        async with asyncio.timeout(30):
            await turning_on  # set_prefs asserts a 200
    finally:
        await other.close()
    await rig.dispatch()
    [mail] = smtp.to("jo@example.org")
    assert "you did it" in str(mail["Subject"])
