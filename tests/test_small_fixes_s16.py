"""Five small defects of session 16's audits: the notifier reading another agency's row, a
repeated query parameter blaming no field, an unusable JWKS key stopping the start with a
traceback, invisible characters in user ids, and two refusals that did not say what to do."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from schemas import api
from services import cli
from services.common.settings import ConfigurationError
from services.notifier.http.app import create_app as create_notifier_app
from services.records import domain as d
from services.records.http.app import create_app
from tests.conftest import ClientFactory, TokenFactory, bearer, make_settings
from tests.notifier_helpers import PARTICIPANT, NotifierRig, Records, notifier_settings
from tests.test_domain_reviews import agree, hold
from tests.test_domain_reviews import new_case as new_reviewed_case

# --------------------------------------------------------------------------------------------
# 1. another agency's notification is not read at all
# --------------------------------------------------------------------------------------------

# deeper than Python's json module follows (RecursionError), well within what jsonb stores
_TOO_DEEP = "[" * 5000 + "]" * 5000


async def _insert_row(rig: NotifierRig, *, agency: str, context: str = "{}",
                      recipient: str = "cm-1", status: str = "dead") -> tuple[UUID, UUID]:
    row_id, case_id = uuid4(), uuid4()
    now = datetime(2026, 3, 2, 9, tzinfo=UTC)
    await rig.notifier.pool.execute(
        "INSERT INTO notifier.notifications (id, key, kind, case_id, agency, recipient_role,"
        " recipient, due_at, not_before, status, message_id, context, created_at, updated_at)"
        " VALUES ($1, $2, 'review_reminder', $3, $4, 'case_manager', $5, $6, $6, $7, $8,"
        " $9::jsonb, $6, $6)",
        row_id, f"test:{row_id}", case_id, agency, recipient, now, status,
        f"<{row_id}@test>", context)
    return row_id, case_id


def _without_request(body: dict[str, Any]) -> dict[str, Any]:
    """A problem body without what names the request itself (its path, its id)."""
    return {k: v for k, v in body.items() if k not in ("instance", "request_id")}


async def _answer(client: TestClient[Any, Any], method: str, path: str,
                  token: str) -> tuple[int, Any]:
    response = await client.request(method, path, headers=bearer(token))
    return response.status, _without_request(await response.json())


OTHER_AGENCY_ROLES = [{"role": "supervisor", "sub": "sup-b"},
                      {"role": "case_manager", "sub": "cm-1"},  # the recipient's very user id
                      {"role": "participant", "sub": "jo"},
                      {"role": "auditor", "sub": "court-1"},
                      {"role": "analyst", "sub": "an-1"}]


async def test_another_agencys_notification_is_never_read(rig: NotifierRig,
                                                          token: TokenFactory) -> None:
    """Its row was fetched and parsed before the agency was compared, so it answered 30-55 µs
    slower than a made-up id. A row no parser could read now shows it is not read at all:
    another agency's every role is answered exactly as for an id that does not exist."""
    unreadable, case_id = await _insert_row(rig, agency="agency-a", context=_TOO_DEEP)
    made_up = uuid4()
    for who in OTHER_AGENCY_ROLES:
        scope = {"cases": [str(case_id)]} if who["role"] in ("participant", "auditor") else {}
        theirs = token(agency="agency-b", **who, **scope)
        for method, suffix in (("GET", ""), ("POST", "/retry")):
            real = await _answer(rig.client, method, f"/v1/notifications/{unreadable}{suffix}",
                                 theirs)
            unknown = await _answer(rig.client, method, f"/v1/notifications/{made_up}{suffix}",
                                    theirs)
            assert real == unknown, (who, method)
            assert real[0] in (403, 404), (who, method, real)


async def test_the_service_role_still_reads_every_agencys_notification(
        rig: NotifierRig, token: TokenFactory) -> None:
    row_id, _ = await _insert_row(rig, agency="agency-a")
    for tok, status in [(token(role="service", sub="ops", agency="agency-b"), 200),
                        (token(role="supervisor", sub="sup-a"), 200),
                        (token(role="supervisor", sub="sup-b", agency="agency-b"), 404)]:
        response = await rig.client.get(f"/v1/notifications/{row_id}", headers=bearer(tok))
        assert response.status == status, await response.text()
    retried = await rig.client.post(f"/v1/notifications/{row_id}/retry",
                                    headers=bearer(token(role="service", sub="ops",
                                                         agency="agency-b")))
    assert retried.status == 202, await retried.text()
    assert (await retried.json())["status"] == "scheduled"


