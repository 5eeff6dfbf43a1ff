"""An audit of events stored under an old schema_version (twenty-first session).

The brief: "Event payloads are versioned (schema_version); an old event is upcast when read,
never rewritten." Decision 0100: the plan, time travel, the FHIR view, the rebuild and every
decision read the upcast payload; history and diffs show each event upcast with the recorded
form beside it in ``recorded_as``; the feed and the exports keep the stored form, which the hash
covers. A case holding an event this code cannot read (a newer version, an unknown type) answers
500 ``unreadable-event`` naming the type and version; the rebuild stops before changing
anything; the events table itself refuses a version < 1.

Here two cases are planted through the test database's event store with the same items (each
case its own ids) and the same clock: a *legacy* one holding ``ActionStepAdded`` v1 (owner as
free text) and ``ActionStepCompleted`` v1 (a reversal's reason kept as its note) at the start,
the middle and the end of its stream, and its *twin* holding the same events as today's code
writes them.
Every read path is asked of both, and must answer alike; then the same writes are made to both.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from schemas import events as ev
from schemas.upcasting import ActionStepAddedV1, ActionStepCompletedV1
from services.records.application.cases import to_new_event
from services.records.chain import ChainLink
from services.records.export import fhir
from services.records.export.signing import write_key_pair
from services.records.projections.rebuild import UnreadableStream, rebuild_projections
from services.records.store.events import EventStore, NewEvent
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.export_helpers import run_verify
from tests.notifier_helpers import NotifierRig, Records
from tests.pg_waits import until_nothing_held_back
from tests.test_cli import run

AGENCY = "agency-a"
NS = uuid.UUID("6b7e1c52-2f0e-4d8a-9a43-21c0d5e7f301")
PLANTED_FROM = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)  # the app's clock starts 2026-03-02
META = {"actor": {"sub": "cm-1", "role": "case_manager"}, "agency": AGENCY}
FORMATS = ("jsonl", "csv", "pdf", "fhir")


def uid(name: str) -> uuid.UUID:
    return uuid.uuid5(NS, name)


G1, SP1, N1, N2 = uid("goal-1"), uid("support-1"), uid("note-1"), uid("note-2")
S1, S2, S3, S4, S5, S6 = (uid(f"step-{n}") for n in range(1, 7))
LEGACY, TWIN = uid("case-legacy"), uid("case-twin")
# the items of the legacy case by name; its twin holds items of the same names, ids of its own
ITEMS = {
    "goal-1": G1,
    "support-1": SP1,
    "note-1": N1,
    "note-2": N2,
    **{f"step-{n}": step for n, step in enumerate((S1, S2, S3, S4, S5, S6), 1)},
}


def item_ids(case: uuid.UUID) -> dict[str, uuid.UUID]:
    return ITEMS if case == LEGACY else {name: uid(f"{case}-{name}") for name in ITEMS}


Planted = tuple[str, int, dict[str, Any], dict[str, Any]]  # type, version, data, metadata


def current(payload: ev.EventPayload) -> Planted:
    """An event as today's code records it (to_new_event: its reason also in the metadata)."""
    new = to_new_event(payload)
    return new.type, new.schema_version, new.data, new.metadata


def step_v1(step: uuid.UUID, description: str, owner: str, due: str | None) -> Planted:
    return (
        "ActionStepAdded",
        1,
        {
            "step_id": str(step),
            "goal_id": str(G1),
            "description": description,
            "owner": owner,
            "due_date": due,
            "strength_ids": [],
        },
        {},
    )


def step_v2(
    step: uuid.UUID, description: str, owner: str, support: str | None, due: str | None
) -> Planted:
    return current(
        ev.ActionStepAdded(
            step_id=step,
            goal_id=G1,
            description=description,
            owner=owner,
            support_name=support,  # type: ignore[arg-type]
            due_date=due,
        )
    )  # type: ignore[arg-type]


def completed_v1(
    step: uuid.UUID, description: str, owner: str, from_status: str, note: str
) -> Planted:
    return (
        "ActionStepCompleted",
        1,
        {
            "step_id": str(step),
            "goal_id": str(G1),
            "description": description,
            "owner": owner,
            "from_status": from_status,
            "note": note,
        },
        {},
    )


def opening() -> list[Planted]:
    return [
        current(
            ev.CaseOpened(
                participant=ev.Participant(
                    name="Jordan Rivera",
                    preferred_name="Jo",
                    pronouns="they/them",
                    email="jo@example.org",
                ),
                case_manager="cm-1",
                risk_level="moderate",
                agency=AGENCY,
            )
        ),
        current(
            ev.GoalSet(
                goal_id=G1,
                title="Find steady work",
                domain="employment",
                source="participant",
                in_their_words="A job where I use my hands",
            )
        ),
    ]


ASK_MAY = "Ask Aunt May about the bike shop"
CV = "Write a CV with Jo's help"
CALL = "Call the job centre"
READ_ADS = "Read the job adverts each Monday"


