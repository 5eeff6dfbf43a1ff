"""Adversarial audit of the notifier routes added with decision 0203's last changes:
``DELETE /v1/preferences/{user}``, ``GET``/``POST /v1/unsubscribe/{token}`` and the 409
``case-on-another-entry`` of ``PUT /v1/preferences/{user}``.

Each test asserts the behaviour the design asks for (docs/notifier.md, docs/decisions/0203,
the product brief: every bad input a 4xx problem with a detail that writes nothing, never a
500; tenancy; no participant told another's id). Real PostgreSQL, HTTP and SMTP; where two
requests must meet at one moment, a lock the test holds in PostgreSQL orders them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import ClientResponse

from services.notifier.http.app import create_app
from services.notifier.links import Entry, UnsubscribeLinks, read_secret
from tests.conftest import TokenFactory, bearer, serve, wait_until
from tests.notifier_helpers import (
    PUBLIC_URL,
    NotifierRig,
    Records,
    notifier_settings,
)

ONE_CLICK = "List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
AS_A_BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
GOOD = {"email": "someone@example.org", "delivery": "immediate", "timezone": "UTC",
        "celebrations": True}
# requests of this database's sessions waiting for a lock (other test runs share the server)
WAITING = ("SELECT count(*) >= $1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
           " WHERE NOT l.granted AND a.datname = current_database()")


def link(secret_file: Path, user: str = "jo", agency: str = "agency-a") -> str:
    """The path of the unsubscribe link this notifier signs for a participant's entry."""
    links = UnsubscribeLinks(PUBLIC_URL, read_secret(secret_file))
    return "/v1/unsubscribe/" + links.token(Entry(agency, user))


async def state(rig: NotifierRig) -> tuple[list[tuple[Any, ...]], ...]:
    """Everything a refused request must leave as it was."""
    pool = rig.notifier.pool
    tables = ("notifier.directory ORDER BY agency, kind, user_id",
              "notifier.notifications ORDER BY id", "notifier.attempts ORDER BY 1",
              "notifier.access_log ORDER BY id")
    return tuple([[tuple(r) for r in await pool.fetch(f"SELECT * FROM {table}")]
                  for table in tables])


async def seeded(rig: NotifierRig, records: Records, token: TokenFactory) -> str:
    """Two case managers and a participant in the directory, and notices waiting: a case whose
    step was completed. Returns the case (Jo's)."""
    case = await records.open_case()
    await rig.set_prefs("cm-1", token(), quiet_hours={"start": "08:00", "end": "12:00"})
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    await rig.set_prefs("jo", jo(token, case))
    await records.complete(case, await records.step(case, await records.goal(case), "Call"))
    await rig.catch_up()
    await rig.dispatch()  # cm-1's small win waits out their quiet hours
    assert await rig.rows(recipient="cm-1")
    return case


def jo(token: TokenFactory, case: str, agency: str = "agency-a") -> str:
    return token(role="participant", sub="jo", cases=[case], agency=agency)


def sup(token: TokenFactory, agency: str = "agency-a") -> str:
    return token(role="supervisor", sub="sup-1", agency=agency)


def supervisor(token: TokenFactory, agency: str = "agency-a") -> dict[str, str]:
    return bearer(sup(token, agency))


