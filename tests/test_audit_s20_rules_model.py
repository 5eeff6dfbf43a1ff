"""A model-based audit of the practice rules (design.md "Practice rules the software enforces",
the goal and step statuses of "Core bodies") and of docs/decisions/0101-plan-domain.md.

A small reference model of a plan, written here from the documents alone (goals, steps,
strengths, supports, requirements, the case open or closed, the agreement, the reviews), says
for each command whether it must be accepted or refused (and, where the documents name it, with
which status and problem type) and how the plan reads afterwards. The real records service is
driven through HTTP with generated command sequences, and after every command the plan it
serves (``GET /v1/cases/{id}``) is compared with the model.

Where the documents are silent the model follows the service, and says so (``undocumented``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.records.http.app import create_app
from tests.conftest import FakeClock, TokenFactory, bearer, make_settings


@dataclass(frozen=True)
class Policy:
    """design.md rules 1 and 6 (per agency); the defaults: 3 goals, 30/60/90 days, UTC."""

    cap: int = 3
    interval: tuple[tuple[str, int], ...] = (("high", 30), ("moderate", 60), ("low", 90))
    timezone: str = "UTC"

    def days(self, risk: str) -> int:
        return dict(self.interval)[risk]


DEFAULTS = Policy()
# an agency of its own: two goals at a time, reviews every 14 days at high risk and 120 at low,
# its days those of a time zone 14 hours ahead of UTC (0102: "today" is the agency's date)
KIRITIMATI = Policy(cap=2, interval=(("high", 14), ("moderate", 60), ("low", 120)),
                    timezone="Pacific/Kiritimati")
GOAL_STATUSES = ("active", "future", "paused", "achieved", "discontinued")
STEP_STATUSES = ("not_started", "in_progress", "completed", "cannot_be_done_yet",
                 "no_longer_needed")
REQUIREMENT_STATUSES = ("pending", "in_progress", "met", "not_met", "waived")
OUTCOMES = ("agreed", "did_not_agree", "could_not_answer")
RISKS = ("low", "moderate", "high")

Cmd = tuple[str, dict[str, Any]]
# (status, problem type suffix or None for "any"): one of them is the right refusal
Refusal = set[tuple[int, str | None]]


# --------------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------------


@dataclass
class MGoal:
    goal_id: str
    status: str
    override_reason: str | None = None
    status_reason: str | None = None
    steps: list[str] = field(default_factory=list)
    strengths: list[str] = field(default_factory=list)


@dataclass
class MStep:
    step_id: str
    goal_id: str
    due: date | None = None
    status: str = "not_started"
    status_reason: str | None = None

    def shape(self) -> tuple[str, str, str | None, str | None]:
        return (self.step_id, self.status, self.status_reason,
                None if self.due is None else self.due.isoformat())


@dataclass
class MReview:
    review_id: str
    due: date
    scheduled_on: date
    risk: str
    interval: int | None
    status: str = "scheduled"  # scheduled | held | cancelled


@dataclass
class Model:
    risk: str
    policy: Policy = DEFAULTS
    version: int = 1
    status: str = "open"
    goals: dict[str, MGoal] = field(default_factory=dict)
    steps: dict[str, MStep] = field(default_factory=dict)
    strengths: dict[str, bool] = field(default_factory=dict)  # id -> removed
    supports: dict[str, bool] = field(default_factory=dict)
    requirements: dict[str, str] = field(default_factory=dict)  # id -> status
    agreement: tuple[str, list[str]] | None = None  # outcome, active goal ids agreed on
    reviews: dict[str, MReview] = field(default_factory=dict)
    pending: str | None = None

    @property
    def active(self) -> int:
        return sum(1 for g in self.goals.values() if g.status == "active")

    def shape(self) -> dict[str, Any]:
        pending = self.reviews[self.pending] if self.pending else None
        return {
            "version": self.version,
            "status": self.status,
            "risk_level": self.risk,
            "active_goal_count": self.active,
            "goals": [(g.goal_id, g.status, g.override_reason, g.status_reason,
                       g.status == "achieved",
                       # rule 3 (0101): the view hides removed strengths and links to them
                       [sid for sid in g.strengths if not self.strengths[sid]],
                       [self.steps[s].shape() for s in g.steps]) for g in self.goals.values()],
            "strengths": [s for s, removed in self.strengths.items() if not removed],
            "supports": [s for s, removed in self.supports.items() if not removed],
            "requirements": [(r, status) for r, status in self.requirements.items()],
            "agreement": self.agreement,
            "next_review": None if pending is None else (
                pending.review_id, pending.due.isoformat(), "scheduled", pending.risk,
                pending.interval),
            "reviews": [(r.review_id, r.status, r.due.isoformat()) for r in self.reviews.values()],
        }


def served_shape(plan: dict[str, Any]) -> dict[str, Any]:
    nxt = plan["next_review"]
    agreement = plan["agreement"]
    return {
        "version": plan["version"],
        "status": plan["status"],
        "risk_level": plan["risk_level"],
        "active_goal_count": plan["active_goal_count"],
        "goals": [(g["goal_id"], g["status"], g["override_reason"], g["status_reason"],
                   g["achieved_at"] is not None, g["strength_ids"],
                   [(s["step_id"], s["status"], s["status_reason"], s["due_date"])
                    for s in g["steps"]])
                  for g in plan["goals"]],
        "strengths": [s["strength_id"] for s in plan["strengths"]],
        "supports": [s["support_id"] for s in plan["supports"]],
        "requirements": [(r["requirement_id"], r["status"]) for r in plan["requirements"]],
        "agreement": None if agreement is None else (agreement["outcome"],
                                                     agreement["goal_ids"]),
        "next_review": None if nxt is None else (
            nxt["review_id"], nxt["due_date"], nxt["status"], nxt["risk_level"],
            nxt["interval_days"]),
        "reviews": [(r["review_id"], r["status"], r["due_date"]) for r in plan["reviews"]],
    }


@dataclass
class Accept:
    events: list[str]


@dataclass
class Refuse:
    options: Refusal


Expectation = Accept | Refuse


def _pick(items: list[str], index: int) -> str:
    """Index 11 (and any index into an empty list) names an item that does not exist."""
    if index >= 11 or not items:
        return str(uuid4())
    return items[index % len(items)]


REASON = "Talked it through with Jo"
OVERRIDE = "Court ordered this goal on top of the three Jo chose"


class Driver:
    """One case: the model and the service, command by command."""

    def __init__(self, client: TestClient[Any, Any], token: TokenFactory, clock: FakeClock,
                 case_manager: str, policy: Policy) -> None:
        self.client = client
        self.policy = policy
        self.case_manager = case_manager  # a caseload of one: this case
        self.headers = bearer(token(sub=case_manager))
        self.clock = clock
        self.model: Model | None = None
        self.case_id = ""
        self.log: list[str] = []
        self.seen: Counter[str] = Counter()
        self.shapes: dict[int, dict[str, Any]] = {}  # the model's plan at each version

    async def travel(self) -> None:
        """design.md: any case can be read as of a version; the plan read so is the plan as
        it stood then."""
        for version, expected in sorted(self.shapes.items()):
            status, plan = await self.request("GET", f"?as_of_version={version}")
            assert status == 200, plan
            served = served_shape(plan)
            assert served == expected, (
                f"as of version {version} (commands: {self.log}):\n"
                + "\n".join(f"  {key}: served {served[key]!r}\n  model {expected[key]!r}"
                            for key in expected if served[key] != expected[key]))

    @property
    def today(self) -> date:
        return self.clock.now.astimezone(ZoneInfo(self.policy.timezone)).date()

    async def request(self, method: str, path: str,
                      body: Any = None) -> tuple[int, dict[str, Any]]:
        response = await self.client.request(method, f"/v1/cases/{self.case_id}{path}",
                                             json=body, headers=self.headers)
        return response.status, await response.json()

    async def open(self, risk: str) -> None:
        response = await self.client.post("/v1/cases", headers=self.headers, json={
            "participant": {"name": "Jordan Rivera"}, "case_manager": self.case_manager,
            "risk_level": risk})
        assert response.status == 201, await response.text()
        self.case_id = (await response.json())["case_id"]
        self.model = Model(risk=risk, policy=self.policy)
        await self.compare("open")

    async def compare(self, what: str) -> None:
        assert self.model is not None
        status, plan = await self.request("GET", "")
        assert status == 200, plan
        served, expected = served_shape(plan), self.model.shape()
        self.shapes[expected["version"]] = expected
        assert served == expected, (
            f"after {what} (commands so far: {self.log}):\n"
            + "\n".join(f"  {key}: served {served[key]!r}\n  {' ' * len(key)}  model  "
                        f"{expected[key]!r}" for key in expected if served[key] != expected[key]))
        # rule 1 as an invariant: above the cap only with an override recorded on the goals
        # that went over it (each activation at the cap needs one)
        active = [g for g in plan["goals"] if g["status"] == "active"]
        overridden = [g for g in active if g["override_reason"]]
        assert len(active) <= self.model.policy.cap + len(overridden), (self.log, plan["goals"])
        # the caseload row is the same plan seen from the case manager's list (0101: overdue
        # steps are open steps past due on active goals of an open case; a closed case has no
        # review due; measured against today)
        response = await self.client.get(f"/v1/cases?case_manager={self.case_manager}",
                                          headers=self.headers)
        assert response.status == 200, await response.text()
        [row] = (await response.json())["cases"]
        assert self._row(row) == self._expected_row(), (
            f"caseload row after {what}: served {self._row(row)}, model "
            f"{self._expected_row()}; commands so far: {self.log}")

    @staticmethod
    def _row(row: dict[str, Any]) -> dict[str, Any]:
        return {key: row[key] for key in ("version", "status", "risk_level", "next_review_due",
                                          "review_overdue", "overdue_steps", "active_goals")}

    def _expected_row(self) -> dict[str, Any]:
        m = self.model
        assert m is not None
        pending = m.reviews[m.pending] if m.pending else None
        overdue_steps = 0 if m.status == "closed" else sum(
            1 for st_ in m.steps.values()
            if st_.status in ("not_started", "in_progress") and st_.due is not None
            and st_.due < self.today and m.goals[st_.goal_id].status == "active")
        return {"version": m.version, "status": m.status, "risk_level": m.risk,
                "next_review_due": None if pending is None else pending.due.isoformat(),
                # due today is not overdue yet (README: "a review due today and not yet held
                # counts from tomorrow")
                "review_overdue": pending is not None and pending.due < self.today,
                "overdue_steps": overdue_steps, "active_goals": m.active}

    # ---- the model's verdicts ----------------------------------------------------------------

    def expect(self, kind: str, p: dict[str, Any]) -> tuple[Expectation, str, str, Any]:
        """What the documents say of the command, and the request that carries it."""
        m = self.model
        assert m is not None
        path, body, method = "", None, "POST"
        refusals: Refusal = set()
        events: list[str] = []
        schema_invalid = False  # a required body field left out: 422 before anything else
        unknown = False  # the item the path names does not exist: 404
        goals = list(m.goals)
        steps = list(m.steps)

        if kind == "goal":
            body = {"title": "Find steady work", "domain": "employment", "source": p["source"],
                    "status": p["status"]}
            if p["source"] == "participant":
                if p.get("words", True):
                    body["in_their_words"] = "I want a job where I use my hands"
                else:  # rule 2: a participant's goal records their own words
                    refusals.add((422, "in-their-words-required"))
            if p["override"]:
                body["override_reason"] = OVERRIDE
            if p["strength"] is not None:
                strength = _pick(list(m.strengths), p["strength"])
                body["strength_ids"] = [strength]
                # rule 3: goals link only to recorded, not removed, strengths (422 on a body)
                if strength not in m.strengths:
                    refusals.add((422, "unknown-strength"))
                elif m.strengths[strength]:
                    refusals.add((422, "strength-removed"))
            # rule 1: a fourth active goal is refused with a clear 422 unless override_reason;
            # a future goal does not count against the cap
            if p["status"] == "active" and m.active >= m.policy.cap and not p["override"]:
                refusals.add((422, "active-goal-limit"))
            path, events = "/goals", ["GoalSet"]

        elif kind == "goal_status":
            goal_id = _pick(goals, p["goal"])
            path = f"/goals/{goal_id}/status"
            body = {"status": p["status"]}
            if p["reason"]:
                body["reason"] = REASON
            if p["override"]:
                body["override_reason"] = OVERRIDE
            goal = m.goals.get(goal_id)
            if goal is None:
                unknown = True
            else:
                old, new = goal.status, p["status"]
                if old == new:  # 0101: a status change that changes nothing: 409 no_change
                    refusals.add((409, "no-change"))
                else:
                    if old == "discontinued" and new == "achieved":
                        # 0101: "A discontinued goal cannot be achieved directly"
                        refusals.add((409, "goal-discontinued"))
                    # rule 5: discontinuations and reversals (any change from achieved or
                    # discontinued) need a reason
                    if not p["reason"] and (new == "discontinued"
                                            or old in ("achieved", "discontinued")):
                        refusals.add((422, "reason-required"))
                    # 0101 rule 1: moving a goal back to active at the cap needs an override
                    if new == "active" and m.active >= m.policy.cap and not p["override"]:
                        refusals.add((422, "active-goal-limit"))
            events = ["GoalStatusChanged"]

        elif kind == "add_step":
            goal_id = _pick(goals, p["goal"])
            path = f"/goals/{goal_id}/steps"
            body = {"description": "Call the staffing agency", "owner": "participant"}
            if p["support"] is not None:
                support = _pick(list(m.supports), p["support"])
                body = {"description": "Drive Jo to the interview", "owner": "support",
                        "support_id": support}
            if p.get("due") is not None:
                body["due_date"] = (self.today + timedelta(days=p["due"])).isoformat()
            goal = m.goals.get(goal_id)
            if goal is None:
                unknown = True
            else:
                # 0101 rule 4: "No steps are added to achieved or discontinued goals"
                if goal.status in ("achieved", "discontinued"):
                    refusals.add((409, f"goal-{goal.status}"))
                if p["support"] is not None and m.supports.get(body["support_id"], True):
                    refusals.add((422, "unknown-support"))  # unknown or removed support
            events = ["ActionStepAdded"]

        elif kind in ("step_status", "complete"):
            step_id = _pick(steps, p["step"])
            step = m.steps.get(step_id)
            if kind == "complete":
                path, body = f"/steps/{step_id}/complete", {}
                new, reason = "completed", False
            else:
                path = f"/steps/{step_id}/status"
                new, reason = p["status"], p["reason"]
                body = {"status": new, **({"reason": REASON} if reason else {})}
            if step is None:
                unknown = True
            else:
                old = step.status
                goal_status = m.goals[step.goal_id].status
                # 0101 rule 4: a discontinued goal's steps are neither completed nor moved on
                # (only no_longer_needed is recorded)
                if goal_status == "discontinued" and new != "no_longer_needed":
                    refusals.add((409, "goal-discontinued"))
                if old == new:
                    # "completing a step twice" is refused; other no-ops are 409 no_change
                    refusals.add((409, "step-already-completed" if new == "completed"
                                  else "no-change"))
                elif kind == "complete" and old == "no_longer_needed":
                    # rule 5 needs a reason to change a step from no_longer_needed, and the
                    # short form carries none. Undocumented which refusal: the service
                    # answers 409 step-no-longer-needed (the model follows it).
                    refusals.add((409, "step-no-longer-needed"))
                elif not reason and (new == "no_longer_needed"
                                     or old in ("completed", "no_longer_needed")
                                     or (old, new) == ("in_progress", "not_started")):
                    refusals.add((422, "reason-required"))
                # Undocumented: a step of a paused, future or achieved goal may be completed
                # or moved on (only a discontinued goal's steps are refused); the model
                # follows the service.
            events = ["ActionStepCompleted" if new == "completed" else "ActionStepStatusChanged"]

        elif kind == "agree":
            path = "/agreements"
            body = {"participation": "in_person", "present": ["Jo", "Sam (case manager)"],
                    "participant_statement": "This is my plan and I am ready to start",
                    "outcome": p["outcome"]}
            if m.active == 0:  # 0101: needs at least one active goal
                refusals.add((409, "plan-has-no-goals"))
            events = ["PlanAgreed"]
            # only agreed schedules the first review, and only when none is pending
            if p["outcome"] == "agreed" and m.pending is None:
                events.append("ReviewScheduled")

        elif kind in ("hold", "reschedule"):
            review_id = self._review(p["review"])
            review = m.reviews.get(review_id)
            if kind == "hold":
                path = f"/reviews/{review_id}/held"
                body = {"summary": "Jo found work and wants to keep the hours"}
                held_on = self._held_on(p["held_on"], review)
                if held_on is not None:
                    body["held_on"] = held_on.isoformat()
                if p["risk"] is not None:
                    body["risk_level"] = p["risk"]
                events = ["ReviewHeld", "ReviewScheduled"]
            else:
                path = f"/reviews/{review_id}/reschedule"
                due = self._due(p["due"], review)
                body = {"due_date": due.isoformat()}
                if p["reason"]:
                    body["reason"] = REASON
                else:
                    schema_invalid = True  # reschedule's reason is a required field
                events = ["ReviewScheduled"]
            if review is None:
                unknown = True
            elif review.status == "held":
                refusals.add((409, "review-already-held"))
            elif review.status == "cancelled":
                refusals.add((409, "review-not-pending"))
            elif kind == "hold":
                day = held_on or self.today
                if day > self.today:
                    refusals.add((422, "held-on-in-future"))
                # 0101: "never before the day the review was scheduled". Undocumented for a
                # review rescheduled since: the service counts from the day it was first
                # scheduled (the model follows it: scheduled_on is not moved by a reschedule)
                if day < review.scheduled_on:
                    refusals.add((422, "held-on-before-scheduled"))
            else:
                if due < self.today:
                    refusals.add((422, "due-date-in-past"))
                if due == review.due:
                    refusals.add((409, "no-change"))

        elif kind == "close":
            path, body, events = "/close", {}, ["CaseClosed"]
            if p["reason"]:
                body["reason"] = "Jo moved to her sister's in another county"
            else:
                schema_invalid = True

        elif kind == "reopen":
            path, body, events = "/reopen", {}, ["CaseReopened"]
            if p["reason"]:
                body["reason"] = "Jo came back and asked to pick the plan up again"
            else:
                schema_invalid = True
            if m.status == "open":
                refusals.add((409, "case-open"))

        elif kind in ("strength", "support", "requirement"):
            path, body, events = {
                "strength": ("/strengths", {"category": "skill", "description": "Fixes bikes"},
                             ["StrengthRecorded"]),
                "support": ("/supports", {"name": "Maria (sister)"}, ["SupportAdded"]),
                "requirement": ("/requirements", {"title": "Community hours"},
                                ["RequirementRecorded"]),
            }[kind]

        elif kind in ("remove_strength", "remove_support"):
            items = m.strengths if kind == "remove_strength" else m.supports
            noun = "strength" if kind == "remove_strength" else "support"
            item_id = _pick(list(items), p["item"])
            method, path = "DELETE", f"/{noun}s/{item_id}"
            body = {"reason": REASON} if p["reason"] else {}
            schema_invalid = not p["reason"]  # removals need a reason (a required field)
            if item_id not in items:
                unknown = True
            elif items[item_id]:
                refusals.add((409, f"{noun}-removed"))
            events = ["StrengthRemoved" if noun == "strength" else "SupportRemoved"]

        elif kind == "requirement_status":
            requirement_id = _pick(list(m.requirements), p["item"])
            path = f"/requirements/{requirement_id}/status"
            new = p["status"]
            body = {"status": new, **({"reason": REASON} if p["reason"] else {})}
            was = m.requirements.get(requirement_id)
            if was is None:
                unknown = True
            elif was == new:
                refusals.add((409, "no-change"))
            elif not p["reason"] and (new in ("not_met", "waived")
                                      or was in ("met", "not_met", "waived")
                                      or (was, new) == ("in_progress", "pending")):
                refusals.add((422, "reason-required"))
            events = ["RequirementStatusChanged"]
        else:  # pragma: no cover
            raise AssertionError(kind)

        # precedence the documents leave open is left open: any of the refusals that apply
        if schema_invalid:
            return Refuse({(422, None)}), method, path, body
        if m.status == "closed" and kind != "reopen":
            # 0101: "any write but reopen on a closed case (case_closed)"
            options: Refusal = {(409, "case-closed")}
            if unknown:
                options.add((404, None))
            return Refuse(options), method, path, body
        if unknown:
            return Refuse({(404, None)}), method, path, body
        if refusals:
            return Refuse(refusals), method, path, body
        return Accept(events), method, path, body

    def _review(self, which: str) -> str:
        m = self.model
        assert m is not None
        if which == "pending" and m.pending is not None:
            return m.pending
        past = [r for r in m.reviews if r != m.pending]
        if which == "past" and past:
            return past[-1]
        if m.pending is not None and which != "unknown":
            return m.pending
        return str(uuid4())

    def _held_on(self, which: str, review: MReview | None) -> date | None:
        if which == "today":
            return None
        if which == "yesterday":
            return self.today - timedelta(days=1)
        if which == "tomorrow":
            return self.today + timedelta(days=1)
        base = review.scheduled_on if review is not None else self.today
        return base - timedelta(days=1)

    def _due(self, which: str | int, review: MReview | None) -> date:
        if which == "past":
            return self.today - timedelta(days=1)
        if which == "same" and review is not None:
            return review.due
        return self.today + timedelta(days=which if isinstance(which, int) else 10)

    # ---- applying an accepted command to the model ------------------------------------------

    def apply(self, kind: str, p: dict[str, Any], body: Any, answer: dict[str, Any]) -> None:
        m = self.model
        assert m is not None
        created = str(answer.get("id"))  # the item the write created, if any
        data = [e["data"] for e in answer["events"]]
        if kind == "goal":
            active_before = m.active
            at_cap = active_before >= m.policy.cap
            over = OVERRIDE if body["status"] == "active" and at_cap else None
            # 0101: the override is recorded "only when an override actually happened"
            assert data[0].get("override_reason") == over, (self.log, data)
            m.goals[created] = MGoal(created, body["status"], override_reason=over,
                                     strengths=list(body.get("strength_ids", [])))
        elif kind == "goal_status":
            goal = m.goals[answer["events"][0]["data"]["goal_id"]]
            over = OVERRIDE if body["status"] == "active" and m.active >= m.policy.cap else None
            assert data[0].get("override_reason") == over, (self.log, data)
            assert data[0].get("from_status") == goal.status, data
            goal.status = body["status"]
            goal.status_reason = body.get("reason")
            if over:
                goal.override_reason = over
            # Undocumented whether a later status change clears a recorded override; the
            # service keeps it on the goal (the model follows it).
        elif kind == "add_step":
            goal_id = data[0]["goal_id"]
            due = body.get("due_date")
            m.steps[created] = MStep(created, goal_id,
                                     None if due is None else date.fromisoformat(due))
            m.goals[goal_id].steps.append(created)
        elif kind in ("step_status", "complete"):
            step = m.steps[data[0]["step_id"]]
            step.status = "completed" if kind == "complete" else body["status"]
            step.status_reason = None if kind == "complete" else body.get("reason")
        elif kind == "agree":
            m.agreement = (body["outcome"],
                           [g.goal_id for g in m.goals.values() if g.status == "active"])
            if len(data) == 2:
                self._schedule(data[1], self.today + timedelta(days=m.policy.days(m.risk)),
                               m.policy.days(m.risk), m.risk)
        elif kind == "hold":
            review = m.reviews[data[0]["review_id"]]
            review.status = "held"
            held_on = date.fromisoformat(body.get("held_on", self.today.isoformat()))
            if body.get("risk_level"):
                m.risk = body["risk_level"]  # the reassessed risk
            interval = m.policy.days(m.risk)
            # rule 6: holding a review schedules the next, by (reassessed) risk, from held_on
            self._schedule(data[1], held_on + timedelta(days=interval), interval, m.risk)
        elif kind == "reschedule":
            review = m.reviews[data[0]["review_id"]]
            review.due = date.fromisoformat(body["due_date"])
            review.interval = None
            review.risk = m.risk
            assert data[0]["due_date"] == body["due_date"]
        elif kind == "close":
            m.status = "closed"
            if m.pending is not None:  # closing cancels the pending review
                m.reviews[m.pending].status = "cancelled"
                m.pending = None
        elif kind == "reopen":
            # 0101: no review until the plan is agreed again. Undocumented: the earlier
            # agreement stays shown in the plan's "agreement" (the model follows the service)
            m.status = "open"
        elif kind == "strength":
            m.strengths[created] = False
        elif kind == "support":
            m.supports[created] = False
        elif kind == "requirement":
            m.requirements[created] = "pending"
        elif kind == "remove_strength":
            m.strengths[data[0]["strength_id"]] = True
        elif kind == "remove_support":
            m.supports[data[0]["support_id"]] = True
        elif kind == "requirement_status":
            m.requirements[data[0]["requirement_id"]] = body["status"]

    def _schedule(self, event: dict[str, Any], due: date, interval: int, risk: str) -> None:
        m = self.model
        assert m is not None
        assert (event["due_date"], event["interval_days"], event["risk_level"]) == (
            due.isoformat(), interval, risk), (self.log, event)
        review_id = event["review_id"]
        assert review_id not in m.reviews
        m.reviews[review_id] = MReview(review_id, due, self.today, risk, interval)
        m.pending = review_id

    # ---- one command ------------------------------------------------------------------------

    async def run(self, command: Cmd) -> None:
        kind, p = command
        if kind == "wait":
            self.clock.advance(days=p["days"])
            self.log.append(f"wait {p['days']}d")
            return
        expectation, method, path, body = self.expect(kind, p)
        status, answer = await self.request(method, path, body)
        self.log.append(f"{kind} {p} -> {status}")
        what = f"{kind} {p} ({method} {path} {body})"
        if isinstance(expectation, Accept):
            assert status in (200, 201), (
                f"the documents accept {what}; the service answered {status} {answer}; "
                f"commands so far: {self.log}")
            assert [e["type"] for e in answer["events"]] == expectation.events, (what, answer)
            assert self.model is not None
            self.model.version += len(expectation.events)
            assert answer["version"] == self.model.version, (what, answer)
            if isinstance(body, dict) and body.get("reason"):
                # design.md: the history shows each event "with actor, reason, time"
                assert answer["events"][0]["reason"] == body["reason"], (what, answer)
            self.apply(kind, p, body, answer)
            self.seen[f"accepted {kind}"] += 1
        else:
            kind_of = str(answer.get("type", "")).rsplit("/", 1)[-1]
            ok = any(status == s and (k is None or kind_of == k)
                     for s, k in expectation.options)
            assert ok, (f"the documents refuse {what} with one of "
                        f"{sorted(expectation.options, key=str)}; the service answered "
                        f"{status} {answer}; commands so far: {self.log}")
            # a clear 422 names the field to fill (rule 1: override_reason; rule 5: reason)
            named = {"active-goal-limit": "body.override_reason",
                     "reason-required": "body.reason"}.get(kind_of)
            if named is not None:
                assert [e["field"] for e in answer["errors"]] == [named], (what, answer)
            self.seen[f"refused {kind} {status} {kind_of}"] += 1
        await self.compare(what)


# --------------------------------------------------------------------------------------------
# the service, on a loop of the test's own (hypothesis drives a synchronous test)
# --------------------------------------------------------------------------------------------


@dataclass
class Service:
    loop: asyncio.AbstractEventLoop
    client: TestClient[Any, Any]
    clock: FakeClock
    token: TokenFactory
    policy: Policy
    runs: int = 0


def _policy_dir(tmp_path: Path, policy: Policy) -> dict[str, str]:
    if policy == DEFAULTS:
        return {}
    (tmp_path / "agency-a.json").write_text(json.dumps({
        "max_active_goals": policy.cap, "review_interval_days": dict(policy.interval),
        "timezone": policy.timezone}))
    return {"CASETRAIL_POLICY_DIR": str(tmp_path)}


@pytest.fixture(params=["default policy", "an agency's own policy"])
def service(request: pytest.FixtureRequest, fresh_database_url: str, token: TokenFactory,
            tmp_path: Path) -> Iterator[Service]:
    policy = DEFAULTS if request.param == "default policy" else KIRITIMATI
    loop = asyncio.new_event_loop()
    # 20:00 UTC: already the next day in Kiritimati
    clock = FakeClock(datetime(2026, 3, 2, 20, 0, tzinfo=UTC))

    async def start() -> TestClient[Any, Any]:
        app = create_app(make_settings(fresh_database_url, **_policy_dir(tmp_path, policy)),
                         clock=clock)
        started = TestClient(TestServer(app))
        await started.start_server()
        return started

    client = loop.run_until_complete(start())
    try:
        yield Service(loop, client, clock, token, policy)
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def play(service: Service, risk: str, commands: list[Cmd]) -> Counter[str]:
    service.runs += 1
    driver = Driver(service.client, service.token, service.clock, f"cm-run-{service.runs}",
                    service.policy)

    async def go() -> None:
        await driver.open(risk)
        for command in commands:
            await driver.run(command)
        await driver.travel()

    service.loop.run_until_complete(go())
    return driver.seen


# --------------------------------------------------------------------------------------------
# generated command sequences
# --------------------------------------------------------------------------------------------

index = st.integers(0, 11)
flag = st.booleans()


def cmd(kind: str, **params: st.SearchStrategy[Any]) -> st.SearchStrategy[Cmd]:
    return st.fixed_dictionaries(params).map(lambda p: (kind, p))


HOLD = cmd("hold", review=st.sampled_from(["pending", "pending", "pending", "past", "unknown"]),
           held_on=st.sampled_from(["today", "today", "today", "yesterday", "tomorrow",
                                    "before_scheduled"]),
           risk=st.none() | st.sampled_from(RISKS))
STEP_STATUS = cmd("step_status", step=index, status=st.sampled_from(STEP_STATUSES),
                  reason=flag)
GOAL_STATUS = cmd("goal_status", goal=index, status=st.sampled_from(GOAL_STATUSES),
                  reason=flag, override=flag)
WAIT = cmd("wait", days=st.integers(1, 45))
mostly = st.sampled_from([True, True, True, False])
REOPEN_CMD = cmd("reopen", reason=mostly)

COMMANDS: st.SearchStrategy[Cmd] = st.one_of(
    cmd("goal", status=st.sampled_from(["active", "active", "future"]), override=flag,
        strength=st.none() | index, source=st.sampled_from(["participant", "court"]),
        words=mostly),
    GOAL_STATUS, GOAL_STATUS, GOAL_STATUS,
    cmd("add_step", goal=index, support=st.none() | st.none() | index,
        due=st.none() | st.integers(0, 40)),
    STEP_STATUS, STEP_STATUS,
    cmd("complete", step=index),
    cmd("agree", outcome=st.sampled_from(["agreed", "agreed", "did_not_agree",
                                          "could_not_answer"])),
    HOLD, HOLD, HOLD,
    cmd("reschedule", review=st.sampled_from(["pending", "pending", "past", "unknown"]),
        due=st.sampled_from(["past", "same"]) | st.integers(0, 120), reason=mostly),
    st.one_of(cmd("close", reason=mostly), WAIT),
    REOPEN_CMD, REOPEN_CMD, REOPEN_CMD,
    cmd("strength"), cmd("support"), cmd("requirement"),
    cmd("remove_strength", item=index, reason=mostly),
    cmd("remove_support", item=index, reason=mostly),
    cmd("requirement_status", item=index, status=st.sampled_from(REQUIREMENT_STATUSES),
        reason=flag),
    WAIT, WAIT,
)


@pytest.mark.timeout(240)
def test_generated_commands_follow_the_documented_rules(service: Service) -> None:
    """Every generated command is accepted or refused as the documents say, and the plan the
    service serves after it is the model's plan."""
    seen: Counter[str] = Counter()

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(risk=st.sampled_from(RISKS), commands=st.lists(COMMANDS, min_size=30, max_size=45))
    def run(risk: str, commands: list[Cmd]) -> None:
        # each run starts from a plan with something in it: two goals, a step each, agreed
        start = [g(), g("future", source="participant"), step(0), step(1), agree()]
        seen.update(play(service, risk, start + commands))

    run()
    print("\n".join(f"{n:5} {key}" for key, n in sorted(seen.items())))
    # a guard against a generator whose interesting commands never land
    for wanted in ("accepted goal_status", "accepted agree", "accepted hold",
                   "accepted reopen", "accepted complete", "accepted reschedule"):
        assert seen[wanted] > 0, (wanted, sorted(seen.items()))
    # (the named scenarios below reach the rarer refusals on purpose)
    for wanted in ("active-goal-limit", "reason-required", "case-closed", "no-change"):
        assert any(wanted in key for key in seen), (wanted, seen)


