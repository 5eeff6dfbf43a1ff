"""Structured JSON logs (structlog) with the request id bound per request.

Everything goes to standard output as one JSON object per line: our own events, and, through
the same renderer, what libraries log with the standard ``logging`` module (aiohttp's errors,
asyncpg's notices), so a log shipper never meets a line it cannot parse."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# a local part without "/" or ":", so a path keeps its route and a URL its scheme and user
# (postgresql://user:secret@db:5432/x reads postgresql://user:[address]:5432/x: the secret
# goes, and the host with it)
_ADDRESS = re.compile(r"[\w.!#$%&*+=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*")
_MASK = "[address]"


class _Stdout:
    """Standard output as it is when a line is written, not when logging was configured: the
    CLI's callers (tests, embedding tools) may swap ``sys.stdout`` afterwards."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def without_addresses(text: str) -> str:
    """``text`` with email addresses masked: SMTP replies quote the recipient, a user id may
    be the person's address, and neither logs nor a case manager's screen are the place for
    a participant's address."""
    return _ADDRESS.sub(_MASK, text) if "@" in text else text


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return without_addresses(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(item) for item in value]
    return value


def _has_address(value: Any) -> bool:
    if isinstance(value, str):
        return "@" in value
    if isinstance(value, dict):
        return any(_has_address(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_address(item) for item in value)
    return False


def mask_addresses(_logger: Any, _method: str,
                   event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Email addresses out of every line, the traceback included. They reach a log by paths
    no call site controls: a user id the identity provider made of the person's address
    (in a request's path), an SMTP reply, a library's error message."""
    if not any(_has_address(value) for value in event.values()):
        return event  # every request logs a line: most hold no "@" at all
    return {key: _masked(value) for key, value in event.items()}


def configure_logging(level: str = "info", *, json_output: bool = True) -> None:
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (structlog.processors.JSONRenderer() if json_output
                                            else structlog.dev.ConsoleRenderer(colors=False))
    stamped: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*stamped, structlog.processors.format_exc_info, mask_addresses, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_Stdout()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_Stdout())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, mask_addresses, renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
