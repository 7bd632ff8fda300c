"""Security providers: companies, pricing, verification and duty."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from functools import cache
from typing import Any

from securenow.server.domain.enums import ProviderType, ServiceType, VerificationStatus
from securenow.server.domain.geo import Point, validate_area_geojson
from securenow.server.domain.money import MAX_HOURLY_RATE, Money, validate_money
from securenow.server.domain.validation import Validator

HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
# A window may end at "24:00", the end of its day.
END_OF_DAY = "24:00"
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")
MAX_TAGS = 20
# Seven days of a few shifts each; a longer list is a mistake (or an attack on the
# validator and the JSONB column).
MAX_AVAILABILITY_WINDOWS = 50
# Fields of a provider its owner may change (UpdateProvider mask paths).
UPDATABLE_FIELDS = (
    "company_name",
    "license_number",
    "insurance",
    "service_area_geojson",
    "availability_schedule",
    "time_zone",
    "pricing",
    "base_location",
    "tags",
    "description",
)
# What an admin verified: changing any of it (the name customers trust included) sends
# a verified provider back to review.
REVIEWED_FIELDS = ("company_name", "license_number", "insurance", "business_type")


@dataclass(frozen=True)
class Insurance:
    insurer: str = ""
    policy_number: str = ""
    coverage: Money | None = None
    expire_time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "insurer": self.insurer,
            "policy_number": self.policy_number,
            "coverage": self.coverage.to_json() if self.coverage else None,
            "expire_time": self.expire_time.isoformat() if self.expire_time else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Insurance | None:
        if not d:
            return None
        return cls(
            insurer=d.get("insurer", ""),
            policy_number=d.get("policy_number", ""),
            coverage=Money.from_json(d["coverage"]) if d.get("coverage") else None,
            expire_time=datetime.fromisoformat(d["expire_time"]) if d.get("expire_time") else None,
        )


@dataclass(frozen=True)
class AvailabilityWindow:
    day_of_week: int
    start_time: str
    end_time: str

    def minutes(self) -> tuple[int, int]:
        """(start, end) in minutes after the day's midnight; "24:00" is 1440."""
        return _minute_of_day(self.start_time), _minute_of_day(self.end_time)


def _minute_of_day(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def valid_time_zone(name: str) -> bool:
    """An IANA time zone name this server knows ("America/New_York", "UTC")."""
    return name in _time_zones()


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def within_schedule(windows: list[AvailabilityWindow], time_zone: str, start: datetime, end: datetime) -> bool:
    """Whether [start, end) lies wholly inside the weekly windows, read as wall-clock
    times in `time_zone`. Windows of one day that touch or overlap join up, and a day's
    window to 24:00 joins the next day's from 00:00, so a shift across midnight is two
    windows. On the day clocks change, times are taken as the clock shows them."""
    zone = zoneinfo.ZoneInfo(time_zone)
    by_day: dict[int, list[tuple[int, int]]] = {}
    for w in windows:
        by_day.setdefault(w.day_of_week, []).append(w.minutes())
    moment = start
    while moment < end:
        local = moment.astimezone(zone)
        next_midnight = datetime.combine(local.date() + timedelta(days=1), time(), zone).astimezone(UTC)
        until = min(end, next_midnight)
        first = local.hour * 60 + local.minute
        last = 1440 if until == next_midnight else _local_minute(until, zone)
        if not _covered(sorted(by_day.get(local.isoweekday(), [])), first, max(last, first + 1)):
            return False
        moment = until
    return True


def _local_minute(moment: datetime, zone: zoneinfo.ZoneInfo) -> int:
    local = moment.astimezone(zone)
    return local.hour * 60 + local.minute + (1 if local.second or local.microsecond else 0)


def _covered(intervals: list[tuple[int, int]], first: int, last: int) -> bool:
    """Whether sorted [start, end) intervals cover [first, last) without a gap."""
    reach = first
    for lo, hi in intervals:
        if lo > reach:
            break
        reach = max(reach, hi)
        if reach >= last:
            return True
    return reach >= last


@dataclass(frozen=True)
class Pricing:
    rates: dict[ServiceType, Money] = field(default_factory=dict)
    minimum_hours: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"rates": {s.value: m.to_json() for s, m in self.rates.items()}, "minimum_hours": self.minimum_hours}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Pricing:
        if not d:
            return cls()
        return cls(
            rates={ServiceType(k): Money.from_json(v) for k, v in d.get("rates", {}).items()},
            minimum_hours=int(d.get("minimum_hours", 1)),
        )


