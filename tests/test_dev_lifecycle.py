"""`casetrail dev` as a real process: how it stops, after a hard kill and when it cannot start."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from services.common.server import host_and_port, http_url
from tests.conftest import free_port, gone, postgres_of

CASETRAIL = [sys.executable, "-m", "services.cli"]
READY = "Stop with Ctrl-C"


class Dev:
    """One `casetrail dev` process with its output read as it comes (a hung process fails the
    test at a deadline instead of hanging it)."""

    def __init__(self, dev_dir: Path, *flags: str, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "CASETRAIL_JWT_SECRET"}}
        env["CASETRAIL_DEV_DIR"] = str(dev_dir)
        env.update(extra_env)
        self.process = subprocess.Popen([*CASETRAIL, "dev", *flags], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.output = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, seconds: float = 60) -> bool:
        deadline = time.monotonic() + seconds
        while text not in self.output and time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output += line
        return text in self.output

    def finish(self, seconds: float = 30) -> int:
        code = self.process.wait(timeout=seconds)
        self.wait_for("\0never printed\0", seconds=5)  # the rest of the output
        return code


def _flags(*, host: str = "127.0.0.1", **ports: int) -> list[str]:
    """``--port``, ``--notifier-port`` and ``--smtp-port`` free ones unless given."""
    return [*("--host", host), *(part for flag in ("port", "notifier_port", "smtp_port")
                                 for part in (f"--{flag.replace('_', '-')}",
                                              str(ports.get(flag) or free_port())))]


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def test_dev_stops_its_postgres_after_an_earlier_run_was_killed(dev_dir: Path) -> None:
    """A SIGKILLed run leaves its PostgreSQL running (nothing can stop it); the next run uses
    that server and, stopped in the ordinary way, stops it: it used to leave it running, since
    the dead process stayed on the list of the server's users."""
    killed = Dev(dev_dir, *_flags())
    try:
        assert killed.wait_for(READY), killed.output
    finally:
        killed.process.kill()
        killed.process.wait(timeout=30)
    orphan = _postmaster_pid(dev_dir / "pgdata")
    assert orphan is not None
    assert psutil.pid_exists(orphan)

    again = Dev(dev_dir, *_flags())
    try:
        assert again.wait_for(READY), again.output
        assert _postmaster_pid(dev_dir / "pgdata") == orphan  # the same server, taken over
    finally:
        again.process.terminate()
        again.finish()
    assert not (dev_dir / "pgdata" / "postmaster.pid").exists(), again.output
    assert gone(orphan)
    assert postgres_of(dev_dir / "pgdata") == []


@pytest.mark.parametrize(("flag", "choose"), [
    ("port", "--port, or RECORDS_PORT"),
    ("notifier_port", "--notifier-port, or NOTIFIER_PORT"),
    ("smtp_port", "--smtp-port, or SMTP_PORT")])
def test_dev_with_a_port_taken_names_it_and_stops_what_had_started(
        dev_dir: Path, flag: str, choose: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dev = Dev(dev_dir, *_flags(**{flag: taken.getsockname()[1]}))
        code = dev.finish(seconds=90)
    assert code == 2, dev.output
    assert "Unclosed" not in dev.output  # what had started was stopped, not left to the GC
    assert "address already in use" in dev.output.lower()
    assert f"(choose another port with {choose})" in dev.output, dev.output
    assert "Traceback" not in dev.output
    assert not (dev_dir / "pgdata" / "postmaster.pid").exists()
    assert postgres_of(dev_dir / "pgdata") == []


def test_dev_does_not_stop_for_a_real_mail_servers_settings(dev_dir: Path) -> None:
    """Dev's notifier mails its own catcher, so a production-like environment's mail server
    settings are not its own: a login without TLS to another host stopped dev at start,
    before anything ran. Here it gets as far as the records port, taken on purpose."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dev = Dev(dev_dir, *_flags(port=taken.getsockname()[1]),
                  SMTP_HOST="smtp.example.org", SMTP_USERNAME="notices",
                  SMTP_PASSWORD="not-in-clear", SMTP_TIMEOUT="0")
        code = dev.finish(seconds=90)
    assert code == 2, dev.output
    assert "address already in use" in dev.output.lower(), dev.output
    assert "SMTP_" not in dev.output, dev.output


@pytest.mark.parametrize(("host", "url", "typed"), [
    ("127.0.0.1", "http://127.0.0.1:8080", "127.0.0.1:8080"),
    ("localhost", "http://localhost:8080", "localhost:8080"),
    ("::1", "http://[::1]:8080", "[::1]:8080"),
    ("::", "http://[::]:8080", "[::]:8080")])
def test_urls_put_an_ipv6_address_in_brackets(host: str, url: str, typed: str) -> None:
    assert http_url(host, 8080) == url
    assert host_and_port(host, 8080) == typed


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_dev_on_ipv6_loopback_prints_urls_that_work(dev_dir: Path) -> None:
    port, notifier_port = free_port(), free_port()
    flags = _flags(host="::1", port=port, notifier_port=notifier_port)
    dev = Dev(dev_dir, *flags)
    try:
        assert dev.wait_for(READY), dev.output
        assert f"records   http://[::1]:{port} " in dev.output
        assert f"notifier  http://[::1]:{notifier_port} " in dev.output
        # ready once the notifier reads the records feed, which it could not at http://::1:…
        deadline = time.monotonic() + 30
        status = None
        while status != 200 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://[::1]:{notifier_port}/readyz",
                                            timeout=5) as answer:
                    status = answer.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, dev.output
    finally:
        dev.process.terminate()
        dev.finish()
