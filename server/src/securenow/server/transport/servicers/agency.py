from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from google.rpc import code_pb2

from securenow.server.domain.accounts import Principal
from securenow.server.domain.agency import DepartmentDraft
from securenow.server.domain.enums import AgencyType, DepartmentStatus, IncidentStatus
from securenow.server.domain.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from securenow.server.services.agency import AgencyService
from securenow.server.services.credentials import CredentialMonitor
from securenow.server.services.dispatch import DispatchService, agency_of
from securenow.server.storage.dispatch_streams import DispatchEvent, DispatchHub, Outgoing, Subscription
from securenow.server.transport import convert, convert_sos
from securenow.server.transport.context import current_principal
from securenow.server.transport.errors import status_code_for
from securenow.server.transport.interceptor import AuditFailure, audit_refusal
from securenow.v1 import agency_pb2, agency_pb2_grpc

log = logging.getLogger(__name__)
STREAM_DISPATCH = "/securenow.v1.AgencyService/StreamDispatch"
COMMANDS = ("accept", "decline", "update")


def _command_result(error: DomainError | None, alert_id: str = "", incident_id: str = "") -> agency_pb2.CommandResult:
    if error is None:
        return agency_pb2.CommandResult(code=code_pb2.OK, alert_id=alert_id, incident_id=incident_id)
    return agency_pb2.CommandResult(
        code=status_code_for(error).value[0], message=error.message, alert_id=alert_id, incident_id=incident_id
    )


