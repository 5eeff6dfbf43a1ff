"""The request and event metrics keep their labels and counts with cached children."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from services.records.http.app import METRICS
from tests.conftest import TokenFactory, bearer
from tests.records_api import CaseApi


def samples(client: TestClient, name: str) -> dict[tuple[str, ...], float]:
    """``name``'s sample values by their label values (the registry of the client's app)."""
    registry = client.app[METRICS].registry  # type: ignore[index]
    return {tuple(sample.labels.values()): sample.value
            for metric in registry.collect() for sample in metric.samples
            if sample.name == name}


async def case_with_notes(client: TestClient, token: TokenFactory, notes: int) -> str:
    api = CaseApi(client, token())
    case_id = await api.open_case()
    for _ in range(notes):
        await api.call("POST", f"/v1/cases/{case_id}/notes", {"text": "a talk"}, expect=201)
    return case_id


async def test_requests_are_counted_by_method_route_and_status(records_client: TestClient,
                                                              token: TokenFactory) -> None:
    await case_with_notes(records_client, token, 3)
    api = CaseApi(records_client, token())
    await api.call("POST", "/v1/cases/not-a-uuid/notes", {"text": "a talk"}, expect=400)
    await records_client.get("/nowhere")
    await records_client.delete("/healthz")
    await records_client.get("/v1/events")
    counts = samples(records_client, "casetrail_http_request_seconds_count")
    assert counts == {
        ("POST", "/v1/cases", "201"): 1.0,
        ("POST", "/v1/cases/{case_id}/notes", "201"): 3.0,
        ("POST", "/v1/cases/{case_id}/notes", "400"): 1.0,
        ("GET", "unmatched", "404"): 1.0,
        ("DELETE", "unmatched", "405"): 1.0,
        ("GET", "/v1/events", "401"): 1.0,
    }


async def test_appended_events_are_counted_by_type(records_client: TestClient,
                                                  token: TokenFactory) -> None:
    case_id = await case_with_notes(records_client, token, 2)
    replayed = {**bearer(token()), "Idempotency-Key": "note-1"}
    for _ in range(2):
        await records_client.post(f"/v1/cases/{case_id}/notes", json={"text": "again"},
                                  headers=replayed)
    counted = samples(records_client, "casetrail_events_appended_total")
    assert {labels: value for labels, value in counted.items() if value} == {
        ("CaseOpened",): 1.0, ("NoteAdded",): 3.0}  # every other type is listed at 0
