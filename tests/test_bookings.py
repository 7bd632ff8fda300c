"""BookingService: server-side pricing, no double booking (also across the yearly
partitions), idempotent creation, the status and payment state machines, who may see
and change a booking, reviews, the `booking:update` channel and the audit trail."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2
from redis.asyncio.client import PubSub

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.bookings import MAX_PENDING_PER_PROVIDER
from securenow.server.domain.enums import PaymentStatus, Role, VerificationStatus
from securenow.server.domain.errors import PermissionDenied
from securenow.v1 import bookings_pb2, common_pb2, providers_pb2, users_pb2
from tests.helpers import Account, Api, ErrorDetails, error_details, expect_error, next_message, wait_for

GUARD = providers_pb2.SERVICE_TYPE_SECURITY_GUARD
DRONE = providers_pb2.SERVICE_TYPE_DRONE_PATROL
PENDING = bookings_pb2.BOOKING_STATUS_PENDING
CONFIRMED = bookings_pb2.BOOKING_STATUS_CONFIRMED
IN_PROGRESS = bookings_pb2.BOOKING_STATUS_IN_PROGRESS
COMPLETED = bookings_pb2.BOOKING_STATUS_COMPLETED
CANCELLED = bookings_pb2.BOOKING_STATUS_CANCELLED
PAY_PENDING = bookings_pb2.PAYMENT_STATUS_PENDING
PAID = bookings_pb2.PAYMENT_STATUS_PAID
REFUNDED = bookings_pb2.PAYMENT_STATUS_REFUNDED
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
HERE = common_pb2.Location(point=common_pb2.LatLng(latitude=40.7580, longitude=-73.9855), address="1 Times Sq")


# A whole hour two days ahead, fixed for the run (so that no test straddles an hour).
BASE = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)


def hour(n: int = 0) -> datetime:
    """n hours after BASE: far enough ahead to book."""
    return BASE + timedelta(hours=n)


def soon() -> datetime:
    """A start within the hour: a booking there may be started at once (a provider
    starts a booking from one hour before its start time)."""
    return (datetime.now(UTC) + timedelta(minutes=30)).replace(second=0, microsecond=0)


def back_to_back() -> tuple[datetime, datetime]:
    """Starts of two one-hour bookings of one provider that can both be started: the
    first in a few seconds (confirm it before then), the second when the first ends,
    which may be started once the first one's start time has passed (`until_passed`).
    Bookings of one provider cannot overlap, so two cannot both start within the hour."""
    first = datetime.now(UTC) + timedelta(seconds=3)
    return first, first + timedelta(hours=1)


async def until_passed(moment: datetime) -> None:
    async def passed() -> bool:
        return datetime.now(UTC) > moment

    await wait_for(passed, what=f"{moment.isoformat()} to pass")


def booking_request(
    provider_id: str, start: datetime | None, hours: int = 3, **kw: Any
) -> bookings_pb2.CreateBookingRequest:
    fields: dict[str, Any] = {
        "provider_id": provider_id,
        "service_type": GUARD,
        "duration_hours": hours,
        "location": HERE,
    }
    fields.update(kw)
    req = bookings_pb2.CreateBookingRequest(**fields)
    if start is not None:
        req.start_time.FromDatetime(start)
    return req


async def book(
    api: Api, customer: Account, provider_id: str, start: datetime, hours: int = 3, **kw: Any
) -> bookings_pb2.Booking:
    resp = await api.bookings.CreateBooking(booking_request(provider_id, start, hours, **kw), metadata=customer.md)
    return resp.booking


async def expect_invalid(call: Awaitable[Any], *fields: str) -> ErrorDetails:
    """INVALID_ARGUMENT naming (at least) `fields` in its BadRequest details."""
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(fields) <= set(err.fields), f"expected violations of {fields}, got {err.fields}"
    return err


async def setup(api: Api, **provider: Any) -> tuple[Account, Account, providers_pb2.Provider, Account]:
    """(admin, provider owner, verified provider, customer)."""
    admin = await api.admin()
    owner, prov = await api.verified_provider(admin, **provider)
    customer = await api.sign_up()
    return admin, owner, prov, customer


async def get(api: Api, caller: Account, booking_id: str) -> bookings_pb2.Booking:
    return (
        await api.bookings.GetBooking(bookings_pb2.GetBookingRequest(booking_id=booking_id), metadata=caller.md)
    ).booking


async def confirm(api: Api, caller: Account, booking_id: str) -> bookings_pb2.Booking:
    req = bookings_pb2.ConfirmBookingRequest(booking_id=booking_id)
    return (await api.bookings.ConfirmBooking(req, metadata=caller.md)).booking


async def start(api: Api, caller: Account, booking_id: str) -> bookings_pb2.Booking:
    req = bookings_pb2.StartBookingRequest(booking_id=booking_id)
    return (await api.bookings.StartBooking(req, metadata=caller.md)).booking


async def complete(api: Api, caller: Account, booking_id: str) -> bookings_pb2.Booking:
    req = bookings_pb2.CompleteBookingRequest(booking_id=booking_id)
    return (await api.bookings.CompleteBooking(req, metadata=caller.md)).booking


async def cancel(api: Api, caller: Account, booking_id: str, reason: str = "") -> bookings_pb2.Booking:
    req = bookings_pb2.CancelBookingRequest(booking_id=booking_id, reason=reason)
    return (await api.bookings.CancelBooking(req, metadata=caller.md)).booking


async def pay(api: Api, caller: Account, booking_id: str, status: int) -> bookings_pb2.Booking:
    req = bookings_pb2.UpdateBookingPaymentStatusRequest(booking_id=booking_id, payment_status=status)
    return (await api.bookings.UpdateBookingPaymentStatus(req, metadata=caller.md)).booking


async def review(api: Api, caller: Account, booking_id: str, stars: int, text: str = "") -> bookings_pb2.Booking:
    req = bookings_pb2.ReviewBookingRequest(booking_id=booking_id, rating=stars, review=text)
    return (await api.bookings.ReviewBooking(req, metadata=caller.md)).booking


async def delivered(api: Api, owner: Account, booking_id: str) -> bookings_pb2.Booking:
    await confirm(api, owner, booking_id)
    await start(api, owner, booking_id)
    return await complete(api, owner, booking_id)


async def get_provider(api: Api, caller: Account, provider_id: str) -> providers_pb2.Provider:
    req = providers_pb2.GetProviderRequest(provider_id=provider_id)
    return (await api.providers.GetProvider(req, metadata=caller.md)).provider


async def list_bookings(api: Api, caller: Account, **kw: Any) -> list[bookings_pb2.Booking]:
    resp = await api.bookings.ListBookings(bookings_pb2.ListBookingsRequest(**kw), metadata=caller.md)
    return list(resp.bookings)


async def audit_actions(db_conn: asyncpg.Connection, booking_id: str) -> list[str]:
    rows = await db_conn.fetch(
        "SELECT action FROM audit_log WHERE resource_type = 'booking' AND resource_id = $1 ORDER BY id", booking_id
    )
    return [r["action"] for r in rows]


@asynccontextmanager
async def subscribed(redis_client: aioredis.Redis, channel: str) -> AsyncIterator[PubSub]:
    """A Pub/Sub subscription that Redis has confirmed before the block runs."""
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


async def booking_message(pubsub: PubSub, booking_id: str, kind: str = "", within: float = 10.0) -> dict[str, Any]:
    """The first message about `booking_id` (of type `kind`, if given); fails after `within` s."""
    return await next_message(
        pubsub, lambda m: m.get("booking_id") == booking_id and (not kind or m.get("type") == kind), within
    )


# Creating bookings -------------------------------------------------------------------


async def test_create_booking_prices_on_the_server(api: Api) -> None:
    _, owner, prov, customer = await setup(api)  # 45 USD per hour
    when = hour(5)
    booking = await book(api, customer, prov.id, when, 3, special_instructions="  Ring twice  ")
    assert uuid.UUID(booking.id)
    assert booking.user_id == customer.id
    assert booking.provider_id == prov.id
    assert booking.status == PENDING
    assert booking.payment_status == PAY_PENDING
    assert booking.total_price == common_pb2.Money(currency_code="USD", units=135, nanos=0)
    assert booking.start_time.ToDatetime(tzinfo=UTC) == when
    assert booking.end_time.ToDatetime(tzinfo=UTC) == when + timedelta(hours=3)
    assert booking.duration_hours == 3
    assert booking.special_instructions == "Ring twice"
    assert booking.location.point == HERE.point
    assert booking.location.address == "1 Times Sq"
    assert await get(api, customer, booking.id) == booking
    assert await get(api, owner, booking.id) == booking

    # A new rate applies to new bookings only.
    pricing = providers_pb2.Pricing(
        rates=[
            providers_pb2.ServiceRate(
                service_type=GUARD, hourly_rate=common_pb2.Money(currency_code="USD", units=12, nanos=250_000_000)
            )
        ]
    )
    await api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=prov.id, pricing=pricing),
            update_mask=field_mask_pb2.FieldMask(paths=["pricing"]),
        ),
        metadata=owner.md,
    )
    later = await book(api, customer, prov.id, hour(24), 3)
    assert later.total_price == common_pb2.Money(currency_code="USD", units=36, nanos=750_000_000)
    assert (await get(api, customer, booking.id)).total_price.units == 135


async def test_overlapping_bookings_are_refused_adjacent_ones_are_fine(api: Api) -> None:
    admin, _, prov, customer = await setup(api)
    other = await api.sign_up()
    first = await book(api, customer, prov.id, hour(0), 3)
    for begin, hours in ((hour(1), 1), (hour(-1), 2), (hour(-2), 8), (hour(2), 3)):
        await expect_error(
            book(api, other, prov.id, begin, hours), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_OVERLAP"
        )
    after = await book(api, other, prov.id, hour(3), 2)  # starts exactly when the first ends
    before = await book(api, other, prov.id, hour(-2), 2)  # ends exactly when the first starts
    assert after.start_time == first.end_time
    assert before.end_time == first.start_time
    # Another provider is free at the same time.
    _, second_provider = await api.verified_provider(admin, company="Other Guards")
    await book(api, other, second_provider.id, hour(1), 1)


async def test_concurrent_requests_for_one_slot_book_it_once(api: Api, db_conn: asyncpg.Connection) -> None:
    _, _, prov, _ = await setup(api)
    customers = [await api.sign_up() for _ in range(6)]
    outcomes = await asyncio.gather(
        *(book(api, c, prov.id, hour(i % 2), 2) for i, c in enumerate(customers)), return_exceptions=True
    )
    booked = [o for o in outcomes if isinstance(o, bookings_pb2.Booking)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(booked) == 1, outcomes
    assert len(refused) == 5
    assert {error_details(e).reason for e in refused} == {"BOOKING_OVERLAP"}
    assert await db_conn.fetchval("SELECT count(*) FROM bookings") == 1


async def test_concurrent_retries_with_one_request_id_create_one_booking(api: Api, db_conn: asyncpg.Connection) -> None:
    _, _, prov, customer = await setup(api)
    req = booking_request(prov.id, hour(0), request_id=str(uuid.uuid4()))
    responses = await asyncio.gather(*(api.bookings.CreateBooking(req, metadata=customer.md) for _ in range(5)))
    assert len({r.booking.id for r in responses}) == 1
    assert await db_conn.fetchval("SELECT count(*) FROM bookings") == 1


async def test_cancelled_booking_frees_its_slot(api: Api) -> None:
    _, _, prov, customer = await setup(api)
    other = await api.sign_up()
    first = await book(api, customer, prov.id, hour(0), 3)
    await expect_error(book(api, other, prov.id, hour(1), 2), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_OVERLAP")
    await cancel(api, customer, first.id, "plans changed")
    second = await book(api, other, prov.id, hour(1), 2)
    assert second.status == PENDING


async def test_overlap_across_a_year_boundary_is_refused(api: Api, db_conn: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    boundary = datetime(now.year + 1, 1, 1, tzinfo=UTC)
    if boundary - timedelta(hours=1) < now + timedelta(hours=2) or boundary + timedelta(hours=2) > now + timedelta(
        days=364
    ):
        pytest.skip("the next year boundary is too close (or too far) to book around it")
    _, _, prov, customer = await setup(api)
    december = await book(api, customer, prov.id, boundary - timedelta(hours=1), 3)  # Dec 31 23:00 - Jan 1 02:00
    await expect_error(
        book(api, customer, prov.id, boundary + timedelta(hours=1), 2),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BOOKING_OVERLAP",
    )
    january = await book(api, customer, prov.id, boundary + timedelta(hours=2), 2)
    partitions = dict(await db_conn.fetch("SELECT id::text, tableoid::regclass::text FROM bookings"))
    assert partitions == {december.id: f"bookings_{now.year}", january.id: f"bookings_{now.year + 1}"}


async def test_provider_must_be_verified(api: Api) -> None:
    admin = await api.admin()
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    _, verified = await api.verified_provider(admin)
    created = await api.providers.CreateProvider(
        providers_pb2.CreateProviderRequest(
            provider=providers_pb2.Provider(
                company_name="New Co",
                business_type=providers_pb2.PROVIDER_TYPE_SECURITY_GUARD,
                pricing=providers_pb2.Pricing(
                    rates=[
                        providers_pb2.ServiceRate(
                            service_type=GUARD, hourly_rate=common_pb2.Money(currency_code="USD", units=30)
                        )
                    ]
                ),
            )
        ),
        metadata=owner.md,
    )
    customer = await api.sign_up()
    await expect_error(
        book(api, customer, created.provider.id, hour(0)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_NOT_VERIFIED",
    )
    await expect_error(book(api, customer, NO_SUCH_ID, hour(0)), grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND")
    # A provider account may book another (verified) provider, but not its own.
    assert (await book(api, owner, verified.id, hour(0))).status == PENDING
    await expect_error(
        book(api, owner, created.provider.id, hour(10)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_NOT_VERIFIED",
    )


def square_around(lat: float, lng: float, half_deg: float) -> str:
    ring = [
        [lng - half_deg, lat - half_deg],
        [lng + half_deg, lat - half_deg],
        [lng + half_deg, lat + half_deg],
        [lng - half_deg, lat + half_deg],
        [lng - half_deg, lat - half_deg],
    ]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


async def test_a_booking_must_be_inside_the_providers_service_area(api: Api, db_conn: asyncpg.Connection) -> None:
    """A provider that declared a service area is booked only for places inside it."""
    admin, owner, prov, customer = await setup(api)
    manhattan = square_around(HERE.point.latitude, HERE.point.longitude, 0.05)
    await api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=prov.id, service_area_geojson=manhattan),
            update_mask=field_mask_pb2.FieldMask(paths=["service_area_geojson"]),
        ),
        metadata=owner.md,
    )
    inside = await book(api, customer, prov.id, hour(0), 1)
    assert inside.status == PENDING
    brooklyn = common_pb2.Location(point=common_pb2.LatLng(latitude=40.6782, longitude=-73.9442))
    refused = await expect_error(
        book(api, customer, prov.id, hour(2), 1, location=brooklyn),
        grpc.StatusCode.FAILED_PRECONDITION,
        "OUTSIDE_SERVICE_AREA",
    )
    assert refused.metadata == {"field": "location"}
    assert await db_conn.fetchval("SELECT count(*) FROM bookings WHERE provider_id = $1", uuid.UUID(prov.id)) == 1
    # A provider without a service area serves everywhere.
    _, anywhere = await api.verified_provider(admin)
    assert (await book(api, customer, anywhere.id, hour(2), 1, location=brooklyn)).status == PENDING


NEW_YORK = ZoneInfo("America/New_York")


def next_local(weekday: int, hh: int) -> datetime:
    """The next `weekday` (ISO, 1 = Monday) at least two days ahead, at hh:00 New York time."""
    day = datetime.now(NEW_YORK).date() + timedelta(days=2)
    day += timedelta(days=(weekday - day.isoweekday()) % 7)
    return datetime.combine(day, dt_time(hh), NEW_YORK)


def window(day: int, start: str, end: str) -> providers_pb2.AvailabilityWindow:
    return providers_pb2.AvailabilityWindow(day_of_week=day, start_time=start, end_time=end)


async def set_schedule(
    api: Api, owner: Account, provider_id: str, windows: list[providers_pb2.AvailabilityWindow], time_zone: str
) -> providers_pb2.Provider:
    resp = await api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=provider_id, availability_schedule=windows, time_zone=time_zone),
            update_mask=field_mask_pb2.FieldMask(paths=["availability_schedule", "time_zone"]),
        ),
        metadata=owner.md,
    )
    return resp.provider


async def test_a_booking_must_lie_inside_the_providers_availability(api: Api) -> None:
    """With a time zone, the weekly windows are enforced in the provider's wall-clock
    time; a shift across midnight is a window to 24:00 and one from 00:00."""
    admin, owner, prov, customer = await setup(api)
    weekdays = [window(d, "09:00", "17:00") for d in range(1, 6)]
    night = [window(5, "20:00", "24:00"), window(6, "00:00", "06:00")]
    shown = await set_schedule(api, owner, prov.id, weekdays + night, "America/New_York")
    assert shown.time_zone == "America/New_York"
    assert shown.availability_schedule[-2].end_time == "24:00"

    assert (await book(api, customer, prov.id, next_local(1, 10), 3)).status == PENDING  # Mon 10-13
    assert (await book(api, customer, prov.id, next_local(5, 22), 6)).status == PENDING  # Fri 22 - Sat 4
    for start, hours in ((next_local(2, 16), 2), (next_local(7, 10), 1), (next_local(3, 8), 2)):
        refused = await expect_error(
            book(api, customer, prov.id, start, hours), grpc.StatusCode.FAILED_PRECONDITION, "OUTSIDE_AVAILABILITY"
        )
        assert refused.metadata == {"field": "start_time", "time_zone": "America/New_York"}

    # Without a time zone the same windows are shown, not enforced.
    anytime_owner, anytime = await api.verified_provider(admin)
    await set_schedule(api, anytime_owner, anytime.id, weekdays, "")
    assert (await book(api, customer, anytime.id, next_local(7, 10), 1)).status == PENDING


async def test_availability_and_time_zone_are_validated(api: Api) -> None:
    _, owner, prov, _ = await setup(api)
    await expect_invalid(
        set_schedule(api, owner, prov.id, [window(1, "09:00", "17:00")], "Mars/Olympus_Mons"), "provider.time_zone"
    )
    await expect_invalid(
        set_schedule(api, owner, prov.id, [window(1, "09:00", "24:30")], "UTC"),
        "provider.availability_schedule[0].end_time",
    )
    await expect_invalid(
        set_schedule(api, owner, prov.id, [window(1, "24:00", "24:00")], "UTC"),
        "provider.availability_schedule[0].start_time",
    )


async def test_create_booking_validates_the_request(api: Api) -> None:
    _, _, prov, customer = await setup(api, minimum_hours=2)
    await expect_invalid(book(api, customer, prov.id, hour(0), service_type=DRONE), "service_type")
    await expect_invalid(book(api, customer, prov.id, hour(0), 1), "duration_hours")
    await expect_invalid(book(api, customer, prov.id, hour(0), 25), "duration_hours")
    await expect_invalid(book(api, customer, prov.id, datetime.now(UTC) - timedelta(minutes=5)), "start_time")
    await expect_invalid(book(api, customer, prov.id, hour(400 * 24)), "start_time")
    await expect_invalid(api.bookings.CreateBooking(booking_request(prov.id, None), metadata=customer.md), "start_time")
    no_location = booking_request(prov.id, hour(0))
    no_location.ClearField("location")
    await expect_invalid(api.bookings.CreateBooking(no_location, metadata=customer.md), "location")
    bad_point = booking_request(prov.id, hour(0), location=common_pb2.Location(point=common_pb2.LatLng(latitude=99)))
    await expect_invalid(api.bookings.CreateBooking(bad_point, metadata=customer.md), "location.point.latitude")
    await expect_invalid(book(api, customer, "nope", hour(0)), "provider_id")
    assert await list_bookings(api, customer) == []


async def test_request_id_replay_creates_one_booking(api: Api, db_conn: asyncpg.Connection) -> None:
    _, _, prov, customer = await setup(api)
    request_id = str(uuid.uuid4())
    req = booking_request(prov.id, hour(0), request_id=request_id)
    first = (await api.bookings.CreateBooking(req, metadata=customer.md)).booking
    again = (await api.bookings.CreateBooking(req, metadata=customer.md)).booking
    assert again == first
    assert await db_conn.fetchval("SELECT count(*) FROM bookings") == 1

    changed = booking_request(prov.id, hour(10), request_id=request_id)
    await expect_error(
        api.bookings.CreateBooking(changed, metadata=customer.md),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    await expect_invalid(
        api.bookings.CreateBooking(booking_request(prov.id, hour(10), request_id="123"), metadata=customer.md),
        "request_id",
    )
    assert await db_conn.fetchval("SELECT count(*) FROM bookings") == 1


async def test_a_retry_after_the_start_time_passed_still_gets_the_booking(api: Api) -> None:
    """A phone that lost the answer retries later; by then the booking's start may be in
    the past, which a new booking may not be. The retry answers with the booking made."""
    _, _, prov, customer = await setup(api)
    start = datetime.now(UTC) + timedelta(seconds=2)
    req = booking_request(prov.id, start, request_id=str(uuid.uuid4()))
    first = (await api.bookings.CreateBooking(req, metadata=customer.md)).booking
    await asyncio.sleep((start - datetime.now(UTC)).total_seconds() + 0.1)  # until the start has passed

    again = (await api.bookings.CreateBooking(req, metadata=customer.md)).booking
    assert again == first
    fresh = booking_request(prov.id, start, request_id=str(uuid.uuid4()))
    await expect_invalid(api.bookings.CreateBooking(fresh, metadata=customer.md), "start_time")


async def test_a_customer_holds_at_most_ten_pending_bookings_with_a_provider(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """One account must not block a provider's calendar with unpaid requests: the
    11th pending booking with one provider is refused until one is confirmed or
    cancelled. Other providers and other customers are not affected."""
    admin, owner, prov, customer = await setup(api)
    assert MAX_PENDING_PER_PROVIDER == 10
    replayable = booking_request(prov.id, hour(0), 1, request_id=str(uuid.uuid4()))
    first = (await api.bookings.CreateBooking(replayable, metadata=customer.md)).booking
    held = [first] + [await book(api, customer, prov.id, hour(2 * i), 1) for i in range(1, 10)]
    err = await expect_error(
        book(api, customer, prov.id, hour(100), 1), grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_PENDING"
    )
    assert err.metadata["limit"] == "10"
    # A retry of a booking that was made answers with it, as any retry does.
    assert (await api.bookings.CreateBooking(replayable, metadata=customer.md)).booking == first

    _, other_provider = await api.verified_provider(admin, company="Other Guards")
    assert (await book(api, customer, other_provider.id, hour(100), 1)).status == PENDING
    assert (await book(api, await api.sign_up(), prov.id, hour(100), 1)).status == PENDING

    # A confirmed or a cancelled booking is no longer pending: room for one more each.
    await confirm(api, owner, held[0].id)
    await book(api, customer, prov.id, hour(102), 1)
    await expect_error(
        book(api, customer, prov.id, hour(104), 1), grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_PENDING"
    )
    await cancel(api, customer, held[1].id, "changed my mind")
    await book(api, customer, prov.id, hour(104), 1)
    await expect_error(
        book(api, customer, prov.id, hour(106), 1), grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_PENDING"
    )
    pending = await db_conn.fetchval(
        "SELECT count(*) FROM bookings WHERE user_id = $1 AND provider_id = $2 AND status = 'pending'",
        uuid.UUID(customer.id),
        uuid.UUID(prov.id),
    )
    assert pending == 10


async def test_pending_bookings_whose_start_passed_do_not_count_against_the_limit(api: Api) -> None:
    """A pending booking whose start time has passed can no longer be confirmed and
    blocks none of the provider's future time: it does not hold a place."""
    _, _, prov, customer = await setup(api)
    for i in range(9):
        await book(api, customer, prov.id, hour(2 * i), 1)
    at = datetime.now(UTC) + timedelta(seconds=3)
    await book(api, customer, prov.id, at, 1)
    await expect_error(
        book(api, customer, prov.id, hour(100), 1), grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_PENDING"
    )
    await until_passed(at)
    assert (await book(api, customer, prov.id, hour(100), 1)).status == PENDING


