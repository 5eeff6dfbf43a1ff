"""The participant's side of the records service: a participant token reaches only the cases it
names, and its refusals tell nothing about cases it does not name."""

from __future__ import annotations

import asyncpg

from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi

READS = ["GET {c}", "HEAD {c}", "GET {c}?as_of_version=1", "GET {c}/history",
         "GET {c}/diff?from_version=1&to_version=2", "GET {c}/verify", "GET {c}/export"]


async def test_a_case_a_participant_token_does_not_name_is_refused_without_being_read(
        fresh_database_url: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    """Another case of their agency answers a participant 404, as a made-up id does, and as
    fast: it was read first (its plan fetched and parsed) and refused after, so a large plan
    took 1.2-1.4 ms against 0.5-0.6 ms for a made-up id (medians of 300 interleaved reads,
    twice), telling which ids are cases of the agency. With the plans locked, such a read
    waited for the lock (here a 503 after the 1 s command timeout); now the token decides."""
    client = await make_records_client(fresh_database_url, CASETRAIL_DB_COMMAND_TIMEOUT=1)
    owner = CaseApi(client, token())
    own, other = await owner.open_case(), await owner.open_case()
    participant = bearer(token(role="participant", sub="zoe", cases=[own]))
    holder = await asyncpg.connect(fresh_database_url)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE records.plans IN ACCESS EXCLUSIVE MODE")
            for template in READS:
                method, path = template.split(" ")
                response = await client.request(method, path.format(c=f"/v1/cases/{other}"),
                                                headers=participant)
                assert response.status == 404, (template, response.status)
            # the lock does hold reads up: the participant's own plan waits for it
            response = await client.get(f"/v1/cases/{own}", headers=participant)
            assert response.status == 503
    finally:
        await holder.close()
