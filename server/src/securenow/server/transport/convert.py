"""Protobuf <-> domain conversions. Nothing else in the server touches both worlds."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar, overload

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from securenow.server.domain import enums
from securenow.server.domain.accounts import EmergencyContact, KycData, User
from securenow.server.domain.bookings import Booking, BookingRequest
from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import LocationFix, LocationInput, Point
from securenow.server.domain.money import Money
from securenow.server.domain.providers import AvailabilityWindow, Insurance, Provider, ProviderDraft
from securenow.server.domain.validation import Validator
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.v1 import bookings_pb2, common_pb2, providers_pb2, users_pb2

E = TypeVar("E", bound=StrEnum)

# (proto enum, value prefix) for each domain enum.
_ENUMS: dict[type[StrEnum], tuple[Any, str]] = {
    enums.Role: (users_pb2.UserRole, "USER_ROLE"),
    enums.UserStatus: (users_pb2.UserStatus, "USER_STATUS"),
    enums.VerificationStatus: (common_pb2.VerificationStatus, "VERIFICATION_STATUS"),
    enums.ProviderType: (providers_pb2.ProviderType, "PROVIDER_TYPE"),
    enums.ServiceType: (providers_pb2.ServiceType, "SERVICE_TYPE"),
    enums.BookingStatus: (bookings_pb2.BookingStatus, "BOOKING_STATUS"),
    enums.PaymentStatus: (bookings_pb2.PaymentStatus, "PAYMENT_STATUS"),
    enums.SosStatus: (common_pb2.SosStatus, "SOS_STATUS"),
    enums.AlertPriority: (common_pb2.AlertPriority, "ALERT_PRIORITY"),
    enums.IncidentType: (common_pb2.IncidentType, "INCIDENT_TYPE"),
    enums.IncidentStatus: (common_pb2.IncidentStatus, "INCIDENT_STATUS"),
}


def register_enum(domain: type[StrEnum], wrapper: Any, prefix: str) -> None:
    _ENUMS[domain] = (wrapper, prefix)


def enum_to_pb(value: StrEnum | None) -> Any:
    if value is None:
        return 0
    wrapper, prefix = _ENUMS[type(value)]
    return int(wrapper.Value(f"{prefix}_{value.name}"))


def enum_from_pb(domain: type[E], number: int, field: str) -> E | None:
    """None for *_UNSPECIFIED; INVALID_ARGUMENT naming `field` for unknown numbers."""
    if number == 0:
        return None
    wrapper, prefix = _ENUMS[domain]
    try:
        name = wrapper.Name(number)
    except ValueError:
        raise InvalidArgument.field(field, f"unknown value {number}") from None
    return domain[name.removeprefix(prefix + "_")]


def enum_list_from_pb(domain: type[E], numbers: Any, field: str) -> list[E]:
    """A repeated enum filter; *_UNSPECIFIED or unknown numbers are INVALID_ARGUMENT."""
    out = []
    for i, number in enumerate(numbers):
        value = enum_from_pb(domain, number, f"{field}[{i}]")
        if value is None:
            raise InvalidArgument.field(f"{field}[{i}]", "must not be unspecified")
        out.append(value)
    return out


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    # Aware values are converted to UTC; naive ones (asyncpg's answer for the extremes
    # of timestamptz) are UTC already. astimezone() would fail on them in year 1.
    out.FromDatetime(value)
    return out


def from_ts(msg: Message, field: str, name: str | None = None) -> datetime | None:
    """An optional Timestamp field (None when unset). Outside protobuf's range (years
    0001..9999, nanos below one second) it is INVALID_ARGUMENT naming `name`, the
    field's full path in the request (default: `field`). Every Timestamp a client
    sends is read through here."""
    if not msg.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(msg, field)
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(
            name or field, "is not a valid timestamp (years 0001 to 9999, nanos below 1,000,000,000)"
        ) from None


# protobuf's Duration range: about 10,000 years either way.
MAX_DURATION_SECONDS = 315_576_000_000


def from_duration(msg: Message, field: str, name: str | None = None) -> timedelta | None:
    """An optional Duration field (None when unset). Outside protobuf's rules (range,
    |nanos| below one second with the sign of seconds) it is INVALID_ARGUMENT naming
    `name` (default: `field`). Every Duration a client sends is read through here."""
    if not msg.HasField(field):
        return None
    value: duration_pb2.Duration = getattr(msg, field)
    s, n = value.seconds, value.nanos
    if abs(s) > MAX_DURATION_SECONDS or abs(n) >= 1_000_000_000 or (s > 0 > n) or (s < 0 < n):
        raise InvalidArgument.field(name or field, "is not a valid duration") from None
    return value.ToTimedelta()


def whole_seconds(msg: Message, field: str, name: str | None = None) -> int | None:
    """An optional Duration field that must be whole seconds."""
    value = from_duration(msg, field, name)
    if value is None:
        return None
    if value.microseconds:
        raise InvalidArgument.field(name or field, "must be whole seconds")
    return int(value.total_seconds())


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def idempotency_key(
    request: Message, field_name: str = "request_id", *, secret_fields: tuple[str, ...] = ()
) -> IdempotencyKey | None:
    """AIP-155: the request id plus a fingerprint of the rest of the request, except
    `secret_fields` (a fast hash of a password must not be stored; the service checks
    those itself)."""
    request_id: str = getattr(request, field_name)
    if not request_id:
        return None
    v = Validator()
    canonical = v.uuid(field_name, request_id)
    v.check()
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField(field_name)
    for secret in secret_fields:
        body.ClearField(secret)
    fingerprint = hashlib.sha256(body.SerializeToString(deterministic=True)).digest()
    return IdempotencyKey(canonical, fingerprint)


# Common ---------------------------------------------------------------------------


def point_from_pb(msg: Message, field: str) -> Point | None:
    """An optional LatLng field as a Point (None when unset)."""
    if not msg.HasField(field):
        return None
    value: common_pb2.LatLng = getattr(msg, field)
    return Point(value.latitude, value.longitude)


def lat_lng(point: Point | None) -> common_pb2.LatLng | None:
    return None if point is None else common_pb2.LatLng(latitude=point.latitude, longitude=point.longitude)


@overload
def location(fix: LocationFix) -> common_pb2.Location: ...
@overload
def location(fix: LocationFix | None) -> common_pb2.Location | None: ...


def location(fix: LocationFix | None) -> common_pb2.Location | None:
    if fix is None:
        return None
    return common_pb2.Location(
        point=lat_lng(fix.point),
        accuracy_m=fix.accuracy_m,
        time=ts(fix.time),
        heading_deg=fix.heading_deg,
        speed_mps=fix.speed_mps,
        address=fix.address,
    )


def location_input(msg: common_pb2.Location, name: str = "location") -> LocationInput:
    """A client's Location; `name` is its path in the request (for error details)."""
    return LocationInput(
        latitude=msg.point.latitude,
        longitude=msg.point.longitude,
        has_point=msg.HasField("point"),
        accuracy_m=msg.accuracy_m,
        time=from_ts(msg, "time", f"{name}.time"),
        heading_deg=msg.heading_deg,
        speed_mps=msg.speed_mps,
        address=msg.address,
    )


