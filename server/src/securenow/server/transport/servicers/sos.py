from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.enums import SosStatus
from securenow.server.domain.errors import DomainError, InvalidArgument
from securenow.server.domain.geo import validate_location
from securenow.server.domain.validation import Validator, parse_uuid
from securenow.server.services.credentials import CredentialMonitor
from securenow.server.services.locations import LocationIngestor
from securenow.server.services.sos import SosService
from securenow.server.storage.alert_watch import RESYNC, AlertWatchHub
from securenow.server.transport import convert, convert_sos
from securenow.server.transport.context import current_principal
from securenow.v1 import sos_pb2, sos_pb2_grpc

log = logging.getLogger(__name__)

TERMINAL = (SosStatus.RESOLVED, SosStatus.CANCELLED)
TERMINAL_EVENTS = ("resolved", "cancelled")
# Put on a watcher's queue by the CredentialMonitor (never a real event name).
CREDENTIAL_ENDED = "\x00credential-ended"


class SosServicer(sos_pb2_grpc.SosServiceServicer):
    def __init__(
        self, sos: SosService, locations: LocationIngestor, watch_hub: AlertWatchHub, credentials: CredentialMonitor
    ) -> None:
        self._sos = sos
        self._locations = locations
        self._watch = watch_hub
        self._credentials = credentials

    async def RaiseSos(
        self, request: sos_pb2.RaiseSosRequest, context: grpc.aio.ServicerContext
    ) -> sos_pb2.RaiseSosResponse:
        key = convert.idempotency_key(request)
        alert = await self._sos.raise_sos(current_principal(), convert_sos.raise_request(request), key)
        return sos_pb2.RaiseSosResponse(alert=convert_sos.alert(alert))

    async def GetSosAlert(
        self, request: sos_pb2.GetSosAlertRequest, context: grpc.aio.ServicerContext
    ) -> sos_pb2.GetSosAlertResponse:
        alert, incident = await self._sos.get(current_principal(), request.alert_id)
        return sos_pb2.GetSosAlertResponse(alert=convert_sos.alert(alert), incident=convert_sos.incident(incident))

    async def ListSosAlerts(
        self, request: sos_pb2.ListSosAlertsRequest, context: grpc.aio.ServicerContext
    ) -> sos_pb2.ListSosAlertsResponse:
        alerts, token = await self._sos.list_alerts(
            current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            status=convert.enum_from_pb(SosStatus, request.status, "status"),
        )
        return sos_pb2.ListSosAlertsResponse(alerts=[convert_sos.alert(a) for a in alerts], next_page_token=token)

    async def CancelSos(
        self, request: sos_pb2.CancelSosRequest, context: grpc.aio.ServicerContext
    ) -> sos_pb2.CancelSosResponse:
        alert = await self._sos.cancel(current_principal(), request.alert_id, request.reason)
        return sos_pb2.CancelSosResponse(alert=convert_sos.alert(alert))

    async def ShareLocation(
        self, request_iterator: AsyncIterator[sos_pb2.ShareLocationRequest], context: grpc.aio.ServicerContext
    ) -> sos_pb2.ShareLocationResponse:
        principal = current_principal()
        if principal.user_id is None:
            raise InvalidArgument.field("alert_id", "location sharing needs a user account")
        allowed: set[str] = set()
        accepted = 0
        last = 0
        # A suspended account or ended session stops the sharing at once: the monitor
        # interrupts this handler, which then ends the call with the monitor's error.
        ended: list[DomainError] = []
        handler = asyncio.current_task()

        def end(error: DomainError) -> None:
            ended.append(error)
            if handler is not None:
                handler.cancel()

        credential = self._credentials.register(principal, end)
        try:
            async for req in request_iterator:
                alert_id = None
                if req.alert_id:
                    alert_id = parse_uuid("alert_id", req.alert_id)
                    if alert_id not in allowed:
                        allowed.add(await self._sos.check_sharing(principal, alert_id))
                if not req.HasField("location"):
                    raise InvalidArgument.field("location", "is required")
                v = Validator()
                fix = validate_location(v, "location", convert.location_input(req.location))
                v.check()
                await self._locations.room()
                last = self._locations.submit(principal.user_id, alert_id, fix)
                accepted += 1
        except BaseException as exc:
            # The fixes accepted before a bad one (or a cancel) are stored all the same,
            # so they are audited all the same; the caller still gets the first error.
            if accepted:
                try:
                    await asyncio.shield(self._close_sharing(principal, allowed, accepted, last))
                except Exception:
                    log.exception("ShareLocation: auditing %d accepted fixes failed", accepted)
            if ended and isinstance(exc, asyncio.CancelledError):
                raise ended[0] from None
            raise
        finally:
            self._credentials.unregister(credential)
        if accepted:
            await self._close_sharing(principal, allowed, accepted, last)
        return sos_pb2.ShareLocationResponse(accepted_count=accepted)

    async def _close_sharing(self, principal: Principal, allowed: set[str], accepted: int, last: int) -> None:
        await self._locations.sync(last)
        await self._sos.record_sharing(principal, allowed, accepted)

    async def WatchSos(
        self, request: sos_pb2.WatchSosRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sos_pb2.WatchSosResponse]:
        principal = current_principal()
        alert_id = parse_uuid("alert_id", request.alert_id)
        queue = self._watch.watch(alert_id)  # before the snapshot: no change slips between
        ended: list[DomainError] = []

        def end(error: DomainError) -> None:
            ended.append(error)
            try:
                queue.put_nowait(CREDENTIAL_ENDED)
            except asyncio.QueueFull:
                pass  # a full queue wakes its reader anyway, which then sees `ended`

        # A dispatcher watches for the agency only while a member of it.
        agency = principal.agency_id if principal.kind is PrincipalKind.USER else None
        credential = self._credentials.register(principal, end, agency_id=agency)
        try:
            alert, incident = await self._sos.watch_snapshot(principal, alert_id, opening=True)
            yield sos_pb2.WatchSosResponse(
                alert=convert_sos.alert(alert), event="snapshot", incident=convert_sos.incident(incident)
            )
            if alert.status in TERMINAL:
                return  # nothing can change any more
            while True:
                event = await queue.get()
                if ended:
                    raise ended[0]  # the key was revoked, the session ended or the account was suspended
                # One message per change, showing the state as it is when sent.
                alert, incident = await self._sos.watch_snapshot(principal, alert_id)
                if alert.status in TERMINAL:
                    # The alert is closed: this is the last message, and it says how the
                    # alert ended, whichever event woke us. Its own event may be queued
                    # behind this one, or may never come (the hub drops events for a
                    # watcher 1,000 behind): waiting for it could wait forever.
                    yield sos_pb2.WatchSosResponse(
                        alert=convert_sos.alert(alert),
                        event=TERMINAL_EVENTS[TERMINAL.index(alert.status)],
                        incident=convert_sos.incident(incident),
                    )
                    return
                yield sos_pb2.WatchSosResponse(
                    alert=convert_sos.alert(alert),
                    event="snapshot" if event == RESYNC else event,
                    incident=convert_sos.incident(incident),
                )
        finally:
            self._credentials.unregister(credential)
            self._watch.unwatch(alert_id, queue)

    async def ListAlertLocations(
        self, request: sos_pb2.ListAlertLocationsRequest, context: grpc.aio.ServicerContext
    ) -> sos_pb2.ListAlertLocationsResponse:
        fixes, token = await self._sos.list_locations(
            current_principal(), request.alert_id, request.page_size, request.page_token
        )
        return sos_pb2.ListAlertLocationsResponse(locations=[convert.location(f) for f in fixes], next_page_token=token)
