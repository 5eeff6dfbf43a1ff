"""Trying again after a failure outside our control (the database, the feed): one schedule of
delays for every loop that waits between tries."""

from __future__ import annotations

from collections.abc import Iterator


def doubling(first: float, most: float) -> Iterator[float]:
    """Delays before each try again: ``first``, then twice the one before, up to ``most``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)
