"""The PDF export sets every script a participant writes in: Chinese, Japanese and Korean in
fonts that have their glyphs, Arabic joined, right-to-left text in reading order and
right-aligned, and nothing past the page's edge. The PDFs come through the real export path
and are read back with pypdf (the content stream and its fonts, not pypdf's own text
reordering)."""

# ruff: noqa: F811, RUF001  (full-width punctuation is the point)

from __future__ import annotations

import io
import itertools
import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader
from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont

from services.records.chain import GENESIS_HASH, ChainLink
from services.records.export import pdf
from services.records.export.formats import ExportHeader
from services.records.export.signing import load_signer
from tests.conftest import TokenFactory
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    add_notes,
    case_id,
    client,
    export,
    key_file,
    public_key,
    verify_bytes,
)

MARGIN = 50.0
RIGHT_EDGE = A4[0] - MARGIN
INDENT = MARGIN + 12  # where an event's data lines start
SARA = "سارة"  # seen, alef, reh, teh marbuta
# shaped (initial seen, final alef, isolated reh, isolated teh marbuta), in visual order
SARA_SEEN = "\ufe93\ufead\ufe8e\ufeb3"


@dataclass(frozen=True)
class Drawn:
    """One string a page draws: where it starts, in which font (BaseFont) and what it says."""

    page: int
    x: float
    y: float
    font: str
    size: float
    text: str
    width: float


def _tounicode(font: Any) -> dict[int, str]:
    data = font["/ToUnicode"].get_object().get_data().decode("latin-1")
    return {int(code, 16): chr(int(uni, 16))
            for code, uni in re.findall(r"<([0-9A-F]{2})> <([0-9A-F]{4})>", data)}


class _Font:
    def __init__(self, font: Any) -> None:
        self.name = str(font["/BaseFont"]).lstrip("/")
        self.cid = font["/Subtype"] == "/Type0"
        self.standard = font["/Subtype"] == "/Type1"  # reportlab's initial Helvetica
        if self.cid:  # a built-in CID font: UCS-2 codes, reportlab's metrics
            if self.name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(UnicodeCIDFont(self.name))
        elif self.standard:
            pass
        else:  # a subset TrueType font: its ToUnicode map and its /Widths
            self.unicode = _tounicode(font)
            self.first = int(font["/FirstChar"])
            self.widths = [float(w) for w in font["/Widths"]]

    def decode(self, raw: bytes) -> tuple[str, float]:
        """The text and its width at size 1."""
        if self.cid:
            text = raw.decode("utf-16-be")
            return text, pdfmetrics.stringWidth(text, self.name, 1)
        if self.standard:
            text = raw.decode("cp1252")
            return text, pdfmetrics.stringWidth(text, self.name, 1)
        text = "".join(self.unicode.get(b, "\0") for b in raw)
        return text, sum(self.widths[b - self.first] for b in raw) / 1000


_TOKEN = re.compile(rb"\((?:\\[0-7]{1,3}|\\.|[^\\()])*\)|/[^\s/\[\]()<>]+|[-+]?[\d.]+|[A-Za-z*']+")
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.S)
_ESCAPED = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _literal(token: bytes) -> bytes:
    """A PDF literal string's bytes (reportlab escapes every parenthesis)."""
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8)])
        return _ESCAPED.get(code, code)
    return _ESCAPE.sub(one, token[1:-1])


def drawn(raw: bytes) -> list[Drawn]:
    """Every string drawn on every page of the PDF ``raw`` (the signature line cut off), read
    from the content streams as reportlab writes them."""
    reader = PdfReader(io.BytesIO(raw[:raw.rindex(b"%%EOF") + 5]))
    out: list[Drawn] = []
    for number, page in enumerate(reader.pages):
        fonts = {name.encode(): _Font(ref.get_object())
                 for name, ref in page["/Resources"]["/Font"].items()}
        stack: list[bytes] = []
        x = y = size = 0.0
        font: _Font | None = None
        for token in _TOKEN.findall(page.get_contents().get_data()):
            if token == b"Tm":
                x, y = float(stack[-2]), float(stack[-1])
            elif token == b"Tf":
                font, size = fonts[stack[-2]], float(stack[-1])
            elif token == b"Tj" and font is not None:
                text, width = font.decode(_literal(stack[-1]))
                out.append(Drawn(number, x, y, font.name, size, text, width * size))
            stack.append(token)
    return out


