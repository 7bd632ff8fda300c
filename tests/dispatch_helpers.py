"""Helpers for dispatch tests: departments with jurisdictions, a CAD stream client."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2

from securenow.v1 import agency_pb2, agency_pb2_grpc, common_pb2, sos_pb2, users_pb2
from tests.helpers import Account, Api, unique_email

# Two cities far apart, and a point covered by no police jurisdiction.
SF = (37.7749, -122.4194)
LA = (34.0522, -118.2437)
NOWHERE = (41.0, -100.0)


def square(center: tuple[float, float], half_deg: float) -> str:
    lat, lng = center
    ring = [
        [lng - half_deg, lat - half_deg],
        [lng + half_deg, lat - half_deg],
        [lng + half_deg, lat + half_deg],
        [lng - half_deg, lat + half_deg],
        [lng - half_deg, lat - half_deg],
    ]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


def location(point: tuple[float, float], accuracy: float = 8.0) -> common_pb2.Location:
    return common_pb2.Location(point=common_pb2.LatLng(latitude=point[0], longitude=point[1]), accuracy_m=accuracy)


@dataclass
class Department:
    department: agency_pb2.Department
    api_key: str
    key_id: str
    webhook_secret: str

    @property
    def id(self) -> str:
        return self.department.id

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)


async def register_department(
    api: Api,
    admin: Account,
    center: tuple[float, float],
    *,
    half_deg: float = 0.2,
    name: str = "Metro PD",
    agency_type: int = agency_pb2.AGENCY_TYPE_POLICE_DEPARTMENT,
    ack_timeout_s: int = 0,
    webhook_url: str = "",
    provider_id: str = "",
) -> Department:
    req = agency_pb2.RegisterDepartmentRequest(
        department_name=name,
        jurisdiction_geojson=square(center, half_deg),
        agency_type=agency_type,
        webhook_url=webhook_url,
        provider_id=provider_id,
        contact_info=agency_pb2.ContactInfo(contact_name="Desk", phone="+15550001111"),
    )
    if ack_timeout_s:
        req.ack_timeout.CopyFrom(duration_pb2.Duration(seconds=ack_timeout_s))
    resp = await api.agency.RegisterDepartment(req, metadata=admin.md)
    key = await api.agency.IssueApiKey(
        agency_pb2.IssueApiKeyRequest(department_id=resp.department.id, label="cad-1"), metadata=admin.md
    )
    return Department(resp.department, key.api_key, key.key_id, resp.webhook_secret)


async def dispatcher_of(api: Api, admin: Account, dept: Department) -> Account:
    """A user made a police dispatcher of `dept` by an admin (UserService.SetUserRole)."""
    user = await api.sign_up(email=unique_email("dispatch"), first_name="Dana", last_name="Dispatcher")
    await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(user_id=user.id, role=users_pb2.USER_ROLE_POLICE, agency_id=dept.id),
        metadata=admin.md,
    )
    return user


async def raise_sos(
    api: Api, person: Account, point: tuple[float, float] | None, *, request_id: str = "", description: str = "help"
) -> sos_pb2.SosAlert:
    req = sos_pb2.RaiseSosRequest(request_id=request_id or str(uuid.uuid4()), description=description)
    if point is not None:
        req.location.CopyFrom(location(point))
    return (await api.sos.RaiseSos(req, metadata=person.md)).alert


class Cad:
    """A CAD system's StreamDispatch connection, as a test sees it."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str, *, resume_after: str = "") -> None:
        self._outbox: asyncio.Queue[agency_pb2.StreamDispatchRequest | None] = asyncio.Queue()
        self._outbox.put_nowait(
            agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe(resume_after_event_id=resume_after))
        )
        self.received: asyncio.Queue[agency_pb2.StreamDispatchResponse] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self.call = agency_pb2_grpc.AgencyServiceStub(channel).StreamDispatch(
            self._requests(), metadata=(("authorization", f"Bearer {api_key}"),)
        )
        self._reader = asyncio.create_task(self._read())

    async def _requests(self):  # type: ignore[no-untyped-def]
        while True:
            req = await self._outbox.get()
            if req is None:
                return
            yield req

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                if msg.WhichOneof("kind") != "heartbeat":
                    self.received.put_nowait(msg)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        finally:
            self.ended.set()

    async def next(self, within: float = 10.0) -> agency_pb2.StreamDispatchResponse:
        try:
            return await asyncio.wait_for(self.received.get(), within)
        except TimeoutError:
            raise AssertionError(f"no dispatch message within {within} s (stream error: {self.error})") from None

    async def next_event(self, kind: str, within: float = 10.0) -> agency_pb2.StreamDispatchResponse:
        msg = await self.next(within)
        assert msg.WhichOneof("kind") == kind, f"expected {kind}, got {msg}"
        return msg

    async def events_until(self, alert_id: str, within: float = 10.0) -> list[agency_pb2.StreamDispatchResponse]:
        """Reads until an alert_raised for `alert_id` arrives; returns everything read."""
        deadline = time.monotonic() + within
        seen = []
        while True:
            msg = await self.next(max(deadline - time.monotonic(), 0.01))
            seen.append(msg)
            if msg.WhichOneof("kind") == "alert_raised" and msg.alert_raised.alert.id == alert_id:
                return seen

    def send(self, **kind: object) -> None:
        self._outbox.put_nowait(agency_pb2.StreamDispatchRequest(**kind))  # type: ignore[arg-type]

    def ack(self, event_id: str) -> None:
        self.send(ack=agency_pb2.Ack(event_id=event_id))

    async def command(self, within: float = 10.0, **kind: object) -> agency_pb2.CommandResult:
        """Sends a command and returns its result (other messages before it are kept)."""
        self.send(**kind)
        deadline = time.monotonic() + within
        skipped = []
        while True:
            msg = await self.next(max(deadline - time.monotonic(), 0.01))
            if msg.WhichOneof("kind") == "command_result":
                for m in skipped:
                    self.received.put_nowait(m)
                return msg.command_result
            skipped.append(msg)

    async def wait_closed(self, within: float = 10.0) -> grpc.aio.AioRpcError | None:
        await asyncio.wait_for(self.ended.wait(), within)
        return self.error

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont (linear interpolation), as the incident report computes it."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def report_figures(inside: list[sos_pb2.SosAlert]) -> dict[str, Any]:
    """What GetIncidentReport should say for the alerts of one bucket, from the alerts
    as the API shows them."""
    times = [a.response_time.ToTimedelta().total_seconds() for a in inside if a.HasField("response_time")]
    return {
        "alerts": len(inside),
        "accepted": sum(1 for a in inside if a.HasField("response_time") or a.police_notified),
        "escalated": sum(1 for a in inside if a.escalation_level > 0),
        "cancelled": sum(1 for a in inside if a.status == common_pb2.SOS_STATUS_CANCELLED),
        "median": percentile_cont(times, 0.5) if times else None,
        "p90": percentile_cont(times, 0.9) if times else None,
    }
