"""ProviderService: registration (validated, idempotent), visibility of unverified
providers, updates and re-review, listing, verification, duty (Redis GEO set and the
`provider:status` channel) and nearby search."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2
from redis.asyncio.client import PubSub

from securenow.v1 import bookings_pb2, common_pb2, providers_pb2, users_pb2
from tests.helpers import Account, Api, ErrorDetails, expect_error, next_message

GUARD = providers_pb2.PROVIDER_TYPE_SECURITY_GUARD
DRONE = providers_pb2.PROVIDER_TYPE_DRONE_PATROL
VERIFIED = common_pb2.VERIFICATION_STATUS_VERIFIED
PENDING = common_pb2.VERIFICATION_STATUS_PENDING
GEO_KEY = "providers:locations"
STATUS_CHANNEL = "provider:status"
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
# Times Square, Manhattan: the center of the searches below.
CENTER = (40.7580, -73.9855)
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[-74.0, 40.7], [-73.9, 40.7], [-73.9, 40.8], [-74.0, 40.8], [-74.0, 40.7]]],
}
BOW_TIE = {
    "type": "Polygon",
    "coordinates": [[[-74.0, 40.7], [-73.9, 40.8], [-73.9, 40.7], [-74.0, 40.8], [-74.0, 40.7]]],
}


def usd(units: int, nanos: int = 0) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", units=units, nanos=nanos)


def provider_body(**overrides: Any) -> providers_pb2.Provider:
    """A valid provider; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "company_name": "Acme Guards",
        "business_type": GUARD,
        "license_number": "LIC-1",
        "service_area_geojson": json.dumps(SQUARE),
        "pricing": providers_pb2.Pricing(
            rates=[
                providers_pb2.ServiceRate(service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD, hourly_rate=usd(45))
            ],
            minimum_hours=2,
        ),
        "availability_schedule": [
            providers_pb2.AvailabilityWindow(day_of_week=1, start_time="08:00", end_time="18:00")
        ],
        "base_location": common_pb2.LatLng(latitude=CENTER[0], longitude=CENTER[1]),
        "tags": ["Night", "k9"],
        "description": "Licensed guards.",
    }
    fields.update(overrides)
    return providers_pb2.Provider(**fields)


def offset(meters_north: float, meters_east: float = 0.0) -> tuple[float, float]:
    """A point the given distance from CENTER."""
    lat = CENTER[0] + meters_north / 111_320.0
    lng = CENTER[1] + meters_east / (111_320.0 * math.cos(math.radians(CENTER[0])))
    return lat, lng


def geo_distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance with the earth radius Redis uses for GEO commands."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 2 * 6372797.560856 * math.asin(math.sqrt(h))


async def expect_invalid(call: Awaitable[Any], *fields: str) -> ErrorDetails:
    """INVALID_ARGUMENT naming (at least) `fields` in its BadRequest details."""
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(fields) <= set(err.fields), f"expected violations of {fields}, got {err.fields}"
    return err


async def create_provider(
    api: Api, owner: Account, body: providers_pb2.Provider | None = None, request_id: str = ""
) -> providers_pb2.Provider:
    resp = await api.providers.CreateProvider(
        providers_pb2.CreateProviderRequest(request_id=request_id, provider=body or provider_body()),
        metadata=owner.md,
    )
    return resp.provider


async def new_provider(api: Api, **overrides: Any) -> tuple[Account, providers_pb2.Provider]:
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    return owner, await create_provider(api, owner, provider_body(**overrides))


async def verify(api: Api, admin: Account, provider_id: str) -> providers_pb2.Provider:
    resp = await api.providers.VerifyProvider(
        providers_pb2.VerifyProviderRequest(provider_id=provider_id, decision=VERIFIED), metadata=admin.md
    )
    return resp.provider


async def set_duty(
    api: Api, owner: Account, provider_id: str, on_duty: bool, point: tuple[float, float] | None = None
) -> providers_pb2.Provider:
    req = providers_pb2.UpdateProviderDutyRequest(provider_id=provider_id, on_duty=on_duty)
    if point is not None:
        req.location.point.latitude, req.location.point.longitude = point
    return (await api.providers.UpdateProviderDuty(req, metadata=owner.md)).provider


