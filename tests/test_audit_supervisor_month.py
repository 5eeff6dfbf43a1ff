"""A supervisor's month (an audit): they oversee several case managers, hear of overdue
reviews, transfer the caseload of a case manager who leaves and mend the dead letters left
behind; some supervisors hold cases of their own. The defects the audit found."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of

OVERDUE_DAY = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)  # a review due 1 May, two days' grace


def overdue_mail_to(smtp: SmtpServer, address: str) -> list[str]:
    return [text_of(m) for m in smtp.to(address) if "not yet recorded" in str(m["Subject"])]


async def test_a_supervisor_who_is_the_case_manager_hears_of_the_overdue_review_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Sam supervises the team and holds a few cases too: the overdue notice reached Sam as
    the case manager and again as a supervisor, two identical mails for one review."""
    sam = token(role="supervisor", sub="sup-sam")
    await rig.set_prefs("sup-sam", sam)
    await rig.set_prefs("sup-lee", token(role="supervisor", sub="sup-lee"))
    case = await Records(records.client, sam).open_case("sup-sam")
    await Records(records.client, token(sub="sup-sam")).agree(case)
    await rig.catch_up()

    clock.now = OVERDUE_DAY
    await rig.dispatch()
    await rig.dispatch()  # the supervisors' copies, handed on by the first round

    [to_sam] = overdue_mail_to(smtp, "sup-sam@example.org")
    assert "case manager: sup-sam" in to_sam
    [to_lee] = overdue_mail_to(smtp, "sup-lee@example.org")
    assert "case manager: sup-sam" in to_lee
    [handed_on] = await rig.rows(kind="review_overdue", recipient="supervisors")
    assert handed_on["last_error"] == "handed on to sup-lee"


async def test_the_only_supervisor_holding_the_case_is_told_once_and_nothing_is_dead(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Leaving them out of the supervisors' copies leaves no one: that row is not a dead
    letter saying there is no supervisor (there is one, and they were told)."""
    sam = token(role="supervisor", sub="sup-sam")
    await rig.set_prefs("sup-sam", sam)
    case = await Records(records.client, sam).open_case("sup-sam")
    await Records(records.client, token(sub="sup-sam")).agree(case)
    await rig.catch_up()

    clock.now = OVERDUE_DAY
    await rig.dispatch()
    await rig.dispatch()

    assert len(overdue_mail_to(smtp, "sup-sam@example.org")) == 1
    [group] = await rig.rows(kind="review_overdue", recipient="supervisors")
    assert group["status"] == "cancelled"
    assert group["last_error"] == ("the agency's only supervisor, sup-sam, is the case manager"
                                   " and has the case manager's copy")
    assert await rig.rows(status="dead") == []


async def dead_letters_of_alex(rig: NotifierRig, records: Records, clock: FakeClock) -> tuple[
        str, list[dict[str, object]]]:
    """A case of Alex's (cm-1, no address on file) whose nudge and overdue notice died."""
    case = await records.open_case()
    goal = await records.goal(case)
    await records.step(case, goal, "Call the landlord", due_date="2026-05-01")
    await records.agree(case, add_goal=False)
    await rig.catch_up()
    clock.now = OVERDUE_DAY
    await rig.dispatch()
    return case, await rig.rows(case_id=case, status="dead", recipient="cm-1")


async def test_a_dead_letter_retried_after_a_transfer_goes_to_the_new_case_manager(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Alex left without an address on file, so their nudge and overdue notice were dead
    letters. The supervisor transferred the case to Robin and retried them: they went to Alex
    again and died again, though every notice still waiting had moved to Robin."""
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("sup-1", supervisor)
    await rig.set_prefs("cm-robin", token(sub="cm-robin"))
    case, dead = await dead_letters_of_alex(rig, records, clock)
    assert {(r["kind"], r["recipient"]) for r in dead} >= {
        ("step_nudge", "cm-1"), ("review_overdue", "cm-1")}

    await records.transfer(case, "cm-robin", token=supervisor)
    await rig.catch_up()
    for row in dead:
        retried = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                        headers=bearer(supervisor))
        assert retried.status == 202, await retried.text()
        assert (await retried.json())["recipient"] == "cm-robin"
    await rig.dispatch()

    assert await rig.rows(case_id=case, status="dead") == []
    to_robin = [text_of(m) for m in smtp.to("cm-robin@example.org")]
    assert any("Call the landlord" in text for text in to_robin)
    [overdue] = [text for text in to_robin if "not been recorded yet" in text]
    assert "case manager: cm-robin" in overdue


async def test_the_new_case_manager_retries_the_dead_letters_of_their_case(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """After the transfer Robin saw the case's dead letters, which now go to Robin, but was
    refused the retry (403: "supervisors and the recipient retry dead letters")."""
    supervisor = token(role="supervisor", sub="sup-1")
    robin = token(sub="cm-robin")
    await rig.set_prefs("cm-robin", robin)
    case, dead = await dead_letters_of_alex(rig, records, clock)
    assert dead
    await records.transfer(case, "cm-robin", token=supervisor)
    await rig.catch_up()
    for row in dead:
        retried = await rig.client.post(f"/v1/notifications/{row['id']}/retry",
                                        headers=bearer(robin))
        assert retried.status == 202, await retried.text()
        assert (await retried.json())["recipient"] == "cm-robin"
    someone_else = await rig.client.post(f"/v1/notifications/{dead[0]['id']}/retry",
                                         headers=bearer(token(sub="cm-2")))
    assert someone_else.status == 404


async def test_a_dead_letter_of_a_closed_case_is_not_sent_again(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock) -> None:
    """Closing a case cancels its waiting notices; a dead letter of it retried afterwards was
    sent all the same (a reminder of a review nobody is to hold)."""
    supervisor = token(role="supervisor", sub="sup-1")
    case, dead = await dead_letters_of_alex(rig, records, clock)
    await records.close(case)
    await rig.catch_up()
    retried = await rig.client.post(f"/v1/notifications/{dead[0]['id']}/retry",
                                    headers=bearer(supervisor))
    assert retried.status == 409, await retried.text()
    problem = await retried.json()
    assert problem["detail"] == ("the case is closed: its notices were cancelled when it closed,"
                                 " and this one is not sent again")
    assert [r["status"] for r in await rig.rows(case_id=case, status="dead",
                                                 recipient="cm-1")] == ["dead"] * len(dead)