async def test_concurrent_creates_cannot_pass_the_pending_limit_together(api: Api, db_conn: asyncpg.Connection) -> None:
    """With nine pending bookings, three creates at once: one gets the last place."""
    _, _, prov, customer = await setup(api)
    for i in range(9):
        await book(api, customer, prov.id, hour(2 * i), 1)
    # Holding the customer's row stops each create at its insert (the foreign key check),
    # after its look at the limit: all three are in flight together, unless creates
    # take turns before they look.
    async with db_conn.transaction():
        await db_conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", uuid.UUID(customer.id))
        creates = [asyncio.ensure_future(book(api, customer, prov.id, hour(100 + 2 * i), 1)) for i in range(3)]

        async def all_waiting() -> bool:
            assert not any(c.done() for c in creates), [c.exception() or c.result() for c in creates if c.done()]
            # pg_stat_activity is read once per transaction unless its snapshot is cleared.
            await db_conn.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await db_conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"""
            )
            return bool(waiting >= 3)

        await wait_for(all_waiting, what="three creates waiting")
    outcomes = await asyncio.gather(*creates, return_exceptions=True)
    booked = [o for o in outcomes if isinstance(o, bookings_pb2.Booking)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(booked), len(refused)) == (1, 2), outcomes
    assert {error_details(e).reason for e in refused} == {"TOO_MANY_PENDING"}
    assert await db_conn.fetchval("SELECT count(*) FROM bookings") == 10


# Status ------------------------------------------------------------------------------


async def test_status_flow_by_the_provider(api: Api, db_conn: asyncpg.Connection) -> None:
    _, owner, prov, customer = await setup(api)
    booking = await book(api, customer, prov.id, soon())
    confirmed = await confirm(api, owner, booking.id)
    assert confirmed.status == CONFIRMED
    # Retrying a transition that already happened returns the booking unchanged.
    assert await confirm(api, owner, booking.id) == confirmed
    started = await start(api, owner, booking.id)
    assert started.status == IN_PROGRESS
    done = await complete(api, owner, booking.id)
    assert done.status == COMPLETED
    assert done.update_time.ToDatetime() >= started.update_time.ToDatetime()
    assert await get(api, customer, booking.id) == done
    assert await complete(api, owner, booking.id) == done
    assert await audit_actions(db_conn, booking.id) == [
        "booking.create",
        "booking.confirm",
        "booking.start",
        "booking.complete",
    ]


async def test_only_the_provider_moves_a_booking_forward(api: Api) -> None:
    admin, owner, prov, customer = await setup(api)
    rival_owner, _ = await api.verified_provider(admin, company="Rival")
    booking = await book(api, customer, prov.id, hour(0))
    await expect_error(confirm(api, customer, booking.id), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    await expect_error(confirm(api, rival_owner, booking.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    assert (await get(api, customer, booking.id)).status == PENDING
    await expect_error(
        complete(api, owner, booking.id), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_BOOKING_TRANSITION"
    )
    await expect_error(start(api, owner, booking.id), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_BOOKING_TRANSITION")
    assert (await get(api, owner, booking.id)).status == PENDING


async def test_cancel_rules(api: Api, db_conn: asyncpg.Connection) -> None:
    _, owner, prov, customer = await setup(api)
    stranger = await api.sign_up()
    by_customer = await book(api, customer, prov.id, hour(0), 1)
    by_provider = await book(api, customer, prov.id, hour(2), 1)
    running = await book(api, customer, prov.id, soon(), 1)

    await expect_error(cancel(api, stranger, by_customer.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    cancelled = await cancel(api, customer, by_customer.id, "plans changed")
    assert cancelled.status == CANCELLED
    assert cancelled.cancel_reason == "plans changed"
    assert await cancel(api, customer, by_customer.id, "again") == cancelled  # already cancelled: unchanged

    await confirm(api, owner, by_provider.id)
    assert (await cancel(api, owner, by_provider.id, "no staff")).status == CANCELLED

    await confirm(api, owner, running.id)
    await start(api, owner, running.id)
    await expect_error(
        cancel(api, customer, running.id), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_BOOKING_TRANSITION"
    )
    await complete(api, owner, running.id)
    await expect_error(
        cancel(api, owner, running.id), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_BOOKING_TRANSITION"
    )
    assert (await get(api, customer, running.id)).status == COMPLETED
    await expect_invalid(cancel(api, customer, running.id, "x" * 501), "reason")
    assert await audit_actions(db_conn, by_provider.id) == ["booking.create", "booking.confirm", "booking.cancel"]


async def test_a_booking_is_started_from_one_hour_before_its_start(api: Api, db_conn: asyncpg.Connection) -> None:
    """Starting a booking ends the customer's right to cancel it (and the refund of a
    paid one): the provider may do it from one hour before the start time, not months
    ahead."""
    admin, owner, prov, customer = await setup(api)
    ahead = await book(api, customer, prov.id, hour(0), 1)
    await pay(api, admin, ahead.id, PAID)
    await confirm(api, owner, ahead.id)
    opens = hour(0) - timedelta(hours=1)
    for caller in (owner, admin):
        err = await expect_error(
            start(api, caller, ahead.id), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_NOT_STARTED"
        )
        assert opens.isoformat() in err.message
        assert err.metadata["start_allowed_time"] == opens.isoformat()
    assert (await get(api, customer, ahead.id)).status == CONFIRMED
    cancelled = await cancel(api, customer, ahead.id, "found another")
    assert (cancelled.status, cancelled.payment_status) == (CANCELLED, REFUNDED)
    assert await audit_actions(db_conn, ahead.id) == [
        "booking.create",
        "booking.payment",
        "booking.confirm",
        "booking.cancel",
    ]

    # The hour is measured from the start time: 70 minutes ahead is too early, 5 is not.
    near = await book(api, customer, prov.id, datetime.now(UTC) + timedelta(minutes=5), 1)
    early = await book(api, customer, prov.id, datetime.now(UTC) + timedelta(minutes=70), 1)
    for b in (near, early):
        await confirm(api, owner, b.id)
    await expect_error(start(api, owner, early.id), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_NOT_STARTED")
    started = await start(api, owner, near.id)
    assert started.status == IN_PROGRESS
    assert await start(api, owner, near.id) == started  # a retry: unchanged
    assert (await audit_actions(db_conn, near.id)).count("booking.start") == 1


async def test_a_booking_whose_start_passed_cannot_be_confirmed(api: Api, db_conn: asyncpg.Connection) -> None:
    """A confirmation after the start time is of no use to the customer, who may cancel
    the booking instead. A retry of a confirmation made in time still answers."""
    admin, owner, prov, customer = await setup(api)
    other_owner, other_provider = await api.verified_provider(admin, company="Other Guards")
    at = datetime.now(UTC) + timedelta(seconds=3)
    late = await book(api, customer, prov.id, at, 1)
    in_time = await confirm(api, other_owner, (await book(api, customer, other_provider.id, at, 1)).id)
    await until_passed(at)

    for caller in (owner, admin):
        await expect_error(confirm(api, caller, late.id), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_EXPIRED")
    assert (await get(api, customer, late.id)).status == PENDING
    assert await confirm(api, other_owner, in_time.id) == in_time
    assert (await cancel(api, customer, late.id, "nobody confirmed")).status == CANCELLED
    assert await audit_actions(db_conn, late.id) == ["booking.create", "booking.cancel"]


# Payment -----------------------------------------------------------------------------


async def test_payment_transitions_by_admin(api: Api, db_conn: asyncpg.Connection) -> None:
    admin, owner, prov, customer = await setup(api)
    booking = await book(api, customer, prov.id, hour(0))
    await expect_error(pay(api, customer, booking.id, PAID), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    await expect_error(pay(api, owner, booking.id, PAID), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    await expect_error(
        pay(api, admin, booking.id, REFUNDED), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_PAYMENT_TRANSITION"
    )
    await expect_invalid(pay(api, admin, booking.id, bookings_pb2.PAYMENT_STATUS_UNSPECIFIED), "payment_status")
    assert (await get(api, customer, booking.id)).payment_status == PAY_PENDING

    paid = await pay(api, admin, booking.id, PAID)
    assert paid.payment_status == PAID
    assert paid.status == PENDING
    assert await pay(api, admin, booking.id, PAID) == paid
    refunded = await pay(api, admin, booking.id, REFUNDED)
    assert refunded.payment_status == REFUNDED
    await expect_error(
        pay(api, admin, booking.id, PAID), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_PAYMENT_TRANSITION"
    )
    assert await audit_actions(db_conn, booking.id) == ["booking.create", "booking.payment", "booking.payment"]


async def test_cancelling_a_paid_booking_refunds_it(api: Api) -> None:
    admin, owner, prov, customer = await setup(api)
    booking = await book(api, customer, prov.id, hour(0))
    await pay(api, admin, booking.id, PAID)
    await confirm(api, owner, booking.id)
    cancelled = await cancel(api, customer, booking.id, "found another")
    assert cancelled.status == CANCELLED
    assert cancelled.payment_status == REFUNDED
    assert (await get(api, admin, booking.id)).payment_status == REFUNDED


# Reading -----------------------------------------------------------------------------


async def test_get_booking_is_for_the_parties_and_admins(api: Api) -> None:
    admin, owner, prov, customer = await setup(api)
    stranger = await api.sign_up()
    booking = await book(api, customer, prov.id, hour(0))
    for caller in (customer, owner, admin):
        assert (await get(api, caller, booking.id)).id == booking.id
    await expect_error(get(api, stranger, booking.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    await expect_error(get(api, customer, NO_SUCH_ID), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")


async def test_list_bookings_for_customer_and_provider(api: Api) -> None:
    admin, owner, prov, customer = await setup(api)
    rival_owner, rival = await api.verified_provider(admin, company="Rival")
    other = await api.sign_up()
    late = await book(api, customer, prov.id, hour(10), 1)
    early = await book(api, customer, prov.id, hour(0), 1)
    elsewhere = await book(api, customer, rival.id, hour(5), 1)
    not_mine = await book(api, other, prov.id, hour(20), 1)
    await cancel(api, customer, late.id)

    mine = await list_bookings(api, customer)
    assert [b.id for b in mine] == [early.id, elsewhere.id, late.id]  # soonest first
    assert [b.id for b in await list_bookings(api, customer, status=CANCELLED)] == [late.id]
    assert [b.id for b in await list_bookings(api, other)] == [not_mine.id]

    for_provider = await list_bookings(api, owner, provider_id=prov.id)
    assert [b.id for b in for_provider] == [early.id, late.id, not_mine.id]
    assert [b.id for b in await list_bookings(api, admin, provider_id=rival.id)] == [elsewhere.id]
    assert await list_bookings(api, owner) == []  # the owner booked nothing as a customer

    first_page = await api.bookings.ListBookings(
        bookings_pb2.ListBookingsRequest(provider_id=prov.id, page_size=2), metadata=owner.md
    )
    assert [b.id for b in first_page.bookings] == [early.id, late.id]
    second_page = await api.bookings.ListBookings(
        bookings_pb2.ListBookingsRequest(provider_id=prov.id, page_size=2, page_token=first_page.next_page_token),
        metadata=owner.md,
    )
    assert [b.id for b in second_page.bookings] == [not_mine.id]
    assert second_page.next_page_token == ""

    for caller in (rival_owner, customer):
        await expect_error(
            list_bookings(api, caller, provider_id=prov.id), grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND"
        )


# Reviews -----------------------------------------------------------------------------


async def test_review_updates_the_provider_rating_once(api: Api, db_conn: asyncpg.Connection) -> None:
    _, owner, prov, customer = await setup(api)
    first_start, second_start = back_to_back()
    first = await book(api, customer, prov.id, first_start, 1)
    second = await book(api, customer, prov.id, second_start, 1)
    await expect_error(review(api, customer, first.id, 5), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_NOT_COMPLETED")
    await delivered(api, owner, first.id)
    await expect_invalid(review(api, customer, first.id, 6), "rating")
    await expect_invalid(review(api, customer, first.id, 0), "rating")
    await expect_error(review(api, owner, first.id, 5), grpc.StatusCode.PERMISSION_DENIED, "NOT_CUSTOMER")

    reviewed = await review(api, customer, first.id, 4, "On time")
    assert (reviewed.rating, reviewed.review) == (4, "On time")
    rated = await get_provider(api, customer, prov.id)
    assert (rated.rating, rated.total_reviews) == (4.0, 1)
    # The same review again is a retry (the phone lost the answer): the same result.
    assert (await review(api, customer, first.id, 4, "On time")) == reviewed
    assert (await get_provider(api, customer, prov.id)).total_reviews == 1
    await expect_error(review(api, customer, first.id, 1), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REVIEWED")
    assert (await get_provider(api, customer, prov.id)).total_reviews == 1

    await until_passed(first_start)
    await delivered(api, owner, second.id)
    await review(api, customer, second.id, 5)
    rated = await get_provider(api, customer, prov.id)
    assert (rated.rating, rated.total_reviews) == (4.5, 2)
    assert (await audit_actions(db_conn, first.id))[-1] == "booking.review"


# Events ------------------------------------------------------------------------------


async def test_create_booking_publishes_booking_update(api: Api, redis_client: aioredis.Redis) -> None:
    _, owner, prov, customer = await setup(api)
    async with subscribed(redis_client, "booking:update") as pubsub:
        booking = await book(api, customer, prov.id, hour(0), 2)
        created = await booking_message(pubsub, booking.id)
        await confirm(api, owner, booking.id)
        confirmed = await booking_message(pubsub, booking.id)
    assert created["type"] == "created"
    assert created["status"] == "pending"
    assert created["user_id"] == customer.id
    assert created["provider_id"] == prov.id
    assert created["duration_hours"] == 2
    assert confirmed["type"] == "confirm"
    assert confirmed["status"] == "confirmed"


async def test_payments_and_provider_verification_check_admin_in_the_service(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """Defence in depth: were the access table wrong, the services still refuse
    non-admins recording a payment or verifying a provider (their own, above all)."""
    _, owner, prov, customer = await setup(api)
    booking = await book(api, customer, prov.id, hour(50))
    callers = [
        Principal(PrincipalKind.USER, customer.id, Role.USER),
        Principal(PrincipalKind.USER, owner.id, Role.PROVIDER),
        Principal(PrincipalKind.API_KEY, str(uuid.uuid4()), Role.POLICE, str(uuid.uuid4())),
    ]
    for caller in callers:
        with pytest.raises(PermissionDenied):
            await api.app.bookings.update_payment_status(caller, booking.id, PaymentStatus.PAID)
        with pytest.raises(PermissionDenied):
            await api.app.providers.verify(caller, prov.id, VerificationStatus.REJECTED, "")
    row = await db_conn.fetchrow("SELECT payment_status::text FROM bookings WHERE id = $1", uuid.UUID(booking.id))
    assert row is not None
    assert row["payment_status"] == "pending"
    still = await db_conn.fetchval("SELECT verification_status::text FROM providers WHERE id = $1", uuid.UUID(prov.id))
    assert still == "verified"
