"""Authorization audit of every notifier HTTP route, role by role (twentieth session).

One expected-outcome table, status code per caller and route, derived from the promises:

- design.md, Security: the roles ("case_manager (writes own caseload), supervisor (reads and
  audits all cases of the agency), auditor (read-only, scoped to named cases and a time
  window, for courts), analyst (aggregates only, no personal data), participant (reads own
  plan), service (the notifier's feed access)") and tenancy ("no request ever sees another
  agency's case; a wrong-agency id answers 404, not 403"; the service role is the one
  exception);
- design.md, Notifier: preferences, "a user sets their own, a supervisor those of their agency";
- docs/notifier.md, HTTP API: who may call each route (the "who" column), public operations
  routes, and "a token with a time window ... is refused by every route above that takes a
  token, 403 before anything is looked up";
- docs/decisions/0203: service, auditor and analyst tokens get 403 on preferences; "who reads
  an address: the person it belongs to and their agency's supervisors"; notifications are
  looked up within the caller's agency, "every role of another agency gets the answer a
  made-up id gets";
- docs/decisions/0004: a colleague's case is 403 within the agency, any other agency's 404;
  analysts and the service read no individual case, 403 "decided from the token before the
  case is looked up"; auditor/participant, case not named: 404;
- README, Operations: /healthz, /readyz, /metrics (and /openapi.json, /docs) ask for no token.

Where those are silent, the table says what a careful product does and marks it
"undocumented" (following the service where its choice is reasonable).

Every cell runs against real notifications of two agencies (a small win sent, review
reminders waiting, dead letters from a mail server's 550), made through the records API, the
feed and a real SMTP server. Reads and refused writes share one seeded world per module; a
write the table expects to succeed runs in a world of its own. A refused write must leave the
directory, the notifications, their attempts and the access log as they were; no write
reaches another agency's rows.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.common.auth import issue_token
from services.notifier.links import Entry, UnsubscribeLinks, read_secret
from services.records.http.app import create_app as create_records_app
from tests.conftest import JWT_SECRET, WHOLE_RECORD, FakeClock, bearer, make_settings
from tests.database_supply import DatabaseSupply
from tests.notifier_helpers import PUBLIC_URL, NotifierRig, Records, SmtpServer, make_rig
from tests.pg_waits import until_nothing_held_back

# the module's tests share one event loop, so that the seeded world serves every read cell
pytestmark = pytest.mark.asyncio(loop_scope="module")

A, B = "agency-a", "agency-b"
JO = {"name": "Jordan Rivera", "preferred_name": "Jo", "email": "jo@example.org"}
SAM = {"name": "Sam Okafor", "email": "sam@example.org"}
RIA = {"name": "Ria Banerjee", "email": "ria@example.org"}
REFUSED_FOR_GOOD = "550 5.1.1 <someone@example.org>: no such mailbox"
# what a write asks for: each differs from what is stored, so a refused write that went
# through after all shows in the directory
CHANGED = {"email": "changed@example.org", "delivery": "immediate",
           "timezone": "Europe/Berlin", "celebrations": False}


# ---------------------------------------------------------------------------------------------
# The callers

ROLES = (
    "case-manager-owner",           # cm-1, holds case A1 (agency-a)
    "case-manager-other-caseload",  # cm-2, agency-a, holds A2
    "supervisor",                   # sup-1, agency-a
    "supervisor-other-agency",      # sup-b, agency-b (holds B1's agency)
    "auditor-named-in-window",      # court, cases=[A1], window to 2100
    "auditor-named-outside-window",  # court, cases=[A1], window closed before A1 opened
    "auditor-not-named",            # court, cases=[A2]
    "analyst",
    "participant-of-case",          # jo, cases=[A1]
    "participant-of-other-case",    # sam, cases=[A2]
    "service",
    "no-token",
    "expired-token",                # a supervisor's, expired an hour ago
    "wrong-secret",                 # a supervisor's, signed with another secret
)


def credentials(role: str, ids: dict[str, str]) -> dict[str, str]:
    """The Authorization header ``role`` sends, minted now (tokens expire)."""
    def signed(sub: str, as_role: str, agency: str = A, secret: str = JWT_SECRET,
               **claims: Any) -> dict[str, str]:
        return bearer(issue_token(secret, sub=sub, role=as_role, agency=agency, **claims))

    match role:
        case "case-manager-owner":
            return signed("cm-1", "case_manager")
        case "case-manager-other-caseload":
            return signed("cm-2", "case_manager")
        case "supervisor":
            return signed("sup-1", "supervisor")
        case "supervisor-other-agency":
            return signed("sup-b", "supervisor", B)
        case "auditor-named-in-window":
            return signed("court-1", "auditor", cases=[ids["a1"]], window_to=WHOLE_RECORD)
        case "auditor-named-outside-window":
            return signed("court-1", "auditor", cases=[ids["a1"]],
                          window_to=datetime(2026, 3, 1, tzinfo=UTC))  # A1 opened 2 March
        case "auditor-not-named":
            return signed("court-1", "auditor", cases=[ids["a2"]], window_to=WHOLE_RECORD)
        case "analyst":
            return signed("an-1", "analyst")
        case "participant-of-case":
            return signed("jo", "participant", cases=[ids["a1"]])
        case "participant-of-other-case":
            return signed("sam", "participant", cases=[ids["a2"]])
        case "service":
            return signed("notifier-ops", "service")
        case "no-token":
            return {}
        case "expired-token":
            return signed("sup-1", "supervisor", ttl_seconds=-3600)
        case "wrong-secret":
            return signed("sup-1", "supervisor", secret="not-this-service-" + "s" * 32)
    raise AssertionError(role)


def agency_of(role: str) -> str | None:
    """The agency whose rows a caller's write may touch (None: any, or none)."""
    if role == "service" or role in ("no-token", "expired-token", "wrong-secret"):
        return None
    return B if role == "supervisor-other-agency" else A