@dataclass
class Provider:
    id: str
    user_id: str | None
    company_name: str
    business_type: ProviderType
    license_number: str
    insurance: Insurance | None
    service_area_geojson: dict[str, Any] | None
    rating: float
    total_reviews: int
    verification_status: VerificationStatus
    availability_schedule: list[AvailabilityWindow]
    pricing: Pricing
    base_location: Point | None
    tags: list[str]
    description: str
    create_time: datetime
    update_time: datetime
    time_zone: str = ""  # of the availability schedule; "" when none was given
    on_duty: bool = False
    # False while the owning account is suspended or deleted: the company is then not
    # offered to anyone (not found, listed, searched or bookable) until it is reinstated.
    owner_active: bool = True

    @property
    def verified(self) -> bool:
        return self.verification_status is VerificationStatus.VERIFIED

    @property
    def offered(self) -> bool:
        """Shown to and bookable by the public: verified, and its owner's account active."""
        return self.verified and self.owner_active


@dataclass
class ProviderDraft:
    """Client input for create/update, before validation; None means "not given"."""

    company_name: str = ""
    business_type: ProviderType | None = None
    license_number: str = ""
    insurance: Insurance | None = None  # its coverage comes from coverage_input
    coverage_input: tuple[str, int, int] | None = None  # (currency_code, units, nanos)
    service_area_geojson: str = ""
    availability_schedule: list[AvailabilityWindow] = field(default_factory=list)
    time_zone: str = ""
    pricing_input: list[tuple[ServiceType | None, str, int, int]] = field(default_factory=list)
    minimum_hours: int = 0
    base_location: Point | None = None
    tags: list[str] = field(default_factory=list)
    description: str = ""


@dataclass(frozen=True)
class ValidProvider:
    company_name: str
    business_type: ProviderType
    license_number: str
    insurance: Insurance | None
    service_area: dict[str, Any] | None
    availability_schedule: list[AvailabilityWindow]
    time_zone: str
    pricing: Pricing
    base_location: Point | None
    tags: list[str]
    description: str


