"""A group's notice handed on to its members is stored ``handed_on`` (notifier migration 0009).

It was stored ``sent`` and shown ``handed_on`` by two readers that each worked it out (the
row's JSON and the listing's SQL); every other reader took it for a mail that went out.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.notifier.http.app import MIGRATIONS
from services.notifier.store import notifications as store
from services.notifier.store.notifications import Row
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of
from tests.pg_waits import until_nothing_held_back

Client = Callable[..., Awaitable[TestClient]]

OLD_STATUS_CHECK = "CHECK (status IN ('scheduled', 'sent', 'failed', 'dead', 'cancelled'))"


async def _overdue_handed_on(rig: NotifierRig, records: Records, token: TokenFactory,
                             clock: FakeClock) -> None:
    """A review not held: its overdue notice goes to the case manager and, handed on, to
    the agency's two supervisors."""
    await rig.set_prefs("cm-1", token())
    boss = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("sup-1", boss)
    await rig.set_prefs("sup-2", boss, role="supervisor")
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    clock.advance(days=62)  # two days past the review's due date: the overdue moment
    for _ in range(3):
        await rig.dispatch()


async def _listed(rig: NotifierRig, token: TokenFactory, status: str) -> list[dict[str, Any]]:
    response = await rig.client.get(
        f"/v1/notifications?kind=review_overdue&status={status}",
        headers=bearer(token(role="supervisor", sub="sup-1")))
    assert response.status == 200, await response.text()
    items: list[dict[str, Any]] = (await response.json())["notifications"]
    return items