# ---------------------------------------------------------------------------------------------
# The routes (paths name the seeded things by key: {a1} is case A1, {win_a1} its small win...)

@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None = None
    writes: bool = False
    public: bool = False


ROUTES: dict[str, Route] = {
    "GET /v1/preferences/{case manager}": Route("GET", "/v1/preferences/cm-1"),
    "PUT /v1/preferences/{case manager}": Route("PUT", "/v1/preferences/cm-1", CHANGED, True),
    "DELETE /v1/preferences/{case manager}": Route("DELETE", "/v1/preferences/cm-1",
                                                   writes=True),
    "GET /v1/preferences/{participant}": Route("GET", "/v1/preferences/jo"),
    "PUT /v1/preferences/{participant}": Route("PUT", "/v1/preferences/jo", CHANGED, True),
    "DELETE /v1/preferences/{participant}": Route("DELETE", "/v1/preferences/jo",
                                                  writes=True),
    "GET /v1/notifications": Route("GET", "/v1/notifications"),
    "GET /v1/notifications?recipient={case manager}": Route(
        "GET", "/v1/notifications?recipient=cm-1"),
    "GET /v1/notifications?case_id={case}": Route("GET", "/v1/notifications?case_id={a1}"),
    "GET /v1/notifications?status=dead": Route("GET", "/v1/notifications?status=dead"),
    "GET /v1/notifications/{small win}": Route("GET", "/v1/notifications/{win_a1}"),
    "GET /v1/notifications/{participant's dead letter}": Route(
        "GET", "/v1/notifications/{dead_jo}"),
    "GET /v1/notifications/{other agency's}": Route("GET", "/v1/notifications/{win_b1}"),
    "GET /v1/notifications/{unknown id}": Route("GET", "/v1/notifications/{unknown}"),
    "POST /v1/notifications/{case manager's dead letter}/retry": Route(
        "POST", "/v1/notifications/{dead_cm1}/retry", writes=True),
    "POST /v1/notifications/{participant's dead letter}/retry": Route(
        "POST", "/v1/notifications/{dead_jo}/retry", writes=True),
    "POST /v1/notifications/{other agency's dead letter}/retry": Route(
        "POST", "/v1/notifications/{dead_b1}/retry", writes=True),
    "GET /v1/schedule?case_id={case}": Route("GET", "/v1/schedule?case_id={a1}"),
    "GET /v1/schedule?case_id={other agency's case}": Route("GET", "/v1/schedule?case_id={b1}"),
    "GET /v1/access-log": Route("GET", "/v1/access-log"),
    "GET /v1/unsubscribe/{link}": Route("GET", "/v1/unsubscribe/{link_jo}", public=True),
    "POST /v1/unsubscribe/{link}": Route("POST", "/v1/unsubscribe/{link_jo}", writes=True,
                                         public=True),
    "GET /healthz": Route("GET", "/healthz", public=True),
    "GET /readyz": Route("GET", "/readyz", public=True),
    "GET /metrics": Route("GET", "/metrics", public=True),
    "GET /openapi.json": Route("GET", "/openapi.json", public=True),
    "GET /docs": Route("GET", "/docs", public=True),
    "GET /mail": Route("GET", "/mail", public=True),
}


