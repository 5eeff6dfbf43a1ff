"""Development mail: an SMTP catcher (aiosmtpd, in this event loop) that writes each message
as an .eml file, and readers that list and show what it caught."""

from __future__ import annotations

import asyncio
import html
import itertools
import logging
import re
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

_EML_NAME = re.compile(r"^[0-9]{10,20}-[0-9]{1,9}\.eml$")


class _SaveToFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._counter = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}-{next(self._counter)}.eml"
        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        (self.folder / name).write_bytes(data)
        return "250 Message accepted for delivery"


class MailCatcher:
    """Accepts every message on ``host:port`` and saves it in ``folder``."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 1025) -> None:
        self.folder = folder
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        # aiosmtpd narrates every SMTP command at INFO; the .eml files already tell the story
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.folder.mkdir(parents=True, exist_ok=True)
        handler = _SaveToFolder(self.folder)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="casetrail-mail-catcher"), self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@dataclass(frozen=True)
class CaughtMail:
    file: str
    to: str
    subject: str
    date: str
    message_id: str


def list_caught(folder: Path) -> list[CaughtMail]:
    """Newest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.eml"), reverse=True):
        with path.open("rb") as handle:
            headers = BytesHeaderParser().parse(handle)
        found.append(CaughtMail(path.name, str(headers.get("To", "")),
                                str(headers.get("Subject", "")), str(headers.get("Date", "")),
                                str(headers.get("Message-ID", ""))))
    return found


def _caught_file(folder: Path, name: str) -> Path | None:
    """The caught message ``name``; None for a name the catcher never writes, or none there."""
    path = folder / name
    return path if _EML_NAME.match(name) and path.is_file() else None


def read_caught(folder: Path, name: str) -> str | None:
    path = _caught_file(folder, name)
    return path.read_text(encoding="utf-8", errors="replace") if path else None


def html_message(folder: Path, name: str) -> str | None:
    """One caught message as a person reads it: its headers, the HTML part (in a sandboxed
    frame) and the text part; a link to the raw .eml beside."""
    path = _caught_file(folder, name)
    if path is None:
        return None
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)  # what policy.default parses into
    heads = "".join(f"<tr><th>{field}</th><td>{html.escape(str(message.get(field, '')))}</td></tr>"
                    for field in ("From", "To", "Subject", "Date", "Message-ID"))
    text, page = _readable(message.get_body(("plain",))), _readable(message.get_body(("html",)))
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(str(message.get('Subject', '')))}</title></head><body>"
            f"<p><a href='/mail'>All caught mail</a> · <a href='/mail?file={html.escape(name)}"
            f"&amp;raw=1'>raw message</a></p><table>{heads}</table>"
            f"<h2>As HTML</h2><iframe sandbox style='width:100%;height:24em'"
            f" srcdoc='{html.escape(page, quote=True)}'></iframe>"
            f"<h2>As text</h2><pre>{html.escape(text)}</pre></body></html>")


def _readable(part: MIMEPart | None) -> str:
    """A text part as text. The catcher takes any mail, so a charset Python does not know
    (``x-unknown``) is read as UTF-8, unreadable bytes replaced: the page once answered 500."""
    if part is None:
        return ""
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""


def format_listing(folder: Path) -> str:
    """The text `casetrail mail` prints."""
    caught = list_caught(folder)
    if not caught:
        return f"No mail caught yet in {folder}."
    lines = [f"{len(caught)} message(s) in {folder} (newest first):"]
    lines += [f"  {m.date:<32}  {m.to:<28}  {m.subject}\n    {folder / m.file}" for m in caught]
    return "\n".join(lines)


def html_index(folder: Path) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(m.date)}</td><td>{html.escape(m.to)}</td>"
        f"<td><a href='/mail?file={html.escape(m.file)}'>{html.escape(m.subject)}</a></td></tr>"
        for m in list_caught(folder))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Caught mail</title></head>"
            f"<body><h1>Mail caught in development</h1><p>Folder: {html.escape(str(folder))}"
            "</p><table><tr><th>Date</th><th>To</th><th>Subject</th></tr>"
            f"{rows}</table></body></html>")
