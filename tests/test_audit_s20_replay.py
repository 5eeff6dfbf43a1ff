"""Audit (s20): "Replaying the feed from zero rebuilds the same schedule" and "handles each
event idempotently (at-least-once in, no duplicate mail out)" (design.md, Notifier service),
over richer case histories than the single story of tests/test_notifier_feed.py.

What is promised (README "What it guarantees", docs/decisions/0200, 0201, 0202):
- replaying the feed over an existing schema changes nothing and sends nothing;
- replaying it from zero into an empty schema rebuilds exactly the same schedule (the same
  notices, same keys, ids, Message-IDs and due times);
- the notifier's schema is its only memory of what it sent: after a rebuild, a notice called
  for and due before the new schema began is cancelled with that reason, never sent again
  ("So a rebuild sends nothing twice"); what was due but unsent when the old schema was lost
  is not sent either (the documented price), and everything falling due later is sent, once.

Each test drives two notifiers from the same records service and the same injected clock:
the *subject* loses its schema (``DROP SCHEMA notifier CASCADE``, as the existing rebuild
tests do) and is rebuilt from the feed; the *control* (a database of its own, so a schema of
its own) never loses anything. The control says what "the same schedule" is.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.notifier.schedule import FEED_CHECKPOINT
from services.notifier.store.cases import reset_checkpoint
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.database_supply import DatabaseSupply
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of

BEFORE_HISTORY = "fell due before this notifier's record of what it sent begins"
# snapshot tuple positions (services.notifier.store.notifications.schedule_snapshot)
KEY, KIND, CASE, AGENCY, ROLE, RECIPIENT, DUE, STATUS, CONTEXT = range(9)

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


async def both(*steps: Awaitable[object]) -> None:
    """The same step taken by the subject and the control side by side: they share nothing
    but the records service (read only here) and the clock (not moved meanwhile), so the
    order between them does not matter, and the test waits on one while the other works.
    Both run to the end; then the first failure is raised, as it was raised."""
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


# --------------------------------------------------------------------------------------------
# the harness: a subject that loses its schema, a control that never does
# --------------------------------------------------------------------------------------------


@pytest.fixture
def control_database_url(database_supply: DatabaseSupply) -> Iterator[str]:
    """A second migrated database, made and dropped as ``fresh_database_url`` is: the
    control notifier's schema lives there, apart from the subject's."""
    with database_supply.borrowed() as url:
        yield url


@pytest.fixture
async def control_smtp() -> AsyncIterator[SmtpServer]:
    server = await SmtpServer().start()
    yield server
    await server.stop()


@dataclass
class Pair:
    aiohttp_client: Client
    database_url: str
    records: Records
    clock: FakeClock
    token: TokenFactory
    subject: NotifierRig
    control: NotifierRig
    smtp: SmtpServer
    control_smtp: SmtpServer
    prefs: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    began: datetime | None = None
    sent_before_loss: dict[str, dict[str, Any]] = field(default_factory=dict)
    mail_before_loss: int = 0

    @property
    def rigs(self) -> tuple[NotifierRig, NotifierRig]:
        return self.subject, self.control

    async def set_prefs(self, user: str, claims: dict[str, Any], **body: Any) -> None:
        """The same preferences on both (and again on the subject once it is rebuilt)."""
        self.prefs.append((user, claims, body))
        await both(*(rig.set_prefs(user, self.token(**claims), **body) for rig in self.rigs))

    async def follow(self) -> None:
        # as NotifierRig.catch_up: first wait until every event written so far is visible in
        # the feed; then both read it
        await self.subject.feed_shows_every_event()
        await both(*(rig.notifier.subscriber.catch_up() for rig in self.rigs))

    async def drive(self) -> None:
        await both(*(dispatch_round(rig) for rig in self.rigs))

    async def at(self, moment: datetime) -> None:
        assert moment >= self.clock.now, (moment, self.clock.now)
        self.clock.now = moment
        await self.follow()
        await self.drive()

    async def lose_and_rebuild(self, rebuild_at: datetime, **settings: object) -> None:
        """The subject's schema is lost now and rebuilt from the feed at ``rebuild_at``,
        its readers' preferences put back as they were."""
        self.sent_before_loss = {r["key"]: r for r in await self.subject.rows()
                                 if delivered(r)}
        self.mail_before_loss = len(self.smtp.received)
        await self.subject.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
        self.clock.now = rebuild_at
        self.subject = await make_rig(self.aiohttp_client, self.database_url,
                                      self.records.client, self.smtp, self.clock, **settings)
        self.began = await self.subject.notifier.pool.fetchval(
            "SELECT began_at FROM notifier.history")
        for user, claims, body in self.prefs:
            await self.subject.set_prefs(user, self.token(**claims), **body)
        await self.follow()

    async def next_moment(self) -> datetime | None:
        """The next moment a pending row of either notifier waits for."""
        found = [at for at in await asyncio.gather(*(
            rig.notifier.pool.fetchval(
                "SELECT min(not_before) FROM notifier.notifications"
                " WHERE status IN ('scheduled', 'failed') AND not_before > $1", self.clock.now)
            for rig in self.rigs)) if at is not None]
        return min(found) if found else None

    async def run_out(self, limit: int = 200) -> None:
        """Drive both to the end of everything scheduled."""
        for _ in range(limit):
            moment = await self.next_moment()
            if moment is None:
                return
            await self.at(moment + timedelta(seconds=1))
        raise AssertionError("the schedule never ran out")


