"""Control characters typed into a plan (a bell, a form feed, a terminal colour code) are kept in
the recorded events, as written, and laid out in the FHIR resources and on the PDF's pages as
U+FFFD, so FHIR readers take the Bundle and a reader sees that something was there
(docs/decisions/0012-fhir-export.md, "Control characters in the plan's text")."""

# ruff: noqa: F811
from __future__ import annotations

import io
import json
import xml.dom.minidom
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

from services.records.export import fhir, pdf
from tests.conftest import TokenFactory
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    client,
    export,
    key_file,
    public_key,
    run_verify,
    verify_bytes,
)
from tests.records_api import CaseApi

Client = TestClient[Request, Application]

STAND_IN = "\ufffd"
# each as the API takes it (201), a control character inside, where stripping does not reach
TITLE = "Find work\x07 near home\x0b now"
IN_THEIR_WORDS = "I want \x1b[31mmy own\x1b[0m money"
WHY = "For my kids\x0c\tand me"  # the TAB is kept
STEP = "Call Sam\x07 at the shop\x7f\x85 and\r\nask about hours"  # DEL, C1 NEL; CR LF kept
STRENGTH = "Fixes bikes\x1e for neighbours"
PAUSED = "waiting\x1b for the\x9b court"  # a C1 CSI too

# the same, as the export lays them out
SHOWN = {TITLE: "Find work\ufffd near home\ufffd now",
         IN_THEIR_WORDS: "I want \ufffd[31mmy own\ufffd[0m money",
         WHY: "For my kids\ufffd\tand me",
         STEP: "Call Sam\ufffd at the shop\ufffd\ufffd and\r\nask about hours",
         STRENGTH: "Fixes bikes\ufffd for neighbours",
         PAUSED: "waiting\ufffd for the\ufffd court"}
KEPT = frozenset("\t\n\r")


def _control(char: str) -> bool:
    """A control character FHIR strings should not hold (below 32 but TAB, LF, CR) or no
    reader draws (DEL, C1)."""
    return char not in KEPT and (ord(char) < 32 or 0x7F <= ord(char) <= 0x9F)


@pytest.fixture
async def case_id(client: Client, token: TokenFactory) -> str:
    """A plan with control characters in a goal (title, their words, why it matters, the
    reason it was paused), a step and a strength."""
    cm = CaseApi(client, token(sub="cm-1"))
    case_id = await cm.open_case()
    await cm.strength(case_id, STRENGTH)
    goal = await cm.goal(case_id, TITLE, in_their_words=IN_THEIR_WORDS, why_it_matters=WHY)
    await cm.step(case_id, goal, STEP)
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                  {"status": "paused", "reason": PAUSED}, expect=200)
    return case_id


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, with where it is."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")


def laid_out(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource without the recorded event a Provenance carries (the event as written)."""
    return {key: [e for e in value if e["url"] != fhir.EVENT_EXTENSION]
            if key == "extension" and resource["resourceType"] == "Provenance" else value
            for key, value in resource.items()}


async def test_fhir_resources_show_a_stand_in_for_each_control_character_and_verify(
        client: Client, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    raw = await export(client, supervisor, case_id, "?format=fhir")
    Bundle.model_validate_json(raw)
    entries = [e["resource"] for e in json.loads(raw)["entry"]]

    # no control character anywhere a FHIR reader reads text, and each string is XML 1.0
    # text (expat refuses the controls: a JSON→XML conversion failed on them)
    shown = [(f"{r['resourceType']}{where}", text)
             for r in entries for where, text in strings(laid_out(r))]
    assert len(shown) > 50
    assert [(where, text) for where, text in shown if any(map(_control, text))] == []
    for _, text in shown:
        xml.dom.minidom.parseString(f"<v>{escape(text)}</v>")

    # the stand-in where each control character was, TAB, CR and LF kept
    [goal] = [r for r in entries if r["resourceType"] == "Goal"]
    assert goal["description"]["text"] == SHOWN[TITLE]
    assert [n["text"] for n in goal["note"]] == [SHOWN[IN_THEIR_WORDS],
                                                 f"Why it matters: {SHOWN[WHY]}"]
    assert goal["statusReason"] == SHOWN[PAUSED]
    [care_plan] = [r for r in entries if r["resourceType"] == "CarePlan"]
    assert [a["detail"]["description"] for a in care_plan["activity"]] == [SHOWN[STEP]]
    [strength] = [e for e in care_plan["extension"] if e["url"].endswith("/strength")]
    assert {"url": "description", "valueString": SHOWN[STRENGTH]} in strength["extension"]
    provenance = [r for r in entries if r["resourceType"] == "Provenance"]
    paused = next(p for p in provenance if p["activity"]["coding"][0]["code"]
                  == "GoalStatusChanged")
    assert paused["reason"] == [{"text": SHOWN[PAUSED]}]

    # the events as recorded: byte for byte the JSON Lines lines, the exact text in them
    recorded = [next(e["valueString"] for e in p["extension"]
                     if e["url"] == fhir.EVENT_EXTENSION) for p in provenance]
    jsonl = await export(client, supervisor, case_id)
    assert [line.encode() for line in recorded] == jsonl.splitlines()[1:-1]
    data = {json.loads(line)["type"]: json.loads(line)["data"] for line in recorded}
    assert (data["GoalSet"]["title"], data["GoalSet"]["in_their_words"],
            data["GoalSet"]["why_it_matters"]) == (TITLE, IN_THEIR_WORDS, WHY)
    assert data["ActionStepAdded"]["description"] == STEP
    assert data["StrengthRecorded"]["description"] == STRENGTH
    assert json.loads(next(line for line in recorded if '"GoalStatusChanged"' in line)
                      )["metadata"]["reason"] == PAUSED

    # the signature covers the Bundle as written: it verifies offline with the agency's key
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 0, out
    assert out.rstrip().endswith("VERIFIED")
    report = verify_bytes(raw, public_key(key_file))
    assert report.ok, report.problems
    assert report.events == len(provenance)


async def test_the_pdf_draws_the_stand_in_where_each_control_character_was_and_verifies(
        client: Client, token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(sub="cm-1"), case_id, "?format=pdf")
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 0, out
    assert out.rstrip().endswith("VERIFIED")

    reader = PdfReader(io.BytesIO(raw[:raw.rindex(b"%%EOF") + 5]))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert [char for char in text if _control(char)] == []
    # each drawn where the control character was (reportlab sets TAB and CR as spaces; a
    # line break starts a new line)
    for written in (TITLE, IN_THEIR_WORDS, STRENGTH, PAUSED):
        assert SHOWN[written] in text, written
    assert "For my kids\ufffd and me" in text
    assert "Call Sam\ufffd at the shop\ufffd\ufffd and\nask about hours" in text
    # one for each: the title in GoalSet and GoalStatusChanged, the reason as the event's
    # reason and in its data (2 + 2), their words 2, why it matters 1, the step 3, the
    # strength 1, and nothing else
    assert text.count(STAND_IN) == 2 * 2 + 2 * 2 + 2 + 1 + 3 + 1

    # and the font the pages are set in has a glyph for it: not a missing-glyph box
    font = pdfmetrics.getFont(pdf._font())
    assert isinstance(font, TTFont)
    assert ord(STAND_IN) in font.face.charToGlyph
    assert font.face.charToGlyph[ord(STAND_IN)] != 0
