"""The notifier's mail as a mail system reads it: hostile and international text from the
case record (names, goal titles, steps, notes, their words, case manager ids, reasons) goes
through the real records API and the real notifier to a real SMTP server, and every message
of every kind is parsed back (``email.policy.default``) and checked for header injection,
encoded words, line lengths, Message-ID and Date, escaping in the HTML, and the text and HTML
parts saying the same things (README, docs/notifier.md "How it is put together", 0202)."""

from __future__ import annotations

import html
import re
from collections import Counter
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser

from services.notifier.templates import _as_text, _mark
from tests.conftest import FakeClock, TokenFactory
from tests.notifier_helpers import NotifierRig, Records, SmtpServer

CM = "cm<1>&'Ω"  # a case manager id as the API takes it: no control or formatting characters
CM2 = "cm-2"
NAME = "Nguyễn \u202eLan\u200b\r\nBcc: evil@attacker.example"
PREFERRED = "Zoë 陈 محمد 👩🏽‍🚀\u2028X-Injected: preferred\u202e"
TITLE = '<img src=x onerror=alert(1)> "><script>alert(2)</script>\r\nX-Injected: title'
WORDS = 'عمل بيدي 💪 <a href="javascript:alert(3)">javascript:alert(3)</a>\u2029X-Injected: words'
LONG_WORD = "https://example.org/" + "ü" * 1200 + "x" * 1500
STEP = f"Call \"><svg onload=alert(4)>\u0085X-Injected: step {LONG_WORD}"
NOTE = "done ' onmouseover='alert(5)\nX-Injected: note"
REASON = "moving <b>south</b> & \"away\"\r\nX-Injected: reason"
SECOND_TITLE = "Keep my 家 <iframe src=//evil>"
SECOND_WORDS = "בית משלי \u202e<script>alert(6)</script>"
HOSTILE = (PREFERRED, TITLE, WORDS, STEP, NOTE, REASON, SECOND_TITLE, SECOND_WORDS, CM)

EXPECTED_HEADERS = {"content-type", "mime-version", "from", "to", "subject", "message-id",
                    "date", "auto-submitted", "x-auto-response-suppress",
                    "x-casetrail-notification", "x-casetrail-kind"}
UNSUBSCRIBE_HEADERS = {"list-unsubscribe", "list-unsubscribe-post"}
ALL_KINDS = {"small_win", "milestone", "review_reminder", "review_due_today", "review_overdue",
             "step_nudge", "goal_target_date", "case_transferred"}
MESSAGE_ID = re.compile(r"<[^<>@\s]+@[A-Za-z0-9.-]+>")
TAGS = {"html", "head", "meta", "title", "style", "body", "p", "span", "a", "ul", "li",
        "strong", "br", "q"}
ATTRIBUTES = {"lang", "charset", "dir", "class", "href"}


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text part and the HTML part, decoded by their declared charsets."""
    text = message.get_body(("plain",))
    page = message.get_body(("html",))
    assert text is not None, message.get_content_type()
    assert page is not None, message.get_content_type()
    return str(text.get_content()), str(page.get_content())


def head(raw: bytes) -> bytes:
    """The message's header section as sent (line ends as LF)."""
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]


def one_line(value: str) -> str:
    """A value as a one-line field shows it: every kind of line break a space."""
    return " ".join(value.split())


