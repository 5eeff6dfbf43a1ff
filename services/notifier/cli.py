"""Entry points for `casetrail notifier`, `casetrail mail` and the notifier part of
`casetrail dev` (wired in services/cli.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from services.common.logs import configure_logging
from services.common.server import ServiceRunner, http_url, listening, serve
from services.notifier.http.app import NOTIFIER, create_app
from services.notifier.mailbox import MailCatcher, format_listing
from services.notifier.settings import NotifierSettings
from services.notifier.store import directory
from services.notifier.store.directory import Preferences


def run_notifier(settings: NotifierSettings | None = None, *, host: str | None = None,
                 port: int | None = None) -> int:
    """`casetrail notifier [--host H] [--port P]`: the notifier alone, configured from the
    environment (DATABASE_URL, RECORDS_URL, RECORDS_TOKEN_FILE, RECORDS_TOKEN or
    CASETRAIL_JWT_SECRET, SMTP_*)."""
    settings = settings or NotifierSettings()
    if not settings.database_url:
        print("casetrail: set DATABASE_URL", file=sys.stderr)
        return 2
    if not (settings.jwt_secret or settings.jwt_public_key_file or settings.jwks_file):
        print("casetrail: set CASETRAIL_JWT_SECRET, CASETRAIL_JWT_PUBLIC_KEY_FILE or"
              " CASETRAIL_JWKS_FILE", file=sys.stderr)
        return 2
    if not (settings.records_token_file or settings.records_token or settings.jwt_secret):
        print("casetrail: set RECORDS_TOKEN_FILE or RECORDS_TOKEN (a service token), or"
              " CASETRAIL_JWT_SECRET", file=sys.stderr)
        return 2
    if settings.records_token_file and not settings.records_token_file.is_file():
        print(f"casetrail: RECORDS_TOKEN_FILE {settings.records_token_file} is not a file",
              file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    serve(create_app(settings), host=host or settings.host,
          port=settings.port if port is None else port, choose="--port, or NOTIFIER_PORT")
    return 0


def print_caught_mail(folder: Path) -> int:
    """`casetrail mail [--dir D]`: list what the development mail catcher caught."""
    print(format_listing(folder))
    return 0


@dataclass
class DevNotifier:
    """The notifier and a mail catcher running in the current event loop."""

    runner: web.AppRunner
    catcher: MailCatcher
    url: str

    @property
    def mail_dir(self) -> Path:
        return self.catcher.folder

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.catcher.stop()


async def start_dev_notifier(*, database_url: str, jwt_secret: str, records_url: str,
                             mail_dir: Path, link_secret_file: Path,
                             host: str = "127.0.0.1", port: int = 8081,
                             smtp_port: int = 1025,
                             recipients: Sequence[tuple[str, str, str]] = ()) -> DevNotifier:
    """For `casetrail dev`: a local SMTP catcher writing .eml files into ``mail_dir`` and the
    notifier (reading the feed at ``records_url``) sending to it; mail is listed at /mail.

    ``recipients``: (agency, user, role) given a development address ``<user>@casetrail.local``
    so the demo's notices have somewhere to go. A participant's mail carries an unsubscribe
    link to this notifier, signed with ``link_secret_file``, as in production.
    """
    catcher = MailCatcher(mail_dir, host, smtp_port)
    async with AsyncExitStack() as started:  # a later start failing stops what had started
        await listening(catcher.start(), "--smtp-port, or SMTP_PORT")
        started.push_async_callback(catcher.stop)
        settings = NotifierSettings.for_mail_catcher({
            "DATABASE_URL": database_url, "CASETRAIL_JWT_SECRET": jwt_secret,
            "RECORDS_URL": records_url, "SMTP_HOST": host, "SMTP_PORT": smtp_port,
            "NOTIFIER_HOST": host, "NOTIFIER_PORT": port,
            "NOTIFIER_PUBLIC_URL": http_url(host, port),
            "NOTIFIER_LINK_SECRET_FILE": str(link_secret_file),
            "NOTIFIER_DEV_MAIL_DIR": str(mail_dir)})
        runner = ServiceRunner(create_app(settings))
        await runner.setup()
        started.push_async_callback(runner.cleanup)
        context = runner.app[NOTIFIER]
        for agency, user, role in recipients:
            await directory.upsert(context.pool, Preferences(
                agency, user, role, f"{user}@casetrail.local", "immediate", "UTC", None, None,
                True), "casetrail-dev", context.clock())
        await listening(web.TCPSite(runner, host, port).start(),
                        "--notifier-port, or NOTIFIER_PORT")
        started.pop_all()
    return DevNotifier(runner, catcher, http_url(host, port))
