"""Delivery: claim due rows, decide per recipient, send by SMTP, record every attempt.

Retries: 4xx replies, connection failures and a refusal of this notifier's session (its
greeting, EHLO and HELO, STARTTLS, the login, the sender) are retried with exponential backoff
and jitter until the attempts or the horizon run out; a 5xx refusing the recipient or the
message fails at once. Either way the row ends ``dead`` with the reason (a dead letter, revived
by POST /v1/notifications/{id}/retry). Every attempt reuses the row's Message-ID, so a receiving
system can recognise a resend. A round of dispatch that could not get a session opens no new
connection, nor do the rounds after it for half the first retry delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from email import policy
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr
from time import monotonic
from typing import TypeVar
from urllib.parse import quote
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiosmtplib
import asyncpg
import structlog

from schemas.events import plain_mailbox
from services.common.database import DATABASE_UNAVAILABLE
from services.common.http import labelled
from services.common.retry import doubling
from services.notifier.links import Entry, UnsubscribeLinks
from services.notifier.metrics import NotifierMetrics
from services.notifier.rules import CELEBRATIONS, DATED, HEADS_UP, Kind, Notice, RecipientRole
from services.notifier.settings import NotifierSettings, smtp_tls_context
from services.notifier.store import directory
from services.notifier.store import notifications as store
from services.notifier.store.cases import case_facts
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import Outcome, Row
from services.notifier.templates import Rendered, render, render_digest

log = structlog.get_logger("casetrail.notifier.delivery")
Clock = Callable[[], datetime]
_LEAST_WAIT = timedelta(minutes=1)
_A_MOMENT = timedelta(microseconds=1)
_FRESH_SECONDS = 5.0  # a pooled SMTP connection used this recently is sent on without a NOOP
_UTF8_HEADERS = policy.SMTPUTF8.clone(linesep="\n")
_LONGEST_WORD = 64  # a longer word in a Subject is encoded, so the header folds within it
T = TypeVar("T")
# Recording a batch's outcomes while the database is unavailable: tried again after 0.2 s,
# doubling up to 5 s, for up to 15 minutes (5 s once the process is stopping). Recording late is
# safe: only rows still held under the batch's claim are written.
_RECORD_FIRST_DELAY = 0.2
_RECORD_MAX_DELAY = 5.0
_RECORD_PATIENCE_SECONDS = 15 * 60.0
SHUTDOWN_GRACE = 5.0
# why a dead letter died that an entry in the directory mends (``_look_again_at_the_dead``)
_MENDABLE = (*store.MENDED_BY_AN_ADDRESS, *store.MENDED_BY_A_PARTICIPANTS_ADDRESS,
             *store.MENDED_BY_A_SUPERVISOR)


# --------------------------------------------------------------------------------------------
# retry policy (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int | None = None  # None: no count, the horizon alone ends the retries
    base_seconds: float = 30.0
    max_seconds: float = 3600.0
    horizon_seconds: float = 24 * 3600.0

    @classmethod
    def of(cls, s: NotifierSettings) -> RetryPolicy:
        return cls(s.retry_attempts, s.retry_base_seconds, s.retry_max_seconds,
                   s.retry_horizon_seconds)

    def next_attempt(self, attempts_made: int, first_attempt_at: datetime, now: datetime,
                     rng: random.Random) -> datetime | None:
        """When to try again after ``attempts_made`` failures; None: give up.

        Exponential backoff with "equal jitter": half the delay fixed, half random, so many
        notices failing together do not come back together.
        """
        if self.attempts is not None and attempts_made >= self.attempts:
            return None
        delay = min(self.base_seconds * 2 ** (attempts_made - 1), self.max_seconds)
        at = now + timedelta(seconds=delay / 2 + rng.uniform(0, delay / 2))
        if (at - first_attempt_at).total_seconds() > self.horizon_seconds:
            return None
        return at


# --------------------------------------------------------------------------------------------
# what to do with a claimed row (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    address: str
    for_participant: bool = False


@dataclass(frozen=True)
class Cancel:
    reason: str


@dataclass(frozen=True)
class Dead:
    reason: str


@dataclass(frozen=True)
class Defer:
    until: datetime


@dataclass(frozen=True)
class ToDigest:
    at: datetime
    timezone: str


@dataclass(frozen=True)
class FanOut:
    members: tuple[str, ...]


Decision = Send | Cancel | Dead | Defer | ToDigest | FanOut


@dataclass(frozen=True)
class DatedTiming:
    """A dated notice (a review due, a step's date passed) reaches each reader on its day at
    the reader's own local time. The schedule times it in ``notices_zone``
    (NOTIFIER_TIMEZONE), at the send time; readers live in zones of their own."""

    notices_zone: str = "UTC"
    digest_time: time = time(8, 0)
    send_time: time = time(9, 0)

    @classmethod
    def of(cls, s: NotifierSettings) -> DatedTiming:
        return cls(s.timezone, s.digest_time, s.send_time)

    @property
    def claim_span(self) -> timedelta:
        """The furthest ahead of its due time a dated notice is owed to a reader: the zones'
        span (``EARLY_CLAIM_SPAN``), and, for a digest read earlier in the day than the send
        time, that much more (with digests at 06:00 and notices at 09:00, a digest on
        Kiritimati is 27 hours ahead of Honolulu's 09:00: an audit found "due today" left out
        of it and sent two days late)."""
        earlier = (datetime.combine(date.min, self.send_time)
                   - datetime.combine(date.min, self.digest_time))
        return store.EARLY_CLAIM_SPAN + max(earlier, timedelta(0))

    def moment(self, row: Row, zone_name: str, at: time | None = None) -> datetime:
        """The notice's wall-clock time in the schedule's zone (or ``at`` o'clock on its day),
        as a moment in the reader's zone ``zone_name``."""
        local = row.due_at.astimezone(ZoneInfo(self.notices_zone)).replace(tzinfo=None)
        wall = local if at is None else datetime.combine(local.date(), at)
        return wall.replace(tzinfo=ZoneInfo(zone_name)).astimezone(UTC)

    def due_by(self, zone_name: str, now: datetime, at: time | None = None) -> datetime:
        """The latest due time (the schedule's) of a dated notice whose ``moment`` in
        ``zone_name`` has come by ``now``: its wall-clock time in the schedule's zone (or
        ``at`` o'clock on its day) is the reader's wall-clock time now, or earlier."""
        local_now = now.astimezone(ZoneInfo(zone_name)).replace(tzinfo=None)
        schedule = ZoneInfo(self.notices_zone)
        if at is None:
            return local_now.replace(tzinfo=schedule).astimezone(UTC)
        last_day = local_now.date() - timedelta(days=0 if local_now.time() >= at else 1)
        next_day = datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=schedule)
        return next_day.astimezone(UTC) - timedelta(microseconds=1)

    def days_ahead(self, now: datetime) -> list[store.Day]:
        """The schedule's days a notice claimed early at ``now`` may be due on. A dated
        notice's digest is that of its day there: ``moment`` keeps the wall-clock date."""
        schedule = ZoneInfo(self.notices_zone)
        day = now.astimezone(schedule).date()
        last = (now + self.claim_span).astimezone(schedule).date()
        days: list[store.Day] = []
        while day <= last:
            starts, ends = (datetime.combine(d, time(0), tzinfo=schedule).astimezone(UTC)
                            for d in (day, day + timedelta(days=1)))
            days.append(store.Day(day.isoformat(), starts, ends))
            day += timedelta(days=1)
        return days


@dataclass(frozen=True)
class Recipient:
    """Who a row reaches: their preferences (None: not in the directory) and address."""

    prefs: Preferences | None
    address: str | None
    members: tuple[str, ...] = ()


def decide(row: Row, who: Recipient, now: datetime, *, stale_after: timedelta,
           history_began: datetime | None = None,
           timing: DatedTiming | None = None) -> Decision:
    if history_began is not None and _untried_and_called_for_before(row, history_began) \
            and _earliest_send(row, who, timing) < history_began:
        return _fate_unknown(history_began)
    if _too_late(row, now, stale_after):
        return Cancel(f"too late to be useful: it was due {row.due_at.isoformat()}")
    if row.recipient_role == RecipientRole.SUPERVISORS:
        return _to_supervisors(row, who)
    if row.recipient_role == RecipientRole.PARTICIPANT:
        return _participant_decision(who, now)
    if who.prefs is None or not who.address:
        return Dead(f"{store.NO_ADDRESS_FOR}{row.recipient}: {_set_it(row)}")
    return _for_reader(row, who.prefs, who.address, now, timing)


def _to_supervisors(row: Row, who: Recipient) -> Decision:
    """A copy for each supervisor but the one who is the case's manager: they have the case
    manager's copy, the same notice, and got it twice."""
    if not who.members:
        return Dead(f"{store.NO_SUPERVISOR_OF}{row.agency} in the directory: add one"
                    " with PUT /v1/preferences/{user} and role supervisor")
    manager = row.context.get("case_manager")
    others = tuple(member for member in who.members if member != manager)
    if not others:
        return Cancel(f"the agency's only supervisor, {manager}, is the case manager and has"
                      " the case manager's copy")
    return FanOut(others)


def _for_reader(row: Row, prefs: Preferences, address: str, now: datetime,
                timing: DatedTiming | None) -> Decision:
    """A notice to one reader with an address: their preferences, zone and hours decide."""
    if row.kind in CELEBRATIONS and not prefs.celebrations:
        return Cancel(f"celebrations are turned off in {row.recipient}'s preferences")
    if reader_zone(prefs.timezone) is None:  # stored before names were checked
        return Dead(f"{store.UNKNOWN_ZONE}{prefs.timezone!r} in {row.recipient}'s preferences"
                    f" is not one this notifier knows: {_set_it(row)}")
    moment = timing.moment(row, prefs.timezone) if timing and row.kind in DATED else None
    if moment is not None and _passed_before_called_for(row, moment):
        return Cancel(f"its moment for {row.recipient} ({moment.isoformat()}) had passed when"
                      " it was called for")
    if row.kind != Kind.DAILY_DIGEST and prefs.delivery == "daily_digest":
        return ToDigest(now, prefs.timezone)
    if moment is not None and now < moment:  # the reader's zone is behind the schedule's
        return Defer(moment)
    return _quiet_or_send(prefs, address, now)


def waits_for_its_moment(row: Row) -> bool:
    """A dated notice to one staff member not yet looked at: it goes at its moment where its
    reader is (``DatedTiming.moment``), not at its due time."""
    return (row.status == "scheduled" and row.kind in DATED and row.digest_id is None
            and row.not_before == row.due_at
            and row.recipient_role in store.TO_ONE_STAFF_MEMBER)


def expected_send(row: Row, prefs: Preferences | None, timing: DatedTiming) -> datetime:
    """When ``row``, still waiting, is to go to its reader ``prefs``: for a dated notice not
    yet looked at, its moment where they are (in their digest of its day for a digest
    reader), past their quiet hours; otherwise when it is looked at next (``not_before``:
    its due time, the end of quiet hours, a retry, its digest's time). A reader east of the
    schedule's zone gets a dated notice before its due time: the schedule gave the due time
    alone, hours after the mail went (an audit of the twenty-first session)."""
    if not waits_for_its_moment(row) or prefs is None or reader_zone(prefs.timezone) is None:
        return row.not_before
    at = timing.digest_time if prefs.delivery == "daily_digest" else None
    moment = timing.moment(row, prefs.timezone, at)
    if _passed_before_called_for(row, moment):  # cancelled when looked at
        return row.not_before
    return quiet_until(prefs, moment) or moment


def _passed_before_called_for(row: Row, moment: datetime) -> bool:
    """A reminder of a review scheduled after the reminder's moment for this reader: it is
    kept in the schedule for readers west of here, for whom it is still ahead."""
    called_for = row.last_called_for
    return row.kind in HEADS_UP and called_for is not None and moment < called_for


def _set_it(row: Row) -> str:
    return f"set it with PUT /v1/preferences/{quote(row.recipient, safe='')}"


def reader_zone(name: str) -> ZoneInfo | None:
    """The reader's time zone, or None when this Python cannot load it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _untried_and_called_for_before(row: Row, history_began: datetime) -> bool:
    """A notice called for before the notifier's schema began keeping its record (say it
    was wiped and the feed replayed), never tried since, nor retried by a person: if it
    could be sent before then too (``_earliest_send``), it may have gone out already, and is
    not sent again. One first called for after that (a step written today with yesterday's
    date) is sent, and so is a manual retry."""
    return ((row.cause_recorded_at is None or row.cause_recorded_at < history_began)
            and not row.attempts and row.revived_at is None
            and row.kind != Kind.DAILY_DIGEST)


def _fate_unknown(history_began: datetime) -> Cancel:
    return Cancel(f"not sent: it fell due before this notifier's record of what it sent"
                  f" begins ({history_began.isoformat()}), so whether it went out before"
                  " cannot be known")


def _earliest_send(row: Row, who: Recipient, timing: DatedTiming | None) -> datetime:
    """The first moment ``row`` could go to its reader: its due time, or, for a dated notice,
    its moment where the reader is (a reader ahead of the schedule's zone is served early),
    or the digest of its day there (``Dispatcher._gather_todays_notices``)."""
    prefs = who.prefs
    if (row.kind not in DATED or timing is None or prefs is None
            or reader_zone(prefs.timezone) is None):
        return row.due_at
    at = timing.digest_time if prefs.delivery == "daily_digest" else None
    return min(row.due_at, timing.moment(row, prefs.timezone, at))


def _too_late(row: Row, now: datetime, stale_after: timedelta) -> bool:
    """Not yet tried, and long past due and long past the event that called for it (a
    review held late schedules the next one already overdue; a step may be written with a
    date already past: counted from the due time, their notices were cancelled as soon as
    they were called for). A manual retry restarts the clock: it is a person's explicit
    decision to send it now."""
    if row.attempts_since_revival > 0 or row.kind == Kind.DAILY_DIGEST:
        return False
    since = max(t for t in (row.due_at, row.last_called_for, row.revived_at) if t is not None)
    return now - since > stale_after


def _participant_decision(who: Recipient, now: datetime) -> Decision:
    prefs = who.prefs
    if prefs is None:
        return Cancel(store.NOT_OPTED_IN)
    if not prefs.celebrations:
        return Cancel(store.CELEBRATIONS_OFF)
    if not who.address:
        return Dead(f"{store.PARTICIPANT_NO_ADDRESS}: set it with"
                    f" PUT /v1/preferences/{quote(prefs.user_id, safe='')}")
    if reader_zone(prefs.timezone) is None:  # stored before names were checked
        return Dead(f"{store.UNKNOWN_ZONE}{prefs.timezone!r} in the participant's preferences"
                    " is not one this notifier knows: set it with PUT /v1/preferences/"
                    f"{quote(prefs.user_id, safe='')}")
    return _quiet_or_send(prefs, who.address, now, for_participant=True)


def _quiet_or_send(prefs: Preferences, address: str, now: datetime,
                   for_participant: bool = False) -> Decision:
    until = quiet_until(prefs, now)
    return Defer(until) if until is not None else Send(address, for_participant)


def quiet_until(prefs: Preferences, now: datetime) -> datetime | None:
    """The end of the recipient's quiet hours when ``now`` falls inside them, else None.

    A night of quiet hours runs from the first moment the reader's clock reads its start to
    the last moment it reads its end, as one stretch: on the night clocks go back, quiet
    hours beginning at 01:30 hold through the second pass of 01:00-01:30, and those ending at
    01:30 until the second 01:30 (read by the clock alone, mail went out in between: audits
    of the twenty-first session). A night that ends as the next begins (its end skipped, the
    next start the jump) is one stretch with it."""
    if prefs.quiet_start is None or prefs.quiet_end is None:
        return None
    zone = ZoneInfo(prefs.timezone)
    until = _end_of_night_around(prefs.quiet_start, prefs.quiet_end, now, zone)
    if until is not None:
        until = _end_of_night_around(prefs.quiet_start, prefs.quiet_end, until, zone) or until
    return until


def _end_of_night_around(start: time, end: time, now: datetime,
                         zone: ZoneInfo) -> datetime | None:
    """The end of the night of quiet hours ``now`` falls in, else None."""
    today = now.astimezone(zone).date()
    for day in (today, today - timedelta(days=1)):
        if _first_wall_time(day, start, zone) <= now:  # the latest night begun by now
            ends_on = day if start < end else day + timedelta(days=1)
            next_begins = _first_wall_time(day + timedelta(days=1), start, zone)
            ends = _last_wall_time(ends_on, end, zone, not_after=next_begins)
            return ends if now < ends else None
    return None


def _last_wall_time(day: date, at: time, zone: ZoneInfo, *, not_after: datetime) -> datetime:
    """The last moment ``zone``'s clock reads ``at`` on ``day`` (a time in the repeated hour:
    its second pass; in the skipped hour: the jump), or its first pass where the second
    would come after ``not_after`` (quiet hours of nearly a whole day, whose next night
    begins in between)."""
    first, last = _wall_readings(day, at, zone)
    return last if last <= not_after else first


def _first_wall_time(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The first moment ``zone``'s clock reads ``at`` on ``day``; for a time in the hour
    clocks skip, the moment they jump past it."""
    return _wall_readings(day, at, zone)[0]


