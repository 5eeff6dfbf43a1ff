"""Outcome analytics: co-creation, goals achieved, small wins per case-month, reviews on time.

Four cases of agency-a written over 70 days by an injected clock (day 0 is 2026-03-02), and one
of agency-b that must not count; the period asked for is days 0-59 (2026-03-02 to 2026-04-30).
Both agencies' policies set ``analytics_min_cell`` to 1, so those tests see every figure and
check the arithmetic; agency-k3 withholds what fewer than 3 participants stand behind, and an
agency without a file withholds below 5 (decision 0011).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.application.analytics import DAYS_PER_MONTH
from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer, wait_until
from tests.records_api import PARTICIPANT, CaseApi, event_count
from tests.test_agency_policy import write_policy

PERIOD = "?from=2026-03-02&to=2026-04-30"


@dataclass
class Scene:
    client: TestClient
    token: TokenFactory
    database_url: str

    async def outcomes(self, query: str = PERIOD, role: str = "analyst",
                       **claims: Any) -> tuple[int, Any]:
        response = await self.client.get(f"/v1/analytics/outcomes{query}",
                                          headers=bearer(self.token(role=role, sub="an-1",
                                                                    **claims)))
        return response.status, await response.json()


async def _status(cm: CaseApi, case_id: str, goal_id: str, status: str,
                  reason: str | None = None) -> None:
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal_id}/status",
                  {"status": status, **({"reason": reason} if reason else {})}, expect=200)


async def _hold_review(cm: CaseApi, case_id: str) -> None:
    review = (await cm.plan(case_id))["next_review"]["review_id"]
    await cm.call("POST", f"/v1/cases/{case_id}/reviews/{review}/held",
                  {"summary": "We talked it through"}, expect=200)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    for agency in ("agency-a", "agency-b"):
        write_policy(tmp_path, agency, {"analytics_min_cell": 1})
    write_policy(tmp_path, "agency-k3", {"analytics_min_cell": 3})
    return tmp_path


@pytest.fixture
async def scene(make_records_client: ClientFactory, fresh_database_url: str,
                token: TokenFactory, policy_dir: Path) -> Scene:
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(policy_dir))
    cm = CaseApi(client, token(sub="cm-1"))
    a, b, c = [await cm.open_case() for _ in range(3)]
    d = await cm.open_case(risk_level="high")
    a_goal = await cm.goal(a)  # the participant's own goal
    a_housing = await cm.goal(a, "Keep the flat", domain="housing", source="agency",
                              in_their_words=None)
    b_goal = await cm.goal(b, "Finish community service", domain="legal", source="court",
                           in_their_words=None)
    await cm.goal(c)
    await cm.goal(d, "Finish the course", domain="education", source="agency",
                  in_their_words=None)
    step = await cm.step(a, a_goal)
    for case_id in (a, b, d):
        await cm.agree(case_id)
    await cm.agree(c, outcome="did_not_agree")
    other = CaseApi(client, token(sub="cm-9", agency="agency-b"))
    elsewhere = await other.open_case(case_manager="cm-9")
    await _status(other, elsewhere, await other.goal(elsewhere), "achieved")

    clock.advance(days=10)
    await cm.call("POST", f"/v1/cases/{a}/steps/{step}/complete", {}, expect=200)
    clock.advance(days=10)  # day 20
    await _status(cm, a, a_goal, "achieved")
    clock.advance(days=10)  # day 30
    await _status(cm, b, b_goal, "achieved")
    clock.advance(days=1)  # day 31: taken back
    await _status(cm, b, b_goal, "active", reason="the hours were not all signed off")
    clock.advance(days=4)  # day 35: B's review was due on day 60
    await _hold_review(cm, b)
    clock.advance(days=5)  # day 40
    await cm.call("POST", f"/v1/cases/{b}/close", {"reason": "Moved to another county"},
                  expect=200)
    clock.advance(days=5)  # day 45: D (high risk) was due on day 30
    await _hold_review(cm, d)
    clock.advance(days=5)  # day 50
    await _hold_review(cm, a)
    clock.advance(days=20)  # day 70: after the period
    late_step = await cm.step(a, a_housing, "Pay the deposit")
    await cm.call("POST", f"/v1/cases/{a}/steps/{late_step}/complete", {}, expect=200)
    return Scene(client, token, fresh_database_url)


async def test_the_period_figures(scene: Scene) -> None:
    status, body = await scene.outcomes()
    assert status == 200, body
    case_months = (60 + 41 + 60 + 60) / DAYS_PER_MONTH  # B closed on day 40: open that day
    assert body == {
        "agency": "agency-a", "from": "2026-03-02", "to": "2026-04-30",
        "min_cell": 1, "withheld": [], "cases_open": 4, "case_months": round(case_months, 2),
        "co_creation": {"agreements": 4, "agreed": 3, "co_created": 1, "rate": 0.3333},
        # B's goal was achieved on day 30 and taken back on day 31: neither its domain nor
        # its 30 days count, only A's 20
        "goals_achieved": {"total": 1, "by_domain": {"employment": 1}, "other_withheld": 0,
                           "reversed": 1, "median_days_to_achievement": 20},
        "small_wins": {"steps_completed": 1, "reversed": 0,
                       "per_case_month": round(1 / case_months, 4)},
        # due in the period: D's, on day 30, held late on day 45 (A's and B's fall due on
        # day 60, after it, and count there, however early they were held)
        "reviews": {"due": 1, "held": 1, "on_time": 0, "not_held": 0, "on_time_rate": 0.0},
    }
    assert PARTICIPANT["name"] not in str(body)


async def test_a_later_period_counts_only_its_own_facts(scene: Scene) -> None:
    status, body = await scene.outcomes("?from=2026-05-01&to=2026-05-31")
    assert status == 200
    assert body["cases_open"] == 3  # A, C and D; B was closed
    assert body["small_wins"]["steps_completed"] == 1
    assert body["goals_achieved"] == {"total": 0, "by_domain": {}, "other_withheld": 0,
                                      "reversed": 0, "median_days_to_achievement": None}
    assert body["co_creation"]["rate"] is None
    # A's and B's fell due on day 60 and were held before; D's next is due on day 75, after
    # today (day 70), and is not counted yet
    assert body["reviews"] == {"due": 2, "held": 2, "on_time": 2, "not_held": 0,
                               "on_time_rate": 1.0}


async def test_without_a_period_the_last_365_days(scene: Scene) -> None:
    status, body = await scene.outcomes("")
    assert status == 200
    assert (body["from"], body["to"]) == ("2025-05-12", "2026-05-11")  # the clock is at day 70
    assert body["small_wins"]["steps_completed"] == 2


async def test_days_not_yet_lived_count_no_case_months(scene: Scene) -> None:
    """The clock is at day 70 (2026-05-11): May to December holds 11 days of A, C and D."""
    status, body = await scene.outcomes("?from=2026-05-01&to=2026-12-31")
    assert status == 200
    assert body["case_months"] == round(3 * 11 / DAYS_PER_MONTH, 2)


async def test_a_case_open_for_part_of_a_day_and_a_small_win_taken_back(scene: Scene) -> None:
    cm = CaseApi(scene.client, scene.token(sub="cm-1"))
    brief = await cm.open_case()  # opened and closed on day 70: it was open that day
    await cm.call("POST", f"/v1/cases/{brief}/close", {"reason": "Referred elsewhere"},
                  expect=200)
    case = await cm.open_case()
    step = await cm.step(case, await cm.goal(case))
    await cm.call("POST", f"/v1/cases/{case}/steps/{step}/complete", {}, expect=200)
    await cm.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                  {"status": "in_progress", "reason": "ticked by mistake"}, expect=200)
    status, body = await scene.outcomes("?from=2026-05-11&to=2026-05-11")
    assert status == 200
    assert body["cases_open"] == 5  # A, C, D, the brief one and the last
    # A's late step stands; the last case's completion was taken back
    assert (body["small_wins"]["steps_completed"], body["small_wins"]["reversed"]) == (1, 1)


async def test_a_rebuild_gives_the_same_figures(scene: Scene) -> None:
    _, before = await scene.outcomes()
    pool = await asyncpg.create_pool(scene.database_url, min_size=1, max_size=2)
    try:
        await rebuild_projections(pool)
    finally:
        await pool.close()
    assert (await scene.outcomes())[1] == before


@pytest.mark.parametrize(("role", "status"), [
    ("analyst", 200), ("supervisor", 200), ("case_manager", 403), ("auditor", 403),
    ("participant", 403), ("service", 403),
])
async def test_who_may_read_outcomes(scene: Scene, role: str, status: int) -> None:
    assert (await scene.outcomes(role=role))[0] == status


async def test_another_agency_sees_only_its_own(scene: Scene) -> None:
    status, body = await scene.outcomes(agency="agency-b")
    assert status == 200
    assert body["goals_achieved"]["by_domain"] == {"employment": 1}
    assert body["cases_open"] == 1


async def test_the_widest_period_allowed(scene: Scene) -> None:
    status, body = await scene.outcomes("?from=1900-01-01&to=9000-12-31")
    assert status == 200
    assert body["small_wins"]["steps_completed"] == 2


async def test_without_a_token_401(scene: Scene) -> None:
    response = await scene.client.get("/v1/analytics/outcomes")
    assert response.status == 401


@pytest.mark.parametrize("query", [
    "?from=someday", "?to=2026-13-01", "?from=2026-05-01&to=2026-04-01", "?since=2026-01-01",
    "?period_from=2026-01-01", "?from=2026-01-01&from=2026-02-01", "?to=9999-12-31",
    "?to=0001-01-05", "?from=0001-01-01", "?from=2026-02-30", "?to=", "?from=%00",
    "?from=0&to=86400", "?to=1772323200", "?from=2026-03-01T00:00:00Z",
])
async def test_bad_periods_are_4xx_problems_and_write_nothing(scene: Scene, query: str) -> None:
    pool = await asyncpg.create_pool(scene.database_url, min_size=1, max_size=1)
    try:
        before = await event_count(pool)
        response = await scene.client.get(f"/v1/analytics/outcomes{query}",
                                          headers=bearer(scene.token(role="analyst")))
        assert response.status in (400, 422), query
        assert response.content_type == "application/problem+json"
        assert await event_count(pool) == before
    finally:
        await pool.close()


async def test_reviews_never_held_count_against_the_rate_and_cancelled_ones_do_not(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory, policy_dir: Path) -> None:
    """Three high-risk plans agreed on day 0, each review due on day 30: one is never held,
    one is rescheduled to day 40 and held on day 38, and one case closes on day 10. Asked on
    day 70 about days 0-59, the missed review is due and not held, the rescheduled one is on
    time, and the closed case's review was cancelled, never missed."""
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(policy_dir))
    cm = CaseApi(client, token(sub="cm-1"))
    missed, moved, closed = [await cm.open_case(risk_level="high") for _ in range(3)]
    for case_id in (missed, moved, closed):
        await cm.goal(case_id)
        await cm.agree(case_id)
    clock.advance(days=10)
    await cm.call("POST", f"/v1/cases/{closed}/close", {"reason": "Moved away"}, expect=200)
    clock.advance(days=15)  # day 25
    review = (await cm.plan(moved))["next_review"]["review_id"]
    await cm.call("POST", f"/v1/cases/{moved}/reviews/{review}/reschedule",
                  {"due_date": "2026-04-11", "reason": "Jo is in hospital that week"},
                  expect=200)
    clock.advance(days=13)  # day 38
    await _hold_review(cm, moved)
    clock.advance(days=32)  # day 70
    response = await client.get(f"/v1/analytics/outcomes{PERIOD}",
                                headers=bearer(token(role="analyst", sub="an-1")))
    assert (await response.json())["reviews"] == {
        "due": 2, "held": 1, "on_time": 1, "not_held": 1, "on_time_rate": 0.5}
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    try:  # the same from the rebuilt facts
        await rebuild_projections(pool)
    finally:
        await pool.close()
    again = await client.get(f"/v1/analytics/outcomes{PERIOD}",
                             headers=bearer(token(role="analyst", sub="an-1")))
    assert (await again.json())["reviews"]["not_held"] == 1


