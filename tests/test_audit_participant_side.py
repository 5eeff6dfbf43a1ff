"""A participant's side of Casetrail, as they use it: their plans (two cases, one closed and
reopened), their notification preferences and the mail they get, read as sent to the SMTP
peer (audit of the participant's side)."""

from __future__ import annotations

from services.notifier.delivery import Cancel, Dead, Recipient, decide
from tests.conftest import TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of
from tests.test_notifier_rules import STALE, T0, prefs, row
from tests.test_participant_mail import html_of


async def test_a_participants_mail_says_how_to_stop_it(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Mail to a member of the public says how to stop it: the milestone said only why it
    came ("you asked to hear about your milestones") and that they could "change how and when
    you hear from us", not that one setting, celebrations off, stops it, nor whom to ask."""
    case = await records.open_case()
    await rig.set_prefs("zoe", token(role="participant", sub="zoe", cases=[case]))
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()
    [mail] = smtp.to("zoe@example.org")
    stop = ("To stop these emails, turn celebrations off in your notification preferences,"
            " or tell your case manager.")
    assert stop in " ".join(text_of(mail).split())
    assert stop in " ".join(html_of(mail).split())


async def test_a_participants_choice_of_cases_outlasts_a_change_that_leaves_it_out(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Zoe has two cases and asked to hear of one only. Changing her quiet hours later, a
    PUT without `cases`, put the other back (her token's cases), and its milestone was
    mailed to her though she had left it out; left-out fields keep their stored values (0203),
    as they do when a supervisor changes an entry."""
    court_case, own_case = await records.open_case(), await records.open_case()
    zoe = token(role="participant", sub="zoe", cases=[court_case, own_case])
    await rig.set_prefs("zoe", zoe, cases=[own_case])
    changed = await rig.set_prefs("zoe", zoe, quiet_hours={"start": "22:00", "end": "07:00"})
    assert changed["cases"] == [own_case]
    await records.achieve(court_case, await records.goal(court_case))
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(recipient=f"participant:{court_case}")
    assert (row["status"], smtp.to("zoe@example.org")) == ("cancelled", [])
    response = await rig.client.get("/v1/preferences/zoe", headers=bearer(zoe))
    assert (await response.json())["cases"] == [own_case]


async def test_a_participants_first_entry_takes_the_cases_their_token_names(
        rig: NotifierRig, token: TokenFactory, records: Records) -> None:
    """With nothing stored, a participant who leaves `cases` out opts in for every case of
    their token, as before."""
    first, second = await records.open_case(), await records.open_case()
    stored = await rig.set_prefs("zoe", token(role="participant", sub="zoe",
                                              cases=[first, second]))
    assert stored["cases"] == sorted([first, second])


async def test_a_participant_with_a_case_closed_and_reopened_reads_both_and_hears_of_both(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Zoe's first case was closed and is reopened; her second is open. She reads both plans
    (another participant's case is 404), hears of a milestone on each, and a milestone her
    mail server refused once (550) she sends again herself; it goes to her, not her case
    manager."""
    earlier, current = await records.open_case(), await records.open_case()
    someone_else = await records.open_case(participant={"name": "Ana Silva"})
    zoe = token(role="participant", sub="zoe", cases=[earlier, current])
    await rig.set_prefs("zoe", zoe)
    earlier_goal = await records.goal(earlier)
    await records.close(earlier)
    await records.reopen(earlier)
    for case, status in ((earlier, 200), (current, 200), (someone_else, 404)):
        response = await records.client.get(f"/v1/cases/{case}", headers=bearer(zoe))
        assert response.status == status, case
    await records.achieve(earlier, earlier_goal)
    await rig.catch_up()
    smtp.replies = ["550 5.1.1 mailbox busy for good"]
    await rig.dispatch()
    [refused] = await rig.rows(recipient=f"participant:{earlier}", status="dead")
    response = await rig.client.post(f"/v1/notifications/{refused['id']}/retry",
                                     headers=bearer(zoe))
    assert response.status == 202
    await records.achieve(current, await records.goal(current))
    await rig.catch_up()
    await rig.dispatch()
    assert len(smtp.to("zoe@example.org")) == 2
    assert {r["status"] for r in await rig.rows(recipient_role="participant")} == {"sent"}


def test_a_participants_mail_not_sent_says_why_in_their_terms() -> None:
    """Celebrations turned off read "has not opted in", as if never asked; a dead letter for a
    missing address did not say how to give one, as a staff member's does."""
    jo = prefs(user_id="jo", role="participant", celebrations=False)
    never = decide(row("milestone", "participant"), Recipient(None, None), T0,
                   stale_after=STALE)
    turned_off = decide(row("milestone", "participant"), Recipient(jo, "jo@example.org"), T0,
                        stale_after=STALE)
    no_address = decide(row("milestone", "participant"),
                        Recipient(prefs(user_id="jo", role="participant", email=None), None),
                        T0, stale_after=STALE)
    assert never == Cancel("the participant has not opted in to hear about their milestones")
    assert turned_off == Cancel("the participant turned celebrations off in their preferences")
    assert no_address == Dead("the participant opted in but no email address is on file: set"
                              " it with PUT /v1/preferences/jo")
