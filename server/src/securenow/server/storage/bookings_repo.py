"""Bookings (partitioned by year on booking_date)."""

from __future__ import annotations

from typing import Any

import asyncpg

from securenow.server.domain.bookings import Booking, ValidBookingRequest
from securenow.server.domain.enums import BookingStatus, PaymentStatus, ServiceType
from securenow.server.domain.errors import FailedPrecondition
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.money import Money
from securenow.server.domain.paging import PageRequest, cursor_time, cursor_uuid
from securenow.server.storage.rows import Conn, geog_point, must

BOOKING_COLUMNS = """b.id, b.user_id, b.provider_id, b.service_type, b.booking_date, b.duration, b.location_data,
    b.special_instructions, b.status, b.total_price, b.currency_code, b.payment_status, b.created_at,
    b.updated_at, b.rating, b.review, b.cancel_reason, p.user_id AS provider_owner_id"""
FROM = "bookings b JOIN providers p ON p.id = b.provider_id"


def booking_from_row(r: asyncpg.Record) -> Booking:
    location = LocationFix.from_json(r["location_data"])
    assert location is not None
    return Booking(
        id=str(r["id"]),
        user_id=str(r["user_id"]),
        provider_id=str(r["provider_id"]),
        service_type=ServiceType(r["service_type"]),
        start_time=r["booking_date"],
        duration_hours=r["duration"],
        location=location,
        special_instructions=r["special_instructions"] or "",
        status=BookingStatus(r["status"]),
        total_price=Money(r["currency_code"], r["total_price"]),
        payment_status=PaymentStatus(r["payment_status"] or "pending"),
        create_time=r["created_at"],
        update_time=r["updated_at"],
        rating=r["rating"] or 0,
        review=r["review"] or "",
        cancel_reason=r["cancel_reason"] or "",
        provider_owner_id=str(r["provider_owner_id"]) if r["provider_owner_id"] else None,
    )


class BookingsRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def create(self, booking_id: str, user_id: str, req: ValidBookingRequest, price: Money) -> str:
        """Inserts a PENDING booking. The reservation trigger enforces no overlap."""
        try:
            await self.conn.execute(
                f"""INSERT INTO bookings (id, user_id, provider_id, service_type, booking_date, duration,
                        location_data, location, special_instructions, total_price, currency_code)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, {geog_point("$8", "$9")}, $10, $11, $12)""",
                booking_id,
                user_id,
                req.provider_id,
                req.service_type.value,
                req.start_time,
                req.duration_hours,
                req.location.to_json(),
                req.location.point.longitude,
                req.location.point.latitude,
                req.special_instructions or None,
                price.amount,
                price.currency_code,
            )
        except asyncpg.ExclusionViolationError:
            raise FailedPrecondition(
                "the provider is already booked for an overlapping time", reason="BOOKING_OVERLAP"
            ) from None
        return booking_id

    async def in_service_area(self, provider_id: str, location: LocationFix) -> bool:
        """Whether `location` lies in the provider's service area (on its edge counts);
        a provider that declared none serves everywhere."""
        inside = await self.conn.fetchval(
            f"SELECT service_area IS NULL OR ST_Covers(service_area, {geog_point('$2', '$3')}) "
            "FROM providers WHERE id = $1",
            provider_id,
            location.point.longitude,
            location.point.latitude,
        )
        return bool(inside)

    async def lock_customer_provider(self, user_id: str, provider_id: str) -> None:
        """Makes creates by one customer with one provider take turns until the transaction
        ends (a transaction-level advisory lock on the pair; the two-key form shares no keys
        with the single-key locks used elsewhere)."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1::text), hashtext($2::text))",
            user_id,
            provider_id,
        )

    async def count_upcoming_pending(self, user_id: str, provider_id: str) -> int:
        """PENDING bookings of the customer with the provider that have not started yet."""
        count = await self.conn.fetchval(
            """SELECT count(*) FROM bookings
               WHERE user_id = $1 AND provider_id = $2 AND status = 'pending' AND booking_date > now()""",
            user_id,
            provider_id,
        )
        return int(count)

    async def open_of_customer(self, user_id: str) -> list[Booking]:
        """The customer's PENDING and CONFIRMED bookings, locked for update."""
        rows = await self.conn.fetch(
            f"""SELECT {BOOKING_COLUMNS} FROM {FROM}
                WHERE b.user_id = $1 AND b.status IN ('pending', 'confirmed')
                ORDER BY b.booking_date, b.id FOR UPDATE OF b""",
            user_id,
        )
        return [booking_from_row(r) for r in rows]

    async def get(self, booking_id: str, *, for_update: bool = False) -> Booking | None:
        lock = " FOR UPDATE OF b" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {BOOKING_COLUMNS} FROM {FROM} WHERE b.id = $1{lock}", booking_id)
        return booking_from_row(row) if row else None

    async def set_status(self, booking: Booking, status: BookingStatus, *, cancel_reason: str = "") -> Booking:
        refund = status is BookingStatus.CANCELLED and booking.payment_status is PaymentStatus.PAID
        try:
            await self.conn.execute(
                """UPDATE bookings SET status = $3, cancel_reason = COALESCE(NULLIF($4, ''), cancel_reason),
                          payment_status = CASE WHEN $5 THEN 'refunded'::payment_status ELSE payment_status END,
                          updated_at = now()
                   WHERE id = $1 AND booking_date = $2""",
                booking.id,
                booking.start_time,
                status.value,
                cancel_reason,
                refund,
            )
        except asyncpg.ExclusionViolationError:
            raise FailedPrecondition("the provider is booked at that time", reason="BOOKING_OVERLAP") from None
        return await self._reload(booking)

    async def set_payment_status(self, booking: Booking, status: PaymentStatus) -> Booking:
        await self.conn.execute(
            "UPDATE bookings SET payment_status = $3, updated_at = now() WHERE id = $1 AND booking_date = $2",
            booking.id,
            booking.start_time,
            status.value,
        )
        return await self._reload(booking)

    async def set_review(self, booking: Booking, rating: int, review: str) -> Booking:
        await self.conn.execute(
            """UPDATE bookings SET rating = $3, review = $4, updated_at = now()
               WHERE id = $1 AND booking_date = $2""",
            booking.id,
            booking.start_time,
            rating,
            review,
        )
        return await self._reload(booking)

    async def _reload(self, booking: Booking) -> Booking:
        row = await self.conn.fetchrow(
            f"SELECT {BOOKING_COLUMNS} FROM {FROM} WHERE b.id = $1 AND b.booking_date = $2",
            booking.id,
            booking.start_time,
        )
        return booking_from_row(must(row))

    async def list_page(
        self, page: PageRequest, *, user_id: str | None, provider_id: str | None, status: BookingStatus | None
    ) -> tuple[list[Booking], list[Any] | None]:
        where, args = [], []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if user_id is not None:
            where.append(f"b.user_id = {arg(user_id)}")
        if provider_id is not None:
            where.append(f"b.provider_id = {arg(provider_id)}")
        if status is not None:
            where.append(f"b.status = {arg(status.value)}")
        after = page.keyset(cursor_time, cursor_uuid)
        if after is not None:
            where.append(f"(b.booking_date, b.id) > ({arg(after[0])}, {arg(after[1])}::uuid)")
        rows = await self.conn.fetch(
            f"""SELECT {BOOKING_COLUMNS} FROM {FROM} WHERE {" AND ".join(where) or "TRUE"}
                ORDER BY b.booking_date, b.id LIMIT {arg(page.size + 1)}""",
            *args,
        )
        bookings = [booking_from_row(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        cursor = [bookings[-1].start_time.isoformat(), bookings[-1].id] if more and bookings else None
        return bookings, cursor