def validate_provider(
    draft: ProviderDraft, *, prefix: str = "provider", paths: tuple[str, ...] | None = None
) -> ValidProvider:
    """Validates the fields named by `paths` (all for create)."""
    v = Validator()
    want = set(paths) if paths is not None else set(UPDATABLE_FIELDS) | {"business_type"}
    with v.nested(prefix) as p:
        company = p.text(
            "company_name", draft.company_name, required="company_name" in want, max_len=255, single_line=True
        )
        if "business_type" in want and draft.business_type is None:
            p.add("business_type", "is required")
        license_number = p.text("license_number", draft.license_number, max_len=100, single_line=True)
        insurance = draft.insurance
        if "insurance" in want and insurance is not None:
            with p.nested("insurance") as iv:
                insurance = replace(
                    insurance,
                    insurer=iv.text("insurer", insurance.insurer, max_len=200, single_line=True),
                    policy_number=iv.text("policy_number", insurance.policy_number, max_len=100, single_line=True),
                )
                if draft.coverage_input is not None:
                    coverage = validate_money(iv, "coverage", *draft.coverage_input, positive=True)
                    insurance = replace(insurance, coverage=coverage)
        area = validate_area_geojson(p, "service_area_geojson", draft.service_area_geojson, required=False)
        schedule = []
        if len(draft.availability_schedule) > MAX_AVAILABILITY_WINDOWS:
            p.add("availability_schedule", f"at most {MAX_AVAILABILITY_WINDOWS} windows")
        else:
            for i, w in enumerate(draft.availability_schedule):
                with p.nested(f"availability_schedule[{i}]") as wv:
                    wv.int_range("day_of_week", w.day_of_week, 1, 7)
                    if not HHMM_RE.fullmatch(w.start_time):
                        wv.add("start_time", "must be HH:MM")
                    if not (HHMM_RE.fullmatch(w.end_time) or w.end_time == END_OF_DAY):
                        wv.add("end_time", "must be HH:MM (24:00 for the end of the day)")
                    elif HHMM_RE.fullmatch(w.start_time) and w.end_time <= w.start_time:
                        wv.add("end_time", "must be after start_time")
                schedule.append(w)
        time_zone = draft.time_zone.strip() if "time_zone" in want else ""
        if time_zone and not valid_time_zone(time_zone):
            p.add("time_zone", "must be an IANA time zone name such as America/New_York")
        pricing = _validate_pricing(p, draft) if "pricing" in want else Pricing()
        if draft.base_location is not None:
            p.lat_lng("base_location", draft.base_location.latitude, draft.base_location.longitude)
        tags = sorted({t.strip().lower() for t in draft.tags if t.strip()})
        if len(tags) > MAX_TAGS:
            p.add("tags", f"at most {MAX_TAGS} tags")
        for t in tags:
            if not TAG_RE.fullmatch(t):
                p.add("tags", f"tag {t!r} must be lower-case letters, digits, '-' or '_' (at most 32)")
                break
        description = p.text("description", draft.description, max_len=4000)
    v.check()
    return ValidProvider(
        company_name=company,
        business_type=draft.business_type or ProviderType.SECURITY_GUARD,
        license_number=license_number,
        insurance=insurance,
        service_area=area,
        availability_schedule=schedule,
        time_zone=time_zone,
        pricing=pricing,
        base_location=draft.base_location,
        tags=tags,
        description=description,
    )


def _validate_pricing(p: Validator, draft: ProviderDraft) -> Pricing:
    rates: dict[ServiceType, Money] = {}
    currencies = set()
    with p.nested("pricing") as pv:
        if len(draft.pricing_input) > len(ServiceType):
            pv.add("rates", f"at most one rate per service type ({len(ServiceType)})")
            return Pricing()
        for i, (service, currency, units, nanos) in enumerate(draft.pricing_input):
            with pv.nested(f"rates[{i}]") as rv:
                if service is None:
                    rv.add("service_type", "is required")
                    continue
                if service in rates:
                    rv.add("service_type", "is listed twice")
                money = validate_money(rv, "hourly_rate", currency, units, nanos, positive=True)
                if money.amount > MAX_HOURLY_RATE:
                    rv.add("hourly_rate", f"must be at most {MAX_HOURLY_RATE}")
                rates[service] = money
                currencies.add(money.currency_code)
        if len(currencies) > 1:
            pv.add("rates", "must all use one currency")
        minimum = draft.minimum_hours or 1
        pv.int_range("minimum_hours", minimum, 1, 24)
    return Pricing(rates=rates, minimum_hours=minimum)


def reviewed_changes(current: Provider, new: ValidProvider, paths: tuple[str, ...]) -> list[str]:
    """The reviewed fields among `paths` whose value really changes (setting the same
    values again, as a read-modify-write client does, changes nothing an admin checked)."""
    before: dict[str, Any] = {
        "company_name": current.company_name,
        "license_number": current.license_number,
        "insurance": current.insurance,
        "business_type": current.business_type,
    }
    after: dict[str, Any] = {
        "company_name": new.company_name,
        "license_number": new.license_number,
        "insurance": new.insurance,
        "business_type": new.business_type,
    }
    return [f for f in REVIEWED_FIELDS if f in paths and before[f] != after[f]]


def with_on_duty(provider: Provider, on_duty: bool) -> Provider:
    return replace(provider, on_duty=on_duty)