async def test_a_take_back_cancels_the_achievement_it_takes_back(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory, policy_dir: Path) -> None:
    """An achieved goal's domain was revised, then the goal taken back: the take-back was
    subtracted from the new domain (employment 1, housing -1) and, once achieved again, the
    goal counted in its old one; its first days stayed in the median."""
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(policy_dir))
    cm = CaseApi(client, token(sub="cm-1"))
    scene = Scene(client, token, fresh_database_url)
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)  # employment
    clock.advance(days=5)
    await _status(cm, case_id, goal, "achieved")
    clock.advance(days=1)
    await cm.call("PATCH", f"/v1/cases/{case_id}/goals/{goal}", {"domain": "housing"},
                  expect=200)
    clock.advance(days=1)
    await _status(cm, case_id, goal, "active", reason="the job offer fell through")
    march = (await scene.outcomes("?from=2026-03-01&to=2026-03-31"))[1]["goals_achieved"]
    assert march == {"total": 0, "by_domain": {}, "other_withheld": 0, "reversed": 1,
                     "median_days_to_achievement": None}
    clock.advance(days=23)  # day 30
    await _status(cm, case_id, goal, "achieved")
    both = (await scene.outcomes("?from=2026-03-01&to=2026-04-30"))[1]["goals_achieved"]
    assert both == {"total": 1, "by_domain": {"housing": 1}, "other_withheld": 0,
                    "reversed": 1, "median_days_to_achievement": 30}


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def test_reviews_are_counted_in_the_agencys_own_days(
        make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
        tmp_path: Path) -> None:
    """Due dates are the agency's days; the facts and "today" were UTC's. In Honolulu two
    reviews due today were counted as missed while the day still ran; in Auckland a review
    missed on the 1st, its case closed the next local morning (still the 1st in UTC),
    counted for nothing."""
    for agency, zone in (("agency-hnl", "Pacific/Honolulu"), ("agency-akl", "Pacific/Auckland")):
        write_policy(tmp_path, agency, {"timezone": zone, "analytics_min_cell": 1})
    clock = FakeClock(_utc("2026-03-02T09:00:00"))
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(tmp_path))
    scene = Scene(client, token, fresh_database_url)
    hnl = CaseApi(client, token(sub="cm-1", agency="agency-hnl"))
    akl = CaseApi(client, token(sub="cm-1", agency="agency-akl"))
    cases = {}
    for name, api in (("h1", hnl), ("h2", hnl), ("k1", akl)):
        cases[name] = await api.open_case()
        await api.goal(cases[name])
        await api.agree(cases[name])
    assert (await hnl.plan(cases["h1"]))["next_review"]["due_date"] == "2026-04-30"
    assert (await akl.plan(cases["k1"]))["next_review"]["due_date"] == "2026-05-01"

    async def reviews(agency: str, period: str) -> dict[str, Any]:
        status, body = await scene.outcomes(period, agency=agency)
        assert status == 200, body
        return dict(body["reviews"])

    clock.now = _utc("2026-05-01T06:00:00")  # 20:00 on 30 April in Honolulu
    april = "?from=2026-04-01&to=2026-04-30"
    assert (await reviews("agency-hnl", april))["due"] == 0  # both may still be held today
    await _hold_review(hnl, cases["h1"])  # on its day: on time
    await hnl.call("POST", f"/v1/cases/{cases['h2']}/close", {"reason": "Moved away"},
                   expect=200)  # on its due day, not held: the close cancelled it
    assert await reviews("agency-hnl", april) == {
        "due": 1, "held": 1, "on_time": 1, "not_held": 0, "on_time_rate": 1.0}

    clock.now = _utc("2026-05-01T22:00:00")  # 10:00 on 2 May in Auckland: the 1st has passed
    await akl.call("POST", f"/v1/cases/{cases['k1']}/close", {"reason": "Moved away"},
                   expect=200)
    clock.now = _utc("2026-05-05T00:00:00")
    assert await reviews("agency-akl", "?from=2026-04-01&to=2026-05-31") == {
        "due": 1, "held": 0, "on_time": 0, "not_held": 1, "on_time_rate": 0.0}


