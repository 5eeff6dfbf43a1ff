"""Audit (s21): the Prometheus metrics of both services tell the truth.

design.md, Operations: "Prometheus metrics (request latency, append rate, feed lag,
notifications sent/failed/dead)". README, Operations, lists each family and its labels:
`casetrail_http_request_seconds` (latency by method, route template and status),
`casetrail_events_appended_total` (by event type: the append rate),
`casetrail_append_batch_size`, and the notifier's `casetrail_notifications_{sent,failed,dead,
cancelled}_total` by kind. docs/notifier.md: "every outcome of a delivery attempt is counted
... (cancelled there: found not to be sent when due ...; notices a case event ended ... are
`cancelled` in `GET /v1/notifications` with the reason, not in the counter)"; `/metrics` "None
of the three asks for a token".

Each test drives the real flow (records over HTTP, the notifier against aiosmtpd, one
PostgreSQL) and reads `/metrics` before and after with prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer
from tests.records_api import CaseApi

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]
REQUESTS = "casetrail_http_request_seconds_count"
APPENDED = "casetrail_events_appended_total"
KINDS = (
    "review_reminder",
    "review_due_today",
    "review_overdue",
    "step_nudge",
    "goal_target_date",
    "small_win",
    "milestone",
    "case_transferred",
    "daily_digest",
)
OUTCOMES = ("sent", "failed", "dead", "cancelled")


# --- helpers -------------------------------------------------------------------------------


async def scrape(client: TestClient) -> Samples:
    """Every sample of the client's ``/metrics`` (asked without a token), by name and labels."""
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    found: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str) -> dict[Labels, float]:
    """How each series of ``name`` moved between two scrapes (series that did not move left
    out)."""
    old, new = before.get(name, {}), after.get(name, {})
    changes = {
        labels: new.get(labels, 0.0) - old.get(labels, 0.0) for labels in set(old) | set(new)
    }
    return {labels: change for labels, change in changes.items() if change}


def requests_moved(before: Samples, after: Samples) -> dict[tuple[str, str, str], float]:
    """The request counts that moved, by (method, route, status), the scrapes themselves
    left out."""
    found: dict[tuple[str, str, str], float] = {}
    for labels, change in moved(before, after, REQUESTS).items():
        named = dict(labels)
        if named["route"] != "/metrics":
            found[(named["method"], named["route"], named["status"])] = change
    return found


def appended_by_type(before: Samples, after: Samples) -> dict[str, float]:
    return {
        dict(labels)["type"]: change for labels, change in moved(before, after, APPENDED).items()
    }


def outcomes(samples: Samples) -> dict[tuple[str, str], float]:
    """The notifier's delivery counters that are not 0, by (outcome, kind)."""
    return {
        (outcome, kind): count
        for outcome in OUTCOMES
        for kind in KINDS
        if (count := value(samples, f"casetrail_notifications_{outcome}_total", kind=kind))
    }


async def history_types(api: CaseApi, case_id: str) -> Counter[str]:
    page = await api.call("GET", f"/v1/cases/{case_id}/history?limit=500", expect=200)
    assert page["next_after_version"] is None
    return Counter(event["type"] for event in page["events"])


AGREEMENT = {
    "participation": "in_person",
    "present": ["Jo"],
    "participant_statement": "This is my plan",
}


# --- /metrics itself -----------------------------------------------------------------------


@pytest.mark.parametrize("service", ["records", "notifier"])
async def test_metrics_answer_without_a_token_even_beside_a_bad_one(
    records: Records, rig: NotifierRig, service: str
) -> None:
    """README: "None of the three asks for a token". A scrape job configured with a bearer
    token for another purpose (or an expired one) must still be answered, in the Prometheus
    text format."""
    client = records.client if service == "records" else rig.client
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic eDp5"}):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 200, (headers, await response.text())
        assert response.content_type == "text/plain"
        assert response.charset == "utf-8"
        assert "version=" in response.headers["Content-Type"]
        families = {f.name for f in text_string_to_metric_families(await response.text())}
        assert "casetrail_http_request_seconds" in families


# --- records: the append rate --------------------------------------------------------------