# --------------------------------------------------------------------------------------------
# 2. a repeated query parameter names its field
# --------------------------------------------------------------------------------------------

CASE = "7b0c5d7e-2c1a-4a8e-9f51-0c6f1d2b3a4e"


@pytest.mark.parametrize(("service", "who", "method", "path", "field"), [
    ("records", {"role": "analyst", "sub": "an-1"}, "GET",
     "/v1/analytics/outcomes?to=2026-01-01&to=2026-02-01", "query.to"),
    ("records", {"role": "supervisor", "sub": "sup-1"}, "GET",
     "/v1/cases?status=open&status=closed", "query.status"),
    ("records", {"role": "supervisor", "sub": "sup-1"}, "GET",
     f"/v1/access-log?case_id={CASE}&case_id={CASE}", "query.case_id"),
    ("records", {"role": "service", "sub": "ops"}, "GET", "/v1/events?limit=1&limit=2",
     "query.limit"),
    ("records", {"role": "case_manager", "sub": "cm-1"}, "DELETE",
     f"/v1/cases/{CASE}/strengths/{CASE}?reason=a&reason=b", "query.reason"),
    ("records", {"role": "case_manager", "sub": "cm-1"}, "POST",  # a route taking no query
     f"/v1/cases/{CASE}/notes?x=1&x=2", "query.x"),
    ("notifier", {"role": "supervisor", "sub": "sup-1"}, "GET",
     "/v1/notifications?status=dead&status=sent", "query.status"),
    ("notifier", {"role": "supervisor", "sub": "sup-1"}, "GET",
     f"/v1/schedule?case_id={CASE}&case_id={CASE}", "query.case_id"),
    ("notifier", {"role": "supervisor", "sub": "sup-1"}, "GET",
     "/v1/access-log?limit=1&limit=1", "query.limit"),
])
async def test_a_repeated_query_parameter_names_its_field(
        rig: NotifierRig, records: Records, token: TokenFactory, service: str,
        who: dict[str, str], method: str, path: str, field: str) -> None:
    """It answered 400 with an empty errors list, though one field was to blame."""
    client = rig.client if service == "notifier" else records.client
    events = await rig.notifier.pool.fetchval("SELECT count(*) FROM records.events")
    response = await client.request(method, path, headers=bearer(token(**who)))
    body = await response.json()
    assert response.status == 400, body
    assert body["errors"] == [{"field": field, "message": "given more than once"}]
    assert f"'{field.removeprefix('query.')}'" in body["detail"]
    assert await rig.notifier.pool.fetchval("SELECT count(*) FROM records.events") == events


# --------------------------------------------------------------------------------------------
# 3. a JWKS key of an algorithm that cannot verify stops the start as a configuration error
# --------------------------------------------------------------------------------------------


def _rsa_jwk(kid: str, **fields: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, **fields}


@pytest.mark.parametrize(("keys", "says"), [
    ([_rsa_jwk("rsa-1"), _rsa_jwk("nothing-1", alg="none")], "'nothing-1' (alg 'none')"),
    ([_rsa_jwk("odd-1", alg="XS999")], "'odd-1' (alg 'XS999')"),
    ([_rsa_jwk("mixed-1", alg="HS256")], "'mixed-1' (alg 'HS256')"),
])
def test_a_jwks_key_that_cannot_verify_stops_the_start_with_a_configuration_error(
        database_url: str, tmp_path: Path, keys: list[dict[str, Any]], says: str) -> None:
    """``"alg": "none"`` stopped it with PyJWT's bare NotImplementedError; a file of no
    usable key with PyJWKSetError ("Perhaps 'cryptography' is not installed?")."""
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": keys}))
    with pytest.raises(ConfigurationError, match="CASETRAIL_JWKS_FILE") as refused:
        create_app(make_settings(database_url, CASETRAIL_JWT_SECRET=None,
                                 CASETRAIL_JWKS_FILE=jwks_file))
    assert says in str(refused.value)
    with pytest.raises(ConfigurationError, match="CASETRAIL_JWKS_FILE") as refused:
        create_notifier_app(notifier_settings(database_url, "http://127.0.0.1:1", 25,
                                              CASETRAIL_JWT_SECRET=None,
                                              CASETRAIL_JWKS_FILE=jwks_file), background=False)
    assert says in str(refused.value)


