"""Demo caseload for ``casetrail dev``: a few participants with plans in different states.

Loaded through the application layer (the same rules as the API), once: a second start finds
the demo cases and adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid5

from schemas import api
from services.common.auth import Principal, Role
from services.records.application.cases import CaseCommands, WriteRequest
from services.records.domain import commands as cmd
from services.records.store.events import Clock

DEMO_AGENCY = "demo-agency"
DEMO_CASE_MANAGER = "cm-demo"
_NAMESPACE = UUID("0f7d8a4e-3b1c-4e2a-9d6f-5a4b3c2d1e0f")


def _id(*parts: str) -> UUID:
    return uuid5(_NAMESPACE, "/".join(parts))


class _Plan:
    """Writes one demo case in order, with stable ids so the demo loads only once."""

    def __init__(self, commands: CaseCommands, clock: Clock, name: str) -> None:
        self.commands = commands
        self.clock = clock
        self.name = name
        self.case_id = _id(name)
        self.who = Principal(DEMO_CASE_MANAGER, Role.CASE_MANAGER, DEMO_AGENCY)

    def days(self, offset: int) -> str:
        return (self.clock().date() + timedelta(days=offset)).isoformat()

    async def do(self, command: cmd.AnyCommand) -> None:
        await self.commands.execute(WriteRequest(self.case_id, command, self.who))

    async def open(self, risk: str, **participant: Any) -> None:
        await self.do(cmd.OpenCase(agency=DEMO_AGENCY, body=api.OpenCase.model_validate({
            "participant": {"name": self.name, **participant},
            "case_manager": DEMO_CASE_MANAGER, "risk_level": risk})))

    async def strengths(self, *items: tuple[str, str, str | None]) -> list[UUID]:
        ids = []
        for category, description, words in items:
            strength_id = _id(self.name, "strength", description)
            await self.do(cmd.RecordStrength(strength_id, api.StrengthInput.model_validate(
                {"category": category, "description": description, "in_their_words": words})))
            ids.append(strength_id)
        return ids

    async def goal(self, title: str, domain: str, words: str, strengths: Sequence[UUID],
                   **extra: Any) -> UUID:
        goal_id = _id(self.name, "goal", title)
        await self.do(cmd.SetGoal(goal_id, api.GoalInput.model_validate({
            "title": title, "domain": domain, "source": "participant", "in_their_words": words,
            "strength_ids": [str(s) for s in strengths], **extra})))
        return goal_id

    async def step(self, goal_id: UUID, description: str, owner: str, due_in_days: int,
                   **extra: Any) -> UUID:
        step_id = _id(self.name, "step", description)
        await self.do(cmd.AddActionStep(step_id, goal_id, api.StepInput.model_validate({
            "description": description, "owner": owner, "due_date": self.days(due_in_days),
            **extra})))
        return step_id

    async def agree(self, statement: str) -> None:
        await self.do(cmd.AgreePlan(_id(self.name, "review", "1"), api.AgreementInput(
            participation="in_person", present=[self.name, "Case manager"],
            participant_statement=statement)))


async def load_demo(commands: CaseCommands, clock: Clock) -> bool:
    """Load the demo caseload unless it is there already; True when it was loaded now."""
    if await commands.load(_id("Jordan Rivera")) is not None:
        return False
    await _jordan(_Plan(commands, clock, "Jordan Rivera"))
    await _ana(_Plan(commands, clock, "Ana Lopez"))
    await _sam(_Plan(commands, clock, "Sam Chen"))
    await _marcus(_Plan(commands, clock, "Marcus Bell"))
    return True


async def _jordan(plan: _Plan) -> None:
    """High risk, plan agreed, first small win done, one step running late."""
    await plan.open("high", preferred_name="Jo", pronouns="they/them", email="jo@example.org")
    skill, support = await plan.strengths(
        ("skill", "Repairs bicycles for neighbours", "I can fix almost any bike"),
        ("natural_support", "Aunt Maria offers a room and rides", None))
    work = await plan.goal("Steady work in a bike shop", "employment",
                           "I want a job where I use my hands", [skill],
                           why_it_matters="So I can help pay rent at my aunt's")
    done = await plan.step(work, "Write a one-page CV with the job centre", "participant", 3)
    await plan.step(work, "Visit two bike shops on Main Street", "participant", -2)
    await plan.goal("Keep my room at Aunt Maria's", "housing",
                    "I don't want to move again this year", [support])
    await plan.do(cmd.AddSupport(_id(plan.name, "support", "maria"), api.SupportInput(
        name="Aunt Maria", relationship="aunt")))
    await plan.do(cmd.RecordRequirement(_id(plan.name, "requirement", "report"),
                                        api.RequirementInput(title="Report monthly")))
    await plan.agree("This is my plan. Bikes first, then the rest.")
    await plan.do(cmd.CompleteActionStep(done, api.StepCompleteInput(
        note="Jo finished the CV in one afternoon")))


async def _ana(plan: _Plan) -> None:
    """Moderate risk: a goal achieved and celebrated."""
    await plan.open("moderate", email="ana@example.org")
    (coping,) = await plan.strengths(
        ("coping_strategy", "Walks in the park when stressed", "Walking clears my head"))
    health = await plan.goal("Regular check-ups", "health", "I want to feel strong again",
                             [coping])
    visit = await plan.step(health, "Book a GP appointment", "participant", 5)
    await plan.agree("I'm in. Health comes first for me.")
    await plan.do(cmd.CompleteActionStep(visit, api.StepCompleteInput(note="Booked and went")))
    await plan.do(cmd.ChangeGoalStatus(health, api.GoalStatusInput(status="achieved")))
    await plan.do(cmd.AddNote(_id(plan.name, "note", "1"), api.NoteInput(
        text="Ana chose the clinic near her work and kept the appointment.")))


async def _sam(plan: _Plan) -> None:
    """Low risk, still talking it through: the participant did not agree yet."""
    await plan.open("low")
    (interest,) = await plan.strengths(("interest", "Loves cooking for friends", None))
    await plan.goal("Cook at the community kitchen", "community",
                    "I'd like to cook for more people", [interest])
    await plan.do(cmd.AgreePlan(_id(plan.name, "review", "1"), api.AgreementInput(
        participation="phone", present=[plan.name, "Case manager"],
        participant_statement="I need a week to think about it",
        outcome="did_not_agree")))


async def _marcus(plan: _Plan) -> None:
    """A closed case: the plan Marcus agreed to, completed with the goal he set."""
    await plan.open("moderate")
    (course,) = await plan.strengths(
        ("past_success", "Finished a welding course in 2023", "I stuck with it to the end"))
    work = await plan.goal("Work as a welder", "employment", "I want to use my welding ticket",
                           [course])
    applying = await plan.step(work, "Apply to three fabrication shops", "participant", 7)
    await plan.agree("Welding is what I'm good at. Let's get me working.")
    await plan.do(cmd.CompleteActionStep(applying, api.StepCompleteInput(
        note="Marcus had two interviews the same week")))
    await plan.do(cmd.ChangeGoalStatus(work, api.GoalStatusInput(status="achieved")))
    await plan.do(cmd.CloseCase(body=api.CloseInput(
        reason="Plan completed: Marcus started as a welder at a fabrication shop",
        outcome="completed")))
