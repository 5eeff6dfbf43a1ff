"""An adversarial audit of the daily digests (twenty-second session): delivery changed back and
forth with notices waiting, time zones changed after the day's digest went (across the date
line too), quiet hours over the digest time (on the nights clocks change), a digest refused
for a while or for good, cases changing while their notices wait in a digest, two notifier
instances at once, and the words and counts of the mail.

docs/notifier.md: "A notice waiting to go out (quiet hours, a digest, a retry) goes as the
case now reads"; 0203: "`daily_digest` → attached to the recipient's digest row for the next
`NOTIFIER_DIGEST_TIME` (08:00) in their time zone (one row per recipient per local day, sent as
one email ...)"; "A digest lists each notice's subject ...; it counts "1 update", "2 updates"."

Real PostgreSQL, the records service over HTTP, a real SMTP server (aiosmtpd); only time is
injected (FakeClock)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, text_of

Client = Callable[..., Awaitable[TestClient]]

COUNT = re.compile(r"Your Casetrail summary: (\d+) (update|updates)$")
ASSUMED_PRONOUN = re.compile(r"\b(he|she|his|her|hers|him|they|them|their|theirs)\b", re.I)
DEFICIT_WORDS = re.compile(r"offender|non-compliant|failed to|refused|client|the subject",
                           re.I)


@dataclass
class GatedSmtp(SmtpServer):
    """The SMTP server of the helpers, which, while ``held``, keeps the first message it is
    given at DATA until the test lets it go (``entered`` says one is being held)."""

    held: bool = False
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.held:
            self.held = False
            self.entered.set()
            await self.gate.wait()
        return await super().handle_DATA(server, session, envelope)


def mail_to(smtp: SmtpServer, user: str) -> list[Message]:
    return [m for m in smtp.received if m["To"] == f"{user}@example.org"]


def digests_to(smtp: SmtpServer, user: str) -> list[Message]:
    return [m for m in mail_to(smtp, user) if "Casetrail summary" in str(m["Subject"])]


def said(message: Message) -> str:
    return f"{message['Subject']}\n{text_of(message)}"


def mentions(smtp: SmtpServer, words: str) -> list[str]:
    """The readers of every message telling of ``words``."""
    return [str(m["To"]) for m in smtp.received if words in said(m)]


def listed_items(message: Message) -> int:
    """The items a digest's text lists (each begins "- " at the start of a line)."""
    return sum(1 for line in text_of(message).splitlines() if line.startswith("- "))


def count_in_subject(message: Message) -> int:
    found = COUNT.fullmatch(" ".join(str(message["Subject"]).split()))
    assert found, message["Subject"]
    number = int(found.group(1))
    assert found.group(2) == ("update" if number == 1 else "updates"), message["Subject"]
    return number


async def take_back(records: Records, case: str, step: str) -> None:
    await records.call("POST", f"/v1/cases/{case}/steps/{step}/status",
                       {"status": "in_progress", "reason": "not quite done after all"})


async def win(records: Records, description: str) -> tuple[str, str]:
    """A case of the writer's with a step ``description`` completed: the case's and step's
    ids."""
    case = await records.open_case(case_manager=records_sub(records))
    step = await records.step(case, await records.goal(case), description)
    await records.complete(case, step)
    return case, step


def records_sub(records: Records) -> str:
    return str(records.token_sub)  # type: ignore[attr-defined]


def as_user(records: Records, token: TokenFactory, sub: str) -> Records:
    writer = Records(records.client, token(sub=sub))
    writer.token_sub = sub  # type: ignore[attr-defined]
    return writer


async def digest_round(rig: NotifierRig) -> None:
    await rig.catch_up()
    await rig.notifier.dispatcher.send_digests()
    await rig.dispatch()


# --------------------------------------------------------------------------------------------
# cases changing while their notices wait in a digest that is being sent
# --------------------------------------------------------------------------------------------