async def search(
    api: Api, caller: Account, point: tuple[float, float] = CENTER, **kw: Any
) -> list[providers_pb2.NearbyProvider]:
    req = providers_pb2.SearchNearbyProvidersRequest(
        point=common_pb2.LatLng(latitude=point[0], longitude=point[1]), **kw
    )
    return list((await api.providers.SearchNearbyProviders(req, metadata=caller.md)).results)


async def update(api: Api, owner: Account, body: providers_pb2.Provider, *paths: str) -> providers_pb2.Provider:
    req = providers_pb2.UpdateProviderRequest(provider=body, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
    return (await api.providers.UpdateProvider(req, metadata=owner.md)).provider


async def list_ids(api: Api, caller: Account, **filters: Any) -> list[str]:
    resp = await api.providers.ListProviders(providers_pb2.ListProvidersRequest(**filters), metadata=caller.md)
    assert not resp.next_page_token
    return [p.id for p in resp.providers]


async def review(api: Api, owner: Account, provider_id: str, stars: int) -> None:
    """A customer books, the provider delivers, the customer reviews with `stars`."""
    customer = await api.sign_up()
    start = datetime.now(UTC) + timedelta(minutes=30)  # a booking is started at most an hour ahead
    req = bookings_pb2.CreateBookingRequest(
        provider_id=provider_id,
        service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD,
        duration_hours=2,
        location=common_pb2.Location(point=common_pb2.LatLng(latitude=CENTER[0], longitude=CENTER[1])),
    )
    req.start_time.FromDatetime(start)
    booking_id = (await api.bookings.CreateBooking(req, metadata=customer.md)).booking.id
    await api.bookings.ConfirmBooking(bookings_pb2.ConfirmBookingRequest(booking_id=booking_id), metadata=owner.md)
    await api.bookings.StartBooking(bookings_pb2.StartBookingRequest(booking_id=booking_id), metadata=owner.md)
    await api.bookings.CompleteBooking(bookings_pb2.CompleteBookingRequest(booking_id=booking_id), metadata=owner.md)
    await api.bookings.ReviewBooking(
        bookings_pb2.ReviewBookingRequest(booking_id=booking_id, rating=stars), metadata=customer.md
    )


@asynccontextmanager
async def subscribed(redis_client: aioredis.Redis, channel: str) -> AsyncIterator[PubSub]:
    """A Pub/Sub subscription that Redis has confirmed (so nothing published after
    entering is missed)."""
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(channel)
    try:
        deadline = time.monotonic() + 5
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "subscribe":
                break
            assert time.monotonic() < deadline, "no subscribe confirmation"
        yield pubsub
    finally:
        await pubsub.unsubscribe(channel)
        await pubsub.aclose()


# Registration ------------------------------------------------------------------------


async def test_create_provider_starts_pending(api: Api) -> None:
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    provider = await create_provider(
        api, owner, provider_body(rating=5.0, total_reviews=99, verification_status=VERIFIED, on_duty=True)
    )
    assert uuid.UUID(provider.id)
    assert provider.user_id == owner.id
    assert provider.company_name == "Acme Guards"
    assert provider.business_type == GUARD
    # Server-owned fields ignore what the client sent.
    assert provider.verification_status == PENDING
    assert (provider.rating, provider.total_reviews, provider.on_duty) == (0.0, 0, False)
    assert provider.tags == ["k9", "night"]
    assert provider.pricing.minimum_hours == 2
    assert provider.pricing.rates[0].hourly_rate == usd(45)
    assert json.loads(provider.service_area_geojson) == SQUARE
    got = await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=owner.md)
    assert got.provider == provider