def stream(legacy: bool) -> list[Planted]:
    """Eleven events; in the legacy case versions 3, 4, 8, 10 and 11 are schema version 1
    (the first step event, the middle and the last)."""
    return [
        *opening(),
        # 3: at the start of the plan's work
        step_v1(S1, ASK_MAY, "Aunt May", "2026-02-20")
        if legacy
        else step_v2(S1, ASK_MAY, "support", "Aunt May", "2026-02-20"),
        step_v1(S2, CALL, " Participant ", None)
        if legacy
        else step_v2(S2, CALL, "participant", None, None),
        current(ev.SupportAdded(support_id=SP1, name="Coach Lee", kind="community")),
        step_v2(S3, CV, "case_manager", None, "2026-02-25"),
        current(
            ev.ActionStepStatusChanged(
                step_id=S2,
                goal_id=G1,
                from_status="not_started",
                status="no_longer_needed",
                reason="Moved away",
            )
        ),
        # 8: in the middle, a reversal whose reason v1 kept as the note
        completed_v1(S2, CALL, "participant", "no_longer_needed", "Set aside in error")
        if legacy
        else current(
            ev.ActionStepCompleted(
                step_id=S2,
                goal_id=G1,
                description=CALL,
                owner="participant",
                from_status="no_longer_needed",
                reason="Set aside in error",
            )
        ),
        current(ev.NoteAdded(note_id=N1, text="Jo called about the shop", goal_id=G1)),
        completed_v1(S3, CV, "case_manager", "not_started", "Done early")
        if legacy
        else current(
            ev.ActionStepCompleted(
                step_id=S3,
                goal_id=G1,
                description=CV,
                owner="case_manager",
                from_status="not_started",
                note="Done early",
            )
        ),
        # 11: the last event
        step_v1(S4, READ_ADS, "Case worker", "2026-03-20")
        if legacy
        else step_v2(S4, READ_ADS, "case_manager", None, "2026-03-20"),
    ]


LEGACY_VERSIONS = (3, 4, 8, 10, 11)
LAST = 11


def event_id(case: uuid.UUID, version: int) -> uuid.UUID:
    return uid(f"{case}-event-{version}")


async def plant(
    pool: asyncpg.Pool,
    case: uuid.UUID,
    events: list[Planted],
    *,
    first_version: int = 1,
    start: datetime = PLANTED_FROM,
) -> None:
    """Append ``events`` through the event store (hash-chained as the service chains them),
    one an hour, as an importer (or the code of its day) recorded them."""
    clock = FakeClock(start + timedelta(hours=first_version - 1))
    store = EventStore(pool, clock=clock)
    for version, (kind, schema, data, metadata) in enumerate(events, first_version):
        await store.append(
            case,
            [NewEvent(event_id(case, version), kind, schema, data, metadata)],
            expected_version=version - 1,
            agency=AGENCY,
            metadata=META,
        )
        clock.advance(hours=1)


def translated(events: list[Planted], case: uuid.UUID) -> list[Planted]:
    """``events`` naming the items of ``case`` in place of the legacy case's."""
    text = json.dumps(events)
    for name, item in ITEMS.items():
        text = text.replace(str(item), str(item_ids(case)[name]))
    return [tuple(e) for e in json.loads(text)]  # type: ignore[misc]


async def plant_twins(pool: asyncpg.Pool) -> None:
    await plant(pool, LEGACY, stream(legacy=True))
    await plant(pool, TWIN, translated(stream(legacy=False), TWIN))
    await rebuild_projections(pool)  # as an import leaves it


async def naming(pool: asyncpg.Pool, case: uuid.UUID) -> dict[str, str]:
    """What differs between the twins only by being theirs: the case id, the event ids, the
    participant's FHIR id."""
    rows = await pool.fetch(
        "SELECT version, event_id FROM records.events WHERE stream_id = $1", case
    )
    return {
        str(case): "<case>",
        str(fhir.patient_id(str(case))): "<patient>",
        str(uuid.uuid5(case, "supports")): "<care team>",
        **{str(r["event_id"]): f"<event {r['version']}>" for r in rows},
        **{str(item): f"<{name}>" for name, item in item_ids(case).items()},
    }


def normal(value: Any, names: dict[str, str]) -> Any:
    text = json.dumps(value, default=str, sort_keys=True)
    for found, name in names.items():
        text = text.replace(found, name)
    return json.loads(text)


async def stored(pool: asyncpg.Pool, case: uuid.UUID) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT * FROM records.events WHERE stream_id = $1 ORDER BY version", case
    )
    return {r["version"]: r for r in rows}


def readable(entry: dict[str, Any]) -> dict[str, Any]:
    """What a person reads of a history entry (not the ids and hashes, which are the case's)."""
    return {
        k: entry[k]
        for k in (
            "version",
            "type",
            "schema_version",
            "recorded_at",
            "actor",
            "role",
            "reason",
            "data",
        )
    }


