"""A warm handover: the case manager a case is transferred to hears, at the transfer, what in
the plan needs attention. The overdue notice and the nudges already went to the case manager
who left, and were not sent again, so the new one learnt of them only from the caseload
listing."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from email.message import Message
from typing import Any
from uuid import UUID, uuid4

from aiohttp.test_utils import TestClient

from schemas import events as ev
from services.notifier.casemodel import CaseModel, FeedItem, evolve
from services.notifier.rules import Kind, RuleSettings, event_notices
from services.notifier.schedule import FEED_CHECKPOINT
from services.notifier.store.cases import reset_checkpoint
from services.notifier.templates import render
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of

HANDOVER = "case_transferred"
SUBJECT = "A case has been transferred to you: Jo"
REASON = "Jo moved to the north side of town"
ASSUMED_PRONOUN = re.compile(r"\b(he|she|his|her|hers|him|they|them|their|theirs)\b", re.I)


async def transfer(records: Records, case: str, to: str, by: str, expect: int = 200) -> None:
    await records.call("POST", f"/v1/cases/{case}/transfer",
                       {"case_manager": to, "reason": REASON}, expect, token=by)


def html_of(message: Message) -> str:
    part = message.get_payload()[1]  # type: ignore[index]
    return str(part.get_payload(decode=True).decode())  # type: ignore[union-attr]


def words(text: str) -> str:
    return " ".join(text.split())


async def handovers(rig: NotifierRig) -> list[dict[str, object]]:
    return await rig.rows(kind=HANDOVER)


async def test_the_new_case_manager_hears_what_needs_attention_at_the_transfer(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The overdue notice and the nudge went to cm-1 before the transfer; cm-2 hears of them
    in one notice at the transfer, with who handed the case on and why."""
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    await rig.set_prefs("sup-1", supervisor)
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Call the staffing agency", due_date="2026-04-20")
    await records.complete(case, await records.step(case, goal, "Update my CV",
                                                    due_date="2026-04-25"))
    await records.step(case, goal, "Visit the job centre", due_date="2026-06-01")
    await records.agree(case, add_goal=False)  # review due Friday 1 May
    await rig.catch_up()
    clock.now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    await rig.dispatch()
    assert smtp.to("cm-1@example.org")  # the overdue notice went to the one who leaves

    await transfer(records, case, "cm-2", supervisor)
    await rig.catch_up()
    await rig.dispatch()
    [mail] = smtp.to("cm-2@example.org")
    assert mail["Subject"] == SUBJECT
    text = words(text_of(mail))
    assert "You are now the case manager for Jo: the case was transferred to you from cm-1" \
        " by sup-1." in text
    assert f"The reason given: {REASON}." in text
    assert ("The plan review with Jo was due on Friday 1 May 2026 (3 days ago) and had not"
            " been recorded when the case was transferred.") in text
    assert '- "Call the staffing agency" (hoped-for date: Monday 20 April 2026)' in text
    assert "Update my CV" not in text  # done
    assert "Visit the job centre" not in text  # its date is still ahead
    html = html_of(mail)
    assert '<li><q><span dir="auto">Call the staffing agency</span></q>' in html
    assert not ASSUMED_PRONOUN.search(text + html)
    [row] = await handovers(rig)
    assert (row["recipient"], row["status"]) == ("cm-2", "sent")


