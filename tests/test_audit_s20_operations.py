"""Operations audit (design.md, Operations): what an SRE adopting Casetrail relies on.

"Structured JSON logs with request ids; Prometheus metrics (request latency, append rate, feed
lag, notifications sent/failed/dead)", `/healthz`, `/readyz` and `/metrics` on both services
(README, Operations), configuration by environment variables that stops the start with a clear
message naming the variable (README, Configuration), and a clean stop on SIGTERM (0013,
Draining). Each test runs the real services against a real PostgreSQL and SMTP peer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.common.auth import issue_token
from tests.conftest import JWT_SECRET, ClientFactory, FakeClock, TokenFactory, bearer, free_port
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig
from tests.records_api import CaseApi
from tests.test_cli import _ready

CASETRAIL = [sys.executable, "-m", "services.cli"]
HEX_ID = re.compile(r"[0-9a-f]{32}")


# --- helpers -------------------------------------------------------------------------------


async def exposition(client: TestClient) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


def sample_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples in a /metrics text, by their sorted labels."""
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}


def one_value(text: str, name: str, **labels: str) -> float:
    return sample_values(text, name).get(tuple(sorted(labels.items())), 0.0)


def _request(url: str, headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers and body, whatever the status."""
    asked = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(asked, timeout=15) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASETRAIL_", "NOTIFIER_", "RECORDS_", "SMTP_"))}
    env.update({"DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
                "CASETRAIL_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
                "RECORDS_URL": f"http://127.0.0.1:{free_port()}",
                "RECORDS_PORT": str(free_port()), "NOTIFIER_PORT": str(free_port()),
                "CASETRAIL_DEV_DIR": "/nonexistent/ops-auditor"})
    env.update(extra)
    return env


# --- /metrics: the exposition an SRE's Prometheus scrapes ----------------------------------


async def _exercise_both(records: Records, rig: NotifierRig, token: TokenFactory) -> None:
    await rig.set_prefs("cm-1", token())
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal))
    await rig.catch_up()
    await rig.dispatch()
    await records.client.get(f"/v1/cases/{uuid.uuid4()}", headers=bearer(records.token))


@pytest.mark.parametrize("service", ["records", "notifier"])
async def test_metrics_parse_and_every_family_has_help_type_and_a_conventional_name(
        records: Records, rig: NotifierRig, token: TokenFactory, service: str) -> None:
    """Prometheus naming (https://prometheus.io/docs/practices/naming/): counters end in
    `_total`, durations are in seconds and say so; every family declares HELP and TYPE."""
    await _exercise_both(records, rig, token)
    client = records.client if service == "records" else rig.client
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    documented = {
        "records": {"casetrail_http_request_seconds", "casetrail_events_appended",
                    "casetrail_append_conflicts", "casetrail_append_batch_size"},
        "notifier": {"casetrail_http_request_seconds", "casetrail_notifications_sent",
                     "casetrail_notifications_failed", "casetrail_notifications_dead",
                     "casetrail_notifications_cancelled", "casetrail_notifier_feed_lag_seconds",
                     "casetrail_notifier_feed_events", "casetrail_notifier_feed_events_skipped",
                     "casetrail_notifier_feed_errors"},
    }[service]
    assert documented <= names, documented - names
    helped = set(re.findall(r"^# HELP (\S+) \S", text, re.MULTILINE))
    typed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for family in families:
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert exposed in helped, f"{exposed} has no HELP"
        assert typed.get(exposed) == family.type, f"{exposed} has no TYPE"
        assert family.documentation.strip(), family.name
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name
    assert typed["casetrail_http_request_seconds"] == "histogram"
    if service == "notifier":
        assert typed["casetrail_notifier_feed_lag_seconds"] == "gauge"


async def test_request_latency_is_labelled_by_route_template_and_stays_bounded(
        records: Records, token: TokenFactory) -> None:
    """A scanner asking 1,000 distinct unknown paths, and reads of 50 cases that do not exist,
    must not make 1,050 series: route labels are templates or `unmatched`."""
    client = records.client
    for n in range(1000):
        await client.get(f"/scan/{n}/wp-admin.php")
    for _ in range(50):
        answer = await client.get(f"/v1/cases/{uuid.uuid4()}", headers=bearer(records.token))
        assert answer.status == 404
    for n in range(20):
        await client.get(f"/v1/cases/{uuid.uuid4()}/no-such-part-{n}",
                         headers=bearer(records.token))
    counts = sample_values(await exposition(client), "casetrail_http_request_seconds_count")
    routes = {dict(labels)["route"] for labels in counts}
    assert len(counts) < 10, sorted(counts)
    assert routes <= {"unmatched", "/v1/cases/{case_id}"}, routes
    assert counts[(("method", "GET"), ("route", "/v1/cases/{case_id}"), ("status", "404"))] == 50
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1020
    buckets = sample_values(await exposition(client), "casetrail_http_request_seconds_bucket")
    assert all("le" in dict(labels) for labels in buckets)


async def test_unknown_methods_do_not_add_series(
        served_records: tuple[int, asyncpg.Pool]) -> None:
    """The method label comes from the client: made-up methods must not each make a series."""
    port, _ = served_records
    for n in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"METHOD{n} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert answer.startswith(b"HTTP/1.")
    _, _, body = await asyncio.to_thread(_request, f"http://127.0.0.1:{port}/metrics")
    counts = sample_values(body.decode(), "casetrail_http_request_seconds_count")
    methods = {dict(labels)["method"] for labels in counts}
    assert not {m for m in methods if m.startswith("METHOD")}, methods


async def test_the_append_rate_counts_events_written_not_requests(
        client: TestClient, cm: CaseApi) -> None:
    """`casetrail_events_appended_total` (by event type: the append rate). One agreement
    writes PlanAgreed and ReviewScheduled; refused writes append nothing."""
    before = sample_values(await exposition(client), "casetrail_events_appended_total")
    case_id = await cm.open_case()
    await cm.goal(case_id)
    await cm.call("POST", f"/v1/cases/{case_id}/agreements",
                  {"participation": "in_person", "present": ["Jo"],
                   "participant_statement": "This is my plan"}, expect=201)
    stale = await cm.client.post(f"/v1/cases/{case_id}/notes", json={"text": "late"},
                                 headers={**bearer(cm.token), "If-Match": '"1"'})
    assert stale.status in {409, 412}, await stale.text()
    invalid = await cm.client.post(f"/v1/cases/{case_id}/notes", json={"text": ""},
                                   headers=bearer(cm.token))
    assert invalid.status in {400, 422}
    text = await exposition(client)
    after = sample_values(text, "casetrail_events_appended_total")
    moved = {dict(k)["type"]: after[k] - before.get(k, 0.0) for k in after
             if after[k] != before.get(k, 0.0)}
    history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert history["next_after_version"] is None
    written: dict[str, int] = {}
    for event in history["events"]:
        written[event["type"]] = written.get(event["type"], 0) + 1
    assert moved == written, (moved, written)
    assert moved.get("PlanAgreed") == 1
    assert moved.get("ReviewScheduled") == 1


async def test_append_conflicts_count_the_races_lost_between_two_instances(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """`casetrail_append_conflicts_total` (appends that lost a race and were retried): two
    records instances behind a load balancer write to one case in turn, so each write of one
    finds the other's event in its way once, retries, and succeeds; a write nobody raced
    counts nothing."""
    first = await make_records_client(fresh_database_url)
    second = await make_records_client(fresh_database_url)
    one, other = CaseApi(first, token()), CaseApi(second, token())
    case_id = await one.open_case()
    await one.call("POST", f"/v1/cases/{case_id}/notes", {"text": "alone"}, expect=201)
    assert one_value(await exposition(first), "casetrail_append_conflicts_total") == 0
    for n in range(3):
        await other.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"b{n}"}, expect=201)
        await one.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"a{n}"}, expect=201)
    text = await exposition(first)
    assert one_value(text, "casetrail_append_conflicts_total") == 3
    assert one_value(text, "casetrail_events_appended_total", type="NoteAdded") == 4


# --- notifier metrics ----------------------------------------------------------------------


async def test_sent_failed_and_dead_each_count_their_own_smtp_outcome(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Three small wins, answered 250, 451 and 550: one sent, one failed (to be retried),
    one dead; a permanent refusal is not also counted as an attempt "to be retried"."""
    await rig.set_prefs("cm-1", token())
    for n in range(3):
        case = await records.open_case()
        goal = await records.goal(case)
        await records.complete(case, await records.step(case, goal, f"Step number {n}"))
    await rig.catch_up()
    smtp.replies = ["250 OK", "451 4.3.0 busy, try later", "550 5.1.1 no such mailbox"]
    await rig.dispatch()
    statuses = sorted(str(r["status"]) for r in await rig.rows(kind="small_win"))
    assert statuses == ["dead", "failed", "sent"]
    text = await exposition(rig.client)
    outcome = {name: one_value(text, f"casetrail_notifications_{name}_total", kind="small_win")
               for name in ("sent", "failed", "dead")}
    assert outcome == {"sent": 1.0, "failed": 1.0, "dead": 1.0}


async def test_feed_lag_shows_a_backlog_and_returns_to_zero_after_catching_up(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    """`casetrail_notifier_feed_lag_seconds` (0 when caught up): a notifier an hour behind,
    reading the first of several pages, is not caught up; `feed_events_total` counts each
    event handled once."""
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, clock,
                         NOTIFIER_FEED_PAGE_SIZE=2)
    await rig.catch_up()
    assert one_value(await exposition(rig.client), "casetrail_notifier_feed_lag_seconds") == 0
    for _ in range(3):
        await records.open_case()  # a CaseOpened each: three events, two pages
    clock.advance(hours=1)
    await rig.feed_shows_every_event()
    assert await rig.notifier.subscriber.step(0) == 2
    text = await exposition(rig.client)
    assert one_value(text, "casetrail_notifier_feed_lag_seconds") >= 3600
    await rig.catch_up()
    text = await exposition(rig.client)
    assert one_value(text, "casetrail_notifier_feed_lag_seconds") == 0
    assert one_value(text, "casetrail_notifier_feed_events_total") == 3


# --- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["records", "notifier"])
async def test_a_problem_carries_the_request_id_its_header_carries(
        records: Records, rig: NotifierRig, token: TokenFactory, service: str) -> None:
    client = records.client if service == "records" else rig.client
    path = (f"/v1/cases/{uuid.uuid4()}" if service == "records"
            else f"/v1/notifications/{uuid.uuid4()}")
    supervisor = token(role="supervisor", sub="sup-1")
    made = await client.get(path, headers=bearer(supervisor))
    assert made.status == 404
    assert made.content_type == "application/problem+json"
    assert HEX_ID.fullmatch(made.headers["X-Request-Id"])
    assert (await made.json())["request_id"] == made.headers["X-Request-Id"]
    given = await client.get(path, headers={**bearer(supervisor), "X-Request-Id": "lb-7f3a.9"})
    assert given.headers["X-Request-Id"] == "lb-7f3a.9"
    assert (await given.json())["request_id"] == "lb-7f3a.9"


async def test_a_streamed_export_carries_its_request_id_too(
        client: TestClient, cm: CaseApi, token: TokenFactory) -> None:
    """0013: the access log's line carries "the request id the answer carried in
    `X-Request-Id`". The export is the one answer a support call is most likely about (a
    court's download), and it is streamed: the header must be on it as on every answer."""
    case_id = await cm.open_case()
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    given = await client.get(f"/v1/cases/{case_id}/export",
                             headers={**supervisor, "X-Request-Id": "court-download-1"})
    assert given.status == 200
    await given.read()
    made = await client.get(f"/v1/cases/{case_id}/export", headers=supervisor)
    assert made.status == 200
    await made.read()
    assert given.headers.get("X-Request-Id") == "court-download-1", dict(given.headers)
    assert HEX_ID.fullmatch(made.headers.get("X-Request-Id", "")), dict(made.headers)


def test_every_records_log_line_is_json_and_ids_match_headers_and_problems(
        fresh_database_url: str) -> None:
    """README: JSON logs, one object per line, each request with its `request_id`. An id the
    client sends is kept only when it is a plain short token: a 10 KB one, or one with spaces
    and quotes, is replaced, never written to the log or echoed in the header."""
    port = free_port()
    process = subprocess.Popen([*CASETRAIL, "records", "--port", str(port)],
                               env=_service_env(fresh_database_url), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    huge = "a" * 10_000
    hostile = 'x" , "status": 200, "forged": "1'
    token = issue_token(JWT_SECRET, sub="sup-1", role="supervisor", agency="agency-a")
    answers: list[tuple[int, dict[str, str], bytes]] = []
    try:
        assert _ready(port, time.monotonic() + 60, "/readyz")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {token}"}
        answers.append(_request(f"{base}/healthz", {"X-Request-Id": "probe-1"}))
        answers.append(_request(f"{base}/v1/cases/{uuid.uuid4()}", auth))
        answers.append(_request(f"{base}/v1/cases/{uuid.uuid4()}",
                                {**auth, "X-Request-Id": huge}))
        answers.append(_request(f"{base}/v1/cases/{uuid.uuid4()}",
                                {**auth, "X-Request-Id": hostile}))
        answers.append(_request(f"{base}/nowhere", {"X-Request-Id": "probe-2"}))
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    lines = [json.loads(line) for line in output.splitlines()]  # every line one JSON object
    logged = [line for line in lines if line.get("event") == "request"
              and line.get("path") != "/readyz"]
    assert len(logged) == len(answers), logged
    for (status, headers, body), line in zip(answers, logged, strict=True):
        request_id = headers["X-Request-Id"]
        assert line["request_id"] == request_id
        assert line["status"] == status
        if status >= 400:
            assert json.loads(body)["request_id"] == request_id
    assert answers[0][1]["X-Request-Id"] == "probe-1"
    for replaced in answers[1:4]:
        assert HEX_ID.fullmatch(replaced[1]["X-Request-Id"]), replaced[1]
    assert huge not in output
    assert "forged" not in output
    assert process.returncode == 0


# --- readiness -----------------------------------------------------------------------------


async def test_notifier_readyz_is_503_naming_the_database_while_it_is_away_then_200(
        rig: NotifierRig, fresh_database_url: str, postgres_server_url: str) -> None:
    """README: `/readyz` 200 when the database answers, "Otherwise 503, with the failing check
    named in `checks`"; `/healthz` stays 200 (a liveness probe must not restart a pod for an
    outage of the database)."""
    await rig.catch_up()  # the feed has been read: ready
    assert (await rig.client.get("/readyz")).status == 200
    name = urlsplit(fresh_database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = $1", name)
        ready = await rig.client.get("/readyz")
        body = await ready.json()
        assert ready.status == 503, body
        assert body["checks"]["database"].startswith("unreachable"), body
        assert "127.0.0.1" not in json.dumps(body)
        assert name not in json.dumps(body)
        alive = await rig.client.get("/healthz")
        assert alive.status == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    async with asyncio.timeout(20):
        while (again := await rig.client.get("/readyz")).status != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert (await again.json())["checks"]["database"] == "ok"


# --- configuration -------------------------------------------------------------------------


BAD_SETTINGS = {  # id: (command, variable, value)
    "records pool 0": ("records", "CASETRAIL_DB_POOL_MAX", "0"),
    "records pool negative": ("records", "CASETRAIL_DB_POOL_MAX", "-3"),
    "records port 70000": ("records", "RECORDS_PORT", "70000"),
    "records port negative": ("records", "RECORDS_PORT", "-1"),
    "records log level": ("records", "CASETRAIL_LOG_LEVEL", "verbose"),
    "records max body negative": ("records", "CASETRAIL_MAX_BODY_BYTES", "-1"),
    "records feed wait negative": ("records", "CASETRAIL_FEED_MAX_WAIT", "-5"),
    "notifier pool 0": ("notifier", "NOTIFIER_DB_POOL_MAX", "0"),
    "notifier port 70000": ("notifier", "NOTIFIER_PORT", "70000"),
    "notifier digest time": ("notifier", "NOTIFIER_DIGEST_TIME", "25:00"),
    "notifier time zone": ("notifier", "NOTIFIER_TIMEZONE", "Mars/Olympus_Mons"),
    "notifier smtp port 70000": ("notifier", "SMTP_PORT", "70000"),
    "notifier log level": ("notifier", "CASETRAIL_LOG_LEVEL", "loud"),
}


@pytest.mark.parametrize(("command", "variable", "value"), BAD_SETTINGS.values(),
                         ids=BAD_SETTINGS.keys())
def test_a_bad_setting_stops_the_start_naming_the_variable(
        fresh_database_url: str, command: str, variable: str, value: str) -> None:
    """README, Configuration: a value the service cannot run with "stops the start with
    exit 2" and says which variable (as a blank audience or a leeway of 301 does). A port
    past 65535 must not quietly become another port; a pool of 0 connections must not end
    in a traceback from asyncpg; a negative body limit must not start a service that refuses
    every write with 413 ("Maximum request body size -1 exceeded"), nor an SMTP port past
    65535 a notifier whose every delivery fails ("OverflowError: connect(): port must be
    0-65535") until it is dead-lettered."""
    env = _service_env(fresh_database_url, **{variable: value})
    process = subprocess.Popen([*CASETRAIL, command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=25)
    except subprocess.TimeoutExpired:
        instead = ""
        if variable in {"RECORDS_PORT", "NOTIFIER_PORT"}:  # it listens on the number mod 65536
            wrapped = int(value) % 65536
            status, _, _ = _request(f"http://127.0.0.1:{wrapped}/healthz")
            instead = f" (/healthz on port {wrapped} answered {status})"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        pytest.fail(f"{variable}={value}: the {command} service started and kept running"
                    f" instead of refusing the setting{instead}", pytrace=False)
    last = (err.strip().splitlines() or [""])[-1]
    assert "Traceback" not in err + out, f"{variable}={value} ended in a traceback: {last}"
    assert process.returncode == 2, (process.returncode, err[-600:])
    [message] = [line for line in err.splitlines() if line.strip()]
    assert message.startswith("casetrail: configuration: "), message
    assert variable in message, message


# --- graceful shutdown ---------------------------------------------------------------------


async def test_sigterm_answers_a_long_poll_and_stops_records_cleanly(
        fresh_database_url: str) -> None:
    """0013 (Draining): the server gives requests in flight 35 s; 0003: on shutdown a feed
    long-poll answers at once. SIGTERM during a 30 s long-poll: the poll is answered 200,
    the process exits 0 well inside the grace, with nothing logged at error level."""
    port = free_port()
    env = _service_env(fresh_database_url)
    service = await asyncio.create_subprocess_exec(
        *CASETRAIL, "records", "--port", str(port), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    feed_token = issue_token(JWT_SECRET, sub="notifier", role="service", agency="casetrail")
    try:
        assert await asyncio.to_thread(_ready, port, time.monotonic() + 60, "/readyz")
        poll = asyncio.create_task(asyncio.to_thread(
            _request, f"http://127.0.0.1:{port}/v1/events?wait=30",
            {"Authorization": f"Bearer {feed_token}"}))
        await asyncio.sleep(1)  # the long-poll is waiting
        assert not poll.done()
        service.send_signal(signal.SIGTERM)
        began = time.monotonic()
        async with asyncio.timeout(30):
            assert service.stdout is not None
            output = (await service.stdout.read()).decode()
            code = await service.wait()
        stopped_in = time.monotonic() - began
        status, _, body = await asyncio.wait_for(poll, timeout=10)
    finally:
        if service.returncode is None:
            service.kill()
            await service.wait()
    assert status == 200, body
    assert code == 0, output[-1500:]
    assert stopped_in < 20, stopped_in  # not the long-poll's 30 s
    lines = [json.loads(line) for line in output.splitlines()]
    assert not [line for line in lines if line.get("level") in {"error", "critical"}], lines


def test_sigterm_stops_the_notifier_cleanly(fresh_database_url: str) -> None:
    port = free_port()
    process = subprocess.Popen([*CASETRAIL, "notifier", "--port", str(port)],
                               env=_service_env(fresh_database_url), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert _ready(port, time.monotonic() + 60, "/healthz")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-1500:]
    lines = [json.loads(line) for line in output.splitlines()]
    assert not [line for line in lines if line.get("level") in {"error", "critical"}], lines
