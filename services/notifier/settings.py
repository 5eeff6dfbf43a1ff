"""The notifier's configuration, from environment variables (flags of `casetrail notifier`
override host and port)."""

from __future__ import annotations

from datetime import time
from email.utils import parseaddr
from pathlib import Path
from string import Formatter
from typing import Annotated, TypeAlias
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from schemas.events import TimeZoneName
from services.common.database import COMMAND_TIMEOUT_SECONDS
from services.common.settings import ServiceSettings


def _plan_url(value: str) -> str:
    """An absolute http(s) address with ``{case_id}`` once and nothing else to fill in, so
    every staff email gets a link that opens (checked at start, like the time zone)."""
    try:
        fields = [f for _, f, _, _ in Formatter().parse(value) if f is not None]
    except ValueError as error:
        raise ValueError(f"NOTIFIER_PLAN_URL: {error}") from error
    parts = urlsplit(value)
    if fields != ["case_id"] or parts.scheme not in ("http", "https") or not parts.netloc \
            or any(c.isspace() or c in "\"'`" for c in value):
        raise ValueError("NOTIFIER_PLAN_URL must be an http(s) address holding {case_id} once,"
                         " e.g. https://casetrail.example.org/cases/{case_id}")
    return value


PlanUrl: TypeAlias = Annotated[str, Field(max_length=500), AfterValidator(_plan_url)]


def _sender(value: str) -> str:
    """A From header whose address can be the envelope sender: checked at start, since with
    an unquoted comma in the name, or no address at all, every send failed and was retried
    into a dead letter."""
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not (at and local and domain and "@" not in local and address.isascii()
            and not any(c.isspace() for c in address)):
        raise ValueError("NOTIFIER_FROM must be an address, with a name or not, e.g."
                         ' notices@example.org or "Casetrail, North" <notices@example.org>'
                         " (quote a name holding a comma; the address in ASCII)")
    return value


Sender: TypeAlias = Annotated[str, Field(max_length=500), AfterValidator(_sender)]


class NotifierSettings(ServiceSettings):
    max_body_bytes: int = Field(default=64 * 1024, alias="CASETRAIL_MAX_BODY_BYTES")

    records_url: str = Field(default="http://127.0.0.1:8080", alias="RECORDS_URL")
    records_token: str | None = Field(default=None, alias="RECORDS_TOKEN")
    records_token_file: Path | None = Field(default=None, alias="RECORDS_TOKEN_FILE")
    host: str = Field(default="127.0.0.1", alias="NOTIFIER_HOST")
    port: int = Field(default=8081, alias="NOTIFIER_PORT")
    db_pool_max: int = Field(default=10, alias="NOTIFIER_DB_POOL_MAX")
    # seconds a statement may go unanswered before it fails (503): see create_pool
    db_command_timeout: float = Field(default=COMMAND_TIMEOUT_SECONDS, gt=0,
                                      alias="NOTIFIER_DB_COMMAND_TIMEOUT")

    smtp_host: str = Field(default="127.0.0.1", alias="SMTP_HOST")
    smtp_port: int = Field(default=1025, alias="SMTP_PORT")
    smtp_username: str | None = Field(default=None, alias="SMTP_USERNAME")
    smtp_password: str | None = Field(default=None, alias="SMTP_PASSWORD")
    smtp_starttls: bool = Field(default=False, alias="SMTP_STARTTLS")
    smtp_timeout_seconds: float = Field(default=10.0, alias="SMTP_TIMEOUT")
    mail_from: Sender = Field(default="Casetrail <notices@casetrail.local>",
                              alias="NOTIFIER_FROM")
    message_id_domain: str = Field(default="casetrail.local", alias="NOTIFIER_MESSAGE_ID_DOMAIN")

    feed_page_size: int = Field(default=200, ge=1, le=1000, alias="NOTIFIER_FEED_PAGE_SIZE")
    feed_wait_seconds: float = Field(default=25.0, ge=0, le=60, alias="NOTIFIER_FEED_WAIT")

    reminder_days_before: int = Field(default=3, ge=1, le=60, alias="NOTIFIER_REMINDER_DAYS")
    # at least a day: with 0 the review was "not yet recorded" and the step "had" its date at
    # 09:00 on the very day, in the same minute as "due today"
    overdue_grace_days: int = Field(default=2, ge=1, le=60, alias="NOTIFIER_OVERDUE_GRACE_DAYS")
    nudge_days_after: int = Field(default=1, ge=1, le=60, alias="NOTIFIER_NUDGE_DAYS_AFTER")
    send_time: time = Field(default=time(9, 0), alias="NOTIFIER_SEND_TIME")
    # checked at start: with a name no zone has, every dated rule fails and its events are
    # skipped past the checkpoint for good
    timezone: TimeZoneName = Field(default="UTC", alias="NOTIFIER_TIMEZONE")
    digest_time: time = Field(default=time(8, 0), alias="NOTIFIER_DIGEST_TIME")
    stale_after_hours: float = Field(default=72.0, gt=0, alias="NOTIFIER_STALE_AFTER_HOURS")

    dispatch_interval_seconds: float = Field(default=1.0, gt=0, alias="NOTIFIER_DISPATCH_INTERVAL")
    dispatch_batch: int = Field(default=100, ge=1, le=1000, alias="NOTIFIER_DISPATCH_BATCH")
    dispatch_concurrency: int = Field(default=8, ge=1, le=64, alias="NOTIFIER_SMTP_CONNECTIONS")
    lease_seconds: float = Field(default=120.0, gt=0, alias="NOTIFIER_LEASE_SECONDS")
    # unset: no count, the horizon alone ends the retries (8 attempts from 30 s used to give
    # up after about an hour of an outage, long before the 24 h horizon)
    retry_attempts: int | None = Field(default=None, ge=1, le=1000,
                                       alias="NOTIFIER_RETRY_ATTEMPTS")
    retry_base_seconds: float = Field(default=30.0, ge=0, alias="NOTIFIER_RETRY_BASE_SECONDS")
    retry_max_seconds: float = Field(default=3600.0, ge=0, alias="NOTIFIER_RETRY_MAX_SECONDS")
    retry_horizon_seconds: float = Field(default=24 * 3600.0, gt=0,
                                         alias="NOTIFIER_RETRY_HORIZON_SECONDS")

    # where staff open a case's plan (their records UI); unset: mail names the case id only
    plan_url: PlanUrl | None = Field(default=None, alias="NOTIFIER_PLAN_URL")

    mail_dir: Path | None = Field(default=None, alias="NOTIFIER_DEV_MAIL_DIR")