async def test_a_digest_reader_finds_the_handover_in_the_digest(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"), delivery="daily_digest")
    case = await records.open_case()
    await records.agree(case)
    await transfer(records, case, "cm-2", token())
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [digest] = smtp.to("cm-2@example.org")
    assert digest["Subject"] == "Your Casetrail summary: 1 update"
    text = words(text_of(digest))
    assert f"- {SUBJECT} You are now the case manager for Jo" in text
    assert "Nothing in the plan was past its date when the case was transferred." in text
    assert f"Case {UUID(case)}" in text


async def test_the_handover_waits_out_the_readers_quiet_hours(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"), timezone="Europe/Berlin",
                        quiet_hours={"start": "08:00", "end": "11:00"})
    case = await records.open_case()
    await transfer(records, case, "cm-2", token())  # 09:00 UTC, 10:00 in Berlin
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    clock.now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    await rig.dispatch()
    assert [m["Subject"] for m in smtp.to("cm-2@example.org")] == [SUBJECT]
    assert "No plan review was scheduled when the case was transferred." \
        in words(text_of(smtp.received[0]))


async def test_a_replayed_feed_or_a_rebuilt_schema_sends_the_handover_once(
        aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
        fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await records.open_case()
    await transfer(records, case, "cm-2", token())
    await rig.catch_up()
    await rig.dispatch()
    assert len(smtp.received) == 1
    await reset_checkpoint(rig.notifier.pool, FEED_CHECKPOINT, clock())
    await rig.catch_up()
    await rig.dispatch()
    [row] = await handovers(rig)
    assert (len(smtp.received), row["status"]) == (1, "sent")
    # the notifier's schema is lost and rebuilt from the feed an hour later
    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.advance(hours=1)
    rebuilt = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await rebuilt.set_prefs("cm-2", token(sub="cm-2"))
    await rebuilt.catch_up()
    await rebuilt.dispatch()
    [again] = await handovers(rebuilt)
    assert (again["id"], again["message_id"]) == (row["id"], row["message_id"])
    assert again["status"] == "cancelled"
    assert "fell due before this notifier's record" in str(again["last_error"])
    assert len(smtp.received) == 1


async def test_a_transfer_back_withdraws_the_handover_still_waiting_and_sends_its_own(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """cm-2 reads a digest: before it went out, the case came back to cm-1. cm-2 is not told
    of a case no longer theirs to hold; cm-1 hears of the transfer back, from cm-2."""
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"), delivery="daily_digest")
    case = await records.open_case()
    await transfer(records, case, "cm-2", token())
    await rig.catch_up()
    await rig.dispatch()  # into cm-2's digest
    clock.advance(hours=2)
    await transfer(records, case, "cm-1", token(sub="cm-2"))
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [mail] = smtp.received
    assert (mail["To"], mail["Subject"]) == ("cm-1@example.org", SUBJECT)
    assert "transferred to you from cm-2" in words(text_of(mail))
    status = {r["recipient"]: (r["status"], r["last_error"]) for r in await handovers(rig)}
    assert status["cm-1"] == ("sent", None)
    assert status["cm-2"][0] == "cancelled"
    assert "no longer called for after CaseTransferred" in str(status["cm-2"][1])


async def test_a_transfer_to_the_same_manager_or_of_a_closed_case_sends_nothing(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """The records service refuses both, and writes nothing: the notifier has nothing to
    tell."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await transfer(records, case, "cm-1", token(), expect=409)
    await records.close(case)
    await transfer(records, case, "cm-2", token(role="supervisor", sub="sup-1"), expect=409)
    await rig.catch_up()
    await rig.dispatch()
    assert (await handovers(rig), smtp.received) == ([], [])
    history = await records.call("GET", f"/v1/cases/{case}/history")
    assert "CaseTransferred" not in {e["type"] for e in history["events"]}


async def test_a_case_closed_before_the_handover_went_out_ends_it(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"), delivery="daily_digest")
    case = await records.open_case()
    await transfer(records, case, "cm-2", token())
    await rig.catch_up()
    await rig.dispatch()
    await records.call("POST", f"/v1/cases/{case}/close", {"reason": "plan completed"},
                       token=token(sub="cm-2"))
    await records.call("POST", f"/v1/cases/{case}/reopen", {"reason": "asked for help"},
                       token=token(sub="cm-2"))
    await rig.catch_up()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    await rig.dispatch()
    assert smtp.received == []
    [row] = await handovers(rig)
    assert row["status"] == "cancelled"
    assert "the case was closed" in str(row["last_error"])


# --------------------------------------------------------------------------------------------
# the rule and the words, without I/O
# --------------------------------------------------------------------------------------------

OPENED = ev.CaseOpened(participant=ev.Participant(name="Jordan Rivera", preferred_name="Jo"),
                       case_manager="cm-1", risk_level="moderate", agency="agency-a")


def _fold(payloads: list[ev.EventPayload], at: datetime,
          actor: str | None) -> tuple[CaseModel, FeedItem]:
    case, item, case_id = None, None, uuid4()
    for version, payload in enumerate(payloads, 1):
        item = FeedItem("cp", case_id, version, uuid4(), payload.event_type,
                        payload.schema_version, ev.dump_event(payload), "agency-a", at,
                        actor=actor)
        case = evolve(case, item, payload)
    assert case is not None
    assert item is not None
    return case, item


TRANSFERRED_AT = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
UTC_RULES = RuleSettings()


def _handover(actor: str | None, *steps_due: date, at: datetime = TRANSFERRED_AT,
              rules: RuleSettings = UTC_RULES) -> str:
    goal_id = uuid4()
    steps = [ev.ActionStepAdded(step_id=uuid4(), goal_id=goal_id, description=f"Step {n}",
                                owner="participant", due_date=due)
             for n, due in enumerate(steps_due)]
    moved = ev.CaseTransferred(from_case_manager="cm-1", to_case_manager="cm-2", reason=REASON)
    case, item = _fold([OPENED, ev.GoalSet(goal_id=goal_id, title="Find steady work",
                                           domain="employment", source="participant"),
                        *steps, moved], at, actor)
    [notice] = event_notices(case, item, moved, rules)
    assert (notice.kind, notice.recipient, notice.key) == (
        Kind.CASE_TRANSFERRED, "cm-2", f"case_transferred:{item.event_id}")
    return words(render(notice.kind, notice.context, case.case_id, today=at.date()).text)


def test_the_handover_names_who_transferred_the_case_when_it_was_not_the_case_manager() -> None:
    assert "transferred to you from cm-1 by sup-1." in _handover("sup-1")
    assert "transferred to you from cm-1." in _handover("cm-1")
    assert "transferred to you from cm-1." in _handover(None)


def test_a_steps_date_is_past_when_its_day_has_ended_in_the_schedules_zone() -> None:
    """At 02:00 UTC on 10 March it is still 9 March in Chicago: a step hoped for on 9 March
    is not yet past there."""
    chicago = RuleSettings(timezone="America/Chicago")
    in_chicago = _handover(None, date(2026, 3, 9), date(2026, 3, 8), rules=chicago)
    assert '"Step 1" (hoped-for date: Sunday 8 March 2026)' in in_chicago
    assert "Step 0" not in in_chicago
    assert '"Step 0" (hoped-for date: Monday 9 March 2026)' in _handover(None, date(2026, 3, 9))


def test_a_long_list_of_steps_is_cut_short_and_says_how_many_more() -> None:
    text = _handover(None, *(date(2026, 3, day) for day in range(1, 10)))
    assert text.count("(hoped-for date:") == 5
    assert "and 4 more in the plan" in text
    assert "What may need attention first: 9 steps past the hoped-for date." in text
