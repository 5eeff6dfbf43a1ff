"""A second review of the seventeenth session's commits: the defects it found."""

from __future__ import annotations

from tests.conftest import TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer

HANDOVER = "case_transferred"


async def test_a_dead_handover_is_not_sent_once_the_case_has_moved_on(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """cm-2 had no address on file, so the handover of the case transferred to them died. The
    case then went on to cm-3: a retry sent cm-2 the participant's name, the review and the
    steps past their dates of a case no longer theirs (a waiting handover is withdrawn by the
    further transfer; a dead one was not)."""
    supervisor = token(role="supervisor", sub="sup-1")
    cm_2 = token(sub="cm-2")
    case = await records.open_case()
    await records.transfer(case, "cm-2", token=supervisor)
    await rig.catch_up()
    await rig.dispatch()
    [dead] = await rig.rows(kind=HANDOVER, status="dead")
    assert dead["recipient"] == "cm-2"
    await records.transfer(case, "cm-3", token=supervisor)
    await rig.catch_up()
    await rig.set_prefs("cm-2", cm_2)

    for who in (cm_2, supervisor):
        retried = await rig.client.post(f"/v1/notifications/{dead['id']}/retry",
                                        headers=bearer(who))
        assert retried.status == 409, await retried.text()
        problem = await retried.json()
        assert problem["type"].endswith("/transferred-on")
        assert problem["detail"] == ("the case has been transferred on since: this handover"
                                     " to cm-2 is not sent")
    await rig.dispatch()
    assert smtp.to("cm-2@example.org") == []
    [still] = await rig.rows(id=dead["id"])
    assert still["status"] == "dead"


async def test_a_dead_celebration_of_something_taken_back_is_not_sent(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """A take-back withdraws a small win still waiting, but a dead one, retried after it,
    congratulated cm-1 on a step no longer completed."""
    supervisor = token(role="supervisor", sub="sup-1")
    case = await records.open_case()
    goal = await records.goal(case)
    step = await records.step(case, goal, "Call the landlord")
    await records.complete(case, step)
    await rig.catch_up()
    await rig.dispatch()  # cm-1 has no address on file: a dead letter
    [dead] = await rig.rows(kind="small_win", status="dead")
    await records.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                       {"status": "in_progress", "reason": "Marked done too early"})
    await rig.catch_up()
    await rig.set_prefs("cm-1", token())

    retried = await rig.client.post(f"/v1/notifications/{dead['id']}/retry",
                                    headers=bearer(supervisor))
    assert retried.status == 409, await retried.text()
    assert (await retried.json())["detail"] == (
        "what it celebrates was taken back since: this small win is not sent")
    await rig.dispatch()
    assert smtp.received == []
    [still] = await rig.rows(kind="small_win")
    assert still["status"] == "dead"
