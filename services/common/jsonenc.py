"""The one JSON encoder for stored documents and rows, so the plan view and the append
statement spell ids and times alike: UUIDs as text, times in RFC 3339 with UTC as ``Z``."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson


def _uuid_subclass(value: object) -> str:
    # ids read from the database are asyncpg's subclass of UUID, which orjson does not encode
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def encode_json(value: Any) -> bytes:
    """``value`` as JSON; TypeError for what JSON cannot hold exactly (an integer beyond
    64 bits, an object of another type)."""
    return orjson.dumps(value, default=_uuid_subclass, option=orjson.OPT_UTC_Z)
