"""The notifier's access log: a supervisor's reads of a case's data in the notifier (its
schedule, its notifications, a participant's preferences) are logged as records logs theirs,
and exported with the same shape of paging (`GET /v1/access-log`).

The brief logs every read of a case by a supervisor or auditor. The notifier showed
supervisors a case's manager, status and review dates, its notices and a participant's own
address, and wrote nothing down.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records

OTHER_CASE = "7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e"  # a case no test opens


async def _settled(rig: NotifierRig) -> None:
    """Entries are handed out in commit order, one held back while any older transaction on
    the server is open (other test runs share it): wait until none is."""
    for _ in range(1500):  # up to 30 s
        if not await rig.notifier.pool.fetchval(
                "SELECT count(*) FROM notifier.access_log"
                " WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("access-log entries still held back after 30 s")


async def _get(rig: NotifierRig, path: str, token: str) -> tuple[int, Any]:
    response = await rig.client.get(path, headers=bearer(token))
    return response.status, await response.json()


async def _log(rig: NotifierRig, token: str, query: str = "") -> dict[str, Any]:
    await _settled(rig)
    status, page = await _get(rig, f"/v1/access-log{query}", token)
    assert status == 200, page
    return dict(page)


async def _undocumented(rig: NotifierRig, page: dict[str, Any]) -> list[str]:
    """How ``page`` differs from the AccessLogPage of the notifier's served OpenAPI document."""
    document = await (await rig.client.get("/openapi.json")).json()
    schema = document["components"]["schemas"]["AccessLogPage"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    missing = {"held_back", "held_back_since"} - set(schema["required"])
    return [e.message for e in validator.iter_errors(page)] + sorted(missing)


async def _count(rig: NotifierRig) -> int:
    return int(await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.access_log"))


async def _scene(rig: NotifierRig, records: Records, token: TokenFactory) -> tuple[str, str]:
    """A case with notices waiting (an agreed plan: its review's reminders) and its
    participant's preferences, set by the participant."""
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]))
    return case, "jo"