def token_route(cm_owner: int, cm_other: int, sup: int, sup_b: int, analyst: int,
                participant: int, participant_other: int, service: int) -> dict[str, int]:
    """A row of a route that takes a token. Every auditor token carries a window (README: one
    without is 401), so auditors get the windowed 403 on every such route (notifier.md: "403
    before anything is looked up", whether the window shows the case or not, and whether the
    token names it or not: decisions 0006, 0203); no token, an expired one or one signed with
    another secret is 401."""
    return dict(zip(ROLES, (cm_owner, cm_other, sup, sup_b, 403, 403, 403, analyst, participant,
                            participant_other, service, 401, 401, 401), strict=True))


def public(status: int) -> dict[str, int]:
    """A route that asks for no token: every caller gets the same answer, whatever
    Authorization header it sends (README, Operations: "None of the three asks for a token")."""
    return dict.fromkeys(ROLES, status)


# columns:                       cm-own cm-oth  sup  sup-b analyst  jo   sam  service
EXPECTED: dict[str, dict[str, int]] = {
    # design.md: "a user sets their own, a supervisor those of their agency"; 0203: service,
    # auditor and analyst tokens 403; another agency's supervisor: the entry is looked up in
    # their own agency, which has none (tenancy: 404, as an unknown user).
    "GET /v1/preferences/{case manager}": token_route(200, 403, 200, 404, 403, 403, 403, 403),
    # sup-b: undocumented. The agency comes from the token (0203), so agency-b's supervisor
    # sets agency-b's own entry for that user id; agency-a's entry is untouched (checked).
    "PUT /v1/preferences/{case manager}": token_route(200, 403, 200, 200, 403, 403, 403, 403),
    "DELETE /v1/preferences/{case manager}": token_route(204, 403, 204, 404, 403, 403, 403,
                                                         403),
    # 0203: "Who reads an address: the person it belongs to and their agency's supervisors
    # (GET /v1/preferences/{user}), no one else" (so not the case manager).
    "GET /v1/preferences/{participant}": token_route(403, 403, 200, 404, 403, 200, 403, 403),
    # sup-b: undocumented, as for the case manager's entry above.
    "PUT /v1/preferences/{participant}": token_route(403, 403, 200, 200, 403, 200, 403, 403),
    "DELETE /v1/preferences/{participant}": token_route(403, 403, 204, 404, 403, 204, 403,
                                                        403),
    # notifier.md: "supervisor (agency), case manager (own and their cases), participant (own
    # case), service (all)"; analysts 403 (0004: aggregates only). A participant lists by one
    # of their cases: undocumented 422 naming query.case_id (the service's; the same for any
    # id, so it tells nothing).
    "GET /v1/notifications": token_route(200, 200, 200, 200, 403, 422, 422, 200),
    "GET /v1/notifications?recipient={case manager}": token_route(200, 200, 200, 200, 403, 422,
                                                                  422, 200),
    # cm-2 and sup-b: a filter naming a case they may not see answers an empty page
    # (undocumented; checked below: it is empty, exactly as for an unknown case)
    "GET /v1/notifications?case_id={case}": token_route(200, 200, 200, 200, 403, 200, 422, 200),
    "GET /v1/notifications?status=dead": token_route(200, 200, 200, 200, 403, 422, 422, 200),
    # "as above" (notifier.md): a colleague's notice is 404, undocumented (the service: "no
    # such notification"; a notice is not a case, and 404 hides it as an unknown id is).
    # Analysts: undocumented in the notifier's docs; decision 0004 refuses them every
    # individual case "403 ... decided from the token before the case is looked up", as the
    # notifier's own listing and schedule do: so 403 here too.
    "GET /v1/notifications/{small win}": token_route(200, 404, 200, 404, 403, 404, 404, 200),
    "GET /v1/notifications/{participant's dead letter}": token_route(200, 404, 200, 404, 403,
                                                                     200, 404, 200),
    # 0203: "every role of another agency gets the answer a made-up id gets"
    "GET /v1/notifications/{other agency's}": token_route(404, 404, 404, 200, 403, 404, 404,
                                                          200),
    "GET /v1/notifications/{unknown id}": token_route(404, 404, 404, 404, 403, 404, 404, 404),
    # notifier.md: "supervisor, service, the recipient (a participant: of a notice addressed
    # to their case), the case's manager now (of a notice to its case manager)"; whoever may
    # see the notice but not retry it gets 403, whoever may not see it 404.
    "POST /v1/notifications/{case manager's dead letter}/retry": token_route(
        202, 404, 202, 404, 403, 404, 404, 202),
    "POST /v1/notifications/{participant's dead letter}/retry": token_route(
        403, 404, 202, 404, 403, 202, 404, 202),
    "POST /v1/notifications/{other agency's dead letter}/retry": token_route(
        404, 404, 404, 202, 403, 404, 404, 202),
    # notifier.md: "the case manager, supervisors"; a colleague 403 as in records (0004); a
    # participant's own case 403 (not a reader), a case their token does not name 404
    # (0004); another agency's case 404; the service reads no schedule (403).
    "GET /v1/schedule?case_id={case}": token_route(200, 403, 200, 404, 403, 403, 404, 403),
    "GET /v1/schedule?case_id={other agency's case}": token_route(404, 404, 404, 200, 403, 404,
                                                                  404, 403),
    # 0203: "supervisors only (anyone else 403), their own agency's entries only"
    "GET /v1/access-log": token_route(403, 403, 200, 200, 403, 403, 403, 403),
    # notifier.md: public, no token: the link is the credential (a page; one click turns
    # celebrations off for the entry it names, whoever sends it)
    "GET /v1/unsubscribe/{link}": public(200),
    "POST /v1/unsubscribe/{link}": public(200),
    "GET /healthz": public(200),
    "GET /readyz": public(200),  # the feed was read once
    "GET /metrics": public(200),
    "GET /openapi.json": public(200),
    "GET /docs": public(200),
    "GET /mail": public(404),  # no NOTIFIER_DEV_MAIL_DIR here: "only when ... set"
}

