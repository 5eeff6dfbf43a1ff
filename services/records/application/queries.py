"""Reading cases: the current plan, time travel, history, diff, verification, caseloads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from schemas import api
from schemas.events import NoteAdded
from schemas.queries import MAX_EVENTS_LISTED, CaseloadCursor, CaseloadOrder
from services.common.auth import Principal
from services.common.checkpoint import Checkpoint
from services.common.jsonenc import encode_json
from services.records.application.access import (
    Action,
    CaseFacts,
    NotVisible,
    OutsideWindow,
    WindowVersions,
    authorize,
    authorize_access_log,
    authorize_listing,
    check_diff_in_window,
    point_in_window,
    refuse_from_token,
)
from services.records.application.cases import history_entry
from services.records.application.policy import AgencyPolicies
from services.records.chain import ChainCheck, ChainReport
from services.records.domain import DomainError, PlanState, plan_json
from services.records.domain.state import NoteState
from services.records.domain.view import note_document, plan_document
from services.records.export.fhir import FhirWriter
from services.records.export.formats import ExportFormat, ExportHeader, ExportWriter
from services.records.export.pdf import PdfRenderer, signed_pdf
from services.records.export.signing import ExportSigner
from services.records.projections.plans import (
    CaseloadFilter,
    StoredPlan,
    fold_recorded,
    list_caseload,
    load_plan,
    replay,
    store_refolded_view,
)
from services.records.store.access_log import AccessLogEntry, read_page, record_reads
from services.records.store.events import Clock, EventStore, RecordedEvent
from services.records.store.windows import versions_around_window

# A PDF is laid out in memory (about 1.5 KB per event) and is read by people: 10,000 events
# are ~15 MB and ~550 pages; longer histories are exported as JSON Lines or CSV.
MAX_PDF_EVENTS = 10_000
# reportlab holds a document's pages until it saves it: about 3 bytes of memory per byte of
# event data laid out (docs/performance.md): +14 MiB measured at this bound
MAX_PDF_TEXT_BYTES = 4_000_000


# Why an audited read was refused, as the access log says it (docs/decisions/0004).
REFUSED_NOT_NAMED = "not named in the token"
REFUSED_OUTSIDE_WINDOW = "outside the audit window"
REFUSED_CHAIN_BROKEN = "chain broken at version"

# Refuses (OutsideWindow) a read asking for what a window does not show.
WindowCheck = Callable[[WindowVersions], object]
# Refuses (a 4xx) a read the record cannot answer, given the case's current plan and the
# versions a window shows (None: no window): it is refused before anything is logged.
AnswerCheck = Callable[[StoredPlan, WindowVersions | None], Awaitable[None]]


def _check_window(window: WindowVersions | None, within: WindowCheck | None, *,
                  opened: bool) -> None:
    if window is None:
        return
    # the case did not exist yet when the window closed; or the window is still to open,
    # and nothing inside it is recorded yet (each read showed the plan as it was that
    # moment, which the window once open refused)
    if window.last == 0 or not opened:
        raise NotVisible
    if within is not None:
        within(window)


def _settled_edge(who: Principal, now: datetime) -> datetime | None:
    """The latest edge of ``who``'s window already past: the versions it shows up to there
    must not change (its end; or its start while it is still open, as what came before the
    window is what it shows first). None while neither has come."""
    for edge in (who.window_to, who.window_from):
        if edge is not None and edge <= now:
            return edge
    return None


def _exported(stored: StoredPlan, window: WindowVersions | None) -> tuple[int, int]:
    """The versions an export holds: every one through the current version, or for a window
    the events recorded inside it."""
    return (window.first + 1, window.last) if window else (1, stored.version)


@dataclass(frozen=True)
class Anchor:
    """What a windowed export rests on and does not hold: the chain from the case's first
    event through ``version`` (its first exported version, or the last one when the window
    holds none), checked before the export was signed; ``hash`` is that version's hash."""

    version: int
    hash: str

    def changed(self, event_id: str | None) -> ChainReport:
        """The report of a chain whose event at ``version`` changed after it was checked."""
        return ChainReport(False, self.version - 1, "", self.version, event_id,
                           "the event changed after the chain was checked")