async def test_a_digest_waiting_for_a_connection_tells_only_what_is_true_when_it_goes(
        aiohttp_client: Client, fresh_database_url: str, records: Records,
        clock: FakeClock, token: TokenFactory) -> None:
    """Two readers' digests go in one round over one SMTP connection: the first is at the
    mail server (held there), the second has read its notices and waits for the connection.
    Meanwhile, for each reader, a case is transferred to cm-2, a case closed and a step taken
    back. The digest that had not begun to go must tell only what is true when it goes: not
    the transferred case (no longer that reader's; cm-2 hears of it), not the closed case's
    win, not the win taken back. For a single notice the check just before the send catches
    each of these (0201: "a row another instance took over (or the feed cancelled) meanwhile
    is skipped, not sent"); only a send "already under way" goes as loaded."""
    smtp = await GatedSmtp().start()
    try:
        rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                             NOTIFIER_SMTP_CONNECTIONS=1)
        readers = ("cm-0", "cm-1")
        made: dict[str, dict[str, tuple[str, str]]] = {}
        for reader in readers:
            await rig.set_prefs(reader, token(sub=reader), delivery="daily_digest")
            writer = as_user(records, token, reader)
            made[reader] = {what: await win(writer, f"{what} {reader}")
                            for what in ("Moved", "Closed", "Undone", "Kept")}
        await rig.set_prefs("cm-2", token(sub="cm-2"))
        await rig.catch_up()
        await rig.dispatch()
        assert smtp.received == []  # all in Tuesday's digests

        clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
        smtp.held = True
        sending = asyncio.create_task(rig.notifier.dispatcher.send_digests())
        await asyncio.wait_for(smtp.entered.wait(), 10)
        await asyncio.sleep(0.3)  # the other digest reads its notices and waits its turn
        supervisor = token(role="supervisor", sub="sup-1")
        for reader in readers:
            writer = as_user(records, token, reader)
            await records.transfer(made[reader]["Moved"][0], "cm-2", token=supervisor)
            await writer.close(made[reader]["Closed"][0])
            await take_back(writer, *made[reader]["Undone"])
        await rig.catch_up()
        smtp.gate.set()
        await asyncio.wait_for(sending, 30)
        await digest_round(rig)
    finally:
        smtp.gate.set()
        await smtp.stop()

    first = str(smtp.received[0]["To"])  # this one was under way: it went as loaded
    [waiting] = [r for r in readers if f"{r}@example.org" != first]
    [digest] = digests_to(smtp, waiting)
    text = said(digest)
    assert f"Kept {waiting}" in text
    told = [what for what in ("Moved", "Closed", "Undone") if f"{what} {waiting}" in text]
    assert told == [], (told, text)
    assert count_in_subject(digest) == listed_items(digest) == 1
    assert mentions(smtp, f"Moved {waiting}") == ["cm-2@example.org"]


# --------------------------------------------------------------------------------------------
# the clock moved tick by tick, with the digest job and dispatch run at each
# --------------------------------------------------------------------------------------------


@dataclass
class Watch:
    """The notifier's jobs run at each tick of the clock; every message with the moment it
    arrived."""

    rig: NotifierRig
    smtp: SmtpServer
    clock: FakeClock
    log: list[tuple[datetime, Message]] = field(default_factory=list)
    seen: int = 0

    async def tick(self) -> list[tuple[datetime, str, str]]:
        start = len(self.log)
        await self.rig.catch_up()
        await self.rig.notifier.dispatcher.send_digests()
        await self.rig.dispatch()
        await self.rig.dispatch()
        for message in self.smtp.received[self.seen:]:
            self.log.append((self.clock.now, message))
        self.seen = len(self.smtp.received)
        return [(t, str(m["To"]), " ".join(str(m["Subject"]).split()))
                for t, m in self.log[start:]]

    async def until(self, end: datetime, step: timedelta = timedelta(hours=1),
                    ) -> list[tuple[datetime, str, str]]:
        arrived: list[tuple[datetime, str, str]] = []
        while self.clock.now + step <= end:
            self.clock.now += step
            arrived += await self.tick()
        if self.clock.now < end:
            self.clock.now = end
            arrived += await self.tick()
        return arrived

    def telling(self, words: str) -> list[tuple[datetime, str]]:
        return [(t, str(m["To"])) for t, m in self.log if words in said(m)]