CELLS = [(role, route) for route in ROUTES for role in ROLES]


# ---------------------------------------------------------------------------------------------
# The world: two agencies' cases, real notifications

@dataclass
class World:
    rig: NotifierRig
    records: TestClient[Any, Any]
    smtp: SmtpServer
    ids: dict[str, str] = field(default_factory=dict)

    async def close(self) -> None:
        await self.rig.client.close()
        await self.records.close()
        await self.smtp.stop()

    def path(self, route: Route) -> str:
        return route.path.format(**self.ids)

    async def state(self, agency: str | None = None) -> list[list[tuple[Any, ...]]]:
        """The notifier's tables (of one agency, or all), as a refused write must leave them."""
        pool = self.rig.notifier.pool
        where = "WHERE agency = $1" if agency else "WHERE $1::text IS NULL"
        tables = ["notifier.directory " + where + " ORDER BY agency, kind, user_id",
                  "notifier.notifications " + where + " ORDER BY id"]
        if agency is None:
            tables += ["notifier.attempts WHERE $1::text IS NULL ORDER BY 1",
                       "notifier.access_log WHERE $1::text IS NULL ORDER BY id"]
        return [[tuple(r) for r in await pool.fetch(f"SELECT * FROM {t}", agency)]
                for t in tables]


async def _client(app: web.Application) -> TestClient[Any, Any]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


def _writer(records: TestClient[Any, Any], sub: str, agency: str = A) -> Records:
    return Records(records, issue_token(JWT_SECRET, sub=sub, role="case_manager", agency=agency))