# --------------------------------------------------------------------------------------------
# scenarios the brief names, run through the same model
# --------------------------------------------------------------------------------------------


def g(status: str = "active", *, override: bool = False, source: str = "court") -> Cmd:
    return ("goal", {"status": status, "override": override, "strength": None, "source": source})


def gs(goal: int, status: str, *, reason: bool = False, override: bool = False) -> Cmd:
    return ("goal_status", {"goal": goal, "status": status, "reason": reason,
                            "override": override})


def step(goal: int, due: int | None = None) -> Cmd:
    return ("add_step", {"goal": goal, "support": None, "due": due})


def ss(step_index: int, status: str, *, reason: bool = False) -> Cmd:
    return ("step_status", {"step": step_index, "status": status, "reason": reason})


def done(step_index: int) -> Cmd:
    return ("complete", {"step": step_index})


def agree(outcome: str = "agreed") -> Cmd:
    return ("agree", {"outcome": outcome})


def hold(review: str = "pending", held_on: str = "today", risk: str | None = None) -> Cmd:
    return ("hold", {"review": review, "held_on": held_on, "risk": risk})


def wait(days: int) -> Cmd:
    return ("wait", {"days": days})


CLOSE: Cmd = ("close", {"reason": True})
REOPEN: Cmd = ("reopen", {"reason": True})