def utc(day: str, hour: int, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=UTC)


SUMMARY_1 = "Your Casetrail summary: 1 update"
SUMMARY_2 = "Your Casetrail summary: 2 updates"
CM1 = "cm-1@example.org"


async def test_a_notice_told_in_a_digest_already_on_its_way_is_recorded_as_told(
        aiohttp_client: Client, fresh_database_url: str, records: Records,
        clock: FakeClock, token: TokenFactory) -> None:
    """A digest at the mail server (held at DATA) when its notice's case closes: the mail told
    it, so its row says sent, as a single notice's does in the same race (a review found it
    recorded "the case was closed")."""
    smtp = await GatedSmtp().start()
    try:
        rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
        await rig.set_prefs("cm-1", token(), delivery="daily_digest")
        case, _ = await win(as_user(records, token, "cm-1"), "Told win")
        await rig.catch_up()
        await rig.dispatch()
        clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
        smtp.held = True
        sending = asyncio.create_task(rig.notifier.dispatcher.send_digests())
        await asyncio.wait_for(smtp.entered.wait(), 10)
        await records.close(case)
        await rig.catch_up()
        smtp.gate.set()
        await asyncio.wait_for(sending, 30)
    finally:
        smtp.gate.set()
        await smtp.stop()
    [message] = smtp.received
    assert "Told win" in text_of(message)
    [item] = await rig.rows(kind="small_win")
    [digest] = await rig.rows(kind="daily_digest")
    assert digest["status"] == "sent"
    assert (item["status"], item["last_error"]) == ("sent", None)


async def test_a_notice_told_while_its_case_closed_and_reopened_is_not_told_again(
        aiohttp_client: Client, fresh_database_url: str, records: Records,
        clock: FakeClock, token: TokenFactory) -> None:
    """The case is closed and reopened while the digest telling its goal's target date is at
    the mail server: brought back (out of the digest), the notice was told again in the next
    morning's digest."""
    smtp = await GatedSmtp().start()
    try:
        rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
        await rig.set_prefs("cm-1", token(), delivery="daily_digest")
        case = await records.open_case()
        await records.goal(case, target_date="2026-03-06")
        await rig.catch_up()
        clock.now = datetime(2026, 3, 6, 8, 0, tzinfo=UTC)
        smtp.held = True
        sending = asyncio.create_task(rig.notifier.dispatcher.send_digests())
        await asyncio.wait_for(smtp.entered.wait(), 10)
        await records.close(case)
        await rig.catch_up()
        await records.reopen(case)
        await rig.catch_up()
        smtp.gate.set()
        await asyncio.wait_for(sending, 30)
        clock.now = datetime(2026, 3, 7, 8, 0, tzinfo=UTC)
        await rig.dispatch()
        await rig.notifier.dispatcher.send_digests()
    finally:
        smtp.gate.set()
        await smtp.stop()
    assert len(smtp.received) == 1, [m["Subject"] for m in smtp.received]
    [target] = await rig.rows(kind="goal_target_date")
    assert target["status"] == "sent"