class Api:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token

    async def get(self, path: str, expect: int | None = 200) -> Any:
        response = await self.client.get(path, headers=bearer(self.token))
        body = await response.json()
        if expect is not None:
            assert response.status == expect, (path, response.status, body)
        return body

    async def answer(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = await self.client.request(method, path, json=body, headers=bearer(self.token))
        return response.status, await response.json()

    async def export(self, case: uuid.UUID, fmt: str) -> bytes:
        query = "" if fmt == "jsonl" else f"?format={fmt}"
        response = await self.client.get(
            f"/v1/cases/{case}/export{query}", headers=bearer(self.token)
        )
        assert response.status == 200, await response.text()
        return await response.read()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "export.pem"
    write_key_pair(path)
    return path


@pytest.fixture
async def app(
    make_records_client: ClientFactory, fresh_database_url: str, clock: FakeClock, key_file: Path
) -> TestClient:
    return await make_records_client(
        fresh_database_url, clock=clock, CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key_file)
    )


@pytest.fixture
def supervisor(app: TestClient, token: TokenFactory) -> Api:
    return Api(app, token(role="supervisor", sub="sup-1"))


@pytest.fixture
def cm(app: TestClient, token: TokenFactory) -> Api:
    return Api(app, token(sub="cm-1"))


@pytest.fixture
async def twins(fresh_pool: asyncpg.Pool) -> tuple[dict[str, str], dict[str, str]]:
    await plant_twins(fresh_pool)
    return await naming(fresh_pool, LEGACY), await naming(fresh_pool, TWIN)


# --------------------------------------------------------------------------------------------
# the upcasters themselves: every payload valid under its frozen legacy model reads
# --------------------------------------------------------------------------------------------


# Payloads the frozen v1 models accept (decision 0100: "a historical payload is validated
# against what was true when it was written"), written by importers and the code of its day.
V1_STEPS_ADDED = {
    "owner-only-spaces": {"owner": "   "},
    "owner-a-line-break": {"owner": "\n"},
    "description-only-spaces": {"description": "  "},
}


@pytest.mark.parametrize("change", list(V1_STEPS_ADDED))
def test_an_action_step_added_v1_its_frozen_model_accepts_is_upcast_to_a_readable_event(
    change: str,
) -> None:
    """An upcaster must turn every payload its legacy model accepts into one today's model
    reads: otherwise the one old event makes its whole case unreadable (every plan fold, write
    and diff answers 500) and stops ``rebuild-projections`` for every case."""
    data = {
        "step_id": str(S1),
        "goal_id": str(G1),
        "description": ASK_MAY,
        "owner": "Aunt May",
        **V1_STEPS_ADDED[change],
    }
    ActionStepAddedV1.model_validate(data)  # valid as recorded
    ev.parse_event("ActionStepAdded", 1, data)


def test_an_action_step_completed_v1_its_frozen_model_accepts_is_upcast_to_a_readable_event() -> (
    None
):
    data = {
        "step_id": str(S2),
        "goal_id": str(G1),
        "description": CALL,
        "owner": "participant",
        "from_status": "no_longer_needed",
        "note": " ",
    }
    ActionStepCompletedV1.model_validate(data)  # valid as recorded
    ev.parse_event("ActionStepCompleted", 1, data)


async def test_a_case_holding_a_v1_step_with_a_blank_owner_still_reads_and_takes_writes(
    cm: Api, supervisor: Api, fresh_pool: asyncpg.Pool
) -> None:
    """The cases above, as a case manager meets them: one imported v1 step whose owner its
    frozen model accepted. The case must still read and take writes, and the rebuild (which
    stops for every case at an unreadable event) must go through."""
    await plant(fresh_pool, LEGACY, opening())
    await rebuild_projections(fresh_pool)
    await plant(fresh_pool, LEGACY, [step_v1(S1, ASK_MAY, "   ", None)], first_version=3)
    status, body = await cm.answer("POST", f"/v1/cases/{LEGACY}/notes", {"text": "Jo called"})
    assert status == 201, body
    history = await supervisor.get(f"/v1/cases/{LEGACY}/history")
    assert [e["recorded_as"] is not None for e in history["events"]] == [False, False, True, False]
    await rebuild_projections(fresh_pool)


def test_the_catalog_states_the_current_version_of_every_event_type() -> None:
    """Decision 0100's "Catalog (current versions)" table is what an importer and a feed
    reader go by: each type's version there must be the one the code writes."""
    doc = Path(__file__).parents[1] / "docs" / "decisions" / "0100-event-catalog.md"
    table: dict[str, str] = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ev.EVENT_TYPES:
            table[cells[0]] = cells[1].strip("*")
    assert table == {name: str(cls.schema_version) for name, cls in ev.EVENT_TYPES.items()}


# --------------------------------------------------------------------------------------------
# the twins read alike
# --------------------------------------------------------------------------------------------


