"""One-click unsubscribe for the mail a participant gets (RFC 8058, RFC 2369; 0203).

A participant's milestone mail said "turn celebrations off in your notification preferences,
or tell your case manager", but a participant had no way to change a preference without
calling the API with a token, and the mail carried no List-Unsubscribe header, which large
mailbox providers expect of automated mail. With NOTIFIER_PUBLIC_URL set, it carries both
headers and the link; a POST to the link turns that entry's celebrations off, as a PUT of
preferences would. Real records service, PostgreSQL, SMTP (aiosmtpd) and HTTP."""

from __future__ import annotations

import base64
import secrets
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from aiohttp import ClientResponse, FormData

from services import cli
from services.notifier.delivery import unsubscribe_headers
from services.notifier.links import Entry, UnsubscribeLinks, read_secret
from services.notifier.settings import NotifierSettings
from services.notifier.store.notifications import CELEBRATIONS_OFF
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import PUBLIC_URL, NotifierRig, Records, SmtpServer, text_of
from tests.test_participant_mail import html_of

ONE_CLICK = "List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
AS_A_BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def jo(token: TokenFactory, case: str, agency: str = "agency-a") -> str:
    return token(role="participant", sub="jo", cases=[case], agency=agency)


async def opted_in(rig: NotifierRig, records: Records, token: TokenFactory,
                   **prefs: Any) -> str:
    case = await records.open_case()
    await rig.set_prefs("jo", jo(token, case), **prefs)
    return case


async def milestone_mail(rig: NotifierRig, records: Records, smtp: SmtpServer,
                         case: str) -> Message:
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()
    [mail] = smtp.to("jo@example.org")
    return mail


def link_of(mail: Message) -> str:
    """The path of the mail's List-Unsubscribe link (the test client has no public host)."""
    header = " ".join(str(mail["List-Unsubscribe"]).split())
    assert header.startswith(f"<{PUBLIC_URL}/v1/unsubscribe/"), header
    assert header.endswith(">"), header
    return urlsplit(header[1:-1]).path


async def celebrations(rig: NotifierRig, token: str) -> bool:
    response = await rig.client.get("/v1/preferences/jo", headers=bearer(token))
    assert response.status == 200
    return bool((await response.json())["celebrations"])


async def one_click(rig: NotifierRig, path: str, **headers: str) -> ClientResponse:
    return await rig.client.post(path, data=ONE_CLICK, headers={**FORM, **headers})


async def stored_entries(rig: NotifierRig) -> list[tuple[Any, ...]]:
    rows = await rig.notifier.pool.fetch(
        "SELECT agency, user_id, celebrations, updated_by, updated_at FROM notifier.directory"
        " ORDER BY agency, user_id")
    return [tuple(r) for r in rows]


