"""Privacy audit of the logs: a service run for real, at info level, keeps people's email
addresses and tokens out of its output, whatever channel would have carried them there."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote

from services.common.auth import issue_token
from tests.conftest import JWT_SECRET, free_port
from tests.test_cli import CASETRAIL, _ready

ADDRESS = "jo.rivera@example.org"


def _put(url: str, token: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_an_address_used_as_a_user_id_stays_out_of_the_notifiers_log(
        fresh_database_url: str) -> None:
    """User ids are what the identity provider issues, and many issue the person's address:
    a participant setting their own preferences put it in the request log's path."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "info", "RECORDS_URL": f"http://127.0.0.1:{free_port()}"}
    process = subprocess.Popen([*CASETRAIL, "notifier", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    token = issue_token(JWT_SECRET, sub=ADDRESS, role="participant", agency="agency-a",
                        cases=[str(uuid.uuid4())])
    url = f"http://127.0.0.1:{port}/v1/preferences/{quote(ADDRESS, safe='')}"
    body = {"email": ADDRESS, "delivery": "immediate", "timezone": "UTC", "celebrations": True}
    try:
        assert _ready(port, time.monotonic() + 60, path="/healthz")
        assert _put(url, token, body) == 200
        assert _put(url, token, {**body, "delivery": "weekly"}) == 422
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    requests = [line for line in map(json.loads, output.splitlines())
                if line["event"] == "request" and line["method"] == "PUT"]
    assert [r["status"] for r in requests] == [200, 422]
    assert requests[0]["path"] == "/v1/preferences/[address]"
    assert "example.org" not in output
    assert token not in output
    assert token.split(".")[1] not in output  # nor its claims


def test_what_libraries_log_has_its_addresses_masked_too() -> None:
    """aiohttp's and asyncpg's records, tracebacks included, go through the same renderer."""
    program = f"""if True:
        import logging
        from services.common.logs import configure_logging
        configure_logging("info")
        try:
            raise ValueError("550 <{ADDRESS}>: no such mailbox")
        except ValueError:
            logging.getLogger("aiohttp.server").error("Error handling %s", "{ADDRESS}",
                                                      exc_info=True)
    """
    ran = subprocess.run([*CASETRAIL[:1], "-c", program], capture_output=True, text=True,
                         timeout=60, check=True)
    (line,) = [json.loads(text) for text in ran.stdout.splitlines()]
    assert line["event"] == "Error handling [address]"
    assert "ValueError: 550 <[address]>: no such mailbox" in line["exception"]
    assert "example.org" not in ran.stdout + ran.stderr
