"""Structured JSON logs (structlog) with the request id bound per request.

Everything goes to standard output as one JSON object per line: our own events, and, through
the same renderer, what libraries log with the standard ``logging`` module (aiohttp's errors,
asyncpg's notices), so a log shipper never meets a line it cannot parse."""

from __future__ import annotations

import logging
import sys

import structlog


class _Stdout:
    """Standard output as it is when a line is written, not when logging was configured: the
    CLI's callers (tests, embedding tools) may swap ``sys.stdout`` afterwards."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


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
        processors=[*stamped, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_Stdout()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_Stdout())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