# ------------------------------------------------------------------ small-cell suppression


@dataclass
class Agency:
    """agency-k3 (k = 3) on a clock of the test's own: its case manager and its analysts."""

    cm: CaseApi
    scene: Scene
    clock: FakeClock

    async def outcomes(self, query: str = PERIOD) -> dict[str, Any]:
        status, body = await self.scene.outcomes(query, agency="agency-k3")
        assert status == 200, body
        return dict(body)


@pytest.fixture
async def k3(make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
             policy_dir: Path) -> Agency:
    clock = FakeClock()
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_POLICY_DIR=str(policy_dir))
    return Agency(CaseApi(client, token(sub="cm-1", agency="agency-k3")),
                  Scene(client, token, fresh_database_url), clock)


EVERY_FIGURE = [
    "cases_open", "case_months", "co_creation.agreements", "co_creation.agreed",
    "co_creation.co_created", "co_creation.rate", "goals_achieved.by_domain",
    "goals_achieved.other_withheld", "goals_achieved.total", "goals_achieved.reversed",
    "goals_achieved.median_days_to_achievement", "small_wins.steps_completed",
    "small_wins.reversed", "small_wins.per_case_month", "reviews.due", "reviews.held",
    "reviews.on_time", "reviews.not_held", "reviews.on_time_rate"]


