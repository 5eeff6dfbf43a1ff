"""An audit of the notifier's time arithmetic (twenty-first session) against a model built
independently of it, with hypothesis (deterministic: ``derandomize=True``).

The model walks the reader's timeline minute by minute over eight days around the moment in
question (every zone's offsets and changes in 2024-2027 are whole minutes, and so are quiet
hours, so whether a moment is quiet is the same for the whole of its minute). What it holds
is what docs/decisions/0203-notifier-preferences-directory.md says of quiet hours:

- "Quiet hours hold while the reader's clock reads inside them, and also from the moment they
  began until the moment they end";
- "Their start is their first moment: a start in the repeated hour its first pass, one in
  the skipped hour the moment of the jump";
- "an end in the skipped hour is the moment of the jump", and "Quiet hours ending in the
  repeated hour still hold until the clock passes their end the second time".

So the first moment the clock reads the start (or has jumped past it) begins them, and the
moment after which the clock never again reads earlier than the end ends them. The row waits
"until they end": ``quiet_until`` is the first moment from ``now`` that is not quiet.

No database: these are the pure functions of ``services/notifier/delivery.py``."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from itertools import pairwise
from uuid import UUID
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.notifier.delivery import (
    DatedTiming,
    Defer,
    Recipient,
    Send,
    decide,
    expected_send,
    put_off_until,
    quiet_until,
    wall_time_after,
)
from services.notifier.rules import Kind, RecipientRole
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import Row

ZONES = (
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Asia/Kolkata",
    "America/St_Johns",
    "Africa/Casablanca",
    "UTC",
    "Antarctica/Troll",
)
FIRST = datetime(2024, 1, 1, tzinfo=UTC)
LAST = datetime(2028, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
WINDOW = timedelta(days=4)  # the model's timeline runs this far either side of its centre
AGENCY = "agency-a"
READER = "cm-1"
ROW_ID = UUID("00000000-0000-4000-8000-000000000001")
CASE_ID = UUID("00000000-0000-4000-8000-000000000002")

THOROUGH = settings(
    derandomize=True,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def zone_of(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@cache
def transitions(name: str) -> tuple[datetime, ...]:
    """Every moment ``name``'s offset changes between FIRST and LAST, to the second: found by
    reading the offset each hour, then halving the hour it changed in."""
    zone = zone_of(name)
    found: list[datetime] = []
    moment = FIRST
    offset = moment.astimezone(zone).utcoffset()
    while moment < LAST:
        following = moment + timedelta(hours=1)
        after = following.astimezone(zone).utcoffset()
        if after != offset:
            low, high = 0, 3600
            while low < high:
                middle = (low + high) // 2
                probe = moment + timedelta(seconds=middle)
                if probe.astimezone(zone).utcoffset() == after:
                    high = middle
                else:
                    low = middle + 1
            found.append(moment + timedelta(seconds=low))
        moment, offset = following, after
    return tuple(found)


def largest_change(name: str) -> timedelta:
    """The largest change of the zone's clocks in these years (Troll: two hours)."""
    zone = zone_of(name)
    changes = [
        abs((t + MINUTE).astimezone(zone).utcoffset() - (t - MINUTE).astimezone(zone).utcoffset())
        for t in transitions(name)
    ]
    return max(changes, default=timedelta(0))


STEPS = tuple(i * MINUTE for i in range(int(2 * WINDOW / MINUTE)))  # a timeline's minutes


