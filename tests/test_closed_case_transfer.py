"""A closed case is not transferred (decision 0101, other refusals): the refusal keeps its code
and status (409 ``case_closed``) and says what it refuses, a transfer, not a change to the
plan, and the way on: reopen the case, with a reason, first."""

from __future__ import annotations

from datetime import UTC, date, datetime
from uuid import uuid4

import asyncpg
import pytest

from schemas import api
from services.records import domain as d
from tests.conftest import TokenFactory
from tests.records_api import CaseApi, event_count

pytestmark = pytest.mark.usefixtures("fresh_database_url")

CTX = d.DecisionContext(today=date(2026, 3, 2), actor=d.Actor("cm-1", "case_manager"))
TRANSFER_WORDS = "This case is closed: reopen it (with a reason) before transferring it"


def closed_case() -> d.InMemoryCase:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Jo"}, "case_manager": "cm-1", "risk_level": "low"})))
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    return case


def test_transferring_a_closed_case_says_so_and_records_nothing() -> None:
    case = closed_case()
    version, state = case.version, case.state
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.TransferCase(api.TransferInput(case_manager="cm-2",
                                                      reason="Caseload balance")))
    assert (refused.value.code, refused.value.status) == ("case_closed", 409)
    assert TRANSFER_WORDS in refused.value.detail
    assert "plan" not in refused.value.detail
    assert (case.version, case.state) == (version, state)


def test_other_writes_on_a_closed_case_keep_their_words() -> None:
    case = closed_case()
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.AddNote(uuid4(), api.NoteInput(text="Called")))
    assert refused.value.code == "case_closed"
    assert "before changing the plan" in refused.value.detail
    assert "transferring" not in refused.value.detail


async def test_a_transfer_of_a_closed_case_over_http_is_the_same_409_in_its_own_words(
        cm: CaseApi, fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    case_id = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Plan completed"},
                  expect=200)
    before = await event_count(fresh_pool)
    supervisor = token(role="supervisor", sub="sup-1")
    for caller in (cm.token, supervisor):
        refused = await cm.call("POST", f"/v1/cases/{case_id}/transfer",
                                {"case_manager": "cm-2", "reason": "Caseload balance"},
                                expect=409, token=caller)
        assert refused["type"].endswith("/case-closed")
        assert refused["status"] == 409
        assert TRANSFER_WORDS in refused["detail"]
    assert await event_count(fresh_pool) == before
    plan = await cm.plan(case_id)
    assert (plan["status"], plan["case_manager"]) == ("closed", "cm-1")


def test_closing_a_closed_case_says_it_is_closed_already() -> None:
    """It said "reopen it before changing the plan", as if closing were a change to the plan
    and reopening the way to close it."""
    case = closed_case()
    version = case.version
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.CloseCase(api.CloseInput(reason="Closed twice by mistake")))
    assert (refused.value.code, refused.value.status) == ("case_closed", 409)
    assert refused.value.detail == "This case is closed already; nothing was changed."
    assert case.version == version


async def test_a_supervisor_reopens_a_closed_case_whose_case_manager_has_left(
        cm: CaseApi, fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """The way on the refusal names has to be open to someone when the case manager has gone:
    only they could reopen (a supervisor got 403), so a participant who came back found their
    plan locked for good. A supervisor reopens, with a reason, as they transfer: either says
    who holds the case, not what the plan says. A colleague still cannot."""
    case_id = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved to another city"},
                  expect=200)
    colleague = token(sub="cm-2")
    before = await event_count(fresh_pool)
    refused = await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "Came back"},
                            expect=403, token=colleague)
    assert "a supervisor can transfer it to you" in refused["detail"]
    assert await event_count(fresh_pool) == before

    supervisor = token(role="supervisor", sub="sup-1")
    await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "Came back to the program"},
                  expect=200, token=supervisor)
    await cm.call("POST", f"/v1/cases/{case_id}/transfer",
                  {"case_manager": "cm-2", "reason": "cm-1 has left the agency"},
                  expect=200, token=supervisor)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Welcome back, Jo"},
                  expect=201, token=colleague)
    plan = await cm.call("GET", f"/v1/cases/{case_id}", expect=200, token=colleague)
    assert (plan["status"], plan["case_manager"]) == ("open", "cm-2")
    history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200,
                            token=supervisor)
    reopened = next(e for e in history["events"] if e["type"] == "CaseReopened")
    assert (reopened["actor"], reopened["role"], reopened["reason"]) \
        == ("sup-1", "supervisor", "Came back to the program")
