"""The ``casetrail`` command line: run the services, migrate, issue development tokens, verify
exports."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack, suppress
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from pydantic import ValidationError

from services.common.auth import (
    NAMED_CASES_ROLES,
    AuthError,
    Role,
    check_secret,
    dev_secret,
    dev_secret_file,
    expected_claims,
    identity,
    issue_token,
)
from services.common.database import COMMAND_TIMEOUT_SECONDS, MigrationError
from services.common.logs import configure_logging
from services.common.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from services.notifier.cli import DevNotifier


def dev_export_key(dev_dir: Path) -> Path:
    """The development export-signing key, made on first use (public key beside it, .pub)."""
    from services.records.export.signing import write_key_pair

    path = dev_dir / "export-signing-key.pem"
    if not path.exists():
        write_key_pair(path)
    return path


def dev_link_secret(dev_dir: Path) -> Path:
    """The development secret signing the unsubscribe links in participants' mail."""
    return dev_secret_file(dev_dir, "link-secret", 48)


def _fail(message: str) -> int:
    print(f"casetrail: {message}", file=sys.stderr)
    return 2


def _jwt_secret(settings: Settings) -> str | None:
    if settings.jwt_secret:
        return settings.jwt_secret
    local = settings.dev_data_dir / "jwt-secret"
    return local.read_text().strip() if local.exists() else None


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    secret = _jwt_secret(settings)
    if not secret:
        return _fail("set CASETRAIL_JWT_SECRET (or run `casetrail dev` once to make a dev secret)")
    check_secret(secret)  # the services would refuse every token it signs
    if refusal := _identity_refusal(args):
        return _fail(refusal)
    cases = [c for c in (args.cases or "").split(",") if c]
    try:
        window_from = _window_bound(args.window_from, "--window-from", end_of_day=False)
        window_to = _window_bound(args.window_to, "--window-to", end_of_day=True)
    except ValueError as error:
        return _fail(str(error))
    if (window_from or window_to) and args.role != Role.AUDITOR:
        return _fail("--window-from/--window-to scope auditor tokens; use --role auditor")
    if args.role == Role.AUDITOR and not (window_from or window_to):
        return _fail("an auditor sees a stretch of the record: give --window-from,"
                     " --window-to or both (a --window-to of today covers it all so far)")
    if window_from and window_to and window_from > window_to:
        return _fail("--window-from must not be later than --window-to")
    if refusal := _cases_refusal(Role(args.role), cases):
        return _fail(refusal)
    try:
        token = issue_token(secret, sub=args.sub, role=args.role, agency=args.agency,
                            cases=cases, ttl_seconds=args.ttl, window_from=window_from,
                            window_to=window_to, extra=expected_claims(settings))
    except ValueError as error:
        return _fail(f"bad --cases or --role: {error}")
    print(token)
    return 0


def _identity_refusal(args: argparse.Namespace) -> str | None:
    """Why the services would refuse a token with this --sub or --agency (they answer 401)."""
    for name in ("sub", "agency"):
        try:
            identity(vars(args), name)
        except AuthError as error:
            return f"--{error}"
    return None


def _cases_refusal(role: Role, cases: list[str]) -> str | None:
    """A participant or auditor token naming no case reads nothing; another role's token
    reaches cases by its role and agency, and ignores any it names."""
    if role in NAMED_CASES_ROLES and not cases:
        return f"{role} tokens reach only the cases they name: give --cases ID[,ID…]"
    if cases and role not in NAMED_CASES_ROLES:
        return "--cases names the cases of participant and auditor tokens; other roles reach" \
               " cases through their role and agency"
    return None


