"""`GET /v1/cases` checked against a model kept by the test (an audit, twenty-first session).

Seeded random operations through the HTTP API, over three case managers of one agency and a
second agency (whose case managers share a user id with the first's): cases opened at each risk
level, plans agreed (a review scheduled), reviews held and moved, steps added with due dates
behind and ahead of the agency's today, completed and set aside, goals paused, cases
transferred, closed and reopened, the clock moving by hours so that the agencies' calendars
(Pacific/Kiritimati, UTC+14, and America/Los_Angeles) part from UTC's. After every few
operations every filter the docs offer is listed in pages of one to three, in both orders, as
each role, and each page is compared with the page the model predicts (keyset pages, README
and decision 0101): exactly the right cases, each once, in order, with the right next review,
overdue flag and count of overdue steps ("open steps of active goals" past their due date, by
the agency's today: decisions 0101 and 0102).

Then pages are read while cases change between them (what decision 0101 promises of each
order), and cursors are tampered with: each answer a clear 4xx or, for a well-formed cursor of
another filter, case manager or agency, exactly the listing's own cases after it, never another
agency's.

Every write carries an Idempotency-Key derived from the seed, so the ids the service makes
(UUIDv5 of the key) and hence every page repeat from run to run.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer

AGENCY_A, AGENCY_B = "agency-s21-north", "agency-s21-south"
TIMEZONE = {AGENCY_A: "Pacific/Kiritimati", AGENCY_B: "America/Los_Angeles"}
INTERVALS = {
    AGENCY_A: {"high": 30, "moderate": 60, "low": 90},
    AGENCY_B: {"high": 14, "moderate": 21, "low": 45},
}
MANAGERS = {AGENCY_A: ["cm-1", "cm-2", "cm-3"], AGENCY_B: ["cm-1", "cm-9"]}
SUPERVISOR = {AGENCY_A: "sup-north", AGENCY_B: "sup-south"}
RISKS = ("low", "moderate", "high")
OPEN_STEP = {"not_started", "in_progress"}
FIELDS = (
    "case_id",
    "version",
    "status",
    "case_manager",
    "risk_level",
    "participant_name",
    "next_review_due",
    "review_overdue",
    "overdue_steps",
    "active_goals",
)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    goal_id: str
    due: date | None
    status: str = "not_started"


@dataclass
class Case:
    case_id: str
    agency: str
    case_manager: str
    risk: str
    name: str
    version: int
    status: str = "open"
    goals: dict[str, str] = field(default_factory=dict)  # goal id -> status
    steps: dict[str, Step] = field(default_factory=dict)
    review_id: str | None = None
    review_due: date | None = None
    review_scheduled_on: date | None = None  # the agency's day the review was scheduled

    def active_goals(self) -> int:
        return sum(1 for status in self.goals.values() if status == "active")

    def overdue_steps(self, today: date) -> int:
        if self.status == "closed":
            return 0
        return sum(
            1
            for step in self.steps.values()
            if step.status in OPEN_STEP
            and step.due is not None
            and step.due < today
            and self.goals[step.goal_id] == "active"
        )

    def row(self, today: date) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "version": self.version,
            "status": self.status,
            "case_manager": self.case_manager,
            "risk_level": self.risk,
            "participant_name": self.name,
            "next_review_due": self.review_due.isoformat() if self.review_due else None,
            "review_overdue": self.review_due is not None and self.review_due < today,
            "overdue_steps": self.overdue_steps(today),
            "active_goals": self.active_goals(),
        }


@dataclass(frozen=True)
class Filters:
    case_manager: str | None = None
    status: str | None = None
    review_due_before: date | None = None
    order: str = "case_id"

    def query(self, limit: int, after: str | None = None) -> str:
        params: dict[str, str] = {}
        if self.case_manager is not None:
            params["case_manager"] = self.case_manager
        if self.status is not None:
            params["status"] = self.status
        if self.review_due_before is not None:
            params["review_due_before"] = self.review_due_before.isoformat()
        if self.order != "case_id":
            params["order"] = self.order
        params["limit"] = str(limit)
        if after is not None:
            params["after"] = after
        return urlencode(params)


def review_key(due: date | None) -> tuple[int, date]:
    """No review sorts after every date, as 'infinity' does in the listing's key."""
    return (1, date.min) if due is None else (0, due)


def sort_key(case: Case, order: str) -> tuple[Any, ...]:
    if order == "case_id":
        return (case.case_id,)
    return (review_key(case.review_due), case.case_id)


def cursor_key(cursor: str, order: str) -> tuple[Any, ...]:
    if order == "case_id":
        return (cursor,)
    due, case_id = cursor.split("~")
    return (review_key(None if due == "-" else date.fromisoformat(due)), case_id)


def encode_cursor(case: Case, order: str) -> str:
    if order == "case_id":
        return case.case_id
    return f"{case.review_due.isoformat() if case.review_due else '-'}~{case.case_id}"