async def dispatch_round(rig: NotifierRig) -> None:
    """One notifier's round at the clock's moment: what is due, the digests, what is due."""
    await rig.dispatch()
    await rig.notifier.dispatcher.send_digests()
    await rig.dispatch()


@pytest.fixture
async def pair(control_database_url: str, aiohttp_client: Client, fresh_database_url: str,
               records: Records, rig: NotifierRig, smtp: SmtpServer, control_smtp: SmtpServer,
               clock: FakeClock, token: TokenFactory) -> Pair:
    control = await make_rig(aiohttp_client, control_database_url, records.client,
                             control_smtp, clock)
    return Pair(aiohttp_client, fresh_database_url, records, clock, token, rig, control,
                smtp, control_smtp)


def delivered(row: dict[str, Any]) -> bool:
    """A notice that reached its reader by mail (alone or in a digest): not a digest row
    itself, nor a group row handed on to each supervisor."""
    return bool(row["status"] == "sent" and row["kind"] != "daily_digest"
                and row["recipient_role"] != "supervisors")


def message_ids(smtp: SmtpServer) -> list[str]:
    return [str(m["Message-ID"]) for m in smtp.received]


def duplicates(values: list[str]) -> list[str]:
    return sorted({v for v in values if values.count(v) > 1})


def at(day: str, hour: int, minute: int = 0) -> datetime:
    d = date.fromisoformat(day)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=UTC)


async def pending_schedule(rig: NotifierRig, case: str, token: str) -> list[dict[str, Any]]:
    """GET /v1/schedule?case_id= as a supervisor reads it."""
    response = await rig.client.get("/v1/schedule", params={"case_id": case},
                                    headers=bearer(token))
    assert response.status == 200, await response.text()
    return list((await response.json())["pending"])


async def assert_rebuild_matches_control(p: Pair, cases: list[str]) -> None:
    """Right after a rebuild (and a dispatch at the rebuild's moment) the subject holds the
    same notices as the control, row for row where the feed alone decides them."""
    assert p.began is not None
    control = {s[KEY]: s for s in await p.control.snapshot()}
    subject = {s[KEY]: s for s in await p.subject.snapshot()}
    assert sorted(subject) == sorted(control), "the rebuilt schedule has other notices"
    ids = {r["key"]: (r["id"], r["message_id"], r["due_at"]) for r in await p.control.rows()
           if r["parent_id"] is None and r["kind"] != "daily_digest"}
    rebuilt = {r["key"]: (r["id"], r["message_id"], r["due_at"]) for r in await p.subject.rows()
               if r["parent_id"] is None and r["kind"] != "daily_digest"}
    assert rebuilt == ids, "a notice changed its id, Message-ID or due time in the rebuild"
    # what still waits in the control and is due from the rebuild on is the same, in full
    waiting = {k: s for k, s in control.items() if s[STATUS] == "scheduled"
               and s[DUE] >= p.began}
    assert {k: subject[k] for k in waiting} == waiting
    # what the case ended is ended in both
    control_rows = {r["key"]: r for r in await p.control.rows()}
    ended = sorted(k for k, r in control_rows.items()
                   if r["status"] == "cancelled" and r["cancelled_by_case"])
    assert {k: subject[k][STATUS] for k in ended} == dict.fromkeys(ended, "cancelled")
    # GET /v1/schedule answers the same for every case (what was still due, from the rebuild)
    supervisor = p.token(role="supervisor", sub="sup-audit")
    for case in cases:
        want = [_schedule_view(v) for v in await pending_schedule(p.control, case, supervisor)
                if datetime.fromisoformat(v["due_at"]) >= p.began]
        got = [_schedule_view(v) for v in await pending_schedule(p.subject, case, supervisor)]
        assert got == want, case


def _schedule_view(view: dict[str, Any]) -> tuple[Any, ...]:
    return (view["key"], view["kind"], view["recipient"], view["recipient_role"],
            view["due_at"], view["deliver_after"], view["status"], view["message_id"])