def _window_bound(raw: str | None, flag: str, *, end_of_day: bool) -> datetime | None:
    """An RFC 3339 date-time with a time zone, or a date: a --window-from date starts at its
    midnight (UTC), a --window-to date runs to the end of that day."""
    if raw is None:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time(), UTC)
        return start + timedelta(days=1, microseconds=-1) if end_of_day else start
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as error:
        raise ValueError(f"{flag} must be an RFC 3339 date or date-time, got {raw!r}") \
            from error
    if moment.tzinfo is None:
        raise ValueError(f"{flag} needs a time zone, such as 2026-03-01T09:00:00Z")
    return moment.astimezone(UTC)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from services.notifier.http.app import migrate as migrate_notifier
    from services.records.http.app import migrate

    if not settings.database_url:
        return _fail("set DATABASE_URL")
    applied = asyncio.run(migrate(settings.database_url))
    applied += asyncio.run(migrate_notifier(settings.database_url))
    print("applied: " + (", ".join(applied) if applied else "nothing, already current"))
    return 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from services.records.http.app import rebuild_projections
    from services.records.projections.rebuild import NothingRebuilt

    if not settings.database_url:
        return _fail("set DATABASE_URL")
    told: set[str] = set()

    def waiting(why: str) -> None:
        if why not in told:
            told.add(why)
            print(f"casetrail: {why}", file=sys.stderr)

    try:
        stats = asyncio.run(rebuild_projections(settings.database_url, on_wait=waiting,
                                                lock_timeout=args.lock_timeout))
    except NothingRebuilt as error:
        return _fail(f"nothing rebuilt: {error}")
    except KeyboardInterrupt:
        # the live projections change only in the rebuild's last transaction: an interrupt
        # leaves nothing half-rebuilt, but one arriving just after its commit cannot be told
        # apart from one before it
        print("casetrail: interrupted: the projections are as they were, or fully rebuilt"
              " if it had just finished, never half; run rebuild-projections again to be"
              " sure", file=sys.stderr)
        return 130
    print(f"rebuilt {stats.cases} cases from {stats.events} events")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Offline, on a machine that runs no Casetrail service: reads no service settings."""
    from services.records.export.signing import load_public_key
    from services.records.export.verify import MalformedExport, summary, verify_export

    try:
        trusted = load_public_key(Path(args.public_key)) if args.public_key else None
    except ConfigurationError as error:
        return _fail(str(error))
    try:
        with open(args.export, "rb") as export:
            report = verify_export(export, trusted)
    except OSError as error:
        return _fail(f"{args.export}: {error.strerror}")
    except MalformedExport as error:
        print(f"{args.export}: {error}\nNOT VERIFIED")
        return 1
    except MemoryError:
        # no line passes the verifier's bound (64 MiB), but JSON that long can hold more
        # values than a machine with limited memory can parse (a line of empty lists parses
        # to twenty times its size): what a file holds ends in a message, not a traceback
        print(f"{args.export}: the memory ran out reading it as an export (a line holds"
              " more values than this machine can hold)\nNOT VERIFIED")
        return 1
    print("\n".join(summary(report)))
    return 0 if report.ok else 1


def cmd_records(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.server import serve
    from services.records.http.app import create_app

    if not settings.database_url:
        return _fail("set DATABASE_URL (or use `casetrail dev`, which starts its own database)")
    if not _jwt_secret(settings) and not (settings.jwt_public_key_file or settings.jwks_file):
        return _fail("set CASETRAIL_JWT_SECRET, CASETRAIL_JWT_PUBLIC_KEY_FILE or"
                     " CASETRAIL_JWKS_FILE")
    configure_logging(settings.log_level)
    serve(create_app(settings), host=args.host or settings.records_host,
          port=settings.records_port if args.port is None else args.port,
          choose="--port, or RECORDS_PORT", reuse_port=args.reuse_port or None)
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.database import embedded_postgres
    from services.notifier.settings import NotifierPorts

    configure_logging(settings.log_level, json_output=False)
    secret = settings.jwt_secret or dev_secret(settings.dev_data_dir)
    export_key = settings.export_signing_key_file or dev_export_key(settings.dev_data_dir)
    with ExitStack() as stack:
        database_url = settings.database_url
        if not database_url:
            print("DATABASE_URL is not set: starting an embedded PostgreSQL in "
                  f"{settings.dev_data_dir / 'pgdata'}", flush=True)
            database_url = stack.enter_context(
                embedded_postgres(settings.dev_data_dir / "pgdata"))
        dev_settings = settings.model_copy(update={"database_url": database_url,
                                                   "jwt_secret": secret,
                                                   "export_signing_key_file": export_key})
        notifier = NotifierPorts()
        with suppress(KeyboardInterrupt):
            asyncio.run(_run_dev(
                dev_settings, args.host,
                settings.records_port if args.port is None else args.port,
                notifier.port if args.notifier_port is None else args.notifier_port,
                notifier.smtp_port if args.smtp_port is None else args.smtp_port))
    return 0


async def _run_dev(settings: Settings, host: str, port: int, notifier_port: int,
                   smtp_port: int) -> None:
    from aiohttp import web

    from services.common.server import ServiceRunner, host_and_port, http_url, listening
    from services.notifier.cli import start_dev_notifier
    from services.records.demo import load_demo
    from services.records.http.app import RECORDS, create_app
    from services.records.store.events import utc_now

    assert settings.database_url
    assert settings.jwt_secret
    # asked for before the banner says how to stop: a `kill` right after it stops cleanly too
    stop = _stop_requested()
    async with AsyncExitStack() as started:  # closed in reverse: the notifier, then records
        app = create_app(settings)
        runner = ServiceRunner(app)
        await runner.setup()
        started.push_async_callback(runner.cleanup)
        await listening(web.TCPSite(runner, host, port).start(), "--port, or RECORDS_PORT")
        records_url = http_url(host, port)
        # the notifier first: it sends only what falls due once its schema exists (demo too)
        notifier = await start_dev_notifier(
            database_url=settings.database_url, jwt_secret=settings.jwt_secret,
            records_url=records_url, mail_dir=settings.dev_data_dir / "mail",
            link_secret_file=dev_link_secret(settings.dev_data_dir),
            host=host, port=notifier_port, smtp_port=smtp_port,
            recipients=[("demo-agency", "cm-demo", "case_manager"),
                        ("demo-agency", "sup-demo", "supervisor")])
        started.push_async_callback(notifier.stop)
        if await load_demo(app[RECORDS].commands, utc_now):
            print("Loaded the demo caseload (agency demo-agency, case manager cm-demo).")
        print(_banner(settings, records_url, notifier,
                      host_and_port(host, smtp_port)), flush=True)
        try:
            await stop.wait()
        finally:
            print("Stopping…", flush=True)


def _banner(settings: Settings, records: str, notifier: DevNotifier, smtp: str) -> str:
    assert settings.jwt_secret
    claims = expected_claims(settings)
    token = issue_token(settings.jwt_secret, sub="cm-demo", role=Role.CASE_MANAGER,
                        agency="demo-agency", extra=claims)
    supervisor = issue_token(settings.jwt_secret, sub="sup-demo", role=Role.SUPERVISOR,
                             agency="demo-agency", extra=claims)
    return f"""
