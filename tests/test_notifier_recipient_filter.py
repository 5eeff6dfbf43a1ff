"""The notifier's listing filter `recipient` is held to the rule for a user id given in a body
(decision 0004), as the records caseload's `case_manager` filter is: no control or formatting
characters, 1-200 characters once surrounding spaces are dropped. Such a filter matched no
recipient, so the listing answered an empty page, and a supervisor took it that nobody had
been sent anything."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records

INVISIBLE = ["cm-1\u202e", "cm\u200b-1", "cm\u2066-1", "cm\ufeff-1", "cm-\u00ad1"]
NOT_A_RECIPIENT = ["", "   ", "c" * 201]


async def listing(rig: NotifierRig, token: str, recipient: str) -> tuple[int, Any]:
    response = await rig.client.get(f"/v1/notifications?recipient={quote(recipient)}",
                                    headers=bearer(token))
    if response.status >= 400:
        assert response.content_type == "application/problem+json"
    return response.status, await response.json()


@pytest.mark.parametrize("value", INVISIBLE + NOT_A_RECIPIENT)
async def test_a_recipient_filter_that_names_no_one_is_refused(
        rig: NotifierRig, records: Records, token: TokenFactory, value: str) -> None:
    await records.agree(await records.open_case())
    await rig.catch_up()
    supervisor = token(role="supervisor", sub="sup-1")
    logged = await read_entries(rig)
    status, body = await listing(rig, supervisor, value)
    assert status == 422, body
    [error] = body["errors"]
    assert error["field"] == "query.recipient"
    assert await read_entries(rig) == logged  # refused before a supervisor's read is logged


async def read_entries(rig: NotifierRig) -> int:
    return int(await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.access_log"))


async def test_surrounding_spaces_are_dropped_from_a_recipient_filter(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    await records.agree(await records.open_case())
    await rig.catch_up()
    supervisor = token(role="supervisor", sub="sup-1")
    logged = await read_entries(rig)
    status, plain = await listing(rig, supervisor, "cm-1")
    assert (status, bool(plain["notifications"])) == (200, True)
    assert await read_entries(rig) > logged  # a listing taken is logged
    assert await listing(rig, supervisor, " cm-1 ") == (200, plain)
    status, everyone = await listing(rig, supervisor, "supervisors")
    assert (status, bool(everyone["notifications"])) == (200, True)  # shared ones still match
