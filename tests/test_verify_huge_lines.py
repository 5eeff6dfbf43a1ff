"""`casetrail verify` on files whose lines are too long to be an export's: a gigabyte with no
line break (`truncate -s 1G big.bin`, or an export's first line that never ends) used to be
read whole, and ended in a MemoryError traceback under `ulimit -v 900000`. The verifier now
reads each line with a bound (verify.MAX_LINE_BYTES, 64 MiB), through the one reader every
format's path uses, and refuses a longer line: NOT VERIFIED, exit 1, a message, never a
traceback, having read no more than the bound. Exports the service writes still verify, a line
of exactly the bound too."""

# ruff: noqa: F811

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tracemalloc
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.cli import main as casetrail
from services.records.chain import GENESIS_HASH, ChainLink
from services.records.export.formats import (
    ExportFormat,
    ExportHeader,
    ExportWriter,
    event_fields,
    json_line,
)
from services.records.export.signing import load_signer
from services.records.export.verify import MAX_LINE_BYTES, MalformedExport, verify_export
from tests.conftest import TokenFactory
from tests.export_helpers import (  # noqa: F401  (fixtures are found by name)
    case_id,
    client,
    export,
    key_file,
    lines,
    run_verify,
)

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
TOO_LONG = (f"longer than 64 MiB ({MAX_LINE_BYTES:,} bytes), too long to be an export line")
# the two files of the audit: zeros from the first byte, and an export's first line that never
# ends (both sparse: a gigabyte on the file system, next to nothing on the disk)
AUDIT_FILES = {"zeros": b"", "an-endless-header": b'{"export":"casetrail.case-export"'}
FORMATS = ["jsonl", "csv", "pdf", "fhir"]


def endless(path: Path, start: bytes, size: int = GIB) -> Path:
    """``start``, then zeros to ``size`` bytes: no line break after ``start``'s."""
    path.write_bytes(start)
    os.truncate(path, size)
    return path


def first_lines(raw: bytes, count: int) -> bytes:
    """The first ``count`` lines as a file reader sees them (split at LF only: a PDF's binary
    streams hold CR bytes, where ``bytes.splitlines`` would split too)."""
    end = -1
    for _ in range(count):
        end = raw.index(b"\n", end + 1)
    return raw[:end + 1]