async def assert_nothing_sent_twice_and_nothing_due_later_lost(p: Pair) -> None:
    """After both ran out: no Message-ID reached the subject's mail server twice; no notice
    delivered before the loss was delivered again; everything the control delivered that fell
    due from the rebuild on, the subject delivered too; what fell due before it and was not
    delivered is cancelled with the documented reason."""
    assert p.began is not None
    assert duplicates(message_ids(p.smtp)) == [], "the same message reached the server twice"
    assert duplicates(message_ids(p.control_smtp)) == [], "the control sent a message twice"
    after = {r["key"]: r for r in await p.subject.rows() if delivered(r)}
    again = sorted(set(after) & set(p.sent_before_loss))
    assert again == [], f"delivered before the loss and again after the rebuild: {again}"
    control = {r["key"]: r for r in await p.control.rows() if delivered(r)}
    owed = {k for k, r in control.items() if r["due_at"] >= p.began}
    assert owed - set(after) == set(), "due after the rebuild, delivered by the control only"
    assert set(after) - set(control) == set(), "delivered by the rebuilt notifier only"
    lost = set(control) - set(after) - set(p.sent_before_loss)
    subject_rows = {r["key"]: r for r in await p.subject.rows()}
    for key in sorted(lost):
        row = subject_rows.get(key)
        if row is None:  # a supervisor's copy, handed on from a row now cancelled
            parent = key.rsplit(":", 1)[0]
            row = subject_rows[parent]
        assert row["status"] == "cancelled", (key, row["status"], row["last_error"])
        assert BEFORE_HISTORY in str(row["last_error"]), (key, row["last_error"])


# --------------------------------------------------------------------------------------------
# a rich history, written through the records API
# --------------------------------------------------------------------------------------------


async def revise_goal_target(records: Records, case: str, goal: str, target: str) -> None:
    await records.call("PATCH", f"/v1/cases/{case}/goals/{goal}",
                       {"target_date": target, "reason": "agreed a new date"})


async def reschedule(records: Records, case: str, review: str, due: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/reviews/{review}/reschedule",
                       {"due_date": due, "reason": "Jo is away that week"})


async def transfer(records: Records, case: str, to: str, by: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/transfer",
                       {"case_manager": to, "reason": "caseload balancing"}, token=by)


async def rich_history(p: Pair) -> list[str]:
    """Three cases over four weeks: mail sent, mail waiting (a digest, quiet hours, a zone
    behind), notices ended by the case; the preferences of four readers."""
    r, token = p.records, p.token
    await p.set_prefs("cm-1", {})
    await p.set_prefs("cm-2", {"sub": "cm-2"}, delivery="daily_digest",
                      timezone="Europe/Berlin", quiet_hours={"start": "20:00", "end": "07:00"})
    await p.set_prefs("sup-1", {"role": "supervisor", "sub": "sup-1"},
                      timezone="America/New_York")
    a = await r.open_case()
    await p.set_prefs("zoe", {"role": "participant", "sub": "zoe", "cases": [a]})
    await r.call("POST", f"/v1/cases/{a}/strengths",
                 {"category": "skill", "description": "Good with tools"}, 201)
    g1 = await r.goal(a, target_date="2026-04-20")
    g2 = await r.goal(a, "Keep my flat", "A home of my own", target_date="2026-06-01")
    s1 = await r.step(a, g1, "Visit the job centre", due_date="2026-03-10")
    s2 = await r.step(a, g1, "Update my CV", due_date="2026-03-20")
    s3 = await r.step(a, g1, "Call the staffing agency", due_date="2026-04-05")
    await r.step(a, g2, "Ask about the rent", due_date="2026-05-15")
    review_a = await r.agree(a, add_goal=False)  # due 1 May
    b = await r.open_case(risk="high")
    await r.step(b, await r.goal(b), "Phone the clinic", due_date="2026-03-05")
    await r.agree(b, add_goal=False)  # due 1 April
    r2 = Records(r.client, token(sub="cm-2"))  # cm-2 writes their own caseload
    c = await r2.open_case(case_manager="cm-2", risk="low")
    review_c = await r2.agree(c)  # due 31 May
    await r.complete(a, s1)
    await p.at(at("2026-03-02", 9, 5))  # the small win goes at once
    await r.revise_step(a, s2, "2026-03-25")
    await revise_goal_target(r, a, g1, "2026-04-25")
    await p.at(at("2026-03-06", 10))  # the clinic step's nudge
    await r.close(b)
    p.clock.now = at("2026-03-12", 9)
    await r.reopen(b)
    await r.agree(b, add_goal=False)  # a new review, 11 April
    await p.at(at("2026-03-12", 9, 30))
    p.clock.now = at("2026-03-20", 10)
    await r2.hold_review(c, review_c)
    p.clock.now = at("2026-03-21", 10)
    await r2.close(c)
    p.clock.now = at("2026-03-25", 12)
    await transfer(r, a, "cm-2", token())  # a handover into cm-2's digest
    await r2.complete(a, s3)  # and a small win
    await p.at(at("2026-03-26", 7, 30))  # cm-2's digest (08:00 in Berlin) carries both
    await p.at(at("2026-03-26", 10))  # the CV step's nudge, now for cm-2's next digest
    await p.at(at("2026-03-27", 7, 30))  # which carries it
    await r2.achieve(a, g1)
    await p.at(at("2026-03-27", 10))  # Jo hears of the milestone; cm-2's copy waits
    await transfer(r, a, "cm-1", token(sub="cm-2"))  # and follows the case back to cm-1
    await reschedule(r, a, review_a, "2026-05-08")
    await p.at(at("2026-03-27", 12))
    return [a, b, c]