class AgencyServicer(agency_pb2_grpc.AgencyServiceServicer):
    def __init__(
        self,
        agency: AgencyService,
        dispatch: DispatchService,
        hub: DispatchHub,
        credentials: CredentialMonitor,
        audit_failure: AuditFailure,
        *,
        heartbeat_interval: float,
        client_idle_timeout: float,
    ) -> None:
        self._agency = agency
        self._dispatch = dispatch
        self._hub = hub
        self._credentials = credentials
        self._audit_failure = audit_failure
        self._heartbeat = heartbeat_interval
        self._idle_timeout = client_idle_timeout

    # Departments and keys ---------------------------------------------------------

    async def RegisterDepartment(
        self, request: agency_pb2.RegisterDepartmentRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.RegisterDepartmentResponse:
        department, secret = await self._agency.register(
            current_principal(),
            DepartmentDraft(
                department_name=request.department_name,
                jurisdiction_geojson=request.jurisdiction_geojson,
                contact_info=convert_sos.contact_info(request.contact_info),
                webhook_url=request.webhook_url,
                ack_timeout_seconds=convert.whole_seconds(request, "ack_timeout"),
            ),
            agency_type=convert.enum_from_pb(AgencyType, request.agency_type, "agency_type"),
            provider_id=request.provider_id,
            key=convert.idempotency_key(request),
        )
        return agency_pb2.RegisterDepartmentResponse(
            department=convert_sos.department(department), webhook_secret=secret or ""
        )

    async def GetDepartment(
        self, request: agency_pb2.GetDepartmentRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.GetDepartmentResponse:
        department = await self._agency.get(current_principal(), request.department_id)
        return agency_pb2.GetDepartmentResponse(department=convert_sos.department(department))

    async def ListDepartments(
        self, request: agency_pb2.ListDepartmentsRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.ListDepartmentsResponse:
        items, token = await self._agency.list_departments(current_principal(), request.page_size, request.page_token)
        return agency_pb2.ListDepartmentsResponse(
            departments=[convert_sos.department(d) for d in items], next_page_token=token
        )

    async def UpdateDepartment(
        self, request: agency_pb2.UpdateDepartmentRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.UpdateDepartmentResponse:
        d = request.department
        department = await self._agency.update(
            current_principal(),
            d.id,
            DepartmentDraft(
                department_name=d.department_name,
                jurisdiction_geojson=d.jurisdiction_geojson,
                contact_info=convert_sos.contact_info(d.contact_info),
                webhook_url=d.webhook_url,
                ack_timeout_seconds=convert.whole_seconds(d, "ack_timeout", "department.ack_timeout"),
                status=convert.enum_from_pb(DepartmentStatus, d.status, "department.status"),
            ),
            list(request.update_mask.paths),
        )
        return agency_pb2.UpdateDepartmentResponse(department=convert_sos.department(department))

    async def IssueApiKey(
        self, request: agency_pb2.IssueApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.IssueApiKeyResponse:
        token, info = await self._agency.issue_key(current_principal(), request.department_id, request.label)
        return agency_pb2.IssueApiKeyResponse(api_key=token, key_id=info.id, key=convert_sos.api_key(info))

    async def RevokeApiKey(
        self, request: agency_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.RevokeApiKeyResponse:
        info = await self._agency.revoke_key(current_principal(), request.key_id)
        return agency_pb2.RevokeApiKeyResponse(key=convert_sos.api_key(info))

    async def ListApiKeys(
        self, request: agency_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.ListApiKeysResponse:
        keys, token = await self._agency.list_keys(
            current_principal(), request.department_id, request.page_size, request.page_token
        )
        return agency_pb2.ListApiKeysResponse(keys=[convert_sos.api_key(k) for k in keys], next_page_token=token)

    # Dispatch -------------------------------------------------------------------------

    async def StreamDispatch(
        self, request_iterator: AsyncIterator[agency_pb2.StreamDispatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agency_pb2.StreamDispatchResponse]:
        principal = current_principal()
        department_id = agency_of(principal)
        try:
            first = await asyncio.wait_for(anext(request_iterator), self._idle_timeout)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument.field("subscribe", "the first message must be subscribe") from None
        if first.WhichOneof("kind") != "subscribe":
            raise InvalidArgument.field("subscribe", "the first message must be subscribe")
        async with self._subscription(
            principal,
            department_id,
            first.subscribe.resume_after_event_id,
            field_name="subscribe.resume_after_event_id",
        ) as sub:
            reader = asyncio.create_task(self._read_commands(request_iterator, sub, principal))
            try:
                async for response in self._responses(sub, client_sends=True):
                    yield response
            finally:
                reader.cancel()

    @contextlib.asynccontextmanager
    async def _subscription(
        self, principal: Principal, department_id: str, resume_after: str, *, field_name: str
    ) -> AsyncIterator[Subscription]:
        """A subscription to the department's events, ended (with its error) once the
        caller's credential stops being good."""
        sub = await self._hub.subscribe(principal, department_id, resume_after, field_name=field_name)
        credential = self._credentials.register(principal, sub.close, agency_id=department_id)
        try:
            yield sub
        finally:
            self._credentials.unregister(credential)
            self._hub.unsubscribe(sub)

    async def _responses(
        self, sub: Subscription, *, client_sends: bool
    ) -> AsyncIterator[agency_pb2.StreamDispatchResponse]:
        """Events, command results and heartbeats for one subscription. A client that
        can send (StreamDispatch) must show life within the idle timeout; browsers
        (WatchDispatch) cannot, and rely on transport keepalive."""
        while True:
            if isinstance(sub.closed, (Unauthenticated, PermissionDenied)):
                # The credential ended (key revoked, department stopped, dispatcher
                # removed): not one more event, however many are still queued.
                raise sub.closed
            # Checked before every message, not only on a quiet stream: while events come
            # more often than the heartbeat, a client whose messages stopped arriving
            # (its acks lost, every event redelivered for ever) would never be dropped.
            if client_sends and time.monotonic() - sub.last_client_activity > self._idle_timeout:
                raise Unavailable(
                    "no message from the client within the idle timeout; reconnect", reason="CLIENT_SILENT"
                )
            try:
                item = await asyncio.wait_for(sub.queue.get(), self._heartbeat)
            except TimeoutError:
                if not (client_sends and time.monotonic() - sub.last_client_activity > self._idle_timeout):
                    yield agency_pb2.StreamDispatchResponse(heartbeat=agency_pb2.Heartbeat())
                continue  # a silent client is dropped above
            if item is None:
                return  # closed without error (the client half-closed)
            if isinstance(item, DomainError):
                raise item
            if isinstance(item, Outgoing):
                yield item.value
                continue
            assert isinstance(item, DispatchEvent)
            yield convert_sos.dispatch_event(item)

    async def _read_commands(
        self,
        requests: AsyncIterator[agency_pb2.StreamDispatchRequest],
        sub: Subscription,
        principal: Principal,
    ) -> None:
        try:
            async for req in requests:
                sub.touch()
                kind = req.WhichOneof("kind")
                if kind == "heartbeat":
                    continue
                # _command answers every failure itself: only reading the client's
                # messages can end this loop early.
                result = await self._command(req, kind, sub, principal)
                if result is not None:
                    sub.send(agency_pb2.StreamDispatchResponse(command_result=result))
        except asyncio.CancelledError:
            raise
        except Exception:  # the client stream broke: the response side ends too
            log.debug("dispatch command stream ended", exc_info=True)
        sub.close(None)

    async def _command(
        self, req: agency_pb2.StreamDispatchRequest, kind: str | None, sub: Subscription, principal: Principal
    ) -> agency_pb2.CommandResult | None:
        if kind == "ack":
            # Acks are never answered (results pair with commands, in order). A bad or
            # lost ack only means the event comes again.
            try:
                await self._hub.ack(principal, sub.department_id, req.ack.event_id)
            except DomainError as err:
                log.info("ignored an ack: %s", err.message)
            except Exception:
                log.exception("dispatch ack failed; the event will be redelivered")
            return None
        alert_id = incident_id = ""
        try:
            if kind == "accept":
                alert_id = req.accept.alert_id
                incident = await self._dispatch.accept(
                    principal, alert_id, req.accept.assigned_unit, req.accept.eta_minutes
                )
                return _command_result(None, alert_id, incident.id)
            if kind == "decline":
                alert_id = req.decline.alert_id
                await self._dispatch.decline(principal, alert_id, req.decline.reason)
                return _command_result(None, alert_id)
            if kind == "update":
                incident_id = req.update.incident_id
                incident = await self._dispatch.update_incident(
                    principal,
                    incident_id,
                    convert.enum_from_pb(IncidentStatus, req.update.status, "update.status"),
                    unit=req.update.assigned_unit,
                    notes=req.update.notes,
                    eta_minutes=0,
                )
                return _command_result(None, incident.sos_alert_id, incident.id)
            if kind == "subscribe":
                raise InvalidArgument.field("subscribe", "is only allowed as the first message")
            raise InvalidArgument.field("kind", "send one of ack, accept, decline, update or heartbeat")
        except InvalidArgument as err:
            # Fields are named as the CAD sent them: inside its command (accept.alert_id).
            named = [
                FieldViolation(v.field if v.field.startswith(f"{kind}.") else f"{kind}.{v.field}", v.description)
                for v in err.violations
            ]
            return _command_result(InvalidArgument(named) if kind in COMMANDS else err, alert_id, incident_id)
        except DomainError as err:
            # Audited like the refused unary call it stands for (AcceptSosAlert, ...).
            code = status_code_for(err).name
            await audit_refusal(self._audit_failure, principal, f"{STREAM_DISPATCH}:{kind}", code, err.reason)
            return _command_result(err, alert_id, incident_id)
        except Exception:
            # A bug or an unexpected failure is this command's INTERNAL result, not the
            # end of the stream: the CAD keeps its events and may send other commands.
            error_id = uuid.uuid4().hex[:12]
            log.exception("dispatch command %s failed (error id %s)", kind, error_id, extra={"error_id": error_id})
            return agency_pb2.CommandResult(
                code=code_pb2.INTERNAL,
                message=f"internal error {error_id}; it was logged",
                alert_id=alert_id,
                incident_id=incident_id,
            )

    async def WatchDispatch(
        self, request: agency_pb2.WatchDispatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agency_pb2.WatchDispatchResponse]:
        principal = current_principal()
        async with self._subscription(
            principal, agency_of(principal), request.resume_after_event_id, field_name="resume_after_event_id"
        ) as sub:
            async for response in self._responses(sub, client_sends=False):
                yield agency_pb2.WatchDispatchResponse(event=response)

    async def AckDispatchEvent(
        self, request: agency_pb2.AckDispatchEventRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.AckDispatchEventResponse:
        principal = current_principal()
        await self._hub.ack_through(principal, agency_of(principal), request.event_id)
        return agency_pb2.AckDispatchEventResponse()

    async def AcceptSosAlert(
        self, request: agency_pb2.AcceptSosAlertRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.AcceptSosAlertResponse:
        incident = await self._dispatch.accept(
            current_principal(), request.alert_id, request.assigned_unit, request.eta_minutes
        )
        return agency_pb2.AcceptSosAlertResponse(incident=convert_sos.incident(incident))

    async def DeclineSosAlert(
        self, request: agency_pb2.DeclineSosAlertRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.DeclineSosAlertResponse:
        await self._dispatch.decline(current_principal(), request.alert_id, request.reason)
        return agency_pb2.DeclineSosAlertResponse()

    async def GetIncident(
        self, request: agency_pb2.GetIncidentRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.GetIncidentResponse:
        incident, alert = await self._dispatch.get_incident(current_principal(), request.incident_id)
        return agency_pb2.GetIncidentResponse(incident=convert_sos.incident(incident), alert=convert_sos.alert(alert))

    async def ListIncidents(
        self, request: agency_pb2.ListIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.ListIncidentsResponse:
        items, token = await self._dispatch.list_incidents(
            current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            status=convert.enum_from_pb(IncidentStatus, request.status, "status"),
            department_id=request.department_id,
        )
        return agency_pb2.ListIncidentsResponse(
            incidents=[convert_sos.incident(i) for i in items], next_page_token=token
        )

    async def UpdateIncident(
        self, request: agency_pb2.UpdateIncidentRequest, context: grpc.aio.ServicerContext
    ) -> agency_pb2.UpdateIncidentResponse:
        incident = await self._dispatch.update_incident(
            current_principal(),
            request.incident_id,
            convert.enum_from_pb(IncidentStatus, request.status, "status"),
            unit=request.assigned_unit,
            notes=request.notes,
            eta_minutes=request.estimated_arrival_minutes,
        )
        return agency_pb2.UpdateIncidentResponse(incident=convert_sos.incident(incident))