async def test_every_write_counts_each_event_it_recorded_and_refusals_count_nothing(
    client: TestClient, cm: CaseApi, token: TokenFactory
) -> None:
    """`casetrail_events_appended_total` (by event type: the append rate). Writes that record
    two events count two (an agreement: PlanAgreed and ReviewScheduled; a review held: the
    next review too); a refused write (401, 403, 404, 412, 4xx body), an idempotent replay and
    a key reused with another body count none: the counter moves exactly as the history
    grew."""
    before = await scrape(client)
    case_id = await cm.open_case()
    await cm.strength(case_id)
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    agreed = await cm.call("POST", f"/v1/cases/{case_id}/agreements", AGREEMENT, expect=201)
    review = next(
        e["data"]["review_id"] for e in agreed["events"] if e["type"] == "ReviewScheduled"
    )
    await cm.call(
        "POST",
        f"/v1/cases/{case_id}/reviews/{review}/held",
        {"summary": "We looked at what is working"},
        expect=200,
    )
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
    keyed = {"Idempotency-Key": "metrics-note-1"}
    for _ in range(3):
        await cm.call(
            "POST", f"/v1/cases/{case_id}/notes", {"text": "We talked"}, headers=keyed, expect=201
        )
    reused = await client.post(
        f"/v1/cases/{case_id}/notes",
        json={"text": "Something else"},
        headers={**bearer(cm.token), **keyed},
    )
    assert reused.status >= 400, await reused.text()
    await cm.call(
        "POST",
        f"/v1/cases/{case_id}/transfer",
        {"case_manager": "cm-1", "reason": "caseload balancing"},
    )
    refusals = [
        client.post(f"/v1/cases/{case_id}/notes", json={"text": "no token"}),
        client.post(
            f"/v1/cases/{case_id}/notes",
            json={"text": "not theirs"},
            headers=bearer(token(role="analyst", sub="an-1")),
        ),
        client.post(
            f"/v1/cases/{uuid.uuid4()}/notes",
            json={"text": "no such case"},
            headers=bearer(cm.token),
        ),
        client.post(
            f"/v1/cases/{case_id}/notes",
            json={"text": "stale"},
            headers={**bearer(cm.token), "If-Match": '"1"'},
        ),
        client.post(f"/v1/cases/{case_id}/notes", json={"text": "   "}, headers=bearer(cm.token)),
        client.post(
            f"/v1/cases/{case_id}/notes",
            data=b"{not json",
            headers={**bearer(cm.token), "Content-Type": "application/json"},
        ),
        client.post(
            f"/v1/cases/{case_id}/steps/{uuid.uuid4()}/complete", json={}, headers=bearer(cm.token)
        ),
    ]
    for refusal in refusals:
        answer = await refusal
        assert 400 <= answer.status < 500, (answer.status, await answer.text())
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "plan completed"}, expect=200)
    after = await scrape(client)
    written = await history_types(cm, case_id)
    assert appended_by_type(before, after) == dict(written), written
    assert written["NoteAdded"] == 1
    assert written["ReviewScheduled"] == 2


async def test_concurrent_retries_of_one_idempotent_write_count_one_append(
    client: TestClient, cm: CaseApi
) -> None:
    """Design: "Idempotency-Key on any write; a retry returns the original result and writes
    nothing". Eight retries racing the original: one NoteAdded written, one counted."""
    case_id = await cm.open_case()
    before = await scrape(client)
    headers = {**bearer(cm.token), "Idempotency-Key": "metrics-race-1"}

    async def post() -> int:
        answer = await client.post(
            f"/v1/cases/{case_id}/notes", json={"text": "A good week"}, headers=headers
        )
        await answer.read()
        return answer.status

    statuses = await asyncio.gather(*(post() for _ in range(8)))
    assert set(statuses) == {201}, statuses
    after = await scrape(client)
    assert (await history_types(cm, case_id))["NoteAdded"] == 1
    assert appended_by_type(before, after) == {"NoteAdded": 1.0}


def batch_moved(before: Samples, after: Samples) -> tuple[float, float]:
    """How far `casetrail_append_batch_size` moved: (appends sent, statements)."""
    return (
        value(after, "casetrail_append_batch_size_sum")
        - value(before, "casetrail_append_batch_size_sum"),
        value(after, "casetrail_append_batch_size_count")
        - value(before, "casetrail_append_batch_size_count"),
    )