Casetrail is running.
  records   {records}      (API list: {records}/docs)
  notifier  {notifier.url}      (notifications: {notifier.url}/v1/notifications)
  mail      {notifier.url}/mail   caught by a local SMTP server on {smtp};
            .eml files in {notifier.mail_dir}  (or run `casetrail mail`)
  database  {settings.database_url}

Development token (case manager cm-demo, agency demo-agency):
  export TOKEN={token}
Supervisor token (sup-demo):
  export SUPERVISOR_TOKEN={supervisor}
Exports are signed with {settings.export_signing_key_file}; check one with
  casetrail verify EXPORT --public-key {settings.export_signing_key_file}.pub
Try:  curl -s -H "Authorization: Bearer $TOKEN" {records}/v1/cases
Stop with Ctrl-C.
"""


def _stop_requested() -> asyncio.Event:
    """Set on SIGTERM or SIGHUP (a `kill`, a closed terminal); Ctrl-C cancels the wait. Either
    way the caller stops the services and then the embedded PostgreSQL, which would otherwise
    outlive `casetrail dev`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            with suppress(NotImplementedError):  # no signal handlers on Windows' loop
                loop.add_signal_handler(getattr(signal, name), stop.set)
    return stop


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.generate import OPENAPI_FILE, openapi_drift, write_openapi
    from services.records.http import routes  # noqa: F401  (registers the case routes)
    from services.records.http.app import api

    document = api.openapi()
    if args.check:
        problems = openapi_drift(document, OPENAPI_FILE)
        for line in problems:
            print(f"{line}; run `casetrail openapi` and commit it", file=sys.stderr)
        return 1 if problems else 0
    try:
        changed = write_openapi(document, OPENAPI_FILE)
    except OSError as error:  # an installed package (a read-only image) is not a checkout
        return _fail(f"cannot write {OPENAPI_FILE}: {error.strerror}; run it in a checkout,"
                     " or serve the document at /openapi.json")
    print(f"{OPENAPI_FILE} {'written' if changed else 'up to date'}")
    return 0


