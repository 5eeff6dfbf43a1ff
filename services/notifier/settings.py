"""The notifier's configuration, from environment variables (flags of `casetrail notifier`
override host and port)."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import time
from email.utils import parseaddr
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, TypeAlias
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings

from schemas.events import TimeZoneName
from services.common.database import COMMAND_TIMEOUT_SECONDS
from services.common.settings import (
    A_DAY,
    AN_HOUR,
    SETTINGS_CONFIG,
    ServiceSettings,
    blank_is_unset,
)
from services.notifier.links import read_secret


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


def _public_url(value: str) -> str:
    """An absolute http(s) base address, with no query or fragment for the link's path to
    land in: checked at start, so that no participant is mailed a link that cannot open."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
            or parts.fragment or not value.isascii() \
            or any(c.isspace() or c in "\"'`<>{}" for c in value):
        raise ValueError("NOTIFIER_PUBLIC_URL must be the http(s) address a participant's"
                         " browser reaches this notifier at, without a query, e.g."
                         " https://notices.agency.example")
    return value.rstrip("/")


PublicUrl: TypeAlias = Annotated[str, Field(max_length=200), AfterValidator(_public_url)]


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


def smtp_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """How the mail server's certificate is checked, always (there is no setting to skip it):
    it must be signed by an authority trusted here and name the host. Trusted: the
    authorities in ``ca_file`` alone when given (a private authority), else the system's."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError:
        raise ValueError(f"{ca_file} holds no certificate in PEM") from None
    except OSError as error:
        raise ValueError(f"{ca_file} cannot be read ({error.strerror})") from None
    if ca_file is not None and not context.cert_store_stats()["x509"]:
        raise ValueError(f"{ca_file} holds no certificate in PEM")
    return context


def on_this_host(host: str) -> bool:
    """A loopback address, or the name ``localhost`` (RFC 6761 keeps it on loopback)."""
    if host.lower().removesuffix(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NotifierPorts(BaseSettings):
    """The notifier's port and its mail server's: all that `casetrail dev` takes from the
    environment for its notifier, whose mail server is its own catcher (no login, no TLS). A
    real mail server's settings there stopped dev at start (a password without TLS); its
    notifier's settings are made with `NotifierSettings.for_mail_catcher`."""

    model_config = SETTINGS_CONFIG

    port: int = Field(default=8081, ge=0, le=65535, alias="NOTIFIER_PORT")  # 0: any free port
    smtp_port: int = Field(default=1025, ge=1, le=65535, alias="SMTP_PORT")