async def test_append_batch_size_counts_each_append_sent_once(
    client: TestClient, cm: CaseApi
) -> None:
    """`casetrail_append_batch_size` (appends sent together in one statement): its sum is the
    number of appends sent, its count the statements; refusals send none."""
    before = await scrape(client)
    cases = [await cm.open_case() for _ in range(3)]
    for case_id in cases:
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "alone"}, expect=201)
    await asyncio.gather(
        *(
            cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"together {n}"}, expect=201)
            for case_id in cases
            for n in range(2)
        )
    )
    await cm.call("POST", f"/v1/cases/{cases[0]}/notes", {"text": ""}, expect=422)
    after = await scrape(client)
    appends = 3 + 3 + 6
    sent, statements = batch_moved(before, after)
    assert sent == appends
    assert 1 <= statements <= appends
    assert sum(appended_by_type(before, after).values()) == appends


async def test_append_batch_size_counts_appends_carrying_an_idempotency_key(
    client: TestClient, cm: CaseApi
) -> None:
    """README: `casetrail_append_batch_size` (appends sent together in one statement). The
    design asks clients for an Idempotency-Key on any write: a keyed append is still an
    append sent in a statement (a batch of one), and a records service whose clients all
    send keys must not show an empty histogram while it appends. Its replay sends nothing."""
    case_id = await cm.open_case()
    before = await scrape(client)
    for n in range(4):
        for _ in range(2):  # the second a replay: nothing sent
            await cm.call(
                "POST",
                f"/v1/cases/{case_id}/notes",
                {"text": f"kept {n}"},
                expect=201,
                headers={"Idempotency-Key": f"metrics-batch-{n}"},
            )
    after = await scrape(client)
    assert appended_by_type(before, after) == {"NoteAdded": 4.0}
    assert batch_moved(before, after) == (4.0, 4.0)


# --- request latency -----------------------------------------------------------------------


async def test_request_latency_counts_each_request_once_by_method_template_and_status(
    client: TestClient, cm: CaseApi
) -> None:
    """README: `casetrail_http_request_seconds` (latency by method, route template and
    status). Every request answered moves exactly one series by one, named by its template
    (never the raw path with its ids); the +Inf bucket equals the count."""
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    before = await scrape(client)
    auth = bearer(cm.token)
    case = "/v1/cases/{case_id}"
    made: list[tuple[str, str, Any]] = [
        ("GET", case, client.get(f"/v1/cases/{case_id}", headers=auth)),
        ("HEAD", case, client.head(f"/v1/cases/{case_id}", headers=auth)),
        ("GET", f"{case}/history", client.get(f"/v1/cases/{case_id}/history", headers=auth)),
        ("GET", case, client.get(f"/v1/cases/{uuid.uuid4()}", headers=auth)),
        ("GET", case, client.get(f"/v1/cases/{case_id}")),
        (
            "POST",
            f"{case}/notes",
            client.post(f"/v1/cases/{case_id}/notes", json={"text": "one"}, headers=auth),
        ),
        (
            "POST",
            f"{case}/notes",
            client.post(f"/v1/cases/{case_id}/notes", json={"text": ""}, headers=auth),
        ),
        (
            "POST",
            f"{case}/goals/{{goal_id}}/steps",
            client.post(
                f"/v1/cases/{case_id}/goals/{goal}/steps",
                json={"description": "Call the landlord", "owner": "participant"},
                headers=auth,
            ),
        ),
        ("GET", "/v1/cases", client.get("/v1/cases?limit=5", headers=auth)),
        ("GET", "/healthz", client.get("/healthz")),
        ("PUT", "unmatched", client.put(f"/v1/cases/{case_id}", json={}, headers=auth)),
        ("GET", "unmatched", client.get(f"/v1/cases/{case_id}/nothing-here", headers=auth)),
    ]
    expected: Counter[tuple[str, str, str]] = Counter()
    for method, route, request in made:
        answer = await request
        await answer.read()
        expected[(method, route, str(answer.status))] += 1
    after = await scrape(client)
    assert requests_moved(before, after) == dict(expected)
    for labels, count in after[REQUESTS].items():
        infinite = after["casetrail_http_request_seconds_bucket"][
            tuple(sorted((*labels, ("le", "+Inf"))))
        ]
        assert infinite == count, labels
        assert after["casetrail_http_request_seconds_sum"][labels] >= 0


