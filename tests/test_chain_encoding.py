"""The chain's canonical encoding is fast (orjson) and byte for byte the reference encoding, so
hashes written before and after stay verifiable, and an outside verifier can use plain json."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.records.chain import canonical_bytes, format_timestamp, reference_canonical_bytes

_scalars = st.none() | st.booleans() | st.integers() | st.text(
    st.characters(blacklist_categories=("Cs",)))
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_canonical_bytes_equal_the_reference_encoding(value: Any) -> None:
    assert canonical_bytes(value) == reference_canonical_bytes(value)


@pytest.mark.parametrize("value", [
    {"amount": 1.0},
    [1, [2, {"x": 0.5}]],
    {"nested": ({"deep": float("nan")},)},
])
def test_floats_are_refused_anywhere(value: Any) -> None:
    with pytest.raises(TypeError, match="floats are not allowed"):
        canonical_bytes(value)


@pytest.mark.parametrize("value", [
    {"big": 2**80},                       # beyond orjson's 64 bits: the reference spells it
    {"n": -(2**70), "list": [2**64]},
    {1: "a key json.dumps turns into a string"},
])
def test_values_orjson_cannot_hold_take_the_reference_way(value: Any) -> None:
    assert canonical_bytes(value) == reference_canonical_bytes(value)


@pytest.mark.parametrize("value", [{"id": object()}, "\ud800"])
def test_what_the_reference_refuses_is_refused(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        reference_canonical_bytes(value)
    with pytest.raises((TypeError, ValueError)):
        canonical_bytes(value)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_timestamps_are_utc_with_microseconds(moment: datetime, offset_minutes: int) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert format_timestamp(aware) == aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
