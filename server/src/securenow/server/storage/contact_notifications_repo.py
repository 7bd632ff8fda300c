"""Emergency-contact notifications of SOS alerts: leased by any replica, recorded once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from securenow.server.domain.accounts import EmergencyContact
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.sos import ContactNotification
from securenow.server.storage.rows import Conn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingAlert:
    """An alert whose contacts have not been handled, with the person's contacts now."""

    alert_id: str
    create_time: datetime
    location: LocationFix | None
    first_name: str
    last_name: str
    contacts: list[EmergencyContact]
    expired: bool  # raised longer ago than the notification window


class ContactNotificationsRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def lease_pending(self, limit: int, lease_seconds: float, window_seconds: float) -> list[PendingAlert]:
        """Takes unhandled alerts, newest first (a backlog never delays a fresh alert),
        for `lease_seconds`: other replicas skip them meanwhile, and take them over when
        the lease runs out unrecorded (a replica that died)."""
        rows = await self.conn.fetch(
            """WITH due AS (
                   SELECT a.id FROM sos_alerts a
                   WHERE a.emergency_contacts_notified IS NULL
                     AND (a.contacts_notify_lease_until IS NULL OR a.contacts_notify_lease_until <= now())
                   ORDER BY a.created_at DESC LIMIT $1 FOR UPDATE OF a SKIP LOCKED)
               UPDATE sos_alerts a SET contacts_notify_lease_until = now() + make_interval(secs => $2)
               FROM due, users u
               WHERE a.id = due.id AND u.id = a.user_id
               RETURNING a.id, a.created_at, a.location_data, u.first_name, u.last_name, u.emergency_contacts,
                         a.created_at < now() - make_interval(secs => $3) AS expired""",
            limit,
            lease_seconds,
            window_seconds,
        )
        pending = []
        for r in rows:
            try:
                pending.append(
                    PendingAlert(
                        alert_id=str(r["id"]),
                        create_time=r["created_at"],
                        location=LocationFix.from_json(r["location_data"]),
                        first_name=r["first_name"] or "",
                        last_name=r["last_name"] or "",
                        contacts=[EmergencyContact(**c) for c in (r["emergency_contacts"] or [])],
                        expired=bool(r["expired"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                # One unreadable row must not undo every lease of the batch (nobody's
                # contacts would ever be told): it stays leased, and is tried again.
                log.exception("contact notifier: alert %s has unreadable data; skipped", r["id"])
        return pending

    async def release(self, alert_id: str) -> None:
        """Gives back the lease of an alert whose contacts were not all told (this
        replica is stopping): another replica takes it at its next pass."""
        await self.conn.execute(
            """UPDATE sos_alerts SET contacts_notify_lease_until = NULL
               WHERE id = $1 AND emergency_contacts_notified IS NULL""",
            alert_id,
        )

    async def record(self, outcomes: list[tuple[str, list[ContactNotification]]]) -> list[str]:
        """Stores the outcomes (alert id, one entry per contact) in one statement; returns
        the alerts stored now, leaving out any stored already (another replica took over
        after this one's lease ran out) or gone. An alert whose outcome lists contacts
        changed as its watchers see it (SosAlert.emergency_contacts_notified): its
        updated_at moves; an empty list (no contacts) shows the same as before."""
        rows = await self.conn.fetch(
            """UPDATE sos_alerts a
               SET emergency_contacts_notified = v.outcome::jsonb, contacts_notify_lease_until = NULL,
                   updated_at = CASE WHEN v.outcome::jsonb = '[]'::jsonb THEN a.updated_at ELSE now() END
               FROM unnest($1::uuid[], $2::text[]) AS v(id, outcome)
               WHERE a.id = v.id AND a.emergency_contacts_notified IS NULL RETURNING a.id""",
            [alert_id for alert_id, _ in outcomes],
            [json.dumps([c.to_json() for c in outcome]) for _, outcome in outcomes],
        )
        return [str(r["id"]) for r in rows]