@pytest.mark.parametrize("service", ["records", "notifier"])
async def test_a_refused_expectation_is_still_a_request_counted(
    records: Records, rig: NotifierRig, token: TokenFactory, service: str
) -> None:
    """Each request answered is counted once (README: latency by method, route template and
    status). A write sent with an `Expect` other than 100-continue is answered 417 with a
    problem (0013, expect_continue): an answer the client got, which the request histogram
    must show as any other 4xx does."""
    client = records.client if service == "records" else rig.client
    path, route, body = (
        (
            "/v1/cases",
            "/v1/cases",
            {"participant": {"name": "A B"}, "case_manager": "cm-1", "risk_level": "low"},
        )
        if service == "records"
        else ("/v1/preferences/cm-1", "/v1/preferences/{user}", {"email": "cm-1@example.org"})
    )
    before = await scrape(client)
    answer = await client.request(
        "POST" if service == "records" else "PUT",
        path,
        json=body,
        headers={**bearer(token()), "Expect": "a-miracle"},
    )
    await answer.read()
    assert answer.status == 417
    after = await scrape(client)
    method = "POST" if service == "records" else "PUT"
    assert requests_moved(before, after) == {(method, route, "417"): 1.0}


@pytest.mark.parametrize("service", ["records", "notifier"])
async def test_fifty_unknown_paths_and_methods_keep_the_label_sets_bounded(
    records: Records, rig: NotifierRig, token: TokenFactory, service: str
) -> None:
    """A scanner's 50 distinct random paths, with the usual methods, under the API's own
    prefixes and elsewhere: the route label is a template or `unmatched`, never the path, so
    the series stay a handful."""
    client = records.client if service == "records" else rig.client
    prefixes = (
        ["/v1/cases/{id}/{junk}", "/v1/{junk}", "/{junk}/{id}", "/v1/events/{junk}"]
        if service == "records"
        else [
            "/v1/preferences/{junk}/{id}",
            "/v1/notifications/{id}/{junk}",
            "/v1/unsubscribe/{junk}/{id}",
            "/{junk}/{id}",
        ]
    )
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    before = await scrape(client)
    junk: list[str] = []
    for n in range(50):
        word = f"zz{uuid.UUID(int=n + 4242).hex[:12]}"
        junk.append(word)
        path = prefixes[n % len(prefixes)].format(junk=word, id=uuid.UUID(int=n + 77))
        answer = await client.request(methods[n % len(methods)], path, headers=bearer(token()))
        await answer.read()
        assert answer.status in {404, 405}, (path, answer.status)
    after = await scrape(client)
    grown = requests_moved(before, after)
    assert sum(grown.values()) == 50
    assert len(grown) <= 2 * len(methods), sorted(grown)
    assert {route for _, route, _ in grown} == {"unmatched"}, sorted(grown)
    everything = " ".join(v for labels in after[REQUESTS] for _, v in labels)
    assert not [word for word in junk if word in everything]