async def test_a_rich_history_rebuilt_hours_later_is_the_same_schedule_and_sends_nothing_twice(
        pair: Pair) -> None:
    cases = await rich_history(pair)
    assert len(pair.smtp.received) == len(pair.control_smtp.received) >= 5
    # the loss, at 12:30, and the rebuild at 15:00
    await pair.lose_and_rebuild(at("2026-03-27", 15))
    await pair.drive()
    assert len(pair.smtp.received) == pair.mail_before_loss, "the rebuild sent mail at once"
    await assert_rebuild_matches_control(pair, cases)
    for key in pair.sent_before_loss:  # ended by the case later in the feed, or held back
        [row] = await pair.subject.rows(key=key)
        assert row["status"] == "cancelled", (key, row["status"], row["last_error"])
        assert row["cancelled_by_case"] or BEFORE_HISTORY in str(row["last_error"]), key
    await pair.run_out()
    await assert_nothing_sent_twice_and_nothing_due_later_lost(pair)
    # every message the control sent after the rebuild, the subject sent too (same Message-ID)
    before = set(message_ids(pair.smtp)[:pair.mail_before_loss])
    assert set(message_ids(pair.smtp)[pair.mail_before_loss:]) == {
        m for m in message_ids(pair.control_smtp)[pair.mail_before_loss:] if m not in before}
    digests = [m for m in pair.smtp.received[:pair.mail_before_loss]
               if str(m["Subject"]).startswith("Your Casetrail summary")]
    assert len(digests) == 2  # the story did reach cm-2's digests before the loss


async def test_replaying_twice_over_the_schema_and_rebuilding_twice_sends_nothing_twice(
        pair: Pair) -> None:
    cases = await rich_history(pair)
    built = await pair.subject.snapshot()
    statuses = {r["key"]: (r["status"], r["attempts"]) for r in await pair.subject.rows()}
    for _ in range(2):  # the feed again from the start, over the existing schema
        await reset_checkpoint(pair.subject.notifier.pool, FEED_CHECKPOINT, pair.clock())
        await pair.follow()
        await pair.drive()
        assert await pair.subject.snapshot() == built
        assert {r["key"]: (r["status"], r["attempts"])
                for r in await pair.subject.rows()} == statuses
    mail = len(pair.smtp.received)
    await pair.lose_and_rebuild(at("2026-03-27", 13))
    first = await pair.subject.rows()
    await pair.drive()
    await pair.at(at("2026-03-27", 18))
    await pair.lose_and_rebuild(at("2026-03-27", 20))  # and once more, later that day
    assert [(r["key"], r["id"], r["message_id"], r["due_at"]) for r in first] == [
        (r["key"], r["id"], r["message_id"], r["due_at"]) for r in await pair.subject.rows()]
    await pair.drive()
    assert len(pair.smtp.received) == mail
    await assert_rebuild_matches_control(pair, cases)


# --------------------------------------------------------------------------------------------
# mail that went out before its due time (a reader ahead of the schedule's zone, a digest)
# --------------------------------------------------------------------------------------------


async def rebuilt(aiohttp_client: Client, database_url: str, rig: NotifierRig,
                  records: Records, smtp: SmtpServer, clock: FakeClock,
                  moment: datetime) -> NotifierRig:
    """The schema of ``rig`` lost now, and a notifier started on an empty one at ``moment``
    that follows the feed from zero."""
    await rig.notifier.pool.execute("DROP SCHEMA notifier CASCADE")
    clock.now = moment
    return await make_rig(aiohttp_client, database_url, records.client, smtp, clock)