async def test_the_plan_and_the_caseload_of_the_legacy_case_equal_its_twins(
    supervisor: Api, twins: tuple[dict[str, str], dict[str, str]]
) -> None:
    legacy_names, twin_names = twins
    plan = await supervisor.get(f"/v1/cases/{LEGACY}")
    assert normal(plan, legacy_names) == normal(
        await supervisor.get(f"/v1/cases/{TWIN}"), twin_names
    )
    steps = {s["step_id"]: s for goal in plan["goals"] for s in goal["steps"]}
    assert (steps[str(S1)]["owner"], steps[str(S1)]["support_name"]) == ("support", "Aunt May")
    assert steps[str(S2)]["owner"] == "participant"
    assert steps[str(S4)]["owner"] == "case_manager"
    assert [steps[str(s)]["status"] for s in (S1, S2, S3, S4)] == [
        "not_started",
        "completed",
        "completed",
        "not_started",
    ]
    listing = {c["case_id"]: c for c in (await supervisor.get("/v1/cases"))["cases"]}
    assert normal(listing[str(LEGACY)], legacy_names) == normal(listing[str(TWIN)], twin_names)


async def test_time_travel_to_every_version_and_moment_equals_the_twins(
    supervisor: Api, fresh_pool: asyncpg.Pool, twins: tuple[dict[str, str], dict[str, str]]
) -> None:
    legacy_names, twin_names = twins
    rows = await stored(fresh_pool, LEGACY)
    for version in range(1, LAST + 1):
        then = await supervisor.get(f"/v1/cases/{LEGACY}?as_of_version={version}")
        twin = await supervisor.get(f"/v1/cases/{TWIN}?as_of_version={version}")
        assert then["version"] == version
        assert normal(then, legacy_names) == normal(twin, twin_names), version
        moment = rows[version]["recorded_at"].isoformat().replace("+00:00", "Z")
        at = await supervisor.get(f"/v1/cases/{LEGACY}?as_of={moment}")
        assert normal(at, legacy_names) == normal(then, legacy_names), version


async def test_history_shows_each_old_event_upcast_with_its_recorded_form_beside_it(
    supervisor: Api, fresh_pool: asyncpg.Pool, twins: tuple[dict[str, str], dict[str, str]]
) -> None:
    """Decision 0100: history shows each event in today's schema, upcast as the plan reads
    it, and, when that differs from what was recorded, the recorded form in ``recorded_as``
    (what the hash covers); the reason people read is the upcast one."""
    legacy_names, twin_names = twins
    rows = await stored(fresh_pool, LEGACY)
    mine = (await supervisor.get(f"/v1/cases/{LEGACY}/history?limit=100"))["events"]
    theirs = (await supervisor.get(f"/v1/cases/{TWIN}/history?limit=100"))["events"]
    assert [e["version"] for e in mine] == list(range(1, LAST + 1))
    for entry, twin in zip(mine, theirs, strict=True):
        version = entry["version"]
        assert normal(readable(entry), legacy_names) == normal(readable(twin), twin_names), version
        assert twin["recorded_as"] is None
        if version in LEGACY_VERSIONS:
            assert entry["recorded_as"] == {
                "schema_version": 1,
                "data": json.loads(rows[version]["data"]),
            }, version
        else:
            assert entry["recorded_as"] is None, version
        assert (entry["event_id"], entry["hash"], entry["prev_hash"]) == (
            str(rows[version]["event_id"]),
            rows[version]["hash"],
            rows[version]["prev_hash"],
        )
    assert mine[7]["reason"] == "Set aside in error"
    assert (mine[7]["data"]["reason"], mine[7]["data"]["note"]) == ("Set aside in error", None)
    # paged one event at a time, each page says the same
    for version in range(1, LAST + 1):
        page = await supervisor.get(
            f"/v1/cases/{LEGACY}/history?after_version={version - 1}&limit=1"
        )
        assert page["events"] == [mine[version - 1]]


def sorted_changes(diff: dict[str, Any], names: dict[str, str]) -> list[Any]:
    """A diff's changes in the order of their paths once the ids are named (ids sort apart)."""
    return sorted(normal(diff["changes"], names), key=lambda change: change["path"])


async def test_diff_between_any_two_versions_equals_the_twins(
    supervisor: Api, twins: tuple[dict[str, str], dict[str, str]]
) -> None:
    legacy_names, twin_names = twins
    for first in range(1, LAST):
        for last in range(first + 1, LAST + 1):
            query = f"diff?from_version={first}&to_version={last}"
            diff = await supervisor.get(f"/v1/cases/{LEGACY}/{query}")
            twin = await supervisor.get(f"/v1/cases/{TWIN}/{query}")
            assert sorted_changes(diff, legacy_names) == sorted_changes(twin, twin_names), query
            assert normal([readable(e) for e in diff["events"]], legacy_names) == normal(
                [readable(e) for e in twin["events"]], twin_names
            ), query
            assert [e["recorded_as"] is not None for e in diff["events"]] == [
                v in LEGACY_VERSIONS for v in range(first + 1, last + 1)
            ], query


async def test_verify_recomputes_the_chain_over_the_stored_form(
    supervisor: Api, fresh_pool: asyncpg.Pool, twins: tuple[dict[str, str], dict[str, str]]
) -> None:
    report = await supervisor.get(f"/v1/cases/{LEGACY}/verify")
    assert report["valid"] is True, report
    assert report["events_checked"] == LAST, report
    rows = await stored(fresh_pool, LEGACY)
    for version, row in rows.items():
        link = ChainLink(
            str(LEGACY),
            version,
            str(row["event_id"]),
            row["type"],
            row["schema_version"],
            json.loads(row["data"]),
            json.loads(row["metadata"]),
            row["recorded_at"],
            row["prev_hash"],
        )
        assert link.compute_hash() == row["hash"], version