def stretches(name: str, base: datetime, count: int) -> list[tuple[int, int]]:
    """The minutes ``base + i * MINUTE`` (``i < count``) cut where the zone's offset changes:
    ``(first, after)`` for each stretch of one offset."""
    cuts = {0, count}
    for change in transitions(name):
        i = -((base - change) // MINUTE)  # the first minute at or after the change
        if 0 < i < count:
            cuts.add(i)
    return list(pairwise(sorted(cuts)))


class Timeline:
    """The zone's clock, read at each UTC minute from ``centre - WINDOW`` to
    ``centre + WINDOW``.

    Within a stretch of one offset the clock moves a minute a minute: it is read with
    ``astimezone`` at the stretch's first minute and its last (which must agree: no change
    went unseen, outside 2024-2027), and at each repeated minute after a change back (their
    ``fold``); in between it is the first reading plus the minutes. The same lists as reading
    it at every minute, but for the running highest and lowest readings, taken stretch by
    stretch: within one the readings rise, so each reading is the highest so far when it is
    not below the highest before the stretch (``max(wall, so_far)``: of equal readings, this
    minute's), and the lowest from here when not above the lowest after it."""

    def __init__(self, name: str, centre: datetime) -> None:
        self.zone = zone_of(name)
        self.base = centre.replace(second=0, microsecond=0) - WINDOW
        parts = stretches(name, self.base, len(STEPS))
        self.walls: list[datetime] = []
        for first, after in parts:
            reading = self.moment(first).astimezone(self.zone)
            last = self.moment(after - 1).astimezone(self.zone)
            assert last.utcoffset() == reading.utcoffset(), f"{name}: unseen change by {last}"
            start = reading.replace(tzinfo=None)
            self.walls.extend([start + step for step in STEPS[: after - first]])
            i = first
            while i < after and reading.fold:
                self.walls[i] = reading.replace(tzinfo=None)
                i += 1
                reading = self.moment(i).astimezone(self.zone)
        self.highest_so_far: list[datetime] = []
        for first, after in parts:
            if not self.highest_so_far:
                self.highest_so_far.extend(self.walls[first:after])
                continue
            so_far = self.highest_so_far[-1]
            rises = bisect.bisect_left(self.walls, so_far, first, after)
            self.highest_so_far.extend([so_far] * (rises - first))
            self.highest_so_far.extend(self.walls[rises:after])
        lowest: list[datetime] = []  # from the end
        for first, after in reversed(parts):
            if not lowest:
                lowest.extend(reversed(self.walls[first:after]))
                continue
            later = lowest[-1]
            above = bisect.bisect_right(self.walls, later, first, after)
            lowest.extend([later] * (after - above))
            lowest.extend(reversed(self.walls[first:above]))
        lowest.reverse()
        self.lowest_from_here = lowest

    def index(self, moment: datetime) -> int:
        return (moment - self.base) // MINUTE

    def moment(self, i: int) -> datetime:
        return self.base + i * MINUTE

    def first_reading(self, wall: datetime) -> int:
        """The first minute the clock reads ``wall`` or, when it jumps past it, the jump."""
        return bisect.bisect_left(self.highest_so_far, wall)

    def last_reading(self, wall: datetime) -> int:
        """The minute after which the clock never again reads earlier than ``wall``: its
        last reading (the second pass of a repeated hour), or the jump past a skipped one."""
        return bisect.bisect_left(self.lowest_from_here, wall)

    def readings(self, wall: datetime) -> list[int]:
        return [i for i, w in enumerate(self.walls) if w == wall]


def inside_by_the_clock(start: time, end: time, walls: list[datetime]) -> list[bool]:
    """Each of ``walls``: whether the clock reads inside ``start``-``end``."""
    if start < end:
        return [start <= wall.time() < end for wall in walls]
    return [not end <= wall.time() < start for wall in walls]  # t >= start or t < end


def quiet_minutes(timeline: Timeline, start: time, end: time) -> list[bool]:
    """Each minute of the timeline: inside quiet hours by the clock, or between a night's
    first moment and its end (0203): the last reading of its end time, but never past the
    next night's start (then the first: nights of nearly a whole day)."""
    quiet = inside_by_the_clock(start, end, timeline.walls)
    first_day = timeline.walls[0].date() - timedelta(days=1)
    last_day = timeline.walls[-1].date()
    day = first_day
    while day <= last_day:
        begins = timeline.first_reading(datetime.combine(day, start))
        ends_on = day if start < end else day + timedelta(days=1)
        ends = timeline.last_reading(datetime.combine(ends_on, end))
        next_begins = timeline.first_reading(datetime.combine(day + timedelta(days=1), start))
        if ends > next_begins:  # never past the next night's start: then its first pass
            ends = timeline.first_reading(datetime.combine(ends_on, end))
        begins, ends = max(begins, 0), min(ends, len(quiet))
        if begins < ends:
            quiet[begins:ends] = [True] * (ends - begins)
        day += timedelta(days=1)
    return quiet


@dataclass(frozen=True)
class Modelled:
    inside: bool
    ends: datetime | None  # None when inside and still quiet at the timeline's end


def model_quiet(name: str, start: time, end: time, now: datetime) -> Modelled:
    timeline = Timeline(name, now)
    quiet = quiet_minutes(timeline, start, end)
    here = timeline.index(now)
    if not quiet[here]:
        return Modelled(False, None)
    for i in range(here + 1, len(quiet)):
        if not quiet[i]:
            return Modelled(True, timeline.moment(i))
    return Modelled(True, None)


def prefs(
    name: str, start: time | None, end: time | None, delivery: str = "immediate"
) -> Preferences:
    return Preferences(
        AGENCY, READER, "case_manager", "cm-1@example.org", delivery, name, start, end, True
    )


def local(moment: datetime, name: str) -> str:
    return moment.astimezone(zone_of(name)).isoformat()


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------


@st.composite
def moments_near_a_change(draw: st.DrawFn, name: str) -> tuple[datetime, datetime]:
    """A moment within a day and a half of one of the zone's changes of clocks (any moment
    of 2024-2027 in a zone that has none), and the change (or the moment) it was drawn near."""
    changes = transitions(name)
    if changes and draw(st.integers(0, 9)) > 0:
        centre = draw(st.sampled_from(changes))
    else:
        minutes = draw(st.integers(0, int((LAST - FIRST - 2 * WINDOW) / MINUTE)))
        centre = FIRST + WINDOW + minutes * MINUTE
    near = st.integers(-12, 12).map(lambda k: 15 * k) | st.integers(-180, 180)
    minutes = draw(near | st.integers(-36 * 60, 36 * 60))
    now = centre.replace(second=0) + minutes * MINUTE
    now += timedelta(seconds=draw(st.sampled_from((0, 0, 0, 1, 59))))
    return now, centre


@st.composite
def clock_times(draw: st.DrawFn, name: str, centre: datetime) -> time:
    """A time of day: often one the clock shows (or skips) about the change, else any."""
    zone = zone_of(name)
    if draw(st.integers(0, 3)) > 0:
        side = draw(st.sampled_from((-1, 0, 1))) * MINUTE
        near = (centre + side).astimezone(zone)
        steps = draw(st.integers(-16, 16).map(lambda k: 15 * k) | st.integers(-150, 150))
        shifted = near + steps * MINUTE + draw(st.sampled_from((0, 0, 0, 1, -1))) * MINUTE
        return shifted.time().replace(second=0, microsecond=0, tzinfo=None)
    minute = draw(st.integers(0, 24 * 60 - 1))
    return time(minute // 60, minute % 60)


@st.composite
def quiet_nights(draw: st.DrawFn) -> tuple[str, time, time, datetime]:
    name = draw(st.sampled_from(ZONES))
    now, centre = draw(moments_near_a_change(name))
    start = draw(clock_times(name, centre))
    end = draw(clock_times(name, centre).filter(lambda t: t != start))
    return name, start, end, now


# --------------------------------------------------------------------------------------------
# quiet hours
# --------------------------------------------------------------------------------------------


def test_the_model_reads_the_documented_new_york_examples() -> None:
    """The model itself, on 0203's examples: quiet from 01:30 on the night New York's clocks
    go back began at 01:30 EDT and hold through the second pass of 01:00-01:30; quiet hours
    ending at 02:30 on the night they jump end at the jump (03:00 EDT)."""
    back = model_quiet(
        "America/New_York", time(1, 30), time(6), datetime(2026, 11, 1, 6, 10, tzinfo=UTC)
    )
    assert back == Modelled(True, datetime(2026, 11, 1, 11, 0, tzinfo=UTC))
    first_pass = model_quiet(
        "America/New_York", time(1, 30), time(6), datetime(2026, 11, 1, 5, 10, tzinfo=UTC)
    )
    assert first_pass.inside is False
    jump = model_quiet(
        "America/New_York", time(22), time(2, 30), datetime(2026, 3, 8, 6, 30, tzinfo=UTC)
    )
    assert jump == Modelled(True, datetime(2026, 3, 8, 7, 0, tzinfo=UTC))


@THOROUGH
@given(quiet_nights())
# 0203: "Quiet hours ending in the repeated hour still hold until the clock passes their end
# the second time": 22:00-01:30 in New York, at 01:45 EDT on the night clocks go back
@example(("America/New_York", time(22), time(1, 30), datetime(2026, 11, 1, 5, 45, tzinfo=UTC)))
def test_quiet_hours_hold_exactly_when_the_model_says(
    night: tuple[str, time, time, datetime],
) -> None:
    """``quiet_until`` is None exactly when the reader is outside their quiet hours as 0203
    describes them."""
    name, start, end, now = night
    model = model_quiet(name, start, end, now)
    until = quiet_until(prefs(name, start, end), now)
    if model.ends is not None:
        says = f"inside until {local(model.ends, name)}"
    else:
        says = "inside" if model.inside else "outside"
    assert (until is not None) == model.inside, (
        f"{name} quiet {start}-{end} at {local(now, name)}: the model says {says},"
        f" quiet_until says {local(until, name) if until else None}"
    )


@THOROUGH
@given(quiet_nights())
def test_a_row_put_off_waits_until_the_models_end_of_quiet_hours(
    night: tuple[str, time, time, datetime],
) -> None:
    """Inside quiet hours (by the model and by ``quiet_until``), the row waits "until they
    end": the first moment that is no longer quiet."""
    name, start, end, now = night
    model = model_quiet(name, start, end, now)
    until = quiet_until(prefs(name, start, end), now)
    if until is None or not model.inside:
        return
    assert until == model.ends, (
        f"{name} quiet {start}-{end} at {local(now, name)}: quiet_until"
        f" {local(until, name)}, the model {local(model.ends, name) if model.ends else None}"
    )


@THOROUGH
@given(quiet_nights())
def test_the_end_of_quiet_hours_is_ahead_and_within_a_day_and_a_change(
    night: tuple[str, time, time, datetime],
) -> None:
    """No mail is held forever, nor released to a moment already come (0201: that made
    dispatch spin): the end is after ``now`` and at most a day and the zone's largest change
    of clocks away."""
    name, start, end, now = night
    until = quiet_until(prefs(name, start, end), now)
    if until is None:
        return
    assert until > now, f"{name} quiet {start}-{end} at {local(now, name)}: {local(until, name)}"
    assert until - now <= timedelta(days=1) + largest_change(name), (
        f"{name} quiet {start}-{end} at {local(now, name)}: held until {local(until, name)}"
    )


@THOROUGH
@given(quiet_nights())
# found by hypothesis: quiet 03:00-02:45 in New York, at 01:45 EST on the night the clocks
# jump from 02:00 to 03:00, when that night's end (the jump) is the next night's start
@example(("America/New_York", time(3), time(2, 45), datetime(2024, 3, 10, 6, 45, tzinfo=UTC)))
def test_the_end_of_quiet_hours_is_outside_them(
    night: tuple[str, time, time, datetime],
) -> None:
    """The row waits "until they end" (0203): looked at again at that moment, it goes;
    applying ``quiet_until`` to its own answer finds no quiet hours."""
    name, start, end, now = night
    reader = prefs(name, start, end)
    until = quiet_until(reader, now)
    if until is None:
        return
    again = quiet_until(reader, until)
    assert again is None, (
        f"{name} quiet {start}-{end}: at {local(now, name)} put off to {local(until, name)},"
        f" and then again to {local(again, name)}"
    )


# --------------------------------------------------------------------------------------------
# wall_time_after
# --------------------------------------------------------------------------------------------


@st.composite
def wall_times(draw: st.DrawFn) -> tuple[str, datetime, date, time]:
    name = draw(st.sampled_from(ZONES))
    now, centre = draw(moments_near_a_change(name))
    day = now.astimezone(zone_of(name)).date() + timedelta(days=draw(st.integers(-1, 1)))
    return name, now, day, draw(clock_times(name, centre))


@THOROUGH
@given(wall_times())
def test_wall_time_after_reads_the_time_on_the_clock_and_is_ahead_when_it_can_be(
    case: tuple[str, datetime, date, time],
) -> None:
    """``at`` o'clock on ``day`` is, of the moments the clock reads it, the first after
    ``now``, or the last when none is; a time the clock skips is the moment of the jump."""
    name, now, day, at = case
    timeline = Timeline(name, now)
    wall = datetime.combine(day, at)
    readings = [timeline.moment(i) for i in timeline.readings(wall)]
    got = wall_time_after(now, day, at, zone_of(name))
    if not readings:
        jump = timeline.moment(timeline.first_reading(wall))
        assert got == jump, f"{name} {wall} is skipped: the jump is {local(jump, name)}"
        assert got.astimezone(zone_of(name)).replace(tzinfo=None) > wall
        return
    ahead = [moment for moment in readings if moment > now]
    wanted = ahead[0] if ahead else readings[-1]
    assert got == wanted, (
        f"{name} {wall} after {local(now, name)}: got {local(got, name)}, readings"
        f" {[local(r, name) for r in readings]}"
    )
    assert got.astimezone(zone_of(name)).replace(tzinfo=None) == wall


# --------------------------------------------------------------------------------------------
# dated notices: when they are expected, and when the dispatcher can send them
# --------------------------------------------------------------------------------------------


def dated_row(due_at: datetime) -> Row:
    return Row(
        ROW_ID,
        f"review_due_today:{CASE_ID}:x:{READER}",
        Kind.REVIEW_DUE_TODAY,
        CASE_ID,
        AGENCY,
        RecipientRole.CASE_MANAGER,
        READER,
        due_at,
        due_at,
        "scheduled",
        0,
        None,
        None,
        "<m@example.org>",
        {},
        None,
        None,
        None,
        None,
        cause_recorded_at=due_at - timedelta(days=10),
    )


@st.composite
def dated_notices(draw: st.DrawFn) -> tuple[DatedTiming, Row, Preferences]:
    """A dated notice due at the send time of a day near a change of clocks of the
    schedule's zone or the reader's, to a reader with or without quiet hours."""
    schedule = draw(st.sampled_from(ZONES))
    reader_zone = draw(st.sampled_from(ZONES))
    changing = draw(st.sampled_from((schedule, reader_zone)))
    moment, centre = draw(moments_near_a_change(changing))
    send_time = draw(st.one_of(st.just(time(9)), clock_times(reader_zone, centre)))
    digest_time = draw(st.one_of(st.just(time(8)), clock_times(reader_zone, centre)))
    timing = DatedTiming(schedule, digest_time, send_time)
    day = moment.astimezone(zone_of(schedule)).date()
    due_at = datetime.combine(day, send_time, tzinfo=zone_of(schedule)).astimezone(UTC)
    delivery = draw(st.sampled_from(("immediate", "daily_digest")))
    if draw(st.booleans()):
        start = draw(clock_times(reader_zone, centre))
        end = draw(clock_times(reader_zone, centre).filter(lambda t: t != start))
        reader = prefs(reader_zone, start, end, delivery)
    else:
        reader = prefs(reader_zone, None, None, delivery)
    return timing, dated_row(due_at), reader


def its_day_where_the_reader_is(timing: DatedTiming, row: Row, reader: Preferences) -> datetime:
    """The model's moment of the notice for its reader: the first moment their clock reads
    the send time (their digest time) on the notice's day in the schedule's zone, or the
    jump past it."""
    day = row.due_at.astimezone(zone_of(timing.notices_zone)).date()
    at = timing.digest_time if reader.delivery == "daily_digest" else timing.send_time
    wall = datetime.combine(day, at)
    timeline = Timeline(reader.timezone, datetime.combine(day, at, tzinfo=UTC))
    return timeline.moment(timeline.first_reading(wall))


@THOROUGH
@given(dated_notices())
# a notice at 01:40 (schedule in UTC) to a reader in New York quiet 22:00-01:30, on the night
# their clocks go back: 01:40 EDT is after the first 01:30 but before the second
@example(
    (
        DatedTiming("UTC", time(8), time(1, 40)),
        dated_row(datetime(2026, 11, 1, 1, 40, tzinfo=UTC)),
        prefs("America/New_York", time(22), time(1, 30)),
    )
)
def test_a_dated_notice_is_never_expected_before_its_reader_may_have_it(
    notice: tuple[DatedTiming, Row, Preferences],
) -> None:
    """``deliver_after`` is "the earliest moment the notice goes to its reader": 09:00 on its
    day in their zone (their digest of that day), past their quiet hours. It is never before
    that moment, nor inside their quiet hours as 0203 describes them."""
    timing, row, reader = notice
    expected = expected_send(row, reader, timing)
    earliest = its_day_where_the_reader_is(timing, row, reader)
    name = reader.timezone
    assert expected >= earliest, (
        f"schedule {timing.notices_zone}, due {row.due_at.isoformat()}: expected"
        f" {local(expected, name)}, before the reader's moment {local(earliest, name)}"
    )
    if reader.quiet_start is not None and reader.quiet_end is not None:
        model = model_quiet(name, reader.quiet_start, reader.quiet_end, expected)
        assert not model.inside, (
            f"{name} quiet {reader.quiet_start}-{reader.quiet_end}: expected"
            f" {local(expected, name)}, inside them"
        )


def claimed_at(timing: DatedTiming, row: Row, zone: str) -> datetime | None:
    """The first minute the dispatcher takes ``row`` for an immediate reader in ``zone``:
    the usual claim (``not_before <= now``), or the early one (``claim_dated_early``: due
    within the claim span, by the zone's ``due_by``, which must itself be ahead)."""
    span = timing.claim_span  # of the timing alone: read once
    t = (row.due_at - span - timedelta(hours=2)).replace(second=0, microsecond=0)
    while t <= row.due_at + timedelta(minutes=1):
        if row.not_before <= t:
            return t
        if t < row.not_before < t + span:  # only then is ``due_by`` asked (it has no effects)
            by = timing.due_by(zone, t)
            if t < by and row.due_at <= by:
                return t
        t += MINUTE
    return None


def sent_at(timing: DatedTiming, row: Row, reader: Preferences) -> datetime | None:
    """When the dispatcher sends ``row`` to an immediate reader, looking at it again each
    time it is put off (``Dispatcher.release``: never to a moment already come)."""
    now = claimed_at(timing, row, reader.timezone)
    who = Recipient(reader, reader.email)
    for _ in range(6):
        if now is None:
            return None
        decision = decide(row, who, now, stale_after=timedelta(hours=72), timing=timing)
        if isinstance(decision, Send):
            return now
        assert isinstance(decision, Defer), decision
        until = decision.until if decision.until > now else now + MINUTE
        row = replace(row, not_before=put_off_until(row, until))
        now = row.not_before
    return None


@THOROUGH
@given(dated_notices().filter(lambda notice: notice[2].delivery == "immediate"))
def test_a_dated_notice_goes_when_the_schedule_says_it_will(
    notice: tuple[DatedTiming, Row, Preferences],
) -> None:
    """For an immediate reader, ``deliver_after`` (``expected_send``) is when the dispatcher,
    claiming and deciding as it does, sends the notice: to the minute, since dispatch runs
    each second."""
    timing, row, reader = notice
    expected = expected_send(row, reader, timing)
    went = sent_at(timing, row, reader)
    name = reader.timezone
    assert went is not None, f"due {row.due_at.isoformat()}: never sent"
    assert expected <= went < expected + MINUTE or went <= expected < went + MINUTE, (
        f"schedule {timing.notices_zone} at {timing.send_time}, due {row.due_at.isoformat()},"
        f" reader in {name} quiet {reader.quiet_start}-{reader.quiet_end}: expected"
        f" {local(expected, name)}, sent {local(went, name)}"
    )


@THOROUGH
@given(dated_notices())
def test_the_early_claim_looks_at_the_schedules_day_of_every_notice_it_may_take(
    notice: tuple[DatedTiming, Row, Preferences],
) -> None:
    """``days_ahead`` names the schedule's day of each notice within the claim span, and that
    day's bounds hold the notice's due time (its reader's digest is the one of that day); and
    the claim span reaches back to the digest of a notice's day in the zone furthest ahead."""
    timing, row, _ = notice
    for hours_before in (0.5, 6, 13, 20, 26):
        now = row.due_at - timedelta(hours=hours_before)
        if row.due_at - now > timing.claim_span:
            continue
        days = {d.name: d for d in timing.days_ahead(now)}
        name = row.due_at.astimezone(zone_of(timing.notices_zone)).date().isoformat()
        assert name in days, f"{row.due_at.isoformat()} at {now.isoformat()}: {sorted(days)}"
        assert days[name].starts <= row.due_at < days[name].ends
    for zone in ("Pacific/Kiritimati", "Etc/GMT-14", "Pacific/Auckland", "Pacific/Chatham"):
        digest = timing.moment(row, zone, timing.digest_time)
        assert row.due_at - digest <= timing.claim_span, (
            f"schedule {timing.notices_zone}, due {row.due_at.isoformat()}: a digest in {zone}"
            f" at {local(digest, zone)} is {row.due_at - digest} ahead, span {timing.claim_span}"
        )