async def test_no_case_user_or_notification_id_appears_in_any_label(
    records: Records, rig: NotifierRig, smtp: SmtpServer, token: TokenFactory
) -> None:
    """Route labels are templates: a case id, a user id, a participant's address or a
    notification id in a path or query must never become a label value on either service
    (they are personal data and unbounded)."""
    user = "cm-label-probe-7731"
    staff = Records(records.client, token(sub=user))
    await rig.set_prefs(user, token(sub=user))
    person = {"name": "Robin Label", "email": "robin.label.probe@example.org"}
    case_id = await staff.open_case(user, participant=person)
    goal = await staff.goal(case_id)
    await staff.complete(case_id, await staff.step(case_id, goal, "Fix the bike"))
    await rig.catch_up()
    await rig.dispatch()
    [row] = await rig.rows(kind="small_win")
    auth = bearer(staff.token)
    supervisor = bearer(token(role="supervisor", sub="sup-label-probe"))
    for path in (
        f"/v1/cases/{case_id}",
        f"/v1/cases/{case_id}/history",
        f"/v1/cases/{case_id}/verify",
        f"/v1/cases?case_manager={user}",
        f"/v1/access-log?case_id={case_id}",
    ):
        await (await records.client.get(path, headers=supervisor)).read()
    for path in (
        f"/v1/preferences/{user}",
        f"/v1/notifications/{row['id']}",
        f"/v1/notifications?recipient={user}",
        f"/v1/schedule?case_id={case_id}",
        f"/v1/access-log?case_id={case_id}",
    ):
        await (await rig.client.get(path, headers=auth)).read()
        await (await rig.client.get(path, headers=supervisor)).read()
    secrets = [
        case_id,
        str(goal),
        str(row["id"]),
        user,
        "sup-label-probe",
        "robin.label.probe",
        "Robin",
    ]
    for client in (records.client, rig.client):
        samples = await scrape(client)
        values = {v for series in samples.values() for labels in series for _, v in labels}
        leaked = [(s, v) for s in secrets for v in values if s.lower() in v.lower()]
        assert not leaked, leaked
        routes = {dict(labels)["route"] for labels in samples[REQUESTS]}
        assert all(r == "unmatched" or r.startswith("/") for r in routes), routes


# --- notifier: notifications sent, failed, dead, cancelled ---------------------------------


async def small_win(records: Records, description: str, case_manager: str = "cm-1") -> str:
    case = await records.open_case(case_manager)
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, description))
    return case