def verify_in_a_process(path: Path, address_space: int) -> subprocess.CompletedProcess[str]:
    """`casetrail verify PATH` in a process of its own whose address space is capped, as
    `ulimit -v` caps it."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, "-c", "import sys; from services.cli import main;"
         " sys.exit(main(sys.argv[1:]))", "verify", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=cap, check=False)


# --------------------------------------------------------------------------------------------
# a gigabyte without a line break
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", AUDIT_FILES.values(), ids=AUDIT_FILES.keys())
def test_a_gigabyte_without_a_line_break_is_refused_having_read_only_the_bound(
        tmp_path: Path, start: bytes) -> None:
    path = endless(tmp_path / "big.bin", start)
    tracemalloc.start()
    try:
        with pytest.raises(MalformedExport) as refused, path.open("rb") as file:
            verify_export(file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(refused.value) == f"line 1: {TOO_LONG}"
    # the line read with its bound (a binary file's readline gathers it, then joins it: twice
    # the bound at most), not the gigabyte
    assert peak < 3 * MAX_LINE_BYTES < GIB / 5


@pytest.mark.parametrize("start", AUDIT_FILES.values(), ids=AUDIT_FILES.keys())
def test_casetrail_verify_says_not_verified_for_a_gigabyte_without_a_line_break(
        tmp_path: Path, start: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = endless(tmp_path / "big.bin", start)
    code = casetrail(["verify", str(path)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == f"{path}: line 1: {TOO_LONG}\nNOT VERIFIED\n"
    assert captured.err == ""


@pytest.mark.parametrize("start", AUDIT_FILES.values(), ids=AUDIT_FILES.keys())
def test_the_audits_files_under_ulimit_v_900000_end_in_not_verified_not_a_traceback(
        tmp_path: Path, start: bytes) -> None:
    path = endless(tmp_path / "big.bin", start)
    finished = verify_in_a_process(path, 900_000 * 1024)
    assert (finished.returncode, finished.stderr) == (1, "")
    assert finished.stdout == f"{path}: line 1: {TOO_LONG}\nNOT VERIFIED\n"


def test_a_line_under_the_bound_that_parses_past_the_memory_ends_in_not_verified(
        tmp_path: Path) -> None:
    """JSON under the bound can still parse to many times its size (an empty list is 3 bytes
    on the line, over 60 in memory): where the memory runs out, a message, not a traceback."""
    lists = (24 << 20) // 3
    path = tmp_path / "crafted.jsonl"
    path.write_bytes(b'{"export":"casetrail.case-export","format_version":1,"filler":['
                     + b"[]," * lists + b'[]]}\n{"events":0}\n')
    finished = verify_in_a_process(path, 512 << 20)
    assert (finished.returncode, finished.stderr) == (1, "")
    assert finished.stdout == (f"{path}: the memory ran out reading it as an export (a line"
                               " holds more values than this machine can hold)\nNOT VERIFIED\n")


def test_lines_given_already_split_are_held_to_the_same_bound() -> None:
    header = b'{"export":"casetrail.case-export","format_version":1}\n'
    with pytest.raises(MalformedExport) as refused:
        verify_export([header, b" " * MAX_LINE_BYTES + b"\n", b"{}\n"])
    assert str(refused.value) == f"line 2: {TOO_LONG}"


# --------------------------------------------------------------------------------------------
# the bound itself: a signed export's line of exactly it verifies, one byte more does not
# --------------------------------------------------------------------------------------------


def signed_export_with_a_line_of(length: int, key_file: Path) -> bytes:
    """A JSON Lines export of one note, written and signed by the service's own ExportWriter
    with the agency's key, its event's line ``length`` bytes long (its line break included).
    The service's schemas hold a note to 4,000 characters; the verifier reads no schema, and
    the line's length is all this is about."""
    case_id = str(uuid.uuid4())
    actor = {"sub": "cm-1", "role": "case_manager"}
    header = ExportHeader(case_id, "agency-a", 1, 1, datetime(2026, 12, 7, 9, tzinfo=UTC), actor)
    link = ChainLink(case_id, 1, str(uuid.uuid4()), "NoteAdded", 1,
                     {"note_id": str(uuid.uuid4()), "text": ""}, {"actor": actor},
                     datetime(2026, 12, 7, 8, tzinfo=UTC), GENESIS_HASH)
    unpadded = len(json_line(event_fields(replace(link, hash="0" * 64)))) + 1
    link = replace(link, data={**link.data, "text": "x" * (length - unpadded)})
    link = replace(link, hash=link.compute_hash())
    writer = ExportWriter(ExportFormat.JSONL, header)
    raw = b"".join([writer.header(), writer.event(link), writer.trailer(load_signer(key_file))])
    assert len(lines(raw)[1]) == length
    return raw


def test_a_signed_export_whose_line_is_exactly_the_bound_verifies(
        tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = signed_export_with_a_line_of(MAX_LINE_BYTES, key_file)
    code, out = run_verify(tmp_path, raw, "--public-key", str(key_file), capsys=capsys)
    assert code == 0, out
    assert out.endswith("\nVERIFIED\n")


def test_the_same_export_one_byte_past_the_bound_is_refused_by_its_length(
        tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = signed_export_with_a_line_of(MAX_LINE_BYTES + 1, key_file)
    code, out = run_verify(tmp_path, raw, "--public-key", str(key_file), capsys=capsys)
    assert code == 1
    assert out == f"{tmp_path / 'export.out'}: line 2: {TOO_LONG}\nNOT VERIFIED\n"


# --------------------------------------------------------------------------------------------
# every format: the service's export verifies from its file, and its path reads the bound
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("export_format", FORMATS)
async def test_an_export_of_each_format_read_from_its_file_still_verifies(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, key_file: Path,
        tmp_path: Path, export_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    raw = await export(client, token(sub="cm-1"), case_id, f"?format={export_format}")
    code, out = run_verify(tmp_path, raw, "--public-key", str(key_file), capsys=capsys)
    assert code == 0, out
    assert out.endswith("\nVERIFIED\n")


@pytest.mark.parametrize("export_format", FORMATS)
async def test_each_formats_path_refuses_a_line_past_the_bound(
        client: TestClient[Any, Any], token: TokenFactory, case_id: str, tmp_path: Path,
        export_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An export's first three lines (a CSV's header, column names and first event; a FHIR
    Bundle's opening and first resources; a PDF's first lines), then a gigabyte with no line
    break: line 4 is read by the format's own path, and refused there."""
    raw = await export(client, token(sub="cm-1"), case_id, f"?format={export_format}")
    path = endless(tmp_path / f"export.{export_format}", first_lines(raw, 3))
    capsys.readouterr()  # the service's own log lines of the export, not the verifier's
    code = casetrail(["verify", str(path)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == f"{path}: line 4: {TOO_LONG}\nNOT VERIFIED\n"
    assert captured.err == ""