async def test_an_old_event_rewritten_to_its_upcast_form_breaks_the_chain(
    supervisor: Api,
    fresh_pool: asyncpg.Pool,
    fresh_database_url: str,
    twins: tuple[dict[str, str], dict[str, str]],
) -> None:
    """ "Never rewritten": were a v1 row rewritten in place to its upcast v2 form (as a
    migration might), verify must say the chain is broken there, since the hash covers the
    stored form and not the upcast one."""
    upcast = ev.dump_event(
        ev.parse_event(
            "ActionStepAdded", 1, json.loads((await stored(fresh_pool, LEGACY))[3]["data"])
        )
    )
    db = await asyncpg.connect(fresh_database_url)
    try:
        async with db.transaction():
            await db.execute("SET LOCAL session_replication_role = replica")
            await db.execute(
                "UPDATE records.events SET schema_version = 2, data = $2::jsonb"
                " WHERE stream_id = $1 AND version = 3",
                LEGACY,
                json.dumps(upcast),
            )
    finally:
        await db.close()
    report = await supervisor.get(f"/v1/cases/{LEGACY}/verify")
    assert report["valid"] is False, report
    assert report["first_broken_link"]["version"] == 3, report


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_export_of_the_legacy_case_verifies_offline_and_keeps_the_stored_form(
    supervisor: Api,
    fresh_pool: asyncpg.Pool,
    key_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    twins: tuple[dict[str, str], dict[str, str]],
) -> None:
    raw = await supervisor.export(LEGACY, fmt)
    code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == "VERIFIED", out
    rows = await stored(fresh_pool, LEGACY)
    twin_raw = await supervisor.export(TWIN, fmt)
    if fmt == "jsonl":
        events = [json.loads(line) for line in raw.splitlines()[1:-1]]
        assert [(e["schema_version"], e["data"]) for e in events] == [
            (r["schema_version"], json.loads(r["data"])) for r in rows.values()
        ]
    elif fmt == "csv":

        def cells(data: bytes) -> list[dict[str, str]]:
            table = list(csv.reader(io.StringIO(data.decode())))
            return [dict(zip(table[1], row, strict=True)) for row in table[2:-1]]

        mine, theirs = cells(raw), cells(twin_raw)
        assert [e["reason"] for e in mine] == [e["reason"] for e in theirs]
        assert [(int(e["schema_version"]), json.loads(e["data"])) for e in mine] == [
            (r["schema_version"], json.loads(r["data"])) for r in rows.values()
        ]
    elif fmt == "fhir":
        legacy_names, twin_names = twins
        bundle, twin = json.loads(raw), json.loads(twin_raw)

        def plan_resources(b: dict[str, Any]) -> list[Any]:
            return [e for e in b["entry"] if e["resource"]["resourceType"] != "Provenance"]

        def reasons(b: dict[str, Any]) -> list[Any]:
            return [
                e["resource"].get("reason")
                for e in b["entry"]
                if e["resource"]["resourceType"] == "Provenance"
            ]

        assert normal(plan_resources(bundle), legacy_names) == normal(
            plan_resources(twin), twin_names
        )
        assert reasons(bundle) == reasons(twin)
        assert reasons(bundle)[7] == [{"text": "Set aside in error"}]


async def test_the_feed_carries_the_stored_form_which_a_reader_upcasts_to_the_twins(
    app: TestClient,
    token: TokenFactory,
    fresh_pool: asyncpg.Pool,
    twins: tuple[dict[str, str], dict[str, str]],
) -> None:
    service = bearer(token(role="service", sub="notifier", agency="*"))
    seen: list[dict[str, Any]] = []
    after = ""
    for _ in range(20):
        page = await (await app.get(f"/v1/events?limit=50&wait=30{after}", headers=service)).json()
        seen += page["events"]
        after = f"&after={page['checkpoint']}"
        if len(seen) >= 2 * LAST:
            break
    by_case = {case: [e for e in seen if e["case_id"] == str(case)] for case in (LEGACY, TWIN)}
    rows = await stored(fresh_pool, LEGACY)
    assert [(e["version"], e["schema_version"], e["data"], e["hash"]) for e in by_case[LEGACY]] == [
        (v, r["schema_version"], json.loads(r["data"]), r["hash"]) for v, r in rows.items()
    ]
    legacy_names, twin_names = twins

    def upcast(case: uuid.UUID, names: dict[str, str]) -> list[Any]:
        return normal(
            [
                ev.dump_event(ev.parse_event(e["type"], e["schema_version"], e["data"]))
                for e in by_case[case]
            ],
            names,
        )

    assert upcast(LEGACY, legacy_names) == upcast(TWIN, twin_names)


# --------------------------------------------------------------------------------------------
# writes after old events
# --------------------------------------------------------------------------------------------

WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "steps/{S1}/complete", {"note": "Aunt May showed Jo the shop"}),
    ("POST", "steps/{S2}/complete", {}),  # completed already, by a v1 completion
    ("POST", "steps/{S3}/complete", {}),  # completed already, by a v1 completion
    ("POST", "steps/{S3}/status", {"status": "in_progress", "reason": "Marked done too soon"}),
    ("PATCH", "steps/{S4}", {"due_date": "2026-03-27", "reason": "agreed a new date"}),
    (
        "PATCH",
        "steps/{S4}",
        {"owner": "support", "support_name": "Aunt May", "reason": "Aunt May will help"},
    ),
    ("POST", "steps/{S4}/status", {"status": "in_progress"}),
    ("POST", "steps/{S4}/complete", {"note": "Read them with Aunt May"}),
    ("POST", "steps/{S2}/status", {"status": "no_longer_needed", "reason": "Moved away again"}),
]


def path_of(case: uuid.UUID, template: str) -> str:
    ids = {f"S{n}": item_ids(case)[f"step-{n}"] for n in range(1, 5)}
    return f"/v1/cases/{case}/" + template.format(**ids)


async def write_both(cm: Api) -> list[tuple[tuple[int, Any], tuple[int, Any]]]:
    """Each write made to the legacy case, then to its twin (at the same moment)."""
    answers = []
    for method, template, body in WRITES:
        answers.append(
            (
                await cm.answer(method, path_of(LEGACY, template), body),
                await cm.answer(method, path_of(TWIN, template), body),
            )
        )
    return answers


def decided(answer: tuple[int, Any]) -> Any:
    status, body = answer
    if status >= 400:
        return status, body.get("type"), body.get("detail")
    return status, [
        (e["type"], e["schema_version"], e["data"], e["reason"], e["recorded_as"])
        for e in body["events"]
    ]


async def test_writes_after_old_events_are_decided_as_on_the_twin(
    cm: Api, supervisor: Api, twins: tuple[dict[str, str], dict[str, str]]
) -> None:
    legacy_names, twin_names = twins
    answers = await write_both(cm)
    for (method, template, _), (mine, theirs) in zip(WRITES, answers, strict=True):
        assert mine[0] < 500, (template, mine)
        assert normal(decided(mine), legacy_names) == normal(decided(theirs), twin_names), (
            method,
            template,
            mine,
            theirs,
        )
    done = answers[0][0][1]["events"]
    assert [
        (e["type"], e["data"]["owner"], e["data"]["description"], e["data"]["from_status"])
        for e in done
    ] == [("ActionStepCompleted", "support", ASK_MAY, "not_started")]
    assert answers[1][0][0] == 409
    assert answers[2][0][0] == 409
    reversal = answers[3][0][1]["events"]
    assert [(e["type"], e["data"]["from_status"]) for e in reversal] == [
        ("ActionStepStatusChanged", "completed")
    ]
    plan = await supervisor.get(f"/v1/cases/{LEGACY}")
    assert normal(plan, legacy_names) == normal(
        await supervisor.get(f"/v1/cases/{TWIN}"), twin_names
    )


async def test_rebuild_projections_gives_the_live_plans_and_facts_back(
    cm: Api,
    fresh_pool: asyncpg.Pool,
    fresh_database_url: str,
    twins: tuple[dict[str, str], dict[str, str]],
) -> None:
    """``casetrail rebuild-projections`` folds the upcast payloads as every live write did:
    the plans and the outcome facts come back unchanged, and the twins' agree."""
    await write_both(cm)

    async def projections() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        plans = [
            dict(r)
            for r in await fresh_pool.fetch(
                "SELECT *, view::text AS view FROM records.plans ORDER BY case_id"
            )
        ]
        facts = [
            dict(r)
            for r in await fresh_pool.fetch(
                "SELECT * FROM records.outcome_facts ORDER BY case_id, version, kind"
            )
        ]
        return plans, facts

    live = await projections()
    result = run("rebuild-projections", env={"DATABASE_URL": fresh_database_url})
    assert result.returncode == 0, result.stderr
    assert await projections() == live
    legacy_names, twin_names = twins
    plans, facts = live
    by_case = {p["case_id"]: p for p in plans}

    def without_case(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k not in ("case_id", "event_id")}

    assert normal(without_case(by_case[LEGACY]), legacy_names) == normal(
        without_case(by_case[TWIN]), twin_names
    )
    assert [normal(without_case(f), legacy_names) for f in facts if f["case_id"] == LEGACY] == [
        normal(without_case(f), twin_names) for f in facts if f["case_id"] == TWIN
    ]


# --------------------------------------------------------------------------------------------
# the notifier's schedule, built from the feed
# --------------------------------------------------------------------------------------------


async def schedules(rig: NotifierRig) -> dict[uuid.UUID, list[Any]]:
    rows = await rig.snapshot()
    found: dict[uuid.UUID, list[Any]] = {LEGACY: [], TWIN: []}
    for row in rows:
        if row[2] in found:
            found[row[2]].append(row)
    return found