async def hostile_case(rig: NotifierRig, records: Records, token: TokenFactory,
                       clock: FakeClock, *, participant_email: str = "zoe@example.org",
                       staff_email: str = "cm1@example.org") -> str:
    """A case whose record holds hostile and international text everywhere a notice quotes
    it, run through every kind of notice: nudge, small win, milestone (staff and
    participant), target date, reminder, due today, overdue, and a handover with a reason."""
    cm = Records(records.client, token(sub=CM))
    await rig.set_prefs(CM, token(sub=CM), email=staff_email)
    await rig.set_prefs(CM2, token(sub=CM2), email="cm2@example.org")
    await rig.set_prefs("sup-1", token(role="supervisor", sub="sup-1"))
    case = await cm.open_case(CM, participant={"name": NAME, "preferred_name": PREFERRED,
                                               "email": "zoe@example.org"})
    await rig.set_prefs("zoe", token(role="participant", sub="zoe", cases=[case]),
                        email=participant_email)
    first = await cm.goal(case, TITLE, WORDS, target_date="2026-03-10")
    step = await cm.step(case, first, STEP, due_date="2026-03-01")
    await rig.catch_up()
    await rig.dispatch()  # the nudge: the step's date has passed
    await cm.complete(case, step, NOTE)
    second = await cm.goal(case, SECOND_TITLE, SECOND_WORDS)
    await cm.achieve(case, second)
    await cm.step(case, first, STEP, due_date="2026-03-05")  # late at the handover
    await cm.agree(case, add_goal=False)
    await rig.catch_up()
    await rig.dispatch()
    for month, day in ((3, 10), (4, 28), (5, 1), (5, 3)):  # target, reminder, today, overdue
        clock.now = datetime(2026, month, day, 12, 0, tzinfo=UTC)
        await rig.dispatch()
    await cm.call("POST", f"/v1/cases/{case}/transfer", {"case_manager": CM2, "reason": REASON})
    await rig.catch_up()
    await rig.dispatch()
    return case


def kinds(smtp: SmtpServer) -> Counter[str]:
    return Counter(str(parse(raw)["X-Casetrail-Kind"]) for raw in smtp.raw)


