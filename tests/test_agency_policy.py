"""Per-agency practice policy (rules 1 and 6): files read at startup, applied when a case opens."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.cli import main
from services.common.settings import ConfigurationError
from services.records.application.policy import DEFAULT_POLICY, AgencyPolicies
from services.records.domain import AgencyPolicy
from services.records.http.app import create_app
from tests.conftest import JWT_SECRET, ClientFactory, FakeClock, TokenFactory, make_settings
from tests.records_api import CaseApi, event_count


def write_policy(folder: Path, agency: str, body: object) -> Path:
    path = folder / f"{agency}.json"
    path.write_text(json.dumps(body) if not isinstance(body, str) else body)
    return path


# ------------------------------------------------------------------------------------ loading


def test_a_file_overrides_what_it_names_and_keeps_the_defaults_for_the_rest(
        tmp_path: Path) -> None:
    write_policy(tmp_path, "north", {"description": "North county practice",
                                     "max_active_goals": 2,
                                     "review_interval_days": {"high": 14}})
    policies = AgencyPolicies(tmp_path)
    assert policies.for_agency("north") == AgencyPolicy(
        max_active_goals=2, review_days_high=14, review_days_moderate=60, review_days_low=90)
    assert policies.for_agency("south") == DEFAULT_POLICY == AgencyPolicy()
    assert AgencyPolicies(None).for_agency("north") == DEFAULT_POLICY


@pytest.mark.parametrize(("body", "named"), [
    ("{not json", "the file"),
    ({"max_active_goals": "2"}, "max_active_goals"),
    ({"max_active_goals": True}, "max_active_goals"),
    ({"max_active_goals": 0}, "max_active_goals"),
    ({"review_interval_days": {"high": 400}}, "review_interval_days.high"),
    ({"review_interval_days": {"urgent": 7}}, "review_interval_days.urgent"),
    ({"review_interval_days": {"high": 120, "low": 14}}, "at least as often: high 120"),
    ({"review_interval_days": {"moderate": 100}}, "moderate 100, low 90"),
    ({"max_goals": 2}, "max_goals"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": "../etc/passwd"}, "timezone"),
    ({"analytics_min_cell": 0}, "analytics_min_cell: Input should be greater than or equal to 1"),
    ({"analytics_min_cell": 101}, "analytics_min_cell: Input should be less than or equal to 100"),
    ({"analytics_min_cell": "5"}, "analytics_min_cell: Input should be a valid integer"),
    ({"analytics_min_cell": True}, "analytics_min_cell: Input should be a valid integer"),
    ({"analytics_min_cell": 2.5}, "analytics_min_cell: Input should be a valid integer"),
    ([1, 2], "the file"),
])
def test_a_malformed_policy_file_is_refused_naming_the_file_and_the_field(
        tmp_path: Path, body: object, named: str) -> None:
    path = write_policy(tmp_path, "north", body)
    with pytest.raises(ConfigurationError) as refused:
        AgencyPolicies(tmp_path)
    assert str(path) in str(refused.value)
    assert named in str(refused.value)


def test_analytics_withhold_counts_under_5_unless_the_file_says_otherwise(
        tmp_path: Path) -> None:
    """Small-cell suppression (decision 0011): 5 by default; 1 shows every figure exactly."""
    write_policy(tmp_path, "north", {"description": "North county"})
    write_policy(tmp_path, "east", {"analytics_min_cell": 11})
    write_policy(tmp_path, "lab", {"analytics_min_cell": 1})
    write_policy(tmp_path, "wide", {"analytics_min_cell": 100})
    policies = AgencyPolicies(tmp_path)
    assert DEFAULT_POLICY.analytics_min_cell == 5
    assert [policies.for_agency(agency).analytics_min_cell
            for agency in ("north", "south", "east", "lab", "wide")] == [5, 5, 11, 1, 100]
    with pytest.raises(ValueError, match="analytics_min_cell"):
        AgencyPolicy(analytics_min_cell=0)


def test_a_policy_folder_that_is_missing_or_misnamed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"CASETRAIL_POLICY_DIR=.*: not a folder"):
        AgencyPolicies(tmp_path / "missing")
    write_policy(tmp_path, "north county", {"max_active_goals": 2})
    with pytest.raises(ConfigurationError, match=r"north county\.json: name the file"):
        AgencyPolicies(tmp_path)


def test_a_malformed_policy_file_stops_the_app_before_it_starts(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "north", {"max_active_goals": 0})
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        create_app(make_settings("postgresql://unused", CASETRAIL_POLICY_DIR=str(tmp_path)))


def test_casetrail_records_exits_with_a_message_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, "north", {"review_interval_days": {"high": "soon"}})
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused")
    monkeypatch.setenv("CASETRAIL_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("CASETRAIL_POLICY_DIR", str(tmp_path))
    assert main(["records"]) == 2
    error = capsys.readouterr().err
    assert f"casetrail: configuration: {path}: review_interval_days.high" in error


# ------------------------------------------------------------------------------------ over HTTP


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    write_policy(tmp_path, "agency-cap2", {"max_active_goals": 2})
    write_policy(tmp_path, "agency-fast", {"review_interval_days": {"high": 14}})
    write_policy(tmp_path, "agency-nz", {"timezone": "Pacific/Auckland"})
    write_policy(tmp_path, "agency-la", {"timezone": "America/Los_Angeles"})
    return tmp_path


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str,
                 policy_dir: Path, clock: FakeClock) -> TestClient:
    return await make_records_client(fresh_database_url, clock=clock,
                                     CASETRAIL_POLICY_DIR=str(policy_dir))


GOALS = ["Steady work", "A place of my own", "Reconnect with my daughter"]


async def test_an_agency_with_cap_2_refuses_a_third_active_goal_another_accepts_it(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    capped = CaseApi(client, token(agency="agency-cap2"))
    case_id = await capped.open_case()
    for title in GOALS[:2]:
        await capped.goal(case_id, title=title)
    before = await event_count(fresh_pool)
    refused = await capped.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": GOALS[2], "domain": "family", "source": "participant",
        "in_their_words": "I want to see her every week"}, expect=422)
    assert "override_reason" in str(refused)
    assert await event_count(fresh_pool) == before
    assert (await capped.plan(case_id))["max_active_goals"] == 2

    default = CaseApi(client, token(agency="agency-b"))
    other_case = await default.open_case()
    for title in GOALS:
        await default.goal(other_case, title=title)
    assert (await default.plan(other_case))["max_active_goals"] == 3


async def test_an_agency_with_a_14_day_high_risk_interval_schedules_review_after_14_days(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    fast = CaseApi(client, token(agency="agency-fast"))
    case_id = await fast.open_case(risk_level="high")
    await fast.goal(case_id)
    agreed = await fast.agree(case_id)
    scheduled = agreed["events"][1]
    assert scheduled["type"] == "ReviewScheduled"
    assert scheduled["data"]["interval_days"] == 14
    assert scheduled["data"]["due_date"] == (clock.now.date() + timedelta(days=14)).isoformat()

    default = CaseApi(client, token(agency="agency-b"))
    other_case = await default.open_case(risk_level="high")
    await default.goal(other_case)
    assert (await default.agree(other_case))["events"][1]["data"]["interval_days"] == 30


async def test_a_case_keeps_the_policy_it_was_opened_under(
        make_records_client: ClientFactory, fresh_database_url: str, tmp_path: Path,
        token: TokenFactory) -> None:
    before = CaseApi(await make_records_client(fresh_database_url), token(agency="agency-cap2"))
    case_id = await before.open_case()
    write_policy(tmp_path, "agency-cap2", {"max_active_goals": 2})
    after = CaseApi(await make_records_client(fresh_database_url,
                                              CASETRAIL_POLICY_DIR=str(tmp_path)),
                    token(agency="agency-cap2"))
    for title in GOALS:
        await after.goal(case_id, title=title)
    assert (await after.plan(case_id))["max_active_goals"] == 3
    new_case = await after.open_case()
    assert (await after.plan(new_case))["max_active_goals"] == 2


async def test_an_agency_keeps_its_own_calendar(client: TestClient, token: TokenFactory,
                                                clock: FakeClock) -> None:
    """At 12:00 UTC on 2 March it is already 3 March in Auckland: an agency there agrees a
    plan on the 3rd, and may record a review held that day, which is not yet a day in UTC."""
    clock.now = clock.now.replace(hour=12)
    auckland = CaseApi(client, token(agency="agency-nz"))
    case_id = await auckland.open_case()
    await auckland.goal(case_id)
    review = (await auckland.agree(case_id))["events"][1]["data"]
    assert review["due_date"] == "2026-05-02"  # 60 days from 3 March
    clock.advance(days=1)  # 3 March 12:00 UTC: 4 March in Auckland
    held = await auckland.call("POST", f"/v1/cases/{case_id}/reviews/{review['review_id']}/held",
                               {"held_on": "2026-03-04"}, expect=200)
    assert held["events"][1]["data"]["due_date"] == "2026-05-03"
    default = CaseApi(client, token(agency="agency-b"))
    other = await default.open_case()
    await default.goal(other)
    assert (await default.agree(other))["events"][1]["data"]["due_date"] == "2026-05-02"
    # a step due on 3 March is overdue in Auckland (4 March there), not yet in UTC
    for api, expected in ((auckland, 1), (default, 0)):
        case = await api.open_case()
        await api.step(case, await api.goal(case), due_date="2026-03-03")
        listing = await api.call("GET", "/v1/cases", expect=200)
        assert {c["case_id"]: c["overdue_steps"] for c in listing["cases"]}[case] == expected


async def test_a_review_held_the_evening_it_was_scheduled_west_of_utc_is_accepted(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    """Scheduled at 18:00 on 2 March in Los Angeles (3 March in UTC) and held that evening:
    "held before it was scheduled" compared the agency's date with the UTC one."""
    clock.now = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
    west = CaseApi(client, token(agency="agency-la"))
    case_id = await west.open_case()
    await west.goal(case_id)
    review = (await west.agree(case_id))["events"][1]["data"]
    held = await west.call("POST", f"/v1/cases/{case_id}/reviews/{review['review_id']}/held",
                           {}, expect=200)
    assert held["events"][0]["data"]["held_on"] == "2026-03-02"