def money(value: Money | None) -> common_pb2.Money | None:
    if value is None:
        return None
    return common_pb2.Money(currency_code=value.currency_code, units=value.units, nanos=value.nanos)


# Users ----------------------------------------------------------------------------


def user(u: User) -> users_pb2.User:
    return users_pb2.User(
        id=u.id,
        email=u.email,
        phone=u.phone,
        first_name=u.first_name,
        last_name=u.last_name,
        role=enum_to_pb(u.role),
        status=enum_to_pb(u.status),
        safety_score=u.safety_score,
        last_location=location(u.last_location),
        emergency_contacts=[
            users_pb2.EmergencyContact(name=c.name, phone=c.phone, email=c.email, relationship=c.relationship)
            for c in u.emergency_contacts
        ],
        create_time=ts(u.create_time),
        update_time=ts(u.update_time),
        last_active_time=ts(u.last_active_time),
        verification_status=enum_to_pb(u.verification_status),
        kyc_submitted=u.kyc_submitted,
        agency_id=u.agency_id or "",
    )


def emergency_contacts_from_pb(items: Any) -> list[EmergencyContact]:
    return [EmergencyContact(c.name, c.phone, c.email, c.relationship) for c in items]


def kyc(data: KycData) -> users_pb2.KycData:
    return users_pb2.KycData(**data.__dict__)


def kyc_from_pb(msg: users_pb2.KycData) -> KycData:
    return KycData(
        document_type=msg.document_type,
        document_number=msg.document_number,
        full_legal_name=msg.full_legal_name,
        date_of_birth=msg.date_of_birth,
        issuing_country=msg.issuing_country,
        address=msg.address,
    )


