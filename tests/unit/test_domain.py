"""Pure domain rules (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from securenow.server.domain.enums import AlertPriority, BookingStatus, IncidentStatus, PaymentStatus
from securenow.server.domain.errors import FailedPrecondition, InvalidArgument
from securenow.server.domain.geo import LocationInput, validate_area_geojson, validate_location
from securenow.server.domain.money import Money
from securenow.server.domain.paging import page_request
from securenow.server.domain.providers import AvailabilityWindow, within_schedule
from securenow.server.domain.sos import check_incident_step, raised_priority
from securenow.server.domain.validation import Validator
from securenow.server.security.encryption import DecryptionError, FieldEncryptor


def test_page_tokens_round_trip_and_are_bound_to_their_filters() -> None:
    first = page_request(10, "", filters=("users", "admin"))
    token = first.next_token(["2026-01-01T00:00:00+00:00", "abc"])
    again = page_request(10, token, filters=("users", "admin"))
    assert again.cursor == ["2026-01-01T00:00:00+00:00", "abc"]
    with pytest.raises(InvalidArgument) as other:
        page_request(10, token, filters=("users", "police"))
    assert other.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):
        page_request(10, "garbage!", filters=("users", "admin"))
    assert page_request(0, "", filters=()).size == 50
    assert page_request(10_000, "", filters=()).size == 500


def test_money_from_units_and_nanos_and_multiplication() -> None:
    rate = Money.from_units("USD", 12, 250_000_000)
    assert rate.amount == Decimal("12.25")
    total = rate.times(3)
    assert (total.units, total.nanos) == (36, 750_000_000)


def test_incident_moves_forward_one_step_at_a_time() -> None:
    assert check_incident_step(IncidentStatus.REPORTED, IncidentStatus.DISPATCHED)
    assert not check_incident_step(IncidentStatus.ON_SCENE, IncidentStatus.ON_SCENE)
    for current, target in [
        (IncidentStatus.REPORTED, IncidentStatus.ON_SCENE),
        (IncidentStatus.DISPATCHED, IncidentStatus.REPORTED),
        (IncidentStatus.RESOLVED, IncidentStatus.DISPATCHED),
    ]:
        with pytest.raises(FailedPrecondition):
            check_incident_step(current, target)


def test_priority_rises_and_stops_at_critical() -> None:
    assert raised_priority(AlertPriority.HIGH) is AlertPriority.CRITICAL
    assert raised_priority(AlertPriority.CRITICAL) is AlertPriority.CRITICAL
    assert raised_priority(AlertPriority.LOW) is AlertPriority.MEDIUM


def test_location_validation_names_each_field() -> None:
    v = Validator()
    validate_location(
        v,
        "location",
        LocationInput(
            latitude=91,
            longitude=-181,
            accuracy_m=-1,
            heading_deg=400,
            speed_mps=-2,
            time=datetime.now(UTC) + timedelta(hours=1),
        ),
    )
    fields = {x.field for x in v.violations}
    assert fields == {
        "location.point.latitude",
        "location.point.longitude",
        "location.accuracy_m",
        "location.heading_deg",
        "location.speed_mps",
        "location.time",
    }


def test_area_geojson_structure_is_checked() -> None:
    v = Validator()
    assert validate_area_geojson(
        v, "area", '{"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,0]]]}', required=True
    )
    assert (
        validate_area_geojson(v, "area", '{"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1]]]}', required=True)
        is None
    )
    assert validate_area_geojson(v, "area", "not json", required=True) is None
    assert len(v.violations) == 2


def test_field_encryption_is_bound_to_its_row() -> None:
    enc = FieldEncryptor([b"1" * 32])
    envelope = enc.encrypt({"document_number": "X123"}, bound_to="kyc:a")
    assert "X123" not in str(envelope)
    assert enc.decrypt(envelope, bound_to="kyc:a") == {"document_number": "X123"}
    with pytest.raises(DecryptionError):
        enc.decrypt(envelope, bound_to="kyc:b")
    rotated = FieldEncryptor([b"2" * 32, b"1" * 32])  # new key first, old one still decrypts
    assert rotated.decrypt(envelope, bound_to="kyc:a") == {"document_number": "X123"}
    with pytest.raises(DecryptionError):
        FieldEncryptor([b"2" * 32]).decrypt(envelope, bound_to="kyc:a")


def test_enums_cover_the_seed_labels() -> None:
    assert [s.value for s in BookingStatus] == ["pending", "confirmed", "in_progress", "completed", "cancelled"]
    assert [s.value for s in PaymentStatus] == ["pending", "paid", "refunded", "failed"]


def _at(text: str) -> datetime:
    """A wall-clock time in New York, as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("America/New_York"))


@pytest.mark.parametrize(
    ("start", "hours", "inside"),
    [
        ("2027-03-08T09:00", 8, True),  # Monday 09-17 exactly
        ("2027-03-08T16:00", 2, False),  # runs past 17:00
        ("2027-03-08T08:30", 1, False),  # starts before 09:00
        ("2027-03-12T22:00", 8, True),  # Friday 22:00 to Saturday 06:00 across midnight
        ("2027-03-12T22:00", 9, False),  # one hour past Saturday's window
        ("2027-03-14T00:00", 3, True),  # Sunday of the spring change: 3 hours end at 04:00
        ("2027-03-14T01:00", 3, False),  # ends at 05:00 by the clock, after the window
        ("2027-11-07T00:00", 4, True),  # Sunday of the autumn change: 4 hours end at 03:00
    ],
)
def test_bookings_are_inside_a_schedule_by_the_providers_clock(start: str, hours: int, inside: bool) -> None:
    windows = [AvailabilityWindow(d, "09:00", "17:00") for d in range(1, 6)] + [
        AvailabilityWindow(5, "20:00", "24:00"),
        AvailabilityWindow(6, "00:00", "06:00"),
        AvailabilityWindow(7, "00:00", "03:00"),
        AvailabilityWindow(7, "03:00", "04:00"),  # touching windows join up
    ]
    begin = _at(start).astimezone(UTC)
    assert within_schedule(windows, "America/New_York", begin, begin + timedelta(hours=hours)) is inside