async def test_a_participants_milestone_carries_the_one_click_headers_and_link(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await opted_in(linked, records, token)
    await linked.set_prefs("cm-1", token())
    mail = await milestone_mail(linked, records, smtp, case)
    path = link_of(mail)
    url = PUBLIC_URL + path
    assert mail["List-Unsubscribe-Post"] == ONE_CLICK
    text = " ".join(text_of(mail).split())
    assert ("To stop these emails, turn celebrations off in your notification preferences,"
            f" tell your case manager, or open this link: {url}") in text
    assert f'<a href="{url}">' in html_of(mail)
    # the token names the entry by its ids alone: no address, nothing else readable
    payload = path.rsplit("/", 1)[1].split(".")[0]
    readable = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    assert readable == '["agency-a","jo"]'
    # the case manager's copy is work mail: no header, no link
    [staff] = smtp.to("cm-1@example.org")
    assert (staff["List-Unsubscribe"], staff["List-Unsubscribe-Post"]) == (None, None)
    assert "/v1/unsubscribe/" not in text_of(staff) + html_of(staff)


async def test_the_one_click_post_turns_celebrations_off_and_the_next_milestone_is_not_sent(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    case = await opted_in(linked, records, token)
    path = link_of(await milestone_mail(linked, records, smtp, case))
    clock.advance(minutes=5)
    first = await one_click(linked, path)
    assert (first.status, first.content_type) == (200, "text/html")
    page = " ".join((await first.text()).split())
    assert "You will not get emails celebrating your milestones" in page
    assert "tell your case manager" in page
    assert await celebrations(linked, jo(token, case)) is False
    [(_, _, on, updated_by, _)] = await stored_entries(linked)
    assert (on, updated_by) == (False, "jo (unsubscribe link)")
    again = await one_click(linked, path)  # a mail provider may send it twice
    assert (again.status, " ".join((await again.text()).split())) == (200, page)
    await records.achieve(case, await records.goal(case, "Keep my flat", "A home of my own"))
    await linked.catch_up()
    await linked.dispatch()
    assert len(smtp.to("jo@example.org")) == 1
    rows = await linked.rows(recipient=f"participant:{case}", kind="milestone")
    assert [(r["status"], r["last_error"]) for r in rows] == [
        ("sent", None), ("cancelled", CELEBRATIONS_OFF)]
    # not a supervisor's read: nothing in the access log
    assert await linked.notifier.pool.fetchval("SELECT count(*) FROM notifier.access_log") == 0


async def second_milestone(rig: NotifierRig, case: str) -> dict[str, Any]:
    rows = await rig.rows(recipient=f"participant:{case}", kind="milestone")
    assert len(rows) == 2
    return rows[1]  # in order of due time


async def test_a_milestone_waiting_out_quiet_hours_is_cancelled_at_once(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The change goes through directory.save, as a PUT does: what waits for the participant
    is decided afresh now, not at the end of their quiet hours (09:00 to 12:00 here)."""
    case = await opted_in(linked, records, token)
    first = await milestone_mail(linked, records, smtp, case)
    await linked.set_prefs("jo", jo(token, case), quiet_hours={"start": "08:00", "end": "12:00"})
    clock.advance(minutes=1)
    await records.achieve(case, await records.goal(case, "Keep my flat", "A home of my own"))
    await linked.catch_up()
    await linked.dispatch()
    waiting = await second_milestone(linked, case)
    assert (waiting["status"], waiting["not_before"] > waiting["due_at"]) == ("scheduled", True)
    assert (await one_click(linked, link_of(first))).status == 200
    await linked.dispatch()
    after = await second_milestone(linked, case)
    assert (after["status"], after["last_error"]) == ("cancelled", CELEBRATIONS_OFF)
    assert len(smtp.to("jo@example.org")) == 1


async def test_the_page_a_browser_opens_changes_nothing_and_posts_back(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """Link scanners fetch every link in a mail: a GET only shows the page."""
    case = await opted_in(linked, records, token)
    path = link_of(await milestone_mail(linked, records, smtp, case))
    before = await stored_entries(linked)
    for method in ("GET", "HEAD"):
        response = await linked.client.request(method, path, headers=AS_A_BROWSER)
        assert (response.status, response.content_type) == (200, "text/html"), method
    response = await linked.client.get(path)
    page = await response.text()
    assert '<form method="post"><button type="submit">' in page
    for details in ("jo@example.org", "Jordan", "agency-a"):  # no one's
        assert details not in page
    policy = response.headers["Content-Security-Policy"]
    assert "form-action 'self'" in policy
    assert "default-src 'none'" in policy
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert await stored_entries(linked) == before
    assert await celebrations(linked, jo(token, case)) is True
    # the page's button sends an empty form
    pressed = await linked.client.post(path, data=FormData({}), headers=AS_A_BROWSER)
    assert pressed.status == 200
    assert await celebrations(linked, jo(token, case)) is False
    shown = await (await linked.client.get(path)).text()
    assert "are turned off" in shown
    assert "<form" not in shown


def tampered(path: str) -> list[str]:
    """The token of ``path`` altered in every way a person or a scanner might."""
    token = path.rsplit("/", 1)[1]
    payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    someone_else = base64.urlsafe_b64encode(b'["agency-a","cm-1"]').decode().rstrip("=")
    return [f"{payload}.{flipped}", f"{someone_else}.{signature}", payload, f"{token}.x",
            f"{token}A", token[:-5], f".{signature}", f"{payload}.", "...", "x" * 5000,
            quote(f"{payload}é.{signature}"), quote("caf\u00e9"), "%00", "%FF.%FE",
            f"{payload}.{signature[:-1]}*", f"{payload}.{signature}="]


async def test_a_link_tampered_with_is_404_and_changes_nothing(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await opted_in(linked, records, token)
    await linked.set_prefs("cm-1", token())
    path = link_of(await milestone_mail(linked, records, smtp, case))
    before = await stored_entries(linked)
    for bad in tampered(path):
        for method in ("GET", "POST"):
            response = await linked.client.request(method, f"/v1/unsubscribe/{bad}",
                                                   data=ONE_CLICK, headers=FORM)
            assert response.status == 404, (method, bad, await response.text())
            assert response.content_type == "application/problem+json", bad
            problem = await response.json()
            assert "this unsubscribe link is not valid" in problem["detail"], bad
    assert await stored_entries(linked) == before


async def test_a_browser_following_a_bad_link_gets_a_page(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await opted_in(linked, records, token)
    bad = tampered(link_of(await milestone_mail(linked, records, smtp, case)))[0]
    for method in ("GET", "POST"):
        response = await linked.client.request(method, f"/v1/unsubscribe/{bad}",
                                               headers=AS_A_BROWSER)
        assert (response.status, response.content_type) == (404, "text/html"), method
        page = " ".join((await response.text()).split())
        assert "This link is not valid" in page
        assert "ask your case manager" in page
    assert await celebrations(linked, jo(token, case)) is True


async def test_a_link_signed_under_another_secret_or_for_no_entry_is_404(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        secret_file: Path) -> None:
    case = await opted_in(linked, records, token)
    ours = UnsubscribeLinks(PUBLIC_URL, read_secret(secret_file))
    theirs = UnsubscribeLinks(PUBLIC_URL, secrets.token_bytes(32))
    before = await stored_entries(linked)
    for link in (theirs.url(Entry("agency-a", "jo")), ours.url(Entry("agency-a", "nobody")),
                 ours.url(Entry("agency-a", "cm-1"))):  # cm-1: no participant entry
        response = await one_click(linked, urlsplit(link).path)
        assert response.status == 404, link
        assert "this unsubscribe link is not valid" in (await response.json())["detail"]
    assert await stored_entries(linked) == before
    assert await celebrations(linked, jo(token, case)) is True


async def test_an_entry_removed_since_the_mail_is_404(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await opted_in(linked, records, token)
    path = link_of(await milestone_mail(linked, records, smtp, case))
    await linked.notifier.pool.execute("DELETE FROM notifier.directory WHERE user_id = 'jo'")
    for method in ("GET", "POST"):
        response = await linked.client.request(method, path, data=ONE_CLICK, headers=FORM)
        assert response.status == 404, method
        assert "this unsubscribe link is not valid" in (await response.json())["detail"]
    assert await stored_entries(linked) == []


async def test_a_link_of_one_agency_never_touches_another(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """The same user id in agency B, opted in there: agency A's link leaves it alone."""
    case = await opted_in(linked, records, token)
    other_case = "7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e"
    in_b = jo(token, other_case, agency="agency-b")
    await linked.set_prefs("jo", in_b)
    path = link_of(await milestone_mail(linked, records, smtp, case))
    assert (await one_click(linked, path)).status == 200
    assert await celebrations(linked, jo(token, case)) is False
    assert await celebrations(linked, in_b) is True


@pytest.mark.parametrize(("body", "headers", "status"), [
    ('{"List-Unsubscribe": "One-Click"}', {"Content-Type": "application/json"}, 415),
    ("List-Unsubscribe=Two-Clicks", FORM, 400),
    ("List-Unsubscribe=One-Click&celebrations=true", FORM, 400),
    ("List-Unsubscribe=One-Click&List-Unsubscribe=One-Click", FORM, 400),
    ("%FF=%FE", FORM, 400),
    ("just text", {"Content-Type": "text/plain"}, 415),
], ids=["json", "another value", "another field", "twice", "not utf-8", "text"])
async def test_a_body_that_is_not_the_one_click_form_is_refused_and_changes_nothing(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        body: str, headers: dict[str, str], status: int) -> None:
    case = await opted_in(linked, records, token)
    path = link_of(await milestone_mail(linked, records, smtp, case))
    before = await stored_entries(linked)
    response = await linked.client.post(path, data=body, headers=headers)
    assert (response.status, response.content_type) == (status, "application/problem+json")
    assert await stored_entries(linked) == before


async def test_a_multipart_one_click_form_is_taken_and_a_file_in_it_is_not(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """RFC 8058 lets the mail provider send the form as multipart/form-data."""
    case = await opted_in(linked, records, token)
    path = link_of(await milestone_mail(linked, records, smtp, case))
    with_file = FormData()
    with_file.add_field("List-Unsubscribe", b"One-Click", filename="x.txt")
    assert (await linked.client.post(path, data=with_file)).status == 400
    assert await celebrations(linked, jo(token, case)) is True
    form = FormData()
    form.add_field("List-Unsubscribe", "One-Click", content_type="text/plain")  # multipart
    assert (await linked.client.post(path, data=form)).status == 200
    assert await celebrations(linked, jo(token, case)) is False


async def test_without_a_public_address_the_mail_is_as_before(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    """NOTIFIER_PUBLIC_URL unset: no header, no link, the words of before."""
    case = await opted_in(rig, records, token)
    mail = await milestone_mail(rig, records, smtp, case)
    assert (mail["List-Unsubscribe"], mail["List-Unsubscribe-Post"]) == (None, None)
    assert text_of(mail).endswith(
        "You are receiving this because you asked to hear about your milestones. To stop these\n"
        "emails, turn celebrations off in your notification preferences, or tell your case"
        " manager.\n\n-- \nSent by Casetrail. You can change how and when you hear from us in"
        " your notification preferences.\n")
    assert "href" not in html_of(mail)
    # and no link of any kind is taken
    response = await rig.client.post("/v1/unsubscribe/abc.def", data=ONE_CLICK, headers=FORM)
    assert (response.status, response.content_type) == (404, "application/problem+json")


def test_a_link_too_long_for_one_header_line_stays_in_the_body_only() -> None:
    """Two ids of 200 characters outside ASCII make a link longer than SMTP's 998-byte line,
    and a URL cannot be folded: a server would refuse the whole message."""
    links = UnsubscribeLinks(PUBLIC_URL, secrets.token_bytes(32))
    long_url = links.url(Entry("агентство" * 22, "участник" * 25))
    short_url = links.url(Entry("agency-a", "jo"))
    assert unsubscribe_headers(long_url) == {}
    assert unsubscribe_headers(short_url) == {"List-Unsubscribe": f"<{short_url}>",
                                              "List-Unsubscribe-Post": ONE_CLICK}
    assert unsubscribe_headers(None) == {}
    for url in (long_url, short_url):  # either way the link names its entry
        assert links.entry(url.rsplit("/", 1)[1]) is not None


# Settings: a public address needs a secret to sign its links (exit 2 otherwise).


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for setting in NotifierSettings.model_fields.values():
        monkeypatch.delenv(str(setting.alias), raising=False)
    monkeypatch.setenv("CASETRAIL_DEV_DIR", str(tmp_path))
    return monkeypatch


def start_notifier(capsys: pytest.CaptureFixture[str]) -> str:
    """`casetrail notifier` with no DATABASE_URL: exit 2, saying why."""
    assert cli.main(["notifier"]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("secret", "words"), [
    (None, ["NOTIFIER_PUBLIC_URL is set but NOTIFIER_LINK_SECRET_FILE is not",
            "at least 32 random bytes", "or unset NOTIFIER_PUBLIC_URL"]),
    ("missing", ["NOTIFIER_LINK_SECRET_FILE:", "cannot be read"]),
    ("short", ["NOTIFIER_LINK_SECRET_FILE:", "holds 31 bytes", "at least 32"]),
    ("folder", ["NOTIFIER_LINK_SECRET_FILE:", "cannot be read"]),
], ids=["no secret", "no such file", "too short", "a folder"])
def test_a_public_address_without_a_usable_secret_stops_the_start(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        tmp_path: Path, secret: str | None, words: list[str]) -> None:
    no_environment.setenv("NOTIFIER_PUBLIC_URL", PUBLIC_URL)
    if secret is not None:
        path = {"missing": tmp_path / "none", "short": tmp_path / "short",
                "folder": tmp_path}[secret]
        if secret == "short":
            path.write_bytes(b"s" * 31 + b"\n")
        no_environment.setenv("NOTIFIER_LINK_SECRET_FILE", str(path))
    error = start_notifier(capsys)
    assert error.startswith("casetrail: configuration:"), error
    for said in words:
        assert said in error, (said, error)


@pytest.mark.parametrize("url", ["ftp://notices.example", "notices.example",
                                 "https://notices.example/?a=1", "https://"],
                         ids=["ftp", "no scheme", "a query", "no host"])
def test_a_public_address_that_is_no_http_base_stops_the_start(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        secret_file: Path, url: str) -> None:
    no_environment.setenv("NOTIFIER_PUBLIC_URL", url)
    no_environment.setenv("NOTIFIER_LINK_SECRET_FILE", str(secret_file))
    error = start_notifier(capsys)
    assert error.startswith("casetrail: configuration: NOTIFIER_PUBLIC_URL:"), error


def test_a_public_address_with_its_secret_is_taken(
        capsys: pytest.CaptureFixture[str], no_environment: pytest.MonkeyPatch,
        secret_file: Path) -> None:
    no_environment.setenv("NOTIFIER_PUBLIC_URL", PUBLIC_URL + "/")
    no_environment.setenv("NOTIFIER_LINK_SECRET_FILE", str(secret_file))
    assert start_notifier(capsys) == "casetrail: set DATABASE_URL\n"
    assert NotifierSettings().public_url == PUBLIC_URL
