"""A supervisor who holds cases writes them with a case_manager token (0004), and sets their
own preferences with whichever token they hold. With the case_manager one, their entry's role
went back to case_manager: they left the supervisors' overdue notices without a word."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer
from tests.test_preferences_removal import a_review_overdue


async def test_a_supervisors_own_change_with_a_case_manager_token_keeps_them_supervisor(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"))
    changed = await rig.set_prefs("sup-1", token(sub="sup-1"), timezone="Europe/Berlin")
    assert (changed["role"], changed["timezone"]) == ("supervisor", "Europe/Berlin")
    await rig.set_prefs("cm-1", token())
    await a_review_overdue(rig, records, clock)
    assert len(smtp.to("sup-1@example.org")) == 1


async def test_a_case_manager_a_supervisor_set_back_stays_a_case_manager(
        rig: NotifierRig, token: TokenFactory) -> None:
    """Only a supervisor changes a role: the kept role is the stored one, not a promotion."""
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-7", supervisor, role="supervisor")
    await rig.set_prefs("cm-7", supervisor, role="case_manager")
    changed = await rig.set_prefs("cm-7", token(sub="cm-7"), celebrations=False)
    assert changed["role"] == "case_manager"
    response = await rig.client.get("/v1/preferences/cm-7", headers=bearer(supervisor))
    assert (await response.json())["role"] == "case_manager"


async def test_a_supervisor_who_takes_a_case_after_the_hand_on_gets_its_overdue_notice_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The supervisors' copies of an overdue notice are handed on at the schedule's 09:00 and
    wait for 09:00 where each supervisor is. A supervisor who takes the case meanwhile has
    the case manager's copy: theirs as a supervisor went too, and they got the notice twice.
    The other supervisor's copy still goes, naming the new case manager."""
    supervisor = token(role="supervisor", sub="sup-1")
    for user, who in (("cm-1", token()), ("sup-1", supervisor),
                      ("sup-2", token(role="supervisor", sub="sup-2"))):
        await rig.set_prefs(user, who, timezone="America/Los_Angeles")
    case = await records.open_case()
    await records.agree(case)  # a review due on 1 May
    await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)
    await rig.dispatch()  # handed on: one copy per supervisor, due 09:00 in Los Angeles
    assert sorted(r["recipient"] for r in await rig.rows(kind="review_overdue",
                                                         recipient_role="user")) \
        == ["sup-1", "sup-2"]
    clock.now = datetime(2026, 5, 3, 10, 0, tzinfo=UTC)
    await records.transfer(case, "sup-1", token=supervisor)
    await rig.catch_up()
    for hour in range(11, 24):
        clock.now = datetime(2026, 5, 3, hour, 0, tzinfo=UTC)
        await rig.dispatch()

    def overdue(address: str) -> list[str]:
        return [m["Subject"] for m in smtp.to(address)
                if m["X-Casetrail-Kind"] == "review_overdue"]
    assert len(overdue("sup-1@example.org")) == 1
    assert len(overdue("sup-2@example.org")) == 1
    assert overdue("cm-1@example.org") == []
    copies = {r["recipient"]: r for r in await rig.rows(kind="review_overdue",
                                                        recipient_role="user")}
    assert (copies["sup-1"]["status"], copies["sup-1"]["last_error"]) \
        == ("cancelled", "sup-1 took the case and has the case manager's copy")
    assert copies["sup-2"]["status"] == "sent"
    assert json.loads(copies["sup-2"]["context"])["case_manager"] == "sup-1"