class Model:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cases: dict[str, Case] = {}

    def today(self, agency: str) -> date:
        return self.clock.now.astimezone(ZoneInfo(TIMEZONE[agency])).date()

    def of(self, agency: str) -> list[Case]:
        return [c for c in self.cases.values() if c.agency == agency]

    def matching(self, agency: str, f: Filters) -> list[Case]:
        out = []
        for case in self.of(agency):
            if f.case_manager is not None and case.case_manager != f.case_manager:
                continue
            if f.status is not None and case.status != f.status:
                continue
            if f.review_due_before is not None and (
                case.review_due is None or not case.review_due < f.review_due_before
            ):
                continue
            out.append(case)
        return sorted(out, key=lambda c: sort_key(c, f.order))

    def page(
        self, agency: str, f: Filters, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        cases = self.matching(agency, f)
        if after is not None:
            start = cursor_key(after, f.order)
            cases = [c for c in cases if sort_key(c, f.order) > start]
        today = self.today(agency)
        shown = cases[:limit]
        more = len(cases) > limit
        return [c.row(today) for c in shown], encode_cursor(shown[-1], f.order) if more else None


# --------------------------------------------------------------------------------------------
# the world: the service, its tokens and the model, driven together
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
AT_ONCE = 8  # below the service's pool of 10 connections (CASETRAIL_DB_POOL_MAX)


async def together(checks: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run independent checks that only read ``AT_ONCE`` at a time, each to its end; their
    results in order. One at a time, this process sat idle while PostgreSQL answered each
    read (a supervisor's listing also commits its access-log rows); together, the service
    and the checks use that time. The first failure is raised as it is, and the checks still
    running are stopped."""
    slots = asyncio.Semaphore(AT_ONCE)

    async def one(check: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await check()

    tasks = [asyncio.ensure_future(one(check)) for check in checks]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def write_policies(folder: Path) -> Path:
    for agency in (AGENCY_A, AGENCY_B):
        (folder / f"{agency}.json").write_text(
            json.dumps({"timezone": TIMEZONE[agency], "review_interval_days": INTERVALS[agency]})
        )
    return folder


@pytest.fixture
async def s21_client(
    make_records_client: ClientFactory, fresh_database_url: str, tmp_path: Path, clock: FakeClock
) -> TestClient:
    clock.now = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    return await make_records_client(
        fresh_database_url, clock=clock, CASETRAIL_POLICY_DIR=str(write_policies(tmp_path))
    )


class World:
    def __init__(
        self, client: TestClient, token: TokenFactory, clock: FakeClock, seed: int
    ) -> None:
        self.client = client
        self.clock = clock
        self.model = Model(clock)
        self.rng = random.Random(seed)
        self.seed = seed
        self.writes = 0
        self.tokens: dict[tuple[str, str, str], str] = {}
        self._token = token
        self.names = 0

    def token(self, agency: str, role: str, sub: str, **extra: Any) -> str:
        key = (agency, role, sub)
        if extra:
            return self._token(role=role, sub=sub, agency=agency, **extra)
        if key not in self.tokens:
            self.tokens[key] = self._token(role=role, sub=sub, agency=agency)
        return self.tokens[key]

    def owner(self, case: Case) -> str:
        return self.token(case.agency, "case_manager", case.case_manager)

    async def write(self, token: str, path: str, body: Any, method: str = "POST") -> Any:
        self.writes += 1
        response = await self.client.request(
            method,
            path,
            json=body,
            headers={**bearer(token), "Idempotency-Key": f"s21-{self.seed}-{self.writes}"},
        )
        payload = await response.json()
        assert response.status in (200, 201), (method, path, body, response.status, payload)
        return payload

    def scheduled(self, answer: Any) -> dict[str, Any]:
        [event] = [e for e in answer["events"] if e["type"] == "ReviewScheduled"]
        return dict(event["data"])

    # ---- operations ----

    async def open(
        self, agency: str, case_manager: str, risk: str, *, by_supervisor: bool = False
    ) -> Case:
        self.names += 1
        name = f"Participant {self.names:03d}"
        token = (
            self.token(agency, "supervisor", SUPERVISOR[agency])
            if by_supervisor
            else self.token(agency, "case_manager", case_manager)
        )
        given = f" {case_manager}  " if self.rng.random() < 0.2 else case_manager
        answer = await self.write(
            token,
            "/v1/cases",
            {"participant": {"name": name}, "case_manager": given, "risk_level": risk},
        )
        case = Case(str(answer["case_id"]), agency, case_manager, risk, name, answer["version"])
        self.model.cases[case.case_id] = case
        return case

    async def add_goal(self, case: Case, status: str = "active") -> str:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/goals",
            {
                "title": f"Goal {len(case.goals) + 1}",
                "domain": "employment",
                "source": "participant",
                "in_their_words": "I want to work with my hands",
                "status": status,
            },
        )
        case.goals[str(answer["id"])] = status
        case.version = answer["version"]
        return str(answer["id"])

    async def goal_status(self, case: Case, goal_id: str, status: str) -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/goals/{goal_id}/status",
            {"status": status, "reason": "Jo chose the order of things"},
        )
        case.goals[goal_id] = status
        case.version = answer["version"]

    async def add_step(self, case: Case, goal_id: str, due: date | None) -> str:
        body: dict[str, Any] = {"description": "Call the staffing agency", "owner": "participant"}
        if due is not None:
            body["due_date"] = due.isoformat()
        answer = await self.write(
            self.owner(case), f"/v1/cases/{case.case_id}/goals/{goal_id}/steps", body
        )
        case.steps[str(answer["id"])] = Step(goal_id, due)
        case.version = answer["version"]
        return str(answer["id"])

    async def step_status(self, case: Case, step_id: str, status: str) -> None:
        path = f"/v1/cases/{case.case_id}/steps/{step_id}"
        if status == "completed" and case.steps[step_id].status != "no_longer_needed":
            answer = await self.write(self.owner(case), f"{path}/complete", {})
        else:
            answer = await self.write(
                self.owner(case),
                f"{path}/status",
                {"status": status, "reason": "Jo's week changed"},
            )
        case.steps[step_id].status = status
        case.version = answer["version"]

    async def move_step(self, case: Case, step_id: str, due: date | None) -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/steps/{step_id}",
            {"due_date": due.isoformat() if due else None},
            method="PATCH",
        )
        case.steps[step_id].due = due
        case.version = answer["version"]

    async def agree(self, case: Case, outcome: str = "agreed") -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/agreements",
            {
                "participation": "in_person",
                "present": ["Jo", case.case_manager],
                "participant_statement": "This plan is mine",
                "outcome": outcome,
            },
        )
        case.version = answer["version"]
        if case.review_id is None and outcome == "agreed":
            today = self.model.today(case.agency)
            due = today + timedelta(days=INTERVALS[case.agency][case.risk])
            data = self.scheduled(answer)
            assert data["due_date"] == due.isoformat(), (data, today, case.risk)
            case.review_id, case.review_due = str(data["review_id"]), due
            case.review_scheduled_on = today
        else:
            assert not [e for e in answer["events"] if e["type"] == "ReviewScheduled"]

    async def hold(self, case: Case, held_on: date | None, risk: str | None) -> None:
        assert case.review_id is not None
        body: dict[str, Any] = {"summary": "Jo kept every appointment"}
        if held_on is not None:
            body["held_on"] = held_on.isoformat()
        if risk is not None:
            body["risk_level"] = risk
        answer = await self.write(
            self.owner(case), f"/v1/cases/{case.case_id}/reviews/{case.review_id}/held", body
        )
        today = self.model.today(case.agency)
        case.risk = risk or case.risk
        due = (held_on or today) + timedelta(days=INTERVALS[case.agency][case.risk])
        data = self.scheduled(answer)
        assert data["due_date"] == due.isoformat(), (data, held_on, today, case.risk)
        case.review_id, case.review_due = str(data["review_id"]), due
        case.review_scheduled_on = today
        case.version = answer["version"]

    async def reschedule(self, case: Case, due: date) -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/reviews/{case.review_id}/reschedule",
            {"due_date": due.isoformat(), "reason": "Jo starts work"},
        )
        case.review_due = due
        case.version = answer["version"]

    async def transfer(self, case: Case, to: str, *, by_supervisor: bool) -> None:
        token = (
            self.token(case.agency, "supervisor", SUPERVISOR[case.agency])
            if by_supervisor
            else self.owner(case)
        )
        given = f"  {to} " if self.rng.random() < 0.2 else to
        answer = await self.write(
            token,
            f"/v1/cases/{case.case_id}/transfer",
            {"case_manager": given, "reason": "Jo moved across town"},
        )
        case.case_manager = to
        case.version = answer["version"]

    async def close(self, case: Case) -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/close",
            {"reason": "Jo finished the programme"},
        )
        case.status = "closed"
        case.review_id = case.review_due = case.review_scheduled_on = None
        case.version = answer["version"]

    async def reopen(self, case: Case) -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/reopen",
            {"reason": "Jo asked to come back"},
        )
        case.status = "open"
        case.version = answer["version"]

    async def rename(self, case: Case) -> None:
        self.names += 1
        name = f"Participant {self.names:03d} (renamed)"
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/participant",
            {"name": name},
            method="PATCH",
        )
        case.name = name
        case.version = answer["version"]

    async def note(self, case: Case) -> None:
        answer = await self.write(
            self.owner(case),
            f"/v1/cases/{case.case_id}/notes",
            {"text": "Jo started at the bike shop"},
        )
        case.version = answer["version"]

    # ---- one random operation ----

    async def random_operation(self, agency: str) -> str:
        """One operation, drawn among those the state allows, by weight."""
        rng, model = self.rng, self.model
        cases = sorted(model.of(agency), key=lambda c: c.case_id)
        if len(cases) < 4 or rng.random() < 0.06:
            await self.open(
                agency,
                rng.choice(MANAGERS[agency]),
                rng.choice(RISKS),
                by_supervisor=rng.random() < 0.3,
            )
            return "open"
        name, write = self.draw(rng.choice(cases))
        await write
        return name

    def draw(self, case: Case) -> tuple[str, Awaitable[None]]:
        """An operation on ``case`` the state allows, drawn by weight, not yet started (the
        draw itself is made now, so a burst of them draws the same whatever order they run
        in)."""
        options = self._options(case)
        names = sorted(options)
        name = self.rng.choices(names, weights=[options[n][0] for n in names])[0]
        return name, options[name][1]()

    async def burst(self, size: int) -> list[str]:
        """Operations on ``size`` different cases of both agencies, sent at once (appends
        arriving together are written in one statement, decision 0008)."""
        cases = self.rng.sample(
            sorted(self.model.cases.values(), key=lambda c: c.case_id),
            min(size, len(self.model.cases)),
        )
        drawn = [self.draw(case) for case in cases]
        await asyncio.gather(*(write for _, write in drawn))
        return [name for name, _ in drawn]

    def _options(self, case: Case) -> dict[str, tuple[float, Callable[[], Awaitable[None]]]]:
        rng, today = self.rng, self.model.today(case.agency)
        options: dict[str, tuple[float, Callable[[], Awaitable[None]]]] = {}
        if case.status == "closed":
            options["reopen"] = (1, lambda: self.reopen(case))
            return options
        options["note"] = (0.5, lambda: self.note(case))
        options["close"] = (0.6, lambda: self.close(case))
        others = [m for m in MANAGERS[case.agency] if m != case.case_manager]
        options["transfer"] = (
            1,
            lambda: self.transfer(case, rng.choice(others), by_supervisor=rng.random() < 0.4),
        )
        if case.active_goals() < 3:
            options["goal"] = (3 if not case.goals else 0.7, lambda: self.add_goal(case))
        options["future goal"] = (0.2, lambda: self.add_goal(case, status="future"))
        goals = sorted(g for g, s in case.goals.items() if s in ("active", "paused", "future"))
        if goals:

            def add_step() -> Awaitable[None]:
                due = rng.choice([None, -9, -2, -1, 0, 1, 3, 20])
                return self._add_step(
                    case, rng.choice(goals), None if due is None else today + timedelta(days=due)
                )

            options["step"] = (3, add_step)
        if case.steps:

            def step_status() -> Awaitable[None]:
                step_id = rng.choice(sorted(case.steps))
                step = case.steps[step_id]
                statuses = (
                    ["no_longer_needed"]
                    if case.goals[step.goal_id] == "discontinued"
                    else [
                        "not_started",
                        "in_progress",
                        "completed",
                        "cannot_be_done_yet",
                        "no_longer_needed",
                    ]
                )
                choices = [s for s in statuses if s != step.status]
                if not choices:
                    return self.note(case)
                return self.step_status(case, step_id, rng.choice(choices))

            def move_step() -> Awaitable[None]:
                step_id = rng.choice(sorted(case.steps))
                offset = rng.choice([None, -4, -1, 0, 2, 10])
                due = None if offset is None else today + timedelta(days=offset)
                if due == case.steps[step_id].due:
                    due = today - timedelta(days=30)
                return self.move_step(case, step_id, due)

            options["step status"] = (2.5, step_status)
            options["move step"] = (1, move_step)
        if case.goals:

            def goal_status() -> Awaitable[None]:
                goal_id = rng.choice(sorted(case.goals))
                current = case.goals[goal_id]
                choices = [
                    s
                    for s in ("active", "paused", "future", "achieved", "discontinued")
                    if s != current
                    and not (s == "active" and case.active_goals() >= 3)
                    and not (s == "achieved" and current == "discontinued")
                ]
                return self.goal_status(case, goal_id, rng.choice(choices))

            options["goal status"] = (1.2, goal_status)
        if case.active_goals():
            options["agree"] = (2 if case.review_id is None else 0.3, lambda: self.agree(case))
            options["disagree"] = (0.2, lambda: self.agree(case, outcome="did_not_agree"))
        options["rename"] = (0.3, lambda: self.rename(case))
        if case.review_id is not None and case.review_scheduled_on is not None:
            earliest = case.review_scheduled_on

            def hold() -> Awaitable[None]:
                span = (today - earliest).days
                held_on = (
                    None
                    if span <= 0 or rng.random() < 0.5
                    else earliest + timedelta(days=rng.randrange(span + 1))
                )
                return self.hold(case, held_on, rng.choice([None, None, *RISKS]))

            def reschedule() -> Awaitable[None]:
                due = today + timedelta(days=rng.choice([0, 1, 5, 33]))
                if due == case.review_due:
                    due += timedelta(days=1)
                return self.reschedule(case, due)

            options["hold"] = (1.5, hold)
            options["reschedule"] = (1, reschedule)
        return options

    async def _add_step(self, case: Case, goal_id: str, due: date | None) -> None:
        await self.add_step(case, goal_id, due)

    # ---- reading ----

    async def get(self, token: str, query: str) -> tuple[int, Any]:
        """``GET /v1/cases?query`` as ``token``. The request goes through the test client's
        session, as ``client.get`` sends it, but the response is released once read:
        ``client.get`` keeps every response until the test ends (some 8,600 in a random
        history), and the garbage collector went through them all again and again."""
        async with self.client.session.get(
            self.client.make_url(f"/v1/cases?{query}"), headers=bearer(token)
        ) as response:
            body = await response.json()
            if response.status >= 400:
                assert response.content_type == "application/problem+json", (query, body)
            return response.status, body

    async def walk(
        self,
        token: str,
        agency: str,
        f: Filters,
        limit: int,
        between: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
        scoped_to: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every page of ``f`` as ``token`` reads it, each compared with the model's page at
        the moment it is read; ``between`` runs between pages. ``scoped_to``: the case
        manager a case manager's listing is limited to."""
        expected_filters = (
            f if scoped_to is None else Filters(scoped_to, f.status, f.review_due_before, f.order)
        )
        shown: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(500):
            query = f.query(limit, after)
            status, page = await self.get(token, query)
            assert status == 200, (query, page)
            rows = [{k: c[k] for k in FIELDS} for c in page["cases"]]
            expected, expected_next = self.model.page(agency, expected_filters, limit, after)
            assert rows == expected, (agency, query, self.clock.now, rows, expected)
            assert page["next_after"] == expected_next, (query, page["next_after"], expected_next)
            shown += rows
            if page["next_after"] is None:
                return shown
            if between is not None:
                await between(shown)
            after = page["next_after"]
        raise AssertionError(f"more than 500 pages: {f}")

    def dates(self, agency: str) -> list[date]:
        """review_due_before values worth asking: today and tomorrow, each due date in force
        exactly (strict: a case due on it is not before it) and the day after, and bounds."""
        today = self.model.today(agency)
        dues = {c.review_due for c in self.model.of(agency) if c.review_due is not None}
        edges = {today, today + timedelta(days=1), date(2026, 1, 1), date(9999, 12, 31)}
        for due in dues:
            edges |= {due, due + timedelta(days=1)}
        return sorted(edges)

    def filter_sets(self, agency: str, managers: Iterable[str | None]) -> list[Filters]:
        return [
            Filters(m, s, d, o)
            for m in managers
            for s in (None, "open", "closed")
            for d in (None, *self.dates(agency))
            for o in ("case_id", "next_review")
        ]

    async def check_listings(self, sample: int | None) -> int:
        """Every role's listings against the model: all combinations when ``sample`` is None,
        else ``sample`` drawn at random per reader (and the plain listing always).

        Nothing is written while they are read (the model and the clock stay as they are), so
        the walks are drawn first, in the order and with the page sizes they always had (the
        same draws from the seeded generator), then read ``together``."""
        checks: list[Callable[[], Awaitable[None]]] = []
        walks = 0
        for agency in (AGENCY_A, AGENCY_B):
            other = AGENCY_B if agency == AGENCY_A else AGENCY_A
            readers: list[tuple[str, list[str | None], str | None]] = [
                (
                    self.token(agency, "supervisor", SUPERVISOR[agency]),
                    [None, *MANAGERS[agency], *MANAGERS[other], "nobody-here"],
                    None,
                )
            ]
            for manager in MANAGERS[agency]:
                readers.append(
                    (
                        self.token(agency, "case_manager", manager),
                        [None, manager, f"  {manager} "],
                        manager,
                    )
                )
            for token, managers, scoped in readers:
                every = self.filter_sets(agency, managers)
                chosen = (
                    every
                    if sample is None
                    else [
                        Filters(),
                        Filters(order="next_review"),
                        *self.rng.sample(every, min(sample, len(every))),
                    ]
                )
                for f in chosen:
                    if f.case_manager is not None and f.case_manager.strip() != f.case_manager:
                        expected = Filters(
                            f.case_manager.strip(), f.status, f.review_due_before, f.order
                        )
                        checks.append(
                            partial(
                                self._walk_as,
                                token,
                                agency,
                                f,
                                expected,
                                scoped,
                                self.rng.choice([1, 2, 3]),
                            )
                        )
                    else:
                        checks.append(
                            partial(
                                self.walk,
                                token,
                                agency,
                                f,
                                self.rng.choice([1, 2, 3, 200]),
                                scoped_to=scoped,
                            )
                        )
                    walks += 1
                if scoped is not None:  # a colleague's caseload is not a case manager's to list
                    colleague = next(m for m in MANAGERS[agency] if m != scoped)
                    checks.append(partial(self._refused, token, Filters(colleague).query(2)))
        await together([*checks, *self.refused_roles()])
        return walks

    async def _refused(self, token: str, query: str) -> None:
        """403, and no case (0004)."""
        status, body = await self.get(token, query)
        assert status == 403, (query, body)
        assert "cases" not in body

    async def _walk_as(
        self,
        token: str,
        agency: str,
        f: Filters,
        expected: Filters,
        scoped: str | None,
        limit: int,
    ) -> None:
        """A filter with surrounding spaces reads as the same filter without them (0101)."""
        shown, after = [], None
        while True:
            status, page = await self.get(token, f.query(limit, after))
            assert status == 200, (f, page)
            rows, nxt = self.model.page(
                agency,
                expected
                if scoped is None
                else Filters(scoped, expected.status, expected.review_due_before, expected.order),
                limit,
                after,
            )
            assert [{k: c[k] for k in FIELDS} for c in page["cases"]] == rows, f
            assert page["next_after"] == nxt
            shown += rows
            if nxt is None:
                return
            after = nxt

    async def check_against_plans(self) -> None:
        """Each listed case says what its plan says (the listing is the caseload projection
        of the same events): version, status, case manager, risk, name, next review, time.
        The plans are read ``together``."""
        checks: list[Callable[[], Awaitable[None]]] = []
        for agency in (AGENCY_A, AGENCY_B):
            supervisor = self.token(agency, "supervisor", SUPERVISOR[agency])
            status, page = await self.get(supervisor, "limit=200")
            assert status == 200
            checks += [partial(self._as_its_plan, row, supervisor) for row in page["cases"]]
        await together(checks)

    async def _as_its_plan(self, row: dict[str, Any], supervisor: str) -> None:
        response = await self.client.get(f"/v1/cases/{row['case_id']}", headers=bearer(supervisor))
        plan = await response.json()
        assert response.status == 200, plan
        review = plan["next_review"]
        assert (
            row["version"],
            row["status"],
            row["case_manager"],
            row["risk_level"],
            row["participant_name"],
            row["next_review_due"],
            row["updated_at"],
            row["active_goals"],
        ) == (
            plan["version"],
            plan["status"],
            plan["case_manager"],
            plan["risk_level"],
            plan["participant"]["name"],
            review["due_date"] if review else None,
            plan["updated_at"],
            plan["active_goal_count"],
        ), (row, plan)

    def refused_roles(self) -> list[Callable[[], Awaitable[None]]]:
        """Participants, analysts, auditors and windowed tokens list nothing (0004: 403): the
        checks, to be read ``together`` with the listings."""
        some = sorted(self.model.of(AGENCY_A), key=lambda c: c.case_id)[:1]
        cases = [c.case_id for c in some] or ["0dc5cbc2-cbbb-482b-96ef-e012ff002e02"]
        refused = [
            self.token(AGENCY_A, "participant", "jo", cases=cases),
            self.token(AGENCY_A, "analyst", "an-1"),
            self.token(AGENCY_A, "auditor", "court-7", cases=cases),
            self.token(AGENCY_A, "service", "notifier"),
            self.token(
                AGENCY_A,
                "supervisor",
                SUPERVISOR[AGENCY_A],
                window_to=datetime(2100, 1, 1, tzinfo=UTC),
            ),
            self.token(
                AGENCY_A, "case_manager", "cm-1", window_to=datetime(2100, 1, 1, tzinfo=UTC)
            ),
        ]
        return [
            partial(self._refused, token, query)
            for token in refused
            for query in ("", "case_manager=cm-1&status=open&limit=2")
        ]


# --------------------------------------------------------------------------------------------
# the random sequence, checked after every few operations
# --------------------------------------------------------------------------------------------


async def seeded_world(world: World, operations: int, every: int, sample: int) -> Counter[str]:
    done: Counter[str] = Counter()
    for agency in (AGENCY_A, AGENCY_B):  # every case manager starts with a case or two
        for manager in MANAGERS[agency]:
            await world.open(agency, manager, world.rng.choice(RISKS))
    for number in range(1, operations + 1):
        world.clock.advance(hours=world.rng.choice([1, 3, 7, 11, 17, 29]))
        agency = AGENCY_A if world.rng.random() < 0.7 else AGENCY_B
        done[await world.random_operation(agency)] += 1
        if number % every == 0:
            done.update(await world.burst(8))
            await world.check_listings(sample)
    return done


@pytest.mark.parametrize("seed", [2101, 2102])
async def test_every_filter_as_every_role_matches_the_model_through_a_random_history(
    s21_client: TestClient,
    token: TokenFactory,
    clock: FakeClock,
    fresh_pool: asyncpg.Pool,
    seed: int,
) -> None:
    world = World(s21_client, token, clock, seed)
    done = await seeded_world(world, operations=200, every=10, sample=8)
    # the history reached what it is meant to test
    assert {
        "agree",
        "hold",
        "reschedule",
        "transfer",
        "close",
        "reopen",
        "step",
        "step status",
        "move step",
        "goal status",
        "open",
    } <= set(done), done
    cases = world.model.cases.values()
    assert (
        any(c.review_due is not None and c.review_due < world.model.today(c.agency) for c in cases)
        or done["hold"] > 0
    )
    assert any(c.overdue_steps(world.model.today(c.agency)) for c in cases), done
    assert await world.check_listings(sample=None) > 500
    await world.check_against_plans()
    # "a rebuild yields exactly the same state" (the brief): the caseload rebuilt from the
    # events lists as the live one did
    await rebuild_projections(fresh_pool)
    clock.advance(hours=13)
    await world.check_listings(sample=None)


# --------------------------------------------------------------------------------------------
# overdue is by the agency's calendar, read when the listing is read
# --------------------------------------------------------------------------------------------


async def test_overdue_steps_and_reviews_count_by_the_agencys_today_not_utcs(
    s21_client: TestClient, token: TokenFactory, clock: FakeClock
) -> None:
    """Decision 0102: "The caseload's overdue flags (steps past due, a review past due) are
    measured against the same date", the agency's today. At 11:00 UTC on 2 March it is
    3 March 01:00 in Kiritimati and 2 March 03:00 in Los Angeles."""
    world = World(s21_client, token, clock, 1)
    clock.now = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    north = await world.open(AGENCY_A, "cm-1", "high")
    south = await world.open(AGENCY_B, "cm-1", "high")
    for case in (north, south):
        goal = await world.add_goal(case)
        for day in (1, 2, 3):  # due 1, 2 and 3 March
            await world.add_step(case, goal, date(2026, 3, day))
    assert world.model.today(AGENCY_A) == date(2026, 3, 3)
    assert world.model.today(AGENCY_B) == date(2026, 3, 2)
    for agency, case, overdue in ((AGENCY_A, north, 2), (AGENCY_B, south, 1)):
        status, page = await world.get(world.token(agency, "case_manager", "cm-1"), "")
        assert status == 200
        [row] = page["cases"]
        assert (row["case_id"], row["overdue_steps"]) == (case.case_id, overdue), row
    clock.now = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # 3 March in LA too, no write since
    status, page = await world.get(world.token(AGENCY_B, "case_manager", "cm-1"), "")
    assert page["cases"][0]["overdue_steps"] == 2
    await world.walk(
        world.token(AGENCY_A, "supervisor", SUPERVISOR[AGENCY_A]), AGENCY_A, Filters(), 1
    )


# --------------------------------------------------------------------------------------------
# paging while the caseload changes between pages
# --------------------------------------------------------------------------------------------


async def busy_caseload(world: World) -> None:
    """Twenty cases in agency A, most agreed, some with overdue steps, some closed."""
    rng = world.rng
    for n in range(20):
        case = await world.open(AGENCY_A, MANAGERS[AGENCY_A][n % 3], RISKS[n % 3])
        goal = await world.add_goal(case)
        if n % 4:
            await world.agree(case)
        if n % 3 == 0:
            await world.add_step(case, goal, world.model.today(AGENCY_A) - timedelta(days=2))
        if n % 7 == 6:
            await world.close(case)
        world.clock.advance(hours=rng.choice([5, 13, 26]))
    for n in range(4):
        await world.open(AGENCY_B, MANAGERS[AGENCY_B][n % 2], "high")


async def change_something(world: World, shown: set[str]) -> str:
    """One change between two pages: to a case shown already or one still to come."""
    rng, model = world.rng, world.model
    cases = sorted(model.of(AGENCY_A), key=lambda c: c.case_id)
    unseen = [c for c in cases if c.case_id not in shown]
    pool = unseen if unseen and rng.random() < 0.7 else cases
    case = rng.choice(pool)
    today = model.today(AGENCY_A)
    what = rng.choice(["transfer", "close", "reschedule", "hold", "step", "open", "note"])
    if case.status == "closed":
        await world.reopen(case)
        what = "reopen"
    elif what == "transfer":
        others = [m for m in MANAGERS[AGENCY_A] if m != case.case_manager]
        await world.transfer(case, rng.choice(others), by_supervisor=rng.random() < 0.5)
    elif what == "close":
        await world.close(case)
    elif what in ("reschedule", "hold") and case.review_id is not None:
        if what == "hold":
            await world.hold(case, None, None)
        else:
            due = today + timedelta(days=rng.choice([0, 2, 45, 120]))
            if due == case.review_due:
                due += timedelta(days=1)
            await world.reschedule(case, due)
    elif what == "step" and case.active_goals():
        goal = sorted(g for g, s in case.goals.items() if s == "active")[0]
        await world.add_step(case, goal, today - timedelta(days=1))
    elif what == "open":
        case = await world.open(AGENCY_A, rng.choice(MANAGERS[AGENCY_A]), "low")
    else:
        await world.note(case)
        what = "note"
    return what


@pytest.mark.parametrize("seed", [7, 8])
async def test_pages_read_while_cases_change_keep_the_promise_of_each_order(
    s21_client: TestClient, token: TokenFactory, clock: FakeClock, seed: int
) -> None:
    """Decision 0101. By case id: "a case closed, transferred or whose review moves between two
    pages is shown once, never skipped or repeated; a case that stops matching a filter
    meanwhile drops out of the pages still to come, and a case opened meanwhile shows only if
    its id falls after the cursor". By next review: "every case whose next review date did not
    change while the pages were read (and that kept matching the filters) is shown exactly
    once, in order". Each page is also checked against the model at the moment it is read."""
    world = World(s21_client, token, clock, seed)
    await busy_caseload(world)
    supervisor = world.token(AGENCY_A, "supervisor", SUPERVISOR[AGENCY_A])
    readers = [
        (supervisor, None),
        *((world.token(AGENCY_A, "case_manager", m), m) for m in MANAGERS[AGENCY_A][:2]),
    ]
    kinds: Counter[str] = Counter()
    for reader, scoped in readers:
        for f in (
            Filters(),
            Filters(status="open"),
            Filters(order="next_review"),
            Filters(status="open", order="next_review"),
            Filters(review_due_before=world.model.today(AGENCY_A) + timedelta(days=70)),
            Filters(
                review_due_before=world.model.today(AGENCY_A) + timedelta(days=70),
                order="next_review",
            ),
            *(
                [Filters(case_manager="cm-2", order="next_review"), Filters(case_manager="cm-3")]
                if scoped is None
                else []
            ),
        ):
            kinds += await paged_while_changing(world, reader, f, scoped)
    assert {"transfer", "close", "reschedule", "hold"} <= set(kinds), kinds


async def paged_while_changing(
    world: World, reader: str, f: Filters, scoped: str | None
) -> Counter[str]:
    """``f`` read in pages of two, a change between each two pages; what the pages showed
    held to the order's promise."""
    model = world.model
    asked = f if scoped is None else Filters(scoped, f.status, f.review_due_before, f.order)
    review_before = {c.case_id: c.review_due for c in model.of(AGENCY_A)}
    still_matching = {c.case_id for c in model.matching(AGENCY_A, asked)}
    review_moved: set[str] = set()
    kinds: Counter[str] = Counter()

    async def between(shown: list[dict[str, Any]]) -> None:
        kinds[await change_something(world, {r["case_id"] for r in shown})] += 1
        still_matching.intersection_update(c.case_id for c in model.matching(AGENCY_A, asked))
        review_moved.update(
            c.case_id
            for c in model.of(AGENCY_A)
            if c.case_id in review_before and c.review_due != review_before[c.case_id]
        )

    rows = await world.walk(reader, AGENCY_A, f, 2, between, scoped_to=scoped)
    counts = Counter(r["case_id"] for r in rows)
    if f.order == "case_id":
        assert max(counts.values(), default=1) == 1, (f, counts)
        assert [r["case_id"] for r in rows] == sorted(r["case_id"] for r in rows), f
        missing = {case_id for case_id in still_matching if counts[case_id] != 1}
        assert not missing, (f, missing)
    else:
        steady = still_matching - review_moved
        wrong = {case_id: counts[case_id] for case_id in steady if counts[case_id] != 1}
        assert not wrong, (f, wrong)
        kept = [r for r in rows if r["case_id"] in steady]
        assert kept == sorted(
            kept, key=lambda r: (r["next_review_due"] or "9999-99-99", r["case_id"])
        ), f
    return kinds


# --------------------------------------------------------------------------------------------
# tampered cursors
# --------------------------------------------------------------------------------------------


JUNK_CURSORS = [
    "Zm9vYmFyYmF6",  # base64 of "foobarbaz"
    "eyJjYXNlX2lkIjogIjEifQ==",  # base64 JSON, as other services' cursors look
    "not-a-cursor",
    "0",
    "-1",
    "null",
    "undefined",
    "[]",
    "{}",
    "%",
    "%25",
    "' OR '1'='1",
    "2026-03-02",
    "-",
    "~",
    "-~-",
    "9999-99-99~x",
    "\u00e9t\u00e9",
    "\U0001f389",
    "a" * 64,
    "a" * 65,
    "2026-13-01~0dc5cbc2-cbbb-482b-96ef-e012ff002e02",
    "infinity~0dc5cbc2-cbbb-482b-96ef-e012ff002e02",
    "------------------------------------",
    "0dc5cbc2-cbbb-482b-96ef-e012ff002e0g",
    "0dc5cbc2-cbbb-482b-96ef-e012ff002e02\u200b",
    " 0dc5cbc2-cbbb-482b-96ef-e012ff002e02x",
]


async def test_tampered_cursors_are_a_clear_4xx_and_borrowed_ones_show_only_the_readers_cases(
    s21_client: TestClient, token: TokenFactory, clock: FakeClock
) -> None:
    world = World(s21_client, token, clock, 99)
    await busy_caseload(world)
    for n in range(6):
        case = await world.open(AGENCY_B, MANAGERS[AGENCY_B][n % 2], RISKS[n % 3])
        await world.add_goal(case)
        await world.agree(case)
    supervisor_a = world.token(AGENCY_A, "supervisor", SUPERVISOR[AGENCY_A])
    supervisor_b = world.token(AGENCY_B, "supervisor", SUPERVISOR[AGENCY_B])
    cm1_a = world.token(AGENCY_A, "case_manager", "cm-1")
    cm1_b = world.token(AGENCY_B, "case_manager", "cm-1")
    a_ids = {c.case_id for c in world.model.of(AGENCY_A)}
    b_ids = {c.case_id for c in world.model.of(AGENCY_B)}

    # every cursor each reader's own pages hand out, in both orders
    cursors: dict[tuple[str, str], list[str]] = {}
    for name, reader in (
        ("sup-a", supervisor_a),
        ("sup-b", supervisor_b),
        ("cm1-a", cm1_a),
        ("cm1-b", cm1_b),
    ):
        for order in ("case_id", "next_review"):
            got: list[str] = []
            after = None
            while True:
                status, page = await world.get(reader, Filters(order=order).query(2, after))
                assert status == 200
                if page["next_after"] is None:
                    break
                after = page["next_after"]
                got.append(after)
            cursors[name, order] = got
            assert got, (name, order)

    # 1. junk, truncated and mangled cursors: 422 on query.after (400 for what a query may
    #    not hold at all), never a 500 and never a page (nothing is written meanwhile: every
    #    check of 1 and 2 is read ``together``)
    async def junk_refused(reader: str, query: str) -> None:
        status, body = await world.get(reader, query)
        assert status in (400, 422), (query, status, body)
        assert "cases" not in body, query
        if status == 422:
            assert [e["field"] for e in body["errors"]] == ["query.after"], (query, body)

    async def raw_refused(reader: str, order: str, raw: str) -> None:
        status, body = await world.get(reader, f"limit=2&order={order}&after={raw}")
        assert 400 <= status < 500, (raw, status, body)

    checks: list[Callable[[], Awaitable[None]]] = []
    samples = [*cursors["sup-a", "case_id"][:1], *cursors["sup-a", "next_review"][:1]]
    truncated = [c[:n] for c in samples for n in (1, 8, 20, 35, len(c) - 1)]
    for reader in (supervisor_a, cm1_a):
        for order in ("case_id", "next_review"):
            for junk in [*JUNK_CURSORS, *truncated]:
                checks.append(partial(junk_refused, reader, Filters(order=order).query(2, junk)))
            for raw in ("%00", "%ZZ", "%FF%FE", "%0A"):
                checks.append(partial(raw_refused, reader, order, raw))

    # 2. a well-formed cursor from elsewhere is only a place in the order: each page is the
    #    reader's own cases after it, exactly as the model pages them, never another agency's
    async def borrowed_page(
        reader: str, agency: str, scoped: str | None, own: set[str], f: Filters, cursor: str
    ) -> None:
        status, page = await world.get(reader, f.query(3, cursor))
        assert status == 200, (f, cursor, page)
        assert {c["case_id"] for c in page["cases"]} <= own, (f, cursor)
        expected_f = (
            f if scoped is None else Filters(scoped, f.status, f.review_due_before, f.order)
        )
        rows, nxt = world.model.page(agency, expected_f, 3, cursor)
        assert [{k: c[k] for k in FIELDS} for c in page["cases"]] == rows, (f, cursor)
        assert page["next_after"] == nxt

    borrowed = [
        (supervisor_a, AGENCY_A, None, cursors["sup-b", "case_id"] + cursors["cm1-b", "case_id"]),
        (supervisor_a, AGENCY_A, None, cursors["cm1-a", "case_id"]),
        (cm1_a, AGENCY_A, "cm-1", cursors["sup-a", "case_id"] + cursors["sup-b", "case_id"]),
        (cm1_a, AGENCY_A, "cm-1", cursors["cm1-b", "next_review"]),
        (cm1_b, AGENCY_B, "cm-1", cursors["cm1-a", "case_id"] + cursors["sup-a", "next_review"]),
        (supervisor_b, AGENCY_B, None, cursors["sup-a", "next_review"]),
    ]
    for reader, agency, scoped, found in borrowed:
        own = a_ids if agency == AGENCY_A else b_ids
        for cursor in found:
            order = "next_review" if "~" in cursor else "case_id"
            for f in (
                Filters(order=order),
                Filters(status="open", order=order),
                Filters(review_due_before=date(2026, 6, 1), order=order),
            ):
                if scoped is None and f.status is None and f.review_due_before is None:
                    f = Filters(case_manager="cm-1", order=order)  # another filter's cursor
                checks.append(partial(borrowed_page, reader, agency, scoped, own, f, cursor))
    await together(checks)

    # 3. the same id spelled otherwise (capitals) is the same place, not a 500
    first = cursors["sup-a", "case_id"][0]
    for spelled in (first.upper(), "{" + first + "}", first.replace("-", "")):
        status, page = await world.get(supervisor_a, Filters().query(2, spelled))
        assert status in (200, 422), (spelled, status, page)
        if status == 200:
            rows, _ = world.model.page(AGENCY_A, Filters(), 2, first)
            assert [{k: c[k] for k in FIELDS} for c in page["cases"]] == rows
    review_first = cursors["sup-a", "next_review"][0]
    status, page = await world.get(
        supervisor_a, Filters(order="next_review").query(2, review_first.upper())
    )
    assert status == 200, page
    rows, _ = world.model.page(AGENCY_A, Filters(order="next_review"), 2, review_first)
    assert [{k: c[k] for k in FIELDS} for c in page["cases"]] == rows

    # 4. a review cursor at the calendar's ends pages as far as that date, never a 500
    for due in ("0001-01-01", "1900-01-01", "9999-12-31", "-"):
        cursor = f"{due}~00000000-0000-0000-0000-000000000000"
        status, page = await world.get(supervisor_a, Filters(order="next_review").query(50, cursor))
        assert status == 200, (cursor, page)
        rows, nxt = world.model.page(AGENCY_A, Filters(order="next_review"), 50, cursor)
        assert [{k: c[k] for k in FIELDS} for c in page["cases"]] == rows, cursor
        assert page["next_after"] == nxt

    # 5. the supervisors' access logs name only their own agency's cases
    for supervisor, own in ((supervisor_a, a_ids), (supervisor_b, b_ids)):
        status, log = 0, None
        response = await s21_client.get("/v1/access-log?limit=500", headers=bearer(supervisor))
        status, log = response.status, await response.json()
        assert status == 200, log
        assert {e["case_id"] for e in log["entries"]} <= own


def test_the_model_pages_by_the_documented_keys() -> None:
    """The model itself: the review order sorts no review last and ties by id (README)."""
    model = Model(FakeClock())
    for n, due in enumerate([date(2026, 4, 1), None, date(2026, 3, 1), date(2026, 4, 1)]):
        case = Case(f"0000000{n}-0000-0000-0000-000000000000", AGENCY_A, "cm-1", "low", f"P{n}", 1)
        case.review_due = due
        model.cases[case.case_id] = case
    rows, nxt = model.page(AGENCY_A, Filters(order="next_review"), 3, None)
    assert [r["case_id"][7] for r in rows] == ["2", "0", "3"]
    assert nxt == "2026-04-01~00000003-0000-0000-0000-000000000000"
    rows, nxt = model.page(AGENCY_A, Filters(order="next_review"), 3, nxt)
    assert [r["case_id"][7] for r in rows] == ["1"]
    assert nxt is None


# Strings Python's uuid.UUID() takes (its int(..., 16) reads any Unicode digit, a sign, an
# underscore and surrounding spaces) but that are no spelling of a case id, nor anything a page
# hands out as next_after.
NOT_CASE_IDS = {
    "arabic-indic digits": "\u0660" * 32,
    "fullwidth digits": "\uff10" * 32,
    "a plus sign": "+" + "0" * 31,
    "an underscore": "0_" + "0" * 30,
    "a leading space": " " + "0" * 31,
    "dashes anywhere": "----" + "0" * 32,
}


async def test_a_cursor_holding_no_case_id_is_refused_not_read_as_one(
    s21_client: TestClient, token: TokenFactory, clock: FakeClock
) -> None:
    """Decision 0101: "a bare id in the review order, a review cursor in the id order or
    anything malformed is 422 on `after`"; the brief: "every bad input gets a clear 4xx".
    ``CaseloadCursor.parse`` hands the id part to ``uuid.UUID()``, which reads 32 Arabic-Indic
    or fullwidth zeros, ``+000…``, ``0_000…`` or `` 000…`` as the nil UUID, and 36 characters
    of hex and dashes in any arrangement (all the review cursor's pattern asks) likewise: such
    a cursor is answered 200 with a page, as if a page had handed it out."""
    world = World(s21_client, token, clock, 3)
    for manager in MANAGERS[AGENCY_A]:
        await world.open(AGENCY_A, manager, "high")
    cursors = [("case_id", raw) for raw in NOT_CASE_IDS.values()]
    cursors += [
        ("next_review", f"2026-04-01~{NOT_CASE_IDS['dashes anywhere']}"),
        ("next_review", f"-~{'0' * 32}----"),
    ]
    taken = []
    for reader in (
        world.token(AGENCY_A, "supervisor", SUPERVISOR[AGENCY_A]),
        world.token(AGENCY_A, "case_manager", "cm-1"),
    ):
        for order, raw in cursors:
            status, body = await world.get(reader, Filters(order=order).query(2, raw))
            if status != 422 or [e["field"] for e in body["errors"]] != ["query.after"]:
                taken.append((order, raw, status))
    assert taken == [], taken