def _at(body: dict[str, Any], path: str) -> Any:
    section, _, name = path.partition(".")
    return body[section][name] if name else body[section]


@pytest.mark.parametrize("participants", [2, 3])
async def test_every_figure_is_withheld_below_k_participants_and_shown_from_k(
        k3: Agency, participants: int) -> None:
    """Each participant moves every figure by one: a high-risk plan agreed on day 0 with their
    own goal; on day 10 two steps completed and one taken back, the goal achieved and a second
    one achieved and taken back; the review held on its day (30), the next (day 60) not."""
    cm, clock = k3.cm, k3.clock
    cases = []
    for _ in range(participants):
        case_id = await cm.open_case(risk_level="high")
        goal, other = await cm.goal(case_id), await cm.goal(case_id, "Learn to drive")
        steps = [await cm.step(case_id, goal), await cm.step(case_id, goal, "Write a CV")]
        await cm.agree(case_id)
        cases.append((case_id, goal, other, steps))
    clock.advance(days=10)
    for case_id, goal, other, steps in cases:
        for step in steps:
            await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
        await cm.call("POST", f"/v1/cases/{case_id}/steps/{steps[1]}/status",
                      {"status": "in_progress", "reason": "ticked by mistake"}, expect=200)
        await _status(cm, case_id, goal, "achieved")
        await _status(cm, case_id, other, "achieved")
        await _status(cm, case_id, other, "active", reason="the lessons were not finished")
    clock.advance(days=20)
    for case_id, *_ in cases:
        await _hold_review(cm, case_id)
    clock.advance(days=40)  # day 70: asking about days 0-69
    body = await k3.outcomes("?from=2026-03-02&to=2026-05-10")
    if participants < 3:
        assert body["withheld"] == EVERY_FIGURE
        assert all(_at(body, path) is None for path in EVERY_FIGURE if "by_domain" not in path)
        assert body["goals_achieved"]["by_domain"] == {}
        assert "employment" not in json.dumps(body)
        return
    case_months = 3 * 70 / DAYS_PER_MONTH
    assert body == {
        "agency": "agency-k3", "from": "2026-03-02", "to": "2026-05-10", "min_cell": 3,
        "withheld": [], "cases_open": 3, "case_months": round(case_months, 2),
        "co_creation": {"agreements": 3, "agreed": 3, "co_created": 3, "rate": 1.0},
        "goals_achieved": {"total": 3, "by_domain": {"employment": 3}, "other_withheld": 0,
                           "reversed": 3, "median_days_to_achievement": 10},
        "small_wins": {"steps_completed": 3, "reversed": 3,
                       "per_case_month": round(3 / case_months, 4)},
        "reviews": {"due": 6, "held": 3, "on_time": 3, "not_held": 3, "on_time_rate": 0.5},
    }