async def test_switching_immediate_digest_immediate_loses_nothing_and_sends_nothing_twice(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """Monday: digest from 10:00, a win at 11:00 waits; immediate again at 12:00, it goes
    then; a win at 13:00 goes at once; digest from 14:00, a win at 15:00 and a step's nudge
    (its date Monday) go in Tuesday's 08:00 digest, "2 updates"; immediate again at 08:30
    Tuesday sends neither again; a win at 10:00 goes at once."""
    watch = Watch(rig, smtp, clock)
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    goal = await records.goal(case)
    steps = {name: await records.step(case, goal, name)
             for name in ("Win A", "Win B", "Win C", "Win D")}
    await records.step(case, goal, "Call the library", due_date="2026-03-02")
    assert await watch.tick() == []

    assert await watch.until(utc("2026-03-02", 10)) == []
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await watch.until(utc("2026-03-02", 11))
    await records.complete(case, steps["Win A"])
    assert await watch.tick() == []
    assert await watch.until(utc("2026-03-02", 12)) == []
    await rig.set_prefs("cm-1", token(), delivery="immediate")
    assert await watch.tick() == [(utc("2026-03-02", 12), CM1, "A small win for Jo: Win A")]
    await watch.until(utc("2026-03-02", 13))
    await records.complete(case, steps["Win B"])
    assert await watch.tick() == [(utc("2026-03-02", 13), CM1, "A small win for Jo: Win B")]
    await watch.until(utc("2026-03-02", 14))
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await watch.until(utc("2026-03-02", 15))
    await records.complete(case, steps["Win C"])
    assert await watch.until(utc("2026-03-03", 8, 30), timedelta(minutes=30)) == [
        (utc("2026-03-03", 8), CM1, SUMMARY_2)]
    [(_, digest)] = [(t, m) for t, m in watch.log if "summary" in str(m["Subject"])]
    assert "Win C" in said(digest)
    assert "Call the library" in said(digest)
    assert "Win A" not in said(digest)
    assert "Win B" not in said(digest)
    await rig.set_prefs("cm-1", token(), delivery="immediate")
    assert await watch.until(utc("2026-03-03", 10)) == []
    await records.complete(case, steps["Win D"])
    assert await watch.tick() == [(utc("2026-03-03", 10), CM1, "A small win for Jo: Win D")]
    assert await watch.until(utc("2026-03-04", 12)) == []
    for words in ("Win A", "Win B", "Win C", "Win D", "Call the library"):
        assert len(watch.telling(words)) == 1, (words, watch.telling(words))


# --------------------------------------------------------------------------------------------
# a reader changing time zone after the day's digest went
# --------------------------------------------------------------------------------------------


async def test_a_reader_moving_east_to_kiritimati_gets_the_next_days_digest_there(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """Tuesday's digest went at 08:00 UTC. At 10:00 UTC the reader is on Kiritimati (UTC+14:
    already Wednesday 00:00). Wednesday's digest there is at 18:00 UTC on Tuesday: it carries
    a win of 12:00 UTC and the nudge of a step whose date was Tuesday (due Wednesday), said
    as Wednesday's; nothing else comes, and nothing twice."""
    watch = Watch(rig, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, "Monday's win"))
    await records.step(case, goal, "Call the library", due_date="2026-03-03")
    later = await records.step(case, goal, "Tuesday's win")
    assert await watch.until(utc("2026-03-03", 10)) == [(utc("2026-03-03", 8), CM1, SUMMARY_1)]
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="Pacific/Kiritimati")
    await watch.until(utc("2026-03-03", 12))
    await records.complete(case, later)
    arrived = await watch.until(utc("2026-03-05", 12))
    assert arrived == [(utc("2026-03-03", 18), CM1, SUMMARY_2)], arrived
    [(_, digest)] = [(t, m) for t, m in watch.log if t == utc("2026-03-03", 18)]
    assert "Tuesday's win" in said(digest)
    assert "had a hoped-for date of Tuesday 3 March 2026" in said(digest)
    assert len(watch.telling("Call the library")) == 1
    assert len(watch.telling("Monday's win")) == 1


# --------------------------------------------------------------------------------------------
# quiet hours over the digest time, on the nights clocks change
# --------------------------------------------------------------------------------------------


QUIET_NIGHTS = [  # zone, the night's evening (UTC), when 09:00 there comes (UTC)
    ("Europe/Berlin", utc("2026-03-28", 18), utc("2026-03-29", 7)),
    ("Europe/Berlin", utc("2026-10-24", 18), utc("2026-10-25", 8)),
    ("America/New_York", utc("2026-03-07", 23), utc("2026-03-08", 13)),
    ("America/New_York", utc("2026-10-31", 23), utc("2026-11-01", 14)),
]


