"""The Elasticsearch backend against a real cluster: runs when ELASTICSEARCH_URL is set
(for example http://127.0.0.1:9200; `docker compose up elasticsearch` starts one),
skipped otherwise. The indexer builds fresh indices from PostgreSQL, and the same
questions get the same answers from both backends."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from securenow.server.runtime import Runtime
from securenow.v1 import common_pb2, search_pb2, search_pb2_grpc, users_pb2
from tests.conftest import extra_replica
from tests.dispatch_helpers import LA, SF, register_department
from tests.dispatch_helpers import raise_sos as raise_alert
from tests.helpers import Api
from tests.test_search import DRONE, provider

ELASTICSEARCH_URL = os.environ.get("ELASTICSEARCH_URL", "")
pytestmark = pytest.mark.skipif(not ELASTICSEARCH_URL, reason="ELASTICSEARCH_URL is not set")


@pytest.fixture
async def elastic_replica() -> AsyncIterator[Runtime]:
    prefix = f"securenow-test-{uuid.uuid4().hex[:8]}-"
    async with extra_replica("search-es", elasticsearch_url=ELASTICSEARCH_URL, elasticsearch_index_prefix=prefix) as rt:
        try:
            yield rt
        finally:
            elastic = rt.app.elastic
            assert elastic is not None
            await elastic.client.indices.delete(index=f"{prefix}*", allow_no_indices=True)


async def sync(rt: Runtime) -> None:
    """One indexer pass (as the leader would run it), then a refresh so it is searchable."""
    indexer, elastic = rt.app.search_indexer, rt.app.elastic
    assert indexer is not None
    assert elastic is not None
    await indexer.start()
    await indexer.step()
    await elastic.refresh()


async def test_both_backends_give_the_same_answers(api: Api, elastic_replica: Runtime) -> None:
    admin = await api.admin()
    await provider(api, admin, "Golden Gate Guards", tags=["armed"], description="Licensed armed guards", base=SF)
    await provider(api, admin, "Bay Drone Patrol", kind=DRONE, description="Night patrols by drone", base=SF)
    await provider(api, admin, "LA Guards", tags=["armed"], base=LA)
    await provider(api, admin, "Rejected Guards", tags=["armed"], verify=False)
    sf = await register_department(api, admin, SF, name="SFPD")
    person = await api.sign_up()
    await raise_alert(api, person, SF, description="A man in a red jacket is following me")
    await raise_alert(api, person, SF, description="Bike stolen")
    await sync(elastic_replica)

    near_sf = common_pb2.LatLng(latitude=SF[0], longitude=SF[1])
    provider_questions = [
        search_pb2.SearchProvidersRequest(query="armed"),
        search_pb2.SearchProvidersRequest(query="patrolling"),
        search_pb2.SearchProvidersRequest(tags=["armed"]),
        search_pb2.SearchProvidersRequest(near=near_sf, radius_m=20_000),
        search_pb2.SearchProvidersRequest(business_types=[DRONE]),
    ]
    incident_questions = [
        search_pb2.SearchIncidentsRequest(query="following"),
        search_pb2.SearchIncidentsRequest(),
        search_pb2.SearchIncidentsRequest(near=near_sf, radius_m=1_000),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{elastic_replica.grpc_port}") as ch:
        es = search_pb2_grpc.SearchServiceStub(ch)
        for question in provider_questions:
            from_pg = await api.search.SearchProviders(question, metadata=person.md)
            from_es = await es.SearchProviders(question, metadata=person.md)
            assert sorted(r.provider.id for r in from_es.results) == sorted(r.provider.id for r in from_pg.results)
            assert from_es.total_size == from_pg.total_size
        for iq in incident_questions:
            from_pg_i = await api.search.SearchIncidents(iq, metadata=sf.md)
            from_es_i = await es.SearchIncidents(iq, metadata=sf.md)
            es_ids, pg_ids = [r.incident.id for r in from_es_i.results], [r.incident.id for r in from_pg_i.results]
            if iq.query:
                assert sorted(es_ids) == sorted(pg_ids)  # relevance scores differ between engines
            else:
                assert es_ids == pg_ids  # newest first in both

        # A change reaches the index on the next pass: the rejected company stays out,
        # a newly verified one comes in.
        late_guards = await provider(api, admin, "Late Armed Guards", tags=["armed"])
        await sync(elastic_replica)
        armed = search_pb2.SearchProvidersRequest(tags=["armed"])
        late = await es.SearchProviders(armed, metadata=person.md)
        assert "Late Armed Guards" in [r.provider.company_name for r in late.results]
        assert "Rejected Guards" not in [r.provider.company_name for r in late.results]

        # A suspended owner's company leaves the results and the count alike.
        await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=late_guards.user_id), metadata=admin.md)
        await sync(elastic_replica)
        after = await es.SearchProviders(armed, metadata=person.md)
        assert "Late Armed Guards" not in [r.provider.company_name for r in after.results]
        assert after.total_size == len(after.results) == len(late.results) - 1
