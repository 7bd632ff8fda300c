"""Protobuf <-> domain conversions of AnalyticsService."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from securenow.server.domain.analytics import EventInput, ReportBucket
from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import Point
from securenow.server.domain.safety_score import SafetyScore
from securenow.server.transport.convert import duration, from_ts, lat_lng, location_input, ts
from securenow.v1 import analytics_pb2, common_pb2


def _struct(msg: Message, field: str, name: str) -> dict[str, Any] | None:
    if not msg.HasField(field):
        return None
    value: struct_pb2.Struct = getattr(msg, field)
    try:
        out: dict[str, Any] = json_format.MessageToDict(value)
    except ValueError:  # NaN or infinite numbers have no JSON form
        raise InvalidArgument.field(name, "must not contain NaN or infinite numbers") from None
    return out


# The AnalyticsServicer's name for the one Timestamp reader (convert.from_ts).
timestamp = from_ts


def event_input(index: int, msg: analytics_pb2.AnalyticsEvent) -> EventInput:
    """The client's id and user_id are ignored: the server assigns both."""
    location = location_input(msg.location, f"events[{index}].location") if msg.HasField("location") else None
    return EventInput(
        event_type=msg.event_type,
        event_data=_struct(msg, "event_data", f"events[{index}].event_data"),
        location=location,
        event_time=from_ts(msg, "event_time", f"events[{index}].event_time"),
        session_id=msg.session_id,
        device_info=_struct(msg, "device_info", f"events[{index}].device_info"),
    )


def point(msg: Message, field: str) -> Point | None:
    if not msg.HasField(field):
        return None
    value: common_pb2.LatLng = getattr(msg, field)
    return Point(value.latitude, value.longitude)


def safety_score(s: SafetyScore) -> analytics_pb2.SafetyScore:
    return analytics_pb2.SafetyScore(
        id=s.id,
        location=lat_lng(s.centre),
        radius_m=s.radius_m,
        score=s.score,
        risk_factors=[
            analytics_pb2.RiskFactor(name=f.name, weight=f.weight, description=f.description) for f in s.risk_factors
        ],
        recommendations=list(s.recommendations),
        calculate_time=ts(s.calculate_time),
        valid_until_time=ts(s.valid_until),
    )


def report_bucket(b: ReportBucket) -> analytics_pb2.IncidentReportBucket:
    return analytics_pb2.IncidentReportBucket(
        start_time=ts(b.start_time),
        alert_count=b.alert_count,
        accepted_count=b.accepted_count,
        escalated_count=b.escalated_count,
        cancelled_count=b.cancelled_count,
        median_response_time=duration(b.median_response_time),
        p90_response_time=duration(b.p90_response_time),
    )