async def test_a_temporary_refusal_then_success_counts_one_failed_and_one_sent(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """docs/notifier.md: "every outcome of a delivery attempt is counted"; a 451 is a failed
    attempt (to be retried), its retry accepted is the one message sent: failed 1, sent 1,
    and the mail server holds exactly the one message."""
    await rig.set_prefs("cm-1", token())
    await small_win(records, "Visit the job centre")
    await rig.catch_up()
    smtp.replies = ["451 4.3.0 busy, try later"]
    await rig.dispatch()
    assert outcomes(await scrape(rig.client)) == {("failed", "small_win"): 1.0}
    clock.advance(minutes=5)
    assert await rig.dispatch() == 1
    samples = await scrape(rig.client)
    assert outcomes(samples) == {("failed", "small_win"): 1.0, ("sent", "small_win"): 1.0}
    assert len(smtp.received) == 1
    assert len(smtp.refused) == 1


async def test_the_supervisors_notice_counts_only_the_mails_its_members_got(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """docs/notifier.md: the supervisors' copy of an overdue notice is `handed_on`, "mailed to
    no one itself"; `casetrail_notifications_sent_total` counts "messages accepted by SMTP"
    (its HELP). So sent by kind equals the mails accepted of that kind, the group row adding
    nothing; the reminder found too late when due is counted cancelled."""
    await rig.set_prefs("cm-1", token())
    boss = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("sup-1", boss)
    await rig.set_prefs("sup-2", boss, role="supervisor")
    case = await records.open_case()
    await records.agree(case)
    await rig.catch_up()
    clock.advance(days=62)  # two days past the review's due date: the overdue moment
    await rig.dispatch()
    await rig.dispatch()
    await rig.dispatch()
    overdue = sorted(m["To"] for m in smtp.received if "not yet recorded" in str(m["Subject"]))
    assert overdue == ["cm-1@example.org", "sup-1@example.org", "sup-2@example.org"]
    [group] = await rig.rows(kind="review_overdue", recipient="supervisors")
    assert str(group["last_error"]).startswith("handed on to")
    mailed = Counter(
        str(r["kind"]) for r in await rig.rows(status="sent") if r["sent_at"] is not None
    )
    samples = await scrape(rig.client)
    sent = {kind: n for (outcome, kind), n in outcomes(samples).items() if outcome == "sent"}
    assert sent == dict(mailed), (sent, mailed)
    assert sent["review_overdue"] == 3
    assert sum(sent.values()) == len(smtp.received)
    assert (
        value(samples, "casetrail_notifications_cancelled_total", kind="review_reminder") == 1
    )  # five days late when due: found not to be sent


async def test_a_digest_is_one_message_counted_once_retry_and_all(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory, clock: FakeClock
) -> None:
    """A digest reader's two small wins go out as one message (docs/notifier.md). The counters
    count messages (`sent`: "messages accepted by SMTP"): a 451 for the digest, then its
    retry accepted, is one failed and one sent of kind `daily_digest`; the notices inside it
    are not counted again as sent small wins; the total sent equals the messages accepted."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    await small_win(records, "Call the landlord")
    await small_win(records, "Open a bank account")
    await rig.catch_up()
    await rig.dispatch()
    assert smtp.received == []
    assert outcomes(await scrape(rig.client)) == {}  # into the digest: no outcome yet
    [digest] = await rig.rows(kind="daily_digest")
    clock.now = digest["due_at"]  # type: ignore[assignment]
    smtp.replies = ["451 4.3.0 busy, try later"]
    await rig.notifier.dispatcher.send_digests()
    assert outcomes(await scrape(rig.client)) == {("failed", "daily_digest"): 1.0}
    clock.advance(minutes=5)
    await rig.notifier.dispatcher.send_digests()
    await rig.dispatch()
    assert len(smtp.received) == 1
    assert outcomes(await scrape(rig.client)) == {
        ("failed", "daily_digest"): 1.0,
        ("sent", "daily_digest"): 1.0,
    }


async def test_cancelled_counts_what_was_found_not_to_be_sent_when_due_only(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory
) -> None:
    """docs/notifier.md: `cancelled` in the counter is "found not to be sent when due, such as
    a celebration someone turned off; notices a case event ended ... are `cancelled` in `GET
    /v1/notifications` with the reason, not in the counter". A small win for a reader who
    turned celebrations off counts one; the reminders a closed case cancelled count none."""
    await rig.set_prefs("cm-1", token(), celebrations=False)
    await small_win(records, "Visit the job centre")
    closing = await records.open_case()
    await records.agree(closing)
    await rig.catch_up()
    await records.close(closing)
    await rig.catch_up()
    ended = [r for r in await rig.rows(case_id=uuid.UUID(closing)) if r["status"] == "cancelled"]
    assert ended, "closing the case cancelled its waiting notices"
    await rig.dispatch()
    assert smtp.received == []
    assert outcomes(await scrape(rig.client)) == {("cancelled", "small_win"): 1.0}


async def test_dead_letters_are_counted_as_they_are_listed(
    rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory
) -> None:
    """README: "Alert on dead letters". A 550 and a reader with no address on file are each
    one dead letter of its kind, counted once however often dispatch runs after."""
    await rig.set_prefs("cm-1", token())
    await small_win(records, "Visit the job centre")
    nobody = Records(records.client, token(sub="cm-nobody"))
    await small_win(nobody, "Open a bank account", "cm-nobody")
    await rig.catch_up()
    smtp.replies = ["550 5.1.1 no such mailbox"]
    await rig.dispatch()
    for _ in range(2):
        await rig.dispatch()
    dead = Counter(str(r["kind"]) for r in await rig.rows(status="dead"))
    samples = await scrape(rig.client)
    counted = {kind: n for (outcome, kind), n in outcomes(samples).items() if outcome == "dead"}
    assert counted == dict(dead) == {"small_win": 2}, (counted, dead)
    assert value(samples, "casetrail_notifications_sent_total", kind="small_win") == 0


# --- notifier: the feed --------------------------------------------------------------------


async def test_feed_counters_match_the_events_read_and_lag_is_zero_once_caught_up(
    rig: NotifierRig, records: Records, clock: FakeClock
) -> None:
    """`casetrail_notifier_feed_events_total` counts the feed's events once each, however
    many times the notifier asks again; `casetrail_notifier_feed_lag_seconds` is 0 when
    caught up, also after reading events an hour old; nothing is counted skipped or as a page
    error in a healthy run."""
    case = await records.open_case()
    await records.agree(case)
    clock.advance(hours=1)
    await rig.catch_up()
    await rig.catch_up()
    events = await rig.notifier.pool.fetchval("SELECT count(*) FROM records.events")
    samples = await scrape(rig.client)
    assert value(samples, "casetrail_notifier_feed_events_total") == events
    assert value(samples, "casetrail_notifier_feed_lag_seconds") == 0
    assert value(samples, "casetrail_notifier_feed_errors_total") == 0
    assert sum(samples["casetrail_notifier_feed_events_skipped_total"].values()) == 0