@dataclass(frozen=True)
class PlanAnswer:
    version: int
    view: dict[str, Any]


@dataclass(frozen=True)
class CaseExport:
    filename: str
    media_type: str
    chunks: AsyncGenerator[bytes, None]


class CaseQueries:
    def __init__(self, pool: asyncpg.Pool, store: EventStore, clock: Clock,
                 signer: ExportSigner, policies: AgencyPolicies) -> None:
        self._pool = pool
        self._store = store
        self._clock = clock
        self._signer = signer
        self._policies = policies

    async def _allow(self, who: Principal, case_id: UUID, action: Action, what: str,
                     request_id: str | None, *, within: WindowCheck | None = None,
                     answerable: AnswerCheck | None = None, with_view: bool = False
                     ) -> tuple[StoredPlan, WindowVersions | None]:
        """The case's current plan and the versions ``who``'s window shows (None: no window),
        once ``who`` may take ``action`` on it (``within`` refuses what the window does not
        show). An audited read is logged with ``what`` was read and, for a window, the
        versions it shows: the log does not keep the token. One refused on a case of the
        reader's own agency is logged too, with why (docs/decisions/0004); one the record
        cannot answer (``answerable``: past its latest version, a PDF too long) is not a
        read, and is not logged. The plan's document is read only ``with_view``: it holds
        every goal and step the case ever had, and a read of the history does not need it."""
        refuse_from_token(who, action, case_id)
        stored = await load_plan(self._pool, case_id, who.agency, with_view=with_view)
        if stored is None:  # unknown, or another agency's: not this log's to name
            raise NotVisible
        try:
            authorize(who, action, CaseFacts(case_id, stored.agency, stored.case_manager))
        except NotVisible:
            # inside the agency, a case is invisible to an auditor only when the token does
            # not name it
            await self._log_read(who, case_id, action, what, request_id,
                                 refused=REFUSED_NOT_NAMED)
            raise
        window = await self._window(who, case_id)
        shown = f" window_versions={window.first}-{window.last}" if window else ""
        opened = window is None or await self._window_opened(who, case_id)
        try:
            _check_window(window, within, opened=opened)
        except (NotVisible, OutsideWindow):
            await self._log_read(who, case_id, action, what + shown, request_id,
                                 refused=REFUSED_OUTSIDE_WINDOW)
            raise
        if answerable is not None:
            try:
                await answerable(stored, window)
            except ChainBroken as broken:  # not bad input: a probe supervisors must see
                await self._log_read(who, case_id, action, what + shown, request_id,
                                     refused=f"{REFUSED_CHAIN_BROKEN}"
                                             f" {broken.report.broken_at_version}")
                raise
        await self._log_read(who, case_id, action, what + shown, request_id)
        return stored, window

    def _recorded_by(self, case_id: UUID, parameter: str, version: int | None) -> AnswerCheck:
        """Refuses a read of a version past the case's latest (VersionOutOfRange)."""
        async def check(stored: StoredPlan, window: WindowVersions | None) -> None:
            if version is None or version <= stored.version:
                return  # the plan is never ahead of the events
            head = await self._store.head(case_id)
            latest = head.version if head is not None else 0
            if version > latest:
                raise VersionOutOfRange(latest, parameter, version)
        return check

    async def _log_read(self, who: Principal, case_id: UUID, action: Action, what: str,
                        request_id: str | None, *, refused: str | None = None) -> None:
        if who.reads_audited:
            await record_reads(self._pool, [self._entry(who, case_id, action, what, request_id,
                                                        refused)])

    def _entry(self, who: Principal, case_id: UUID, action: Action, what: str,
               request_id: str | None, refused: str | None = None) -> AccessLogEntry:
        return AccessLogEntry(self._clock(), who.agency, who.sub, who.role.value, case_id,
                              action.value, what, request_id, refused)

    async def _window_opened(self, who: Principal, case_id: UUID) -> bool:
        """Whether ``who``'s window has opened: by this instance's clock, or by an instance's
        ahead of it, which answered as of the opening (the record keeps that moment:
        ``answer_until``), so that both show the same."""
        if who.window_from is None or who.window_from <= self._clock():
            return True
        head = await self._store.head(case_id)
        return (head is not None and head.answered_until is not None
                and head.answered_until >= who.window_from)

    async def _window(self, who: Principal, case_id: UUID) -> WindowVersions | None:
        """The versions a windowed (auditor) token sees; None for a token without a window."""
        if not who.has_window:
            return None
        if (settled := _settled_edge(who, self._clock())) is not None:
            # the versions a window shows up to an edge in the past: the same each time
            await self._store.answer_until(case_id, settled)
        first, last = await versions_around_window(self._pool, case_id, who.window_from,
                                                   who.window_to)
        return WindowVersions(first, last)

    async def plan(self, who: Principal, case_id: UUID, *, as_of_version: int | None = None,
                   as_of: datetime | None = None, request_id: str | None = None) -> PlanAnswer:
        time_travel = as_of_version is not None or as_of is not None
        point = (f" as_of_version={as_of_version}" if as_of_version is not None
                 else f" as_of={as_of.isoformat()}" if as_of is not None else "")
        stored, window = await self._allow(
            who, case_id, Action.AUDIT if time_travel else Action.READ_PLAN, f"plan{point}",
            request_id, within=lambda shown: point_in_window(who, shown, as_of_version, as_of),
            answerable=self._answerable_at(case_id, as_of_version, as_of),
            with_view=not (time_travel or who.has_window))
        if window is not None:
            as_of_version, as_of = point_in_window(who, window, as_of_version, as_of)
            time_travel = True
        if not time_travel and stored.view is not None:
            return PlanAnswer(stored.version, stored.view)
        state = await self._state_at(case_id, as_of_version, up_to_time=as_of)
        if state is None:
            raise NotYetOpened(await self._opened_at(case_id))
        document = plan_json(state)
        if not time_travel:  # the stored document was in an older shape (``load_plan``)
            await store_refolded_view(self._pool, case_id, state.version, document)
        return PlanAnswer(state.version, json.loads(document))

    def _answerable_at(self, case_id: UUID, as_of_version: int | None,
                       as_of: datetime | None) -> AnswerCheck:
        """Refuses a point the record has no answer for yet: a version past the latest, a
        time still to come (NotYetHappened: answered with the plan of now, the same
        question got another plan after the next write, and the log could not say which
        was shown), a time before the first event (NotYetOpened)."""
        by_version = self._recorded_by(case_id, "as_of_version", as_of_version)

        async def check(stored: StoredPlan, window: WindowVersions | None) -> None:
            await by_version(stored, window)
            if as_of is None:
                return
            now = self._clock()
            # another instance, its clock ahead of this one's, may have settled it already
            if as_of > now and not await self._store.settled_by(case_id, as_of):
                raise NotYetHappened(as_of, now)
            await self._store.answer_until(case_id, as_of)
            if not await self._store.recorded_by(case_id, as_of):
                raise NotYetOpened(await self._opened_at(case_id))
        return check

    async def _opened_at(self, case_id: UUID) -> datetime:
        first = await self._store.first_recorded_at(case_id)
        assert first is not None  # only asked of a case whose plan was read
        return first

    async def history(self, who: Principal, case_id: UUID, *, after_version: int, limit: int,
                      request_id: str | None = None) -> api.HistoryPage:
        _, window = await self._allow(
            who, case_id, Action.AUDIT, f"history after_version={after_version} limit={limit}",
            request_id)
        up_to_version = None
        if window is not None:
            after_version, up_to_version = max(after_version, window.first), window.last
        events = await self._store.read_stream(case_id, after_version=after_version,
                                               up_to_version=up_to_version, limit=limit + 1)
        page, more = events[:limit], len(events) > limit
        return api.HistoryPage(
            case_id=case_id, events=[history_entry(e) for e in page],
            next_after_version=page[-1].version if more and page else None)

    async def diff(self, who: Principal, case_id: UUID, from_version: int, to_version: int,
                   request_id: str | None = None) -> api.DiffView:
        """Every change between the two versions, and the events between up to a history
        page's maximum. The stream is folded page by page: a diff near the end of a long
        history held the whole of it in memory at once."""
        await self._allow(
            who, case_id, Action.AUDIT,
            f"diff from_version={from_version} to_version={to_version}", request_id,
            within=lambda shown: check_diff_in_window(shown, from_version, to_version),
            answerable=self._recorded_by(case_id, "to_version", to_version))
        plans = PlanAcross(await self._state_at(case_id, from_version))
        listed: list[RecordedEvent] = []
        async for events in self._store.pages(case_id, from_version + 1, to_version):
            plans.add(events)
            listed += events[:MAX_EVENTS_LISTED - len(listed)]
        old, new = plans.documents()
        truncated = len(listed) < to_version - from_version
        return api.DiffView.model_validate({
            "case_id": case_id, "from_version": from_version, "to_version": to_version,
            "changes": diff_documents(old, new),
            "events": [history_entry(e) for e in listed], "events_truncated": truncated,
            "next_after_version": listed[-1].version if truncated else None})

    async def verify(self, who: Principal, case_id: UUID,
                     request_id: str | None = None) -> ChainReport:
        stored, window = await self._allow(who, case_id, Action.AUDIT, "verify", request_id)
        # a windowed auditor gets the chain from its start through the window's last version:
        # everything they see depends on it, and nothing after the window is revealed
        return await self._store.verify(case_id, up_to_version=window.last if window else None,
                                        plan_version=stored.version)

    async def export(self, who: Principal, case_id: UUID, export_format: ExportFormat,
                     request_id: str | None = None) -> CaseExport:
        """The case's history as a signed export: every event through the current version (a
        windowed auditor: the events recorded inside the window), read page by page as the
        answer streams, so memory stays flat however long the history. A windowed export
        whose chain does not hold before or into its window is refused (ChainBroken): the
        file could not show the break, and signing it would vouch for it."""
        anchors: list[Anchor | None] = []

        async def answerable(stored: StoredPlan, window: WindowVersions | None) -> None:
            first, last = _exported(stored, window)
            anchors.append(await self._anchor(case_id, first, last))
            if export_format is ExportFormat.PDF:  # refused before anything streams
                await self._fits_a_pdf(case_id, first, last)

        stored, window = await self._allow(who, case_id, Action.EXPORT,
                                           f"export format={export_format.value}", request_id,
                                           answerable=answerable)
        (anchor,) = anchors
        first, last = _exported(stored, window)
        header = ExportHeader(str(case_id), stored.agency, first, last, self._clock(),
                              {"sub": who.sub, "role": who.role.value})
        if export_format is ExportFormat.PDF:
            chunks = self._pdf_chunks(header, case_id, anchor)
        elif export_format is ExportFormat.FHIR:
            # folded before the answer begins: an event this version cannot read, or a chain
            # broken before the window, is a problem answer, not a file cut short
            plan = [await self._view_at(case_id, first, last, anchor)]
            chunks = self._fhir_chunks(FhirWriter(header, await self._calendar(case_id)),
                                       plan, case_id, first, last, anchor)
        else:
            chunks = self._export_chunks(ExportWriter(export_format, header), case_id, first,
                                         last, anchor)
        versions = f"v{first}-{last}" if first <= last else f"v{last}-unchanged"
        return CaseExport(f"case-{case_id}-{versions}.{export_format.file_suffix}",
                          export_format.media_type, chunks)

    async def _anchor(self, case_id: UUID, first: int, last: int) -> Anchor | None:
        """For an export that starts after version 1 (an auditor's window): the chain from
        the case's first event through the first version exported (through the last, when
        the window holds none), checked as GET …/verify checks it. The file takes its first
        ``prev_hash`` as given, so a break there could never show in it: ChainBroken. None
        for an export from version 1, whose file holds its whole chain."""
        if first == 1:
            return None
        through = min(first, last)
        report = await self._store.verify(case_id, up_to_version=through)
        if not report.valid:
            raise ChainBroken(case_id, report, first, last)
        return Anchor(through, report.head_hash)

    async def _exported_pages(self, case_id: UUID, first: int, last: int,
                              anchor: Anchor | None) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of the export. Its first event must be the one whose chain was checked
        before the answer began (``anchor``): changed since, the export stops, cut short (a
        cut file fails verification), rather than sign it."""
        async for events in self._store.pages(case_id, first, last):
            head = events[0]
            if anchor is not None and head.version == anchor.version \
                    and head.hash != anchor.hash:
                raise ChainBroken(case_id, anchor.changed(str(head.event_id)), first, last)
            yield events

    async def _calendar(self, case_id: UUID) -> Callable[[datetime], date]:
        """The case's calendar: the time zone of the policy it was opened under, which its
        review dates keep (0102), not the agency's policy file of today."""
        opened = await self._state_at(case_id, 1)
        assert opened is not None  # only asked of a case whose plan was read
        return opened.policy.date_at

    async def _fits_a_pdf(self, case_id: UUID, first: int, last: int) -> None:
        if last - first + 1 > MAX_PDF_EVENTS:
            raise ExportTooLarge(f"this history has {last - first + 1} events; a PDF export"
                                 f" holds at most {MAX_PDF_EVENTS}")
        size = await self._store.data_size(case_id, first, last)
        if size > MAX_PDF_TEXT_BYTES:
            raise ExportTooLarge(f"this history holds {size:,} bytes of text; a PDF export"
                                 f" lays out at most {MAX_PDF_TEXT_BYTES:,}")

    async def _export_chunks(self, writer: ExportWriter, case_id: UUID, first: int,
                             last: int, anchor: Anchor | None) -> AsyncGenerator[bytes, None]:
        yield writer.header()
        async for events in self._exported_pages(case_id, first, last, anchor):
            yield b"".join(writer.event(event.link()) for event in events)
        yield writer.trailer(self._signer)

    async def _fhir_chunks(self, writer: FhirWriter, plan: list[dict[str, Any]],
                           case_id: UUID, first: int, last: int,
                           anchor: Anchor | None) -> AsyncGenerator[bytes, None]:
        """The plan as of the last version exported (``plan``, handed over once), as
        resources, then the events. The plan is folded from the events, never read from the
        plans table (a projection the
        service's role may write: a row changed there was signed as the plan while the
        events said otherwise); the events before a window are checked as they are folded."""
        yield writer.opening(plan.pop())  # a large plan is not held while the history streams
        async for events in self._exported_pages(case_id, first, last, anchor):
            yield b"".join(writer.event(event.link()) for event in events)
        yield writer.trailer(self._signer)

    async def _view_at(self, case_id: UUID, first: int, version: int,
                       anchor: Anchor | None) -> dict[str, Any]:
        """The plan at ``version``, the export's last (``first`` its first), folded page by
        page from the events whose chain holds, checked on the way as the verify endpoint
        checks it: at a broken link the fold stops, so no changed event makes the plan (the
        export's own chain shows the break, and the file is not verified). A window's events
        before it, which the file does not hold, must still be the ones checked just before
        (``anchor``): otherwise, and when not even the first event holds, ChainBroken."""
        state, check, anchored = None, ChainCheck(), None
        async for events in self._store.pages(case_id, 1, version):
            held = []
            for event in events:
                check.add_stored(event.link())
                if check.broken:
                    break
                held.append(event)
                if anchor is not None and event.version == anchor.version:
                    anchored = event.hash
            state = fold_recorded(held, state)
            if check.broken:
                break
        report = check.report()
        if anchor is not None and report.valid and anchored != anchor.hash:
            report = anchor.changed(None)
        if state is None or (anchor is not None and anchored != anchor.hash):
            raise ChainBroken(case_id, report, first, version)
        # the plan as JSON values, as the API writes it, holding no more than two copies of
        # a large plan at once: the state is let go before the text is decoded, the bytes
        # before it is parsed (json.loads of bytes would hold them beside their text)
        encoded, state = encode_json(plan_document(state)), None
        text, encoded = encoded.decode(), b""
        return dict(json.loads(text))

    async def _state_at(self, case_id: UUID, version: int | None, *,
                        up_to_time: datetime | None = None) -> PlanState | None:
        """The plan's state at ``version`` (None: the last recorded by ``up_to_time``, or the
        head), folded page by page; None before the case was opened."""
        state = None
        async for events in self._store.pages(case_id, 1, version, up_to_time=up_to_time):
            state = fold_recorded(events, state)
        return state

    async def _pdf_chunks(self, header: ExportHeader, case_id: UUID,
                          anchor: Anchor | None) -> AsyncGenerator[bytes, None]:
        """Laid out page by page as the events are read (in a thread: rendering is CPU work),
        then handed out with its signature line."""
        first, last = header.first_version, header.last_version
        renderer = await asyncio.to_thread(PdfRenderer, header, first - 1 if anchor else 0)
        try:
            async for events in self._exported_pages(case_id, first, last, anchor):
                await asyncio.to_thread(renderer.add, [event.link() for event in events])
            chunks = signed_pdf(renderer, header, self._signer)
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield chunk
        finally:
            renderer.close()

    async def access_log(self, who: Principal, *, case_id: UUID | None, after: Checkpoint,
                         limit: int) -> dict[str, Any]:
        """A page of the agency's log; one that caught up also says what an open
        transaction still holds back, so that it is not taken for the whole log."""
        authorize_access_log(who)
        return await read_page(self._pool, agency=who.agency, case_id=case_id, after=after,
                               limit=limit)

    async def caseload(self, who: Principal, *, case_manager: str | None, status: str | None,
                       review_due_before: date | None, order: CaseloadOrder,
                       after: CaseloadCursor | None, limit: int,
                       request_id: str | None = None) -> api.CaseloadPage:
        manager = authorize_listing(who, case_manager)
        rows = await list_caseload(self._pool, CaseloadFilter(
            who.agency, manager, status, review_due_before,
            self._policies.for_agency(who.agency).date_at(self._clock()), order, after,
            limit + 1))
        cases = [api.CaseSummary.model_validate(row) for row in rows[:limit]]
        if who.reads_audited:  # a listing shows each case's participant and progress
            asked = {"case_manager": case_manager, "status": status,
                     "review_due_before": review_due_before,
                     "order": order if order != "case_id" else None}
            what = " ".join(["caseload", *(f"{k}={v}" for k, v in asked.items() if v)])
            await record_reads(self._pool, [
                self._entry(who, case.case_id, Action.LIST, what, request_id)
                for case in cases])
        last = CaseloadCursor(cases[-1].case_id, cases[-1].next_review_due) \
            if len(rows) > limit else None
        return api.CaseloadPage(cases=cases,
                                next_after=last.encode(order) if last is not None else None)