async def test_base_location_and_service_area_are_stored_as_geography(api: Api, db_conn: asyncpg.Connection) -> None:
    """What spatial queries use: the PostGIS columns, not only the JSON copies."""
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    provider = await create_provider(api, owner)
    stored = """SELECT ST_Y(location::geometry) AS lat, ST_X(location::geometry) AS lng,
                       ST_Covers(service_area, location) AS inside FROM providers WHERE id = $1"""
    row = await db_conn.fetchrow(stored, provider.id)
    assert (row["lat"], row["lng"]) == pytest.approx(CENTER)
    assert row["inside"] is True

    moved = offset(0, 20_000)  # outside the service area
    updated = await update(
        api,
        owner,
        providers_pb2.Provider(id=provider.id, base_location=common_pb2.LatLng(latitude=moved[0], longitude=moved[1])),
        "base_location",
    )
    assert (updated.base_location.latitude, updated.base_location.longitude) == pytest.approx(moved)
    row = await db_conn.fetchrow(stored, provider.id)
    assert (row["lat"], row["lng"]) == pytest.approx(moved)
    assert row["inside"] is False


async def test_only_provider_accounts_register_one_provider_each(api: Api) -> None:
    user = await api.sign_up()
    await expect_error(create_provider(api, user), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    await create_provider(api, owner)
    await expect_error(
        create_provider(api, owner, provider_body(company_name="Second Co")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROVIDER_EXISTS",
    )


async def test_create_provider_names_every_bad_field(api: Api) -> None:
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    body = provider_body(
        company_name="  ",
        business_type=providers_pb2.PROVIDER_TYPE_UNSPECIFIED,
        pricing=providers_pb2.Pricing(
            rates=[
                providers_pb2.ServiceRate(service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD, hourly_rate=usd(0)),
                providers_pb2.ServiceRate(
                    service_type=providers_pb2.SERVICE_TYPE_DRONE_PATROL,
                    hourly_rate=common_pb2.Money(currency_code="usd", units=10),
                ),
            ],
            minimum_hours=25,
        ),
        availability_schedule=[providers_pb2.AvailabilityWindow(day_of_week=8, start_time="18:00", end_time="08:00")],
        base_location=common_pb2.LatLng(latitude=91, longitude=0),
        tags=["NOT A TAG!"],
    )
    err = await expect_invalid(create_provider(api, owner, body))
    assert set(err.fields) == {
        "provider.company_name",
        "provider.business_type",
        "provider.pricing.rates[0].hourly_rate",
        "provider.pricing.rates[1].hourly_rate.currency_code",
        "provider.pricing.minimum_hours",
        "provider.pricing.rates",  # two currencies
        "provider.availability_schedule[0].day_of_week",
        "provider.availability_schedule[0].end_time",
        "provider.base_location.latitude",
        "provider.tags",
    }
    resp = await api.providers.ListProviders(providers_pb2.ListProvidersRequest(), metadata=owner.md)
    assert list(resp.providers) == []


async def test_self_intersecting_service_area_is_rejected(api: Api) -> None:
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    for area in (json.dumps(BOW_TIE), "{not json", json.dumps({"type": "Point", "coordinates": [0, 0]})):
        err = await expect_invalid(
            create_provider(api, owner, provider_body(service_area_geojson=area)), "provider.service_area_geojson"
        )
        assert set(err.fields) == {"provider.service_area_geojson"}
    # Nothing was stored: the account can still register a (valid) provider.
    provider = await create_provider(api, owner)
    await expect_invalid(
        update(
            api,
            owner,
            providers_pb2.Provider(id=provider.id, service_area_geojson=json.dumps(BOW_TIE)),
            "service_area_geojson",
        ),
        "provider.service_area_geojson",
    )


async def test_request_id_makes_create_provider_retry_safe(api: Api, db_conn: asyncpg.Connection) -> None:
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    request_id = str(uuid.uuid4())
    first = await create_provider(api, owner, provider_body(), request_id)
    again = await create_provider(api, owner, provider_body(), request_id)
    assert again.id == first.id
    assert await db_conn.fetchval("SELECT count(*) FROM providers") == 1

    await expect_error(
        create_provider(api, owner, provider_body(company_name="Other Co"), request_id),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    other_owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    await expect_invalid(create_provider(api, other_owner, provider_body(), "not-a-uuid"), "request_id")
    assert await db_conn.fetchval("SELECT count(*) FROM providers") == 1


# Visibility and updates --------------------------------------------------------------


async def test_unverified_provider_is_visible_to_owner_and_admin_only(api: Api) -> None:
    admin = await api.admin()
    owner, provider = await new_provider(api)
    stranger = await api.sign_up()
    get = providers_pb2.GetProviderRequest(provider_id=provider.id)
    await expect_error(
        api.providers.GetProvider(get, metadata=stranger.md), grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND"
    )
    assert (await api.providers.GetProvider(get, metadata=owner.md)).provider.id == provider.id
    assert (await api.providers.GetProvider(get, metadata=admin.md)).provider.id == provider.id

    await verify(api, admin, provider.id)
    seen = (await api.providers.GetProvider(get, metadata=stranger.md)).provider
    assert seen.verification_status == VERIFIED


async def test_update_provider_by_owner_only(api: Api) -> None:
    owner, provider = await new_provider(api)
    other_owner, _ = await new_provider(api, company_name="Rival")
    body = providers_pb2.Provider(id=provider.id, company_name="Taken Over")
    await expect_error(update(api, other_owner, body, "company_name"), grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND")
    updated = await update(
        api,
        owner,
        providers_pb2.Provider(id=provider.id, company_name="Acme Two", description="ignored"),
        "company_name",
    )
    assert updated.company_name == "Acme Two"
    assert updated.description == provider.description
    assert updated.license_number == provider.license_number
    # A path named twice is one change.
    tagged = await update(api, owner, providers_pb2.Provider(id=provider.id, tags=["night", "k9"]), "tags", "tags")
    assert sorted(tagged.tags) == ["k9", "night"]

    err = await expect_invalid(update(api, owner, body, "rating"), "update_mask")
    assert set(err.fields) == {"update_mask"}
    await expect_invalid(
        update(api, owner, providers_pb2.Provider(id=provider.id, company_name=""), "company_name"),
        "provider.company_name",
    )


async def test_new_name_or_license_sends_a_verified_provider_back_to_review(
    api: Api, redis_client: aioredis.Redis
) -> None:
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await verify(api, admin, provider.id)
    await set_duty(api, owner, provider.id, True, CENTER)
    # A cosmetic change keeps it verified.
    same = await update(api, owner, providers_pb2.Provider(id=provider.id, description="New text"), "description")
    assert same.verification_status == VERIFIED
    # A new name is a new identity to customers: verified again before it is shown.
    renamed = await update(
        api, owner, providers_pb2.Provider(id=provider.id, company_name="City Police"), "company_name"
    )
    assert renamed.verification_status == PENDING
    await verify(api, admin, provider.id)
    await set_duty(api, owner, provider.id, True, CENTER)

    changed = await update(api, owner, providers_pb2.Provider(id=provider.id, license_number="LIC-2"), "license_number")
    assert changed.license_number == "LIC-2"
    assert changed.verification_status == PENDING
    assert not changed.on_duty
    assert await redis_client.geopos(GEO_KEY, provider.id) == [None]
    stranger = await api.sign_up()
    await expect_error(
        api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=stranger.md),
        grpc.StatusCode.NOT_FOUND,
        "PROVIDER_NOT_FOUND",
    )
    assert await search(api, stranger) == []


# Listing -----------------------------------------------------------------------------


async def test_list_providers_filters(api: Api) -> None:
    admin = await api.admin()
    guard_owner, guard = await new_provider(api, company_name="Guards Inc")
    drone_owner, drone = await new_provider(
        api,
        company_name="Sky Eye",
        business_type=DRONE,
        pricing=providers_pb2.Pricing(
            rates=[
                providers_pb2.ServiceRate(service_type=providers_pb2.SERVICE_TYPE_DRONE_PATROL, hourly_rate=usd(80)),
                providers_pb2.ServiceRate(service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD, hourly_rate=usd(40)),
            ]
        ),
    )
    pending_owner, pending = await new_provider(api, company_name="Not Yet")
    for p in (guard, drone):
        await verify(api, admin, p.id)
    await review(api, guard_owner, guard.id, 5)
    await review(api, drone_owner, drone.id, 3)
    customer = await api.sign_up()

    assert await list_ids(api, customer) == [guard.id, drone.id]  # best rated first
    assert await list_ids(api, customer, business_type=DRONE) == [drone.id]
    assert await list_ids(api, customer, business_type=GUARD) == [guard.id]
    assert await list_ids(api, customer, service_type=providers_pb2.SERVICE_TYPE_DRONE_PATROL) == [drone.id]
    assert await list_ids(api, customer, service_type=providers_pb2.SERVICE_TYPE_EVENT_SECURITY) == []
    assert await list_ids(api, customer, min_rating=4.0) == [guard.id]
    assert await list_ids(api, customer, min_rating=3.0) == [guard.id, drone.id]
    await expect_invalid(
        api.providers.ListProviders(providers_pb2.ListProvidersRequest(min_rating=6), metadata=customer.md),
        "min_rating",
    )
    listed = await api.providers.ListProviders(providers_pb2.ListProvidersRequest(), metadata=customer.md)
    assert [(p.rating, p.total_reviews) for p in listed.providers] == [(5.0, 1), (3.0, 1)]

    # Unverified providers: their owner sees its own; others only verified ones; admins all.
    assert pending.id not in await list_ids(api, guard_owner)
    assert set(await list_ids(api, pending_owner)) == {guard.id, drone.id, pending.id}
    assert set(await list_ids(api, admin)) == {guard.id, drone.id, pending.id}
    assert await list_ids(api, admin, verification_status=PENDING) == [pending.id]


async def test_list_providers_pages(api: Api) -> None:
    admin = await api.admin()
    made = set()
    for i in range(5):
        _, p = await new_provider(api, company_name=f"Co {i}")
        await verify(api, admin, p.id)
        made.add(p.id)
    customer = await api.sign_up()
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await api.providers.ListProviders(
            providers_pb2.ListProvidersRequest(page_size=2, page_token=token), metadata=customer.md
        )
        pages += 1
        seen += [p.id for p in resp.providers]
        token = resp.next_page_token
        if not token:
            break
        assert pages < 10
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == made

    first = await api.providers.ListProviders(providers_pb2.ListProvidersRequest(page_size=2), metadata=customer.md)
    await expect_invalid(
        api.providers.ListProviders(
            providers_pb2.ListProvidersRequest(page_size=2, page_token=first.next_page_token, business_type=DRONE),
            metadata=customer.md,
        ),
        "page_token",
    )


# Verification ------------------------------------------------------------------------


async def test_verify_provider_is_for_admins_with_a_real_decision(api: Api) -> None:
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await expect_error(
        api.providers.VerifyProvider(
            providers_pb2.VerifyProviderRequest(provider_id=provider.id, decision=VERIFIED), metadata=owner.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    await expect_invalid(
        api.providers.VerifyProvider(
            providers_pb2.VerifyProviderRequest(
                provider_id=provider.id, decision=common_pb2.VERIFICATION_STATUS_UNSPECIFIED
            ),
            metadata=admin.md,
        ),
        "decision",
    )
    await expect_error(
        api.providers.VerifyProvider(
            providers_pb2.VerifyProviderRequest(provider_id=NO_SUCH_ID, decision=VERIFIED), metadata=admin.md
        ),
        grpc.StatusCode.NOT_FOUND,
        "PROVIDER_NOT_FOUND",
    )
    got = await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=owner.md)
    assert got.provider.verification_status == PENDING
    rejected = await api.providers.VerifyProvider(
        providers_pb2.VerifyProviderRequest(
            provider_id=provider.id, decision=common_pb2.VERIFICATION_STATUS_REJECTED, note="expired license"
        ),
        metadata=admin.md,
    )
    assert rejected.provider.verification_status == common_pb2.VERIFICATION_STATUS_REJECTED
    assert (await verify(api, admin, provider.id)).verification_status == VERIFIED


# Duty and nearby search --------------------------------------------------------------


async def test_duty_needs_verification_and_a_location(api: Api) -> None:
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await expect_error(
        set_duty(api, owner, provider.id, True, CENTER), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_NOT_VERIFIED"
    )
    await verify(api, admin, provider.id)
    await expect_invalid(set_duty(api, owner, provider.id, True), "location")
    await expect_invalid(set_duty(api, owner, provider.id, True, (95.0, 0.0)), "location.point.latitude")
    # Valid on earth, but beyond what the live-location index (Redis GEO) covers: a bad
    # point, not an outage to retry.
    await expect_invalid(set_duty(api, owner, provider.id, True, (86.0, 0.0)), "location.point.latitude")
    other_owner, _ = await new_provider(api, company_name="Rival")
    await expect_error(
        set_duty(api, other_owner, provider.id, True, CENTER), grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND"
    )
    customer = await api.sign_up()
    assert await search(api, customer) == []


async def test_on_duty_provider_is_found_nearby_until_off_duty(api: Api, redis_client: aioredis.Redis) -> None:
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await verify(api, admin, provider.id)
    customer = await api.sign_up()
    here = offset(1000)  # 1 km north of CENTER

    async with subscribed(redis_client, STATUS_CHANNEL) as pubsub:
        on = await set_duty(api, owner, provider.id, True, here)
        assert on.on_duty
        status = await next_message(pubsub, lambda m: m.get("provider_id") == provider.id and "on_duty" in m)
    assert status["on_duty"] is True
    assert status["business_type"] == "security_guard"
    assert status["location"] == {"lat": here[0], "lng": here[1]}

    (stored,) = await redis_client.geopos(GEO_KEY, provider.id)
    assert stored is not None
    assert abs(stored[0] - here[1]) < 1e-4
    assert abs(stored[1] - here[0]) < 1e-4

    results = await search(api, customer)
    assert [r.provider.id for r in results] == [provider.id]
    hit = results[0]
    assert abs(hit.distance_m - geo_distance_m(CENTER, here)) < 5
    assert 990 < hit.distance_m < 1010
    assert abs(hit.location.latitude - here[0]) < 1e-4
    assert hit.provider.on_duty
    got = await api.providers.GetProvider(
        providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=customer.md
    )
    assert got.provider.on_duty

    async with subscribed(redis_client, STATUS_CHANNEL) as pubsub:
        off = await set_duty(api, owner, provider.id, False)
        assert not off.on_duty
        status = await next_message(pubsub, lambda m: m.get("provider_id") == provider.id and "on_duty" in m)
    assert status["on_duty"] is False
    assert await redis_client.geopos(GEO_KEY, provider.id) == [None]
    assert await search(api, customer) == []


async def found_on_duty(api: Api) -> tuple[Account, Account, providers_pb2.Provider, Account]:
    """(admin, owner, provider, customer): a verified provider on duty at CENTER, which
    the customer finds nearby."""
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await verify(api, admin, provider.id)
    await set_duty(api, owner, provider.id, True, CENTER)
    customer = await api.sign_up()
    assert [r.provider.id for r in await search(api, customer)] == [provider.id]
    return admin, owner, provider, customer


async def test_suspending_the_owner_withdraws_the_provider_until_reinstated(
    api: Api, redis_client: aioredis.Redis
) -> None:
    admin, owner, provider, customer = await found_on_duty(api)

    async with subscribed(redis_client, STATUS_CHANNEL) as pubsub:
        await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=owner.id, reason="fraud"), metadata=admin.md)
        status = await next_message(pubsub, lambda m: m.get("provider_id") == provider.id)
    assert status["on_duty"] is False
    assert status["reason"] == "owner_inactive"
    # Nobody finds, lists or books a suspended owner's company; the admin still sees it.
    assert await search(api, customer) == []
    assert provider.id not in await list_ids(api, customer)
    await expect_error(
        api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=customer.md),
        grpc.StatusCode.NOT_FOUND,
        "PROVIDER_NOT_FOUND",
    )
    await expect_error(review(api, owner, provider.id, 5), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_SUSPENDED")
    seen = await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=admin.md)
    assert seen.provider.id == provider.id

    await api.users.ReinstateUser(users_pb2.ReinstateUserRequest(user_id=owner.id), metadata=admin.md)
    assert provider.id in await list_ids(api, customer)
    back = await api.providers.GetProvider(
        providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=customer.md
    )
    assert not back.provider.on_duty  # the owner signs in again and goes back on duty


async def test_taking_the_provider_role_away_withdraws_the_company_until_given_back(
    api: Api, redis_client: aioredis.Redis
) -> None:
    """An admin who demotes a provider's owner to a plain user ends the company's
    offer as a suspension does: off duty at once, not found, not bookable."""
    admin, owner, provider, customer = await found_on_duty(api)

    def set_role(role: int) -> Awaitable[users_pb2.SetUserRoleResponse]:
        return api.users.SetUserRole(users_pb2.SetUserRoleRequest(user_id=owner.id, role=role), metadata=admin.md)

    async with subscribed(redis_client, STATUS_CHANNEL) as pubsub:
        await set_role(users_pb2.USER_ROLE_USER)
        status = await next_message(pubsub, lambda m: m.get("provider_id") == provider.id)
    assert (status["on_duty"], status["reason"]) == (False, "owner_inactive")
    assert await redis_client.geopos(GEO_KEY, provider.id) == [None]
    assert await search(api, customer) == []
    assert provider.id not in await list_ids(api, customer)
    # review(): a customer books, the owner confirms, starts, completes; the booking is refused.
    await expect_error(review(api, owner, provider.id, 5), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_SUSPENDED")

    await set_role(users_pb2.USER_ROLE_PROVIDER)
    assert provider.id in await list_ids(api, customer)
    await review(api, owner, provider.id, 5)  # booked and served again, with the same tokens


async def test_search_is_sorted_bounded_and_filtered(api: Api) -> None:
    admin = await api.admin()
    placed: dict[str, tuple[str, tuple[float, float]]] = {}
    spots = {
        "near": (GUARD, offset(500)),
        "mid": (DRONE, offset(0, 1500)),
        "far": (GUARD, offset(-3000)),
        "other_city": (GUARD, (40.0, -73.9855)),  # about 84 km south
    }
    for name, (kind, point) in spots.items():
        owner, p = await new_provider(api, company_name=name, business_type=kind)
        await verify(api, admin, p.id)
        await set_duty(api, owner, p.id, True, point)
        placed[name] = (p.id, point)
    # Unverified providers are never found, even if they were on duty before.
    owner, hidden = await new_provider(api, company_name="hidden")
    await verify(api, admin, hidden.id)
    await set_duty(api, owner, hidden.id, True, offset(100))
    await api.providers.VerifyProvider(
        providers_pb2.VerifyProviderRequest(provider_id=hidden.id, decision=common_pb2.VERIFICATION_STATUS_REJECTED),
        metadata=admin.md,
    )
    customer = await api.sign_up()

    def names(results: list[providers_pb2.NearbyProvider]) -> list[str]:
        return [r.provider.company_name for r in results]

    results = await search(api, customer)  # default radius 10 km
    assert names(results) == ["near", "mid", "far"]
    distances = [r.distance_m for r in results]
    assert distances == sorted(distances)
    for r in results:
        assert abs(r.distance_m - geo_distance_m(CENTER, placed[r.provider.company_name][1])) < 5

    assert names(await search(api, customer, radius_m=2000)) == ["near", "mid"]
    assert names(await search(api, customer, radius_m=100_000)) == ["near", "mid", "far", "other_city"]
    assert names(await search(api, customer, max_results=1)) == ["near"]
    assert names(await search(api, customer, business_type=DRONE)) == ["mid"]
    assert names(await search(api, customer, business_type=GUARD, max_results=2)) == ["near", "far"]
    assert names(await search(api, customer, point=(51.5, -0.12))) == []  # London

    await expect_invalid(search(api, customer, radius_m=100_001), "radius_m")
    await expect_invalid(search(api, customer, point=(0.0, 200.0)), "point.longitude")
    await expect_invalid(search(api, customer, point=(-86.0, 0.0)), "point.latitude")
    await expect_invalid(
        api.providers.SearchNearbyProviders(providers_pb2.SearchNearbyProvidersRequest(), metadata=customer.md),
        "point",
    )
