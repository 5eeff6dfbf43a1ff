"""The PDF form of an export: the case's history laid out for people to read (reportlab).

Each event is printed with its version, time, type, who recorded it and why, its data and its
hash, so a reader can match it against the JSON Lines or CSV export of the same versions. The
document is rendered into a spooled temporary file (reportlab keeps a document's pages until
it is saved) and then handed out in chunks; the signature follows it as a PDF comment line
after ``%%EOF`` (readers ignore it), over the digest of the document's bytes followed by the
canonical JSON of the export header, which a PDF has no line of its own for, and of the state
of the hash chain as the service found it while laying the events out (a verifier cannot
recompute the chain from printed pages).

Text is set in DejaVu Sans where the system has it, else reportlab's Vera; a paragraph with
characters that font lacks (Chinese, Japanese, Korean) or with right-to-left text is set by
``typesetting`` (``Typesetter.plain`` tells which). A control character (but TAB, LF and CR) is
set as U+FFFD, as in the FHIR export (``formats.shown``): DejaVu Sans has no glyph for one, so a
reader saw a box, or nothing at all where reportlab took it for a space.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from schemas.events import reason_of
from services.records.chain import (
    ChainCheck,
    ChainLink,
    ChainReport,
    canonical_bytes,
    format_timestamp,
)
from services.records.export.formats import (
    PDF_TRAILER_PREFIX,
    ExportHeader,
    header_digest_bytes,
    json_line,
    shown,
    signature_block,
)
from services.records.export.signing import ExportSigner
from services.records.export.typesetting import Line, Run, Typesetter

_CHUNK = 1 << 16
_SPOOL_BYTES = 4 << 20
_MARGIN, _SIZE, _LEADING = 50.0, 8.5, 11.0
# Fonts with the widest coverage first: DejaVu where the system has it (most Linux), then the
# Bitstream Vera that ships with reportlab (Latin-1).
_FONT_FILES = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
               Path("/usr/share/fonts/TTF/DejaVuSans.ttf")]


def _font() -> str:
    for path in _FONT_FILES:
        if path.exists():
            if "CasetrailSans" not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont("CasetrailSans", str(path)))
            return "CasetrailSans"
    if "Vera" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("Vera", "Vera.ttf"))
    return "Vera"


class PdfRenderer:
    """Lays out one export page by page; not thread-safe, but may move between threads."""

    def __init__(self, header: ExportHeader, checked_before: int = 0) -> None:
        """``checked_before``: how many versions before the export's first (an auditor's
        window) the service checked the chain of before laying it out; the document says so."""
        self._header = header
        self._checked_before = checked_before
        # closed by close(), once the document has been handed out or abandoned
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=_SPOOL_BYTES)
        self._font = _font()
        self._type = Typesetter(self._font)
        self._canvas = Canvas(self._file, pagesize=A4, pageCompression=1)
        self._canvas.setTitle(f"Case history {header.case_id}")
        self._canvas.setCreator("Casetrail")
        self._width = A4[0] - 2 * _MARGIN
        self._y = 0.0
        self._page = 0
        self.events = 0
        # A PDF prints events for people and no verifier can recompute its chain, so the
        # service checks the chain as it lays the events out and signs what it found.
        self._chain = ChainCheck(header.first_version)
        self._new_page()
        self._title()

    def add(self, links: list[ChainLink]) -> None:
        for link in links:
            self._chain.add_stored(link)
            self._event(link)
            self.events += 1

    @property
    def chain(self) -> ChainReport:
        return self._chain.report()

    def finish(self) -> IO[bytes]:
        """The rendered document, rewound; the renderer is done."""
        self._chain_section()
        self._canvas.save()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._file.close()

    def _title(self) -> None:
        h = self._header
        self._line("Case history — signed export", size=14)
        self._line("")
        for text in (f"Case {h.case_id}  ·  agency {h.agency}",
                     f"Versions {h.first_version} to {h.last_version}",
                     f"Exported {format_timestamp(h.exported_at)} by "
                     f"{h.exported_by.get('sub')} ({h.exported_by.get('role')})",
                     "Check it with: casetrail verify FILE --public-key AGENCY-KEY.pem", ""):
            self._line(text)

    def _chain_section(self) -> None:
        chain = self.chain
        if not self.events:
            text = "Hash chain: no events in this export."
        elif chain.valid:
            text = (f"Hash chain: intact, checked by the service as it made this export;"
                    f" head {chain.head_hash}.")
            if before := self._checked_before:
                shown = "version 1" if before == 1 else f"versions 1 to {before}"
                text += (f" The chain before it, from the case's first event ({shown}, not"
                         " shown here), was checked too, and the first event shown follows"
                         " it.")
        else:
            text = (f"Hash chain: BROKEN at version {chain.broken_at_version}"
                    f" ({chain.problem}). From that version on, what this export shows is"
                    " not what was recorded.")
        self._line(text, size=10)

    def _event(self, link: ChainLink) -> None:
        actor = link.metadata.get("actor") or {}
        self._line(f"Version {link.version}  ·  {format_timestamp(link.recorded_at)}  ·  "
                   f"{link.type}", size=10)
        self._line(f"recorded by {actor.get('sub')} ({actor.get('role')})")
        if reason := reason_of(link.type, link.schema_version, link.data, link.metadata):
            self._field("reason", reason)
        for key, value in link.data.items():
            if isinstance(value, str):
                self._field(key, value, indent=12)
            else:  # JSON reads left to right, whatever its strings hold
                self._line(f"{key}: {json.dumps(value, ensure_ascii=False)}", indent=12,
                           right_to_left=False)
        self._line(f"hash {link.hash}", size=7)
        self._line("")

    def _field(self, name: str, value: str, *, indent: float = 0.0) -> None:
        """``name: value``; a value that opens right to left is set, right-aligned, under
        its name."""
        first = value.partition("\n")[0]
        if self._type.right_to_left(first):
            self._line(f"{name}:", indent=indent)
            self._line(value, indent=indent)
        else:
            self._line(f"{name}: {value}", indent=indent)

    def _line(self, text: str, *, size: float = _SIZE, indent: float = 0.0,
              right_to_left: bool | None = None) -> None:
        """Each paragraph of ``text`` in lines that fit, each in its own direction unless
        ``right_to_left`` says; its control characters ``shown``."""
        width = self._width - indent
        for paragraph in shown(text).split("\n"):
            for line in self._lines(paragraph, size, width, right_to_left):
                self._draw(line, size, _MARGIN + indent, width)

    def _lines(self, paragraph: str, size: float, width: float,
               right_to_left: bool | None) -> list[Line]:
        if self._type.plain(paragraph):
            return [Line((Run(part, self._font, wide),), wide, False)
                    for part, wide in self._wrapped(paragraph, size, width)]
        return self._type.lines(paragraph, size, width, right_to_left)

    def _draw(self, line: Line, size: float, left: float, width: float) -> None:
        if self._y < _MARGIN + _LEADING:
            self._new_page()
        x = left + width - line.width if line.right_to_left else left
        for run in line.runs:
            self._canvas.setFont(run.font, size)
            self._canvas.drawString(x, self._y, run.text)
            x += run.width
        self._y -= max(_LEADING, size + 3)

    def _wrapped(self, text: str, size: float, width: float) -> list[tuple[str, float]]:
        """Lines of left-to-right text the main font covers, with their widths, that fit
        ``width``: split at spaces, and a word longer than a line (a web address) broken
        where the line ends."""
        lines: list[tuple[str, float]] = []
        for line in simpleSplit(text, self._font, size, width) or [""]:
            if (wide := stringWidth(line, self._font, size)) <= width:
                lines.append((line, wide))
                continue
            start, used = 0, 0.0
            for end, char in enumerate(line):
                wide = stringWidth(char, self._font, size)  # reportlab does not kern
                if used + wide > width and end > start:
                    lines.append((line[start:end], used))
                    start, used = end, 0.0
                used += wide
            lines.append((line[start:], used))
        return lines

    def _new_page(self) -> None:
        if self._page:
            self._canvas.showPage()
        self._page += 1
        self._canvas.setFont(self._font, 7)
        self._canvas.drawString(_MARGIN, _MARGIN / 2,
                                f"Case {self._header.case_id}  ·  page {self._page}")
        self._y = A4[1] - _MARGIN


def signed_pdf(renderer: PdfRenderer, header: ExportHeader,
               signer: ExportSigner) -> Iterator[bytes]:
    """The rendered document in chunks, then its signature line (blocking reads: the file may
    have spilled to disk, so call it from a thread)."""
    document = renderer.finish()
    digest = hashlib.sha256()
    last = b""
    while chunk := document.read(_CHUNK):
        digest.update(chunk)
        last = chunk[-1:]
        yield chunk
    if last != b"\n":  # the signature must start a line of its own
        digest.update(b"\n")
        yield b"\n"
    header_dict = header.as_dict()
    chain = renderer.chain.as_dict()
    digest.update(header_digest_bytes(header_dict))
    digest.update(canonical_bytes(chain))
    # only what the signature vouches for (the header and the chain's state are in the
    # digest, the count is checked against the header); the head hash is printed on the
    # signed pages
    trailer = {"export": header_dict, "events": renderer.events, "chain": chain,
               "signature": signature_block(signer, digest.digest())}
    yield PDF_TRAILER_PREFIX + json_line(trailer) + b"\n"