def _wall_readings(day: date, at: time, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The first and the last moment ``zone``'s clock reads ``at`` on ``day``: the same
    moment on a day the clocks do not change there; a time in the repeated hour its two
    passes; a time in the skipped hour, which never shows, the moment they jump past it
    (read with the offset from before the jump, quiet hours ending at 02:30 in New York ended
    at 03:30)."""
    first, second = (datetime.combine(day, at, tzinfo=zone).replace(fold=fold).astimezone(UTC)
                     for fold in (0, 1))
    if first > second:  # skipped: fold 0 reads the offset before the jump, fold 1 after it
        jump = _jump_between(second, first, zone)
        return jump, jump
    return first, second


def wall_time_after(now: datetime, day: date, at: time, zone: ZoneInfo) -> datetime:
    """``at`` o'clock on ``day`` in ``zone``, as a moment after ``now`` if it can be one. On the
    night clocks go back, a time in the repeated hour comes twice: once the first has passed,
    the second is meant (taking the first made quiet hours end before they began, and the
    dispatcher claimed the row again and again). On the night they jump forward, a time in
    the skipped hour never shows: the moment they jump past it is meant."""
    first, last = _wall_readings(day, at, zone)
    return first if first > now else last


def _jump_between(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The moment between ``before`` and ``after`` (UTC, an hour or so apart) at which
    ``zone``'s offset changes, to the second (offsets change on whole seconds)."""
    offset_after = after.astimezone(zone).utcoffset()
    low, high = 0, int((after - before).total_seconds())
    while low < high:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle + 1
    return before + timedelta(seconds=low)


def put_off_until(row: Row, until: datetime) -> datetime:
    """When a row put off is looked at again: ``until``, but a microsecond later when that is
    its due time, since ``not_before`` equal to ``due_at`` marks a row never put off, which
    the early claim (``claim_dated_early``) took again, and put off again, every second."""
    return until + _A_MOMENT if until == row.due_at else until


def next_local_time(zone_name: str, at: time, now: datetime, skip_days: int = 0) -> datetime:
    """The next ``at`` o'clock in the zone (today's if still ahead), ``skip_days`` later."""
    zone = ZoneInfo(zone_name)
    local = now.astimezone(zone)
    moment = datetime.combine(local.date(), at, tzinfo=zone)
    if moment < now:
        moment += timedelta(days=1)
    return (moment + timedelta(days=skip_days)).astimezone(UTC)


def digest_notice(row: Row, zone_name: str, at: datetime) -> Notice:
    local_day = at.astimezone(ZoneInfo(zone_name)).date().isoformat()
    return Notice(store.digest_key(row.agency, row.recipient, local_day), Kind.DAILY_DIGEST,
                  None, row.agency, RecipientRole.USER, row.recipient, at)


# --------------------------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpResult:
    code: int | None
    outcome: str  # sent | transient | permanent
    detail: str


_SMTP_CODES = range(200, 600)
_UNREADABLE = -1  # aiosmtplib's code for an answer that is not an SMTP reply


def _not_smtp(code: int, detail: str) -> str:
    """An answer with no SMTP reply code (aiosmtplib's -1, with the line it could not read) or
    with one SMTP has not: it used to be recorded as the server's code ("-1: Malformed SMTP
    response line: …")."""
    said = (detail.removeprefix("Malformed SMTP response line:") if code == _UNREADABLE
            else f"{code} {detail}")
    return f'the mail server\'s answer was not SMTP: "{" ".join(said.split())}"'


def no_reply(error: BaseException, host: str, port: int, timeout: float) -> str:
    """Why no reply came, in words a person reads: it used to be the exception as Python
    prints it ("SMTPConnectError: … [Errno 111] Connect call failed ('127.0.0.1', 25)")."""
    server = f"the mail server {host}:{port}"
    cause = error.__cause__
    if isinstance(tls := cause if isinstance(cause, ssl.SSLError) else error, ssl.SSLError):
        return f"TLS with {server} failed: {_tls_failure(tls)}"
    if isinstance(cause, socket.gaierror):
        return f"could not find {server}: {cause.strerror or 'its name is not known'}"
    if isinstance(cause, ConnectionRefusedError):
        return f"{server} refused the connection"
    if isinstance(error, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return f"{server} did not answer within {timeout:g} s"
    if isinstance(cause, aiosmtplib.SMTPServerDisconnected):  # it read "no address answered"
        return f"{server} closed the connection before answering"
    if isinstance(cause, OSError):  # unreachable, say; no strerror: each address failed
        return f"could not connect to {server}: {cause.strerror or 'no address of it answered'}"
    if isinstance(error, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return f"{server} closed the connection before answering"
    if _no_login_offered(error):  # its words name STARTTLS too, and it read like the next
        return (f"{server} does not offer a login (AUTH), which SMTP_USERNAME asks for: check"
                " SMTP_TLS and SMTP_STARTTLS (servers often offer it only inside TLS), or unset"
                " SMTP_USERNAME and SMTP_PASSWORD if it takes none")
    if _no_starttls_offered(error):
        return f"{server} does not offer STARTTLS, which SMTP_STARTTLS asks for"
    if isinstance(error, aiosmtplib.SMTPException):  # the client's own, before any reply
        return f"{server}: {error.message}"
    return f"{type(error).__name__}: {error}"  # an address the client cannot encode, say


def _tls_failure(error: ssl.SSLError) -> str:
    """Why TLS failed. An untrusted certificate, with implicit TLS (SMTP_TLS), used to read
    "could not connect to …: [SSL: CERTIFICATE_VERIFY_FAILED] … (_ssl.c:1006)"."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"its certificate is not trusted ({error.verify_message}); SMTP_CA_FILE names"
                " the authorities to trust, the system's when unset")
    return (error.reason or "").replace("_", " ").lower() or error.strerror or "unknown"


def _no_login_offered(error: BaseException) -> bool:
    """aiosmtplib's own error when a login is set and the server offers none it can use."""
    said = _clients_own_words(error)
    return "AUTH extension" in said or "authentication method" in said


def _no_starttls_offered(error: BaseException) -> bool:
    return "STARTTLS" in _clients_own_words(error)


def _clients_own_words(error: BaseException) -> str:
    """What aiosmtplib said of an error of its own, not a server's reply; "" for any other."""
    if (isinstance(error, aiosmtplib.SMTPException)
            and not isinstance(error, aiosmtplib.SMTPResponseException)):
        return error.message
    return ""


_CHECK_THE_HOST = "check SMTP_HOST and SMTP_PORT, and ask the mail server's operator"
_CHECK_THE_SENDER = ("check NOTIFIER_FROM is an address this server lets this notifier send"
                     " from, and the login (SMTP_USERNAME) if it asks for one")
# 552 at MAIL refuses the message's size (the client gives SIZE there when the server offers
# it, RFC 1870), not the sender
_SIZE_EXCEEDED = 552


def _session_refusal(error: aiosmtplib.SMTPResponseException,
                    starttls: bool) -> str | None:
    """What a 5xx refusing this notifier's session says is wrong and what to check; None for a
    refusal of the recipient or of the message. A session refusal is the same for every
    notice while it lasts (a blocked address, a password rotated, a relay rule changed): it
    made a dead letter of each notice tried, a whole morning's reminders within seconds."""
    words = " ".join(error.message.split())
    if isinstance(error, aiosmtplib.SMTPConnectResponseError):
        return (f"the mail server refused this notifier's session at its greeting ({words}):"
                f" it may be refusing this host's address for now; {_CHECK_THE_HOST}")
    if isinstance(error, aiosmtplib.SMTPHeloError):
        return (f"the mail server refused this notifier's EHLO and HELO ({words}): it may not"
                f" take the name this host gives itself; {_CHECK_THE_HOST}")
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return (f"the mail server refused the login ({words}): check SMTP_USERNAME and"
                " SMTP_PASSWORD")
    if isinstance(error, aiosmtplib.SMTPSenderRefused) and error.code != _SIZE_EXCEEDED:
        return f"the mail server refused the sender, NOTIFIER_FROM ({words}): {_CHECK_THE_SENDER}"
    if type(error) is aiosmtplib.SMTPResponseException and starttls:  # STARTTLS's own reply
        return (f"the mail server refused STARTTLS ({words}): check SMTP_STARTTLS, and"
                " SMTP_PORT (SMTP_TLS for a server that speaks TLS from the first byte,"
                " usually port 465)")
    return None


def classify(code: int | None, detail: str) -> SmtpResult:
    if code is not None and code not in _SMTP_CODES:
        return SmtpResult(None, "transient", f"no reply: {_not_smtp(code, detail)}")
    if code is not None and 200 <= code < 300:
        return SmtpResult(code, "sent", detail)
    if code is not None and 500 <= code < 600:
        return SmtpResult(code, "permanent", detail)
    return SmtpResult(code, "transient", detail)


_NOT_TRIED = "; not tried for this notice: {} moments before"
_REFUSED_SESSION = "the mail server refused this notifier's session"
_NO_SESSION_OPENED = "this notifier could not open a session with the mail server"
_CLIENT_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError, UnicodeError)
_NO_SMTPUTF8 = ("the address is not plain ASCII and the mail server does not offer SMTPUTF8"
                " (RFC 6531), so it cannot take it: give an ASCII address, or use a mail server"
                " that offers SMTPUTF8")


class SmtpSender:
    """Sends over a small pool of kept-open SMTP connections (one message per connection at a
    time); a connection that fails in any way is closed and replaced. Once a round of dispatch
    could not get a session (a connection, its greeting, EHLO or HELO, STARTTLS, the login) or
    had it refused at the sender, it opens no new connection for half the first retry delay
    (``round_begins``)."""

    def __init__(self, settings: NotifierSettings) -> None:
        self._settings = settings
        self._sender = parseaddr(settings.mail_from)[1]
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # with when it became idle
        # built only for TLS: reading the system's authorities took ~19 ms of CPU a start
        self._tls = (smtp_tls_context(settings.smtp_ca_file)
                     if settings.smtp_tls or settings.smtp_starttls else None)
        self._no_session: SmtpResult | None = None  # why there is no session now, if so
        self._round_at: datetime | None = None
        self._held_until: datetime | None = None
        # the soonest a notice held back is retried (RetryPolicy: half the delay is fixed)
        self._hold_for = timedelta(seconds=settings.retry_base_seconds / 2)

    def round_begins(self, now: datetime) -> None:
        """A round of dispatch or of digests begins: new connections may be tried again once
        the hold is over. A hold for one round still opened a connection a second (rounds
        come every second, the digest job's between them): 3,600 failed logins an hour."""
        self._round_at = now
        if self._held_until is None or now >= self._held_until:
            self._no_session = self._held_until = None

    async def _connect(self) -> aiosmtplib.SMTP:
        """A new connection: TLS from the first byte (SMTP_TLS) or after STARTTLS
        (SMTP_STARTTLS), the certificate checked either way, then the login if one is set
        (the settings allow a login without TLS only to a relay on this host), and EHLO (or
        HELO) when neither said it: all of the session that is the same for every notice, so
        a failure here holds the round (``send``)."""
        s = self._settings
        client = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port,
                                 timeout=s.smtp_timeout_seconds, use_tls=s.smtp_tls,
                                 start_tls=s.smtp_starttls, tls_context=self._tls,
                                 username=s.smtp_username, password=s.smtp_password)
        await client.connect()
        try:
            if client.is_ehlo_or_helo_needed:
                await _greet(client)
        except BaseException:
            client.close()
            raise
        return client

    async def _ready_client(self) -> aiosmtplib.SMTP | None:
        """A pooled connection still open, else a new one; None when this round could not get
        a session (a new connection would meet the same: a batch of 100 made 100 failed logins
        in a tight loop, and 100 connections to a server saying "too many connections"). An
        idle connection the server closed is found out here, before a message is given to it,
        so a connection lost during a send means the message may have arrived, and it is not
        resent at once. One idle for a while must answer a NOOP first; one just used is taken
        as it is (a NOOP before every message cost a quarter of the dispatch rate in
        bench/notify.py)."""
        while self._idle:
            client, idle_since = self._idle.pop()
            if not client.is_connected:
                continue
            if monotonic() - idle_since < _FRESH_SECONDS:
                return client
            try:
                await client.noop()
                return client
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        return None if self._no_session is not None else await self._connect()

    def _keep(self, client: aiosmtplib.SMTP) -> None:
        self._idle.append((client, monotonic()))

    async def send(self, message: bytes, address: str) -> SmtpResult:
        try:
            client = await self._ready_client()
        except _CLIENT_FAILURES as error:  # no session: a new connection would fare the same
            return self._hold(_unsent(self._failure(error), _NO_SESSION_REPLY))
        if client is None:
            return self._held()
        try:
            options = _mail_options(client, address)
            if options is None:
                self._keep(client)
                return SmtpResult(None, "permanent", _NO_SMTPUTF8)
            _, response = await client.sendmail(self._sender, [address], message,
                                                mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as error:
            await _close(client)
            return _unsent(self._refusal(error.recipients[0]), _unasked_reply("RCPT"))
        except aiosmtplib.SMTPResponseException as error:
            await _close(client)
            return _unsent(self._refusal(error), _unasked_reply(_step_of(error)))
        except _CLIENT_FAILURES as error:
            # no reply, a connection lost mid-message, an address the client cannot encode:
            # an attempt that failed, recorded and retried; the connection, in a state
            # unknown, is dropped rather than pooled
            _drop(client)
            return self._failure(error)
        except BaseException:
            _drop(client)  # a fault of ours: the dispatcher records it (Dispatcher._settled)
            raise
        self._keep(client)
        return classify(250, response)

    def _refusal(self, error: aiosmtplib.SMTPResponseException) -> SmtpResult:
        """The server's refusal: of this notifier's session (retried, and no new connection
        this round), else as its code says."""
        result = classify(error.code, error.message)
        if result.outcome == "permanent" and (
                what := _session_refusal(error, self._settings.smtp_starttls)) is not None:
            result = self._hold(SmtpResult(error.code, "transient", what))
        return result

    def _failure(self, error: BaseException) -> SmtpResult:
        """A refusal, the one a timeout hid, or no reply."""
        if isinstance(error, aiosmtplib.SMTPResponseException):
            return self._refusal(error)
        if (refused := _refusal_behind(error)) is not None:
            return self._refusal(refused)
        s = self._settings
        return classify(None, "no reply: " + no_reply(error, s.smtp_host, s.smtp_port,
                                                     s.smtp_timeout_seconds))

    def _hold(self, failure: SmtpResult) -> SmtpResult:
        self._no_session = failure
        if self._round_at is not None:
            self._held_until = self._round_at + self._hold_for
        return failure

    def _held(self) -> SmtpResult:
        """Why this round has no session, for a notice not tried because of it."""
        failure = self._no_session
        assert failure is not None
        why = _REFUSED_SESSION if failure.code is not None else _NO_SESSION_OPENED
        return replace(failure, detail=failure.detail + _NOT_TRIED.format(why))

    async def close(self) -> None:
        """QUIT every pooled connection at once: one after another, a server that never
        answers QUIT held a stop for SMTP_TIMEOUT per connection (80 s by default)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_close(client) for client, _ in idle))


def _unsent(failure: SmtpResult, words: str) -> SmtpResult:
    """A reply aiosmtplib raised is no message taken, whatever its code: it raises a reply a step
    does not ask for, and a 2xx (250 to the login, which asks for 235; 251 to MAIL; 250 to
    DATA, which asks for 354) was taken for the message accepted, the notice recorded sent and
    none gone out. ``words`` say so around the reply's own."""
    if failure.outcome != "sent":
        return failure
    return replace(failure, outcome="transient", detail=words.format(failure.detail))


_NO_SESSION_REPLY = "the mail server's reply does not open the session ({})"


def _unasked_reply(step: str) -> str:
    # a 2xx but not 250 at the end of the data raises as one at DATA's start does, and there
    # the message may have been taken (a retry then sends it again, with its Message-ID)
    fate = "may not have been sent" if step == "DATA" else "was not sent"
    return (f"the mail server's reply to {step} is not the one it asks for, so the message"
            f" {fate} ({{}}); it is tried again")


def _step_of(error: aiosmtplib.SMTPResponseException) -> str:
    if isinstance(error, aiosmtplib.SMTPSenderRefused):
        return "MAIL"
    return "DATA" if isinstance(error, aiosmtplib.SMTPDataError) else "the message's transaction"


def _mail_options(client: aiosmtplib.SMTP, address: str) -> list[str] | None:
    """The MAIL options ``address`` needs; None when this server cannot take it."""
    if address.isascii():
        return []
    # the EHLO's answer, on connecting (SmtpSender._connect), listed the server's extensions
    return ["SMTPUTF8"] if client.supports_extension("smtputf8") else None


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, then HELO if EHLO is refused (as aiosmtplib does before a message): a refused
    EHLO alone is no refusal of the session."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


def _refusal_behind(error: BaseException) -> aiosmtplib.SMTPResponseException | None:
    """The server's refusal a timeout hid, if any: after a refusal aiosmtplib resets the
    envelope (RSET), and a server that never answers that raised the timeout in the
    refusal's place; a 550 became "no reply", retried for a day. A refused EHLO is not one:
    the client then says HELO, and a HELO unanswered is no reply (taken for the EHLO's 502,
    it was a dead letter at the first try)."""
    if not isinstance(error, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return None
    seen = error.__context__
    while seen is not None and not isinstance(seen, aiosmtplib.SMTPException):
        seen = seen.__context__  # the timeout's own cause, raised on the way
    if isinstance(seen, aiosmtplib.SMTPRecipientsRefused):
        return seen.recipients[0]
    if (isinstance(seen, aiosmtplib.SMTPResponseException)
            and not isinstance(seen, aiosmtplib.SMTPHeloError)):
        return seen
    return None


def _drop(client: aiosmtplib.SMTP) -> None:
    client.close()


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()


def from_header(mail_from: str) -> str:
    """``NOTIFIER_FROM`` as a From header: only a non-ASCII name is encoded, not the address."""
    return formataddr(parseaddr(mail_from), charset="utf-8")


# SMTP's limit on a line (RFC 5321): a URL cannot be folded, so a longer header is left out
_LONGEST_LINE = 998


def unsubscribe_headers(url: str | None) -> dict[str, str]:
    """The one-click unsubscribe headers (RFC 2369, RFC 8058) of a participant's mail; none
    without a link, or for a link too long for one line (two ids of 200 characters outside
    ASCII): the link in the body still serves."""
    if url is None or len(f"List-Unsubscribe: <{url}>") > _LONGEST_LINE:
        return {}
    return {"List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def build_message(row: Row, rendered: Rendered, address: str, sender: str,
                  now: datetime, unsubscribe_url: str | None = None) -> bytes:
    """The message as bytes (compat32 email classes: several times cheaper than
    EmailMessage's header registry, which matters at thousands of messages a minute);
    ``sender``: the From header (``from_header``); ``unsubscribe_url``: a participant's
    one-click link (staff mail has none: it is work mail)."""
    message = MIMEMultipart("alternative")
    message["From"] = sender
    message["To"] = address
    plain = address.isascii()
    # with SMTPUTF8 (a non-ASCII address) the policy below folds the Subject itself
    message["Subject"] = _subject(rendered.subject) if plain else rendered.subject
    message["Message-ID"] = row.message_id
    message["Date"] = format_datetime(now)
    # RFC 3834, and Exchange's own flag: no out-of-office or other automatic reply to a notice
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Casetrail-Notification"] = str(row.id)
    message["X-Casetrail-Kind"] = row.kind
    for name, value in unsubscribe_headers(unsubscribe_url).items():
        message[name] = value
    message.attach(MIMEText(rendered.text, "plain", "utf-8"))
    message.attach(MIMEText(rendered.html, "html", "utf-8"))
    if plain:
        return message.as_bytes()
    # sent with SMTPUTF8 (RFC 6532): the address stays UTF-8 in To, which an encoded word
    # (RFC 2047) may not carry
    return message.as_bytes(policy=_UTF8_HEADERS)


def _subject(subject: str) -> str:
    """The Subject as header text: encoded words (RFC 2047) for non-ASCII, and for a word too
    long to fold at a space (a pasted address), which could make a line longer than the 998
    bytes SMTP allows: servers refuse such a message outright."""
    if subject.isascii() and all(len(word) <= _LONGEST_WORD for word in subject.split()):
        return subject
    return Header(subject, "utf-8", header_name="Subject").encode()


# --------------------------------------------------------------------------------------------
# the dispatcher
# --------------------------------------------------------------------------------------------


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, settings: NotifierSettings, clock: Clock,
                 metrics: NotifierMetrics, owner: str, rng: random.Random | None = None,
                 history_began: datetime | None = None,
                 links: UnsubscribeLinks | None = None) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        self._owner = owner
        self._rng = rng or random.Random()
        self._history_began = history_began
        self._retry = RetryPolicy.of(settings)
        self._timing = DatedTiming.of(settings)
        self._smtp = SmtpSender(settings)
        self._from = from_header(settings.mail_from)  # once, not for every message
        self._links = links  # read and checked once, by the app (None: no links)
        self._unknown_zones: set[str] = set()
        self._counters = {"sent": metrics.sent, "failed": metrics.failed, "dead": metrics.dead,
                          "cancelled": metrics.cancelled}
        self._slots = asyncio.Semaphore(settings.dispatch_concurrency)
        self._give_up_at: float | None = None

    async def close(self) -> None:
        await self._smtp.close()

    async def dispatch_due(self) -> int:
        """Handle every notice due now (digests excepted), first the dated notices whose
        moment has come in their reader's zone ahead of the schedule's; the number of rows
        handled."""
        self._smtp.round_begins(self._clock())
        handled: list[UUID] = []
        zones = await directory.timezones(self._pool, "immediate")
        while not self._stopping and (
                early := await self._claim_dated_early(zones, "immediate", None, handled)):
            handled += [row.id for row, _ in early]
            await self._handle_batch([row for row, _ in early], digests=False)
        return len(handled) + await self._drain(digests=False)

    async def send_digests(self) -> int:
        self._smtp.round_begins(self._clock())
        await self._gather_todays_notices()
        return await self._drain(digests=True)

    async def _gather_todays_notices(self) -> None:
        """Once a reader's digest time has come, the dated notices of that day join that
        morning's digest; otherwise a review due today (its notice due at the send time,
        after the digest time) would reach a digest reader the day after."""
        passed_over: list[UUID] = []
        at = self._timing.digest_time
        zones = await directory.timezones(self._pool, "daily_digest")
        while early := await self._claim_dated_early(zones, "daily_digest", at, passed_over):
            for row, zone in early:
                moment = self._timing.moment(row, zone, at)
                began = self._history_began
                if began is not None and _untried_and_called_for_before(row, began) \
                        and moment < began:
                    await self._cancel_claimed(row, _fate_unknown(began))
                    continue
                digest = digest_notice(row, zone, moment)
                if not await store.attach_to_digest(self._pool, row, digest,
                                                    self._settings.message_id_domain,
                                                    self._clock(), self._history_began):
                    # that day's digest is being looked at or sent: the notice takes the
                    # usual path (once the digest has gone, the claim leaves the notice out)
                    await self.release(row, row.not_before)
                    passed_over.append(row.id)

    async def _cancel_claimed(self, row: Row, cancel: Cancel) -> None:
        assert row.claim_token is not None
        outcome = Outcome(row.id, "cancelled", False, row.attempts, error=cancel.reason)
        recorded = await self._record([outcome], row.claim_token)
        self._report_what_stood([row], [outcome], recorded)

    async def _claim_dated_early(self, zones: Sequence[str], delivery: str, at: time | None,
                                 passed_over: Sequence[UUID]) -> list[tuple[Row, str]]:
        """Dated notices whose moment has come early in their reader's zone, each with the
        zone; no statement at all when no zone is ahead of now (a notice claimed here must be
        due after now, so a zone due by now or earlier has none)."""
        now = self._clock()
        due_by = {zone: by for zone, by in self._due_by(zones, now, at).items() if by > now}
        if not due_by:
            return []
        digest_days = self._timing.days_ahead(now) if delivery == "daily_digest" else []
        return await store.claim_dated_early(
            self._pool, owner=self._owner, now=now, limit=self._settings.dispatch_batch,
            lease=self._lease, delivery=delivery, due_by=due_by, passed_over=passed_over,
            digest_days=digest_days, span=self._timing.claim_span)

    def _due_by(self, zones: Sequence[str], now: datetime, at: time | None) -> dict[str, datetime]:
        """``DatedTiming.due_by`` for each zone this Python knows. A reader whose zone it does
        not know (stored before names were checked) is left to the usual path, where the
        notice is a dead letter saying what to set; it must not stop the others' mail."""
        found: dict[str, datetime] = {}
        for zone in zones:
            if reader_zone(zone) is not None:
                found[zone] = self._timing.due_by(zone, now, at)
            elif zone not in self._unknown_zones:
                self._unknown_zones.add(zone)
                log.error("a reader's time zone is unknown; their dated notices are not sent"
                          " early", timezone=zone)
        return found

    async def release(self, row: Row, until: datetime) -> None:
        """Give a claimed row back, to be looked at again at ``until``, but never at a moment
        that has already come: the row would be claimed again at once, and again (quiet hours
        that ended in the past on the night clocks went back once made dispatch spin)."""
        now = self._clock()
        if until <= now:
            log.error("a row was to be put off to a moment already past; it waits a minute",
                      notification=str(row.id), until=until.isoformat())
            until = now + _LEAST_WAIT
        await store.release(self._pool, row, until, now)

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self._settings.lease_seconds)

    async def _drain(self, *, digests: bool) -> int:
        total = 0
        while not self._stopping and (rows := await store.claim_due(
                self._pool, owner=self._owner, now=self._clock(),
                limit=self._settings.dispatch_batch, lease=self._lease, digests=digests)):
            await self._handle_batch(rows, digests=digests)
            total += len(rows)
        return total

    async def _handle_batch(self, rows: Sequence[Row], *, digests: bool) -> None:
        """Handle rows claimed together (one claim token) and record their outcomes."""
        token = rows[0].claim_token
        assert token is not None
        # the lease is kept until the outcomes are recorded, however long that takes
        keeper = asyncio.create_task(self._keep_claim(token))
        try:
            who = await self._recipients(rows)
            results = await self._handle_all(rows, who, digests=digests)
            outcomes = self._settle_all(rows, results)
            recorded = await self._record(outcomes, token)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        self._report_what_stood(rows, outcomes, recorded)
        if recorded.lost:
            log.warning("another instance took these rows over before their outcome was"
                        " recorded", notifications=[str(i) for i in recorded.lost])
        await self._look_again_at_the_dead(rows, who, outcomes, recorded.lost)

    async def _look_again_at_the_dead(self, rows: Sequence[Row], who: Mapping[UUID, Recipient],
                                      outcomes: Sequence[Outcome],
                                      lost: Sequence[UUID]) -> None:
        """Dead letters just recorded for something the directory gives (an address, a
        zone, a supervisor) are looked at again with the entries now stored: a save may
        have committed it after they were decided, and looked for them before they were
        recorded (``directory.mend_what_died_meanwhile``)."""
        died = {o.row_id for o in outcomes if o.status == "dead" and o.row_id not in lost
                and (o.error or "").startswith(_MENDABLE)}
        if not died:
            return
        try:
            await directory.mend_what_died_meanwhile(
                self._pool, [(r, who[r.id].prefs) for r in rows if r.id in died],
                self._clock())
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
            log.warning("could not look again at dead letters just recorded; the next save"
                        " of their reader's preferences sends them", error=str(error))

    def _settle_all(self, rows: Sequence[Row],
                    results: Sequence[Outcome | BaseException | None]) -> list[Outcome]:
        settled = [(row, self._settled(row, r)) for row, r in zip(rows, results, strict=True)]
        outcomes = [(row, outcome) for row, outcome in settled if outcome is not None]
        for row, outcome in outcomes:
            if outcome.status == "sent":  # counted as it went, whatever is recorded of it
                self._report(row, outcome)
        return [outcome for _, outcome in outcomes]

    def _report_what_stood(self, rows: Sequence[Row], outcomes: Sequence[Outcome],
                           recorded: store.Recorded) -> None:
        """Count and log each outcome other than a mail sent once it is its row's fate: one
        decided for a row the feed cancelled meanwhile (its case closed, its review held)
        was counted, and logged as a failure or a dead letter, though the row stays
        cancelled."""
        by_id = {row.id: row for row in rows}
        for outcome in outcomes:
            if outcome.status != "sent" and outcome.row_id in recorded.stood:
                self._report(by_id[outcome.row_id], outcome)

    def shutting_down(self) -> None:
        """The process stops: no new batch is claimed, and outcomes the database does not take
        within a short grace are given up (and logged) rather than holding the stop."""
        self._give_up_at = monotonic() + SHUTDOWN_GRACE

    @property
    def _stopping(self) -> bool:
        return self._give_up_at is not None

    async def _record(self, outcomes: list[Outcome], token: UUID) -> store.Recorded:
        """Record the outcomes: mail that went out but was not recorded would go out again
        once its lease ran out."""
        return await self._while_unavailable(
            lambda: store.record_outcomes(self._pool, outcomes, self._clock(), token), outcomes)

    async def _while_unavailable(self, write: Callable[[], Awaitable[T]],
                                 outcomes: Sequence[Outcome]) -> T:
        """``write`` the fate of mail already sent, trying again with backoff while the
        database is unavailable (the claim's lease is kept meanwhile)."""
        delays = doubling(_RECORD_FIRST_DELAY, _RECORD_MAX_DELAY)
        patience_ends = monotonic() + _RECORD_PATIENCE_SECONDS
        while True:
            try:
                return await write()
            except DATABASE_UNAVAILABLE as error:
                delay = next(delays)
                give_up_at = min(patience_ends, self._give_up_at or patience_ends)
                if monotonic() + delay > give_up_at:
                    _log_unrecorded(outcomes, error)
                    raise
                log.warning("could not record what became of the notifications; trying"
                            " again", error=repr(error), retry_in=delay)
            await asyncio.sleep(delay)

    async def _handle_all(self, rows: Sequence[Row], who: Mapping[UUID, Recipient], *,
                          digests: bool) -> list[Outcome | BaseException | None]:
        handle = self._handle_digest if digests else self._handle
        # one row's failure must not lose the others' outcomes (they were sent)
        return await asyncio.gather(*(handle(row, who[row.id]) for row in rows),
                                    return_exceptions=True)

    def _settled(self, row: Row, result: Outcome | BaseException | None) -> Outcome | None:
        """What to record for a row. An exception while handling it is a failed attempt,
        retried with backoff until the retries run out: left unrecorded, the row came back
        at every lease, silently, until it was too late to send."""
        if isinstance(result, Exception):
            fault = f"delivery failed: {type(result).__name__}: {result}"
            return self._outcome(row, SmtpResult(None, "transient", fault))
        return result if isinstance(result, Outcome) else None

    async def _keep_claim(self, token: UUID) -> None:
        """Renew the batch's lease while its rows wait for an SMTP slot or are being sent, so
        a slow mail server does not let another instance take them over. Should a renewal
        fail, the check just before each send still stops a second send."""
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            try:
                await store.renew_claim(self._pool, token, self._clock() + self._lease)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
                log.warning("could not renew a dispatch lease", error=str(error))

    async def _recipients(self, rows: Sequence[Row]) -> dict[UUID, Recipient]:
        users = await directory.users(self._pool, {
            (r.agency, r.recipient) for r in rows
            if r.recipient_role in (RecipientRole.CASE_MANAGER, RecipientRole.USER)})
        found: dict[UUID, Recipient] = {}
        for row in rows:
            if row.recipient_role == RecipientRole.PARTICIPANT:
                found[row.id] = await self._participant(row)
            elif row.recipient_role == RecipientRole.SUPERVISORS:
                members = await directory.supervisors(self._pool, row.agency)
                found[row.id] = Recipient(None, None, tuple(m.user_id for m in members))
            else:
                prefs = users.get((row.agency, row.recipient))
                found[row.id] = Recipient(prefs, prefs.email if prefs else None)
        return found

    async def _participant(self, row: Row) -> Recipient:
        assert row.case_id is not None
        prefs = await directory.participant_of(self._pool, row.agency, row.case_id)
        facts = await case_facts(self._pool, row.case_id)
        address = (prefs.email if prefs else None) or (facts["participant_email"]
                                                       if facts else None)
        return Recipient(prefs, address)

    async def _handle(self, row: Row, who: Recipient) -> Outcome | None:
        now = self._clock()
        stale = timedelta(hours=self._settings.stale_after_hours)
        match decide(row, who, now, stale_after=stale, history_began=self._history_began,
                     timing=self._timing):
            case Send(address, for_participant):
                unsubscribe = self._unsubscribe_url(who) if for_participant else None
                try:
                    rendered = render(row.kind, row.context, row.case_id,
                                      today=self._readers_today(who, now),
                                      for_participant=for_participant,
                                      plan_url=self._settings.plan_url,
                                      unsubscribe_url=unsubscribe)
                except (ValueError, KeyError, OSError) as error:
                    return Outcome(row.id, "dead", False, row.attempts,
                                   error=f"could not render the message: {error!r}")
                return await self._send(row, _as_is(rendered), address, unsubscribe)
            case Cancel(reason):
                return Outcome(row.id, "cancelled", False, row.attempts, error=reason)
            case Dead(reason):
                return Outcome(row.id, "dead", False, row.attempts, error=reason)
            case Defer(until):
                await self.release(row, put_off_until(row, until))
            case ToDigest(_, zone):
                await self._into_digest(row, zone, now)
            case FanOut(members):
                children = [Notice(f"{row.key}:{member}", Kind(row.kind), row.case_id,
                                   row.agency, RecipientRole.USER, member, row.due_at,
                                   row.context) for member in members]
                await store.fan_out(self._pool, row, children,
                                    self._settings.message_id_domain, now)
        return None

    def _unsubscribe_url(self, who: Recipient) -> str | None:
        """The participant's one-click link, naming the entry that decided this mail."""
        if self._links is None or who.prefs is None:
            return None
        return self._links.url(Entry(who.prefs.agency, who.prefs.user_id))

    def _readers_today(self, who: Recipient, now: datetime) -> date:
        """The date where the reader is (the schedule's zone for a reader without one)."""
        zone = reader_zone(who.prefs.timezone) if who.prefs else None
        return now.astimezone(zone or ZoneInfo(self._timing.notices_zone)).date()

    async def _into_digest(self, row: Row, zone: str, now: datetime) -> None:
        """Into the reader's next digest; a dated notice into that of its day where the
        reader is (``moment``, as one claimed early goes), unless that one has gone by: for
        a reader far behind the schedule's zone, the next digest after its due time was on
        the day before its day (a step's nudge on the step's own day)."""
        start = now
        if row.kind in DATED:
            start = max(now, self._timing.moment(row, zone, self._timing.digest_time))
        for skip in range(7):
            at = next_local_time(zone, self._timing.digest_time, start, skip)
            notice = digest_notice(row, zone, at)
            if await store.attach_to_digest(self._pool, row, notice,
                                            self._settings.message_id_domain, now,
                                            self._history_began):
                return
        raise RuntimeError(f"no open digest for {row.recipient} within a week")

    async def _handle_digest(self, digest: Row, who: Recipient) -> Outcome | None:
        if not await store.digest_children(self._pool, digest.id):
            return _nothing_left(digest)
        now = self._clock()
        quiet_end = quiet_until(who.prefs, now) if who.prefs is not None else None
        if quiet_end is not None:  # a digest waits out quiet hours like any message
            await self.release(digest, quiet_end)
            return None
        told: list[UUID] = []  # the notices the mail tells, once composed
        if not who.address:
            outcome = Outcome(digest.id, "dead", False, digest.attempts,
                              error=f"{store.NO_ADDRESS_FOR}{digest.recipient}")
        else:
            try:
                sent = await self._send(digest, functools.partial(
                    self._compose_digest, digest, who, told), who.address)
            except Exception as error:  # as ``_settled`` takes it; its notices share its fate
                sent = self._settled(digest, error)
            if sent is None:
                return None
            outcome = sent
        await self._while_unavailable(  # else a digest sent is sent again, as failed
            lambda: store.mark_digest_children(self._pool, digest.id, outcome, told,
                                               self._clock()),
            [outcome])
        return outcome

    async def _compose_digest(self, digest: Row, who: Recipient,
                              told: list[UUID]) -> Rendered | Outcome:
        """The digest as its notices read now (each may have been cancelled, or moved to
        another reader, while the digest waited for a connection: it told a closed case's
        and a transferred case's news, and notices taken back); their ids go in ``told``. A
        notice that cannot be rendered is a dead letter of its own, saying why (it made the
        whole digest fail until it died, its other notices left waiting in it for good)."""
        today = self._readers_today(who, self._clock())
        parts: list[Rendered] = []
        unreadable: list[tuple[Row, Outcome]] = []
        for item in await store.digest_children(self._pool, digest.id):
            try:
                parts.append(render(item.kind, item.context, item.case_id, today=today,
                                    plan_url=self._settings.plan_url))
                told.append(item.id)
            except (ValueError, KeyError, OSError) as error:
                unreadable.append((item, Outcome(item.id, "dead", False, item.attempts,
                                                 error=f"could not render the message: {error!r}")))
        given_up = await store.give_up_items(self._pool, [o for _, o in unreadable],
                                             self._clock())
        for item, outcome in unreadable:
            if item.id in given_up:
                self._report(item, outcome)
        return render_digest(parts) if parts else _nothing_left(digest)

    async def _send(self, row: Row, compose: Callable[[], Awaitable[Rendered | Outcome]],
                    address: str, unsubscribe_url: str | None = None) -> Outcome | None:
        """Send the row's message, unless it is no longer ours to send (None). It is
        composed once the row is confirmed ours, just before it goes: only a message already
        on its way goes as it was read (a composition may also find nothing left to say)."""
        try:
            plain_mailbox(address)
        except ValueError:  # stored before addresses were checked: mail would go elsewhere
            return Outcome(row.id, "dead", False, row.attempts,
                           error=f"{store.NOT_A_PLAIN_ADDRESS}; correct it")
        async with self._slots:
            if self._stopping:  # what is sent now may not be recorded before the stop ends
                with contextlib.suppress(*DATABASE_UNAVAILABLE):  # else its lease runs out
                    await store.release(self._pool, row, row.not_before, self._clock())
                return None
            if not await store.confirm_claim(self._pool, row.id, row.claim_token,
                                             self._clock() + self._lease):
                log.info("not sending: the row was taken over or cancelled while it waited",
                         notification=str(row.id))
                return None
            composed = await compose()
            if isinstance(composed, Outcome):
                return composed
            message = build_message(row, composed, address, self._from, self._clock(),
                                    unsubscribe_url)
            result = await self._smtp.send(message, address)
        return self._outcome(row, result)

    def _report(self, row: Row, outcome: Outcome) -> None:
        """Count every outcome, and log the ones an operator must see: a failed attempt and a
        dead letter, with the reason (the mail server's reply quotes the address: the log's
        own processor masks it, as in every line, services/common/logs.py)."""
        labelled(self._counters[outcome.status], row.kind).inc()
        if outcome.status in ("failed", "dead"):
            log.warning("notification " + ("dead-lettered" if outcome.status == "dead"
                                           else "not sent; it will be retried"),
                        notification=str(row.id), kind=row.kind, attempt=outcome.attempt_no,
                        smtp_code=outcome.code,
                        retry_at=outcome.not_before.isoformat() if outcome.not_before else None,
                        reason=outcome.error or "")

    def _outcome(self, row: Row, result: SmtpResult) -> Outcome:
        now = self._clock()
        attempt = row.attempts + 1
        done = Outcome(row.id, "sent", True, attempt, result.code, None,
                       attempt_outcome=result.outcome)
        if result.outcome == "sent":
            return done
        error = (result.detail if result.code is None
                 else f"{result.code}: {result.detail}")[:1000]
        retry_at = None if result.outcome == "permanent" else self._retry.next_attempt(
            row.attempts_since_revival + 1, row.first_attempt_at or now, now, self._rng)
        if retry_at is not None:
            return replace(done, status="failed", error=error, not_before=retry_at)
        if result.outcome != "permanent":
            verdict = f"gave up after {attempt} attempt(s)"
        elif result.code is not None:
            verdict = "refused permanently"
        else:
            verdict = "cannot be sent"
        return replace(done, status="dead", error=f"{verdict}: {error}")


def _nothing_left(digest: Row) -> Outcome:
    return Outcome(digest.id, "cancelled", False, digest.attempts, error="nothing left to send")


def _as_is(rendered: Rendered) -> Callable[[], Awaitable[Rendered]]:
    """A message composed already (a notice's own, rendered as it was claimed)."""
    async def compose() -> Rendered:
        return rendered
    return compose


def _log_unrecorded(outcomes: Sequence[Outcome], error: BaseException) -> None:
    log.error("gave up recording what became of these notifications: the database was"
              " unavailable; any marked sent here goes out again once its lease runs out",
              error=repr(error),
              notifications={str(o.row_id): o.status for o in outcomes})
