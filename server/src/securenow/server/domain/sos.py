"""SOS alerts, police incidents and their rules; JSON forms carried by dispatch events."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from securenow.server.domain.enums import AlertPriority, IncidentStatus, IncidentType, SosStatus
from securenow.server.domain.errors import FailedPrecondition
from securenow.server.domain.geo import LocationFix, LocationInput, validate_location
from securenow.server.domain.validation import Validator

MAX_METADATA_ENTRIES = 32
PRIORITY_ORDER = (AlertPriority.LOW, AlertPriority.MEDIUM, AlertPriority.HIGH, AlertPriority.CRITICAL)
INCIDENT_ORDER = (IncidentStatus.REPORTED, IncidentStatus.DISPATCHED, IncidentStatus.ON_SCENE, IncidentStatus.RESOLVED)
OPEN_STATUSES = (SosStatus.ACTIVE, SosStatus.RESPONDING)


class ContactNotificationStatus(StrEnum):
    """What became of telling one emergency contact about an alert."""

    SENT = "sent"  # the operator's gateway accepted it
    FAILED = "failed"  # every attempt failed
    NOT_CONFIGURED = "not_configured"  # no gateway configured: nobody was told
    EXPIRED = "expired"  # found more than the notification window after raising: not sent


@dataclass(frozen=True)
class ContactNotification:
    """One emergency contact, as snapshotted when the alert was handled, and the outcome."""

    name: str
    phone: str
    status: ContactNotificationStatus
    attempts: int
    time: datetime
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "phone": self.phone,
            "status": self.status.value,
            "attempts": self.attempts,
            "at": self.time.isoformat(),
        }
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContactNotification:
        return cls(
            name=d.get("name", ""),
            phone=d.get("phone", ""),
            status=ContactNotificationStatus(d["status"]),
            attempts=int(d.get("attempts", 0)),
            time=datetime.fromisoformat(d["at"]),
            error=d.get("error", ""),
        )


@dataclass
class SosAlert:
    id: str
    user_id: str
    location: LocationFix | None
    description: str
    status: SosStatus
    priority: AlertPriority
    incident_type: IncidentType
    assigned_agency_id: str | None
    response_time: timedelta | None
    police_notified: bool
    create_time: datetime
    resolve_time: datetime | None
    metadata: dict[str, str]
    escalation_level: int
    outside_jurisdiction: bool
    cancel_reason: str
    update_time: datetime
    passed_agencies: list[str] = field(default_factory=list)
    escalate_at: datetime | None = None
    # Emergency contacts told about it; None until the contact notifier handled it.
    # Not in to_json: contacts' phone numbers do not travel in dispatch events.
    emergency_contacts_notified: list[ContactNotification] | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The form carried in dispatch and watch events (no internal routing state)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "location": self.location.to_json() if self.location else None,
            "description": self.description,
            "status": self.status.value,
            "priority": self.priority.value,
            "incident_type": self.incident_type.value,
            "assigned_agency_id": self.assigned_agency_id,
            "response_time_s": self.response_time.total_seconds() if self.response_time is not None else None,
            "police_notified": self.police_notified,
            "create_time": self.create_time.isoformat(),
            "resolve_time": self.resolve_time.isoformat() if self.resolve_time else None,
            "metadata": self.metadata,
            "escalation_level": self.escalation_level,
            "outside_jurisdiction": self.outside_jurisdiction,
            "cancel_reason": self.cancel_reason,
            "update_time": self.update_time.isoformat(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SosAlert:
        return cls(
            id=d["id"],
            user_id=d["user_id"],
            location=LocationFix.from_json(d.get("location")),
            description=d.get("description", ""),
            status=SosStatus(d["status"]),
            priority=AlertPriority(d["priority"]),
            incident_type=IncidentType(d["incident_type"]),
            assigned_agency_id=d.get("assigned_agency_id"),
            response_time=timedelta(seconds=d["response_time_s"]) if d.get("response_time_s") is not None else None,
            police_notified=bool(d.get("police_notified")),
            create_time=datetime.fromisoformat(d["create_time"]),
            resolve_time=datetime.fromisoformat(d["resolve_time"]) if d.get("resolve_time") else None,
            metadata=dict(d.get("metadata") or {}),
            escalation_level=int(d.get("escalation_level", 0)),
            outside_jurisdiction=bool(d.get("outside_jurisdiction")),
            cancel_reason=d.get("cancel_reason", ""),
            update_time=datetime.fromisoformat(d["update_time"]),
        )


@dataclass
class PoliceIncident:
    id: str
    sos_alert_id: str
    police_department_id: str
    incident_type: IncidentType
    priority: AlertPriority
    status: IncidentStatus
    assigned_unit: str
    estimated_arrival_minutes: int
    actual_arrival_time: datetime | None
    resolution_notes: str
    create_time: datetime
    update_time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sos_alert_id": self.sos_alert_id,
            "police_department_id": self.police_department_id,
            "incident_type": self.incident_type.value,
            "priority": self.priority.value,
            "status": self.status.value,
            "assigned_unit": self.assigned_unit,
            "estimated_arrival_minutes": self.estimated_arrival_minutes,
            "actual_arrival_time": self.actual_arrival_time.isoformat() if self.actual_arrival_time else None,
            "resolution_notes": self.resolution_notes,
            "create_time": self.create_time.isoformat(),
            "update_time": self.update_time.isoformat(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoliceIncident:
        return cls(
            id=d["id"],
            sos_alert_id=d["sos_alert_id"],
            police_department_id=d["police_department_id"],
            incident_type=IncidentType(d["incident_type"]),
            priority=AlertPriority(d["priority"]),
            status=IncidentStatus(d["status"]),
            assigned_unit=d.get("assigned_unit", ""),
            estimated_arrival_minutes=int(d.get("estimated_arrival_minutes") or 0),
            actual_arrival_time=datetime.fromisoformat(d["actual_arrival_time"])
            if d.get("actual_arrival_time")
            else None,
            resolution_notes=d.get("resolution_notes", ""),
            create_time=datetime.fromisoformat(d["create_time"]),
            update_time=datetime.fromisoformat(d["update_time"]),
        )


@dataclass(frozen=True)
class RaiseRequest:
    location: LocationInput | None
    description: str
    priority: AlertPriority | None
    incident_type: IncidentType | None
    metadata: dict[str, str]


@dataclass(frozen=True)
class ValidRaise:
    location: LocationFix | None
    description: str
    priority: AlertPriority
    incident_type: IncidentType
    metadata: dict[str, str]


def validate_raise(req: RaiseRequest, *, now: datetime | None = None) -> ValidRaise:
    v = Validator()
    fix = validate_location(v, "location", req.location, now=now) if req.location is not None else None
    description = v.text("description", req.description, max_len=2000)
    if len(req.metadata) > MAX_METADATA_ENTRIES:
        v.add("metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in req.metadata.items():
        if not key or len(key) > 64:
            v.add("metadata", "keys must be 1..64 characters")
            break
        if not v.characters("metadata", key, single_line=True):
            break  # the key itself is unprintable: the violation names the map, not the key
        if len(value) > 512:
            v.add(f"metadata[{key}]", "must be at most 512 characters")
        else:
            v.characters(f"metadata[{key}]", value)
    v.check()
    return ValidRaise(
        location=fix,
        description=description,
        priority=req.priority or AlertPriority.HIGH,
        incident_type=req.incident_type or IncidentType.OTHER,
        metadata=dict(req.metadata),
    )


def raised_priority(priority: AlertPriority) -> AlertPriority:
    """One level up, CRITICAL stays CRITICAL."""
    i = PRIORITY_ORDER.index(priority)
    return PRIORITY_ORDER[min(i + 1, len(PRIORITY_ORDER) - 1)]


def check_incident_step(current: IncidentStatus, target: IncidentStatus) -> bool:
    """reported -> dispatched -> on_scene -> resolved, one step at a time. True when the
    incident must change, False when it already is in `target` (a retry)."""
    if current is target:
        return False
    if INCIDENT_ORDER.index(target) != INCIDENT_ORDER.index(current) + 1:
        raise FailedPrecondition(
            f"an incident that is {current.value} cannot become {target.value}", reason="INVALID_INCIDENT_TRANSITION"
        )
    return True


def responded(alert: SosAlert, now: datetime | None = None) -> SosAlert:
    now = now or datetime.now(UTC)
    return replace(alert, response_time=now - alert.create_time)
