"""The participant's side of the notifier: the milestone mail they opted in to, as it arrives
over real SMTP from a real records service and PostgreSQL."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message

import pytest

from services.notifier.templates import FOOTER
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of


async def achieved_milestone(rig: NotifierRig, records: Records, token: TokenFactory,
                             **prefs: object) -> str:
    """A case whose participant, zoe, opted in with ``prefs``, and a goal of it achieved."""
    case = await records.open_case()
    await rig.set_prefs("zoe", token(role="participant", sub="zoe", cases=[case]), **prefs)
    await records.achieve(case, await records.goal(case))
    return case


async def test_a_participant_zone_this_notifier_cannot_load_is_a_dead_letter_that_says_why(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """As for staff (0203): an entry stored before zone names were checked, whose zone this
    notifier cannot load, will not mend itself. A participant's milestone was a failed
    attempt instead, retried for a day, each time with ZoneInfoNotFoundError."""
    case = await achieved_milestone(rig, records, token,
                                    quiet_hours={"start": "22:00", "end": "07:00"})
    await rig.notifier.pool.execute(
        "UPDATE notifier.directory SET timezone = 'US/Pacific-New' WHERE user_id = 'zoe'")
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(recipient=f"participant:{case}")
    assert (row["status"], row["attempts"]) == ("dead", 0)
    assert str(row["last_error"]) == (
        "the time zone 'US/Pacific-New' in the participant's preferences is not one this"
        " notifier knows: set it with PUT /v1/preferences/zoe")
    assert smtp.received == []


def html_of(message: Message) -> str:
    """The HTML part of a message as sent (text first, then HTML)."""
    part = message.get_payload()[1]  # type: ignore[index]
    return str(part.get_payload(decode=True).decode())  # type: ignore[union-attr]


async def test_the_milestone_a_participant_reads_is_theirs_alone_in_their_own_words(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Their name as they go by it (non-ASCII, with HTML in it), their goal in their own
    words (right-to-left, with <script> and &), nothing staff-only: not the risk level, a
    staff note, the goal's staff title, the case id or anyone else's name; the footer on
    preferences in both parts."""
    case = await records.open_case(risk="high", participant={
        "name": "Nguyễn Thị Lan", "preferred_name": "Zoë <b>陈</b>", "email": "zoe@example.org"})
    await rig.set_prefs("zoe", token(role="participant", sub="zoe", cases=[case]))
    words = "عمل بيدي <script>alert(1)</script> & more"
    goal = await records.goal(case, "Employment goal set by staff", words)
    await records.call("POST", f"/v1/cases/{case}/notes", {"text": "Staff note about Sam"}, 201)
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()
    [mail] = smtp.to("zoe@example.org")
    text, page = text_of(mail), html_of(mail)
    assert str(make_header(decode_header(mail["Subject"]))) == \
        "Congratulations, Zoë <b>陈</b>: you did it!"
    assert f'You reached your goal: "{words}".' in text
    assert ('<span dir="auto">عمل بيدي &lt;script&gt;alert(1)&lt;/script&gt; &amp; more</span>'
            in page)
    assert '<p>Hello <span dir="auto">Zoë &lt;b&gt;陈&lt;/b&gt;</span>,</p>' in page
    besides_their_words = text.replace(words, "")
    for staff_only in ("high", "risk", "Staff note", "Sam", "set by staff", case, "cm-1",
                       "Nguyễn", "<script>"):
        assert staff_only not in besides_their_words, staff_only
        assert staff_only not in page, staff_only
    assert text.endswith(f"-- \n{FOOTER}\n")
    assert html.escape(FOOTER) in page


QUIET_UNTIL_NOON_IN_BERLIN = {"timezone": "Europe/Berlin",
                              "quiet_hours": {"start": "08:00", "end": "12:00"}}
# what becomes of a milestone waiting out its reader's quiet hours, by what happens meanwhile
WHILE_IT_WAITS = {
    "transferred": ("sent", ["zoe@example.org"]),
    "closed": ("cancelled", []),
    "opted out": ("cancelled", []),
    "new address": ("sent", ["zoe.new@example.org"]),
}


@pytest.mark.parametrize("then", sorted(WHILE_IT_WAITS))
async def test_a_waiting_milestone_stays_the_participants_and_follows_their_choices(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, then: str) -> None:
    """A transfer moves the case manager's notices, never the participant's; closing ends it;
    the participant's own choices made meanwhile decide it."""
    case = await achieved_milestone(rig, records, token, **QUIET_UNTIL_NOON_IN_BERLIN)
    await rig.catch_up()
    await rig.dispatch()  # 10:00 in Berlin: it waits for noon there
    zoe = token(role="participant", sub="zoe", cases=[case])
    if then == "transferred":
        await records.transfer(case, "cm-2")
    elif then == "closed":
        await records.close(case)
    else:
        await rig.set_prefs("zoe", zoe, **QUIET_UNTIL_NOON_IN_BERLIN,
                            celebrations=then != "opted out",
                            email="zoe.new@example.org" if then == "new address" else None)
    await rig.catch_up()
    clock.now = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)  # noon in Berlin
    await rig.dispatch()
    [row] = await rig.rows(recipient=f"participant:{case}")
    assert (row["status"], [m["To"] for m in smtp.received]) == WHILE_IT_WAITS[then]
