"""Bookings: creation with server-side pricing, status and payment transitions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from securenow.server.domain.accounts import Principal
from securenow.server.domain.bookings import (
    Booking,
    BookingRequest,
    check_payment_transition,
    check_transition,
    quote,
    require_bookable,
    require_not_expired,
    require_pending_room,
    require_startable,
    require_within_schedule,
    validate_booking_request,
)
from securenow.server.domain.enums import BookingStatus, PaymentStatus, UserStatus
from securenow.server.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from securenow.server.domain.paging import page_request
from securenow.server.domain.validation import Validator, parse_text, parse_uuid
from securenow.server.services.common import replayed_resource, same_request
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.live_state import CHANNEL_BOOKING_UPDATE
from securenow.server.storage.postgres import Database, UnitOfWork


def _is_customer(caller: Principal, b: Booking) -> bool:
    return b.user_id == caller.user_id


def _is_provider(caller: Principal, b: Booking) -> bool:
    return b.provider_owner_id is not None and b.provider_owner_id == caller.user_id


def _booking_event(b: Booking, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "booking_id": b.id,
        "user_id": b.user_id,
        "provider_id": b.provider_id,
        "status": b.status.value,
        "payment_status": b.payment_status.value,
        "start_time": b.start_time.isoformat(),
        "duration_hours": b.duration_hours,
        "rating": b.rating,
    }


class BookingService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def _load(self, uow: UnitOfWork, caller: Principal, booking_id: str, *, lock: bool = False) -> Booking:
        booking = await uow.bookings.get(booking_id, for_update=lock)
        if booking is None or not (caller.is_admin or _is_customer(caller, booking) or _is_provider(caller, booking)):
            raise NotFound("booking not found", reason="BOOKING_NOT_FOUND")
        return booking

    async def _changed(self, uow: UnitOfWork, caller: Principal, before: Booking, after: Booking, action: str) -> None:
        await uow.audit.record(
            caller,
            AuditEntry(
                f"booking.{action}",
                "booking",
                after.id,
                details={
                    "status": [before.status.value, after.status.value],
                    "payment_status": [before.payment_status.value, after.payment_status.value],
                },
            ),
        )
        await uow.outbox.add(CHANNEL_BOOKING_UPDATE, action, _booking_event(after, action), aggregate_id=after.id)

    async def _earlier(self, caller: Principal, key: IdempotencyKey) -> Booking | None:
        async with self._db.reader() as uow:
            prior = await uow.idempotency.find(caller.id, "CreateBooking", key)
            return None if prior is None else await self._load(uow, caller, same_request(prior, key))

    async def create(self, caller: Principal, req: BookingRequest, key: IdempotencyKey | None) -> Booking:
        if caller.user_id is None:
            raise PermissionDenied("bookings are made by user accounts", reason="NOT_A_USER")
        try:
            valid = validate_booking_request(req)
        except InvalidArgument:
            # A late retry of a booking that was made (its start time may have passed
            # since) answers with that booking, as any retry does.
            if key is not None and (earlier := await self._earlier(caller, key)) is not None:
                return earlier
            raise
        new_id = str(uuid.uuid4())
        async with self._db.unit_of_work() as uow:
            prior = await replayed_resource(uow, caller, "CreateBooking", key, new_id)
            if prior is not None:
                return await self._load(uow, caller, prior)
            provider = await uow.providers.get(valid.provider_id)
            if provider is None:
                raise NotFound("provider not found", reason="PROVIDER_NOT_FOUND")
            # The contract answers FAILED_PRECONDITION for a provider that exists but cannot
            # be booked now (never verified, rejected, or back in review after a change).
            require_bookable(provider)
            if provider.user_id == caller.user_id:
                raise FailedPrecondition("providers cannot book themselves", reason="SELF_BOOKING")
            if not await uow.bookings.in_service_area(provider.id, valid.location):
                raise FailedPrecondition(
                    "the location is outside the provider's service area",
                    reason="OUTSIDE_SERVICE_AREA",
                    metadata={"field": "location"},
                )
            require_within_schedule(provider, valid)
            price = quote(provider, valid)
            # Creates of one customer with one provider take turns, so that two at once
            # cannot both find room for one more pending booking.
            await uow.bookings.lock_customer_provider(caller.user_id, provider.id)
            require_pending_room(await uow.bookings.count_upcoming_pending(caller.user_id, provider.id))
            # The account is still active now, and stays so until this commits: a deletion
            # racing this booking either waits and then cancels it, or is seen here.
            status = await uow.accounts.status_for_share(caller.user_id)
            if status is not UserStatus.ACTIVE:
                state = status.value if status else "gone"
                raise PermissionDenied(f"the account is {state}", reason=f"ACCOUNT_{state.upper()}")
            await uow.bookings.create(new_id, caller.user_id, valid, price)
            booking = await self._load(uow, caller, new_id)
            await uow.audit.record(
                caller,
                AuditEntry(
                    "booking.create",
                    "booking",
                    new_id,
                    details={"provider_id": provider.id, "total_price": str(price.amount)},
                ),
            )
            await uow.outbox.add(
                CHANNEL_BOOKING_UPDATE, "created", _booking_event(booking, "created"), aggregate_id=new_id
            )
        return booking

    async def get(self, caller: Principal, booking_id: str) -> Booking:
        bid = parse_uuid("booking_id", booking_id)
        async with self._db.unit_of_work() as uow:
            return await self._load(uow, caller, bid)

    async def list_bookings(
        self, caller: Principal, *, page_size: int, page_token: str, provider_id: str, status: BookingStatus | None
    ) -> tuple[list[Booking], str]:
        v = Validator()
        pid = v.uuid("provider_id", provider_id, required=False)
        v.check()
        page = page_request(page_size, page_token, filters=("bookings", caller.id, pid, status))
        async with self._db.unit_of_work() as uow:
            if pid:
                provider = await uow.providers.get(pid)
                if provider is None or not (caller.is_admin or provider.user_id == caller.user_id):
                    raise NotFound("provider not found", reason="PROVIDER_NOT_FOUND")
                bookings, cursor = await uow.bookings.list_page(page, user_id=None, provider_id=pid, status=status)
            else:
                if caller.user_id is None:
                    raise InvalidArgument.field("provider_id", "is required for non-user callers")
                bookings, cursor = await uow.bookings.list_page(
                    page, user_id=caller.user_id, provider_id=None, status=status
                )
        return bookings, page.next_token(cursor)

    async def _transition(
        self,
        caller: Principal,
        booking_id: str,
        target: BookingStatus,
        allowed: Callable[[Principal, Booking], bool],
        action: str,
        *,
        reason: str = "",
    ) -> Booking:
        bid = parse_uuid("booking_id", booking_id)
        async with self._db.unit_of_work() as uow:
            booking = await self._load(uow, caller, bid, lock=True)
            if not (allowed(caller, booking) or caller.is_admin):
                raise PermissionDenied(f"you cannot {action} this booking", reason="NOT_ALLOWED_FOR_PARTY")
            after = await self._apply(uow, caller, booking, target, action, reason=reason)
        return after

    async def _apply(
        self,
        uow: UnitOfWork,
        caller: Principal,
        booking: Booking,
        target: BookingStatus,
        action: str,
        *,
        reason: str = "",
    ) -> Booking:
        """Moves a booking locked in `uow` to `target` (whoever may do so was checked),
        audited and published; returns it unchanged if it already is in `target`."""
        if not check_transition(booking, target):
            return booking
        if target is BookingStatus.CONFIRMED:
            require_not_expired(booking)
            # Confirming commits the provider to the booking: only a provider that could
            # be booked now may do it (not one rejected, in review or withdrawn since).
            provider = await uow.providers.get(booking.provider_id)
            if provider is None:
                raise NotFound("provider not found", reason="PROVIDER_NOT_FOUND")
            require_bookable(provider)
        elif target is BookingStatus.IN_PROGRESS:
            require_startable(booking)
        after = await uow.bookings.set_status(booking, target, cancel_reason=reason)
        await self._changed(uow, caller, booking, after, action)
        return after

    async def cancel_open_bookings_of_customer(
        self, uow: UnitOfWork, caller: Principal, user_id: str, reason: str
    ) -> list[Booking]:
        """Cancels, inside the caller's unit of work, every PENDING or CONFIRMED booking
        `user_id` made as a customer, each as CancelBooking by `caller` does (a PAID one
        becomes REFUNDED, audited, published on booking:update)."""
        return [
            await self._apply(uow, caller, booking, BookingStatus.CANCELLED, "cancel", reason=reason)
            for booking in await uow.bookings.open_of_customer(user_id)
        ]

    async def confirm(self, caller: Principal, booking_id: str) -> Booking:
        return await self._transition(caller, booking_id, BookingStatus.CONFIRMED, _is_provider, "confirm")

    async def start(self, caller: Principal, booking_id: str) -> Booking:
        return await self._transition(caller, booking_id, BookingStatus.IN_PROGRESS, _is_provider, "start")

    async def complete(self, caller: Principal, booking_id: str) -> Booking:
        return await self._transition(caller, booking_id, BookingStatus.COMPLETED, _is_provider, "complete")

    async def cancel(self, caller: Principal, booking_id: str, reason: str) -> Booking:
        reason = parse_text("reason", reason, max_len=500)

        def party(c: Principal, b: Booking) -> bool:
            return _is_customer(c, b) or _is_provider(c, b)

        return await self._transition(caller, booking_id, BookingStatus.CANCELLED, party, "cancel", reason=reason)

    async def update_payment_status(self, caller: Principal, booking_id: str, status: PaymentStatus | None) -> Booking:
        caller.require_admin("record payments")
        bid = parse_uuid("booking_id", booking_id)
        if status is None:
            raise InvalidArgument.field("payment_status", "is required")
        async with self._db.unit_of_work() as uow:
            booking = await self._load(uow, caller, bid, lock=True)
            if not check_payment_transition(booking, status):
                return booking
            after = await uow.bookings.set_payment_status(booking, status)
            await self._changed(uow, caller, booking, after, "payment")
        return after

    async def review(self, caller: Principal, booking_id: str, rating: int, text: str) -> Booking:
        v = Validator()
        bid = v.uuid("booking_id", booking_id)
        v.int_range("rating", rating, 1, 5)
        text = v.text("review", text, max_len=2000)
        v.check()
        async with self._db.unit_of_work() as uow:
            booking = await self._load(uow, caller, bid, lock=True)
            if not _is_customer(caller, booking):
                raise PermissionDenied("only the customer can review a booking", reason="NOT_CUSTOMER")
            if booking.status is not BookingStatus.COMPLETED:
                raise FailedPrecondition("only completed bookings can be reviewed", reason="BOOKING_NOT_COMPLETED")
            if booking.rating:
                if (booking.rating, booking.review) == (rating, text):
                    return booking  # a retry of the review that was stored: its result again
                raise FailedPrecondition("the booking was already reviewed", reason="ALREADY_REVIEWED")
            # Reviews of one provider take turns: each recomputes the provider's rating from
            # all reviews, so it must see the ones committed before it.
            await uow.providers.lock_for_rating(booking.provider_id)
            after = await uow.bookings.set_review(booking, rating, text)
            await uow.providers.refresh_rating(booking.provider_id)
            await uow.audit.record(caller, AuditEntry("booking.review", "booking", bid, details={"rating": rating}))
            await uow.outbox.add(CHANNEL_BOOKING_UPDATE, "review", _booking_event(after, "review"), aggregate_id=bid)
        return after
