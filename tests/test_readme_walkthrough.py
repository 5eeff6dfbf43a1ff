"""The README's curl walk-through, run as printed against a real `casetrail dev`, twice.

A newcomer pastes the blocks into a shell; `casetrail dev` keeps its data from one run to the
next (README: "run it again to carry on with the same data"), so the walk-through must answer
the same way the second time too. Only the ports are substituted, as the README's `--port`
flags allow. What each request answered is read from the service's own request log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CASETRAIL = [sys.executable, "-m", "services.cli"]
READY = "Stop with Ctrl-C"
# the walk-through, then the auditor, analyst and notifier blocks that continue it
BLOCK_MARKS = ("API=http://127.0.0.1:8080", "AUDITOR_TOKEN=$(", "ANALYST_TOKEN=$(",
               "NOTIFIER=http://127.0.0.1:8081")
REQUEST = re.compile(r"\] request .* method=(\S+) path=(\S+) .*status=(\d+)")


def readme_walkthrough(records_url: str, notifier_url: str) -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    chosen = [block for block in blocks if any(mark in block for mark in BLOCK_MARKS)]
    assert len(chosen) == len(BLOCK_MARKS), "a walk-through block moved or changed its start"
    script = "\n".join(chosen)
    return (script.replace("http://127.0.0.1:8080", records_url)
            .replace("http://127.0.0.1:8081", notifier_url))


@dataclass(frozen=True)
class DevRun:
    folder: Path
    log: Path
    token: str
    records_url: str
    notifier_url: str


@pytest.fixture
def dev_run(tmp_path: Path, fresh_database_url: str) -> Iterator[DevRun]:
    """`casetrail dev` started in a folder of its own, as a newcomer starts it in the clone."""
    ports = [str(free_port()) for _ in range(3)]
    env = {k: v for k, v in os.environ.items()
           if k not in {"CASETRAIL_JWT_SECRET", "CASETRAIL_DEV_DIR"}}
    env["DATABASE_URL"] = fresh_database_url  # the machine's server: quicker than embedded
    log = tmp_path / "dev.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [*CASETRAIL, "dev", "--port", ports[0], "--notifier-port", ports[1],
             "--smtp-port", ports[2]], cwd=tmp_path, env=env, stdout=output,
            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while READY not in log.read_text() and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        printed = log.read_text()
        assert READY in printed, printed
        yield DevRun(tmp_path, log, printed.split("export TOKEN=")[1].split()[0],
                     f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_walkthrough(dev: DevRun) -> subprocess.CompletedProcess[str]:
    script = readme_walkthrough(dev.records_url, dev.notifier_url)
    # `source .venv/bin/activate`: `casetrail` on the PATH; then the pasted `export TOKEN=`
    env = {**os.environ, "TOKEN": dev.token,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", script], cwd=dev.folder, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def logged_answers(log: Path, expected: int) -> list[tuple[str, str, int]]:
    """Method, path and status of every request but the notifier's own feed reads, once
    ``expected`` are logged (a line may follow its answer by a moment) or 10 s have passed."""
    deadline = time.monotonic() + 10
    while True:
        answers = [(method, path, int(status))
                   for method, path, status in REQUEST.findall(log.read_text())
                   if path != "/v1/events"]
        if len(answers) >= expected or time.monotonic() > deadline:
            return answers
        time.sleep(0.1)


def test_the_walkthrough_answers_as_the_readme_says_and_again_on_a_second_run(
        dev_run: DevRun) -> None:
    runs = [run_walkthrough(dev_run) for _ in range(2)]
    requests_per_run = readme_walkthrough("", "").count("curl ")
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.count("VERIFIED") == 1, run.stdout  # the export checked offline
        assert "NOT VERIFIED" not in run.stdout
        assert re.search(r'ETag: "\d+"', run.stdout), run.stdout
    answers = logged_answers(dev_run.log, 2 * requests_per_run)
    refused = [answer for answer in answers if answer[2] >= 400]
    # each run has one refusal, the one the README shows: the stale If-Match (412)
    assert [status for _, _, status in refused] == [412, 412], refused
    assert len(answers) == 2 * requests_per_run, answers  # every curl reached a service