class NotifierSettings(ServiceSettings, NotifierPorts):
    max_body_bytes: int = Field(default=64 * 1024, ge=1, alias="CASETRAIL_MAX_BODY_BYTES")

    records_url: str = Field(default="http://127.0.0.1:8080", alias="RECORDS_URL")
    records_token: str | None = Field(default=None, alias="RECORDS_TOKEN")
    records_token_file: Path | None = Field(default=None, alias="RECORDS_TOKEN_FILE")
    host: str = Field(default="127.0.0.1", alias="NOTIFIER_HOST")
    db_pool_max: int = Field(default=10, ge=1, alias="NOTIFIER_DB_POOL_MAX")
    # seconds a statement may go unanswered before it fails (503): see create_pool
    db_command_timeout: float = Field(default=COMMAND_TIMEOUT_SECONDS, gt=0, le=AN_HOUR,
                                      alias="NOTIFIER_DB_COMMAND_TIMEOUT")

    smtp_host: str = Field(default="127.0.0.1", alias="SMTP_HOST")
    # TLS from the first byte (SMTPS, usually port 465); SMTP_STARTTLS: upgrade a plain
    # connection (usually port 587) and fail if the server cannot
    smtp_tls: bool = Field(default=False, alias="SMTP_TLS")
    smtp_starttls: bool = Field(default=False, alias="SMTP_STARTTLS")
    # PEM bundle of the authorities to trust for the mail server; unset: the system's
    smtp_ca_file: Path | None = Field(default=None, alias="SMTP_CA_FILE")
    # after the TLS settings: their checks below read them
    smtp_username: str | None = Field(default=None, alias="SMTP_USERNAME")
    smtp_password: str | None = Field(default=None, alias="SMTP_PASSWORD",
                                      validate_default=True)
    # seconds each reply may take; checked at start: with 0 every connection timed out at once
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=AN_HOUR, alias="SMTP_TIMEOUT")
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
    stale_after_hours: float = Field(default=72.0, gt=0, le=366 * 24,
                                     alias="NOTIFIER_STALE_AFTER_HOURS")

    # Upper bounds on the durations below: past them a value is a mistake, and some (1e12)
    # overflowed the date arithmetic at every dispatch round after a start that said ready.
    dispatch_interval_seconds: float = Field(default=1.0, gt=0, le=AN_HOUR,
                                             alias="NOTIFIER_DISPATCH_INTERVAL")
    dispatch_batch: int = Field(default=100, ge=1, le=1000, alias="NOTIFIER_DISPATCH_BATCH")
    dispatch_concurrency: int = Field(default=8, ge=1, le=64, alias="NOTIFIER_SMTP_CONNECTIONS")
    lease_seconds: float = Field(default=120.0, gt=0, le=A_DAY, alias="NOTIFIER_LEASE_SECONDS")
    # unset: no count, the horizon alone ends the retries (8 attempts from 30 s used to give
    # up after about an hour of an outage, long before the 24 h horizon)
    retry_attempts: int | None = Field(default=None, ge=1, le=1000,
                                       alias="NOTIFIER_RETRY_ATTEMPTS")
    # at least a second: with 0 a failed notice was due again at once, and an outage became
    # hundreds of attempts a second, each recorded and logged, until the horizon
    retry_base_seconds: float = Field(default=30.0, ge=1, le=A_DAY,
                                      alias="NOTIFIER_RETRY_BASE_SECONDS")
    retry_max_seconds: float = Field(default=3600.0, ge=1, le=7 * A_DAY,
                                     alias="NOTIFIER_RETRY_MAX_SECONDS")
    retry_horizon_seconds: float = Field(default=24 * 3600.0, gt=0, le=30 * A_DAY,
                                         alias="NOTIFIER_RETRY_HORIZON_SECONDS")

    # where staff open a case's plan (their records UI); unset: mail names the case id only
    plan_url: PlanUrl | None = Field(default=None, alias="NOTIFIER_PLAN_URL")

    # signs the unsubscribe links in a participant's mail (read at start, at least 32 bytes)
    link_secret_file: Path | None = Field(default=None, alias="NOTIFIER_LINK_SECRET_FILE")
    # where a participant's browser reaches this notifier; unset: their mail has no
    # unsubscribe link (after the secret: its check below reads it)
    public_url: PublicUrl | None = Field(default=None, alias="NOTIFIER_PUBLIC_URL")

    mail_dir: Path | None = Field(default=None, alias="NOTIFIER_DEV_MAIL_DIR")

    @classmethod
    def for_mail_catcher(cls, values: dict[str, Any]) -> NotifierSettings:
        """The settings of `casetrail dev`'s notifier, whose mail server is its own catcher
        (``values`` give its host and port): a real mail server's TLS, login, bundle and
        timeout in the environment are not its own. They used to be taken for the catcher's:
        SMTP_TLS=true made every send to it fail, SMTP_CA_FILE stopped dev's start."""
        catcher = {str(f.alias): f.default for f in cls.model_fields.values()
                   if str(f.alias).startswith("SMTP_")}
        return cls.model_validate({**catcher, **values})

    # Checks of one setting against those above it (field validators, not a model validator:
    # an error then names that setting, and the CLI does not echo every setting's value).

    @field_validator("smtp_username", "smtp_password", mode="before")
    @classmethod
    def _blank_is_no_login(cls, value: Any) -> Any:
        # as a login it would be sent: empty strings for a server to refuse
        return blank_is_unset(value)

    @field_validator("smtp_starttls")
    @classmethod
    def _one_kind_of_tls(cls, starttls: bool, info: ValidationInfo) -> bool:
        if starttls and info.data.get("smtp_tls"):
            raise ValueError("SMTP_TLS and SMTP_STARTTLS are both true: set SMTP_TLS for a"
                             " server that speaks TLS from the first byte (usually port 465),"
                             " or SMTP_STARTTLS for one that upgrades a plain connection"
                             " (usually port 587), not both")
        return starttls

    @field_validator("smtp_ca_file")
    @classmethod
    def _usable_bundle_for_tls(cls, ca_file: Path | None,
                               info: ValidationInfo) -> Path | None:
        """Without TLS the bundle was ignored without a word: the operator believed the
        certificate checked against their authority while mail went in clear."""
        if ca_file is None:
            return None
        smtp_tls_context(ca_file)
        if not (info.data.get("smtp_tls") or info.data.get("smtp_starttls")):
            raise ValueError("SMTP_CA_FILE is set but neither SMTP_TLS nor SMTP_STARTTLS: mail"
                             " would go in clear and no certificate would be checked; set"
                             " SMTP_TLS=true (TLS from the first byte, port 465) or"
                             " SMTP_STARTTLS=true (port 587), or remove SMTP_CA_FILE")
        return ca_file

    @field_validator("link_secret_file")
    @classmethod
    def _usable_secret(cls, secret_file: Path | None) -> Path | None:
        if secret_file is not None:
            read_secret(secret_file)
        return secret_file

    @field_validator("public_url")
    @classmethod
    def _links_are_signed(cls, public_url: str | None, info: ValidationInfo) -> str | None:
        """A link with nothing to sign it would be refused when followed; a secret file that
        failed its own check has already said so (it is then missing from ``info.data``)."""
        if public_url is not None and "link_secret_file" in info.data \
                and info.data["link_secret_file"] is None:
            raise ValueError("NOTIFIER_PUBLIC_URL is set but NOTIFIER_LINK_SECRET_FILE is not:"
                             " set it to a file holding at least 32 random bytes (e.g. made"
                             " with `openssl rand -base64 48`), which signs the unsubscribe"
                             " links in participants' mail, or unset NOTIFIER_PUBLIC_URL")
        return public_url

    @field_validator("smtp_password")
    @classmethod
    def _never_in_clear(cls, password: str | None, info: ValidationInfo) -> str | None:
        """A login only inside TLS, but to a relay on this host: there the password does not
        leave the machine (nor, in a container, its network namespace)."""
        if (info.data.get("smtp_username") is None) != (password is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD go together: set both for a"
                             " mail server that takes a login, or neither")
        host = str(info.data.get("smtp_host", ""))
        if password is not None and not (info.data.get("smtp_tls")
                                         or info.data.get("smtp_starttls")
                                         or on_this_host(host)):
            raise ValueError(f"SMTP_USERNAME and SMTP_PASSWORD are set but neither SMTP_TLS"
                             f" nor SMTP_STARTTLS: the password would go to {host} in clear;"
                             " set SMTP_TLS=true (TLS from the first byte, usually port 465)"
                             " or SMTP_STARTTLS=true (usually port 587)")
        return password