@pytest.mark.parametrize(("document", "says"), [
    ({"keys": [1]}, "a list of JSON objects"),
    ({"keys": "rsa-1"}, "a list of JSON objects"),
    ({"keys": []}, "it holds no key"),
    ({"keys": [{**_rsa_jwk("listed-1"), "alg": ["RS256"]}]}, "kty, alg and kid are strings"),
])
def test_a_jwks_file_of_no_keys_stops_the_start_saying_why(
        database_url: str, tmp_path: Path, document: dict[str, Any], says: str) -> None:
    """A review found a list entry that is not a key answered with PyJWT's "Perhaps
    'cryptography' is not installed?", and an ``alg`` given as a list with a TypeError."""
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(document))
    with pytest.raises(ConfigurationError, match="CASETRAIL_JWKS_FILE") as refused:
        create_app(make_settings(database_url, CASETRAIL_JWT_SECRET=None,
                                 CASETRAIL_JWKS_FILE=jwks_file))
    assert says in str(refused.value)
    assert "cryptography" not in str(refused.value)


def test_the_records_service_exits_2_on_a_none_key(database_url: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [_rsa_jwk("nothing-1", alg="none")]}))
    monkeypatch.delenv("CASETRAIL_JWT_SECRET", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CASETRAIL_JWKS_FILE", str(jwks_file))
    assert cli.main(["records", "--port", "1"]) == 2
    error = capsys.readouterr().err
    assert "configuration: CASETRAIL_JWKS_FILE" in error
    assert "'nothing-1' (alg 'none')" in error


def test_an_encryption_key_beside_the_signing_keys_is_still_passed_over(
        database_url: str, tmp_path: Path) -> None:
    """Identity providers publish their encryption keys in the same file (Keycloak's
    RSA-OAEP): the start goes on with the keys that verify."""
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [_rsa_jwk("sig-1", alg="RS256", use="sig"),
                                              _rsa_jwk("enc-1", alg="RSA-OAEP", use="enc")]}))
    create_app(make_settings(database_url, CASETRAIL_JWT_SECRET=None,
                             CASETRAIL_JWKS_FILE=jwks_file))


# --------------------------------------------------------------------------------------------
# 4. user ids hold no control or formatting characters
# --------------------------------------------------------------------------------------------

INVISIBLE = ["cm-1\u202e", "cm\u200b1", "cm\u2066-1", "cm\x01-1", "cm\ufeff1"]


