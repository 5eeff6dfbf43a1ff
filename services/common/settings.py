"""Configuration from environment variables, shared by both services and the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.database import COMMAND_TIMEOUT_SECONDS


class ConfigurationError(ValueError):
    """A configuration file or setting the service cannot start with; the message names it."""


# A setting left blank (`NAME=`, as an env file or a compose file writes one given no value)
# is one not set: it takes its default. Read as given, a blank file or folder was the working
# folder, a blank audience refused every token, a blank number stopped the start.
AN_HOUR = 3600.0
A_DAY = 24 * AN_HOUR

# inf and nan are no durations: past every bound check, they failed later (a dispatch round
# that cannot compute its lease, a scheduler that cannot place its next run)
SETTINGS_CONFIG = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True,
                                     env_ignore_empty=True, allow_inf_nan=False)


# Left blank, these would take their default and check nothing: a secret store or template
# that lost the value would quietly accept every token's audience or issuer.
_CHECKS_NEVER_BLANK = {"jwt_audience": "CASETRAIL_JWT_AUDIENCE",
                       "jwt_issuer": "CASETRAIL_JWT_ISSUER"}


def blank_is_unset(value: Any) -> Any:
    """For a setting where blanks alone (`SMTP_USERNAME="  "`) cannot be meant either."""
    return None if isinstance(value, str) and not value.strip() else value


class ServiceSettings(BaseSettings):
    """What both services read the same way: the database, token verification, logging."""

    model_config = SETTINGS_CONFIG

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    jwt_secret: str | None = Field(default=None, alias="CASETRAIL_JWT_SECRET")
    jwt_public_key_file: Path | None = Field(default=None, alias="CASETRAIL_JWT_PUBLIC_KEY_FILE")
    jwks_file: Path | None = Field(default=None, alias="CASETRAIL_JWKS_FILE")
    jwt_audience: str | None = Field(default=None, alias="CASETRAIL_JWT_AUDIENCE")
    jwt_issuer: str | None = Field(default=None, alias="CASETRAIL_JWT_ISSUER")
    # how far the identity provider's clock may differ from ours, on exp, nbf and iat
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300,
                                    alias="CASETRAIL_JWT_LEEWAY_SECONDS")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", alias="CASETRAIL_LOG_LEVEL")

    @model_validator(mode="before")
    @classmethod
    def _no_check_left_blank(cls, given: Any) -> Any:
        """A blank audience or issuer is refused, not taken for none: blank, it used to refuse
        every token, and unset it would check nothing (fail closed, not open)."""
        if not isinstance(given, dict):
            return given
        for field, name in _CHECKS_NEVER_BLANK.items():
            value = given.get(name, given.get(field))
            if value is None:  # an empty variable does not reach here: env_ignore_empty
                value = os.environ.get(name)
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"{name} is set but blank: set the {field[4:]} your identity"
                                 f" provider writes in its tokens, or leave {name} out to check"
                                 " none")
        return given

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        # asyncpg's own refusal came as a traceback from deep in the first connection
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (postgresql://user@host:5432/db)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(ServiceSettings):
    """The records service and the CLI: every knob they read from the environment; CLI flags
    override these."""

    records_host: str = Field(default="127.0.0.1", alias="RECORDS_HOST")
    records_port: int = Field(default=8080, ge=0, le=65535, alias="RECORDS_PORT")  # 0: any free
    max_body_bytes: int = Field(default=256 * 1024, ge=1, alias="CASETRAIL_MAX_BODY_BYTES")
    db_pool_max: int = Field(default=10, ge=1, alias="CASETRAIL_DB_POOL_MAX")
    # seconds a statement may go unanswered before it fails (503): see create_pool
    db_command_timeout: float = Field(default=COMMAND_TIMEOUT_SECONDS, gt=0, le=AN_HOUR,
                                      alias="CASETRAIL_DB_COMMAND_TIMEOUT")
    feed_max_wait_seconds: float = Field(default=30.0, ge=0, le=AN_HOUR,
                                         alias="CASETRAIL_FEED_MAX_WAIT")
    language_guide_dir: Path | None = Field(default=None, alias="CASETRAIL_LANGUAGE_GUIDE_DIR")
    policy_dir: Path | None = Field(default=None, alias="CASETRAIL_POLICY_DIR")
    dev_data_dir: Path = Field(default=Path(".casetrail"), alias="CASETRAIL_DEV_DIR")
    # Ed25519 private key (PEM) that signs exports; unset, each process makes its own
    export_signing_key_file: Path | None = Field(default=None,
                                                 alias="CASETRAIL_EXPORT_SIGNING_KEY_FILE")
