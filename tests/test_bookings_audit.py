"""BookingService defects found by an audit, each pinned by a test that failed before
its fix: payments on cancelled bookings, confirmations by providers that can no
longer be booked, concurrent reviews losing rating updates, reviews missing from the
`booking:update` channel."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import redis.asyncio as aioredis

from securenow.v1 import bookings_pb2, common_pb2, providers_pb2, users_pb2
from tests.helpers import Account, Api, expect_error, wait_for
from tests.test_bookings import (
    CANCELLED,
    CONFIRMED,
    PAID,
    PAY_PENDING,
    REFUNDED,
    audit_actions,
    back_to_back,
    book,
    booking_message,
    cancel,
    confirm,
    delivered,
    get,
    get_provider,
    hour,
    pay,
    review,
    setup,
    soon,
    subscribed,
    until_passed,
)

FAILED = bookings_pb2.PAYMENT_STATUS_FAILED


async def set_verification(api: Api, admin: Account, provider_id: str, decision: int) -> None:
    await api.providers.VerifyProvider(
        providers_pb2.VerifyProviderRequest(provider_id=provider_id, decision=decision), metadata=admin.md
    )


# Payments ----------------------------------------------------------------------------


async def test_a_cancelled_booking_cannot_be_marked_paid(api: Api, db_conn: asyncpg.Connection) -> None:
    """Cancelling refunds a PAID booking; a payment recorded after the cancellation
    would be money on a dead booking that nothing ever refunds."""
    admin, _, prov, customer = await setup(api)
    unpaid = await book(api, customer, prov.id, hour(0), 1)
    await cancel(api, customer, unpaid.id, "plans changed")
    await expect_error(pay(api, admin, unpaid.id, PAID), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_CANCELLED")
    assert (await get(api, customer, unpaid.id)).payment_status == PAY_PENDING

    failed_first = await book(api, customer, prov.id, hour(2), 1)
    assert (await pay(api, admin, failed_first.id, FAILED)).payment_status == FAILED
    await cancel(api, customer, failed_first.id)
    await expect_error(pay(api, admin, failed_first.id, PAID), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_CANCELLED")
    after = await get(api, admin, failed_first.id)
    assert (after.status, after.payment_status) == (CANCELLED, FAILED)
    assert await audit_actions(db_conn, failed_first.id) == ["booking.create", "booking.payment", "booking.cancel"]

    # Refunds stay possible, and so does a retry of the refund made by the cancellation.
    paid = await book(api, customer, prov.id, hour(4), 1)
    await pay(api, admin, paid.id, PAID)
    assert (await cancel(api, customer, paid.id)).payment_status == REFUNDED
    assert (await pay(api, admin, paid.id, REFUNDED)).payment_status == REFUNDED


# Confirming --------------------------------------------------------------------------


async def test_only_a_bookable_provider_confirms(api: Api) -> None:
    """A provider the admin rejected (or sent back to review, or whose owner was
    suspended) takes no new bookings; it must not turn pending ones into confirmed ones
    either. Cancelling stays possible, and a retry of a confirmation that happened
    before answers with the booking."""
    admin, owner, prov, customer = await setup(api)
    pending = await book(api, customer, prov.id, hour(0), 1)
    confirmed = await confirm(api, owner, (await book(api, customer, prov.id, hour(2), 1)).id)
    later = await book(api, customer, prov.id, hour(4), 1)

    await set_verification(api, admin, prov.id, common_pb2.VERIFICATION_STATUS_REJECTED)
    for caller in (owner, admin):
        await expect_error(
            confirm(api, caller, pending.id), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_NOT_VERIFIED"
        )
    assert (await get(api, customer, pending.id)).status == bookings_pb2.BOOKING_STATUS_PENDING
    assert await confirm(api, owner, confirmed.id) == confirmed  # already confirmed: unchanged
    assert (await cancel(api, owner, later.id, "we were rejected")).status == CANCELLED

    await set_verification(api, admin, prov.id, common_pb2.VERIFICATION_STATUS_VERIFIED)
    assert (await confirm(api, owner, pending.id)).status == CONFIRMED

    # An owner's suspension withdraws the company: not even an admin confirms for it.
    waiting = await book(api, customer, prov.id, hour(6), 1)
    await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=owner.id, reason="fraud"), metadata=admin.md)
    await expect_error(confirm(api, admin, waiting.id), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_SUSPENDED")
    assert (await get(api, customer, waiting.id)).status == bookings_pb2.BOOKING_STATUS_PENDING


# Reviews -----------------------------------------------------------------------------


async def test_concurrent_reviews_of_one_provider_all_count(api: Api, db_conn: asyncpg.Connection) -> None:
    """Two customers review the same provider at once. Each review recomputes the
    provider's rating; neither may compute it from a snapshot without the other."""
    _, owner, prov, _ = await setup(api)
    customers = [await api.sign_up() for _ in range(2)]
    starts = back_to_back()
    bookings = [await book(api, c, prov.id, at, 1) for c, at in zip(customers, starts, strict=True)]
    await delivered(api, owner, bookings[0].id)
    await until_passed(starts[0])
    await delivered(api, owner, bookings[1].id)

    # Hold the provider row so both reviews are in flight together, then let them go.
    async with db_conn.transaction():
        await db_conn.execute("SELECT 1 FROM providers WHERE id = $1 FOR UPDATE", uuid.UUID(prov.id))
        reviews = [
            asyncio.ensure_future(review(api, c, b.id, stars))
            for c, b, stars in zip(customers, bookings, (5, 2), strict=True)
        ]

        async def both_waiting() -> bool:
            assert not any(r.done() for r in reviews), [r.result() for r in reviews if r.done()]
            # pg_stat_activity is read once per transaction unless its snapshot is cleared.
            await db_conn.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await db_conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()
                     AND wait_event_type = 'Lock' AND query ILIKE '%providers%'"""
            )
            return bool(waiting >= 2)

        await wait_for(both_waiting, what="both reviews waiting on the provider row")
    await asyncio.gather(*reviews)

    rated = await get_provider(api, customers[0], prov.id)
    assert (rated.total_reviews, rated.rating) == (2, 3.5)


async def test_a_review_is_published_on_booking_update(api: Api, redis_client: aioredis.Redis) -> None:
    _, owner, prov, customer = await setup(api)
    booking = await book(api, customer, prov.id, soon(), 1)
    await delivered(api, owner, booking.id)
    async with subscribed(redis_client, "booking:update") as pubsub:
        await review(api, customer, booking.id, 4, "Fine")
        published = await booking_message(pubsub, booking.id, "review")
    assert published["status"] == "completed"
    assert published["rating"] == 4
    assert published["provider_id"] == prov.id


async def test_a_booking_racing_the_deletion_of_its_customer_is_not_left_behind(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """DeleteUser cancels the account's open bookings; a CreateBooking authenticated just
    before the deletion committed must not slip in after it: it waits for the deletion
    and is refused."""
    _, _, prov, customer = await setup(api)
    async with db_conn.transaction():
        # The deletion's row change, not committed yet (as DeleteUser holds it).
        await db_conn.execute("UPDATE users SET status = 'deleted' WHERE id = $1", uuid.UUID(customer.id))
        create = asyncio.ensure_future(book(api, customer, prov.id, hour(3)))

        async def waiting() -> bool:
            assert not create.done(), create.exception() or create.result()
            await db_conn.execute("SELECT pg_stat_clear_snapshot()")
            return bool(
                await db_conn.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"""
                )
            )

        await wait_for(waiting, what="the booking waiting for the deletion")
    refused = await expect_error(create, grpc.StatusCode.PERMISSION_DENIED)
    assert refused.reason == "ACCOUNT_DELETED"
    assert await db_conn.fetchval("SELECT count(*) FROM bookings") == 0