async def _pdf_of(client: TestClient, token: TokenFactory, case_id: str,
                  texts: list[str]) -> list[Drawn]:
    await add_notes(client, token, case_id, texts)
    raw = await export(client, token(sub="cm-1"), case_id, "?format=pdf")
    assert verify_bytes(raw).ok  # the signature covers the events, whatever the layout
    return drawn(raw)


def _line_at(pieces: list[Drawn], page: int, y: float) -> list[Drawn]:
    return sorted((p for p in pieces if p.page == page and abs(p.y - y) < 0.01),
                  key=lambda p: p.x)


def _line_with(pieces: list[Drawn], fragment: str) -> list[Drawn]:
    [(page, y)] = {(p.page, p.y) for p in pieces if fragment in p.text}
    return _line_at(pieces, page, y)


async def test_chinese_japanese_and_korean_are_drawn_in_fonts_that_have_their_glyphs(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    """DejaVu Sans has no CJK glyphs: they printed as boxes (code 0, .notdef)."""
    pieces = await _pdf_of(client, token, case_id, [
        "Jo: 我们一起找到了住房。", "日本語で話した：仕事を探す", "한국어 메모: 학교 다니기"])
    chinese = _line_with(pieces, "住房")
    assert [(p.font, p.text) for p in chinese] == [
        ("AAAAAA+DejaVuSans", "text: Jo: "), ("STSong-Light", "我们一起找到了住房。")]
    # Han with kana is Japanese: drawn with the kana in the Japanese face
    [japanese] = [p for p in pieces if "仕事" in p.text]
    assert (japanese.font, japanese.text) == ("HeiseiMin-W3", "日本語で話した：仕事を探す")
    korean = _line_with(pieces, "메모")
    assert [(p.text, p.font) for p in korean] == [
        ("text: ", "AAAAAA+DejaVuSans"), ("한국어", "HYSMyeongJo-Medium"),
        (" ", "AAAAAA+DejaVuSans"), ("메모", "HYSMyeongJo-Medium"),
        (": ", "AAAAAA+DejaVuSans"), ("학교", "HYSMyeongJo-Medium"),
        (" ", "AAAAAA+DejaVuSans"), ("다니기", "HYSMyeongJo-Medium")]
    assert not any("\0" in p.text for p in pieces)  # no glyph left out


async def test_long_chinese_text_wraps_by_its_own_widths_and_stays_on_the_page(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    """Chinese has no spaces; each line is measured run by run in the font it is drawn in."""
    words = "我们一起找到了住房，" * 40
    pieces = await _pdf_of(client, token, case_id, [f"Jo wrote {words}end"])
    lines = sorted({(p.page, -p.y) for p in pieces if "我" in p.text})
    assert len(lines) > 3
    text = ""
    for page, y in lines:
        line = _line_at(pieces, page, -y)
        assert all(p.font == "STSong-Light" for p in line if "我" in p.text)
        start, end = line[0].x, line[-1].x + line[-1].width
        assert end <= RIGHT_EDGE + 0.01, (end, line)
        for before, after in itertools.pairwise(line):  # runs follow each other
            assert abs(before.x + before.width - after.x) < 0.01
        if (page, y) != lines[-1]:  # a full line fills the width, to within two characters
            assert end > RIGHT_EDGE - 2 * 8.5, (end, line)
        assert start == INDENT
        text += "".join(p.text for p in line)
    assert text == f"text: Jo wrote {words}end"  # nothing lost or doubled at the breaks


async def test_arabic_is_joined_set_in_reading_order_and_right_aligned(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    pieces = await _pdf_of(client, token, case_id, [f"سلام {SARA}", "مَرْحَبًا"])
    [greeting] = [p for p in pieces if SARA_SEEN in p.text]
    # seen-lam-alef-meem: the lam and alef as one ligature; the words right to left
    assert greeting.text == SARA_SEEN + " " + "\ufee1\ufefc\ufeb3"
    assert abs(greeting.x + greeting.width - RIGHT_EDGE) < 0.01  # right-aligned
    above = min(p.y for p in pieces if p.page == greeting.page and p.y > greeting.y + 0.01)
    label = _line_at(pieces, greeting.page, above)  # the field's name on the line above
    assert [(p.x, p.text) for p in label] == [(INDENT, "text:")]
    # the vowel marks are kept, each drawn after the letter it sits on
    [marked] = [p for p in pieces if "\ufe8e" in p.text and "\u064b" in p.text]
    assert marked.text == "\ufe8e\ufe92\u064b\ufea3\u064e\ufeae\u0652\ufee3\u064e"


async def test_an_english_sentence_with_an_arabic_name_reads_left_to_right(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    pieces = await _pdf_of(client, token, case_id, [f"Jo met {SARA} (her sister) at 10."])
    line = _line_with(pieces, "Jo met")
    assert "".join(p.text for p in line) == f"text: Jo met {SARA_SEEN} (her sister) at 10."
    assert line[0].x == INDENT  # left-aligned, as an English paragraph is


async def test_hebrew_is_set_right_to_left_with_its_numbers_and_english_in_order(
        client: TestClient, token: TokenFactory, case_id: str) -> None:
    pieces = await _pdf_of(client, token, case_id, ["שלום Jo, נפגשנו 3 פעמים (בספרייה)"])
    [line] = [p for p in pieces if "םולש" in p.text]
    assert line.text == "(היירפסב) םימעפ 3 ונשגפנ ,Jo םולש"  # brackets mirrored
    assert abs(line.x + line.width - RIGHT_EDGE) < 0.01


_SCRIPTS = ("Jo met at 10, (a) [b] «c» ? \n\t\r"  # Latin, digits, brackets, breaks
            "שלוםבְּ"  # Hebrew, with points
            "سلامعربيةمَرْحَبًاپچگی\u0640"  # Arabic and Persian, harakat, tatweel
            "我们一起找到了住房，。「」日本語のメモカタカナ한국어메모"  # Han, kana, Hangul
            "\u200c\u200d\u200e\u200f\u202a\u202b\u202e\u202c\u2067\u2069\u0301"
            "\U00020000\U0001f600")  # a Han ideograph and an emoji beyond the BMP


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(_SCRIPTS), max_size=400))
@example(text="\u2067Jo\u2069 שלום")  # an isolate: python-bidi's Python algorithm refused it
@example(text="שלום (\u2068Jo met سارة\u2069)")
def test_any_mix_of_scripts_stays_on_the_page_and_wide_characters_get_a_font(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a participant types, in any mix: nothing raises, every string drawn ends
    inside the margins, and no Chinese, Japanese or Korean character (East Asian wide, in
    the BMP the CID fonts encode) is drawn in the main font, which has none of them."""
    header = ExportHeader("case-1", "agency-a", 1, 1, datetime(2026, 3, 2, tzinfo=UTC),
                          {"sub": "sup-1", "role": "supervisor"})
    renderer = pdf.PdfRenderer(header)
    canvas = renderer._canvas
    calls: list[tuple[float, str, str, float]] = []
    draw = canvas.drawString

    def recording(x: float, y: float, shown: str) -> None:
        calls.append((x, shown, canvas._fontname, canvas._fontsize))
        draw(x, y, shown)

    monkeypatch.setattr(canvas, "drawString", recording)
    link = ChainLink("case-1", 1, "e-1", "NoteAdded", 1, {"text": text, "list": [text]},
                     {"reason": text}, datetime(2026, 3, 2, tzinfo=UTC), GENESIS_HASH)
    renderer.add([replace(link, hash=link.compute_hash())])
    raw = b"".join(pdf.signed_pdf(renderer, header, load_signer(None)))
    renderer.close()
    assert raw.startswith(b"%PDF-")
    for x, shown, font, size in calls:
        assert x >= MARGIN
        assert x + pdfmetrics.stringWidth(shown, font, size) <= RIGHT_EDGE + 0.01, shown
        if font == renderer._font:
            assert not [c for c in shown
                        if ord(c) < 0x10000 and unicodedata.east_asian_width(c) in "WF"]
