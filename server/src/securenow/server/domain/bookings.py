"""Bookings: validation, server-side pricing and the status/payment state machines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from securenow.server.domain.enums import BookingStatus, PaymentStatus, ServiceType
from securenow.server.domain.errors import FailedPrecondition, InvalidArgument
from securenow.server.domain.geo import LocationFix, LocationInput, validate_location
from securenow.server.domain.money import Money
from securenow.server.domain.providers import Provider, within_schedule
from securenow.server.domain.validation import Validator

MAX_DAYS_AHEAD = 365
MAX_HOURS = 24
# A provider may start a booking (CONFIRMED -> IN_PROGRESS) from this long before its
# start time, not earlier: starting ends the customer's right to cancel (and be refunded).
START_WINDOW = timedelta(hours=1)
# Upcoming PENDING bookings one customer may hold with one provider at a time, so that a
# single account cannot block a provider's calendar with unpaid requests.
MAX_PENDING_PER_PROVIDER = 10

# Status transitions; cancel is allowed from PENDING and CONFIRMED only.
TRANSITIONS: dict[BookingStatus, tuple[BookingStatus, ...]] = {
    BookingStatus.CONFIRMED: (BookingStatus.PENDING,),
    BookingStatus.IN_PROGRESS: (BookingStatus.CONFIRMED,),
    BookingStatus.COMPLETED: (BookingStatus.IN_PROGRESS,),
    BookingStatus.CANCELLED: (BookingStatus.PENDING, BookingStatus.CONFIRMED),
}
PAYMENT_TRANSITIONS: dict[PaymentStatus, tuple[PaymentStatus, ...]] = {
    PaymentStatus.PAID: (PaymentStatus.PENDING, PaymentStatus.FAILED),
    PaymentStatus.FAILED: (PaymentStatus.PENDING,),
    PaymentStatus.REFUNDED: (PaymentStatus.PAID,),
}


@dataclass
class Booking:
    id: str
    user_id: str
    provider_id: str
    service_type: ServiceType
    start_time: datetime
    duration_hours: int
    location: LocationFix
    special_instructions: str
    status: BookingStatus
    total_price: Money
    payment_status: PaymentStatus
    create_time: datetime
    update_time: datetime
    rating: int = 0
    review: str = ""
    cancel_reason: str = ""
    provider_owner_id: str | None = None

    @property
    def end_time(self) -> datetime:
        return self.start_time + timedelta(hours=self.duration_hours)


@dataclass(frozen=True)
class BookingRequest:
    provider_id: str
    service_type: ServiceType | None
    start_time: datetime | None
    duration_hours: int
    location: LocationInput | None
    special_instructions: str


@dataclass(frozen=True)
class ValidBookingRequest:
    provider_id: str
    service_type: ServiceType
    start_time: datetime
    duration_hours: int
    location: LocationFix
    special_instructions: str


def validate_booking_request(req: BookingRequest, *, now: datetime | None = None) -> ValidBookingRequest:
    now = now or datetime.now(UTC)
    v = Validator()
    provider_id = v.uuid("provider_id", req.provider_id)
    if req.service_type is None:
        v.add("service_type", "is required")
    if req.start_time is None:
        v.add("start_time", "is required")
    elif req.start_time <= now:
        v.add("start_time", "must be in the future")
    elif req.start_time > now + timedelta(days=MAX_DAYS_AHEAD):
        v.add("start_time", f"must be at most {MAX_DAYS_AHEAD} days ahead")
    v.int_range("duration_hours", req.duration_hours, 1, MAX_HOURS)
    if req.location is None:
        v.add("location", "is required")
        location = None
    else:
        location = validate_location(v, "location", req.location, now=now)
    instructions = v.text("special_instructions", req.special_instructions, max_len=2000)
    v.check()
    assert req.service_type is not None
    assert req.start_time is not None
    assert location is not None
    return ValidBookingRequest(
        provider_id, req.service_type, req.start_time, req.duration_hours, location, instructions
    )


def quote(provider: Provider, req: ValidBookingRequest) -> Money:
    """The price of a booking, computed from the provider's pricing only."""
    rate = provider.pricing.rates.get(req.service_type)
    if rate is None:
        raise InvalidArgument.field("service_type", "the provider does not offer this service")
    if req.duration_hours < provider.pricing.minimum_hours:
        raise InvalidArgument.field(
            "duration_hours", f"the provider books at least {provider.pricing.minimum_hours} hours"
        )
    return rate.times(req.duration_hours)


