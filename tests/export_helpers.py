"""Fixtures and helpers shared by the export tests (JSON Lines, CSV, PDF and FHIR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.cli import main as casetrail
from services.records.export.signing import load_signer, write_key_pair
from services.records.export.verify import verify_export
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi

NOTE = "Jo said: «I want to fix bikes»\nand meant it"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "export.pem"
    write_key_pair(path)
    return path


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str,
                 key_file: Path) -> TestClient:
    return await make_records_client(fresh_database_url,
                                     CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file))


@pytest.fixture
async def case_id(client: TestClient, token: TokenFactory) -> str:
    return await open_export_case(CaseApi(client, token(sub="cm-1")))


async def open_export_case(cm: CaseApi) -> str:
    """A case opened, a strength, a goal on it, the note NOTE and the strength removed with a
    reason (5 events)."""
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    await cm.goal(case_id, strength_ids=[strength])
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": NOTE}, expect=201)
    await cm.call("DELETE", f"/v1/cases/{case_id}/strengths/{strength}",
                  {"reason": "recorded twice"})
    return case_id


async def export(client: TestClient, token: str, case_id: str, query: str = "") -> bytes:
    response = await client.get(f"/v1/cases/{case_id}/export{query}", headers=bearer(token))
    assert response.status == 200, await response.text()
    return await response.read()


async def add_notes(client: TestClient, token: TokenFactory, case_id: str,
                    texts: list[str]) -> None:
    cm = CaseApi(client, token(sub="cm-1"))
    for text in texts:
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": text}, expect=201)


def lines(raw: bytes) -> list[bytes]:
    return raw.splitlines(keepends=True)


def verify_bytes(raw: bytes, trusted: bytes | None = None) -> Any:
    return verify_export(lines(raw), trusted)


def public_key(key_file: Path) -> bytes:
    return load_signer(key_file).public_key


def run_verify(tmp_path: Path, raw: bytes, *options: str,
               capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "export.out"
    path.write_bytes(raw)
    code = casetrail(["verify", str(path), *options])
    captured = capsys.readouterr()
    return code, captured.out + captured.err