async def test_the_notifiers_schedule_for_the_legacy_case_equals_its_twins(
    records: Records, rig: NotifierRig, fresh_pool: asyncpg.Pool, token: TokenFactory
) -> None:
    """The notifier upcasts what the feed carries: the nudge for the v1 step past its date
    names the support who took it on, the small wins read alike (a v1 reversal's reason is
    not quoted as a note); then a completion of the v1 step written now, a rewording and a
    transfer (its handover lists the steps past their dates) read alike too."""
    await plant_twins(fresh_pool)
    legacy_names, twin_names = await naming(fresh_pool, LEGACY), await naming(fresh_pool, TWIN)
    await rig.catch_up()
    found = await schedules(rig)
    assert found[LEGACY], found
    assert sorted(normal(found[LEGACY], legacy_names)) == sorted(normal(found[TWIN], twin_names))
    nudges = [json.loads(r[8]) for r in found[LEGACY] if r[1] == "step_nudge"]
    s1 = [n for n in nudges if n["step_id"] == str(S1)]
    assert [(n["owner"], n["support_name"]) for n in s1] == [("support", "Aunt May")], nudges
    wins = [json.loads(r[8]) for r in found[LEGACY] if r[1] == "small_win"]
    assert sorted((w["step_id"], w["note"]) for w in wins) == sorted(
        [(str(S2), None), (str(S3), "Done early")]
    ), wins
    supervisor = token(role="supervisor", sub="sup-1")
    for case in (LEGACY, TWIN):
        ids = item_ids(case)
        await records.complete(str(case), str(ids["step-1"]), "Aunt May showed Jo the shop")
        await records.call(
            "PATCH",
            f"/v1/cases/{case}/steps/{ids['step-3']}",
            {"description": "Write a CV", "reason": "shorter"},
        )
        await records.transfer(str(case), "cm-2", token=supervisor)
    await rig.catch_up()
    found = await schedules(rig)
    legacy_names, twin_names = await naming(fresh_pool, LEGACY), await naming(fresh_pool, TWIN)
    assert sorted(normal(found[LEGACY], legacy_names)) == sorted(normal(found[TWIN], twin_names))
    s1_nudges = [
        r[7]
        for r in found[LEGACY]
        if r[1] == "step_nudge" and json.loads(r[8])["step_id"] == str(S1)
    ]
    assert "scheduled" not in s1_nudges, found[LEGACY]
    assert [r[5] for r in found[LEGACY] if r[1] == "case_transferred"] == ["cm-2"], found[LEGACY]
    wins = [json.loads(r[8]) for r in found[LEGACY] if r[1] == "small_win"]
    assert [(w["owner"], w["note"]) for w in wins if w["step_id"] == str(S1)] == [
        ("support", "Aunt May showed Jo the shop")
    ], wins


# --------------------------------------------------------------------------------------------
# an event of a version this code does not know
# --------------------------------------------------------------------------------------------

# what this code cannot read: a version newer than it knows (after a rollback), a type it does
# not know (ditto), and an importer's v1 payload mislabelled as today's version
BAD = {
    "newer-version": ("ActionStepAdded", 3),
    "unknown-type": ("ActionStepSnoozed", 1),
    "v1-data-labelled-v2": ("ActionStepAdded", 2),
}


def bad_event(kind: str) -> Planted:
    event_type, version = BAD[kind]
    data: dict[str, Any] = {
        "step_id": str(S5),
        "goal_id": str(G1),
        "description": "Try the new rota",
        "owner": "participant",
        "support_name": None,
        "support_id": None,
        "due_date": "2026-02-24",
        "strength_ids": [],
    }
    if kind == "newer-version":
        data["hours_a_week"] = 4  # a field of the newer schema
    elif kind == "unknown-type":
        data = {"step_id": str(S1), "goal_id": str(G1), "until": "2026-04-01"}
    else:
        data["owner"] = "Aunt May"
        del data["support_name"], data["support_id"]
    return event_type, version, data, {}


@pytest.mark.parametrize("version", [0, -1])
async def test_the_store_keeps_out_a_schema_version_below_one(
    fresh_pool: asyncpg.Pool, version: int
) -> None:
    """Decision 0100 counts a version < 1 as unreadable; the events table refuses one."""
    with pytest.raises(asyncpg.CheckViolationError):
        await plant(fresh_pool, LEGACY, [*opening()[:1], ("NoteAdded", version, {}, {})])
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.events") == 1


def after_the_bad_one() -> list[Planted]:
    return [
        step_v2(S6, "Go to the Tuesday workshop", "participant", None, "2026-02-26"),
        current(ev.NoteAdded(note_id=N2, text="Jo liked the workshop")),
    ]


async def plant_with_bad(pool: asyncpg.Pool, kind: str, position: str) -> int:
    """Four good events (projected), then the unreadable event ``kind`` at v5 and,
    in the middle, two more good ones; the plan's row moved to the head, as the newer code's
    append would have. Returns the head version."""
    case = LEGACY
    await plant(
        pool,
        case,
        [
            *opening(),
            step_v2(S1, ASK_MAY, "support", "Aunt May", "2026-02-20"),
            current(ev.NoteAdded(note_id=N1, text="Jo called")),
        ],
    )
    await rebuild_projections(pool)
    rest = [bad_event(kind), *(after_the_bad_one() if position == "middle" else [])]
    await plant(pool, case, rest, first_version=5)
    head = 4 + len(rest)
    await pool.execute("UPDATE records.plans SET version = $2 WHERE case_id = $1", case, head)
    return head