SCENARIOS: dict[str, tuple[str, list[Cmd]]] = {
    # rule 1 through a status change, not only through creation: a paused goal resumed as the
    # fourth active one needs override_reason, recorded on the change
    "fourth active goal by status change": ("moderate", [
        g(), gs(0, "paused"), g(), g(), g(), gs(0, "active"), gs(0, "active", override=True),
        gs(1, "paused"), gs(1, "active"), gs(1, "active", override=True)]),
    "future goals do not count against the cap": ("low", [
        g(), g(), g(), g("future"), g("future"), g(), gs(3, "active"),
        gs(3, "active", override=True), gs(0, "future"), gs(4, "active")]),
    "an override not needed is not recorded": ("low", [
        g(override=True), gs(0, "paused"), gs(0, "active", override=True)]),
    "reactivating from every status": ("high", [
        g(), g(), g(), gs(0, "achieved"), gs(0, "active"), gs(0, "active", reason=True),
        gs(1, "discontinued"), gs(1, "discontinued", reason=True), gs(1, "achieved"),
        gs(1, "achieved", reason=True), gs(1, "active", reason=True),
        gs(1, "active", reason=True, override=True), gs(2, "paused"), g(), gs(2, "active"),
        gs(2, "active", override=True)]),
    "steps of paused, achieved and discontinued goals": ("moderate", [
        g(), step(0), step(0), step(0), gs(0, "paused"), done(0), done(0),
        ss(1, "in_progress"), gs(0, "achieved"), step(0), done(1), gs(0, "discontinued",
                                                                        reason=True),
        step(0), ss(2, "in_progress"), done(2), ss(2, "no_longer_needed"),
        ss(2, "no_longer_needed", reason=True), gs(0, "active", reason=True), step(0),
        done(2), ss(2, "in_progress", reason=True), done(2)]),
    "step reversals need a reason": ("moderate", [
        g(), step(0), ss(0, "in_progress"), ss(0, "not_started"),
        ss(0, "not_started", reason=True), ss(0, "completed"), ss(0, "completed"),
        ss(0, "in_progress"), ss(0, "in_progress", reason=True), ss(0, "cannot_be_done_yet"),
        ss(0, "no_longer_needed"), ss(0, "no_longer_needed", reason=True), done(0),
        ss(0, "not_started", reason=True)]),
    "only agreed schedules the first review": ("high", [
        agree(), g(), agree("did_not_agree"), agree("could_not_answer"), agree(),
        wait(3), agree()]),
    "held reviews schedule the next by risk": ("moderate", [
        g(), agree(), wait(20), hold(risk="high"), hold("past"), wait(30),
        hold(held_on="tomorrow"), hold(held_on="yesterday", risk="low"), hold(risk="low"),
        hold(held_on="before_scheduled"), hold("unknown")]),
    "close and reopen": ("low", [
        g(), agree(), wait(10), CLOSE, CLOSE, g(), agree(), hold(), hold("past"),
        ("close", {"reason": False}), ("reopen", {"reason": False}), REOPEN, REOPEN,
        hold("past"), agree("did_not_agree"), agree(), wait(5), hold(risk="moderate")]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_named_scenarios_follow_the_documented_rules(service: Service, name: str) -> None:
    risk, commands = SCENARIOS[name]
    seen = play(service, risk, commands)
    assert sum(n for key, n in seen.items() if key.startswith("accepted")) > 0