async def test_a_digest_in_quiet_hours_across_midnight_waits_for_their_end_on_dst_nights(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """Quiet hours 22:00-09:00 cover the 08:00 digest. On each night clocks change, the
    digest goes when the reader's clock reads 09:00 (not an hour early or late), once, and
    carries the evening's win and the step nudged that day."""
    case = await records.open_case()
    goal = await records.goal(case)
    watch = Watch(rig, smtp, clock)
    for zone, evening, nine in QUIET_NIGHTS:
        await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone=zone,
                            quiet_hours={"start": "22:00", "end": "09:00"})
        clock.now = evening
        await watch.tick()
        local_day = nine.astimezone(ZoneInfo(zone)).date()
        yesterday = (local_day - timedelta(days=1)).isoformat()
        await records.step(case, goal, f"Nudge {local_day}", due_date=yesterday)
        await records.complete(case, await records.step(case, goal, f"Win {local_day}"))
        arrived = await watch.until(nine + timedelta(hours=3), timedelta(minutes=30))
        assert arrived == [(nine, CM1, SUMMARY_2)], (zone, arrived)
        [(_, digest)] = [(t, m) for t, m in watch.log if t == nine]
        assert f"Nudge {local_day}" in said(digest)
        assert f"Win {local_day}" in said(digest)


# --------------------------------------------------------------------------------------------
# a digest refused for a while, or for good
# --------------------------------------------------------------------------------------------