def require_bookable(provider: Provider) -> None:
    """FAILED_PRECONDITION for a provider that exists but cannot take bookings now: never
    verified, rejected or back in review after a change, or its owner's account is
    suspended or deleted. Checked when a booking is made and when one is confirmed."""
    if not provider.verified:
        raise FailedPrecondition("the provider is not verified", reason="PROVIDER_NOT_VERIFIED")
    if not provider.owner_active:
        raise FailedPrecondition("the provider is not taking bookings", reason="PROVIDER_SUSPENDED")


def require_within_schedule(provider: Provider, valid: ValidBookingRequest) -> None:
    """FAILED_PRECONDITION (OUTSIDE_AVAILABILITY) for a booking that does not lie wholly
    inside the provider's availability windows, when it has a schedule and a time zone
    (without a time zone the windows' wall-clock times mean nothing definite)."""
    if not (provider.time_zone and provider.availability_schedule):
        return
    end = valid.start_time + timedelta(hours=valid.duration_hours)
    if not within_schedule(provider.availability_schedule, provider.time_zone, valid.start_time, end):
        raise FailedPrecondition(
            f"the provider does not take bookings at that time (its availability is in {provider.time_zone})",
            reason="OUTSIDE_AVAILABILITY",
            metadata={"field": "start_time", "time_zone": provider.time_zone},
        )


def require_startable(booking: Booking) -> None:
    """FAILED_PRECONDITION (BOOKING_NOT_STARTED) before START_WINDOW ahead of the start."""
    now = datetime.now(UTC)
    opens = booking.start_time - START_WINDOW
    if now < opens:
        raise FailedPrecondition(
            f"the booking can be started from {opens.isoformat()}, one hour before its start time",
            reason="BOOKING_NOT_STARTED",
            metadata={"start_allowed_time": opens.isoformat()},
        )


def require_not_expired(booking: Booking) -> None:
    """FAILED_PRECONDITION (BOOKING_EXPIRED) for confirming a booking whose start time
    has passed: the confirmation comes too late to be of use; it can be cancelled."""
    if booking.start_time <= datetime.now(UTC):
        raise FailedPrecondition(
            "the booking's start time has passed; it can no longer be confirmed, only cancelled",
            reason="BOOKING_EXPIRED",
        )


def require_pending_room(pending: int) -> None:
    """FAILED_PRECONDITION (TOO_MANY_PENDING) when the customer already holds
    MAX_PENDING_PER_PROVIDER upcoming PENDING bookings with the provider."""
    if pending >= MAX_PENDING_PER_PROVIDER:
        raise FailedPrecondition(
            f"you already have {MAX_PENDING_PER_PROVIDER} pending bookings with this provider; "
            "wait for confirmations or cancel one first",
            reason="TOO_MANY_PENDING",
            metadata={"limit": str(MAX_PENDING_PER_PROVIDER)},
        )


def check_transition(booking: Booking, target: BookingStatus) -> bool:
    """True if the booking must change; False if it already is in `target` (a retry)."""
    if booking.status is target:
        return False
    if booking.status not in TRANSITIONS[target]:
        raise FailedPrecondition(
            f"a {booking.status.value} booking cannot become {target.value}", reason="INVALID_BOOKING_TRANSITION"
        )
    return True


def check_payment_transition(booking: Booking, target: PaymentStatus) -> bool:
    if booking.payment_status is target:
        return False
    if target is PaymentStatus.PAID and booking.status is BookingStatus.CANCELLED:
        # Cancelling refunds a paid booking; a payment recorded afterwards would sit on a
        # dead booking with nothing to refund it.
        raise FailedPrecondition("a cancelled booking takes no payment", reason="BOOKING_CANCELLED")
    allowed = PAYMENT_TRANSITIONS.get(target, ())
    if booking.payment_status not in allowed:
        raise FailedPrecondition(
            f"payment status {booking.payment_status.value} cannot become {target.value}",
            reason="INVALID_PAYMENT_TRANSITION",
        )
    return True
