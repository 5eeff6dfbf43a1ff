"""A group's notice handed on to its members is stored ``handed_on`` (notifier migration 0009).

It was stored ``sent`` and shown ``handed_on`` by two readers that each worked it out (the
row's JSON and the listing's SQL); every other reader took it for a mail that went out.
"""

from __future__ import annotations

from typing import Any

from services.notifier.http.app import MIGRATIONS
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer

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
        await conn.execute(  # the schema and rows as the earlier code left them
            "ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;"
            " UPDATE notifier.notifications SET status = 'sent' WHERE status = 'handed_on';"
            " ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check "
            + OLD_STATUS_CHECK)
        await conn.execute((MIGRATIONS / "0009_handed_on_status.sql").read_text())
    after = {r["id"]: r for r in await rig.rows(kind="review_overdue")}
    assert after == before
    assert sorted(r["status"] for r in after.values()) == ["handed_on", "sent", "sent", "sent"]