# Providers ------------------------------------------------------------------------


def provider(p: Provider) -> providers_pb2.Provider:
    ins = p.insurance
    return providers_pb2.Provider(
        id=p.id,
        user_id=p.user_id or "",
        company_name=p.company_name,
        business_type=enum_to_pb(p.business_type),
        license_number=p.license_number,
        insurance=providers_pb2.InsuranceInfo(
            insurer=ins.insurer,
            policy_number=ins.policy_number,
            coverage=money(ins.coverage),
            expire_time=ts(ins.expire_time),
        )
        if ins
        else None,
        service_area_geojson=json.dumps(p.service_area_geojson) if p.service_area_geojson else "",
        rating=p.rating,
        total_reviews=p.total_reviews,
        verification_status=enum_to_pb(p.verification_status),
        availability_schedule=[
            providers_pb2.AvailabilityWindow(day_of_week=w.day_of_week, start_time=w.start_time, end_time=w.end_time)
            for w in p.availability_schedule
        ],
        time_zone=p.time_zone,
        pricing=providers_pb2.Pricing(
            rates=[
                providers_pb2.ServiceRate(service_type=enum_to_pb(s), hourly_rate=money(m))
                for s, m in sorted(p.pricing.rates.items())
            ],
            minimum_hours=p.pricing.minimum_hours,
        ),
        base_location=lat_lng(p.base_location),
        tags=p.tags,
        description=p.description,
        on_duty=p.on_duty,
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
    )


def provider_draft(msg: providers_pb2.Provider) -> ProviderDraft:
    insurance = None
    coverage = None
    if msg.HasField("insurance"):
        i = msg.insurance
        insurance = Insurance(
            insurer=i.insurer,
            policy_number=i.policy_number,
            expire_time=from_ts(i, "expire_time", "provider.insurance.expire_time"),
        )
        if i.HasField("coverage"):
            coverage = (i.coverage.currency_code, i.coverage.units, i.coverage.nanos)
    return ProviderDraft(
        company_name=msg.company_name,
        business_type=enum_from_pb(enums.ProviderType, msg.business_type, "provider.business_type"),
        license_number=msg.license_number,
        insurance=insurance,
        coverage_input=coverage,
        service_area_geojson=msg.service_area_geojson,
        availability_schedule=[
            AvailabilityWindow(w.day_of_week, w.start_time, w.end_time) for w in msg.availability_schedule
        ],
        time_zone=msg.time_zone,
        pricing_input=[
            (
                enum_from_pb(enums.ServiceType, r.service_type, f"provider.pricing.rates[{i}].service_type"),
                r.hourly_rate.currency_code,
                r.hourly_rate.units,
                r.hourly_rate.nanos,
            )
            for i, r in enumerate(msg.pricing.rates)
        ],
        minimum_hours=msg.pricing.minimum_hours,
        base_location=Point(msg.base_location.latitude, msg.base_location.longitude)
        if msg.HasField("base_location")
        else None,
        tags=list(msg.tags),
        description=msg.description,
    )


# Bookings -------------------------------------------------------------------------


def booking(b: Booking) -> bookings_pb2.Booking:
    return bookings_pb2.Booking(
        id=b.id,
        user_id=b.user_id,
        provider_id=b.provider_id,
        service_type=enum_to_pb(b.service_type),
        start_time=ts(b.start_time),
        duration_hours=b.duration_hours,
        end_time=ts(b.end_time),
        location=location(b.location),
        special_instructions=b.special_instructions,
        status=enum_to_pb(b.status),
        total_price=money(b.total_price),
        payment_status=enum_to_pb(b.payment_status),
        rating=b.rating,
        review=b.review,
        cancel_reason=b.cancel_reason,
        create_time=ts(b.create_time),
        update_time=ts(b.update_time),
    )


def booking_request(msg: bookings_pb2.CreateBookingRequest) -> BookingRequest:
    return BookingRequest(
        provider_id=msg.provider_id,
        service_type=enum_from_pb(enums.ServiceType, msg.service_type, "service_type"),
        start_time=from_ts(msg, "start_time"),
        duration_hours=msg.duration_hours,
        location=location_input(msg.location) if msg.HasField("location") else None,
        special_instructions=msg.special_instructions,
    )
