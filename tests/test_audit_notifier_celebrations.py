"""Celebrations celebrate what the record still says: a step completed and then reversed, or a
goal achieved and then taken back, while its mail still waits (the notifier catching up, a
mail server saying "try later", a digest), is not celebrated. Real records service, real
PostgreSQL, real SMTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp.test_utils import TestClient

from services.notifier.schedule import FEED_CHECKPOINT
from services.notifier.store.cases import reset_checkpoint
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of


async def step_status(records: Records, case: str, step: str, status: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                       {"status": status, "reason": "recorded on the wrong step"})


async def goal_status(records: Records, case: str, goal: str, status: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/goals/{goal}/status",
                       {"status": status, "reason": "recorded too early"})


async def a_completed_step(rig: NotifierRig, records: Records,
                           token: TokenFactory) -> tuple[str, str]:
    """A case whose case manager hears of small wins, and a step of it completed."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    step = await records.step(case, await records.goal(case))
    await records.complete(case, step)
    return case, step


async def opted_in_participant(rig: NotifierRig, records: Records,
                               token: TokenFactory) -> tuple[str, str]:
    """A case whose participant asked to hear of milestones, and one goal of it."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]), email=None)
    return case, await records.goal(case, "Find steady work", "A job where I use my hands")


async def test_a_small_win_taken_back_before_it_went_out_is_not_celebrated(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case, step = await a_completed_step(rig, records, token)
    await step_status(records, case, step, "in_progress")
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    [win] = await rig.rows(kind="small_win")
    assert win["status"] == "cancelled"
    assert "ActionStepStatusChanged" in win["last_error"]


async def test_a_small_win_waiting_to_retry_is_withdrawn_when_the_step_is_no_longer_needed(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case, step = await a_completed_step(rig, records, token)
    await rig.catch_up()
    smtp.replies = ["451 try again later"]
    await rig.dispatch()
    clock.advance(minutes=5)
    await step_status(records, case, step, "no_longer_needed")
    await rig.catch_up()
    clock.advance(hours=2)
    await rig.dispatch()
    assert smtp.received == []
    [win] = await rig.rows(kind="small_win")
    assert win["status"] == "cancelled"


async def test_a_step_completed_taken_back_and_completed_again_is_one_small_win(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case, step = await a_completed_step(rig, records, token)
    await step_status(records, case, step, "in_progress")
    await records.complete(case, step, note="Went on Tuesday")
    await rig.catch_up()
    await rig.dispatch()
    [win] = smtp.received
    assert "Went on Tuesday" in text_of(win)


async def test_a_goal_taken_back_before_its_milestone_went_out_congratulates_nobody(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case, goal = await opted_in_participant(rig, records, token)
    await records.achieve(case, goal)
    await goal_status(records, case, goal, "active")
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    rows = await rig.rows(kind="milestone")
    assert [r["status"] for r in rows] == ["cancelled", "cancelled"]
    assert all("GoalStatusChanged" in r["last_error"] for r in rows)


async def test_a_goal_achieved_taken_back_and_achieved_again_is_celebrated_once(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case, goal = await opted_in_participant(rig, records, token)
    await records.achieve(case, goal)
    await goal_status(records, case, goal, "active")
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()
    assert sorted(m["To"] for m in smtp.received) == ["cm-1@example.org", "jo@example.org"]


async def test_an_achievement_recorded_again_after_its_milestone_went_out_is_celebrated_again(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The decision (0201): each achievement that stands when its mail goes out is celebrated;
    the notifier cannot unsend the first, and the second is a new fact in the record."""
    case, goal = await opted_in_participant(rig, records, token)
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    await goal_status(records, case, goal, "active")
    clock.now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()
    assert sorted(m["To"] for m in smtp.received) == ["cm-1@example.org"] * 2 + \
        ["jo@example.org"] * 2
    assert [r["status"] for r in await rig.rows(kind="milestone")] == ["sent"] * 4


