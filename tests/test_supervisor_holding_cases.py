"""A supervisor who holds cases writes them with a case_manager token (0004), and sets their
own preferences with whichever token they hold. With the case_manager one, their entry's role
went back to case_manager: they left the supervisors' overdue notices without a word."""

from __future__ import annotations

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