async def build_world(database_url: str, secret_file: Path) -> World:
    """Agency A: case A1 (cm-1, participant jo, who opted in), A2 (cm-2, participant sam);
    agency B: case B1 (cm-b1, participant jo-b, opted in). Each plan agreed (review reminders
    waiting), a step completed (a small win, sent), and for A1 and B1 a goal achieved whose
    milestones the mail server refused for good (550: dead letters to the case manager and
    to the participant)."""
    clock = FakeClock()
    smtp = await SmtpServer().start()
    records = await _client(create_records_app(make_settings(database_url), clock=clock))
    rig = await make_rig(lambda app: _client(app), database_url, records, smtp, clock,
                         NOTIFIER_PUBLIC_URL=PUBLIC_URL, NOTIFIER_LINK_SECRET_FILE=str(secret_file))
    world = World(rig, records, smtp)
    cm1, cm2, cmb = _writer(records, "cm-1"), _writer(records, "cm-2"), _writer(records, "cm-b1", B)
    a1 = await cm1.open_case("cm-1", participant=JO)
    a2 = await cm2.open_case("cm-2", participant=SAM)
    b1 = await cmb.open_case("cm-b1", participant=RIA)

    def tok(sub: str, role: str, agency: str = A, cases: list[str] | None = None) -> str:
        return issue_token(JWT_SECRET, sub=sub, role=role, agency=agency, cases=cases)

    await rig.set_prefs("cm-1", tok("cm-1", "case_manager"))
    await rig.set_prefs("cm-2", tok("cm-2", "case_manager"))
    await rig.set_prefs("sup-1", tok("sup-1", "supervisor"))
    await rig.set_prefs("jo", tok("jo", "participant", cases=[a1]))
    await rig.set_prefs("cm-b1", tok("cm-b1", "case_manager", B))
    await rig.set_prefs("sup-b", tok("sup-b", "supervisor", B))
    await rig.set_prefs("jo-b", tok("jo-b", "participant", B, cases=[b1]))
    for writer, case in ((cm1, a1), (cm2, a2), (cmb, b1)):
        await writer.complete(case, await writer.step(case, await writer.goal(case)))
        await writer.agree(case)
    await rig.catch_up()
    await rig.dispatch()
    for writer, case in ((cm1, a1), (cmb, b1)):
        await writer.achieve(case, await writer.goal(case, "Get my licence", "Drive to work"))
    await rig.catch_up()
    smtp.replies = [REFUSED_FOR_GOOD] * 4
    await rig.dispatch()
    assert (len(smtp.refused), smtp.replies) == (4, []), smtp.refused

    async def one(**where: Any) -> str:
        [row] = await rig.rows(**where)
        return str(row["id"])

    links = UnsubscribeLinks(PUBLIC_URL, read_secret(secret_file))
    world.ids = {
        "a1": a1, "a2": a2, "b1": b1, "unknown": "3f8e5b0c-9d7a-4c1e-8b2f-6a5d4c3b2a10",
        "win_a1": await one(kind="small_win", recipient="cm-1", status="sent"),
        "win_b1": await one(kind="small_win", recipient="cm-b1", status="sent"),
        "dead_cm1": await one(kind="milestone", recipient="cm-1", status="dead"),
        "dead_jo": await one(kind="milestone", recipient=f"participant:{a1}", status="dead"),
        "dead_b1": await one(kind="milestone", recipient="cm-b1", status="dead"),
        "link_jo": links.token(Entry(A, "jo")),
    }
    assert len(await rig.rows(kind="review_reminder", status="scheduled")) == 3
    return world