async def test_an_agency_without_a_minimum_in_its_policy_withholds_below_5(
        scene: Scene) -> None:
    cm = CaseApi(scene.client, scene.token(sub="cm-1", agency="agency-c"))
    for _ in range(4):
        await cm.open_case()
    _, four = await scene.outcomes("", agency="agency-c")
    assert (four["min_cell"], four["cases_open"], four["case_months"]) == (5, None, None)
    # the zeros stand: nothing else happened, and nobody is singled out by a zero
    assert four["withheld"] == ["cases_open", "case_months", "small_wins.per_case_month"]
    assert four["co_creation"] == {"agreements": 0, "agreed": 0, "co_created": 0, "rate": None}
    await cm.open_case()
    _, five = await scene.outcomes("", agency="agency-c")
    assert (five["cases_open"], five["withheld"]) == (5, [])


async def test_a_withheld_domain_is_not_named_and_the_total_does_not_give_it_away(
        k3: Agency) -> None:
    """Employment 3, education 4, housing 1 (k = 3). Housing alone would be the total less the
    listed domains: the smallest listed domain joins it, unnamed, in other_withheld (4)."""
    for domain, participants in (("employment", 3), ("education", 4), ("housing", 1)):
        for _ in range(participants):
            case_id = await k3.cm.open_case()
            await _status(k3.cm, case_id, await k3.cm.goal(case_id, domain=domain), "achieved")
    body = await k3.outcomes()
    assert body["goals_achieved"] == {"total": 8, "by_domain": {"education": 4},
                                      "other_withheld": 4, "reversed": 0,
                                      "median_days_to_achievement": 0}
    assert body["withheld"] == ["goals_achieved.by_domain"]
    assert "housing" not in json.dumps(body)


