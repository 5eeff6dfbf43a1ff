"""Typesetting for the PDF export: paragraphs of any script in lines that fit a width.

Every script a participant writes in is set so it can be read: each character is drawn in the
first font of a chain that has its glyph (the PDF's main TrueType font, then reportlab's
built-in CID fonts for Chinese, Japanese and Korean), Arabic is joined (arabic-reshaper), and a
paragraph is wrapped in the order it was typed, then each line is put in display order by the
Unicode bidirectional algorithm (python-bidi); a right-to-left line is set right-aligned.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterator
from functools import cached_property
from typing import NamedTuple, cast

from arabic_reshaper import ArabicReshaper  # type: ignore[import-untyped]
from arabic_reshaper.ligatures import LIGATURES  # type: ignore[import-untyped]
from bidi.algorithm import (  # type: ignore[import-untyped]
    get_base_level,
    get_display,
)
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont

# reportlab's built-in CID fonts need no font file: the reader supplies the glyphs. Serif
# faces throughout, since the Chinese one (Song) has no sans-serif sibling.
_CHINESE, _JAPANESE, _KOREAN = "STSong-Light", "HeiseiMin-W3", "HYSMyeongJo-Medium"
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff\uffa0-\uffdc]")
_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
# Han and what Chinese, Japanese and Korean share: radicals, punctuation, bopomofo, strokes,
# enclosed and compatibility forms, full-width forms (the BMP only: the CID fonts are UCS-2)
_CJK = re.compile("[\u2e80-\u2fdf\u3000-\u303f\u3100-\u312f\u31a0-\u31ef\u3200-\u4dbf"
                  "\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
# Hebrew, Arabic, Syriac, Thaana, N'Ko…, their presentation forms and the explicit controls
_RIGHT_TO_LEFT = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc\u200f\u202a-\u202e"
                            "\u2066-\u2069\U00010800-\U00010fff\U0001e800-\U0001efff]")
# the marks of the right-to-left scripts (vowel points, harakat and the like)
_RIGHT_TO_LEFT_MARK = re.compile("[" + "".join(
    chr(c) for c in (*range(0x0591, 0x0900), *range(0xFB1E, 0xFB50), *range(0xFE20, 0xFE30))
    if unicodedata.category(chr(c)) in ("Mn", "Me")) + "]")
_ISOLATE = re.compile("[\u2066-\u2069]")
_EMBEDDING = {"\u2066": "\u202a", "\u2067": "\u202b", "\u2069": "\u202c"}
_ARABIC = re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff]")
_PRESENTATION_FORM = re.compile("[\ufb50-\ufdff\ufe70-\ufefc]")
# no line starts with a closing mark, none ends with an opening one (kinsoku, simplified):
# ideographic and full-width punctuation, quotation marks, small kana, the prolonged sound
# mark and the iteration mark
_NO_START = frozenset("\u3001\u3002\uff0c\uff0e\u30fb\uff1a\uff1b\uff1f\uff01\uff09\u300d\u300f"
                      "\u3011\u3015\u3009\u300b\u301f\u201d\u2019\u30fc\u3005\u3041\u3043\u3045"
                      "\u3047\u3049\u3063\u3083\u3085\u3087\u308e\u30a1\u30a3\u30a5\u30a7\u30a9"
                      "\u30c3\u30e3\u30e5\u30e7\u30ee\u30f5\u30f6,.;:!?)]}")
_NO_END = frozenset("\uff08\u300c\u300e\u3010\u3014\u3008\u300a\u301d\u201c\u2018([{")


class Run(NamedTuple):
    text: str
    font: str
    width: float


class Line(NamedTuple):
    runs: tuple[Run, ...]
    width: float
    right_to_left: bool


def _cjk_font(text: str) -> str:
    """The face for Han characters: Japanese beside kana, Korean beside Hangul."""
    if _KANA.search(text):
        return _JAPANESE
    return _KOREAN if _HANGUL.search(text) else _CHINESE


def _cid_font(char: str, han: str) -> str | None:
    if _HANGUL.match(char):
        return _KOREAN
    if _KANA.match(char):
        return _JAPANESE
    return han if _CJK.match(char) else None


def _is_mark(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Me")


def _marks_first(text: str) -> str:
    """Each right-to-left letter's marks moved before it, in reverse, so that once the line
    is reversed for display (python-bidi does not apply rule L3) they follow it, in the
    order typed, and are drawn over it."""
    if not _RIGHT_TO_LEFT_MARK.search(text):
        return text
    out: list[str] = []
    marks: list[str] = []
    base = ""
    for char in [*text, ""]:
        if base and char and _is_mark(char):
            marks.append(char)
            continue
        if base:
            out += reversed(marks)
            out.append(base)
            marks.clear()
        base = char if char and unicodedata.bidirectional(char) in ("R", "AL") else ""
        if not base:
            out.append(char)
    return "".join(out)


def _classed(text: str) -> str:
    """``text`` with each character this Python's Unicode data gives no bidi class (one
    assigned after it, a recent emoji such as U+1FA77) as U+FFFD: python-bidi asserts on
    them, and a PDF with one beside Hebrew or Arabic ended mid-answer. No font here draws
    them anyway."""
    if all(unicodedata.bidirectional(char) for char in text):
        return text
    return "".join(char if unicodedata.bidirectional(char) else "\ufffd" for char in text)


def _isolates_as_embeddings(text: str) -> str:
    """Directional isolates (LRI, RLI, FSI, PDI) as the embeddings they refine: python-bidi's
    Python implementation predates them and refuses them; an FSI takes the direction of the
    first strong character after it."""
    if not _ISOLATE.search(text):
        return text
    out: list[str] = []
    ahead = "\u202a"  # the embedding an FSI opens: by the next strong character
    for char in reversed(text):
        kind = unicodedata.bidirectional(char)
        if kind in ("L", "R", "AL"):
            ahead = "\u202a" if kind == "L" else "\u202b"
        out.append(ahead if char == "\u2068" else _EMBEDDING.get(char, char))
    return "".join(reversed(out))


def _can_break(text: str, at: int) -> bool:
    """Whether a line may end before ``text[at]`` (at > 0): after spaces, and around
    characters of scripts written without them."""
    before, char = text[at - 1], text[at]
    if char == " " or _is_mark(char):
        return False
    if before == " ":
        return True
    return bool((_CJK.match(char) or _KANA.match(char) or _CJK.match(before)
                 or _KANA.match(before))
                and char not in _NO_START and before not in _NO_END)


def _after_space(text: str, at: int) -> bool:
    """``_can_break`` for text with no Chinese or Japanese in it."""
    return text[at - 1] == " " and text[at] != " "


def _breaks(text: str, widths: list[float], limit: float) -> Iterator[tuple[int, int]]:
    """Greedy line breaks: (start, end) of each line; a word longer than a line is broken
    where the line ends (never between a letter and its marks); spaces hang past the end."""
    can_break = _can_break if _CJK.search(text) or _KANA.search(text) else _after_space
    ends = list(itertools.accumulate(widths, initial=0.0))
    start, last = 0, -1
    for at, char in enumerate(text):
        if at > start and can_break(text, at):
            last = at
        while char != " " and at > start and ends[at + 1] - ends[start] > limit:
            end = last if last > start else at
            while end > start + 1 and _is_mark(text[end]):
                end -= 1
            yield start, end
            start, last = end, -1
    yield start, len(text)


class Typesetter:
    """Sets paragraphs of any script in lines that fit a width, with a font per run."""

    def __init__(self, main: str) -> None:
        self.main = main
        font = cast(TTFont, pdfmetrics.getFont(main))  # _font() registers TrueType fonts
        self._glyphs = frozenset(map(chr, font.face.charToGlyph))
        self._advances: dict[tuple[str, str], float] = {}

    def plain(self, text: str) -> bool:
        """Left to right, and every character in the main font: the simple, fast path."""
        return text.isascii() or (self._glyphs.issuperset(text)
                                  and not _RIGHT_TO_LEFT.search(text))

    def right_to_left(self, text: str) -> bool:
        """The paragraph's direction by its first strong character (rules P2, P3)."""
        return bool(_RIGHT_TO_LEFT.search(text)) and get_base_level(text) == 1

    def lines(self, paragraph: str, size: float, width: float,
              right_to_left: bool | None = None) -> list[Line]:
        if right_to_left is None:
            right_to_left = self.right_to_left(paragraph)
        text = self._shaped(paragraph.replace("\t", " ").replace("\r", " "))
        han = _cjk_font(text)
        widths = [self._advance(char, han) * size for char in text]
        bidi = right_to_left or bool(_RIGHT_TO_LEFT.search(text))
        return [self._display(text[start:end].rstrip(" "), han, size, right_to_left, bidi)
                for start, end in _breaks(text, widths, width)]

    def _display(self, text: str, han: str, size: float, right_to_left: bool,
                 bidi: bool) -> Line:
        if bidi:  # wrapped in logical order, displayed in visual order
            text = str(get_display(_isolates_as_embeddings(_marks_first(_classed(text))),
                                   base_dir="R" if right_to_left else "L"))
        runs = []
        for font, chars in itertools.groupby(filter(self._drawn, text),
                                             lambda c: self._font(c, han)):
            run = "".join(chars)
            runs.append(Run(run, font, sum(self._advance(c, han) for c in run) * size))
        return Line(tuple(runs), sum(run.width for run in runs), right_to_left)

    def _drawn(self, char: str) -> bool:
        """Whether the character is drawn: format characters the font has no glyph for (bidi
        controls, joiners) are invisible by definition and would print as boxes."""
        return char in self._glyphs or unicodedata.category(char) != "Cf"

    def _font(self, char: str, han: str) -> str:
        if char in self._glyphs:
            return self.main
        return _cid_font(char, han) or self.main

    def _advance(self, char: str, han: str) -> float:
        """The character's advance at size 1, in the font it is drawn in."""
        font = self._font(char, han)
        key = (char, font)
        if key not in self._advances:
            if font != self.main and font not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(UnicodeCIDFont(font))
            self._advances[key] = stringWidth(char, font, 1.0) if self._drawn(char) else 0.0
        return self._advances[key]

    def _shaped(self, text: str) -> str:
        """Arabic letters in their joined forms; a form the font lacks stays the plain letter
        (joined less, but legible)."""
        if not _ARABIC.search(text):
            return text
        shaped = str(self._reshaper.reshape(text))
        return _PRESENTATION_FORM.sub(self._form_or_letter, shaped)

    def _form_or_letter(self, match: re.Match[str]) -> str:
        form = match.group()
        letter = unicodedata.normalize("NFKC", form)
        return form if form in self._glyphs or not self._glyphs.issuperset(letter) else letter

    @cached_property
    def _reshaper(self) -> ArabicReshaper:
        """Harakat kept (they are the writer's), and only ligatures the font can draw."""
        config: dict[str, bool] = {"delete_harakat": False, "support_ligatures": True}
        for name, (_, forms) in LIGATURES:
            config[name] = all(form in self._glyphs for form in forms if form)
        return ArabicReshaper(configuration=config)