async def test_a_supervisors_reads_of_a_case_are_logged(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case, participant = await _scene(rig, records, token)
    supervisor = token(role="supervisor", sub="sup-1")
    for path in (f"/v1/schedule?case_id={case}", f"/v1/notifications?case_id={case}",
                 f"/v1/preferences/{participant}"):
        status, body = await _get(rig, path, supervisor)
        assert status == 200, (path, body)
    entries = (await _log(rig, supervisor))["entries"]
    assert [(e["actor_sub"], e["actor_role"], e["case_id"], e["participant"], e["action"],
             e["what"]) for e in entries] == [
        ("sup-1", "supervisor", case, None, "read", "schedule"),
        ("sup-1", "supervisor", case, None, "list", "notifications"),
        ("sup-1", "supervisor", case, participant, "read", "preferences")]
    assert all(e["at"] == rig.clock.now.isoformat() for e in entries)
    assert all(e["request_id"] for e in entries)


async def test_a_listing_and_a_notification_read_name_each_case_shown(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """As records logs a caseload listing: one entry per case the page showed."""
    first, _ = await _scene(rig, records, token)
    second = await records.open_case()
    await records.agree(second)
    await rig.catch_up()
    supervisor = token(role="supervisor", sub="sup-1")
    status, listing = await _get(rig, "/v1/notifications?status=scheduled", supervisor)
    assert status == 200
    one = next(n for n in listing["notifications"] if n["case_id"] is not None)
    assert (await _get(rig, f"/v1/notifications/{one['id']}", supervisor))[0] == 200
    entries = (await _log(rig, supervisor))["entries"]
    assert sorted((e["case_id"], e["what"]) for e in entries[:2]) == sorted(
        (case, "notifications status=scheduled") for case in (first, second))
    assert [(e["case_id"], e["what"]) for e in entries[2:]] == [
        (one["case_id"], f"notification {one['id']}")]


async def test_a_case_managers_and_a_participants_own_reads_are_not_logged(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """As in records: the brief logs supervisors' and auditors' reads; a case manager
    reading their own case and a participant reading their own notices are not audited."""
    case, participant = await _scene(rig, records, token)
    jo = token(role="participant", sub=participant, cases=[case])
    await rig.set_prefs("cm-1", token())
    for path, who in [(f"/v1/schedule?case_id={case}", token()),
                      (f"/v1/notifications?case_id={case}", token()),
                      ("/v1/preferences/cm-1", token()),
                      (f"/v1/notifications?case_id={case}", jo),
                      (f"/v1/preferences/{participant}", jo)]:
        status, body = await _get(rig, path, who)
        assert status == 200, (path, body)
    assert await _count(rig) == 0


async def test_a_supervisor_reading_staff_preferences_reads_no_case(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    assert (await _get(rig, "/v1/preferences/cm-1", token(role="supervisor", sub="sup-1")))[0] \
        == 200
    assert await _count(rig) == 0


async def test_another_agency_sees_none_of_the_entries_and_leaves_none(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case, participant = await _scene(rig, records, token)
    await _get(rig, f"/v1/schedule?case_id={case}", token(role="supervisor", sub="sup-1"))
    elsewhere = token(role="supervisor", sub="sup-9", agency="agency-b")
    for path, status in [(f"/v1/schedule?case_id={case}", 404),
                         (f"/v1/preferences/{participant}", 404),
                         (f"/v1/notifications?case_id={case}", 200)]:
        assert (await _get(rig, path, elsewhere))[0] == status, path
    assert await _count(rig) == 1
    for query in ("", f"?case_id={case}"):
        assert (await _log(rig, elsewhere, query))["entries"] == []


async def test_the_log_pages_in_commit_order_and_resumes_from_its_checkpoint(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case, _ = await _scene(rig, records, token)
    supervisor = token(role="supervisor", sub="sup-1")
    for _ in range(3):
        await _get(rig, f"/v1/schedule?case_id={case}", supervisor)
    first = await _log(rig, supervisor, "?limit=2")
    assert len(first["entries"]) == 2
    assert first["next_after"] is not None
    rest = await _log(rig, supervisor, f"?after={first['next_after']}&limit=2")
    assert len(rest["entries"]) == 1
    assert rest["next_after"] is None
    ids = [e["id"] for e in first["entries"] + rest["entries"]]
    assert len(set(ids)) == 3
    await _get(rig, f"/v1/notifications?case_id={case}", supervisor)
    since = await _log(rig, supervisor, f"?after={rest['checkpoint']}")
    assert [e["what"] for e in since["entries"]] == ["notifications"]
    other = await _log(rig, supervisor, f"?case_id={OTHER_CASE}")
    assert other["entries"] == []


async def test_an_entry_committed_late_is_not_skipped(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case, _ = await _scene(rig, records, token)
    supervisor = token(role="supervisor", sub="sup-1")
    async with rig.notifier.pool.acquire() as slow:
        late = slow.transaction()
        await late.start()
        await slow.execute(
            "INSERT INTO notifier.access_log (at, agency, actor_sub, actor_role, case_id,"
            " action, what) VALUES (now(), 'agency-a', 'sup-2', 'supervisor', $1::text::uuid,"
            " 'read', 'schedule')", case)
        await _get(rig, f"/v1/schedule?case_id={case}", supervisor)  # a later id, committed first
        page = (await _get(rig, "/v1/access-log", supervisor))[1]
        assert page["entries"] == []
        await late.commit()
    rest = await _log(rig, supervisor, f"?after={page['checkpoint']}")
    assert [e["actor_sub"] for e in rest["entries"]] == ["sup-2", "sup-1"]


async def test_a_page_held_back_by_an_open_transaction_says_so(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """The log is handed out only up to the oldest open transaction on the server. A page
    caught up with that horizon answered `next_after: null` and nothing else, so a supervisor
    exporting it while any write transaction was open took an export missing the latest
    reads for the whole log; it now says what waits, as records' log does (0006)."""
    case, _ = await _scene(rig, records, token)
    supervisor = token(role="supervisor", sub="sup-1")
    async with rig.notifier.pool.acquire() as held, held.transaction():
        await held.execute("SELECT pg_current_xact_id()")  # an open write transaction
        rig.clock.advance(minutes=5)
        read_at = rig.clock.now.isoformat()
        assert (await _get(rig, f"/v1/schedule?case_id={case}", supervisor))[0] == 200
        status, page = await _get(rig, "/v1/access-log", supervisor)
        assert status == 200, page
        assert (page["entries"], page["next_after"]) == ([], None)
        assert (page["held_back"], page["held_back_since"]) == (1, read_at)
        assert await _undocumented(rig, page) == []
        other_case = (await _get(rig, f"/v1/access-log?case_id={OTHER_CASE}", supervisor))[1]
        assert (other_case["held_back"], other_case["held_back_since"]) == (0, None)
        elsewhere = token(role="supervisor", sub="sup-9", agency="agency-b")
        assert (await _get(rig, "/v1/access-log", elsewhere))[1]["held_back"] == 0
    page = await _log(rig, supervisor, f"?after={page['checkpoint']}")
    assert [e["what"] for e in page["entries"]] == ["schedule"]
    assert (page["next_after"], page["held_back"], page["held_back_since"]) == (None, 0, None)


async def test_a_full_page_does_not_count_what_is_held_back(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Counting is for a page that caught up: a full page says where to go on instead."""
    case, _ = await _scene(rig, records, token)
    supervisor = token(role="supervisor", sub="sup-1")
    for _ in range(3):
        await _get(rig, f"/v1/schedule?case_id={case}", supervisor)
    page = await _log(rig, supervisor, "?limit=2")
    assert (len(page["entries"]), page["held_back"], page["held_back_since"]) == (2, 0, None)
    assert page["next_after"] is not None


@pytest.mark.parametrize("query", ["after=x", "after=-1", "after=eDp5", "limit=0",
                                   "limit=501", "case_id=nope", "agency=agency-b",
                                   "after=" + "A" * 65])
async def test_bad_access_log_queries_get_a_problem_and_write_nothing(
        rig: NotifierRig, token: TokenFactory, query: str) -> None:
    response = await rig.client.get(f"/v1/access-log?{query}",
                                    headers=bearer(token(role="supervisor", sub="sup-1")))
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/problem+json"
    assert await _count(rig) == 0


@pytest.mark.parametrize("who", [
    {"role": "case_manager", "sub": "cm-1"}, {"role": "auditor", "sub": "court-1"},
    {"role": "participant", "sub": "jo"}, {"role": "analyst", "sub": "an-1"},
    {"role": "service", "sub": "notifier"}])
async def test_only_supervisors_read_the_access_log(
        rig: NotifierRig, token: TokenFactory, who: dict[str, str]) -> None:
    status, body = await _get(rig, "/v1/access-log", token(**who))
    assert status == 403, body
    assert body["type"].endswith("/forbidden")


async def test_reading_the_access_log_is_not_itself_a_read_of_a_case(
        rig: NotifierRig, token: TokenFactory) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    await _log(rig, supervisor)
    assert await _count(rig) == 0