async def test_take_backs_of_earlier_achievements_show_no_count_below_zero(k3: Agency) -> None:
    """Three goals achieved in March are taken back in April, when four others are achieved:
    April nets housing 4, employment -3, total 1. A count below zero is withheld (shown, it
    would give the total away: 4 - 3); housing stays listed, and with employment withheld
    alone, other_withheld and the total are withheld too."""
    march = []
    for _ in range(3):
        case_id = await k3.cm.open_case()
        goal = await k3.cm.goal(case_id)
        await _status(k3.cm, case_id, goal, "achieved")
        march.append((case_id, goal))
    k3.clock.advance(days=30)  # 1 April
    for case_id, goal in march:
        await _status(k3.cm, case_id, goal, "active", reason="the job offer fell through")
    for _ in range(4):
        case_id = await k3.cm.open_case()
        await _status(k3.cm, case_id, await k3.cm.goal(case_id, domain="housing"), "achieved")
    body = await k3.outcomes("?from=2026-04-01&to=2026-04-30")
    assert body["goals_achieved"] == {"total": None, "by_domain": {"housing": 4},
                                      "other_withheld": None, "reversed": 3,
                                      "median_days_to_achievement": 0}
    assert body["withheld"] == ["goals_achieved.by_domain", "goals_achieved.other_withheld",
                                "goals_achieved.total"]
    assert "employment" not in json.dumps(body)