def _positive_seconds(text: str) -> int:
    seconds = int(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


# A day: far longer than any session the rebuild should wait for, and well inside what
# PostgreSQL's lock_timeout takes (2147483647 ms, about 24.8 days), which refuses more.
LOCK_TIMEOUT_MAX_SECONDS = 86_400


def _lock_timeout_seconds(text: str) -> int:
    seconds = _positive_seconds(text)
    if seconds > LOCK_TIMEOUT_MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be at most {LOCK_TIMEOUT_MAX_SECONDS} seconds (a day)")
    return seconds


def _port(text: str, least: int) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not least <= port <= 65535:  # a larger one was taken modulo 65536
        raise argparse.ArgumentTypeError(f"a port is {least} to 65535, not {port}")
    return port


def _any_port(text: str) -> int:
    """A service's own port: 0 lets the system choose one."""
    return _port(text, 0)


def _named_port(text: str) -> int:
    """A port ``casetrail dev`` also names in the URLs it gives the services: not 0."""
    return _port(text, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casetrail", description="Casetrail: run the services, migrate, issue development"
                                      " tokens, verify exports.")
    parser.set_defaults(connects=False, reads_settings=True)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything locally (embedded PostgreSQL if needed)")
    dev.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    dev.add_argument("--port", type=_named_port, help="records service port (RECORDS_PORT, 8080)")
    dev.add_argument("--notifier-port", type=_named_port,
                     help="notifier port (NOTIFIER_PORT, 8081)")
    dev.add_argument("--smtp-port", type=_named_port,
                     help="local mail catcher port (SMTP_PORT, 1025)")
    dev.set_defaults(run=cmd_dev, connects=True)

    records = sub.add_parser("records", help="run the records service")
    records.add_argument("--host", help="the address to listen on (RECORDS_HOST)")
    records.add_argument("--port", type=_any_port,
                         help="the port to listen on (RECORDS_PORT, 8080)")
    records.add_argument("--reuse-port", action="store_true",
                         help="let several records processes listen on this port (Linux"
                              " SO_REUSEPORT), so they share the machine's cores")
    records.set_defaults(run=cmd_records, connects=True)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(run=cmd_migrate, connects=True)

    rebuild = sub.add_parser("rebuild-projections", help="recompute read models from events")
    rebuild.add_argument("--lock-timeout", type=_lock_timeout_seconds, metavar="SECONDS",
                         default=int(COMMAND_TIMEOUT_SECONDS),
                         help="how long to wait for a table another session holds locked"
                              " before stopping, having changed nothing (default"
                              " %(default)s, whatever CASETRAIL_DB_COMMAND_TIMEOUT says; at"
                              f" most {LOCK_TIMEOUT_MAX_SECONDS}, a day)")
    rebuild.set_defaults(run=cmd_rebuild, connects=True)

    openapi = sub.add_parser("openapi", help="write schemas/openapi.json from the records routes")
    openapi.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    openapi.set_defaults(run=cmd_openapi)

    token = sub.add_parser("token", help="print a development token (HS256)")
    token.add_argument("--sub", required=True, help="the user id the token is for")
    token.add_argument("--role", required=True, choices=[r.value for r in Role],
                       help="what the user may do (see README: Tokens, roles and tenancy)")
    token.add_argument("--agency", required=True, help="the agency whose cases it reaches")
    token.add_argument("--cases", help="comma-separated case ids: required for participant"
                       " and auditor tokens, which reach only the cases they name")
    token.add_argument("--ttl", type=_positive_seconds, default=8 * 3600,
                       help="lifetime in seconds (default 28800: 8 hours)")
    token.add_argument("--window-from", help="auditor: first moment of the record they see"
                       " (RFC 3339 date or date-time with a time zone)")
    token.add_argument("--window-to", help="auditor: last moment of the record they see"
                       " (a date means through the end of that day, UTC)")
    token.set_defaults(run=cmd_token)

    notifier = sub.add_parser("notifier", help="run the notifier service")
    notifier.add_argument("--host", help="the address to listen on (NOTIFIER_HOST)")
    notifier.add_argument("--port", type=_any_port,
                          help="the port to listen on (NOTIFIER_PORT, 8081)")
    notifier.set_defaults(run=cmd_notifier, connects=True)

    verify = sub.add_parser("verify", help="check a signed export offline: its digest, its"
                            " signature and the hash chain of its events (exit 0: verified)")
    verify.add_argument("export", metavar="EXPORT",
                        help="the export file (JSON Lines, CSV, PDF or FHIR)")
    verify.add_argument("--public-key", metavar="FILE",
                        help="the agency's Ed25519 public key (PEM) the signature must match")
    # offline, on a court's machine that runs no Casetrail service
    verify.set_defaults(run=cmd_verify, reads_settings=False)

    mail = sub.add_parser("mail", help="list the mail the development catcher caught")
    mail.add_argument("--dir", help="the catcher's folder (default: <CASETRAIL_DEV_DIR>/mail)")
    mail.set_defaults(run=cmd_mail)
    return parser


def cmd_notifier(args: argparse.Namespace, settings: Settings) -> int:
    from services.notifier.cli import run_notifier
    from services.notifier.settings import NotifierSettings

    notifier_settings = NotifierSettings()
    if not notifier_settings.jwt_secret and (secret := _jwt_secret(settings)):
        notifier_settings = notifier_settings.model_copy(update={"jwt_secret": secret})
    return run_notifier(notifier_settings, host=args.host, port=args.port)


def cmd_mail(args: argparse.Namespace, settings: Settings) -> int:
    from services.notifier.cli import print_caught_mail

    return print_caught_mail(Path(args.dir) if args.dir else settings.dev_data_dir / "mail")


# what a shell reports for a command a closed pipe stopped (128 + SIGPIPE), as `yes | head`
EXIT_PIPE_CLOSED = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that stops early (`casetrail mail | head`) ends it quietly."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe prints a traceback
    except BrokenPipeError:
        # nothing more can be said to the reader; the output left in the buffer must not be
        # flushed at exit into the closed pipe either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.reads_settings:
        offline: Callable[[argparse.Namespace], int] = args.run
        return offline(args)
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    try:
        return run(args, Settings())
    except ValidationError as error:
        return _fail(f"configuration: {_one_line(error)}")
    except ConfigurationError as error:
        return _fail(f"configuration: {error}")
    except MigrationError as error:
        return _fail(f"migrations: {error}")
    except (OSError, asyncpg.PostgresError) as error:
        if not args.connects:
            raise
        # the database unreachable or refusing us, the port taken: said in one line, not a
        # traceback an operator must read from the bottom up
        return _fail(f"could not start: {error}{_port_hint(error)}")


def _port_hint(error: Exception) -> str:
    from services.common.server import PortTaken

    return f" (choose another port with {error.choose})" if isinstance(error, PortTaken) else ""


_SECRET_SETTING = re.compile(r"SECRET|PASSWORD|TOKEN|KEY|URL|DSN", re.IGNORECASE)


def _one_line(error: ValidationError) -> str:
    """Each setting that did not validate, by its variable's name, with the value given
    unless it may hold a secret (a database URL holds a password)."""
    def said(e: Any) -> str:
        name = ".".join(str(part) for part in e["loc"])
        given = "" if _SECRET_SETTING.search(name) else f" (given {e.get('input')!r})"
        return f"{name}: {e['msg']}{given}"
    return "; ".join(said(e) for e in error.errors(include_url=False))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
