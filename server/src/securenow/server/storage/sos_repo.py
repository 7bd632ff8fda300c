"""SOS alerts, police incidents, location trails and jurisdiction routing (PostGIS)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from securenow.server.domain.accounts import Principal
from securenow.server.domain.enums import AgencyType, AlertPriority, IncidentStatus, IncidentType, SosStatus
from securenow.server.domain.geo import LocationFix, Point
from securenow.server.domain.paging import PageRequest, cursor_int, cursor_time
from securenow.server.domain.sos import ContactNotification, PoliceIncident, SosAlert
from securenow.server.storage.audit_repo import AuditEntry, audit_args
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.outbox_repo import OutboxRow
from securenow.server.storage.providers_repo import OFFERED_SQL
from securenow.server.storage.rows import Conn, geog_point, must, newest_first, sid

ALERT_COLUMNS = """a.id, a.user_id, a.location_data, a.description, a.status, a.priority, a.assigned_agency,
    a.response_time, a.police_notified, a.created_at, a.resolved_at, a.metadata, a.incident_type,
    a.escalation_level, a.outside_jurisdiction, a.escalate_at, a.passed_agencies, a.cancel_reason, a.updated_at,
    a.emergency_contacts_notified"""
INCIDENT_COLUMNS = """i.id, i.sos_alert_id, i.police_department_id, i.incident_type, i.priority, i.status,
    i.assigned_unit, i.estimated_arrival, i.actual_arrival, i.resolution_notes, i.created_at, i.updated_at"""


def alert_from_row(r: asyncpg.Record) -> SosAlert:
    return SosAlert(
        id=str(r["id"]),
        user_id=str(r["user_id"]),
        location=LocationFix.from_json(r["location_data"]),
        description=r["description"] or "",
        status=SosStatus(r["status"]),
        priority=AlertPriority(r["priority"]),
        incident_type=IncidentType(r["incident_type"]),
        assigned_agency_id=sid(r["assigned_agency"]),
        response_time=timedelta(seconds=r["response_time"]) if r["response_time"] is not None else None,
        police_notified=bool(r["police_notified"]),
        create_time=r["created_at"],
        resolve_time=r["resolved_at"],
        metadata=dict(r["metadata"] or {}),
        escalation_level=r["escalation_level"],
        outside_jurisdiction=r["outside_jurisdiction"],
        cancel_reason=r["cancel_reason"] or "",
        update_time=r["updated_at"],
        passed_agencies=[str(x) for x in r["passed_agencies"] or []],
        escalate_at=r["escalate_at"],
        emergency_contacts_notified=None
        if r["emergency_contacts_notified"] is None
        else [ContactNotification.from_json(c) for c in r["emergency_contacts_notified"]],
    )


_INCIDENT_TIMES = ("actual_arrival", "created_at", "updated_at")


def incident_from_row(r: asyncpg.Record | dict[str, Any]) -> PoliceIncident:
    return PoliceIncident(
        id=str(r["id"]),
        sos_alert_id=str(r["sos_alert_id"]),
        police_department_id=str(r["police_department_id"]),
        incident_type=IncidentType(r["incident_type"]),
        priority=AlertPriority(r["priority"]),
        status=IncidentStatus(r["status"]),
        assigned_unit=r["assigned_unit"] or "",
        estimated_arrival_minutes=r["estimated_arrival"] or 0,
        actual_arrival_time=r["actual_arrival"],
        resolution_notes=r["resolution_notes"] or "",
        create_time=r["created_at"],
        update_time=r["updated_at"],
    )


def _joined_incident(row: asyncpg.Record) -> PoliceIncident | None:
    """The incident of a row that carries it as `row_to_json(i) AS incident`."""
    inc = row["incident"]
    if inc is None:
        return None
    # row_to_json gives timestamps as ISO text; otherwise the columns of a row.
    times = {k: datetime.fromisoformat(inc[k]) if inc[k] else None for k in _INCIDENT_TIMES}
    return incident_from_row({**inc, **times})


@dataclass(frozen=True)
class AgencyChoice:
    department_id: str
    agency_type: AgencyType
    ack_timeout_seconds: int
    webhook_url: str


CHOICE_COLUMNS = "d.id, d.agency_type, d.ack_timeout_seconds, d.webhook_url"


def _agency_choice(r: asyncpg.Record) -> AgencyChoice:
    return AgencyChoice(str(r["id"]), AgencyType(r["agency_type"]), r["ack_timeout_seconds"], r["webhook_url"] or "")


def _choice(r: asyncpg.Record | None) -> AgencyChoice | None:
    return None if r is None else _agency_choice(r)


@dataclass(frozen=True)
class AlertPosition:
    """What a location flush needs of an alert: whose it is, who handles it, whether it
    is open, and the time of its current location (None without one)."""

    user_id: str
    agency_id: str | None
    status: SosStatus
    location_time: datetime | None


class SosRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    # Alerts -----------------------------------------------------------------------

    async def insert_raised(
        self,
        alert: SosAlert,
        incident: PoliceIncident | None,
        event: OutboxRow,
        actor: Principal,
        audit: AuditEntry,
        key: IdempotencyKey | None,
    ) -> bool:
        """A new alert, its incident (if routed), its outbox event, its audit entry and
        (with a location) the first fix of its trail in one atomic statement, which
        first claims the request id (if any): RaiseSos is the hottest write, and each
        round trip counts. False when the request id was already used (nothing written;
        a concurrent first attempt is waited for)."""
        fix = alert.location
        lng, lat = (fix.point.longitude, fix.point.latitude) if fix else (None, None)
        written = await self.conn.fetchval(
            f"""WITH k AS (
                    INSERT INTO idempotency_keys (principal_id, operation, request_id, request_hash, resource_id)
                    SELECT $19, 'RaiseSos', $25, $26, $1 WHERE $25::uuid IS NOT NULL
                    ON CONFLICT DO NOTHING RETURNING 1),
                go AS (SELECT 1 WHERE $25::uuid IS NULL OR EXISTS (SELECT 1 FROM k)),
                a AS (
                    INSERT INTO sos_alerts (id, user_id, location_data, location, description, priority, incident_type,
                        metadata, assigned_agency, outside_jurisdiction, escalate_at, created_at, updated_at)
                    SELECT $1, $2, $3, CASE WHEN $4::float8 IS NULL THEN NULL ELSE {geog_point("$4", "$5")} END,
                           $6, $7, $8, $9, $10, $11, $12, $13, $13
                    FROM go
                    RETURNING id),
                i AS (
                    INSERT INTO police_incidents (id, sos_alert_id, police_department_id, incident_type, priority,
                        created_at, updated_at)
                    SELECT $14, a.id, $10, $8, $7::text::incident_priority, $13, $13 FROM a WHERE $14::uuid IS NOT NULL
                    RETURNING id),
                o AS (
                    INSERT INTO outbox (topic, event_type, aggregate_id, department_id, payload)
                    SELECT $15, $16, a.id, $10, $17 FROM a
                    RETURNING id),
                t AS (
                    INSERT INTO sos_alert_locations (alert_id, recorded_at, latitude, longitude, accuracy_m,
                        heading_deg, speed_mps, address)
                    SELECT a.id, $27, $5, $4, $28, $29, $30, $31 FROM a WHERE $4::float8 IS NOT NULL
                    RETURNING 1)
                INSERT INTO audit_log (actor_type, actor_id, actor_role, action, resource_type, resource_id,
                                       outcome, details)
                SELECT $18, $19, $20, $21, $22, a.id::text, $23, $24 FROM a
                RETURNING 1""",
            alert.id,
            alert.user_id,
            fix.to_json() if fix else {},
            lng,
            lat,
            alert.description or None,
            alert.priority.value,
            alert.incident_type.value,
            alert.metadata,
            alert.assigned_agency_id,
            alert.outside_jurisdiction,
            alert.escalate_at,
            alert.create_time,
            incident.id if incident else None,
            event.topic,
            event.event_type,
            event.payload,
            *audit_args(actor, audit)[:5],
            audit.outcome,
            audit.details or {},
            key.request_id if key else None,
            key.fingerprint if key else None,
            # Where it was raised is the trail's first fix.
            fix.time if fix else None,
            fix.accuracy_m if fix else None,
            fix.heading_deg if fix else None,
            fix.speed_mps if fix else None,
            (fix.address or None) if fix else None,
        )
        return written is not None

    async def get_alert_with_incident(self, alert_id: str) -> tuple[SosAlert, PoliceIncident | None] | None:
        """One round trip for the alert and its incident (if any)."""
        row = await self.conn.fetchrow(
            f"""SELECT {ALERT_COLUMNS}, row_to_json(i) AS incident
                FROM sos_alerts a LEFT JOIN police_incidents i ON i.sos_alert_id = a.id WHERE a.id = $1""",
            alert_id,
        )
        if row is None:
            return None
        return alert_from_row(row), _joined_incident(row)

    async def incidents_with_alerts(self, incident_ids: list[str]) -> dict[str, tuple[PoliceIncident, SosAlert]]:
        """Incidents by id with their alerts, in one round trip (ids not found, or not
        visible under row-level security, are left out)."""
        rows = await self.conn.fetch(
            f"""SELECT {ALERT_COLUMNS}, row_to_json(i) AS incident
                FROM police_incidents i JOIN sos_alerts a ON a.id = i.sos_alert_id WHERE i.id = ANY($1::uuid[])""",
            incident_ids,
        )
        out = {}
        for row in rows:
            incident = _joined_incident(row)
            assert incident is not None
            out[incident.id] = (incident, alert_from_row(row))
        return out

    async def get_alert(self, alert_id: str, *, for_update: bool = False) -> SosAlert | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {ALERT_COLUMNS} FROM sos_alerts a WHERE a.id = $1{lock}", alert_id)
        return alert_from_row(row) if row else None

    async def save_alert(self, a: SosAlert) -> SosAlert:
        """Writes every mutable column of the alert; returns it as stored."""
        lng, lat = (a.location.point.longitude, a.location.point.latitude) if a.location else (None, None)
        row = await self.conn.fetchrow(
            f"""UPDATE sos_alerts a SET
                    status = $2, priority = $3, assigned_agency = $4, response_time = $5, police_notified = $6,
                    resolved_at = $7, escalation_level = $8, outside_jurisdiction = $9, escalate_at = $10,
                    passed_agencies = $11::uuid[], cancel_reason = $12, location_data = $13,
                    location = CASE WHEN $14::float8 IS NULL THEN NULL ELSE {geog_point("$14", "$15")} END,
                    updated_at = now()
                WHERE a.id = $1 RETURNING {ALERT_COLUMNS}""",
            a.id,
            a.status.value,
            a.priority.value,
            a.assigned_agency_id,
            int(a.response_time.total_seconds()) if a.response_time is not None else None,
            a.police_notified,
            a.resolve_time,
            a.escalation_level,
            a.outside_jurisdiction,
            a.escalate_at,
            a.passed_agencies,
            a.cancel_reason or None,
            a.location.to_json() if a.location else {},
            lng,
            lat,
        )
        return alert_from_row(must(row))

    async def list_alerts(
        self, page: PageRequest, *, user_id: str | None, agency_id: str | None, status: SosStatus | None
    ) -> tuple[list[SosAlert], list[Any] | None]:
        equal = {
            "a.user_id": user_id,
            "a.assigned_agency": agency_id,
            "a.status": None if status is None else status.value,
        }
        rows, cursor = await newest_first(self.conn, page, f"SELECT {ALERT_COLUMNS} FROM sos_alerts a", "a", equal)
        return [alert_from_row(r) for r in rows], cursor

    async def lock_due_escalations(self, limit: int) -> list[str]:
        """Ids of open alerts whose acknowledgement deadline passed, locked for this
        transaction; rows another replica is escalating are skipped."""
        rows = await self.conn.fetch(
            """SELECT id FROM sos_alerts WHERE escalate_at <= now() AND status = 'active'
               ORDER BY escalate_at LIMIT $1 FOR UPDATE SKIP LOCKED""",
            limit,
        )
        return [str(r["id"]) for r in rows]

    async def postpone_escalation(self, alert_id: str, seconds: float) -> None:
        """Moves an open alert's acknowledgement deadline `seconds` from now."""
        await self.conn.execute(
            """UPDATE sos_alerts SET escalate_at = now() + make_interval(secs => $2)
               WHERE id = $1 AND status = 'active'""",
            alert_id,
            seconds,
        )

    async def lock_unaccepted_of(self, department_id: str) -> list[str]:
        """Ids of alerts routed to the department and not accepted yet, locked for this
        transaction in id order (the order the location flush locks alerts in)."""
        rows = await self.conn.fetch(
            """SELECT id FROM sos_alerts WHERE assigned_agency = $1 AND status = 'active'
               ORDER BY id FOR UPDATE""",
            department_id,
        )
        return [str(r["id"]) for r in rows]

    # Incidents --------------------------------------------------------------------

    async def insert_incident(self, incident_id: str, alert: SosAlert, department_id: str) -> PoliceIncident:
        row = await self.conn.fetchrow(
            f"""INSERT INTO police_incidents AS i (id, sos_alert_id, police_department_id, incident_type, priority)
                VALUES ($1, $2, $3, $4, $5) RETURNING {INCIDENT_COLUMNS}""",
            incident_id,
            alert.id,
            department_id,
            alert.incident_type.value,
            alert.priority.value,
        )
        return incident_from_row(must(row))

    async def get_incident(self, incident_id: str, *, for_update: bool = False) -> PoliceIncident | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(
            f"SELECT {INCIDENT_COLUMNS} FROM police_incidents i WHERE i.id = $1{lock}", incident_id
        )
        return incident_from_row(row) if row else None

    async def incident_for_alert(self, alert_id: str, *, for_update: bool = False) -> PoliceIncident | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(
            f"SELECT {INCIDENT_COLUMNS} FROM police_incidents i WHERE i.sos_alert_id = $1{lock}", alert_id
        )
        return incident_from_row(row) if row else None

    async def save_incident(self, i: PoliceIncident) -> PoliceIncident:
        row = await self.conn.fetchrow(
            f"""UPDATE police_incidents i SET police_department_id = $2, priority = $3, status = $4,
                    assigned_unit = $5, estimated_arrival = $6, actual_arrival = $7, resolution_notes = $8,
                    updated_at = now()
                WHERE i.id = $1 RETURNING {INCIDENT_COLUMNS}""",
            i.id,
            i.police_department_id,
            i.priority.value,
            i.status.value,
            i.assigned_unit or None,
            i.estimated_arrival_minutes or None,
            i.actual_arrival_time,
            i.resolution_notes or None,
        )
        return incident_from_row(must(row))

    async def list_incidents(
        self, page: PageRequest, *, department_id: str | None, status: IncidentStatus | None
    ) -> tuple[list[PoliceIncident], list[Any] | None]:
        equal = {"i.police_department_id": department_id, "i.status": None if status is None else status.value}
        select = f"SELECT {INCIDENT_COLUMNS} FROM police_incidents i"
        rows, cursor = await newest_first(self.conn, page, select, "i", equal)
        return [incident_from_row(r) for r in rows], cursor

    # Location trail -----------------------------------------------------------------

    async def add_locations(self, fixes: list[tuple[str, LocationFix]]) -> None:
        await self.conn.copy_records_to_table(
            "sos_alert_locations",
            columns=[
                "alert_id",
                "recorded_at",
                "latitude",
                "longitude",
                "accuracy_m",
                "heading_deg",
                "speed_mps",
                "address",
            ],
            records=[
                (
                    uuid.UUID(alert_id),
                    f.time,
                    f.point.latitude,
                    f.point.longitude,
                    f.accuracy_m,
                    f.heading_deg,
                    f.speed_mps,
                    f.address or None,
                )
                for alert_id, f in fixes
            ],
        )

    async def set_latest_locations(self, latest: list[tuple[str, LocationFix]]) -> set[str]:
        """Moves each open alert's current location to its fix, unless the alert already
        has a newer one (fixes can arrive late: a phone's buffered fixes, another
        replica's batch). Returns the ids of the alerts it moved."""
        rows = await self.conn.fetchmany(
            f"""UPDATE sos_alerts SET location_data = $2, location = {geog_point("$3", "$4")}, updated_at = now()
                WHERE id = $1 AND status IN ('active', 'responding')
                  AND (location_data->>'time' IS NULL OR (location_data->>'time')::timestamptz <= $5)
                RETURNING id""",
            [(a, f.to_json(), f.point.longitude, f.point.latitude, f.time) for a, f in latest],
        )
        return {str(r["id"]) for r in rows}

    async def set_user_locations(self, latest: list[tuple[str, LocationFix]]) -> set[str]:
        """Moves each user's last known location to its fix, unless it already is a newer
        one. Returns the ids of the users it moved."""
        rows = await self.conn.fetchmany(
            f"""UPDATE users SET location_data = $2, location = {geog_point("$3", "$4")}
                WHERE id = $1
                  AND (location_data->>'time' IS NULL OR (location_data->>'time')::timestamptz <= $5)
                RETURNING id""",
            [(u, f.to_json(), f.point.longitude, f.point.latitude, f.time) for u, f in latest],
        )
        return {str(r["id"]) for r in rows}

    async def list_locations(self, alert_id: str, page: PageRequest) -> tuple[list[LocationFix], list[Any] | None]:
        """The trail in the order its fixes were taken (ties in arrival order), paged by
        the (recorded_at, id) keyset (idx_sos_alert_locations_time)."""
        after = page.keyset(cursor_time, cursor_int(0, 2**63 - 1))  # recorded_at, a bigserial id
        rows = await self.conn.fetch(
            f"""SELECT id, recorded_at, latitude AS lat, longitude AS lng, accuracy_m, heading_deg, speed_mps, address
                FROM sos_alert_locations WHERE alert_id = $1 {"AND (recorded_at, id) > ($3, $4)" if after else ""}
                ORDER BY recorded_at, id LIMIT $2""",
            alert_id,
            page.size + 1,
            *(after or ()),
        )
        fixes = [
            LocationFix(
                point=Point(r["lat"], r["lng"]),
                time=r["recorded_at"],
                accuracy_m=r["accuracy_m"] or 0.0,
                heading_deg=r["heading_deg"] or 0.0,
                speed_mps=r["speed_mps"] or 0.0,
                address=r["address"] or "",
            )
            for r in rows[: page.size]
        ]
        more = len(rows) > page.size
        last = rows[page.size - 1] if more else None
        return fixes, ([last["recorded_at"].isoformat(), last["id"]] if last else None)

    async def lock_for_locations(self, alert_ids: list[str]) -> dict[str, AlertPosition]:
        """Locks the alerts for a location flush (FOR NO KEY UPDATE, the lock the location
        UPDATE takes anyway, which waits for and holds off CancelSos's and the agency
        commands' FOR UPDATE) in id order, so concurrent flushes cannot deadlock; returns
        what each alert is as of the lock."""
        rows = await self.conn.fetch(
            """SELECT id, user_id, assigned_agency, status, (location_data->>'time')::timestamptz AS location_time
               FROM sos_alerts WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE""",
            alert_ids,
        )
        return {
            str(r["id"]): AlertPosition(
                str(r["user_id"]), sid(r["assigned_agency"]), SosStatus(r["status"]), r["location_time"]
            )
            for r in rows
        }

    # Routing ------------------------------------------------------------------------

    async def police_for_point(self, point: Point, passed: list[str]) -> AgencyChoice | None:
        """The most specific active police jurisdiction containing the point."""
        row = await self.conn.fetchrow(
            f"""SELECT {CHOICE_COLUMNS} FROM police_departments d
                WHERE d.status = 'active' AND d.agency_type = 'police_department'
                  AND ST_Covers(d.jurisdiction_geom, ST_SetSRID(ST_MakePoint($1, $2), 4326))
                  AND NOT (d.id = ANY($3::uuid[]))
                ORDER BY ST_Area(d.jurisdiction_geom), d.created_at LIMIT 1""",
            point.longitude,
            point.latitude,
            passed,
        )
        return _choice(row)

    async def any_police_covers(self, point: Point) -> bool:
        return bool(
            await self.conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM police_departments d
                   WHERE d.status = 'active' AND d.agency_type = 'police_department'
                     AND ST_Covers(d.jurisdiction_geom, ST_SetSRID(ST_MakePoint($1, $2), 4326)))""",
                point.longitude,
                point.latitude,
            )
        )

    async def agencies_of_providers(self, provider_ids: list[str], passed: list[str]) -> dict[str, AgencyChoice]:
        # Only providers offered now: a duty entry may outlive a rejection or the owner's
        # suspension (Redis was down then) until it goes stale.
        rows = await self.conn.fetch(
            f"""SELECT {CHOICE_COLUMNS}, d.provider_id FROM police_departments d
                JOIN providers p ON p.id = d.provider_id
                WHERE d.status = 'active' AND d.agency_type = 'security_agency' AND {OFFERED_SQL}
                  AND d.provider_id = ANY($1::uuid[]) AND NOT (d.id = ANY($2::uuid[]))""",
            provider_ids,
            passed,
        )
        return {str(r["provider_id"]): _agency_choice(r) for r in rows}

    async def nearest_security_agency(self, point: Point | None, passed: list[str]) -> AgencyChoice | None:
        """The active security agency whose service area is nearest the point (the oldest
        one when there is no point)."""
        args: list[Any]
        if point is None:
            order, args = "d.created_at", [passed]
        else:
            order = "ST_Distance(d.jurisdiction_geom::geography, ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography)"
            args = [passed, point.longitude, point.latitude]
        row = await self.conn.fetchrow(
            f"""SELECT {CHOICE_COLUMNS} FROM police_departments d
                WHERE d.status = 'active' AND d.agency_type = 'security_agency' AND NOT (d.id = ANY($1::uuid[]))
                ORDER BY {order}, d.id LIMIT 1""",
            *args,
        )
        return _choice(row)

    async def agency_choice(self, department_id: str) -> AgencyChoice | None:
        row = await self.conn.fetchrow(
            f"SELECT {CHOICE_COLUMNS} FROM police_departments d WHERE d.id = $1", department_id
        )
        return _choice(row)
