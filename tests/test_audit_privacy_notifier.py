"""Privacy audit of the notifier API: an address a person gave in their own preferences reaches
only those who may read those preferences, never through a notification's error or attempts."""

# ruff: noqa: F811
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import (  # noqa: F401
    ClockFailingOnce,
    NotifierRig,
    Records,
    SmtpServer,
    clock,
    make_rig,
    records,
    rig,
    smtp,
)

PRIVATE = "jo.private.inbox@example.net"


async def _get(rig: NotifierRig, path: str, token: str, expect: int = 200) -> Any:
    response = await rig.client.get(path, headers=bearer(token))
    assert response.status == expect, await response.text()
    return await response.json()


async def _participant_notice_refused(rig: NotifierRig, records: Records, smtp: SmtpServer,
                                      token: TokenFactory) -> str:
    """A case of cm-1 whose participant opted in with an address of their own, and a
    milestone for them the mail server refused once, quoting that address as servers do."""
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]), email=PRIVATE)
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    smtp.replies = [f"452 4.2.2 <{PRIVATE}>: mailbox full, try later"]
    await rig.dispatch()
    [row] = await rig.rows(recipient=f"participant:{case}")
    assert row["status"] == "failed"
    assert PRIVATE in str(row["last_error"])  # the database keeps the reply as it came
    return case


async def test_a_case_manager_reads_no_participant_address_in_notification_errors(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await _participant_notice_refused(rig, records, smtp, token)
    manager = token()
    await _get(rig, "/v1/preferences/jo", manager, expect=403)  # not theirs to read
    listing = await _get(rig, f"/v1/notifications?case_id={case}", manager)
    [notice] = [n for n in listing["notifications"] if n["recipient"] == f"participant:{case}"]
    assert notice["last_error"] == "452: 4.2.2 <[address]>: mailbox full, try later"
    one = await _get(rig, f"/v1/notifications/{notice['id']}", manager)
    schedule = await _get(rig, f"/v1/schedule?case_id={case}", manager)
    for answer in (listing, one, schedule):
        assert PRIVATE not in str(answer)
    assert "[address]" in one["attempt_log"][0]["error"]


async def test_no_reader_gets_an_address_back_from_a_notification(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await _participant_notice_refused(rig, records, smtp, token)
    readers = [token(role="supervisor", sub="sup-1"), token(role="service", sub="notifier"),
               token(role="participant", sub="jo", cases=[case])]
    for reader in readers:
        listing = await _get(rig, f"/v1/notifications?case_id={case}", reader)
        assert listing["notifications"]
        assert PRIVATE not in str(listing)


async def test_the_public_readiness_check_never_quotes_a_failed_pages_error(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    faulty = ClockFailingOnce(clock.now)
    faulty.error = ValueError("cannot use 'Jo Rivera, jo.rivera@example.org'")  # as a library may
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, faulty)
    await records.agree(await records.open_case())
    faulty.failures_left = 1
    following = asyncio.create_task(rig.notifier.subscriber.run())
    try:
        async with asyncio.timeout(10):
            while rig.notifier.subscriber.healthy or faulty.failures_left:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        ready = await rig.client.get("/readyz")  # the retry waits at least 0.25 s
        feed = (await ready.json())["checks"]["feed"]
        assert feed == ("last read failed: a feed page could not be applied (ValueError);"
                        " the log has the details")
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
