"""Taking a person out of the directory, and one participant's case on another's entry.

A supervisor who left the agency kept getting its overdue notices, participants' names in
them, and a participant who no longer wanted mail stayed in the directory: an entry could be
changed, never removed. And a supervisor could put a case on a second participant's entry (a
typo in a user id): that person's milestones then went to the one updated last."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.notifier.store.notifications import NOT_OPTED_IN
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer


async def delete(rig: NotifierRig, user: str, token: str, query: str = "") -> Any:
    return await rig.client.delete(f"/v1/preferences/{user}{query}", headers=bearer(token))


async def entry(rig: NotifierRig, user: str, token: str, query: str = "") -> int:
    response = await rig.client.get(f"/v1/preferences/{user}{query}", headers=bearer(token))
    return response.status


async def directory_size(rig: NotifierRig) -> int:
    return int(await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory"))


async def a_review_overdue(rig: NotifierRig, records: Records, clock: FakeClock) -> None:
    """cm-1's case agreed, its review overdue, and its notices (supervisors' copies too) sent."""
    await records.agree(await records.open_case())
    await rig.catch_up()
    clock.now = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)  # due 1 May + 2 days' grace
    await rig.dispatch()
    await rig.dispatch()  # the supervisors' copies, handed on


async def test_a_supervisor_who_left_gets_no_more_overdue_notices(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("sup-1", supervisor)
    await rig.set_prefs("sup-2", token(role="supervisor", sub="sup-2"))
    response = await delete(rig, "sup-2", supervisor)
    assert response.status == 204
    assert await entry(rig, "sup-2", supervisor) == 404
    await a_review_overdue(rig, records, clock)
    assert len(smtp.to("sup-1@example.org")) == 1
    assert smtp.to("sup-2@example.org") == []


async def test_a_case_manager_removes_their_own_entry_and_their_notices_say_so(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    assert (await delete(rig, "cm-1", token())).status == 204
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case), "Call"))
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(kind="small_win", recipient="cm-1")
    assert row["status"] == "dead"
    assert "no email address on file for cm-1" in row["last_error"]
    assert smtp.received == []


async def test_removing_a_participants_entry_ends_their_milestones(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await records.open_case()
    jo = token(role="participant", sub="jo", cases=[case])
    await rig.set_prefs("jo", jo, email="jo@example.org")
    assert (await delete(rig, "jo", jo)).status == 204
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(kind="milestone", recipient=f"participant:{case}")
    assert (row["status"], row["last_error"]) == ("cancelled", NOT_OPTED_IN)
    assert smtp.to("jo@example.org") == []


async def test_a_notice_waiting_in_a_removed_readers_digest_is_not_sent_to_them(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case), "Call"))
    await rig.catch_up()
    await rig.dispatch()  # into tomorrow's digest
    assert (await delete(rig, "cm-1", token())).status == 204
    clock.advance(days=1)
    await rig.dispatch()
    await rig.notifier.dispatcher.send_digests()
    assert smtp.received == []
    [row] = await rig.rows(kind="small_win", recipient="cm-1")
    assert row["status"] == "dead"


async def test_a_supervisor_removes_only_the_participant_entry_of_a_shared_id(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    case = await records.open_case()
    await rig.set_prefs("7", token(sub="7"))
    await rig.set_prefs("7", token(role="participant", sub="7", cases=[case]))
    assert (await delete(rig, "7", supervisor, "?role=participant")).status == 204
    assert await entry(rig, "7", supervisor, "?role=participant") == 404
    assert await entry(rig, "7", supervisor, "?role=case_manager") == 200


@pytest.mark.parametrize(("user", "caller", "status"), [
    ("cm-2", {"sub": "cm-1"}, 403),  # a colleague's
    ("cm-1", {"role": "service", "sub": "cm-1"}, 403),
    ("cm-1", {"window_to": datetime(2100, 1, 1, tzinfo=UTC)}, 403),  # a token that sees the past
    ("nobody", {"role": "supervisor", "sub": "sup-1"}, 404),
    ("%FF", {"role": "supervisor", "sub": "sup-1"}, 400),
    ("cm-1", {"agency": "agency-b", "role": "supervisor", "sub": "sup-9"}, 404)])
async def test_a_removal_refused_removes_nothing(
        rig: NotifierRig, token: TokenFactory, user: str, caller: dict[str, Any],
        status: int) -> None:
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    response = await delete(rig, user, token(**caller))
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert (await response.json())["detail"]
    assert await directory_size(rig) == 2


async def test_a_case_on_another_participants_entry_is_refused_with_who_has_it(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]))
    response = await rig.client.put(
        "/v1/preferences/jo2", headers=bearer(supervisor),
        json={"email": "jo2@example.org", "delivery": "immediate", "timezone": "UTC",
              "celebrations": True, "role": "participant", "cases": [case]})
    assert response.status == 409
    problem = await response.json()
    assert problem["type"].endswith("case-on-another-entry")
    assert f"case {case} is on the preferences of participant jo" in problem["detail"]
    assert await entry(rig, "jo2", supervisor, "?role=participant") == 404
    assert (await delete(rig, "jo", supervisor, "?role=participant")).status == 204
    response = await rig.client.put(
        "/v1/preferences/jo2", headers=bearer(supervisor),
        json={"email": "jo2@example.org", "delivery": "immediate", "timezone": "UTC",
              "celebrations": True, "role": "participant", "cases": [case]})
    assert response.status == 200


async def test_a_participant_whose_case_is_on_another_entry_is_told_whom_to_ask(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """A participant is not told who else's entry it is: that is another person's id."""
    case = await records.open_case()
    await rig.set_prefs("sam", token(role="supervisor", sub="sup-1"), role="participant",
                        cases=[case])
    response = await rig.client.put(
        "/v1/preferences/jo", headers=bearer(token(role="participant", sub="jo", cases=[case])),
        json={"email": "jo@example.org", "delivery": "immediate", "timezone": "UTC",
              "celebrations": True})
    assert response.status == 409
    detail = (await response.json())["detail"]
    assert "ask your case manager" in detail
    assert "sam" not in detail
    assert await directory_size(rig) == 1


async def test_a_participant_changing_their_own_entry_is_not_refused_for_it(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case = await records.open_case()
    jo = token(role="participant", sub="jo", cases=[case])
    await rig.set_prefs("jo", jo)
    assert (await rig.set_prefs("jo", jo, celebrations=False))["celebrations"] is False


async def test_entries_stored_before_that_share_a_case_keep_changing(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Two entries sharing a case, stored before the check: either participant may still
    turn celebrations off (the one-click link does just that)."""
    case = await records.open_case()
    jo = token(role="participant", sub="jo", cases=[case])
    await rig.set_prefs("jo", jo)
    await rig.notifier.pool.execute(
        "INSERT INTO notifier.directory (agency, user_id, role, email, delivery, timezone,"
        " celebrations, cases, updated_by, updated_at) SELECT agency, 'sam', role,"
        " 'sam@example.org', delivery, timezone, celebrations, cases, 'sup-1', updated_at"
        " FROM notifier.directory WHERE user_id = 'jo'")
    assert (await rig.set_prefs("jo", jo, celebrations=False))["celebrations"] is False
    sam = token(role="participant", sub="sam", cases=[case])
    assert (await rig.set_prefs("sam", sam, celebrations=False))["celebrations"] is False