async def test_replaying_a_story_of_reversals_from_zero_sends_nothing_again(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Completed (sent), taken back, completed again (sent), a goal achieved and taken back
    before its mail went: replayed over the schema and into a new one, the same keys and due
    times, and no second email."""
    case, goal = await opted_in_participant(rig, records, token)
    step = await records.step(case, goal)
    await records.complete(case, step)
    await rig.catch_up()
    await rig.dispatch()
    clock.advance(hours=1)
    await step_status(records, case, step, "in_progress")
    await records.complete(case, step, note="Done properly this time")
    await records.achieve(case, goal)
    await goal_status(records, case, goal, "active")
    await rig.catch_up()
    await rig.dispatch()
    assert len(smtp.received) == 2  # the two small wins; the milestone was taken back first
    schedule = {(r["key"], r["due_at"], r["status"]) for r in await rig.rows()}
    await reset_checkpoint(rig.notifier.pool, FEED_CHECKPOINT, clock())
    await rig.catch_up()
    await rig.dispatch()
    assert {(r["key"], r["due_at"], r["status"]) for r in await rig.rows()} == schedule
    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.advance(hours=1)
    rebuilt = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await rebuilt.set_prefs("cm-1", token())
    await rebuilt.catch_up()
    await rebuilt.dispatch()
    assert {(r["key"], r["due_at"]) for r in await rebuilt.rows()} == \
        {(key, due) for key, due, _ in schedule}
    assert len(smtp.received) == 2


async def test_a_sent_small_win_links_to_the_plan_when_a_plan_url_is_set(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    linked = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                            NOTIFIER_PLAN_URL="https://casetrail.example.org/plans/{case_id}")
    await linked.set_prefs("cm-1", token())
    case = await records.open_case()
    await records.complete(case, await records.step(case, await records.goal(case)))
    await linked.catch_up()
    await linked.dispatch()
    [message] = smtp.received
    assert f"https://casetrail.example.org/plans/{case}" in text_of(message)


async def revise(records: Records, case: str, what: str, changes: dict[str, str]) -> None:
    await records.call("PATCH", f"/v1/cases/{case}/{what}",
                       {**changes, "reason": "worded as Jo said it"})


async def test_a_celebration_still_waiting_names_the_step_and_goal_as_they_now_read(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A small win and a milestone waiting in the case manager's next digest, and the
    participant's own milestone held back by their quiet hours: the step and the goal were
    reworded meanwhile, and each message quotes them as the plan now reads."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]),
                        quiet_hours={"start": "08:00", "end": "12:00"})
    goal = await records.goal(case, "Find work", "A job")
    step = await records.step(case, goal, "Call about work")
    await records.complete(case, step)
    await records.achieve(case, goal)
    await rig.catch_up()
    await rig.dispatch()  # 09:00: into Tuesday's digest; Jo's quiet hours end at 12:00
    clock.now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    await revise(records, case, f"steps/{step}", {"description": "Call the bakery on Main St"})
    await revise(records, case, f"goals/{goal}", {"title": "Work at the bakery",
                                                  "in_their_words": "Baking bread again"})
    await rig.catch_up()
    clock.now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    assert sorted(m["To"] for m in smtp.received) == ["cm-1@example.org", "jo@example.org"]
    sent = "\n".join(str(m["Subject"]) + text_of(m) for m in smtp.received)
    for now_reads in ("Call the bakery on Main St", "Work at the bakery", "Baking bread again"):
        assert now_reads in sent
    for read_before in ("Call about work", "Find work", '"A job"'):
        assert read_before not in sent


async def test_replaying_a_story_of_rewordings_from_zero_rebuilds_the_same_celebrations(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A step and a goal reworded after their small win and milestone were scheduled (on a
    later feed page): replayed over the schema and into an empty one (in one page), the same
    rows, words included, and nothing is sent twice."""
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    goal = await records.goal(case, "Find work", "A job")
    step = await records.step(case, goal, "Call about work")
    await records.complete(case, step)
    await records.achieve(case, goal)
    await rig.catch_up()
    await revise(records, case, f"steps/{step}", {"description": "Call the bakery on Main St"})
    await revise(records, case, f"goals/{goal}", {"title": "Work at the bakery"})
    await rig.catch_up()
    built = await rig.snapshot()
    assert sum("Call the bakery on Main St" in str(row) for row in built) == 1
    await reset_checkpoint(rig.notifier.pool, FEED_CHECKPOINT, clock())
    await rig.catch_up()
    assert await rig.snapshot() == built
    await rig.dispatch()
    assert len(smtp.received) == 2  # the small win and the milestone; Jo did not opt in
    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.advance(hours=1)
    rebuilt = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    await rebuilt.set_prefs("cm-1", token())
    await rebuilt.catch_up()
    assert await rebuilt.snapshot() == built
    await rebuilt.dispatch()
    assert len(smtp.received) == 2