async def test_a_digest_refused_with_4xx_goes_later_as_it_was_with_the_same_message_id(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """Tuesday's digest is answered 451, then accepted on its retry: the same Message-ID and
    the same items; a win recorded between the two goes in Wednesday's digest, not in this
    one and not twice; the rows of the items read sent once."""
    watch = Watch(rig, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    for name in ("First win", "Second win"):
        await records.complete(case, await records.step(case, goal, name))
    meanwhile = await records.step(case, goal, "A win between the tries")
    await watch.tick()
    smtp.replies = ["451 4.3.0 try again later"]
    assert await watch.until(utc("2026-03-03", 8)) == []
    [(_, refused)] = smtp.refused
    [digest] = await rig.rows(kind="daily_digest")
    assert (digest["status"], digest["last_code"]) == ("failed", 451)
    clock.now = utc("2026-03-03", 8, 0) + timedelta(seconds=1)
    await records.complete(case, meanwhile)
    arrived = await watch.until(utc("2026-03-04", 10), timedelta(minutes=5))
    assert [(to, subject) for _, to, subject in arrived] == [(CM1, SUMMARY_2),
                                                             (CM1, SUMMARY_1)], arrived
    assert arrived[0][0] < utc("2026-03-03", 9)
    assert timedelta(0) <= arrived[1][0] - utc("2026-03-04", 8) < timedelta(minutes=5)
    sent, wednesday = (m for _, m in watch.log)
    assert sent["Message-ID"] == refused["Message-ID"]
    assert text_of(sent) == text_of(refused)
    assert "A win between the tries" not in said(sent)
    assert "A win between the tries" in said(wednesday)
    wins = await rig.rows(kind="small_win")
    assert sorted(r["status"] for r in wins) == ["sent"] * 3


async def test_a_dead_digest_retried_after_one_of_its_notices_was_retried_alone(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """Tuesday's digest is refused 550: it and its two wins are dead letters, and the
    win of the afternoon goes in Wednesday's digest. A supervisor retries one win alone, then
    the digest: each win is told once, and the digest's retry carries only the other."""
    watch = Watch(rig, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case()
    goal = await records.goal(case)
    for name in ("First win", "Second win"):
        await records.complete(case, await records.step(case, goal, name))
    afternoon = await records.step(case, goal, "Afternoon win")
    await watch.tick()
    smtp.replies = ["550 5.7.1 not today"]
    await watch.until(utc("2026-03-03", 8))
    [digest] = await rig.rows(kind="daily_digest")
    assert digest["status"] == "dead"
    dead = await rig.rows(digest_id=digest["id"])
    assert [r["status"] for r in dead] == ["dead", "dead"]
    assert all(r["last_error"].startswith("digest not delivered: ") for r in dead)
    await watch.until(utc("2026-03-03", 14))
    await records.complete(case, afternoon)
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    [first] = [r for r in dead if "First win" in str(r["context"])]
    response = await rig.client.post(f"/v1/notifications/{first['id']}/retry",
                                     headers=supervisor)
    assert response.status == 202, await response.text()
    await watch.tick()
    response = await rig.client.post(f"/v1/notifications/{digest['id']}/retry",
                                     headers=supervisor)
    assert response.status == 202, await response.text()
    await watch.tick()
    await watch.until(utc("2026-03-04", 10))
    for words in ("First win", "Second win", "Afternoon win"):
        assert len(watch.telling(words)) == 1, (words, watch.telling(words))
    [retried] = [m for _, m in watch.log if m["Message-ID"] == digest["message_id"]]
    assert "Second win" in said(retried)
    assert "First win" not in said(retried)
    assert count_in_subject(retried) == listed_items(retried) == 1


# --------------------------------------------------------------------------------------------
# two notifier instances on one database
# --------------------------------------------------------------------------------------------


async def test_two_instances_sending_digests_at_once_send_one_per_reader_per_day(
        aiohttp_client: Client, fresh_database_url: str, rig: NotifierRig, records: Records,
        smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    """Four digest readers (UTC, Berlin, New York, Kiritimati), each with a win and a step
    nudged the next day. Both instances run the digest job and dispatch at the same moments
    for two days: each reader gets one digest per local day, and each notice is told once,
    in a digest."""
    other = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock)
    zones = {"cm-1": "UTC", "cm-2": "Europe/Berlin", "cm-3": "America/New_York",
             "cm-4": "Pacific/Kiritimati"}
    for reader, zone in zones.items():
        await rig.set_prefs(reader, token(sub=reader), delivery="daily_digest", timezone=zone)
        writer = as_user(records, token, reader)
        case = await writer.open_case(case_manager=reader)
        goal = await writer.goal(case)
        await writer.complete(case, await writer.step(case, goal, f"Win of {reader}"))
        await writer.step(case, goal, f"Step of {reader}", due_date="2026-03-03")
    await rig.catch_up()
    await other.catch_up()
    end = utc("2026-03-05", 12)
    while clock.now < end:
        clock.advance(minutes=30)
        await asyncio.gather(rig.notifier.dispatcher.send_digests(),
                             other.notifier.dispatcher.send_digests())
        await asyncio.gather(rig.dispatch(), other.dispatch())
    assert all("summary" in str(m["Subject"]) for m in smtp.received), smtp.subjects()
    for reader, zone in zones.items():
        days = [parsedate_to_datetime(str(m["Date"])).astimezone(ZoneInfo(zone)).date()
                for m in digests_to(smtp, reader)]
        assert len(days) == len(set(days)), (reader, days)
        assert len(mentions(smtp, f"Win of {reader}")) == 1, reader
        assert len(mentions(smtp, f"Step of {reader}")) == 1, reader
    ids = [m["Message-ID"] for m in smtp.received]
    assert len(ids) == len(set(ids))
    rows = await rig.rows(kind="daily_digest")
    assert sorted(r["status"] for r in rows) == ["sent"] * len(smtp.received)


# --------------------------------------------------------------------------------------------
# the words and the count
# --------------------------------------------------------------------------------------------


async def test_a_digest_of_every_kind_counts_what_it_lists_in_person_first_words(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """A morning's digest holding a small win, a milestone, a handover, a step's nudge, a goal's
    target date and a plan review reminder: its Subject counts the items it lists, each item
    has its subject and what it says, Jo is named as Jo asked (never "Jordan", never a
    pronoun), and no deficit words."""
    watch = Watch(rig, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    case = await records.open_case()
    await records.agree(case)  # review due Friday 1 May: its reminder Tuesday 28 April
    await watch.tick()
    clock.now = utc("2026-04-27", 10)
    goal = await records.goal(case, "Find steady work", "A job where I use my hands",
                              target_date="2026-04-28")
    await records.complete(case, await records.step(case, goal, "Update my CV"))
    await records.step(case, goal, "Call the staffing agency", due_date="2026-04-27")
    other_goal = await records.goal(case, "Learn to drive", "Drive to my mum's")
    await records.achieve(case, other_goal)
    theirs = as_user(records, token, "cm-2")
    handed = await theirs.open_case(case_manager="cm-2")
    await records.transfer(handed, "cm-1", token=token(role="supervisor", sub="sup-1"))
    arrived = await watch.until(utc("2026-04-28", 12))
    [(when, to, subject)] = arrived
    assert (when, to) == (utc("2026-04-28", 8), CM1)
    [(_, digest)] = watch.log
    text = text_of(digest)
    items = await rig.rows(digest_id=(await rig.rows(kind="daily_digest"))[0]["id"])
    assert count_in_subject(digest) == listed_items(digest) == len(items) == 6, text
    assert sorted(r["kind"] for r in items) == sorted(
        ["small_win", "milestone", "case_transferred", "step_nudge", "goal_target_date",
         "review_reminder"])
    assert {r["status"] for r in items} == {"sent"}
    plain = " ".join(text.split())
    assert "Jordan" not in plain + subject
    assert not ASSUMED_PRONOUN.search(plain), plain
    assert not DEFICIT_WORDS.search(plain), plain
    assert "plan review" in plain
    for words in ("Update my CV", "Learn to drive", "Call the staffing agency",
                  "Find steady work", "transferred"):
        assert words in plain, words


async def test_a_supervisors_overdue_copy_waiting_in_a_digest_ends_when_the_review_is_held(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """The overdue notice (Sunday 3 May, 09:00) goes to the case manager at once and, handed
    on, waits in the supervisor's Monday digest. The review is held on Sunday afternoon: the
    supervisor's digest must not say it is "not yet recorded" (no digest at all: nothing
    left in it)."""
    watch = Watch(rig, smtp, clock)
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"), delivery="daily_digest")
    case = await records.open_case()
    review = await records.agree(case)
    await watch.tick()
    clock.now = utc("2026-05-02", 8)
    await watch.tick()
    arrived = await watch.until(utc("2026-05-03", 15))
    assert [to for _, to, s in arrived if "not yet recorded" in s] == [CM1], arrived
    assert all(to == CM1 for _, to, _ in arrived), arrived
    [copy] = await rig.rows(kind="review_overdue", recipient="sup-1")
    assert copy["digest_id"] is not None
    assert copy["status"] == "scheduled"
    await records.hold_review(case, review)
    assert await watch.until(utc("2026-05-04", 12)) == []
    [copy] = await rig.rows(kind="review_overdue", recipient="sup-1")
    assert copy["status"] == "cancelled"


async def test_a_digest_awaiting_its_retry_goes_as_its_cases_read_when_it_is_retried(
        rig: NotifierRig, records: Records, smtp: SmtpServer, clock: FakeClock,
        token: TokenFactory) -> None:
    """Tuesday's digest is answered 451. Before its retry, one case is transferred to cm-2,
    one closed, one step taken back. The retry (same Message-ID) tells only the case kept,
    "1 update"; cm-2 hears of the transferred case once; nothing is told twice."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    writer = as_user(records, token, "cm-1")
    made = {what: await win(writer, f"{what} win") for what in ("Moved", "Closed", "Undone",
                                                               "Kept")}
    watch = Watch(rig, smtp, clock)
    await watch.tick()
    smtp.replies = ["451 4.3.0 try again later"]
    await watch.until(utc("2026-03-03", 8))
    [(_, refused)] = smtp.refused
    assert count_in_subject(refused) == 4
    await records.transfer(made["Moved"][0], "cm-2", token=token(role="supervisor", sub="s"))
    await writer.close(made["Closed"][0])
    await take_back(writer, *made["Undone"])
    await watch.until(utc("2026-03-03", 10), timedelta(minutes=5))
    [digest] = digests_to(smtp, "cm-1")
    assert digest["Message-ID"] == refused["Message-ID"]
    assert "Kept win" in said(digest)
    assert [w for w in ("Moved", "Closed", "Undone") if f"{w} win" in said(digest)] == []
    assert count_in_subject(digest) == listed_items(digest) == 1
    assert mentions(smtp, "Moved win") == ["cm-2@example.org"]