class ChainBroken(DomainError):
    """A windowed export whose hash chain does not hold at or before its first version (409,
    ``chain-broken``): the file would take its first ``prev_hash`` as given, so the break
    could never show in it, and the service does not sign it."""

    status = 409

    def __init__(self, case_id: UUID, report: ChainReport, first: int, last: int) -> None:
        window = (f" Your window's export would begin at version {first}" if first <= last else
                  f" The case stood at version {last} throughout your window")
        event = f", event {report.broken_event_id}" if report.broken_event_id else ""
        super().__init__(
            "chain_broken",
            f"this case's hash chain is broken at version {report.broken_at_version}{event}:"
            f" {report.problem}."
            + (f"{window}, and an export of a window takes the chain before its first event"
               " as given, so a break there would not show in it: none is signed."
               if first > 1 else "")
            + f" GET /v1/cases/{case_id}/verify names the same break; ask the agency that"
            " keeps the record to look into it.")
        self.report = report


class ExportTooLarge(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(f"{why}: export it as JSON Lines or CSV")


class NotYetOpened(Exception):
    """Time travel to before the case was opened, by someone who may read it."""

    def __init__(self, opened_at: datetime) -> None:
        super().__init__(f"the case was opened at {opened_at.isoformat()}, after the time"
                         " asked for: ask for as_of from then on")
        self.opened_at = opened_at


class NotYetHappened(Exception):
    """Time travel to a time still to come: its plan is not known yet."""

    def __init__(self, as_of: datetime, now: datetime) -> None:
        super().__init__(f"as_of {as_of.isoformat()} is later than now ({now.isoformat()}):"
                         " the plan at that time is not known yet; read the plan without"
                         " as_of for the plan now")


class VersionOutOfRange(Exception):
    def __init__(self, current_version: int, parameter: str, asked: int) -> None:
        super().__init__(f"{parameter} {asked} is past this case's latest version,"
                         f" {current_version}: ask for {current_version} or lower")
        self.current_version = current_version
        self.parameter = parameter  # the query parameter that asked for too much


class PlanAcross:
    """The plan before and after a range of events, fed in pages, as JSON documents to diff
    ({} before the case opened). The plan shows only the most recent notes, and notes are
    never removed: so ``recent_notes`` holds, after, every note the events added (also those
    pushed out of the recent ones since) and, before, none; a note leaving the recent ones is
    no change."""

    def __init__(self, before: PlanState | None) -> None:
        self._before = self._after = before
        self._added: list[NoteState] = []

    def add(self, events: list[RecordedEvent]) -> None:
        for payload, _, state in replay(events, self._after):
            self._after = state
            if isinstance(payload, NoteAdded):
                self._added += [note for note in state.notes if note.note_id == payload.note_id]

    def documents(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self._after is not None  # the events of a diff are never empty
        old: dict[str, Any] = json.loads(plan_json(self._before)) \
            if self._before is not None else {}
        new: dict[str, Any] = json.loads(plan_json(self._after))
        if old:
            old["recent_notes"] = []
        new["recent_notes"] = json.loads(encode_json([note_document(n) for n in self._added]))
        return old, new


# The plan's lists of items and the key naming each item: a diff matches items by it. (Read
# by name: a plan read back from the database has its keys in another order, and a step also
# holds its goal_id.)
_ITEM_IDS = {"strengths": "strength_id", "goals": "goal_id", "steps": "step_id",
             "supports": "support_id", "requirements": "requirement_id",
             "reviews": "review_id", "recent_notes": "note_id"}


def diff_documents(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Field-by-field changes between two plan documents; lists of items match by their id."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[dict[str, Any]] = []
        for key in sorted(set(old) | set(new)):
            child = f"{path}.{key}" if path else key
            if key not in old:
                changes.append({"path": child, "change": "added", "to": new[key]})
            elif key not in new:
                changes.append({"path": child, "change": "removed", "from": old[key]})
            else:
                changes += diff_documents(old[key], new[key], child)
        return changes
    id_key = _ITEM_IDS.get(path.rpartition(".")[2])
    if id_key and _keyed(old, id_key) and _keyed(new, id_key):
        return diff_documents(_by_id(old, id_key), _by_id(new, id_key), path)
    if old != new:
        return [{"path": path, "change": "changed", "from": old, "to": new}]
    return []


def _keyed(items: Any, id_key: str) -> bool:
    return isinstance(items, list) and all(
        isinstance(item, dict) and isinstance(item.get(id_key), str) for item in items)


def _by_id(items: list[dict[str, Any]], id_key: str) -> dict[str, Any]:
    return {item[id_key]: item for item in items}
