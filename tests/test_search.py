"""SearchService over the embedded PostgreSQL backend: providers by text, kind, rating,
tags and distance; incidents by text, status, time and place, each agency seeing only
its own; paging and input errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from securenow.server.services.search import FALLBACKS
from securenow.v1 import agency_pb2, common_pb2, providers_pb2, search_pb2, search_pb2_grpc
from tests.conftest import extra_replica
from tests.dispatch_helpers import LA, SF, register_department, square
from tests.dispatch_helpers import raise_sos as raise_alert
from tests.helpers import Account, Api, expect_error

GUARD = providers_pb2.PROVIDER_TYPE_SECURITY_GUARD
DRONE = providers_pb2.PROVIDER_TYPE_DRONE_PATROL


async def provider(
    api: Api,
    admin: Account,
    company: str,
    *,
    kind: int = GUARD,
    tags: list[str] | None = None,
    description: str = "",
    base: tuple[float, float] | None = None,
    area: str = "",
    verify: bool = True,
) -> providers_pb2.Provider:
    """A provider with a profile; verified by the admin unless `verify` is False."""
    owner, created = await api.verified_provider(admin, company=company, business_type=kind)
    changes = providers_pb2.Provider(id=created.id, tags=tags or [], description=description)
    paths = ["tags", "description"]
    if base is not None:
        changes.base_location.CopyFrom(common_pb2.LatLng(latitude=base[0], longitude=base[1]))
        paths.append("base_location")
    if area:
        changes.service_area_geojson = area
        paths.append("service_area_geojson")
    updated = await api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(provider=changes, update_mask=field_mask_pb2.FieldMask(paths=paths)),
        metadata=owner.md,
    )
    if not verify:
        await api.providers.VerifyProvider(
            providers_pb2.VerifyProviderRequest(
                provider_id=created.id, decision=common_pb2.VERIFICATION_STATUS_REJECTED
            ),
            metadata=admin.md,
        )
    return updated.provider


def names(resp: search_pb2.SearchProvidersResponse) -> list[str]:
    return [r.provider.company_name for r in resp.results]


async def test_text_search_finds_verified_providers_by_name_tags_and_description(api: Api) -> None:
    admin = await api.admin()
    await provider(api, admin, "Golden Gate Guards", tags=["armed", "event"], description="Licensed armed guards")
    await provider(api, admin, "Bay Drone Patrol", kind=DRONE, description="Night patrols of warehouses by drone")
    await provider(api, admin, "Guard Rejects Ltd", tags=["armed"], verify=False)
    person = await api.sign_up()
    search = api.search.SearchProviders

    armed = await search(search_pb2.SearchProvidersRequest(query="armed"), metadata=person.md)
    # The rejected company is never found, though its tags match.
    assert names(armed) == ["Golden Gate Guards"]
    assert armed.total_size == 1
    assert armed.results[0].score > 0
    # Stemming: "patrolling warehouse" matches "patrols of warehouses".
    drones = await search(search_pb2.SearchProvidersRequest(query="patrolling warehouse"), metadata=person.md)
    assert names(drones) == ["Bay Drone Patrol"]
    # Every word must match; quoted phrases and exclusions work as on the web.
    assert names(await search(search_pb2.SearchProvidersRequest(query="armed drone"), metadata=person.md)) == []
    both = await search(search_pb2.SearchProvidersRequest(query="guards or drone"), metadata=person.md)
    assert sorted(names(both)) == ["Bay Drone Patrol", "Golden Gate Guards"]
    assert names(await search(search_pb2.SearchProvidersRequest(query="guards -armed"), metadata=person.md)) == []
    # The name weighs more than the description.
    await provider(api, admin, "Night Owls Security", description="guards")
    ranked = await search(search_pb2.SearchProvidersRequest(query="guards"), metadata=person.md)
    assert names(ranked) == ["Golden Gate Guards", "Night Owls Security"]
    assert ranked.results[0].score > ranked.results[1].score


async def test_filters_by_kind_rating_and_tags(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    guard = await provider(api, admin, "Alpha Guards", tags=["armed", "k9"])
    await provider(api, admin, "Beta Guards", tags=["armed"])
    await provider(api, admin, "Gamma Drones", kind=DRONE, tags=["armed", "k9"])
    # Ratings come from reviews of completed bookings; set one directly for the filter.
    await db_conn.execute("UPDATE providers SET rating = 4.5 WHERE id = $1", guard.id)
    person = await api.sign_up()
    search = api.search.SearchProviders

    guards = await search(search_pb2.SearchProvidersRequest(business_types=[GUARD]), metadata=person.md)
    # Without text or place: best rated first, then a stable order.
    assert names(guards)[0] == "Alpha Guards"
    assert sorted(names(guards)) == ["Alpha Guards", "Beta Guards"]
    k9 = await search(search_pb2.SearchProvidersRequest(tags=["K9", "armed"]), metadata=person.md)
    assert sorted(names(k9)) == ["Alpha Guards", "Gamma Drones"]
    rated = await search(search_pb2.SearchProvidersRequest(min_rating=4), metadata=person.md)
    assert names(rated) == ["Alpha Guards"]
    assert rated.results[0].provider.rating == 4.5


async def test_near_orders_by_distance_and_counts_service_areas(api: Api) -> None:
    admin = await api.admin()
    await provider(api, admin, "Downtown Guards", base=(SF[0] + 0.01, SF[1]))  # ~1.1 km north
    await provider(api, admin, "Mission Guards", base=(SF[0] - 0.03, SF[1]))  # ~3.3 km south
    await provider(api, admin, "LA Guards", base=LA)
    # Based in LA but serving all of San Francisco.
    await provider(api, admin, "Statewide Patrol", base=LA, area=square(SF, 0.2))
    person = await api.sign_up()
    near_sf = common_pb2.LatLng(latitude=SF[0], longitude=SF[1])

    resp = await api.search.SearchProviders(
        search_pb2.SearchProvidersRequest(near=near_sf, radius_m=10_000), metadata=person.md
    )
    assert names(resp) == ["Downtown Guards", "Mission Guards", "Statewide Patrol"]
    assert 1_000 < resp.results[0].distance_m < 1_250
    assert 3_200 < resp.results[1].distance_m < 3_450
    assert resp.results[2].distance_m > 500_000  # its base is in LA
    close = await api.search.SearchProviders(
        search_pb2.SearchProvidersRequest(near=near_sf, radius_m=2_000, query="downtown"), metadata=person.md
    )
    assert names(close) == ["Downtown Guards"]


async def test_pages_cover_every_result_once(api: Api) -> None:
    admin = await api.admin()
    for i in range(5):
        await provider(api, admin, f"Pager Guards {i}", tags=["pager"])
    person = await api.sign_up()
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await api.search.SearchProviders(
            search_pb2.SearchProvidersRequest(tags=["pager"], page_size=2, page_token=token), metadata=person.md
        )
        assert resp.total_size == 5
        seen += [r.provider.id for r in resp.results]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3
    assert len(seen) == 5
    assert len(set(seen)) == 5
    first = await api.search.SearchProviders(
        search_pb2.SearchProvidersRequest(tags=["pager"], page_size=2), metadata=person.md
    )
    # A token belongs to the question it was minted for.
    details = await expect_error(
        api.search.SearchProviders(
            search_pb2.SearchProvidersRequest(tags=["other"], page_size=2, page_token=first.next_page_token),
            metadata=person.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in details.fields


async def test_a_page_past_the_last_match_still_counts_every_match(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    shrinking = [await provider(api, admin, f"Shrink Guards {i}", tags=["shrink"]) for i in range(3)]
    person = await api.sign_up()
    question = search_pb2.SearchProvidersRequest(tags=["shrink"], page_size=2)
    first = await api.search.SearchProviders(question, metadata=person.md)
    assert first.total_size == 3
    assert first.next_page_token
    # Two of them stop being offered before the next page is asked for: one match is left,
    # and the second page (from the third result on) is empty.
    await db_conn.execute(
        "UPDATE providers SET verification_status = 'rejected' WHERE id = ANY($1::uuid[])",
        [p.id for p in shrinking[:2]],
    )
    question.page_token = first.next_page_token
    second = await api.search.SearchProviders(question, metadata=person.md)
    assert list(second.results) == []
    assert second.next_page_token == ""
    assert second.total_size == 1


async def test_bad_provider_questions_name_the_field(api: Api) -> None:
    person = await api.sign_up()
    cases = [
        (search_pb2.SearchProvidersRequest(radius_m=-5), "radius_m"),
        (search_pb2.SearchProvidersRequest(near=common_pb2.LatLng(latitude=95, longitude=0)), "near.latitude"),
        (search_pb2.SearchProvidersRequest(page_size=1000), "page_size"),
        (search_pb2.SearchProvidersRequest(min_rating=7), "min_rating"),
        (search_pb2.SearchProvidersRequest(business_types=[0]), "business_types[0]"),
        (search_pb2.SearchProvidersRequest(business_types=[GUARD, 99]), "business_types[1]"),
        (search_pb2.SearchProvidersRequest(query="x" * 201), "query"),
        (search_pb2.SearchProvidersRequest(page_token="not-a-token"), "page_token"),
    ]
    for request, field in cases:
        details = await expect_error(
            api.search.SearchProviders(request, metadata=person.md), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert field in details.fields, (field, details.fields)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def test_agencies_search_only_their_own_incidents(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    sf = await register_department(api, admin, SF, name="SFPD")
    la = await register_department(api, admin, LA, name="LAPD")
    person = await api.sign_up()
    following = await raise_alert(api, person, SF, description="A man in a red jacket is following me")
    await raise_alert(api, person, SF, description="Bike stolen outside the library")
    await raise_alert(api, person, LA, description="Someone in a red car is following me")
    search = api.search.SearchIncidents

    sf_hits = await search(search_pb2.SearchIncidentsRequest(query="following"), metadata=sf.md)
    assert [r.description for r in sf_hits.results] == ["A man in a red jacket is following me"]
    hit = sf_hits.results[0]
    assert hit.incident.sos_alert_id == following.id
    assert hit.incident.police_department_id == sf.id
    assert abs(hit.location.latitude - SF[0]) < 1e-6
    assert hit.score > 0
    la_hits = await search(search_pb2.SearchIncidentsRequest(query="red following"), metadata=la.md)
    assert [r.description for r in la_hits.results] == ["Someone in a red car is following me"]
    # Without text: newest first, still only the department's own.
    assert (await search(search_pb2.SearchIncidentsRequest(), metadata=sf.md)).total_size == 2
    # Admins search every department.
    everyone = await search(search_pb2.SearchIncidentsRequest(query="following"), metadata=admin.md)
    assert everyone.total_size == 2
    # Searching other people's emergencies is audited: who asked what, and what it showed.
    audited = await db_conn.fetch(
        "SELECT actor_id, details FROM audit_log WHERE action = 'incident.search' ORDER BY id"
    )
    shown = [(str(r["actor_id"]), json.loads(r["details"])) for r in audited]
    assert (sf.key_id, {"query": "following", "incidents": [hit.incident.id]}) in shown  # the CAD key
    assert (admin.id, {"query": "following", "incidents": [r.incident.id for r in everyone.results]}) in shown
    # People who are not an agency may not search incidents at all.
    await expect_error(
        search(search_pb2.SearchIncidentsRequest(query="following"), metadata=person.md),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_incident_filters_by_status_time_and_place(api: Api) -> None:
    admin = await api.admin()
    sf = await register_department(api, admin, SF, name="SFPD", half_deg=0.3)
    person = await api.sign_up()
    downtown = await raise_alert(api, person, SF, description="downtown")
    south = await raise_alert(api, person, (SF[0] - 0.2, SF[1]), description="south")
    await api.agency.AcceptSosAlert(
        agency_pb2.AcceptSosAlertRequest(alert_id=downtown.id, assigned_unit="Unit 7"), metadata=sf.md
    )
    search = api.search.SearchIncidents

    dispatched = await search(
        search_pb2.SearchIncidentsRequest(statuses=[common_pb2.INCIDENT_STATUS_DISPATCHED]), metadata=sf.md
    )
    assert [r.description for r in dispatched.results] == ["downtown"]
    assert dispatched.results[0].incident.assigned_unit == "Unit 7"
    near = await search(
        search_pb2.SearchIncidentsRequest(near=common_pb2.LatLng(latitude=SF[0], longitude=SF[1]), radius_m=5_000),
        metadata=sf.md,
    )
    assert [r.description for r in near.results] == ["downtown"]
    now = datetime.now(UTC)
    recent = await search(
        search_pb2.SearchIncidentsRequest(
            start_time=ts(now - timedelta(hours=1)), end_time=ts(now + timedelta(hours=1))
        ),
        metadata=sf.md,
    )
    assert [r.description for r in recent.results] == ["south", "downtown"]  # newest first
    assert recent.results[0].incident.sos_alert_id == south.id
    old = await search(search_pb2.SearchIncidentsRequest(end_time=ts(now - timedelta(hours=1))), metadata=sf.md)
    assert old.total_size == 0
    assert not old.results
    details = await expect_error(
        search(
            search_pb2.SearchIncidentsRequest(start_time=ts(now), end_time=ts(now - timedelta(hours=1))), metadata=sf.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "end_time" in details.fields
    details = await expect_error(
        search(search_pb2.SearchIncidentsRequest(statuses=[42]), metadata=sf.md), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "statuses[0]" in details.fields


async def test_searches_are_answered_by_postgres_when_elasticsearch_is_down(api: Api) -> None:
    admin = await api.admin()
    await provider(api, admin, "Fallback Guards", tags=["fallback"])
    person = await api.sign_up()
    # A replica configured for Elasticsearch at an address where nothing listens.
    async with extra_replica("search-b", elasticsearch_url="http://127.0.0.1:9") as rt:
        assert rt.app.elastic is not None
        before = FALLBACKS.labels("providers")._value.get()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as ch:
            resp = await search_pb2_grpc.SearchServiceStub(ch).SearchProviders(
                search_pb2.SearchProvidersRequest(query="fallback"), metadata=person.md
            )
        assert names(resp) == ["Fallback Guards"]
        assert FALLBACKS.labels("providers")._value.get() == before + 1
