"""App analytics events and the incident (response-time) report: their input rules."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from securenow.server.domain.geo import MAX_CLOCK_SKEW, LocationFix, LocationInput, validate_location
from securenow.server.domain.validation import Validator

EVENT_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,99}")
MAX_EVENTS_PER_CALL = 100
MAX_JSON_BYTES = 16 * 1024
MAX_SESSION_ID_LENGTH = 255
# Events older than this are refused: late uploads from an offline phone are fine, a
# backfill of history is not what this RPC is for (and every month needs a partition).
MAX_EVENT_AGE = timedelta(days=30)

MIN_REPORT_INTERVAL = timedelta(hours=1)
DEFAULT_REPORT_INTERVAL = timedelta(days=1)
MAX_REPORT_SPAN = timedelta(days=366)
MAX_REPORT_BUCKETS = 10_000
# Nothing SecureNow stores predates this; earlier bounds are client bugs (a zero date).
EARLIEST_REPORT_START = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class EventInput:
    """An event as received from a client, before validation."""

    event_type: str
    event_data: dict[str, Any] | None
    location: LocationInput | None
    event_time: datetime | None
    session_id: str
    device_info: dict[str, Any] | None


@dataclass(frozen=True)
class ValidEvent:
    event_type: str
    event_data: dict[str, Any]
    location: LocationFix | None
    event_time: datetime
    session_id: str | None
    device_info: dict[str, Any] | None


def _has_nul(value: Any) -> bool:
    """A NUL character in any key or string of a JSON document (protobuf's Struct nests
    at most 100 deep, well within Python's recursion limit)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(item) for k, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _json_document(v: Validator, name: str, value: dict[str, Any] | None) -> None:
    """PostgreSQL JSONB takes neither NaN/Infinity nor NUL characters; both are the
    caller's mistake, not a server error. The size is that of the compact JSON text in
    UTF-8, as stored (not with every non-ASCII character escaped as \\uXXXX)."""
    if value is None:
        return
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        v.add(name, "must not contain NaN or infinite numbers")
        return
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JSON_BYTES:
        v.add(name, f"must be at most {MAX_JSON_BYTES // 1024} KiB as JSON")
    if _has_nul(value):
        v.add(name, "must not contain NUL characters")


def validate_events(events: list[EventInput], now: datetime) -> list[ValidEvent]:
    v = Validator()
    if not 1 <= len(events) <= MAX_EVENTS_PER_CALL:
        v.add("events", f"must hold between 1 and {MAX_EVENTS_PER_CALL} events, not {len(events)}")
        v.check()
    out: list[ValidEvent] = []
    for index, event in enumerate(events):
        with v.nested(f"events[{index}]") as ev:
            if not event.event_type:
                ev.add("event_type", "is required")
            elif not EVENT_TYPE_RE.fullmatch(event.event_type):
                ev.add("event_type", "must be lower_snake_case: a-z, 0-9 and _, starting with a letter, at most 100")
            _json_document(ev, "event_data", event.event_data)
            _json_document(ev, "device_info", event.device_info)
            if len(event.session_id) > MAX_SESSION_ID_LENGTH:
                ev.add("session_id", f"must be at most {MAX_SESSION_ID_LENGTH} characters")
            else:
                ev.characters("session_id", event.session_id)
            time = event.event_time or now
            if time > now + MAX_CLOCK_SKEW:
                ev.add("event_time", f"must not be more than {MAX_CLOCK_SKEW.seconds // 60} minutes in the future")
            elif time < now - MAX_EVENT_AGE:
                ev.add("event_time", f"must be within the last {MAX_EVENT_AGE.days} days")
            fix = None
            if event.location is not None:
                # Events may be sent up to MAX_EVENT_AGE late, their fixes with them.
                fix = validate_location(ev, "location", event.location, now=now, max_age=MAX_EVENT_AGE)
                if event.location.time is None:
                    # A fix without its own time was taken with the event, not on arrival.
                    fix = replace(fix, time=time)
        out.append(
            ValidEvent(
                event_type=event.event_type,
                event_data=event.event_data or {},
                location=fix,
                event_time=time,
                session_id=event.session_id or None,
                device_info=event.device_info,
            )
        )
    v.check()
    return out


@dataclass(frozen=True)
class ReportWindow:
    """[start, end) cut into buckets of `interval` from `start` (the last one may be
    shorter)."""

    start: datetime
    end: datetime
    interval: timedelta

    @property
    def bucket_count(self) -> int:
        return math.ceil((self.end - self.start) / self.interval)


def validate_report_window(
    v: Validator, start: datetime | None, end: datetime | None, interval: timedelta | None
) -> ReportWindow | None:
    """The window (None when a bound is missing); the caller raises `v`'s violations."""
    if start is None:
        v.add("start_time", "is required")
    elif start < EARLIEST_REPORT_START:
        v.add("start_time", f"must be in {EARLIEST_REPORT_START.year} or later")
    if end is None:
        v.add("end_time", "is required")
    step = DEFAULT_REPORT_INTERVAL if interval is None else interval
    if step < MIN_REPORT_INTERVAL:
        v.add("interval", "must be at least one hour")
    elif step > MAX_REPORT_SPAN:
        v.add("interval", f"must be at most {MAX_REPORT_SPAN.days} days")
    if start is not None and end is not None:
        if end <= start:
            v.add("end_time", "must be after start_time")
        elif end - start > MAX_REPORT_SPAN:
            v.add("end_time", f"must be at most {MAX_REPORT_SPAN.days} days after start_time")
        elif step >= MIN_REPORT_INTERVAL and math.ceil((end - start) / step) > MAX_REPORT_BUCKETS:
            v.add("interval", f"makes more than {MAX_REPORT_BUCKETS} buckets; choose a longer one")
    if start is None or end is None:
        return None
    return ReportWindow(start, end, step)


@dataclass(frozen=True)
class ReportBucket:
    start_time: datetime
    alert_count: int
    accepted_count: int
    escalated_count: int
    cancelled_count: int
    median_response_time: timedelta | None
    p90_response_time: timedelta | None
