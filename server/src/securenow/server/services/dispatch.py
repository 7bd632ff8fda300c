"""Alert assignment and the incident lifecycle: routing, escalation, accept, decline,
incident updates. Every change writes its outbox events in the same transaction.

Row locks are always taken alert first, then its incident (as CancelSos does too), so
concurrent changes of one alert wait for each other instead of deadlocking."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg

from securenow.server.domain.accounts import Principal
from securenow.server.domain.enums import AgencyType, IncidentStatus, SosStatus
from securenow.server.domain.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from securenow.server.domain.paging import page_request
from securenow.server.domain.sos import PoliceIncident, SosAlert, ValidRaise, check_incident_step, raised_priority
from securenow.server.domain.validation import Validator, parse_uuid
from securenow.server.services import sos_events
from securenow.server.services.common import reads_of
from securenow.server.services.routing import Route, Router
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.postgres import Database, UnitOfWork, translate_unavailable

log = logging.getLogger(__name__)


def _connection_lost(exc: BaseException) -> bool:
    """The connection (not just one statement) failed: the transaction is gone."""
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CrashShutdownError
        | ConnectionError
        | OSError,
    )


def agency_of(principal: Principal) -> str:
    """The agency a caller acts for (API key or dispatcher account)."""
    if principal.agency_id is None:
        raise PermissionDenied("this account does not belong to an agency", reason="NO_AGENCY")
    return principal.agency_id


class DispatchService:
    def __init__(self, db: Database, router: Router, *, default_ack_timeout: timedelta) -> None:
        self._db = db
        self._router = router
        self._default_timeout = default_ack_timeout

    # Routing ----------------------------------------------------------------------

    async def open_alert(
        self, uow: UnitOfWork, caller: Principal, alert_id: str, raise_: ValidRaise, key: IdempotencyKey | None
    ) -> SosAlert | None:
        """Stores a new alert already routed, with its incident, dispatch event and audit
        entry, in one statement. Without a location fix it waits unassigned; the first
        shared fix routes it (or the sweeper, once the deadline passes). None when `key`
        was used before (nothing stored)."""
        route = Route(None, False)
        if raise_.location is not None:
            route = await self._router.choose(uow, raise_.location.point, [])
            if route.agency is None:
                log.warning("no agency can take the alert raised at %s", raise_.location.point)
        agency = route.agency
        now = datetime.now(UTC)
        timeout = timedelta(seconds=agency.ack_timeout_seconds) if agency else self._default_timeout
        alert = SosAlert(
            id=alert_id,
            user_id=caller.id,
            location=raise_.location,
            description=raise_.description,
            status=SosStatus.ACTIVE,
            priority=raise_.priority,
            incident_type=raise_.incident_type,
            assigned_agency_id=agency.department_id if agency else None,
            response_time=None,
            police_notified=False,
            create_time=now,
            resolve_time=None,
            metadata=raise_.metadata,
            escalation_level=0,
            outside_jurisdiction=route.outside_jurisdiction if raise_.location is not None else False,
            cancel_reason="",
            update_time=now,
            escalate_at=now + timeout,
        )
        incident = None
        if agency is not None:
            incident = PoliceIncident(
                id=str(uuid.uuid4()),
                sos_alert_id=alert_id,
                police_department_id=agency.department_id,
                incident_type=alert.incident_type,
                priority=alert.priority,
                status=IncidentStatus.REPORTED,
                assigned_unit="",
                estimated_arrival_minutes=0,
                actual_arrival_time=None,
                resolution_notes="",
                create_time=now,
                update_time=now,
            )
        audit = AuditEntry(
            "sos.raise",
            "sos_alert",
            alert_id,
            details={"agency": alert.assigned_agency_id, "has_fix": bool(alert.location)},
        )
        event = sos_events.alert_raised_row(alert, incident)
        if not await uow.sos.insert_raised(alert, incident, event, caller, audit, key):
            return None
        return alert

    async def assign(
        self,
        uow: UnitOfWork,
        alert: SosAlert,
        *,
        passed: list[str],
        reason: str,
        watch: str = "incident_updated",
        route: Route | None = None,
    ) -> tuple[SosAlert, PoliceIncident | None]:
        """Routes the alert (or re-routes it, skipping `passed` agencies). When every
        candidate has passed, the round starts over. Emits alert_raised to the new
        agency, and alert_escalated to the previous one when it changes hands; tells
        the person's WatchSos with `watch` ("escalated", "declined", "rerouted"; the default,
        "incident_updated", is the first routing of an alert raised without a fix:
        it now has an agency and an incident). `route`: one the caller already chose
        for this alert with these `passed` agencies, not chosen again."""
        point = alert.location.point if alert.location else None
        previous = alert.assigned_agency_id
        if route is None:
            route = await self._router.choose(uow, point, passed)
        if route.agency is None and passed:
            passed = []
            route = await self._router.choose(uow, point, passed)
        now = datetime.now(UTC)
        incident = await uow.sos.incident_for_alert(alert.id, for_update=True)
        if route.agency is None:
            # Nobody to send it to (no agency registered at all): keep trying.
            alert = await uow.sos.save_alert(
                replace(
                    alert,
                    assigned_agency_id=None,
                    outside_jurisdiction=True,
                    passed_agencies=passed,
                    escalate_at=now + self._default_timeout,
                )
            )
            log.warning("no agency can take alert %s", alert.id)
            await sos_events.watch(uow, alert.id, watch)
            return alert, incident
        agency = route.agency
        alert = await uow.sos.save_alert(
            replace(
                alert,
                assigned_agency_id=agency.department_id,
                outside_jurisdiction=route.outside_jurisdiction,
                passed_agencies=passed,
                escalate_at=now + timedelta(seconds=agency.ack_timeout_seconds),
            )
        )
        if incident is None:
            incident = await uow.sos.insert_incident(str(uuid.uuid4()), alert, agency.department_id)
        elif incident.police_department_id != agency.department_id or incident.priority != alert.priority:
            incident = await uow.sos.save_incident(
                replace(
                    incident,
                    police_department_id=agency.department_id,
                    priority=alert.priority,
                    status=IncidentStatus.REPORTED,
                    assigned_unit="",
                    estimated_arrival_minutes=0,
                )
            )
        if previous is not None and previous != agency.department_id:
            await sos_events.alert_escalated(uow, alert, previous, f"reassigned: {reason}")
        if previous == agency.department_id:
            await sos_events.alert_escalated(uow, alert, previous, reason)
        else:
            await sos_events.alert_raised(uow, alert, incident)
        await sos_events.watch(uow, alert.id, watch)
        return alert, incident

    async def escalate_due(self, limit: int = 20) -> int:
        """Escalates alerts whose acknowledgement deadline passed (any replica may run
        this; rows being escalated elsewhere are skipped). Returns how many.

        Each alert is escalated in its own savepoint: one whose escalation fails is
        rolled back alone, and put back by the default acknowledgement timeout so that
        it is retried later instead of heading every batch (it would otherwise stop
        every other due alert from escalating). A database that went away still fails
        the whole batch, retried by the sweeper."""
        escalated = 0
        async with self._db.unit_of_work() as uow:
            ids = await uow.sos.lock_due_escalations(limit)
            for alert_id in ids:
                try:
                    async with uow.conn.transaction():
                        alert = await uow.sos.get_alert(alert_id)
                        assert alert is not None
                        await self._escalate(uow, alert)
                except Exception as exc:
                    if _connection_lost(exc):
                        raise
                    if isinstance(exc, Unavailable) or translate_unavailable(exc) is not None:
                        # A deadlock, a lock or statement timeout: due again next sweep.
                        log.warning("escalation of alert %s deferred: %s", alert_id, type(exc).__name__)
                        continue
                    log.exception(
                        "escalation of alert %s failed; retried in %.0f s",
                        alert_id,
                        self._default_timeout.total_seconds(),
                    )
                    await self._postpone_escalation(uow, alert_id)
                    continue
                escalated += 1
        return escalated

    async def _postpone_escalation(self, uow: UnitOfWork, alert_id: str) -> None:
        """Moves a failed alert's deadline by the default timeout (in a savepoint of its
        own: if even that fails, the alert stays due and the others still go on)."""
        try:
            async with uow.conn.transaction():
                await uow.sos.postpone_escalation(alert_id, self._default_timeout.total_seconds())
        except Exception as exc:
            if _connection_lost(exc):
                raise
            log.exception("could not postpone the escalation of alert %s", alert_id)

    async def _escalate(self, uow: UnitOfWork, alert: SosAlert) -> None:
        previous = alert.assigned_agency_id
        passed = [*alert.passed_agencies, previous] if previous else list(alert.passed_agencies)
        waited = int((datetime.now(UTC) - alert.create_time).total_seconds())
        alert = replace(alert, priority=raised_priority(alert.priority), escalation_level=alert.escalation_level + 1)
        reason = f"not accepted after {waited} s"
        alert, _ = await self.assign(uow, alert, passed=passed, reason=reason, watch="escalated")
        await uow.audit.record(
            None,
            AuditEntry(
                "sos.escalate",
                "sos_alert",
                alert.id,
                details={"from": previous, "to": alert.assigned_agency_id, "priority": alert.priority},
            ),
        )

    async def route_on_first_fix(self, uow: UnitOfWork, alert: SosAlert) -> str | None:
        """Routes a (locked) alert that just got its first location: one nobody has yet,
        or one an escalation gave a security agency before anyone knew where it was,
        when a police jurisdiction covers the location and nobody accepted it yet.
        Returns the new agency, or None when it stays where it is."""
        if alert.assigned_agency_id is None:
            alert, _ = await self.assign(uow, alert, passed=[], reason="first location fix")
            return alert.assigned_agency_id
        if alert.status is not SosStatus.ACTIVE or not alert.outside_jurisdiction or alert.location is None:
            return None
        route = await self._router.choose(uow, alert.location.point, [])
        if route.agency is None or route.outside_jurisdiction or route.agency.department_id == alert.assigned_agency_id:
            return None
        alert, _ = await self.assign(
            uow,
            alert,
            passed=[],
            reason="first location fix: inside a police jurisdiction",
            watch="rerouted",
            route=route,
        )
        return alert.assigned_agency_id

    async def reroute_from(self, uow: UnitOfWork, department_id: str, reason: str) -> int:
        """Hands the alerts routed to a department that stopped taking alerts, and not
        accepted yet, to the next agency now (same priority). Returns how many."""
        ids = await uow.sos.lock_unaccepted_of(department_id)
        for alert_id in ids:
            alert = await uow.sos.get_alert(alert_id)
            assert alert is not None
            await self.assign(
                uow, alert, passed=[*alert.passed_agencies, department_id], reason=reason, watch="rerouted"
            )
            await uow.audit.record(
                None,
                AuditEntry("sos.reroute", "sos_alert", alert_id, details={"from": department_id, "reason": reason}),
            )
        return len(ids)

    # Agency commands ----------------------------------------------------------------

    async def _alert_of_agency(self, uow: UnitOfWork, principal: Principal, alert_id: str) -> SosAlert:
        agency = agency_of(principal)
        alert = await uow.sos.get_alert(alert_id, for_update=True)
        if alert is None or alert.assigned_agency_id != agency:
            raise NotFound("alert not found", reason="ALERT_NOT_FOUND")
        return alert

    async def accept(self, principal: Principal, alert_id: str, unit: str, eta_minutes: int) -> PoliceIncident:
        v = Validator()
        aid = v.uuid("alert_id", alert_id)
        unit = v.text("assigned_unit", unit, max_len=100)
        v.int_range("eta_minutes", eta_minutes, 0, 24 * 60)
        v.check()
        async with self._db.unit_of_work() as uow:
            alert = await self._alert_of_agency(uow, principal, aid)
            incident = await uow.sos.incident_for_alert(aid, for_update=True)
            assert incident is not None
            if alert.status is SosStatus.RESPONDING and incident.status is not IncidentStatus.REPORTED:
                return incident  # accepted already (a retried command)
            if alert.status is not SosStatus.ACTIVE:
                raise FailedPrecondition(f"the alert is {alert.status.value}", reason="ALERT_NOT_ACTIVE")
            now = datetime.now(UTC)
            choice = await uow.sos.agency_choice(agency_of(principal))
            alert = await uow.sos.save_alert(
                replace(
                    alert,
                    status=SosStatus.RESPONDING,
                    response_time=now - alert.create_time,
                    police_notified=alert.police_notified
                    or (choice is not None and choice.agency_type is AgencyType.POLICE_DEPARTMENT),
                    escalate_at=None,
                )
            )
            incident = await uow.sos.save_incident(
                replace(
                    incident,
                    status=IncidentStatus.DISPATCHED,
                    assigned_unit=unit or incident.assigned_unit,
                    estimated_arrival_minutes=eta_minutes,
                )
            )
            await uow.audit.record(
                principal, AuditEntry("sos.accept", "sos_alert", aid, details={"unit": unit, "eta": eta_minutes})
            )
            await sos_events.incident_updated(uow, incident)
            await sos_events.watch(uow, aid, "accepted")
        return incident

    async def decline(self, principal: Principal, alert_id: str, reason: str) -> None:
        v = Validator()
        aid = v.uuid("alert_id", alert_id)
        reason = v.text("reason", reason, max_len=500)
        v.check()
        async with self._db.unit_of_work() as uow:
            alert = await self._alert_of_agency(uow, principal, aid)
            if alert.status is not SosStatus.ACTIVE:
                raise FailedPrecondition(f"the alert is {alert.status.value}", reason="ALERT_NOT_ACTIVE")
            agency = agency_of(principal)
            await uow.audit.record(principal, AuditEntry("sos.decline", "sos_alert", aid, details={"reason": reason}))
            # If nobody else can take it, the round starts over and it comes back here.
            await self.assign(
                uow,
                alert,
                passed=[*alert.passed_agencies, agency],
                reason=f"declined: {reason or 'no reason'}",
                watch="declined",
            )

    async def update_incident(
        self,
        principal: Principal,
        incident_id: str,
        status: IncidentStatus | None,
        *,
        unit: str,
        notes: str,
        eta_minutes: int,
    ) -> PoliceIncident:
        v = Validator()
        iid = v.uuid("incident_id", incident_id)
        if status is None:
            v.add("status", "is required")
        unit = v.text("assigned_unit", unit, max_len=100)
        notes = v.text("notes", notes, max_len=4000)
        v.int_range("estimated_arrival_minutes", eta_minutes, 0, 24 * 60)
        v.check()
        assert status is not None
        agency = agency_of(principal)
        async with self._db.unit_of_work() as uow:
            # Lock order everywhere: the alert, then its incident (cancel, accept,
            # decline and escalation take them in that order; the reverse deadlocks).
            found = await uow.sos.get_incident(iid)
            if found is None or found.police_department_id != agency:
                raise NotFound("incident not found", reason="INCIDENT_NOT_FOUND")
            alert = await uow.sos.get_alert(found.sos_alert_id, for_update=True)
            assert alert is not None
            incident = await uow.sos.get_incident(iid, for_update=True)
            if incident is None or incident.police_department_id != agency:  # re-routed meanwhile
                raise NotFound("incident not found", reason="INCIDENT_NOT_FOUND")
            closed = FailedPrecondition(f"the alert is {alert.status.value}", reason="ALERT_CLOSED")
            if not alert.is_open and status is not incident.status:
                raise closed
            changes = check_incident_step(incident.status, status)
            now = datetime.now(UTC)
            updated = replace(
                incident,
                status=status,
                assigned_unit=unit or incident.assigned_unit,
                estimated_arrival_minutes=eta_minutes or incident.estimated_arrival_minutes,
                actual_arrival_time=now
                if changes and status is IncidentStatus.ON_SCENE
                else incident.actual_arrival_time,
                resolution_notes=notes if status is IncidentStatus.RESOLVED and notes else incident.resolution_notes,
            )
            if updated == incident:
                return incident  # nothing to change (a retried command)
            if not alert.is_open:
                raise closed  # a closed incident's unit and notes stay as they were closed
            incident = await uow.sos.save_incident(updated)
            event = "incident_updated"
            if changes and status is IncidentStatus.DISPATCHED:
                choice = await uow.sos.agency_choice(agency)
                alert = replace(
                    alert,
                    status=SosStatus.RESPONDING,
                    response_time=alert.response_time or now - alert.create_time,
                    police_notified=alert.police_notified
                    or (choice is not None and choice.agency_type is AgencyType.POLICE_DEPARTMENT),
                    escalate_at=None,
                )
                await uow.sos.save_alert(alert)
                event = "accepted"
            elif changes and status is IncidentStatus.RESOLVED:
                await uow.sos.save_alert(replace(alert, status=SosStatus.RESOLVED, resolve_time=now, escalate_at=None))
                event = "resolved"
            await uow.audit.record(
                principal, AuditEntry("incident.update", "police_incident", iid, details={"status": status})
            )
            await sos_events.incident_updated(uow, incident)
            await sos_events.watch(uow, incident.sos_alert_id, event)
        return incident

    async def get_incident(self, principal: Principal, incident_id: str) -> tuple[PoliceIncident, SosAlert]:
        iid = parse_uuid("incident_id", incident_id)
        async with reads_of(self._db, principal) as uow:
            incident = await uow.sos.get_incident(iid)
            if incident is None or not (principal.is_admin or incident.police_department_id == principal.agency_id):
                raise NotFound("incident not found", reason="INCIDENT_NOT_FOUND")
            alert = await uow.sos.get_alert(incident.sos_alert_id)
            assert alert is not None
            await uow.audit.record(principal, AuditEntry("incident.read", "police_incident", iid))
        return incident, alert

    async def list_incidents(
        self,
        principal: Principal,
        *,
        page_size: int,
        page_token: str,
        status: IncidentStatus | None,
        department_id: str,
    ) -> tuple[list[PoliceIncident], str]:
        v = Validator()
        named = v.uuid("department_id", department_id, required=False) or None
        v.check()
        if principal.is_admin:
            department = named
        else:
            department = agency_of(principal)
            if named is not None and named != department:
                raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
        page = page_request(page_size, page_token, filters=("incidents", department, status))
        async with reads_of(self._db, principal) as uow:
            items, cursor = await uow.sos.list_incidents(page, department_id=department, status=status)
            # Agencies and admins reading emergencies: audited, like sos.list and incident.read.
            details = {"status": status.value if status else None, "incident_ids": [i.id for i in items]}
            await uow.audit.record(principal, AuditEntry("incident.list", "police_incident", None, details=details))
        return items, page.next_token(cursor)
