"""The events an alert produces, written to the outbox in the caller's transaction.

Dispatch events (department_id set) go to that department's stream; their types are
the StreamDispatchResponse kinds. Watch events (topic sos:alert) tell WatchSos
subscribers that an alert changed. sos:emergency is the seed's Pub/Sub channel.
"""

from __future__ import annotations

from typing import Any

from securenow.server.domain.geo import LocationFix
from securenow.server.domain.sos import PoliceIncident, SosAlert
from securenow.server.storage.outbox_repo import OutboxRow
from securenow.server.storage.postgres import UnitOfWork

TOPIC_DISPATCH = "dispatch"
TOPIC_EMERGENCY = "sos:emergency"
TOPIC_WATCH = "sos:alert"


def alert_raised_row(alert: SosAlert, incident: PoliceIncident | None) -> OutboxRow:
    """To the assigned department (if any) and the sos:emergency channel, as one event."""
    return OutboxRow(
        TOPIC_EMERGENCY,
        "alert_raised",
        {"alert": alert.to_json(), "incident": incident.to_json() if incident else None},
        aggregate_id=alert.id,
        department_id=alert.assigned_agency_id,
    )


async def alert_raised(uow: UnitOfWork, alert: SosAlert, incident: PoliceIncident | None) -> None:
    await uow.outbox.add_row(alert_raised_row(alert, incident))


async def alert_location(
    uow: UnitOfWork, alert_id: str, user_id: str, department_id: str | None, fix: LocationFix
) -> None:
    """The alert's current location moved to `fix`. The watch event carries the person
    and the position too: the outbox relay keeps `sos:active:{alert_id}` with them."""
    if department_id is not None:
        await uow.outbox.add(
            TOPIC_DISPATCH,
            "alert_location",
            {"alert_id": alert_id, "location": fix.to_json()},
            aggregate_id=alert_id,
            department_id=department_id,
        )
    position = {"lat": fix.point.latitude, "lng": fix.point.longitude, "time": fix.time.isoformat()}
    await watch(uow, alert_id, "location", user_id=user_id, location=position)


async def alert_cancelled(uow: UnitOfWork, alert: SosAlert, reason: str) -> None:
    if alert.assigned_agency_id is not None:
        await uow.outbox.add(
            TOPIC_DISPATCH,
            "alert_cancelled",
            {"alert_id": alert.id, "reason": reason},
            aggregate_id=alert.id,
            department_id=alert.assigned_agency_id,
        )
    await watch(uow, alert.id, "cancelled")


async def alert_escalated(uow: UnitOfWork, alert: SosAlert, department_id: str, reason: str) -> None:
    await uow.outbox.add(
        TOPIC_DISPATCH,
        "alert_escalated",
        {"alert_id": alert.id, "priority": alert.priority.value, "reason": reason},
        aggregate_id=alert.id,
        department_id=department_id,
    )


async def incident_updated(uow: UnitOfWork, incident: PoliceIncident) -> None:
    await uow.outbox.add(
        TOPIC_DISPATCH,
        "incident_updated",
        {"incident": incident.to_json()},
        aggregate_id=incident.sos_alert_id,
        department_id=incident.police_department_id,
    )


async def watch(uow: UnitOfWork, alert_id: str, event: str, **details: Any) -> None:
    """Payload {alert_id, event, **details}: readers need only `event`; extra keys may
    come (a "location" event has user_id and location {lat, lng, time})."""
    payload = {**details, "alert_id": alert_id, "event": event}
    await uow.outbox.add(TOPIC_WATCH, event, payload, aggregate_id=alert_id)