async def assert_problem(response: ClientResponse, status: int) -> dict[str, Any]:
    """A problem+json answer of ``status`` that says what was wrong."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/problem+json", text
    problem: dict[str, Any] = json.loads(text)
    assert problem["status"] == status, problem
    assert problem.get("detail"), f"a problem without a detail: {problem}"
    return problem


async def celebrations_of(rig: NotifierRig, user: str, kind: str = "participant") -> bool:
    return bool(await rig.notifier.pool.fetchval(
        "SELECT celebrations FROM notifier.directory WHERE agency = 'agency-a' AND user_id = $1"
        " AND kind = $2", user, kind))


# DELETE /v1/preferences/{user}: refusals


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


DELETE_REFUSALS: dict[str, tuple[str, str, dict[str, Any], int]] = {
    # name: (path and query, caller, request options, status)
    "role given twice": ("cm-2?role=case_manager&role=case_manager", "sup", {}, 400),
    "role given twice, once empty": ("cm-2?role=&role=case_manager", "sup", {}, 400),
    "empty role": ("cm-2?role=", "sup", {}, 422),
    "a role the notifier keeps no entry for": ("cm-2?role=auditor", "sup", {}, 422),
    "NUL in the role": ("cm-2?role=%00", "sup", {}, 400),
    "role not UTF-8": ("cm-2?role=%FF%FE", "sup", {}, 422),
    "role in capitals": ("cm-2?ROLE=case_manager", "sup", {}, 422),
    "a huge role": ("cm-2?role=" + "x" * 7000, "sup", {}, 422),
    "600 unknown parameters": ("cm-2?" + "&".join(f"p{i}=1" for i in range(600)), "sup", {},
                               422),
    "a user id not UTF-8": ("x%FFy", "sup", {}, 400),
    "an encoded lone surrogate": ("x%ED%A0%80y", "sup", {}, 400),
    "NUL in the user id": ("cm-2%00", "sup", {}, 400),
    "a user id with a space before it": ("%20cm-2", "sup", {}, 400),
    "a user id of 201 characters": ("u" * 201, "sup", {}, 400),
    "a right-to-left override in the user id": ("cm%E2%80%AE-2", "sup", {}, 400),
    "a JSON body": ("cm-2", "sup", {"json": {"role": "case_manager"}}, 400),
    "a form body": ("cm-2", "sup", {"data": "role=case_manager", "headers": FORM}, 400),
    "a text body": ("cm-2", "sup", {"data": "please", "headers": {"Content-Type": "text/plain"}},
                    400),
    "a chunked body": ("cm-2", "sup", {"chunks": [b'{"role":', b' "case_manager"}']}, 400),
    "a body gzip cannot decode": ("cm-2", "sup", {"data": b"not gzip", "headers": {
        "Content-Type": "application/json", "Content-Encoding": "gzip"}}, 400),
    "a body over the size limit": ("cm-2", "sup", {"data": b"x" * (65 * 1024), "headers": {
        "Content-Type": "application/octet-stream"}}, 413),
    "a colleague's entry": ("cm-2", "cm-1", {}, 403),
    "another participant's entry": ("cm-2", "jo", {}, 403),
    "a case manager naming the participant entry of their own id":
        ("cm-1?role=participant", "cm-1", {}, 422),
    "a participant naming the staff entry of their own id": ("jo?role=case_manager", "jo", {},
                                                             422),
    "an analyst": ("cm-2", "analyst", {}, 403),
    "a token with a window": ("cm-2", "window", {}, 403),
    "another agency's supervisor": ("cm-2", "sup-b", {}, 404),
    "no such entry": ("nobody", "sup", {}, 404),
    "no participant entry under a staff id": ("cm-2?role=participant", "sup", {}, 404),
}


@pytest.mark.parametrize(("path", "caller", "options", "status"), DELETE_REFUSALS.values(),
                         ids=DELETE_REFUSALS.keys())
async def test_a_refused_delete_is_a_problem_with_a_detail_and_writes_nothing(
        rig: NotifierRig, records: Records, token: TokenFactory, path: str, caller: str,
        options: dict[str, Any], status: int) -> None:
    case = await seeded(rig, records, token)
    callers = {"sup": supervisor(token), "cm-1": bearer(token()), "jo": bearer(jo(token, case)),
               "analyst": bearer(token(role="analyst", sub="an-1")),
               "window": bearer(token(role="supervisor", sub="sup-1",
                                      window_from=datetime(2026, 1, 1, tzinfo=UTC))),
               "sup-b": supervisor(token, "agency-b")}
    before = await state(rig)
    sent = dict(options)
    headers = {**callers[caller], **sent.pop("headers", {})}
    if "chunks" in sent:
        sent["data"] = _chunks(*sent.pop("chunks"))
    response = await rig.client.delete(f"/v1/preferences/{path}", headers=headers, **sent)
    await assert_problem(response, status)
    assert await state(rig) == before


@pytest.mark.parametrize("method", ["PATCH", "POST", "OPTIONS", "PURGE"])
async def test_another_method_on_a_preferences_path_is_a_problem_with_a_detail(
        rig: NotifierRig, records: Records, token: TokenFactory, method: str) -> None:
    await seeded(rig, records, token)
    before = await state(rig)
    response = await rig.client.request(method, "/v1/preferences/cm-2",
                                        headers=supervisor(token), json=GOOD)
    problem = await assert_problem(response, 405)
    assert "DELETE" in response.headers["Allow"], problem
    assert await state(rig) == before


async def test_head_of_a_preferences_path_is_refused_without_a_write(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    await seeded(rig, records, token)
    before = await state(rig)
    response = await rig.client.head("/v1/preferences/cm-2", headers=supervisor(token))
    assert response.status == 405
    assert await state(rig) == before  # in particular no access-log entry for a HEAD


# DELETE: what it takes out, and only that


async def test_a_participant_sharing_a_staff_id_removes_only_their_own_entry(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    case = await records.open_case()
    await rig.set_prefs("cm-1", token())
    theirs = token(role="participant", sub="cm-1", cases=[case])
    await rig.set_prefs("cm-1", theirs)
    response = await rig.client.delete("/v1/preferences/cm-1", headers=bearer(theirs))
    assert response.status == 204
    kinds = await rig.notifier.pool.fetch("SELECT kind, role FROM notifier.directory")
    assert [tuple(r) for r in kinds] == [("staff", "case_manager")]


async def test_a_delete_touches_only_the_callers_agency(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    await rig.set_prefs("cm-2", token(sub="cm-2", agency="agency-b"))
    response = await rig.client.delete("/v1/preferences/cm-2",
                                       headers=supervisor(token, "agency-b"))
    assert response.status == 204
    left = await rig.notifier.pool.fetch("SELECT agency, user_id FROM notifier.directory")
    assert [tuple(r) for r in left] == [("agency-a", "cm-2")]


@pytest.mark.parametrize("user", ["María López", "a/b", "100%", "x y"])
async def test_a_percent_encoded_user_is_removed_as_named(
        rig: NotifierRig, token: TokenFactory, user: str) -> None:
    path = f"/v1/preferences/{quote(user, safe='')}"
    await rig.set_prefs("a", token(sub="a"))
    response = await rig.client.put(path, json={**GOOD, "role": "case_manager"},
                                    headers=supervisor(token))
    assert response.status == 200, await response.text()
    response = await rig.client.delete(path, headers=supervisor(token))
    assert response.status == 204, await response.text()
    assert (await rig.client.get(path, headers=supervisor(token))).status == 404
    left = await rig.notifier.pool.fetch("SELECT user_id FROM notifier.directory")
    assert [r["user_id"] for r in left] == ["a"]


async def test_an_empty_json_body_on_delete_is_taken_as_none(
        rig: NotifierRig, token: TokenFactory) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    response = await rig.client.delete("/v1/preferences/cm-2", headers=supervisor(token),
                                       json={})
    assert response.status == 204, await response.text()


# DELETE racing PUT of the same entry


async def test_deletes_and_puts_of_one_staff_entry_at_once_never_fail(
        rig: NotifierRig, token: TokenFactory) -> None:
    """Over real HTTP, at once, several rounds: each answer is one a request alone may get,
    and what is stored is what the last one to commit left."""
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    for round_ in range(4):
        email = f"round{round_}@example.org"
        put, delete = await asyncio.gather(
            rig.client.put("/v1/preferences/cm-2", json={**GOOD, "email": email},
                           headers=supervisor(token)),
            rig.client.delete("/v1/preferences/cm-2", headers=supervisor(token)))
        assert put.status == 200, await put.text()
        assert delete.status in (204, 404), await delete.text()
        stored = await rig.notifier.pool.fetchval(
            "SELECT email FROM notifier.directory WHERE user_id = 'cm-2'")
        assert stored in (None, email)
        if delete.status == 404:  # nothing to delete yet: the PUT came after
            assert stored == email
        if stored is None:
            await rig.set_prefs("cm-2", token(sub="cm-2"))


async def test_a_supervisors_put_that_waited_out_a_delete_of_a_participant_entry_is_no_500(
        rig: NotifierRig, records: Records, token: TokenFactory,
        fresh_database_url: str) -> None:
    """The PUT reads Jo's participant entry, then waits for its row while a DELETE of it
    commits (a lock the test holds orders the two): it then finds no entry in its
    transaction. Whatever it answers (the entry made again, 404, 409, or 422: a participant's
    first entry names its cases), it is not a 500."""
    case = await records.open_case()
    await rig.set_prefs("jo", jo(token, case))
    holder = await asyncpg.connect(fresh_database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM notifier.directory WHERE user_id = 'jo' FOR UPDATE")
        delete = asyncio.create_task(rig.client.delete("/v1/preferences/jo?role=participant",
                                                       headers=supervisor(token)))
        await wait_until(rig.notifier.pool, WAITING, 1)
        put = asyncio.create_task(rig.client.put(
            "/v1/preferences/jo", json={**GOOD, "email": "jo@example.org"},
            headers=supervisor(token)))  # no role: the stored one, a participant's
        await wait_until(rig.notifier.pool, WAITING, 2)
        await held.rollback()
        deleted, put_answer = await asyncio.gather(delete, put)
    finally:
        await holder.close()
    assert deleted.status == 204, await deleted.text()
    text = await put_answer.text()
    assert put_answer.status in (200, 404, 409, 422), text
    stored = await rig.notifier.pool.fetch("SELECT kind, role FROM notifier.directory")
    if put_answer.status == 200:
        assert json.loads(text)["role"] == "participant", text
        assert [tuple(r) for r in stored] == [("participant", "participant")]
    else:
        assert stored == []


# GET and POST /v1/unsubscribe/{token}


async def opted_in(rig: NotifierRig, records: Records, token: TokenFactory) -> str:
    case = await records.open_case()
    await rig.set_prefs("jo", jo(token, case))
    await rig.set_prefs("cm-1", token())
    return case


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
async def test_another_method_on_a_link_is_a_problem_with_a_detail_and_changes_nothing(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path,
        method: str) -> None:
    await opted_in(linked, records, token)
    before = await state(linked)
    response = await linked.client.request(method, link(secret_file), data=ONE_CLICK,
                                           headers=FORM)
    await assert_problem(response, 405)
    assert await state(linked) == before


@pytest.mark.parametrize("path", ["/v1/unsubscribe/", "/v1/unsubscribe"],
                         ids=["cut at the slash", "cut before it"])
async def test_a_link_cut_short_before_its_token_is_a_404_problem_saying_so(
        linked: NotifierRig, path: str) -> None:
    """No route serves a link without its token: the router's 404, which said nothing (its
    problem had no detail), now says nothing is served there, to a browser too (a page for it
    would need a route of its own for a link cut at the slash; docs/notifier.md)."""
    for method in ("GET", "POST"):
        for headers in (FORM, {**FORM, **AS_A_BROWSER}):
            response = await linked.client.request(method, path, data=ONE_CLICK,
                                                   headers=headers)
            problem = await assert_problem(response, 404)
            assert "nothing is served at this path" in problem["detail"], (method, problem)


async def test_the_link_opened_in_any_way_changes_nothing(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path) -> None:
    """Link scanners, prefetchers and odd clients: GET and HEAD, any Accept, a query that
    looks like the form, a body: only the page, nothing written (no access-log entry
    either)."""
    await opted_in(linked, records, token)
    path = link(secret_file)
    before = await state(linked)
    accepts = ["", "*/*", "text/html", "application/problem+json", "text/html;q=",
               "text/html;q=0.5, application/*;q=0.9", ",,,;;;", "x" * 4000]
    for accept in accepts:
        for method in ("GET", "HEAD"):
            response = await linked.client.request(
                method, path + "?List-Unsubscribe=One-Click&celebrations=false",
                headers={"Accept": accept, **FORM}, data=ONE_CLICK)
            assert response.status == 200, (method, accept, await response.text())
    assert await state(linked) == before
    assert await celebrations_of(linked, "jo") is True


def multipart(part_headers: str, value: bytes = b"One-Click",
              boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n"
            f"{part_headers}\r\n").encode() + value + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


ODD_BODIES: dict[str, tuple[bytes, dict[str, str], int]] = {
    "multipart, an unknown transfer encoding": (
        *multipart("Content-Transfer-Encoding: x-unknown\r\n"), 400),
    "multipart, a charset Python does not know": (
        *multipart("Content-Type: text/plain; charset=x-unknown\r\n"), 400),
    "multipart, a value not UTF-8": (*multipart("", b"One-\xffClick"), 400),
    "multipart, no boundary": (multipart("")[0], {"Content-Type": "multipart/form-data"}, 400),
    "multipart, another boundary": (multipart("", boundary="other")[0],
                                    multipart("")[1], 400),
    "multipart, garbage": (b"\x00\xff" * 50, multipart("")[1], 400),
    "multipart, nested": (*multipart("Content-Type: multipart/mixed; boundary=inner\r\n",
                                     b"--inner\r\n\r\nx\r\n--inner--"), 400),
    "multipart, a part with no name": (
        b"--b\r\nContent-Disposition: form-data\r\n\r\nOne-Click\r\n--b--\r\n",
        {"Content-Type": "multipart/form-data; boundary=b"}, 400),
    "form, a charset Python does not know": (
        ONE_CLICK.encode(), {"Content-Type": f"{FORM['Content-Type']}; charset=x-unknown"}, 400),
    "form, UTF-16 that does not decode": (
        b"List-Unsubscribe=One-Click\xd8", {"Content-Type": f"{FORM['Content-Type']};"
                                                           " charset=utf-16"}, 400),
    "form, a lone percent sign": (b"%", FORM, 400),
    "form, 2,000 fields": (b"&".join(b"f%d=" % i for i in range(2000)), FORM, 413),
    "form, over the size limit": (b"List-Unsubscribe=" + b"x" * (65 * 1024), FORM, 413),
    "form, gzip that does not decode": (ONE_CLICK.encode(), {**FORM, "Content-Encoding": "gzip"},
                                        400),
    "JSON": (b'{"List-Unsubscribe": "One-Click"}', {"Content-Type": "application/json"}, 415),
    "no type": (ONE_CLICK.encode(), {"Content-Type": ""}, 415),
}


@pytest.mark.parametrize(("body", "headers", "status"), ODD_BODIES.values(),
                         ids=ODD_BODIES.keys())
async def test_an_odd_one_click_body_is_a_problem_with_a_detail_and_changes_nothing(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path,
        body: bytes, headers: dict[str, str], status: int) -> None:
    await opted_in(linked, records, token)
    before = await state(linked)
    response = await linked.client.post(link(secret_file), data=body, headers=headers)
    await assert_problem(response, status)
    assert await state(linked) == before


async def test_a_chunked_one_click_form_is_taken(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path) -> None:
    await opted_in(linked, records, token)
    response = await linked.client.post(link(secret_file), headers=FORM,
                                        data=_chunks(b"List-Unsubscribe=", b"One-Click"))
    assert response.status == 200, await response.text()
    assert await celebrations_of(linked, "jo") is False


async def test_a_link_turns_off_only_the_participant_entry_of_a_shared_id(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path) -> None:
    case = await records.open_case()
    await linked.set_prefs("7", token(sub="7"))
    await linked.set_prefs("7", token(role="participant", sub="7", cases=[case]))
    assert (await linked.client.post(link(secret_file, "7"), data=ONE_CLICK,
                                     headers=FORM)).status == 200
    assert await celebrations_of(linked, "7") is False
    assert await celebrations_of(linked, "7", "staff") is True


async def test_a_link_naming_only_a_staff_entry_is_not_valid_and_changes_nothing(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path) -> None:
    """A link signed for a user id that has a staff entry and no participant entry (the
    participant's was removed since): 404, the staff member's mail untouched."""
    await opted_in(linked, records, token)
    before = await state(linked)
    response = await linked.client.post(link(secret_file, "cm-1"), data=ONE_CLICK, headers=FORM)
    problem = await assert_problem(response, 404)
    assert "this unsubscribe link is not valid" in problem["detail"]
    assert await state(linked) == before


async def test_two_one_click_posts_at_once_both_answer_the_page(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path) -> None:
    await opted_in(linked, records, token)
    answers = await asyncio.gather(*(
        linked.client.post(link(secret_file), data=ONE_CLICK, headers=FORM) for _ in range(4)))
    assert [a.status for a in answers] == [200] * 4
    assert await celebrations_of(linked, "jo") is False


async def test_a_one_click_post_racing_the_entrys_removal_is_no_500(
        linked: NotifierRig, records: Records, token: TokenFactory, secret_file: Path,
        fresh_database_url: str) -> None:
    """The POST reads Jo's entry, then waits for its row while a supervisor's DELETE of it
    commits (a lock the test holds orders the two): the link no longer names an entry."""
    await opted_in(linked, records, token)
    holder = await asyncpg.connect(fresh_database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM notifier.directory WHERE user_id = 'jo'"
                             " AND kind = 'participant' FOR UPDATE")
        delete = asyncio.create_task(linked.client.delete(
            "/v1/preferences/jo?role=participant", headers=supervisor(token)))
        await wait_until(linked.notifier.pool, WAITING, 1)
        post = asyncio.create_task(linked.client.post(link(secret_file), data=ONE_CLICK,
                                                      headers=FORM))
        await wait_until(linked.notifier.pool, WAITING, 2)
        await held.rollback()
        deleted, posted = await asyncio.gather(delete, post)
    finally:
        await holder.close()
    assert deleted.status == 204
    problem = await assert_problem(posted, 404)
    assert "this unsubscribe link is not valid" in problem["detail"]
    assert await linked.notifier.pool.fetchval(
        "SELECT count(*) FROM notifier.directory WHERE kind = 'participant'") == 0


async def _exchange(port: int, request: bytes) -> tuple[int, str, bytes]:
    """Raw bytes to the served notifier; its status, content type and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    types = [v.strip() for n, _, v in (line.partition(":") for line in lines)
             if n.lower() == "content-type"]
    return int(status_line.split()[1]), types[0] if types else "", body


async def test_bytes_that_are_not_utf8_in_a_path_are_a_problem(
        fresh_database_url: str, token: TokenFactory, secret_file: Path) -> None:
    """Sent raw (no client would encode them so), to the notifier served as in production."""
    settings = notifier_settings(fresh_database_url, "http://127.0.0.1:9", smtp_port=9,
                                 NOTIFIER_PUBLIC_URL=PUBLIC_URL,
                                 NOTIFIER_LINK_SECRET_FILE=str(secret_file))
    runner, port = await serve(create_app(settings, background=False))
    auth = f"Authorization: Bearer {token(role='supervisor', sub='sup-1')}\r\n".encode()
    requests = {
        "GET link": b"GET /v1/unsubscribe/\xff\xfe.\xc3 HTTP/1.1\r\n",
        "POST link": b"POST /v1/unsubscribe/ab\xed\xa0\x80.cd HTTP/1.1\r\n" + (
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n"),
        "DELETE user": b"DELETE /v1/preferences/x\xffy HTTP/1.1\r\n" + auth,
        "DELETE role": b"DELETE /v1/preferences/cm-1?role=\xff\xfe HTTP/1.1\r\n" + auth,
    }
    try:
        for name, head in requests.items():
            body = ONE_CLICK.encode() if name == "POST link" else b""
            status, content_type, answer = await _exchange(
                port, head + b"Host: notifier\r\nConnection: close\r\n\r\n" + body)
            assert 400 <= status < 500, (name, status, answer)
            assert content_type.startswith("application/problem+json"), (name, answer)
            assert json.loads(answer).get("detail"), (name, answer)
    finally:
        await runner.cleanup()


# PUT: one case, one participant's entry


def participant_entry(user: str, case: str, **extra: Any) -> dict[str, Any]:
    return {**GOOD, "email": f"{user}@example.org", "role": "participant", "cases": [case],
            **extra}


async def entries_naming(rig: NotifierRig, case: str) -> list[str]:
    rows = await rig.notifier.pool.fetch(
        "SELECT user_id FROM notifier.directory WHERE kind = 'participant'"
        " AND cases @> ARRAY[$1::uuid] ORDER BY user_id", case)
    return [r["user_id"] for r in rows]


async def test_two_first_entries_naming_one_case_at_once_one_wins(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Supervisors' PUTs over real HTTP at once, several rounds: never both."""
    for round_ in range(4):
        case = await records.open_case()
        first, second = f"jo{round_}", f"sam{round_}"
        answers = await asyncio.gather(*(
            rig.client.put(f"/v1/preferences/{user}", json=participant_entry(user, case),
                           headers=supervisor(token)) for user in (first, second)))
        assert sorted(a.status for a in answers) == [200, 409], [a.status for a in answers]
        assert len(await entries_naming(rig, case)) == 1


async def test_two_participants_opting_in_to_one_case_at_once_one_wins(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Each participant's own PUT (their token names the case): never both."""
    for round_ in range(4):
        case = await records.open_case()
        users = (f"jo{round_}", f"sam{round_}")
        answers = await asyncio.gather(*(
            rig.client.put(f"/v1/preferences/{user}", json=GOOD, headers=bearer(
                token(role="participant", sub=user, cases=[case]))) for user in users))
        assert sorted(a.status for a in answers) == [200, 409], [a.status for a in answers]
        assert len(await entries_naming(rig, case)) == 1


@pytest.mark.parametrize("stored_before", [False, True], ids=["first entries", "changes"])
async def test_two_puts_that_both_passed_every_check_before_writing_one_wins(
        rig: NotifierRig, records: Records, token: TokenFactory, fresh_database_url: str,
        stored_before: bool) -> None:
    """The test holds the directory in SHARE mode: reads and row locks go through, writes
    wait. Both PUTs get as far as their write at once, unless one waits for the other
    before its check; released, exactly one may store the case."""
    case = await records.open_case()
    if stored_before:
        for user in ("jo", "sam"):
            await rig.set_prefs(user, sup(token),
                                role="participant", cases=[await records.open_case()])
    holder = await asyncpg.connect(fresh_database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("LOCK TABLE notifier.directory IN SHARE MODE")
        puts = [asyncio.create_task(rig.client.put(
            f"/v1/preferences/{user}", json=participant_entry(user, case),
            headers=supervisor(token))) for user in ("jo", "sam")]
        await wait_until(rig.notifier.pool, WAITING, 2)
        await held.rollback()
        answers = await asyncio.gather(*puts)
    finally:
        await holder.close()
    assert sorted(a.status for a in answers) == [200, 409], [a.status for a in answers]
    assert len(await entries_naming(rig, case)) == 1


async def test_a_refused_put_of_a_case_on_another_entry_writes_nothing(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """A change that would also move when Jo2 hears (time zone, quiet hours, celebrations)
    and add Jo's case: 409, Jo2's entry and what waits for Jo2 as they were."""
    case = await seeded(rig, records, token)
    theirs = await records.open_case()
    await rig.set_prefs("jo2", sup(token),
                        role="participant", cases=[theirs])
    await records.achieve(theirs, await records.goal(theirs))
    await rig.catch_up()
    before = await state(rig)
    response = await rig.client.put(
        "/v1/preferences/jo2", headers=supervisor(token),
        json=participant_entry("jo2", case, cases=[theirs, case], timezone="Europe/Berlin",
                               celebrations=False, quiet_hours={"start": "01:00",
                                                                "end": "23:00"}))
    problem = await assert_problem(response, 409)
    assert problem["type"].endswith("/case-on-another-entry")
    assert "/v1/preferences/jo?role=participant" in problem["detail"]
    assert await state(rig) == before


async def test_a_participant_refused_for_a_case_on_another_entry_learns_no_one_elses_id(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """Nowhere in the answer (detail, errors, headers, any field) is the other id."""
    case = await records.open_case()
    other = "samira.other-participant"
    await rig.set_prefs(other, sup(token),
                        role="participant", cases=[case])
    before = await state(rig)
    for body in (GOOD, {**GOOD, "cases": [case]}):
        response = await rig.client.put("/v1/preferences/jo", json=body,
                                        headers=bearer(jo(token, case)))
        await assert_problem(response, 409)
        said = await response.text() + json.dumps(dict(response.headers))
        assert other not in said
        assert "samira" not in said.lower()
    assert await state(rig) == before


async def test_a_case_on_another_agencys_entry_is_neither_refused_nor_revealed(
        rig: NotifierRig, records: Records, token: TokenFactory) -> None:
    """The same case id on an entry of agency A says nothing to agency B's supervisor."""
    case = await records.open_case()
    await rig.set_prefs("jo", jo(token, case))
    response = await rig.client.put("/v1/preferences/jo2", json=participant_entry("jo2", case),
                                    headers=supervisor(token, "agency-b"))
    assert response.status == 200, await response.text()
    assert "jo" not in json.dumps({k: v for k, v in (await response.json()).items()
                                   if k not in ("user", "email")})
    assert await entries_naming(rig, case) == ["jo", "jo2"]