def _secret(folder: Path) -> Path:
    path = folder / "link-secret"
    path.write_text(secrets.token_urlsafe(48) + "\n")
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(database_supply: DatabaseSupply,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """The world every read cell asks in (reads change nothing but the access log)."""
    with database_supply.borrowed() as url:
        world = await build_world(url, _secret(tmp_path_factory.mktemp("authz")))
        yield world
        await world.close()


WorldFactory = Callable[[], Awaitable[World]]


@pytest_asyncio.fixture(loop_scope="module")
async def own_world(database_supply: DatabaseSupply,
                    tmp_path: Path) -> AsyncIterator[WorldFactory]:
    """A world of the test's own, made when asked for (a write must not change the world
    other cells ask in)."""
    made: list[World] = []
    with ExitStack() as databases:  # dropped once the worlds on them are closed

        async def make() -> World:
            url = databases.enter_context(database_supply.borrowed())
            made.append(await build_world(url, _secret(tmp_path)))
            return made[-1]

        yield make
        for world in made:
            await world.close()


async def ask(world: World, route: Route, headers: dict[str, str]) -> tuple[int, str, Any]:
    """Status, content type and body (JSON when it is JSON) of one request."""
    response = await world.rig.client.request(route.method, world.path(route), json=route.body,
                                              headers=headers)
    text = await response.text()
    body: Any = json.loads(text) if "json" in response.content_type else text
    return response.status, response.content_type, body


# ---------------------------------------------------------------------------------------------
# The table

async def test_the_table_covers_every_route_the_notifier_serves() -> None:
    """Every API route the notifier registers has a row, and every row is a route it serves
    (a route added later must be added to the table). /v1/access-log is the notifier's too."""
    from services.notifier.http.app import create_app as create_notifier_app
    from services.notifier.settings import NotifierSettings

    app = create_notifier_app(NotifierSettings.model_validate(
        {"DATABASE_URL": "postgresql://unused/none", "CASETRAIL_JWT_SECRET": JWT_SECRET}),
        background=False)
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    tabled = {(route.method, route.path.split("?")[0]) for route in ROUTES.values()}
    generic = {"/v1/preferences/cm-1": "/v1/preferences/{user}",
               "/v1/preferences/jo": "/v1/preferences/{user}",
               "/v1/notifications/{win_a1}": "/v1/notifications/{notification_id}",
               "/v1/notifications/{dead_jo}": "/v1/notifications/{notification_id}",
               "/v1/notifications/{win_b1}": "/v1/notifications/{notification_id}",
               "/v1/notifications/{unknown}": "/v1/notifications/{notification_id}",
               "/v1/notifications/{dead_cm1}/retry":
                   "/v1/notifications/{notification_id}/retry",
               "/v1/notifications/{dead_jo}/retry": "/v1/notifications/{notification_id}/retry",
               "/v1/notifications/{dead_b1}/retry": "/v1/notifications/{notification_id}/retry",
               "/v1/unsubscribe/{link_jo}": "/v1/unsubscribe/{token}"}
    tabled = {(method, generic.get(path, path)) for method, path in tabled}
    assert served == tabled
    assert set(EXPECTED) == set(ROUTES)


@pytest.mark.parametrize(("role", "route_name"), CELLS,
                         ids=[f"{role}:{route}" for role, route in CELLS])
async def test_each_caller_gets_what_the_docs_promise_on_each_route(
        shared: World, own_world: Callable[[], Awaitable[World]], role: str,
        route_name: str) -> None:
    route = ROUTES[route_name]
    expected = EXPECTED[route_name][role]
    # a world takes ~1-2 s to build: only a write that changes it needs one of its own
    world = await own_world() if route.writes and expected < 400 else shared
    headers = credentials(role, world.ids)
    before = await world.state() if route.writes else None
    # a public route takes no token: the unsubscribe link is the credential, whoever sends it
    others = None if route.public else agency_of(role)
    other_agency = {A: B, B: A}.get(others) if others else None
    untouched = await world.state(other_agency) if other_agency else None
    status, content_type, body = await ask(world, route, headers)
    assert status == expected, (status, body)
    if status >= 400 and not route.public:
        assert content_type == "application/problem+json", body
        assert body["status"] == status, body
        assert body.get("detail"), body
    if route.writes and status >= 400:  # a refused write changes nothing at all
        assert await world.state() == before
    if other_agency is not None:  # nobody's request touches another agency's rows
        assert await world.state(other_agency) == untouched


# ---------------------------------------------------------------------------------------------
# What a listing shows each caller

async def _truth(world: World) -> list[dict[str, Any]]:
    """Every notification with the case manager now holding its case (the database's view)."""
    rows = await world.rig.notifier.pool.fetch(
        "SELECT n.id, n.agency, n.case_id, n.recipient, n.status, c.case_manager"
        " FROM notifier.notifications n LEFT JOIN notifier.cases c ON c.case_id = n.case_id")
    return [dict(r) for r in rows]


def _visible(role: str, row: dict[str, Any], ids: dict[str, str]) -> bool:
    """Whose notices each reader sees (docs/notifier.md: "supervisor (agency), case manager
    (own and their cases), participant (own case), service (all)")."""
    match role:
        case "case-manager-owner" | "case-manager-other-caseload":
            me = "cm-1" if role == "case-manager-owner" else "cm-2"
            return bool(row["agency"] == A and me in (row["recipient"], row["case_manager"]))
        case "supervisor":
            return bool(row["agency"] == A)
        case "supervisor-other-agency":
            return bool(row["agency"] == B)
        case "participant-of-case":
            return bool(row["recipient"] == f"participant:{ids['a1']}")
        case "participant-of-other-case":
            return bool(row["recipient"] == f"participant:{ids['a2']}")
        case "service":
            return True
    raise AssertionError(role)


# filters (query templates over the seeded ids) each lister may send
STAFF_FILTERS = ["", "recipient=cm-1", "recipient=cm-2", "recipient=supervisors",
                 "recipient=cm-b1", "case_id={a1}", "case_id={a2}", "case_id={b1}",
                 "status=dead", "status=sent", "status=scheduled", "recipient=cm-1&status=dead",
                 "case_id={a1}&status=dead", "case_id={b1}&recipient=cm-b1"]
LISTINGS = {
    "case-manager-owner": STAFF_FILTERS,
    "case-manager-other-caseload": STAFF_FILTERS,
    "supervisor": STAFF_FILTERS,
    "supervisor-other-agency": STAFF_FILTERS,
    "service": STAFF_FILTERS,
    "participant-of-case": ["case_id={a1}", "case_id={a1}&status=dead",
                            "case_id={a1}&status=sent", "case_id={a1}&recipient=cm-1",
                            "case_id={a1}&recipient=supervisors"],
    "participant-of-other-case": ["case_id={a2}", "case_id={a2}&status=dead",
                                  "case_id={a2}&recipient=cm-2"],
}


def _matches(query: str, row: dict[str, Any]) -> bool:
    for pair in filter(None, query.split("&")):
        name, value = pair.split("=", 1)
        if str(row[name]) != value:
            return False
    return True


@pytest.mark.parametrize("role", sorted(LISTINGS))
async def test_a_listing_holds_exactly_the_callers_rows_that_match_its_filters(
        shared: World, role: str) -> None:
    """For every filter a caller may send, the listing is exactly the rows the docs let them
    see that match every filter asked: never another agency's or another caseload's row,
    and never a row that does not match a filter (a filter narrows, it never widens or is
    set aside)."""
    truth = await _truth(shared)
    assert {r["agency"] for r in truth} == {A, B}
    wrong: dict[str, Any] = {}
    for template in LISTINGS[role]:
        query = template.format(**shared.ids)
        response = await shared.rig.client.get(f"/v1/notifications?{query}&limit=500",
                                               headers=credentials(role, shared.ids))
        body = await response.json()
        assert response.status == 200, (query, body)
        listed = {n["id"] for n in body["notifications"]}
        expected = {str(r["id"]) for r in truth
                    if _visible(role, r, shared.ids) and _matches(query, r)}
        if listed != expected:
            wrong[template] = {
                "listed but not theirs or not matching": sorted(
                    (r["recipient"], r["status"]) for r in truth
                    if str(r["id"]) in listed - expected),
                "theirs and matching but not listed": sorted(
                    (r["recipient"], r["status"]) for r in truth
                    if str(r["id"]) in expected - listed)}
    assert wrong == {}


async def test_an_agencys_access_log_shows_no_read_of_another_agency(shared: World) -> None:
    """Agency A's supervisor reads A1's schedule, a notice and Jo's preferences (each logged);
    agency B's supervisor reading the notifier's access log, filtered by A1 or not, sees none
    of it, and A's supervisor sees those reads."""
    ids = shared.ids
    a_sup = credentials("supervisor", ids)
    for path in (f"/v1/schedule?case_id={ids['a1']}", f"/v1/notifications/{ids['dead_jo']}",
                 "/v1/preferences/jo"):
        assert (await shared.rig.client.get(path, headers=a_sup)).status == 200, path
    b_sup = credentials("supervisor-other-agency", ids)
    for query in ("", f"?case_id={ids['a1']}"):
        response = await shared.rig.client.get(f"/v1/access-log{query}", headers=b_sup)
        body = await response.json()
        assert response.status == 200, body
        assert [(e["actor_sub"], e["case_id"]) for e in body["entries"]
                if e["actor_sub"] != "sup-b"] == [], query
        assert all(e["case_id"] in (None, ids["b1"]) for e in body["entries"]), body
    # a transaction open anywhere on the shared server holds the reads back for a moment
    await until_nothing_held_back(shared.rig.notifier.pool, "notifier.access_log")
    mine = await (await shared.rig.client.get(f"/v1/access-log?case_id={ids['a1']}&limit=500",
                                              headers=a_sup)).json()
    assert {"schedule", "preferences", f"notification {ids['dead_jo']}"} <= {
        e["what"] for e in mine["entries"] if e["actor_sub"] == "sup-1"}


# ---------------------------------------------------------------------------------------------
# Another agency's id answers exactly as an unknown id

def _without_request(body: dict[str, Any], *names: str) -> dict[str, Any]:
    """A problem without what differs by request (the path it names, its request id), and
    the user or id the path names replaced by a placeholder."""
    shown = {k: v for k, v in body.items() if k not in ("instance", "request_id")}
    text = json.dumps(shown)
    for name in names:
        text = text.replace(name, "<named>")
    result: dict[str, Any] = json.loads(text)
    return result


HIDDEN = {
    # (caller, method, path of a thing they may not see, path of one that does not exist)
    "supervisor: another agency's notification": (
        "supervisor", "GET", "/v1/notifications/{win_b1}", "/v1/notifications/{unknown}"),
    "supervisor: another agency's dead letter, retried": (
        "supervisor", "POST", "/v1/notifications/{dead_b1}/retry",
        "/v1/notifications/{unknown}/retry"),
    "case manager: another agency's notification": (
        "case-manager-owner", "GET", "/v1/notifications/{dead_b1}",
        "/v1/notifications/{unknown}"),
    "case manager: a colleague's notification": (
        "case-manager-other-caseload", "GET", "/v1/notifications/{win_a1}",
        "/v1/notifications/{unknown}"),
    "case manager: a colleague's dead letter, retried": (
        "case-manager-other-caseload", "POST", "/v1/notifications/{dead_cm1}/retry",
        "/v1/notifications/{unknown}/retry"),
    "participant: another participant's notice": (
        "participant-of-other-case", "GET", "/v1/notifications/{dead_jo}",
        "/v1/notifications/{unknown}"),
    "participant: another agency's notice": (
        "participant-of-case", "GET", "/v1/notifications/{win_b1}",
        "/v1/notifications/{unknown}"),
    "supervisor-other-agency: a notification": (
        "supervisor-other-agency", "GET", "/v1/notifications/{dead_jo}",
        "/v1/notifications/{unknown}"),
    "supervisor: another agency's schedule": (
        "supervisor", "GET", "/v1/schedule?case_id={b1}", "/v1/schedule?case_id={unknown}"),
    "case manager: another agency's schedule": (
        "case-manager-owner", "GET", "/v1/schedule?case_id={b1}",
        "/v1/schedule?case_id={unknown}"),
    "supervisor: another agency's case manager's preferences": (
        "supervisor", "GET", "/v1/preferences/cm-b1", "/v1/preferences/nobody-here"),
    "supervisor: another agency's participant's preferences": (
        "supervisor", "GET", "/v1/preferences/jo-b?role=participant",
        "/v1/preferences/nobody-here?role=participant"),
    "supervisor: another agency's entry, deleted": (
        "supervisor", "DELETE", "/v1/preferences/cm-b1", "/v1/preferences/nobody-here"),
}


@pytest.mark.parametrize(("role", "method", "hidden", "unknown"), HIDDEN.values(),
                         ids=HIDDEN.keys())
async def test_what_a_caller_may_not_see_answers_exactly_as_what_does_not_exist(
        shared: World, role: str, method: str, hidden: str, unknown: str) -> None:
    """Tenancy (design.md: "a wrong-agency id answers 404, not 403"; 0203: "every role of
    another agency gets the answer a made-up id gets"): the status, the headers' names and
    the problem body (but for the path and request id it names) are the same for a thing of
    another agency (or another caseload's notice, another participant's) and for one that
    does not exist; and nothing is written (a DELETE of another agency's entry included)."""
    ids = shared.ids
    headers = credentials(role, ids)
    before = await shared.state()
    answers = []
    for path in (hidden.format(**ids), unknown.format(**ids)):
        response = await shared.rig.client.request(method, path, headers=headers)
        answers.append((response.status, response.content_type,
                        sorted(h for h in response.headers
                               if h not in ("Date", "X-Request-Id", "Content-Length")),
                        _without_request(await response.json(), *ids.values(), "cm-b1",
                                         "jo-b", "nobody-here")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404
    state_now = await shared.state()
    # reads of a case are logged only when answered; a 404 logs nothing
    assert state_now == before


# ---------------------------------------------------------------------------------------------
# User ids that are the notifier's own recipient names

@pytest.mark.parametrize("name", ["supervisors", "participant:{a1}"])
async def test_a_case_manager_whose_id_is_a_recipient_name_reads_no_one_elses_notices(
        shared: World, name: str) -> None:
    """The notifier addresses the agency's supervisors' copy of an overdue notice to the
    recipient ``supervisors``, and a participant's notices to ``participant:<case>``. Both
    are user ids the records service and the tokens accept (1-200 characters, no control or
    formatting character), and a case manager sees "own and their cases" (notifier.md): a
    case manager with such an id, holding no case, must list none of those notices of cases
    other case managers hold, nor read or retry one by its id."""
    ids = shared.ids
    sub = name.format(**ids)
    header = bearer(issue_token(JWT_SECRET, sub=sub, role="case_manager", agency=A))
    listing = await (await shared.rig.client.get("/v1/notifications?limit=500",
                                                 headers=header)).json()
    theirs = [r for r in await shared.rig.rows(recipient=sub)
              if r["status"] in ("dead", "scheduled")]
    assert theirs, "the seeded world has notices addressed to that name"
    one = await shared.rig.client.get(f"/v1/notifications/{theirs[0]['id']}", headers=header)
    seen = {"listed": sorted((n["kind"], n["recipient"]) for n in listing["notifications"]),
            "read by id": one.status}
    assert seen == {"listed": [], "read by id": 404}