async def test_a_group_notice_handed_on_is_stored_handed_on_and_listed_so(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    await _overdue_handed_on(rig, records, token, clock)
    [group] = await rig.rows(kind="review_overdue", recipient="supervisors")
    assert (group["status"], group["sent_at"]) == ("handed_on", None)
    assert group["last_error"] == "handed on to sup-1, sup-2"

    [handed_on] = await _listed(rig, token, "handed_on")
    assert (handed_on["recipient"], handed_on["sent_at"]) == ("supervisors", None)
    sent = await _listed(rig, token, "sent")
    assert sorted(n["recipient"] for n in sent) == ["cm-1", "sup-1", "sup-2"]
    assert all(n["sent_at"] is not None for n in sent)
    mailed = sorted(str(m["To"]) for m in smtp.received if "not yet recorded" in str(m["Subject"]))
    assert mailed == ["cm-1@example.org", "sup-1@example.org", "sup-2@example.org"]


async def test_migration_0009_stores_handed_on_what_the_earlier_code_stored_sent(
        rig: NotifierRig, records: Records, token: TokenFactory, clock: FakeClock) -> None:
    await _overdue_handed_on(rig, records, token, clock)
    before = {r["id"]: r for r in await rig.rows(kind="review_overdue")}
    async with rig.notifier.pool.acquire() as conn, conn.transaction():
        await conn.execute(  # the schema and rows as the earlier code left them (before the
            # twenty-first session, with the moment it was handed on as its sent_at)
            "ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;"
            " UPDATE notifier.notifications SET status = 'sent', sent_at = updated_at"
            " WHERE status = 'handed_on';"
            " ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check "
            + OLD_STATUS_CHECK)
        await conn.execute((MIGRATIONS / "0009_handed_on_status.sql").read_text())
    after = {r["id"]: r for r in await rig.rows(kind="review_overdue")}
    assert after == before
    assert sorted(r["status"] for r in after.values()) == ["handed_on", "sent", "sent", "sent"]


async def test_a_days_digest_after_the_schema_is_rebuilt_has_its_own_message_id(
        aiohttp_client: Client, fresh_database_url: str, rig: NotifierRig, records: Records,
        smtp: SmtpServer, token: TokenFactory, clock: FakeClock) -> None:
    """Tuesday's digest goes at 08:00 UTC. The schema is lost at 08:30 and rebuilt, and the
    reader moves to New York, where it is still Tuesday before the digest time: a small win
    then goes in a Tuesday digest again, another message, which carried the first one's
    Message-ID (derived from the day's key alone), so mail clients dropped it as a copy."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    first = await records.step(case, goal, "Step 1")
    second = await records.step(case, goal, "Step 2")
    await records.complete(case, first)  # Monday 09:00: in Tuesday's digest
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [tuesday] = smtp.received

    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.now = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)
    again = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await again.set_prefs("cm-1", token(), delivery="daily_digest",
                          timezone="America/New_York")
    await records.complete(case, second)
    await again.catch_up()
    await again.dispatch()
    clock.now = datetime(2026, 3, 3, 13, 0, tzinfo=UTC)  # 08:00 in New York
    await again.notifier.dispatcher.send_digests()
    [_, new_york] = smtp.received
    assert "Step 2" in text_of(new_york)
    assert "Step 1" not in text_of(new_york)
    assert new_york["Message-ID"] != tuesday["Message-ID"]


async def test_a_supervisors_retry_is_logged_as_a_read_of_the_notification(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """The answer shows the notification, or, refused, its status ("only dead notifications
    are retried; this one is scheduled"): a read of the case, as its GET is logged."""
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    [waiting, *_] = await rig.rows(case_id=uuid.UUID(case))
    supervisor = token(role="supervisor", sub="sup-1")
    response = await rig.client.post(f"/v1/notifications/{waiting['id']}/retry",
                                     headers=bearer(supervisor))
    assert response.status == 409, await response.text()
    await until_nothing_held_back(rig.notifier.pool, "notifier.access_log")
    log = await rig.client.get("/v1/access-log", headers=bearer(supervisor))
    assert [(e["actor_sub"], e["case_id"], e["action"], e["what"])
            for e in (await log.json())["entries"]] == [
        ("sup-1", case, "read", f"notification {waiting['id']} retry")]


async def test_a_notice_found_without_an_address_as_a_save_gives_one_is_sent(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """cm-1 has no preferences yet; cm-2 has. A small win for each is claimed in one batch:
    cm-1's is decided dead (no address), and while cm-2's waits on a slow mail server, cm-1
    saves an address. The save looks for dead letters it mends before cm-1's is recorded
    dead, so it stayed dead until cm-1 saved again."""
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    for manager in ("cm-1", "cm-2"):
        as_them = Records(records.client, token(sub=manager))
        case = await as_them.open_case(case_manager=manager)
        await as_them.complete(case, await as_them.step(case, await as_them.goal(case)))
    await rig.catch_up()
    smtp.delay = 1.0
    dispatching = asyncio.create_task(rig.dispatch())
    for _ in range(500):  # cm-1's was decided with cm-2's: the directory has been read
        if smtp.sessions:
            break
        await asyncio.sleep(0.01)
    await rig.set_prefs("cm-1", token())
    await dispatching
    await rig.dispatch()
    [small_win] = await rig.rows(kind="small_win", recipient="cm-1")
    assert (small_win["status"], small_win["last_error"]) == ("sent", None)
    assert sorted(str(m["To"]) for m in smtp.received) == ["cm-1@example.org",
                                                           "cm-2@example.org"]


@pytest.mark.parametrize(("column", "stored"), [
    pytest.param("timezone", "Mars/Olympus_Mons", id="a-zone-stored-before-zones-were-checked"),
    pytest.param("email", "jo,smith@example.com",
                 id="an-address-stored-before-addresses-were-checked")])
async def test_a_dead_letter_its_entry_still_cannot_mend_dies_once(
        rig: NotifierRig, records: Records, token: TokenFactory, column: str,
        stored: str) -> None:
    """The second look at a dead letter (above) mended it under an entry that had not
    changed: claimed again at once, it died again, hundreds of times within one dispatch,
    which did not return (a review of this session's change)."""
    await rig.set_prefs("cm-1", token())
    await rig.notifier.pool.execute(f"UPDATE notifier.directory SET {column} = $1", stored)
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await rig.catch_up()
    async with asyncio.timeout(20):
        await rig.dispatch()
    [small_win] = await rig.rows(kind="small_win")
    assert (small_win["status"], small_win["attempts"]) == ("dead", 0)
    samples = (await (await rig.client.get("/metrics")).text()).splitlines()
    assert 'casetrail_notifications_dead_total{kind="small_win"} 1.0' in samples


# --- a notice the feed settles while a dispatcher holds it (a review of this session) -------
# The dispatcher's claim and its handling of the batch are run one after the other, as
# dispatch_due runs them, with the feed's page applied in between.


async def _overdue_claimed(rig: NotifierRig, records: Records, token: TokenFactory,
                           clock: FakeClock, *, supervisors: bool = True,
                           ) -> tuple[str, str, list[Row]]:
    if supervisors:
        await rig.set_prefs("cm-1", token())
        boss = token(role="supervisor", sub="sup-1")
        await rig.set_prefs("sup-1", boss)
        await rig.set_prefs("sup-2", boss, role="supervisor")
    case = await records.open_case()
    review = await records.agree(case)
    await rig.catch_up()
    clock.advance(days=62)  # two days past the review's due date: the overdue moment
    rows = await store.claim_due(rig.notifier.pool, owner="a", now=clock(), limit=100,
                                 lease=timedelta(minutes=5), digests=False)
    assert {r.recipient_role for r in rows if r.kind == "review_overdue"} == {
        "case_manager", "supervisors"}
    return case, review, rows


@pytest.mark.parametrize("settled_by", ["the case closed", "the review held"])
async def test_a_group_notice_the_feed_cancelled_while_claimed_is_not_handed_on(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock, settled_by: str) -> None:
    """The hand-on checked only the claim, so it wrote `handed_on` over `cancelled` and each
    supervisor was told of a review not held, of a closed case, or one held."""
    case, review, rows = await _overdue_claimed(rig, records, token, clock)
    await (records.close(case) if settled_by == "the case closed"
           else records.hold_review(case, review))
    await rig.catch_up()
    await rig.notifier.dispatcher._handle_batch(rows, digests=False)
    for _ in range(3):
        await rig.dispatch()
    [group] = [r for r in await rig.rows(kind="review_overdue", recipient="supervisors")
               if review in r["key"]]
    assert group["status"] == "cancelled"
    assert [m["To"] for m in smtp.received if "not yet recorded" in str(m["Subject"])] == []


async def test_a_notice_the_feed_cancelled_while_claimed_keeps_that_fate(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """cm-1 has no preferences: the overdue notice dies for want of an address, decided after
    the review was held. Recorded dead over `cancelled`, it was then mended by cm-1's first
    save, and cm-1 was told a review they had held was not recorded."""
    case, review, rows = await _overdue_claimed(rig, records, token, clock, supervisors=False)
    [mine] = [r for r in rows if r.kind == "review_overdue" and r.recipient == "cm-1"]
    await records.hold_review(case, review)
    await rig.catch_up()
    await rig.notifier.dispatcher._handle_batch(rows, digests=False)
    [row] = await rig.rows(id=mine.id)
    assert (row["status"], row["claim_token"]) == ("cancelled", None)
    await rig.set_prefs("cm-1", token())
    for _ in range(3):
        await rig.dispatch()
    [row] = await rig.rows(id=mine.id)
    assert row["status"] == "cancelled"
    assert [m["To"] for m in smtp.received if "not yet recorded" in str(m["Subject"])] == []


async def test_a_notice_a_digest_cannot_render_dies_alone_and_the_digest_goes(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """One notice whose stored context cannot be rendered failed the whole digest at each
    try until it died, and its other notices were left waiting in the dead digest for good
    (nothing claims a notice in a digest)."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    for name in ("Good win", "Bad win"):
        await records.complete(case, await records.step(case, goal, name))
    await rig.catch_up()
    await rig.dispatch()
    await rig.notifier.pool.execute(
        "UPDATE notifier.notifications SET context = context || '{\"due_date\": \"garbage\"}'"
        " WHERE kind = 'small_win' AND context->>'description' = 'Bad win'")
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [digest] = await rig.rows(kind="daily_digest")
    assert digest["status"] == "sent"
    [mail] = smtp.received
    assert "Good win" in text_of(mail)
    assert "Bad win" not in text_of(mail)
    wins = {json.loads(r["context"])["description"]: r for r in await rig.rows(kind="small_win")}
    assert wins["Good win"]["status"] == "sent"
    assert wins["Bad win"]["status"] == "dead"
    assert str(wins["Bad win"]["last_error"]).startswith("could not render the message")
    samples = (await (await rig.client.get("/metrics")).text()).splitlines()
    assert 'casetrail_notifications_dead_total{kind="small_win"} 1.0' in samples  # not silent


async def _goal_target_row(rig: NotifierRig) -> dict[str, Any]:
    [row] = await rig.rows(kind="goal_target_date", recipient="cm-1")
    return row


async def test_a_notice_brought_back_after_a_failed_try_gets_a_retry_budget_of_its_own(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A goal's target-date notice fails once (451), its case is closed, and reopened three
    days later: brought back, it kept its first try's time, so its next 451 was past the
    retry horizon and it was given up at once ("gave up after 2 attempt(s))."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.goal(case, target_date="2026-03-06")
    await rig.catch_up()
    clock.now = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)
    smtp.replies = ["451 4.7.1 try again later"]
    await rig.dispatch()
    assert ((row := await _goal_target_row(rig))["status"], row["attempts"]) == ("failed", 1)
    await records.close(case)
    await rig.catch_up()
    clock.advance(days=3)
    await records.reopen(case)
    await rig.catch_up()
    assert (await _goal_target_row(rig))["status"] == "scheduled"
    smtp.replies = ["451 4.7.1 try again later"]
    await rig.dispatch()
    row = await _goal_target_row(rig)
    assert (row["status"], row["attempts"]) == ("failed", 2), row["last_error"]
    clock.advance(hours=1)
    await rig.dispatch()
    assert (await _goal_target_row(rig))["status"] == "sent"


async def test_only_a_notice_brought_back_is_recalled_and_from_the_event_that_did_it(
        rig: NotifierRig, records: Records) -> None:
    """`recalled_at` is when a notice its case had cancelled was called for again: a nudge
    re-worded (its step revised) is not recalled; closed and reopened, it is, at the
    reopening's recorded time (it counts how late is too late: 0201)."""
    case = await records.open_case()
    step = await records.step(case, await records.goal(case), due_date="2026-03-20")
    await rig.catch_up()
    await records.call("PATCH", f"/v1/cases/{case}/steps/{step}",
                       {"description": "Visit the job centre on Tuesday"})
    await rig.catch_up()
    [nudge] = await rig.rows(kind="step_nudge")
    assert "Tuesday" in nudge["context"]
    assert nudge["recalled_at"] is None
    await records.close(case)
    reopened = await records.call("POST", f"/v1/cases/{case}/reopen",
                                  {"reason": "asked for help"})
    await rig.catch_up()
    [nudge] = await rig.rows(kind="step_nudge")
    assert nudge["status"] == "scheduled"
    assert nudge["recalled_at"] == datetime.fromisoformat(
        reopened["events"][0]["recorded_at"])


async def test_a_digest_a_dated_notice_opens_names_the_schemas_start_in_its_message_id(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The digest a dated notice joins at digest time (that morning's, before the notice's
    own send time) is made there, not where celebrations join one: its Message-ID too."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    await records.step(case, await records.goal(case), due_date="2026-03-03")
    await rig.catch_up()
    clock.now = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)  # the nudge is due at 09:00
    await rig.notifier.dispatcher.send_digests()
    [digest] = await rig.rows(kind="daily_digest")
    began = await rig.notifier.pool.fetchval("SELECT began_at FROM notifier.history")
    assert digest["message_id"] == store.digest_message_id(digest["id"], began,
                                                           "casetrail.local")
    assert digest["message_id"] != store.message_id(digest["id"], "casetrail.local")
    [mail] = smtp.received
    assert "Visit the job centre" in text_of(mail)


async def test_a_save_of_preferences_takes_its_turn_with_the_second_look_at_dead_letters(
        rig: NotifierRig, token: TokenFactory) -> None:
    """Both take the agency's mending lock first (``_take_turns_mending``): held here as the
    second look would hold it, a save waits for it, then goes ahead."""
    async with rig.notifier.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           "casetrail-mend:agency-a")
        saving = asyncio.create_task(rig.set_prefs("cm-1", token()))
        for _ in range(500):
            if await conn.fetchval(  # this test's database only: others share the server
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the save did not wait for the mending lock")
        assert not saving.done()
    await asyncio.wait_for(saving, 10)
    assert [r["user_id"] for r in await rig.notifier.pool.fetch(
        "SELECT user_id FROM notifier.directory")] == ["cm-1"]