@pytest.mark.parametrize("value", INVISIBLE)
@pytest.mark.parametrize("claim", ["sub", "agency"])
async def test_a_token_naming_someone_with_invisible_characters_is_refused(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        token: TokenFactory, claim: str, value: str) -> None:
    """A sub of "cm-1\\u202e" was recorded as the actor of events, shown reversed in the
    exports a court reads."""
    client = await make_records_client(fresh_database_url)
    tok = token(**{claim: value})
    response = await client.post("/v1/cases", headers=bearer(tok), json={
        "participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "low"})
    body = await response.json()
    assert response.status == 401, body
    assert f"{claim} must be an identifier" in body["detail"]
    assert "formatting characters" in body["detail"]
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.events") == 0


@pytest.mark.parametrize("value", INVISIBLE)
async def test_a_case_manager_with_invisible_characters_is_refused_in_a_body(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        token: TokenFactory, value: str) -> None:
    client = await make_records_client(fresh_database_url)
    supervisor = bearer(token(role="supervisor", sub="sup-1"))
    opened = await client.post("/v1/cases", headers=supervisor, json={
        "participant": PARTICIPANT, "case_manager": value, "risk_level": "low"})
    assert opened.status == 422, await opened.text()
    assert [e["field"] for e in (await opened.json())["errors"]] == ["body.case_manager"]
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.events") == 0
    created = await client.post("/v1/cases", headers=supervisor, json={
        "participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "low"})
    case_id = (await created.json())["case_id"]
    transfer = await client.post(f"/v1/cases/{case_id}/transfer", headers=supervisor,
                                 json={"case_manager": value, "reason": "caseload balancing"})
    assert transfer.status == 422, await transfer.text()
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.events") == 1


async def test_a_preferences_path_with_invisible_characters_is_refused(
        rig: NotifierRig, token: TokenFactory) -> None:
    response = await rig.client.get("/v1/preferences/cm-1%E2%80%AE",
                                    headers=bearer(token(role="supervisor", sub="sup-1")))
    assert response.status == 400, await response.text()


async def test_setting_preferences_at_a_path_with_invisible_characters_writes_nothing(
        rig: NotifierRig, token: TokenFactory) -> None:
    count = "SELECT count(*) FROM notifier.directory"
    before = await rig.notifier.pool.fetchval(count)
    response = await rig.client.put(
        "/v1/preferences/cm-1%E2%80%AE", headers=bearer(token(role="supervisor", sub="sup-1")),
        json={"email": "cm-1@example.org", "delivery": "immediate", "timezone": "UTC",
              "celebrations": True})
    problem = await response.json()
    assert response.status == 400, problem
    assert response.content_type == "application/problem+json"
    assert await rig.notifier.pool.fetchval(count) == before


async def test_a_participant_name_keeps_its_joiners(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """Only user ids are held to this: a name may need ZWJ/ZWNJ in its script."""
    client = await make_records_client(fresh_database_url)
    name = "\u0645\u06cc\u200c\u0631\u0648\u0645"  # ZWNJ inside a Persian word
    response = await client.post("/v1/cases", headers=bearer(token()), json={
        "participant": {"name": name}, "case_manager": "cm-1", "risk_level": "low"})
    assert response.status == 201, await response.text()


# --------------------------------------------------------------------------------------------
# 5. the refusals of a review held twice and a removed strength say what to do
# --------------------------------------------------------------------------------------------


def test_a_review_held_twice_names_the_next_review() -> None:
    case = new_reviewed_case()
    first, second = uuid4(), uuid4()
    agree(case, first)
    hold(case, first, second, held_on="2025-01-15")
    with pytest.raises(d.InvalidTransition) as refused:
        hold(case, first)
    assert refused.value.code == "review_already_held"
    assert refused.value.detail == (f"This review was already held on 2025-01-15; the next"
                                    f" review is {second}: hold or reschedule that one.")


def test_a_review_held_before_the_case_closed_says_how_to_schedule_the_next() -> None:
    case = new_reviewed_case()
    first = uuid4()
    agree(case, first)
    hold(case, first, held_on="2025-01-15")
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    case.execute(d.ReopenCase(api.ReopenInput(reason="Came back")))
    with pytest.raises(d.InvalidTransition) as refused:
        hold(case, first)
    assert refused.value.detail == ("This review was already held on 2025-01-15; agreeing the"
                                    " plan with the participant again schedules the next"
                                    " review.")


def _removed_strength(case: d.InMemoryCase) -> UUID:
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(
        category="past_success", description="Held a warehouse job for two years")))
    case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="Recorded twice")))
    return strength


def test_a_removed_strength_says_what_to_do_instead() -> None:
    case = new_reviewed_case()
    strength = _removed_strength(case)
    commands: list[d.Command] = [
        d.SetGoal(uuid4(), api.GoalInput(title="Work", domain="employment", source="agency",
                                         strength_ids=[strength])),
        d.ReviseStrength(strength, api.StrengthRevision(description="Drives a forklift")),
        d.RemoveStrength(strength, api.RemovalReason(reason="again"))]
    for command in commands:
        with pytest.raises(d.DomainError) as refused:
            case.execute(command)
        assert refused.value.code == "strength_removed"
        assert refused.value.detail.startswith(
            f"The strength {strength} was removed from this plan; ")
    linked = _detail(case, commands[0])
    assert linked.endswith("; leave it out, or record it again and name the new one.")
    changed = _detail(case, commands[1])
    assert changed.endswith("; to use it again, record it as a new strength.")


def _detail(case: d.InMemoryCase, command: d.Command) -> str:
    with pytest.raises(d.DomainError) as refused:
        case.execute(command)
    return refused.value.detail


@pytest.mark.parametrize(("setting", "content", "says"), [
    ("CASETRAIL_JWKS_FILE", "not json", "CASETRAIL_JWKS_FILE is not JSON"),
    ("CASETRAIL_JWKS_FILE", '["a list"]', 'CASETRAIL_JWKS_FILE must hold a JSON object'),
    ("CASETRAIL_JWT_PUBLIC_KEY_FILE", "garbage", "CASETRAIL_JWT_PUBLIC_KEY_FILE holds no PEM"),
])
def test_a_key_file_that_cannot_be_read_stops_the_start_with_a_configuration_error(
        database_url: str, tmp_path: Path, setting: str, content: str, says: str) -> None:
    """They stopped it with JSONDecodeError, AttributeError or cryptography's ValueError and a
    traceback (exit 1), not the one line and exit 2 of the other configuration errors."""
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(ConfigurationError, match=says):
        create_app(make_settings(database_url, CASETRAIL_JWT_SECRET=None,
                                 **{setting: key_file}))
