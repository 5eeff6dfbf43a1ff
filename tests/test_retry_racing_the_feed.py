"""A person's retry of a dead letter racing the feed: the route reads the case, then the
feed commits a closing before the retry takes its lock on the case. The retry must be
refused as it would have been a moment later (409 case-closed), not send the letter of a
closed case (0202)."""

from __future__ import annotations

import json

from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer
from tests.test_audit_notifier_s18 import (
    deliver,
    feed_held_at_the_case,
    post_retry,
    step_of,
    told,
)
from tests.test_audit_smtp_peer import small_win


async def retry_with_the_feed_held(rig: NotifierRig, token: TokenFactory, clock: FakeClock,
                                   database_url: str, case: str,
                                   row_id: object) -> tuple[int, str]:
    """A supervisor's retry of ``row_id``, sent while the feed applies the case's new events
    (``feed_held_at_the_case``); then whatever is owed is delivered. The retry's answer."""
    answers: list[tuple[int, str]] = []

    async def a_supervisor_retries() -> None:
        answers.append(await post_retry(rig, token, row_id))

    await feed_held_at_the_case(rig, database_url, case, a_supervisor_retries)
    await deliver(rig, clock)
    [answer] = answers
    return answer


async def test_a_retry_racing_the_feed_closing_the_case_is_refused_and_sends_nothing(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, fresh_database_url: str) -> None:
    await rig.set_prefs("cm-1", token())
    smtp.replies = ["550 5.1.1 mailbox unavailable"]
    case = await small_win(records)
    await rig.catch_up()
    await rig.dispatch()
    dead = await step_of(rig, "Visit the job centre")
    assert dead["status"] == "dead"
    await records.close(case)

    status, text = await retry_with_the_feed_held(rig, token, clock, fresh_database_url, case,
                                                  dead["id"])
    assert status == 409, text
    assert json.loads(text)["type"].endswith("/case-closed")
    assert told(smtp.received, "Visit the job centre") == 0
    assert (await step_of(rig, "Visit the job centre"))["status"] == "dead"


async def test_a_retry_of_a_handover_racing_the_feed_transferring_the_case_on_is_refused(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, fresh_database_url: str) -> None:
    """cm-2's handover died (550); the case goes on to cm-3 while a supervisor retries it:
    the handover must not tell cm-2 of a case no longer theirs."""
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    smtp.replies = ["550 5.1.1 mailbox unavailable"]
    case = await records.open_case()
    # a step of the case's, for the feed to be held at (``feed_held_at_the_case``)
    await records.step(case, await records.goal(case), "Call the landlord")
    await records.transfer(case, "cm-2", token=supervisor)
    await rig.catch_up()
    await rig.dispatch()
    [dead] = await rig.rows(kind="case_transferred", status="dead")
    await records.transfer(case, "cm-3", token=supervisor)

    status, text = await retry_with_the_feed_held(rig, token, clock, fresh_database_url, case,
                                                  dead["id"])
    assert status == 409, text
    assert json.loads(text)["type"].endswith("/transferred-on")
    assert smtp.to("cm-2@example.org") == []
    assert [r["status"] for r in await rig.rows(kind="case_transferred", recipient="cm-2")] \
        == ["dead"]
