"""A dated notice whose day's digest has already gone takes the usual path, the next day's
digest (0203). The digest run, every minute, claimed it all the same, found that digest
gone, and gave it back: a claim and a release of the row each minute, on every instance,
until it fell due. Real notifier, real PostgreSQL and SMTP, an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.notifier.store.notifications import claim_due
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, text_of


async def row_version(rig: NotifierRig, key: str) -> tuple[str, datetime]:
    """The row's xmin (it changes with every write of the row) and its updated_at."""
    found = await rig.notifier.pool.fetchrow(
        "SELECT xmin::text AS version, updated_at FROM notifier.notifications WHERE key = $1", key
    )
    assert found is not None
    return found["version"], found["updated_at"]


@pytest.mark.parametrize(
    ("tuesdays_digest", "claims"), [("sent", 0), ("held by an instance that stopped", 1)]
)
async def test_a_notice_whose_days_digest_has_gone_is_not_claimed_by_each_digest_run(
    rig: NotifierRig,
    records: Records,
    smtp: SmtpServer,
    token: TokenFactory,
    clock: FakeClock,
    tuesdays_digest: str,
    claims: int,
) -> None:
    """cm-1 reads a digest at 08:00 in Berlin (07:00 UTC). Tuesday's has gone when, at 07:30,
    a goal is given Tuesday as its target date: the notice falls due at 09:00 UTC and goes in
    Wednesday's digest. The digest runs from 07:31 to 08:59 leave it alone; it used to be
    claimed and released by each of them, 89 writes of the row. When Tuesday's digest is
    still held (by an instance that stopped while sending it), the 07:31 run claims the
    notice, cannot add it, gives it back, and sends the digest; the later runs leave it."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="Europe/Berlin")
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Call the landlord"))
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    if tuesdays_digest == "sent":
        assert await rig.notifier.dispatcher.send_digests() == 1  # the win
    else:
        assert (
            len(
                await claim_due(
                    rig.notifier.pool,
                    owner="another-instance",
                    now=clock(),
                    limit=10,
                    lease=timedelta(minutes=2),
                    digests=True,
                )
            )
            == 1
        )
    clock.now = datetime(2026, 3, 3, 7, 30, tzinfo=UTC)
    target = await records.goal(
        case, "Learn to drive", "I want my licence", target_date="2026-03-03"
    )
    await rig.catch_up()
    key = f"goal_target_date:{target}:2026-03-03"
    [notice] = await rig.rows(key=key)
    assert notice["due_at"] == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)

    writes = 0
    version = await row_version(rig, key)
    for minute in range(31, 120):
        clock.now = datetime(2026, 3, 3, 7 + minute // 60, minute % 60, tzinfo=UTC)
        await rig.notifier.dispatcher.send_digests()
        before, version = version, await row_version(rig, key)
        writes += before != version
    assert writes == claims, f"the digest runs claimed and released it {writes} times"
    [message] = smtp.received  # Tuesday's, with the win alone
    assert "Learn to drive" not in text_of(message)

    clock.now = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # due: the usual path
    await rig.dispatch()
    [notice] = await rig.rows(key=key)
    [wednesdays] = await rig.rows(key="daily_digest:agency-a:cm-1:2026-03-04")
    assert notice["digest_id"] == wednesdays["id"]
    clock.now = datetime(2026, 3, 4, 7, 0, tzinfo=UTC)
    assert await rig.notifier.dispatcher.send_digests() == 1
    assert "Learn to drive" in text_of(smtp.received[-1])
    [notice] = await rig.rows(key=key)
    assert notice["status"] == "sent"
