"""Protobuf <-> domain conversions for SOS alerts, incidents, departments and
dispatch events."""

from __future__ import annotations

import json
from typing import overload

from google.protobuf import duration_pb2

from securenow.server.domain import enums
from securenow.server.domain.agency import ApiKeyInfo, ContactInfo, Department
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.sos import (
    ContactNotification,
    ContactNotificationStatus,
    PoliceIncident,
    RaiseRequest,
    SosAlert,
)
from securenow.server.storage.dispatch_streams import DispatchEvent
from securenow.server.transport.convert import (
    duration,
    enum_from_pb,
    enum_to_pb,
    location,
    location_input,
    register_enum,
    ts,
)
from securenow.v1 import agency_pb2, incidents_pb2, sos_pb2

register_enum(enums.AgencyType, agency_pb2.AgencyType, "AGENCY_TYPE")
register_enum(enums.DepartmentStatus, agency_pb2.DepartmentStatus, "DEPARTMENT_STATUS")
register_enum(ContactNotificationStatus, sos_pb2.ContactNotificationStatus, "CONTACT_NOTIFICATION_STATUS")


def alert(a: SosAlert) -> sos_pb2.SosAlert:
    return sos_pb2.SosAlert(
        id=a.id,
        user_id=a.user_id,
        location=location(a.location),
        description=a.description,
        status=enum_to_pb(a.status),
        priority=enum_to_pb(a.priority),
        incident_type=enum_to_pb(a.incident_type),
        assigned_agency_id=a.assigned_agency_id or "",
        response_time=duration(a.response_time),
        police_notified=a.police_notified,
        create_time=ts(a.create_time),
        resolve_time=ts(a.resolve_time),
        metadata=a.metadata,
        escalation_level=a.escalation_level,
        outside_jurisdiction=a.outside_jurisdiction,
        cancel_reason=a.cancel_reason,
        update_time=ts(a.update_time),
        emergency_contacts_notified=[contact_notification(c) for c in a.emergency_contacts_notified or []],
    )


def contact_notification(c: ContactNotification) -> sos_pb2.ContactNotification:
    return sos_pb2.ContactNotification(
        name=c.name, phone=c.phone, status=enum_to_pb(c.status), attempts=c.attempts, update_time=ts(c.time)
    )


@overload
def incident(i: PoliceIncident) -> incidents_pb2.PoliceIncident: ...
@overload
def incident(i: PoliceIncident | None) -> incidents_pb2.PoliceIncident | None: ...


def incident(i: PoliceIncident | None) -> incidents_pb2.PoliceIncident | None:
    if i is None:
        return None
    return incidents_pb2.PoliceIncident(
        id=i.id,
        sos_alert_id=i.sos_alert_id,
        police_department_id=i.police_department_id,
        incident_type=enum_to_pb(i.incident_type),
        priority=enum_to_pb(i.priority),
        status=enum_to_pb(i.status),
        assigned_unit=i.assigned_unit,
        estimated_arrival_minutes=i.estimated_arrival_minutes,
        actual_arrival_time=ts(i.actual_arrival_time),
        resolution_notes=i.resolution_notes,
        create_time=ts(i.create_time),
        update_time=ts(i.update_time),
    )


def raise_request(msg: sos_pb2.RaiseSosRequest) -> RaiseRequest:
    return RaiseRequest(
        location=location_input(msg.location) if msg.HasField("location") else None,
        description=msg.description,
        priority=enum_from_pb(enums.AlertPriority, msg.priority, "priority"),
        incident_type=enum_from_pb(enums.IncidentType, msg.incident_type, "incident_type"),
        metadata=dict(msg.metadata),
    )


def department(d: Department) -> agency_pb2.Department:
    timeout = duration_pb2.Duration()
    timeout.FromSeconds(d.ack_timeout_seconds)
    return agency_pb2.Department(
        id=d.id,
        department_name=d.department_name,
        agency_type=enum_to_pb(d.agency_type),
        jurisdiction_geojson=json.dumps(d.jurisdiction_geojson),
        contact_info=agency_pb2.ContactInfo(**d.contact_info.__dict__),
        webhook_url=d.webhook_url,
        status=enum_to_pb(d.status),
        provider_id=d.provider_id or "",
        ack_timeout=timeout,
        create_time=ts(d.create_time),
        update_time=ts(d.update_time),
    )


def contact_info(msg: agency_pb2.ContactInfo) -> ContactInfo:
    return ContactInfo(contact_name=msg.contact_name, phone=msg.phone, email=msg.email, address=msg.address)


def api_key(k: ApiKeyInfo) -> agency_pb2.ApiKey:
    return agency_pb2.ApiKey(
        key_id=k.id,
        department_id=k.department_id,
        display_prefix=k.display_prefix,
        create_time=ts(k.create_time),
        revoke_time=ts(k.revoke_time),
        label=k.label,
    )


def dispatch_event(ev: DispatchEvent) -> agency_pb2.StreamDispatchResponse:
    out = agency_pb2.StreamDispatchResponse(event_id=ev.event_id, event_time=ts(ev.time))
    p = ev.payload
    if ev.event_type == "alert_raised":
        inc = PoliceIncident.from_json(p["incident"]) if p.get("incident") else None
        out.alert_raised.CopyFrom(
            agency_pb2.AlertRaised(alert=alert(SosAlert.from_json(p["alert"])), incident=incident(inc))
        )
    elif ev.event_type == "alert_location":
        out.alert_location.CopyFrom(
            agency_pb2.AlertLocation(alert_id=p["alert_id"], location=location(LocationFix.from_json(p["location"])))
        )
    elif ev.event_type == "alert_cancelled":
        out.alert_cancelled.CopyFrom(agency_pb2.AlertCancelled(alert_id=p["alert_id"], reason=p.get("reason", "")))
    elif ev.event_type == "alert_escalated":
        out.alert_escalated.CopyFrom(
            agency_pb2.AlertEscalated(
                alert_id=p["alert_id"],
                priority=enum_to_pb(enums.AlertPriority(p["priority"])),
                reason=p.get("reason", ""),
            )
        )
    elif ev.event_type == "incident_updated":
        out.incident_updated.CopyFrom(
            agency_pb2.IncidentUpdated(incident=incident(PoliceIncident.from_json(p["incident"])))
        )
    return out