async def test_a_notice_mailed_early_to_a_reader_ahead_of_utc_is_not_mailed_again_after_a_rebuild(
        aiohttp_client: Client, fresh_database_url: str, rig: NotifierRig, records: Records,
        smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """A reader in Tokyo gets "review due today" at 09:00 Tokyo time, 00:00 UTC, nine hours
    before the schedule's due time (09:00 UTC; 0203: "in a zone ahead, the dispatcher claims
    it early"). The schema is lost at 05:00 UTC and rebuilt from the feed. README: "a notice
    that fell due before that schema began ... is not sent ... So a rebuild sends nothing
    twice". The notice went out before the rebuild, so it must not go out again."""
    await rig.set_prefs("cm-1", token(), timezone="Asia/Tokyo")
    case = await records.open_case()
    await records.agree(case)  # review due Friday 1 May
    await rig.catch_up()
    clock.now = at("2026-05-01", 0, 5)  # 09:05 in Tokyo
    await rig.dispatch()
    [today] = await rig.rows(kind="review_due_today")
    assert today["status"] == "sent"
    assert today["message_id"] in message_ids(smtp)
    mail = len(smtp.received)
    again = await rebuilt(aiohttp_client, fresh_database_url, rig, records, smtp, clock,
                          at("2026-05-01", 5))
    await again.set_prefs("cm-1", token(), timezone="Asia/Tokyo")
    await again.catch_up()
    await again.dispatch()
    clock.now = at("2026-05-01", 9, 1)  # the schedule's due time
    await again.dispatch()
    [row] = await again.rows(kind="review_due_today")
    assert (row["id"], row["message_id"]) == (today["id"], today["message_id"])
    assert message_ids(smtp)[mail:] == [], (
        f"sent again after the rebuild: {message_ids(smtp)[mail:]} (the one sent at 00:05:"
        f" {today['message_id']}); the row is {row['status']}, {row['last_error']}")


async def test_a_notice_in_the_morning_digest_is_not_mailed_again_after_an_early_rebuild(
        aiohttp_client: Client, fresh_database_url: str, rig: NotifierRig, records: Records,
        smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """A digest reader (UTC) gets the day's "review due today" in the 08:00 digest, an hour
    before its due time (0203: "dated notices whose day's digest time has come ... are first
    claimed and attached to that digest"). The schema is lost at 08:30 and rebuilt; the
    rebuilt notifier must not mail that notice again (README: "a rebuild sends nothing
    twice"), nor send a second, different digest under the Message-ID of the one already
    sent (mail clients drop a message whose Message-ID they have seen)."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    await records.agree(case)  # review due Friday 1 May
    await rig.catch_up()
    clock.now = at("2026-05-01", 8, 0)
    await rig.notifier.dispatcher.send_digests()
    [digest] = smtp.received
    assert "Jo's plan review is due today (Friday 1 May 2026)" in " ".join(text_of(digest).split())
    mail = len(smtp.received)
    again = await rebuilt(aiohttp_client, fresh_database_url, rig, records, smtp, clock,
                          at("2026-05-01", 8, 30))
    await again.set_prefs("cm-1", token(), delivery="daily_digest")
    await again.catch_up()
    await again.notifier.dispatcher.send_digests()
    await again.dispatch()
    clock.now = at("2026-05-01", 9, 1)
    await again.notifier.dispatcher.send_digests()
    await again.dispatch()
    later = smtp.received[mail:]
    assert [(m["Message-ID"], m["Subject"]) for m in later] == [], (
        "a digest sent again after the rebuild, under the first one's Message-ID: "
        f"{digest['Message-ID']}")


# --------------------------------------------------------------------------------------------
# preferences changed, a participant opted in, a case closed and reopened
# --------------------------------------------------------------------------------------------


async def test_a_reader_who_moved_to_a_digest_before_the_replay_gets_nothing_already_sent(
        pair: Pair) -> None:
    """cm-1 read mail as it came (a small win, a nudge), then chose a daily digest. Replaying
    the feed over the schema, then into an empty one, puts nothing already sent into a
    digest; what falls due later reaches the digest once, as in the notifier that never lost
    its schema."""
    p, r = pair, pair.records
    await p.set_prefs("cm-1", {})
    case = await r.open_case()
    goal = await r.goal(case, target_date="2026-04-10")
    done = await r.step(case, goal, "Visit the job centre", due_date="2026-03-04")
    await r.step(case, goal, "Update my CV", due_date="2026-03-05")
    await r.step(case, goal, "Call the agency", due_date="2026-03-20")
    await r.agree(case, add_goal=False)  # review due 1 May
    await r.complete(case, done)
    await p.at(at("2026-03-02", 9, 5))  # the small win
    await p.at(at("2026-03-06", 10))  # and the CV nudge
    assert len(p.smtp.received) == 2
    await p.set_prefs("cm-1", {}, delivery="daily_digest")
    built = await p.subject.snapshot()
    await reset_checkpoint(p.subject.notifier.pool, FEED_CHECKPOINT, p.clock())
    await p.follow()
    await p.at(at("2026-03-07", 8, 1))
    assert await p.subject.snapshot() == built
    assert len(p.smtp.received) == 2  # no digest of what went already
    await p.lose_and_rebuild(at("2026-03-07", 12))
    await p.drive()
    await assert_rebuild_matches_control(p, [case])
    await p.run_out()
    await assert_nothing_sent_twice_and_nothing_due_later_lost(p)
    later = [" ".join(text_of(m).split()) for m in p.smtp.received[2:]]
    assert later
    assert all(str(m["Subject"]).startswith("Your Casetrail summary")
               for m in p.smtp.received[2:])
    assert not any("Visit the job centre" in t or "Update my CV" in t for t in later)


async def test_a_participant_who_opts_in_again_after_a_rebuild_hears_of_no_milestone_twice(
        pair: Pair) -> None:
    """Jo opted in and heard of a milestone. The schema, and with it the directory, is lost;
    once the feed is replayed Jo's preferences are put back (an opt-in again, celebrations
    off and on). The milestone is not sent a second time (0203's "missed milestones" are
    those not heard of for want of an opt-in, not those a rebuild cannot vouch for); a
    later milestone is sent, once."""
    p, r, token = pair, pair.records, pair.token
    await p.set_prefs("cm-1", {})
    case = await r.open_case()
    zoe = {"role": "participant", "sub": "zoe", "cases": [case]}
    await p.set_prefs("zoe", zoe)
    first = await r.goal(case)
    second = await r.goal(case, "Keep my flat", "A home of my own")
    await r.achieve(case, first)
    await p.at(at("2026-03-02", 9, 30))
    assert len(p.smtp.to("zoe@example.org")) == 1
    p.prefs.clear()  # put back only after the replay, below
    await p.lose_and_rebuild(at("2026-03-02", 11))
    await p.drive()
    for body in ({}, {"celebrations": False}, {"celebrations": True}):
        await p.subject.set_prefs("zoe", token(**zoe), **body)
        await p.subject.dispatch()
    await p.subject.set_prefs("cm-1", token())
    await p.subject.dispatch()
    assert len(p.smtp.to("zoe@example.org")) == 1
    clock = p.clock
    clock.advance(hours=1)
    await r.achieve(case, second)
    await p.at(clock.now + timedelta(minutes=1))
    assert len(p.smtp.to("zoe@example.org")) == 2
    assert duplicates(message_ids(p.smtp)) == []


async def test_a_case_closed_and_reopened_after_its_mail_went_is_rebuilt_without_a_resend(
        pair: Pair) -> None:
    """A nudge and a small win went out; the case was transferred, closed, reopened and its
    plan agreed again. Replayed into an empty schema a day later, the reopened case's
    notices are those of the notifier that never lost its schema, and nothing goes twice."""
    p, r, token = pair, pair.records, pair.token
    await p.set_prefs("cm-1", {})
    await p.set_prefs("cm-2", {"sub": "cm-2"}, timezone="America/Chicago")
    case = await r.open_case(risk="high")
    goal = await r.goal(case, target_date="2026-05-01")
    await r.step(case, goal, "Phone the clinic", due_date="2026-03-03")
    later = await r.step(case, goal, "Book the appointment", due_date="2026-04-20")
    await r.complete(case, await r.step(case, goal, "Find the number"))
    await r.agree(case, add_goal=False)
    await p.at(at("2026-03-04", 9, 30))  # the small win and the nudge
    assert len(p.smtp.received) == 2
    await transfer(r, case, "cm-2", token())
    r2 = Records(r.client, token(sub="cm-2"))
    await p.at(at("2026-03-04", 16))  # the handover, 10:00 in Chicago
    await r2.close(case)
    p.clock.advance(days=2)
    await r2.reopen(case)
    await r2.revise_step(case, later, "2026-04-22")
    await r2.agree(case, add_goal=False)
    await p.at(at("2026-03-06", 18))
    await p.lose_and_rebuild(at("2026-03-07", 12))
    await p.drive()
    await assert_rebuild_matches_control(p, [case])
    await p.run_out()
    await assert_nothing_sent_twice_and_nothing_due_later_lost(p)
    assert {r["key"].split(":")[0] for r in await p.subject.rows() if delivered(r)} >= {
        "step_nudge", "goal_target_date", "review_reminder"}


# --------------------------------------------------------------------------------------------
# random case histories (seeded: the same commands every run)
# --------------------------------------------------------------------------------------------

READERS: list[dict[str, Any]] = [
    {},
    {"timezone": "America/New_York"},
    {"delivery": "daily_digest", "timezone": "Europe/Berlin"},
    {"timezone": "Europe/Berlin", "quiet_hours": {"start": "18:00", "end": "10:00"}},
    {"delivery": "daily_digest"},
]


@dataclass
class StoryCase:
    case_id: str
    manager: str
    open: bool = True
    goals: dict[str, str] = field(default_factory=dict)  # id -> status
    steps: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (goal, status)
    review: str | None = None


class Story:
    """Random commands through the records API, the clock moving between them."""

    def __init__(self, p: Pair, rng: random.Random) -> None:
        self.p, self.rng = p, rng
        self.cases: list[StoryCase] = []
        self.writers = {m: Records(p.records.client, p.token(sub=m)) for m in ("cm-1", "cm-2")}

    def day(self, low: int, high: int) -> str:
        return (self.p.clock.now.date() + timedelta(days=self.rng.randint(low, high))).isoformat()

    async def call(self, c: StoryCase, method: str, path: str, body: Any,
                   expect: int = 200) -> Any:
        return await self.writers[c.manager].call(method, f"/v1/cases/{c.case_id}{path}", body,
                                                  expect)

    async def change(self, c: StoryCase, method: str, path: str, body: Any) -> None:
        """A revision; one that changes nothing (the same date drawn again) is refused with
        409 no-change and writes nothing, which is as good."""
        response = await self.p.records.client.request(
            method, f"/v1/cases/{c.case_id}{path}", json=body,
            headers=bearer(self.writers[c.manager].token))
        answer = await response.json()
        assert response.status == 200 or (response.status, answer["type"].rsplit("/", 1)[-1]) \
            == (409, "no-change"), (response.status, answer)

    async def open(self, manager: str) -> None:
        c = StoryCase(await self.writers[manager].open_case(
            manager, self.rng.choice(["low", "moderate", "high"])), manager)
        self.cases.append(c)
        await self.goal(c)

    async def goal(self, c: StoryCase) -> None:
        if sum(s == "active" for s in c.goals.values()) >= 3:
            return
        target = self.day(5, 60) if self.rng.random() < 0.6 else None
        body = {"title": f"Goal {len(c.goals)}", "domain": "employment", "source": "participant",
                "in_their_words": "In my words", "target_date": target}
        c.goals[(await self.call(c, "POST", "/goals", body, 201))["id"]] = "active"

    async def step(self, c: StoryCase) -> None:
        active = [g for g, s in c.goals.items() if s == "active"]
        if not active:
            return await self.goal(c)
        goal = self.rng.choice(active)
        body = {"description": f"Step {len(c.steps)}", "owner": "participant",
                "due_date": self.day(-2, 25)}
        c.steps[(await self.call(c, "POST", f"/goals/{goal}/steps", body, 201))["id"]] = (
            goal, "not_started")

    def open_steps(self, c: StoryCase) -> list[str]:
        return [s for s, (_, status) in c.steps.items() if status == "not_started"]

    async def complete(self, c: StoryCase) -> None:
        if steps := self.open_steps(c):
            step = self.rng.choice(steps)
            await self.call(c, "POST", f"/steps/{step}/complete", {})
            c.steps[step] = (c.steps[step][0], "completed")

    async def revise_step(self, c: StoryCase) -> None:
        if steps := self.open_steps(c):
            await self.change(c, "PATCH", f"/steps/{self.rng.choice(steps)}",
                            {"due_date": self.day(-1, 20), "reason": "a new date"})

    async def revise_goal(self, c: StoryCase) -> None:
        if c.goals:
            await self.change(c, "PATCH", f"/goals/{self.rng.choice(list(c.goals))}",
                            {"target_date": self.day(1, 40), "reason": "a new date",
                             "title": f"Goal, reworded {self.rng.randint(0, 99)}"})

    async def achieve(self, c: StoryCase) -> None:
        if active := [g for g, s in c.goals.items() if s == "active"]:
            goal = self.rng.choice(active)
            await self.call(c, "POST", f"/goals/{goal}/status", {"status": "achieved"})
            c.goals[goal] = "achieved"

    async def agree(self, c: StoryCase) -> None:
        if c.review is not None or "active" not in c.goals.values():
            return
        result = await self.call(c, "POST", "/agreements", {
            "participation": "in_person", "present": ["Jo"],
            "participant_statement": "This is my plan"}, 201)
        c.review = next(e["data"]["review_id"] for e in result["events"]
                        if e["type"] == "ReviewScheduled")

    async def hold(self, c: StoryCase) -> None:
        if c.review is not None:
            result = await self.call(c, "POST", f"/reviews/{c.review}/held",
                                     {"summary": "We looked at what is working"})
            c.review = next(e["data"]["review_id"] for e in result["events"]
                            if e["type"] == "ReviewScheduled")

    async def reschedule(self, c: StoryCase) -> None:
        if c.review is not None:
            await self.change(c, "POST", f"/reviews/{c.review}/reschedule",
                            {"due_date": self.day(1, 30), "reason": "Jo is away"})

    async def transfer(self, c: StoryCase) -> None:
        to = "cm-2" if c.manager == "cm-1" else "cm-1"
        await self.call(c, "POST", "/transfer", {"case_manager": to, "reason": "caseload"})
        c.manager = to

    async def rename(self, c: StoryCase) -> None:
        await self.change(c, "PATCH", "/participant",
                        {"preferred_name": self.rng.choice(["Jo", "Jordan", "J"]),
                         "reason": "asked to"})

    async def close_or_reopen(self, c: StoryCase) -> None:
        if c.open:
            await self.call(c, "POST", "/close", {"reason": "plan completed"})
            c.review = None  # closing cancels it; agreeing again schedules another
        else:
            await self.call(c, "POST", "/reopen", {"reason": "asked for help"})
        c.open = not c.open

    async def attempt(self, c: StoryCase, path: str, body: Any) -> bool:
        """A status change the plan's rules may refuse (409/422, writing nothing)."""
        response = await self.p.records.client.post(
            f"/v1/cases/{c.case_id}{path}", json=body,
            headers=bearer(self.writers[c.manager].token))
        assert response.status in (200, 409, 422), (response.status, await response.text())
        return response.status == 200

    async def step_status(self, c: StoryCase) -> None:
        """A step taken back from completed, set aside, or picked up again."""
        if c.steps:
            step = self.rng.choice(list(c.steps))
            status = self.rng.choice(["in_progress", "cannot_be_done_yet", "not_started",
                                      "no_longer_needed"])
            if await self.attempt(c, f"/steps/{step}/status",
                                  {"status": status, "reason": "the plan changed"}):
                c.steps[step] = (c.steps[step][0],
                                 "not_started" if status in ("in_progress", "not_started")
                                 else status)

    async def goal_status(self, c: StoryCase) -> None:
        """A goal paused, resumed, or no longer achieved."""
        if c.goals:
            goal = self.rng.choice(list(c.goals))
            status = self.rng.choice(["paused", "active", "active", "future"])
            if await self.attempt(c, f"/goals/{goal}/status",
                                  {"status": status, "reason": "the plan changed"}):
                c.goals[goal] = status

    async def reword_step(self, c: StoryCase) -> None:
        if c.steps:
            await self.change(c, "PATCH", f"/steps/{self.rng.choice(list(c.steps))}",
                              {"description": f"Step, reworded {self.rng.randint(0, 99)}",
                               "reason": "clearer"})

    async def participant_prefs(self, c: StoryCase) -> None:
        """Jo turns celebrations off, or on again."""
        claims = {"role": "participant", "sub": "zoe", "cases": [self.cases[0].case_id]}
        await self.p.set_prefs("zoe", claims, celebrations=self.rng.random() < 0.6)

    async def prefs(self, c: StoryCase) -> None:
        manager = self.rng.choice(["cm-1", "cm-2"])
        await self.p.set_prefs(manager, {"sub": manager}, **self.rng.choice(READERS))

    async def command(self) -> None:
        c = self.rng.choice(self.cases)
        if not c.open:
            return await (self.close_or_reopen(c) if self.rng.random() < 0.5 else self.prefs(c))
        action = self.rng.choices(
            [self.goal, self.step, self.complete, self.revise_step, self.revise_goal,
             self.achieve, self.agree, self.hold, self.reschedule, self.transfer, self.rename,
             self.close_or_reopen, self.prefs, self.step_status, self.goal_status,
             self.reword_step, self.participant_prefs],
            weights=[2, 6, 5, 3, 2, 2, 4, 2, 2, 2, 1, 1, 2, 2, 2, 1, 1])[0]
        await action(c)

    async def run(self, commands: int) -> None:
        for _ in range(commands):
            await self.command()
            if self.rng.random() < 0.6:
                await self.p.at(self.p.clock.now + timedelta(hours=self.rng.randint(1, 50)))


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_a_random_history_rebuilt_from_the_feed_is_the_same_schedule_and_no_mail_twice(
        pair: Pair, seed: int) -> None:
    rng = random.Random(seed)
    p = pair
    for manager in ("cm-1", "cm-2"):
        await p.set_prefs(manager, {"sub": manager}, **rng.choice(READERS))
    await p.set_prefs("sup-1", {"role": "supervisor", "sub": "sup-1"},
                      timezone=rng.choice(["UTC", "America/New_York"]))
    story = Story(p, rng)
    await story.open("cm-1")
    await story.open(rng.choice(["cm-1", "cm-2"]))
    await p.set_prefs("zoe", {"role": "participant", "sub": "zoe",
                              "cases": [story.cases[0].case_id]})
    await story.run(rng.randint(20, 34))
    # lost between 10:00 and 22:00 UTC (no reader here is sent a notice before its due time
    # then: see the two tests above for that), rebuilt up to six hours later
    loss = (p.clock.now + timedelta(days=1)).replace(hour=rng.randint(10, 21), minute=30)
    await p.at(loss)
    # read in pages of another size: where pages break must not matter (0200)
    await p.lose_and_rebuild(loss + timedelta(minutes=rng.choice([0, 45, 180, 360])),
                             NOTIFIER_FEED_PAGE_SIZE=rng.choice([1, 3, 1000]))
    await p.drive()
    await assert_rebuild_matches_control(p, [c.case_id for c in story.cases])
    # and the history goes on, both notifiers following it
    await story.run(rng.randint(3, 8))
    await p.run_out()
    await assert_nothing_sent_twice_and_nothing_due_later_lost(p)
