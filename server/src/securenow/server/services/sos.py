"""SOS for the person in danger: raise, watch, cancel, read the trail."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.enums import IncidentStatus, SosStatus
from securenow.server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.paging import page_request
from securenow.server.domain.sos import PoliceIncident, RaiseRequest, SosAlert, validate_raise
from securenow.server.domain.validation import Validator, parse_uuid
from securenow.server.services import sos_events
from securenow.server.services.common import reads_of, same_request
from securenow.server.services.dispatch import DispatchService
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database, UnitOfWork

log = logging.getLogger(__name__)


def can_read(principal: Principal, alert: SosAlert) -> bool:
    return (
        principal.is_admin
        or alert.user_id == principal.user_id
        or (principal.agency_id is not None and alert.assigned_agency_id == principal.agency_id)
    )


class SosService:
    def __init__(self, db: Database, live: LiveState, dispatch: DispatchService) -> None:
        self._db = db
        self._live = live
        self._dispatch = dispatch

    async def _readable(self, uow: UnitOfWork, principal: Principal, alert_id: str) -> SosAlert:
        alert = await uow.sos.get_alert(alert_id)
        if alert is None or not can_read(principal, alert):
            raise NotFound("alert not found", reason="ALERT_NOT_FOUND")
        return alert

    async def raise_sos(self, caller: Principal, req: RaiseRequest, key: IdempotencyKey | None) -> SosAlert:
        """Commits the alert and its dispatch event together; OK means it is durable."""
        try:
            valid = validate_raise(req)
        except InvalidArgument:
            # A late retry of a raise that succeeded (its fix has aged past the limit
            # since) answers with that alert, as any retry does.
            if key is not None:
                async with self._db.reader() as uow:
                    prior = await uow.idempotency.find(caller.id, "RaiseSos", key)
                    if prior is not None:
                        return await self._readable(uow, caller, same_request(prior, key))
            raise
        assert caller.user_id is not None
        new_id = str(uuid.uuid4())
        # No explicit transaction: a routing read, then one atomic statement.
        async with self._db.reader() as uow:
            alert = await self._dispatch.open_alert(uow, caller, new_id, valid, key)
            if alert is None:
                assert key is not None
                prior = await uow.idempotency.prior(caller.id, "RaiseSos", key)
                return await self._readable(uow, caller, same_request(prior, key))
        return alert

    async def get(self, principal: Principal, alert_id: str) -> tuple[SosAlert, PoliceIncident | None]:
        aid = parse_uuid("alert_id", alert_id)
        async with reads_of(self._db, principal) as uow:
            found = await uow.sos.get_alert_with_incident(aid)
            if found is None or not can_read(principal, found[0]):
                raise NotFound("alert not found", reason="ALERT_NOT_FOUND")
            alert, incident = found
            await _audit_other_party(uow, principal, alert, "sos.read")
        return alert, incident

    async def list_alerts(
        self, principal: Principal, *, page_size: int, page_token: str, status: SosStatus | None
    ) -> tuple[list[SosAlert], str]:
        if principal.is_admin:
            user_id, agency_id = None, None
        elif (principal.agency_id is not None and principal.kind is PrincipalKind.API_KEY) or (
            principal.agency_id is not None and principal.user_id is not None
        ):
            user_id, agency_id = None, principal.agency_id
        else:
            user_id, agency_id = principal.user_id, None
        page = page_request(page_size, page_token, filters=("alerts", user_id, agency_id, status))
        async with reads_of(self._db, principal) as uow:
            alerts, cursor = await uow.sos.list_alerts(page, user_id=user_id, agency_id=agency_id, status=status)
            if user_id is None:
                # An agency or an admin looking through people's emergencies: audited.
                details = {"status": status.value if status else None, "alert_ids": [a.id for a in alerts]}
                await uow.audit.record(principal, AuditEntry("sos.list", "sos_alert", None, details=details))
        return alerts, page.next_token(cursor)

    async def cancel(self, principal: Principal, alert_id: str, reason: str) -> SosAlert:
        v = Validator()
        aid = v.uuid("alert_id", alert_id)
        reason = v.text("reason", reason, max_len=500)
        v.check()
        async with self._db.unit_of_work() as uow:
            alert = await uow.sos.get_alert(aid, for_update=True)
            if alert is None or alert.user_id != principal.user_id:
                raise NotFound("alert not found", reason="ALERT_NOT_FOUND")
            if alert.status is SosStatus.CANCELLED:
                return alert
            if not alert.is_open:
                raise FailedPrecondition(f"the alert is already {alert.status.value}", reason="ALERT_CLOSED")
            now = datetime.now(UTC)
            alert = await uow.sos.save_alert(
                replace(alert, status=SosStatus.CANCELLED, resolve_time=now, escalate_at=None, cancel_reason=reason)
            )
            incident = await uow.sos.incident_for_alert(aid, for_update=True)
            if incident is not None and incident.status is not IncidentStatus.RESOLVED:
                await uow.sos.save_incident(
                    replace(
                        incident,
                        status=IncidentStatus.RESOLVED,
                        resolution_notes=f"cancelled by the person: {reason}" if reason else "cancelled by the person",
                    )
                )
            await uow.audit.record(principal, AuditEntry("sos.cancel", "sos_alert", aid, details={"reason": reason}))
            await sos_events.alert_cancelled(uow, alert, reason)
        return alert

    async def check_sharing(self, principal: Principal, alert_id: str) -> str:
        """ShareLocation: the caller must own the alert, and it must be open."""
        aid = parse_uuid("alert_id", alert_id)
        async with self._db.unit_of_work() as uow:
            alert = await uow.sos.get_alert(aid)
        if alert is None or alert.user_id != principal.user_id:
            raise NotFound("alert not found", reason="ALERT_NOT_FOUND")
        if not alert.is_open:
            raise FailedPrecondition(f"the alert is {alert.status.value}", reason="ALERT_CLOSED")
        return aid

    async def record_sharing(self, principal: Principal, alert_ids: set[str], accepted: int) -> None:
        """One audit entry per ShareLocation stream (not per fix): who shared, for which alerts."""
        async with self._db.reader() as uow:
            await uow.audit.record(
                principal,
                AuditEntry(
                    "sos.share_location",
                    "user",
                    principal.user_id,
                    details={"alert_ids": sorted(alert_ids), "accepted": accepted},
                ),
            )

    async def watch_snapshot(
        self, principal: Principal, alert_id: str, *, opening: bool = False
    ) -> tuple[SosAlert, PoliceIncident | None]:
        """The alert as a watcher sees it now; `opening` for the stream's first snapshot
        (watching someone else's emergency is audited once per stream)."""
        async with reads_of(self._db, principal) as uow:
            found = await uow.sos.get_alert_with_incident(alert_id)
            if found is None or not can_read(principal, found[0]):
                raise NotFound("alert not found", reason="ALERT_NOT_FOUND")
            if opening:
                await _audit_other_party(uow, principal, found[0], "sos.watch")
        return found

    async def list_locations(
        self, principal: Principal, alert_id: str, page_size: int, page_token: str
    ) -> tuple[list[LocationFix], str]:
        aid = parse_uuid("alert_id", alert_id)
        page = page_request(page_size, page_token, filters=("locations", aid), default=500, maximum=5000)
        async with reads_of(self._db, principal) as uow:
            alert = await self._readable(uow, principal, aid)
            fixes, cursor = await uow.sos.list_locations(aid, page)
            await _audit_other_party(uow, principal, alert, "sos.trail_read")
        return fixes, page.next_token(cursor)

    async def route_on_first_fix(self, alert_id: str) -> None:
        """Called when an alert got its first location fix: routed before it had one (not
        at all, or escalated to a security agency), it goes where its location says."""
        async with self._db.unit_of_work() as uow:
            alert = await uow.sos.get_alert(alert_id, for_update=True)
            if alert is None or alert.location is None or not alert.is_open:
                return
            previous = alert.assigned_agency_id
            routed = await self._dispatch.route_on_first_fix(uow, alert)
            if routed is not None:
                await uow.audit.record(
                    None,
                    AuditEntry("sos.route", "sos_alert", alert_id, details={"from": previous, "to": routed}),
                )


async def _audit_other_party(uow: UnitOfWork, principal: Principal, alert: SosAlert, action: str) -> None:
    """Reading someone else's emergency (an agency, an admin) is sensitive: audited."""
    if principal.kind is PrincipalKind.API_KEY or principal.user_id != alert.user_id:
        await uow.audit.record(principal, AuditEntry(action, "sos_alert", alert.id))