async def test_many_small_wins_of_one_participant_still_single_them_out(k3: Agency) -> None:
    """Three cases open, one participant completes three steps: three wins, one person."""
    cases = [await k3.cm.open_case() for _ in range(3)]
    goal = await k3.cm.goal(cases[0])
    for description in ("Call the agency", "Write a CV", "Visit the job centre"):
        step = await k3.cm.step(cases[0], goal, description)
        await k3.cm.call("POST", f"/v1/cases/{cases[0]}/steps/{step}/complete", {}, expect=200)
    body = await k3.outcomes()
    assert body["cases_open"] == 3
    assert body["small_wins"] == {"steps_completed": None, "reversed": 0,
                                  "per_case_month": None}
    assert body["withheld"] == ["small_wins.steps_completed", "small_wins.per_case_month"]


async def test_two_counts_shown_together_give_away_no_small_difference(k3: Agency) -> None:
    """Five plans talked through, four agreed with the participant's goal: 5 and 4 side by
    side would tell of the one participant who did not agree. Four reviews due, three held on
    time: 4 and 3 would tell of the one not held. The wider count stays; the narrower ones,
    and the rates built on them, are withheld."""
    cases = []
    for i in range(5):
        case_id = await k3.cm.open_case(risk_level="high")
        await k3.cm.goal(case_id)
        await k3.cm.agree(case_id, outcome="agreed" if i < 4 else "did_not_agree")
        cases.append(case_id)
    k3.clock.advance(days=30)
    for case_id in cases[:3]:
        await _hold_review(k3.cm, case_id)
    k3.clock.advance(days=1)
    body = await k3.outcomes()
    assert body["co_creation"] == {"agreements": 5, "agreed": None, "co_created": None,
                                   "rate": None}
    assert body["reviews"] == {"due": 4, "held": None, "on_time": None, "not_held": None,
                               "on_time_rate": None}
    assert body["withheld"] == [
        "co_creation.agreed", "co_creation.co_created", "co_creation.rate", "reviews.held",
        "reviews.on_time", "reviews.not_held", "reviews.on_time_rate"]


async def test_an_instance_computes_one_outcomes_answer_at_a_time(scene: Scene) -> None:
    """An answer holds a pool connection while the database scans the agency's facts: asked
    by several analysts at once, an instance queues them on one connection instead of taking
    one each from case managers' writes. The second ask waits for the first; both are
    answered."""
    _, alone = await scene.outcomes()
    holder = await asyncpg.connect(scene.database_url)
    watcher = await asyncpg.connect(scene.database_url)  # outside the holder's transaction,
    try:  # whose view of pg_stat_activity would stay as it first read it
        async with holder.transaction():
            await holder.execute("LOCK TABLE records.outcome_facts IN ACCESS EXCLUSIVE MODE")
            first = asyncio.create_task(scene.outcomes())
            await wait_until(watcher, WAITING_ON_FACTS)
            second = asyncio.create_task(scene.outcomes(role="supervisor"))
            for _ in range(20):  # long enough for the second to reach the table, were it let
                await asyncio.sleep(0.05)
                assert await watcher.fetchval(ASKING_FOR_FACTS) == 1
        assert [await first, await second] == [(200, alone), (200, alone)]
    finally:
        await holder.close()
        await watcher.close()


ASKING_FOR_FACTS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE '%FROM records.outcome_facts%' AND pid <> pg_backend_pid()"
                    " AND state = 'active'")
WAITING_ON_FACTS = f"SELECT ({ASKING_FOR_FACTS}) = 1"
