"""How an error message quotes what a client sent; kept apart from the HTTP layer so that
the command line, which quotes token errors too, starts without loading aiohttp."""

from __future__ import annotations


def quoted(value: object, limit: int = 100) -> str:
    """What a client sent, as a problem's detail quotes it: its repr, cut short (a body's key
    may be the whole body; a token's unsigned header may name anything)."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"