async def test_every_kind_of_notice_arrives_from_the_hostile_record(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """The scenario the other tests here read: every kind of notice is sent (a milestone to
    the case manager and to the participant), so each check below covers each kind."""
    await hostile_case(rig, records, token, clock)
    sent = kinds(smtp)
    assert set(sent) == ALL_KINDS, sent
    to_zoe = [parse(raw) for raw in smtp.raw if parse(raw)["To"] == "zoe@example.org"]
    assert [str(m["X-Casetrail-Kind"]) for m in to_zoe] == ["milestone"]
    failed = [r for r in await rig.rows() if r["status"] != "sent"]
    assert not [(r["kind"], r["status"], r["last_error"]) for r in failed
                if r["status"] in ("dead", "failed")]


def check_headers(raw: bytes, unsubscribe: bool = False) -> EmailMessage:
    """What 0202 says a message carries, and nothing the record could have added."""
    for number, line in enumerate(raw.split(b"\n")):
        assert len(line.rstrip(b"\r")) <= 998, (number, len(line), line[:80])
    message = parse(raw)
    header_block = head(raw)
    names = {line.split(b":", 1)[0].decode().lower() for line in header_block.split(b"\n")
             if line and not line[:1].isspace()}
    expected = EXPECTED_HEADERS | (UNSUBSCRIBE_HEADERS if unsubscribe else set())
    assert names == expected, names ^ expected
    # (the words "X-Injected:" may stand inside a UTF-8 Subject; never at a line's start)
    assert b"evil@attacker" not in header_block
    assert not message.defects, message.defects
    subject = str(message["Subject"])
    assert "\n" not in subject
    assert "\r" not in subject
    assert not {"\u2028", "\u2029", "\x85"} & set(subject), repr(subject)
    assert MESSAGE_ID.fullmatch(str(message["Message-ID"])), message["Message-ID"]
    assert parsedate_to_datetime(str(message["Date"])).tzinfo is not None
    for part in message.walk():
        if part.get_content_maintype() == "text":
            assert part.get_content_charset() == "utf-8", part.get_content_type()
            assert part["Content-Transfer-Encoding"] in ("base64", "quoted-printable"), \
                part["Content-Transfer-Encoding"]
    return message


async def test_no_value_from_the_record_adds_a_header_or_breaks_a_line(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """CR/LF and U+2028/U+2029/U+0085 in names, titles, steps, notes and reasons cannot add a
    header (a Bcc would send the record elsewhere); a 2,700-character word in a Subject (a
    pasted link) leaves no line over SMTP's 998 octets (RFC 5322 2.1.1); each message has a
    unique Message-ID <…@domain>, a Date, and UTF-8 declared on both parts; a staff
    notifier without NOTIFIER_PUBLIC_URL sends no List-Unsubscribe (README, 0202)."""
    await hostile_case(rig, records, token, clock)
    ids = [str(check_headers(raw)["Message-ID"]) for raw in smtp.raw]
    assert len(ids) == len(set(ids)) >= len(ALL_KINDS)
    assert all(len(r) == 1 for r in smtp.recipients)


def as_written(value: str) -> str:
    """A value as a text part and Subject carry it: one holding a bidi control is set in an
    isolate (FSI…PDI), so that it cannot reverse the words after it."""
    return f"\u2068{value}\u2069" if re.search("[\u202a-\u202e\u2066-\u2069]", value) else value


SUBJECTS = {
    "small_win": f"A small win for {as_written(one_line(PREFERRED))}: {one_line(STEP)}",
    "milestone": f"Milestone: {as_written(one_line(PREFERRED))} achieved"
                 f' "{as_written(one_line(SECOND_WORDS))}"',
    "case_transferred": f"A case has been transferred to you: {as_written(one_line(PREFERRED))}",
}


async def test_a_subject_from_the_record_decodes_back_to_the_words_it_was_given(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """Non-ASCII (Vietnamese, Chinese, Arabic, Hebrew, an emoji sequence) is RFC 2047-encoded
    on the wire, and a reader's mail program decodes it to the name and words as written, on
    one line (line breaks become spaces: docs/notifier.md "The Subject is one line")."""
    await hostile_case(rig, records, token, clock)
    for raw in smtp.raw:
        message = parse(raw)
        kind = str(message["X-Casetrail-Kind"])
        wire = head(raw).decode("ascii")  # an ASCII address: no raw UTF-8
        assert "=?utf-8?" in wire.lower(), kind
        subject = str(message["Subject"])
        if kind in SUBJECTS and message["To"] != "zoe@example.org":
            assert subject == SUBJECTS[kind], (kind, subject[:200])
        if message["To"] == "zoe@example.org":
            assert subject == f"Congratulations, {as_written(one_line(PREFERRED))}: you did it!"
        else:
            assert one_line(PREFERRED) in subject, (kind, subject[:120])


class Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def markup(page: str) -> Markup:
    parser = Markup()
    parser.feed(page)
    parser.close()
    return parser


async def test_text_from_the_record_never_becomes_markup_in_the_html_part(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """<img onerror>, "><script>, an <a href="javascript:…">, an <iframe>, a quote that
    would close an attribute: every value is escaped (docs/notifier.md: "In the HTML every
    value from the record is escaped"); the page holds only the template's own elements and
    attributes, no script, no handler, no javascript: link, nothing fetched."""
    await hostile_case(rig, records, token, clock)
    for raw in smtp.raw:
        message = parse(raw)
        kind = str(message["X-Casetrail-Kind"])
        _, page = parts(message)
        found = markup(page)
        tags = {tag for tag, _ in found.tags}
        attrs = {name for _, attrs in found.tags for name, _ in attrs}
        assert tags <= TAGS, (kind, tags - TAGS)
        assert attrs <= ATTRIBUTES, (kind, attrs - ATTRIBUTES)
        hrefs = [v or "" for _, attrs in found.tags for n, v in attrs if n == "href"]
        assert not [h for h in hrefs if not h.startswith("https://")], (kind, hrefs)
        shown = "".join(found.text)
        quoted = [v for v in HOSTILE if one_line(v) in one_line(shown)]
        assert quoted, kind  # each notice quotes something from the record, unchanged


async def test_the_text_part_and_the_html_part_quote_the_same_values(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """docs/notifier.md: "Text and HTML say the same things". Each value from the record
    (international, with markup in it) that one part quotes the other quotes too, as
    written; emoji, CJK, Arabic and Hebrew survive both."""
    await hostile_case(rig, records, token, clock)
    for raw in smtp.raw:
        message = parse(raw)
        kind = str(message["X-Casetrail-Kind"])
        text, page = parts(message)
        shown = one_line(html.unescape("".join(markup(page).text)))
        in_text = {v for v in HOSTILE if one_line(v) in one_line(text)}
        in_html = {v for v in HOSTILE if one_line(v) in shown}
        assert in_text == in_html, (kind, in_text ^ in_html)
        assert one_line(PREFERRED) in one_line(text), kind
        body = one_line(text).replace(one_line(PREFERRED), "")
        assert "Bcc: evil@attacker.example" not in body  # the legal name stays out
        for text_line in text.split("\n"):
            assert "<span" not in text_line, kind


async def test_a_right_to_left_override_in_a_name_is_held_inside_it_in_the_html(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A U+202E in a preferred name or in their words would show the rest of the sentence
    reversed; in the HTML each value sits in its own dir="auto" element, which the HTML
    bidi rules isolate (docs/notifier.md), so the override ends with the value."""
    await hostile_case(rig, records, token, clock)
    escaped = html.escape(PREFERRED)
    for raw in smtp.raw:
        message = parse(raw)
        _, page = parts(message)
        assert f'<span dir="auto">{escaped}</span>' in page, message["X-Casetrail-Kind"]


async def test_a_participants_mail_alone_carries_the_unsubscribe_headers(
        linked: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """With NOTIFIER_PUBLIC_URL set, the participant's milestone carries List-Unsubscribe
    (an https URL in angle brackets) and List-Unsubscribe-Post: List-Unsubscribe=One-Click;
    staff mail none (docs/notifier.md: "staff mail has none"), hostile record or not."""
    await hostile_case(linked, records, token, clock)
    for raw in smtp.raw:
        message = parse(raw)
        to_participant = message["To"] == "zoe@example.org"
        check_headers(raw, unsubscribe=to_participant)
        if to_participant:
            assert re.fullmatch(r"<https://notices\.agency\.example/v1/unsubscribe/[^<>\s]+>",
                                str(message["List-Unsubscribe"]).strip())
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_mail_to_an_international_address_is_well_formed_too(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A non-ASCII address goes out with SMTPUTF8 (RFC 6531/6532) and headers in UTF-8 (0202);
    the same limits hold there: no injected header, no line over 998 octets (the 2,700-
    character word in a small win's Subject), a Subject that reads back as written."""
    smtp.smtputf8 = True
    await hostile_case(rig, records, token, clock, participant_email="zoë@exämple.org",
                       staff_email="cm1@exämple.org")
    to_them = [raw for raw in smtp.raw if not parse(raw)["To"].isascii()]
    assert {str(parse(raw)["X-Casetrail-Kind"]) for raw in to_them} >= {
        "small_win", "milestone", "step_nudge"}
    for raw in to_them:
        message = check_headers(raw)
        kind = str(message["X-Casetrail-Kind"])
        if kind in SUBJECTS and message["To"] != "zoë@exämple.org":
            assert str(message["Subject"]) == SUBJECTS[kind], kind


async def test_a_digest_of_fifty_four_hostile_items_is_well_formed(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        clock: FakeClock) -> None:
    """A case manager on a daily digest, 54 small wins from a hostile record: one message,
    counted in its Subject, every item in both parts, the HTML escaped, no line over 998."""
    await rig.set_prefs("cm-1", token(), delivery="daily_digest")
    case = await records.open_case(participant={"name": NAME, "preferred_name": PREFERRED,
                                                "email": "zoe@example.org"})
    for g in range(3):
        goal = await records.goal(case, f"{TITLE} {g}", WORDS)
        for s in range(18):
            step = await records.step(case, goal, f"{s} {STEP}")
            await records.complete(case, step, NOTE)
    await rig.catch_up()
    await rig.dispatch()
    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    await rig.notifier.dispatcher.send_digests()
    [raw] = smtp.raw
    message = check_headers(raw)
    assert str(message["Subject"]) == "Your Casetrail summary: 54 updates"
    text, page = parts(message)
    found = markup(page)
    assert {tag for tag, _ in found.tags} <= TAGS
    assert {n for _, a in found.tags for n, _ in a} <= ATTRIBUTES
    assert sum(1 for tag, _ in found.tags if tag == "li") == 54
    assert one_line(text).count(f"A small win for {as_written(one_line(PREFERRED))}") == 54
    shown = one_line("".join(found.text))
    assert shown.count(one_line(f"A small win for {PREFERRED}")) == 54
    assert shown.count(one_line(WORDS)) == one_line(text).count(one_line(WORDS)) >= 54


def test_a_value_holding_a_bidi_override_is_isolated_in_the_text_part() -> None:
    """A name holding U+202E reversed the rest of the plain-text sentence and the Subject
    (the HTML part's dir="auto" contained it already): the text part sets such a value in
    an isolate (FSI…PDI), which ends the override; other values are left as they are."""
    steering = "Zo\u202eë"
    text = _as_text(f"a quick check-in with {_mark(steering)} and {_mark('Sam')} can help")
    assert text == "a quick check-in with \u2068Zo\u202eë\u2069 and Sam can help"