def said_plainly(status: int, body: Any, kind: str) -> None:
    """200, or the documented 500 naming the type and the version (never a bare 500)."""
    if status == 200:
        return
    event_type, version = BAD[kind]
    assert status == 500, (status, body)
    assert body["type"].endswith("/unreadable-event"), body
    assert f"{event_type} (schema_version {version})" in body["detail"], body


@pytest.mark.parametrize("position", ["middle", "end"])
@pytest.mark.parametrize("kind", list(BAD))
async def test_each_read_of_a_case_holding_an_unknown_version_answers_plainly(
    supervisor: Api,
    cm: Api,
    fresh_pool: asyncpg.Pool,
    key_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    position: str,
) -> None:
    head = await plant_with_bad(fresh_pool, kind, position)
    case = f"/v1/cases/{LEGACY}"
    # every read touching the event: 200 or the documented problem
    for path in (
        "",
        f"?as_of_version={head}",
        "/history",
        "/history?after_version=4&limit=1",
        f"/diff?from_version=4&to_version={head}",
        "/diff?from_version=1&to_version=5",
    ):
        status, body = await supervisor.answer("GET", case + path)
        said_plainly(status, body, kind)
    # the rest of the case stays readable around it
    before = await supervisor.get(f"{case}/history?limit=4")
    assert [e["version"] for e in before["events"]] == [1, 2, 3, 4]
    assert (await supervisor.get(f"{case}?as_of_version=4"))["version"] == 4
    await supervisor.get(f"{case}/diff?from_version=1&to_version=4")
    if position == "middle":
        later = await supervisor.get(f"{case}/history?after_version=5")
        assert [e["version"] for e in later["events"]] == [6, 7]
    # the chain covers the stored bytes, whatever their version: intact
    report = await supervisor.get(f"{case}/verify")
    assert (report["valid"], report["events_checked"]) == (True, head), report
    for fmt in FORMATS:
        if fmt == "fhir":  # its plan is folded from the events (0012): the documented 500
            status, body = await supervisor.answer("GET", f"{case}/export?format=fhir")
            said_plainly(status, body, kind)
            assert status == 500, body
            continue
        raw = await supervisor.export(LEGACY, fmt)
        code, out = run_verify(tmp_path, raw, "--public-key", f"{key_file}.pub", capsys=capsys)
        assert code == 0, (fmt, out)
    # a write is not decided on a case it cannot read, and writes nothing
    count = await fresh_pool.fetchval("SELECT count(*) FROM records.events")
    status, body = await cm.answer("POST", f"{case}/notes", {"text": "Hello"})
    assert status == 500, body
    said_plainly(status, body, kind)
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.events") == count


@pytest.mark.parametrize("kind", list(BAD))
async def test_the_rebuild_stops_at_an_unknown_version_naming_it_and_changes_nothing(
    fresh_pool: asyncpg.Pool, kind: str
) -> None:
    await plant_with_bad(fresh_pool, kind, "middle")
    event_type, version = BAD[kind]
    before = [dict(r) for r in await fresh_pool.fetch("SELECT * FROM records.plans")]
    with pytest.raises(
        UnreadableStream, match=rf"case {LEGACY}: {event_type} \(schema_version {version}\)"
    ):
        await rebuild_projections(fresh_pool)
    assert [dict(r) for r in await fresh_pool.fetch("SELECT * FROM records.plans")] == before


@pytest.mark.parametrize("kind", list(BAD))
async def test_the_feed_and_the_notifier_go_on_past_an_unknown_version(
    records: Records, rig: NotifierRig, fresh_pool: asyncpg.Pool, token: TokenFactory, kind: str
) -> None:
    """The feed hands the event out as stored; the notifier leaves it out, loudly, and applies
    the events after it: the step added after it is nudged, and a step the notifier could not
    read is not."""
    await plant_with_bad(fresh_pool, kind, "middle")
    # the feed holds events back while an older transaction is open anywhere on the server
    await until_nothing_held_back(fresh_pool, "records.events")
    service = bearer(token(role="service", sub="notifier", agency="*"))
    page = await (await records.client.get("/v1/events?limit=50&wait=30", headers=service)).json()
    bad = [e for e in page["events"] if e["version"] == 5]
    event_type, version, data, _ = bad_event(kind)
    assert [(e["type"], e["schema_version"], e["data"]) for e in bad] == [
        (event_type, version, data)
    ]
    await rig.catch_up()
    nudged = {json.loads(r[8])["step_id"] for r in await rig.snapshot() if r[1] == "step_nudge"}
    assert nudged == {str(S1), str(S6)}, nudged
    assert await rig.catch_up() == 0  # nothing left behind to read again
