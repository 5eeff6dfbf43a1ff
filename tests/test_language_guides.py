"""Per-agency language guides: every file is read and checked when the service starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from services.common.settings import ConfigurationError
from services.records.application.language import LanguageGuides
from services.records.http.app import create_app
from tests.conftest import ClientFactory, TokenFactory, make_settings
from tests.records_api import CaseApi

NORTH_GUIDE = {
    "description": "North county additions",
    "terms": [{"term": "client", "suggestion": "participant"},
              {"term": "offender", "suggestion": "person under supervision"}],
    "remove": ["refused"],
}


def write_guide(folder: Path, agency: str, body: object) -> Path:
    path = folder / f"{agency}.json"
    path.write_text(json.dumps(body) if not isinstance(body, str) else body)
    return path


def suggestions(guides: LanguageGuides, agency: str, text: str) -> dict[str, str]:
    return {w.term.casefold(): w.suggestion for w in guides.for_agency(agency).check("text", text)}


def test_an_agency_file_extends_the_guide_for_that_agency_only(tmp_path: Path) -> None:
    write_guide(tmp_path, "north", NORTH_GUIDE)
    guides = LanguageGuides(tmp_path)
    text = "The client, an offender, refused the referral"
    assert suggestions(guides, "north", text) == {
        "client": "participant", "offender": "person under supervision"}
    base = suggestions(guides, "south", text)
    assert set(base) == {"offender", "refused"}
    assert base["offender"] != "person under supervision"
    assert suggestions(LanguageGuides(None), "north", text) == base


@pytest.mark.parametrize(("body", "named"), [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (["client"], "expected a JSON object"),
    ({"terms": {"term": "client"}}, "'terms' must be a list"),
    ({"terms": [{"term": "client"}]}, "'suggestion'"),
    ({"terms": ["client"]}, "terms[0]: each term is an object"),
    ({"terms": [{"term": "client", "suggestion": "participant", "message": " "}]},
     "terms[0]: 'message' must be a non-empty string"),
    ({"terms": [{"term": "client", "suggestion": "participant", "note": "x"}]}, "unknown keys"),
    ({"trems": [{"term": "client", "suggestion": "participant"}]}, "unknown keys ['trems']"),
    ({"remove": "refused"}, "'remove' must be a list"),
])
def test_a_malformed_guide_file_is_refused_naming_the_file(
        tmp_path: Path, body: object, named: str) -> None:
    path = tmp_path / "north.json"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        write_guide(tmp_path, "north", body)
    with pytest.raises(ConfigurationError) as refused:
        LanguageGuides(tmp_path)
    assert str(refused.value).startswith(f"{path}: ")
    assert named in str(refused.value)


def test_a_guide_folder_that_is_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"CASETRAIL_LANGUAGE_GUIDE_DIR=.*: not a folder"):
        LanguageGuides(tmp_path / "missing")


def test_a_malformed_guide_file_stops_the_app_before_it_starts(tmp_path: Path) -> None:
    # Read lazily, this file used to answer 500 after the write had committed.
    path = write_guide(tmp_path, "agency-a", {"terms": [{"term": "client"}]})
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        create_app(make_settings("postgresql://unused",
                                 CASETRAIL_LANGUAGE_GUIDE_DIR=str(tmp_path)))


async def test_a_write_answers_with_the_agency_guide_warnings(
        make_records_client: ClientFactory, database_url: str, tmp_path: Path,
        token: TokenFactory) -> None:
    write_guide(tmp_path, "agency-north", NORTH_GUIDE)
    client: TestClient = await make_records_client(
        database_url, CASETRAIL_LANGUAGE_GUIDE_DIR=str(tmp_path))
    for agency, expected in [("agency-north", ["client"]), ("agency-south", [])]:
        cm = CaseApi(client, token(agency=agency))
        case_id = await cm.open_case()
        note = await cm.call("POST", f"/v1/cases/{case_id}/notes",
                             {"text": "Met the client at the library"}, expect=201)
        assert [w["term"] for w in note["warnings"]] == expected
