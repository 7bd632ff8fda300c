"""Bad input is the caller's mistake: every case here must answer INVALID_ARGUMENT with a
BadRequest violation naming the field, never INTERNAL, UNKNOWN or UNAVAILABLE. Each
case drives the real RPC through the generated stubs against the in-process server.

Cases: NUL characters in free text (PostgreSQL text cannot hold them), Timestamps out
of protobuf's range, page tokens the server did not issue, runaway GeoJSON nesting,
event ids beyond Redis's 64-bit sequence numbers, unbounded lists and non-finite
numbers, over-long passwords at sign-in, and bytes that are not a protobuf message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from securenow.server.domain.errors import InvalidArgument
from securenow.server.runtime import Runtime
from securenow.server.transport.grpc_web import frame
from securenow.v1 import (
    agency_pb2,
    agency_pb2_grpc,
    analytics_pb2,
    auth_pb2,
    bookings_pb2,
    common_pb2,
    providers_pb2,
    search_pb2,
    sos_pb2,
    users_pb2,
    users_pb2_grpc,
)
from tests.conftest import extra_replica, make_settings
from tests.dispatch_helpers import SF, Department, dispatcher_of, location, raise_sos, register_department
from tests.helpers import (
    PASSWORD,
    Account,
    Api,
    ErrorDetails,
    expect_error,
    unique_email,
    unique_phone,
    wait_for,
)

NUL = "x\x00y"
# One second past 9999-12-31T23:59:59Z, the largest Timestamp protobuf accepts.
TOO_LATE = timestamp_pb2.Timestamp(seconds=253402300800)
BAD_NANOS = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=2_000_000_000)
# 0001-01-01T00:00:00Z, the smallest Timestamp: what a client's zero date turns into.
ZERO_DATE = timestamp_pb2.Timestamp(seconds=-62135596800)
HUGE_EVENT_ID = "9" * 40
DEEP_JSON = "[" * 60_000 + "]" * 60_000
GUARD = providers_pb2.SERVICE_TYPE_SECURITY_GUARD
DEADLINE = 20.0


class World:
    """The accounts and objects a case needs, created on first use (each test starts
    from empty tables)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._made: dict[str, Any] = {}

    async def _once(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        if key not in self._made:
            self._made[key] = await make()
        return self._made[key]

    async def admin(self) -> Account:
        return await self._once("admin", self.api.admin)  # type: ignore[no-any-return]

    async def person(self) -> Account:
        return await self._once("person", self.api.sign_up)  # type: ignore[no-any-return]

    async def provider(self) -> tuple[Account, providers_pb2.Provider]:
        async def make() -> tuple[Account, providers_pb2.Provider]:
            return await self.api.verified_provider(await self.admin())

        return await self._once("provider", make)  # type: ignore[no-any-return]

    async def department(self) -> Department:
        async def make() -> Department:
            return await register_department(self.api, await self.admin(), SF)

        return await self._once("department", make)  # type: ignore[no-any-return]

    async def dispatcher(self) -> Account:
        async def make() -> Account:
            return await dispatcher_of(self.api, await self.admin(), await self.department())

        return await self._once("dispatcher", make)  # type: ignore[no-any-return]

    async def alert(self) -> sos_pb2.SosAlert:
        """An open alert in the department's jurisdiction (it has an incident)."""

        async def make() -> sos_pb2.SosAlert:
            await self.department()
            return await raise_sos(self.api, await self.person(), SF)

        return await self._once("alert", make)  # type: ignore[no-any-return]

    async def incident_id(self) -> str:
        alert = await self.alert()
        got = await self.api.sos.GetSosAlert(
            sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=(await self.dispatcher()).md
        )
        return got.incident.id

    async def booking(self) -> bookings_pb2.Booking:
        async def make() -> bookings_pb2.Booking:
            _, prov = await self.provider()
            return (
                await self.api.bookings.CreateBooking(booking_request(prov.id), metadata=(await self.person()).md)
            ).booking

        return await self._once("booking", make)  # type: ignore[no-any-return]


def booking_request(provider_id: str, hours_ahead: int = 48, **kw: Any) -> bookings_pb2.CreateBookingRequest:
    req = bookings_pb2.CreateBookingRequest(
        provider_id=provider_id,
        service_type=GUARD,
        duration_hours=2,
        location=location(SF),
        **kw,
    )
    if "start_time" not in kw:
        start = (datetime.now(UTC) + timedelta(hours=hours_ahead)).replace(minute=0, second=0, microsecond=0)
        req.start_time.FromDatetime(start)
    return req


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def located(*, address: str = "", time: timestamp_pb2.Timestamp | None = None) -> common_pb2.Location:
    loc = location(SF)
    loc.address = address
    if time is not None:
        loc.time.CopyFrom(time)
    return loc


async def drain(call: Any) -> None:
    """Reads a server stream to its end (its error, if any, is raised)."""
    async for _ in call:
        pass


async def one_message(call: Any) -> None:
    """Reads a server stream until its first message or its error."""
    async for _ in call:
        call.cancel()
        return


Case = Callable[[World], Awaitable[Awaitable[Any]]]


# NUL and other control characters in free text ------------------------------------


async def sign_up_first_name(w: World) -> Awaitable[Any]:
    return w.api.auth.SignUp(
        auth_pb2.SignUpRequest(
            email=unique_email(), phone=unique_phone(), first_name=NUL, last_name="P", password=PASSWORD
        )
    )


async def sign_up_email(w: World) -> Awaitable[Any]:
    return w.api.auth.SignUp(
        auth_pb2.SignUpRequest(
            email="a\x00b@example.com", phone=unique_phone(), first_name="F", last_name="P", password=PASSWORD
        )
    )


async def sign_up_last_name_control(w: World) -> Awaitable[Any]:
    return w.api.auth.SignUp(
        auth_pb2.SignUpRequest(
            email=unique_email(), phone=unique_phone(), first_name="F", last_name="P\x1b[31m", password=PASSWORD
        )
    )


async def sign_in_email(w: World) -> Awaitable[Any]:
    return w.api.auth.SignIn(auth_pb2.SignInRequest(email="a\x00b@example.com", password=PASSWORD))


async def update_user_first_name(w: World) -> Awaitable[Any]:
    me = await w.person()
    return w.api.users.UpdateUser(
        users_pb2.UpdateUserRequest(user=users_pb2.User(id=me.id, first_name=NUL), update_mask=mask("first_name")),
        metadata=me.md,
    )


async def update_user_contact_name(w: World) -> Awaitable[Any]:
    me = await w.person()
    contact = users_pb2.EmergencyContact(name=NUL, phone="+15550009999")
    return w.api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=me.id, emergency_contacts=[contact]), update_mask=mask("emergency_contacts")
        ),
        metadata=me.md,
    )


async def suspend_user_reason(w: World) -> Awaitable[Any]:
    target = await w.person()
    return w.api.users.SuspendUser(
        users_pb2.SuspendUserRequest(user_id=target.id, reason=NUL), metadata=(await w.admin()).md
    )


async def verify_user_note(w: World) -> Awaitable[Any]:
    target = await w.person()
    return w.api.users.VerifyUser(
        users_pb2.VerifyUserRequest(user_id=target.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED, note=NUL),
        metadata=(await w.admin()).md,
    )


async def raise_sos_description(w: World) -> Awaitable[Any]:
    return w.api.sos.RaiseSos(
        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), description=NUL, location=located()),
        metadata=(await w.person()).md,
    )


async def raise_sos_metadata_key(w: World) -> Awaitable[Any]:
    return w.api.sos.RaiseSos(
        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), metadata={NUL: "v"}, location=located()),
        metadata=(await w.person()).md,
    )


async def raise_sos_metadata_value(w: World) -> Awaitable[Any]:
    return w.api.sos.RaiseSos(
        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), metadata={"floor": NUL}, location=located()),
        metadata=(await w.person()).md,
    )


async def raise_sos_address(w: World) -> Awaitable[Any]:
    return w.api.sos.RaiseSos(
        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=located(address=NUL)),
        metadata=(await w.person()).md,
    )


async def cancel_sos_reason(w: World) -> Awaitable[Any]:
    alert = await w.alert()
    return w.api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id, reason=NUL), metadata=(await w.person()).md)


async def create_provider_company(w: World) -> Awaitable[Any]:
    owner = await w.api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    return w.api.providers.CreateProvider(
        providers_pb2.CreateProviderRequest(
            provider=providers_pb2.Provider(company_name=NUL, business_type=providers_pb2.PROVIDER_TYPE_SECURITY_GUARD)
        ),
        metadata=owner.md,
    )


async def update_provider_description(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=prov.id, description=NUL), update_mask=mask("description")
        ),
        metadata=owner.md,
    )


async def update_provider_insurer(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    body = providers_pb2.Provider(id=prov.id, insurance=providers_pb2.InsuranceInfo(insurer=NUL))
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(provider=body, update_mask=mask("insurance")), metadata=owner.md
    )


def insurance_coverage(**money: Any) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        owner, prov = await w.provider()
        insurance = providers_pb2.InsuranceInfo(insurer="Acme", coverage=common_pb2.Money(**money))
        body = providers_pb2.Provider(id=prov.id, insurance=insurance)
        return w.api.providers.UpdateProvider(
            providers_pb2.UpdateProviderRequest(provider=body, update_mask=mask("insurance")), metadata=owner.md
        )

    return case


async def verify_provider_note(w: World) -> Awaitable[Any]:
    _, prov = await w.provider()
    return w.api.providers.VerifyProvider(
        providers_pb2.VerifyProviderRequest(
            provider_id=prov.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED, note=NUL
        ),
        metadata=(await w.admin()).md,
    )


def create_booking_instructions(text: str) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        _, prov = await w.provider()
        return w.api.bookings.CreateBooking(
            booking_request(prov.id, special_instructions=text), metadata=(await w.person()).md
        )

    return case


async def cancel_booking_reason(w: World) -> Awaitable[Any]:
    booking = await w.booking()
    return w.api.bookings.CancelBooking(
        bookings_pb2.CancelBookingRequest(booking_id=booking.id, reason=NUL), metadata=(await w.person()).md
    )


async def register_department_name(w: World) -> Awaitable[Any]:
    return w.api.agency.RegisterDepartment(
        agency_pb2.RegisterDepartmentRequest(
            department_name=NUL,
            jurisdiction_geojson=json.dumps(
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
            ),
            agency_type=agency_pb2.AGENCY_TYPE_POLICE_DEPARTMENT,
        ),
        metadata=(await w.admin()).md,
    )


async def register_department_webhook(w: World) -> Awaitable[Any]:
    return w.api.agency.RegisterDepartment(
        agency_pb2.RegisterDepartmentRequest(
            department_name="Hook PD",
            jurisdiction_geojson=json.dumps(
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
            ),
            agency_type=agency_pb2.AGENCY_TYPE_POLICE_DEPARTMENT,
            webhook_url="https://cad\x00.example/hook",
        ),
        metadata=(await w.admin()).md,
    )


async def issue_api_key_label(w: World) -> Awaitable[Any]:
    dept = await w.department()
    return w.api.agency.IssueApiKey(
        agency_pb2.IssueApiKeyRequest(department_id=dept.id, label=NUL), metadata=(await w.admin()).md
    )


async def decline_sos_reason(w: World) -> Awaitable[Any]:
    alert = await w.alert()
    return w.api.agency.DeclineSosAlert(
        agency_pb2.DeclineSosAlertRequest(alert_id=alert.id, reason=NUL), metadata=(await w.dispatcher()).md
    )


async def update_incident_unit(w: World) -> Awaitable[Any]:
    incident_id = await w.incident_id()
    return w.api.agency.UpdateIncident(
        agency_pb2.UpdateIncidentRequest(
            incident_id=incident_id, status=common_pb2.INCIDENT_STATUS_DISPATCHED, assigned_unit=NUL
        ),
        metadata=(await w.dispatcher()).md,
    )


async def search_providers_query(w: World) -> Awaitable[Any]:
    return w.api.search.SearchProviders(search_pb2.SearchProvidersRequest(query=NUL), metadata=(await w.person()).md)


async def search_providers_tag(w: World) -> Awaitable[Any]:
    return w.api.search.SearchProviders(
        search_pb2.SearchProvidersRequest(tags=["k9", NUL]), metadata=(await w.person()).md
    )


async def search_incidents_query(w: World) -> Awaitable[Any]:
    return w.api.search.SearchIncidents(
        search_pb2.SearchIncidentsRequest(query=NUL), metadata=(await w.dispatcher()).md
    )


# Timestamps outside protobuf's range -------------------------------------------------


async def raise_sos_time(w: World) -> Awaitable[Any]:
    return w.api.sos.RaiseSos(
        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=located(time=TOO_LATE)),
        metadata=(await w.person()).md,
    )


async def share_location_time(w: World) -> Awaitable[Any]:
    async def requests() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        yield sos_pb2.ShareLocationRequest(location=located(time=BAD_NANOS))

    return w.api.sos.ShareLocation(requests(), metadata=(await w.person()).md)


async def share_location_zero_date(w: World) -> Awaitable[Any]:
    async def requests() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        yield sos_pb2.ShareLocationRequest(alert_id=(await w.alert()).id, location=located(time=ZERO_DATE))

    return w.api.sos.ShareLocation(requests(), metadata=(await w.person()).md)


async def raise_sos_zero_date(w: World) -> Awaitable[Any]:
    return w.api.sos.RaiseSos(
        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=located(time=ZERO_DATE)),
        metadata=(await w.person()).md,
    )


async def incident_report_zero_date(w: World) -> Awaitable[Any]:
    req = analytics_pb2.GetIncidentReportRequest(start_time=ZERO_DATE)
    req.end_time.FromDatetime(datetime(1, 1, 2, tzinfo=UTC))
    return w.api.analytics.GetIncidentReport(req, metadata=(await w.dispatcher()).md)


async def provider_duty_time(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    return w.api.providers.UpdateProviderDuty(
        providers_pb2.UpdateProviderDutyRequest(provider_id=prov.id, on_duty=True, location=located(time=TOO_LATE)),
        metadata=owner.md,
    )


async def booking_start_time(w: World) -> Awaitable[Any]:
    _, prov = await w.provider()
    return w.api.bookings.CreateBooking(booking_request(prov.id, start_time=BAD_NANOS), metadata=(await w.person()).md)


async def insurance_expire_time(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    body = providers_pb2.Provider(
        id=prov.id, insurance=providers_pb2.InsuranceInfo(insurer="Lloyd's", expire_time=TOO_LATE)
    )
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(provider=body, update_mask=mask("insurance")), metadata=owner.md
    )


async def search_incidents_start(w: World) -> Awaitable[Any]:
    return w.api.search.SearchIncidents(
        search_pb2.SearchIncidentsRequest(start_time=TOO_LATE), metadata=(await w.dispatcher()).md
    )


async def search_incidents_end(w: World) -> Awaitable[Any]:
    return w.api.search.SearchIncidents(
        search_pb2.SearchIncidentsRequest(end_time=BAD_NANOS), metadata=(await w.dispatcher()).md
    )


# Runaway GeoJSON, dispatch event ids, unbounded or non-finite input ------------------


async def department_deep_geojson(w: World) -> Awaitable[Any]:
    return w.api.agency.RegisterDepartment(
        agency_pb2.RegisterDepartmentRequest(
            department_name="Deep PD",
            jurisdiction_geojson=DEEP_JSON,
            agency_type=agency_pb2.AGENCY_TYPE_POLICE_DEPARTMENT,
        ),
        metadata=(await w.admin()).md,
    )


async def department_nan_altitude(w: World) -> Awaitable[Any]:
    ring = [[-122.5, 37.7, float("nan")], [-122.3, 37.7, 0], [-122.3, 37.9, 0], [-122.5, 37.9, 0], [-122.5, 37.7, 0]]
    return w.api.agency.RegisterDepartment(
        agency_pb2.RegisterDepartmentRequest(
            department_name="NaN PD",
            jurisdiction_geojson=json.dumps({"type": "Polygon", "coordinates": [ring]}),
            agency_type=agency_pb2.AGENCY_TYPE_POLICE_DEPARTMENT,
        ),
        metadata=(await w.admin()).md,
    )


def update_first_name(value: str) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        me = await w.person()
        return w.api.users.UpdateUser(
            users_pb2.UpdateUserRequest(
                user=users_pb2.User(id=me.id, first_name=value), update_mask=mask("first_name")
            ),
            metadata=me.md,
        )

    return case


async def update_user_bad_id(w: World) -> Awaitable[Any]:
    me = await w.person()
    return w.api.users.UpdateUser(
        users_pb2.UpdateUserRequest(user=users_pb2.User(id="garbage", first_name="A"), update_mask=mask("first_name")),
        metadata=me.md,
    )


def submit_kyc(**fields: str) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        kyc = {
            "document_type": "passport",
            "document_number": "X1234567",
            "full_legal_name": "Ada Lovelace",
            "date_of_birth": "1990-01-01",
            "issuing_country": "GB",
        }
        kyc.update(fields)
        return w.api.users.SubmitKyc(
            users_pb2.SubmitKycRequest(kyc=users_pb2.KycData(**kyc)), metadata=(await w.person()).md
        )

    return case


async def record_event_type_newline(w: World) -> Awaitable[Any]:
    return w.api.analytics.RecordEvents(
        analytics_pb2.RecordEventsRequest(events=[analytics_pb2.AnalyticsEvent(event_type="click\n")]),
        metadata=(await w.person()).md,
    )


async def report_interval_nanos(w: World) -> Awaitable[Any]:
    req = analytics_pb2.GetIncidentReportRequest()
    req.start_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    req.end_time.FromDatetime(datetime.now(UTC))
    req.interval.seconds, req.interval.nanos = 7200, 2_000_000_000
    return w.api.analytics.GetIncidentReport(req, metadata=(await w.dispatcher()).md)


async def department_ack_timeout_nanos(w: World) -> Awaitable[Any]:
    req = agency_pb2.RegisterDepartmentRequest(
        department_name="Odd PD",
        jurisdiction_geojson=json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}),
    )
    req.ack_timeout.seconds, req.ack_timeout.nanos = 30, -5
    return w.api.agency.RegisterDepartment(req, metadata=(await w.admin()).md)


async def list_incidents_bad_department(w: World) -> Awaitable[Any]:
    return w.api.agency.ListIncidents(
        agency_pb2.ListIncidentsRequest(department_id="garbage"), metadata=(await w.dispatcher()).md
    )


# An edge spanning 180 degrees of longitude has no single great circle: PostGIS refuses
# any distance to it, so such an area would break routing for everyone.
ANTIPODAL_EDGE = json.dumps({"type": "Polygon", "coordinates": [[[-90, 0], [90, 0], [90, 10], [-90, 10], [-90, 0]]]})
# A coordinate no float can hold, written as a JSON integer.
HUGE_INT_COORDINATE = (
    '{"type":"Polygon","coordinates":[[[' + "1" + "0" * 400 + ",0],[1,0],[1,1],[0,1],[" + "1" + "0" * 400 + ",0]]]}"
)


def department_area(area: str, agency_type: int = agency_pb2.AGENCY_TYPE_SECURITY_AGENCY) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        return w.api.agency.RegisterDepartment(
            agency_pb2.RegisterDepartmentRequest(
                department_name="Wide Guards", jurisdiction_geojson=area, agency_type=agency_type
            ),
            metadata=(await w.admin()).md,
        )

    return case


def provider_area(area: str) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        owner, prov = await w.provider()
        return w.api.providers.UpdateProvider(
            providers_pb2.UpdateProviderRequest(
                provider=providers_pb2.Provider(id=prov.id, service_area_geojson=area),
                update_mask=mask("service_area_geojson"),
            ),
            metadata=owner.md,
        )

    return case


def department_webhook(url: str) -> Case:
    async def case(w: World) -> Awaitable[Any]:
        return w.api.agency.RegisterDepartment(
            agency_pb2.RegisterDepartmentRequest(
                department_name="Hook PD",
                jurisdiction_geojson=json.dumps(
                    {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
                ),
                webhook_url=url,
            ),
            metadata=(await w.admin()).md,
        )

    return case


async def provider_deep_geojson(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=prov.id, service_area_geojson=DEEP_JSON),
            update_mask=mask("service_area_geojson"),
        ),
        metadata=owner.md,
    )


async def provider_huge_geojson(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    ring = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]] * 40_000 + [[0.0, 0.0]]
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(
                id=prov.id, service_area_geojson=json.dumps({"type": "Polygon", "coordinates": [ring]})
            ),
            update_mask=mask("service_area_geojson"),
        ),
        metadata=owner.md,
    )


async def ack_huge_event_id(w: World) -> Awaitable[Any]:
    return w.api.agency.AckDispatchEvent(
        agency_pb2.AckDispatchEventRequest(event_id=HUGE_EVENT_ID), metadata=(await w.department()).md
    )


async def ack_unicode_digits(w: World) -> Awaitable[Any]:
    return w.api.agency.AckDispatchEvent(
        agency_pb2.AckDispatchEventRequest(event_id="\u00b2-0"), metadata=(await w.department()).md
    )


async def watch_huge_resume(w: World) -> Awaitable[Any]:
    call = w.api.agency.WatchDispatch(
        agency_pb2.WatchDispatchRequest(resume_after_event_id=HUGE_EVENT_ID),
        metadata=(await w.department()).md,
        timeout=DEADLINE,
    )
    return one_message(call)


async def stream_huge_resume(w: World) -> Awaitable[Any]:
    dept = await w.department()

    async def requests() -> AsyncIterator[agency_pb2.StreamDispatchRequest]:
        yield agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe(resume_after_event_id=HUGE_EVENT_ID))

    call = agency_pb2_grpc.AgencyServiceStub(w.api.channel).StreamDispatch(
        requests(), metadata=dept.md, timeout=DEADLINE
    )
    return one_message(call)


async def provider_schedule_flood(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    window = providers_pb2.AvailabilityWindow(day_of_week=1, start_time="08:00", end_time="18:00")
    body = providers_pb2.Provider(id=prov.id, availability_schedule=[window] * 100_000)
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(provider=body, update_mask=mask("availability_schedule")),
        metadata=owner.md,
    )


async def update_user_contact_flood(w: World) -> Awaitable[Any]:
    """Thousands of bad entries: the answer names a few, and still fits in a trailer."""
    me = await w.person()
    contacts = [users_pb2.EmergencyContact(name=NUL, phone="12")] * 5_000
    return w.api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=me.id, emergency_contacts=contacts), update_mask=mask("emergency_contacts")
        ),
        metadata=me.md,
    )


async def provider_pricing_flood(w: World) -> Awaitable[Any]:
    owner, prov = await w.provider()
    rate = providers_pb2.ServiceRate(service_type=GUARD, hourly_rate=common_pb2.Money(currency_code="USD", units=5))
    body = providers_pb2.Provider(id=prov.id, pricing=providers_pb2.Pricing(rates=[rate] * 50_000))
    return w.api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(provider=body, update_mask=mask("pricing")), metadata=owner.md
    )


async def list_providers_nan_rating(w: World) -> Awaitable[Any]:
    return w.api.providers.ListProviders(
        providers_pb2.ListProvidersRequest(min_rating=float("nan")), metadata=(await w.person()).md
    )


async def sign_in_long_password(w: World) -> Awaitable[Any]:
    me = await w.person()
    return w.api.auth.SignIn(auth_pb2.SignInRequest(email=me.user.email, password="Aa1!" * 1000))


CASES: list[Any] = [
    pytest.param(sign_up_first_name, "first_name", id="SignUp.first_name-nul"),
    pytest.param(sign_up_email, "email", id="SignUp.email-nul"),
    pytest.param(sign_up_last_name_control, "last_name", id="SignUp.last_name-escape"),
    pytest.param(sign_in_email, "email", id="SignIn.email-nul"),
    pytest.param(update_user_first_name, "user.first_name", id="UpdateUser.first_name-nul"),
    pytest.param(update_user_contact_name, "user.emergency_contacts[0].name", id="UpdateUser.contact-nul"),
    pytest.param(suspend_user_reason, "reason", id="SuspendUser.reason-nul"),
    pytest.param(verify_user_note, "note", id="VerifyUser.note-nul"),
    pytest.param(raise_sos_description, "description", id="RaiseSos.description-nul"),
    pytest.param(raise_sos_metadata_key, "metadata", id="RaiseSos.metadata-key-nul"),
    pytest.param(raise_sos_metadata_value, "metadata[floor]", id="RaiseSos.metadata-value-nul"),
    pytest.param(raise_sos_address, "location.address", id="RaiseSos.address-nul"),
    pytest.param(cancel_sos_reason, "reason", id="CancelSos.reason-nul"),
    pytest.param(create_provider_company, "provider.company_name", id="CreateProvider.company_name-nul"),
    pytest.param(update_provider_description, "provider.description", id="UpdateProvider.description-nul"),
    pytest.param(update_provider_insurer, "provider.insurance.insurer", id="UpdateProvider.insurer-nul"),
    pytest.param(
        insurance_coverage(currency_code="U" * 100_000, units=1_000_000),
        "provider.insurance.coverage.currency_code",
        id="UpdateProvider.coverage-currency-long",
    ),
    pytest.param(
        insurance_coverage(currency_code="\x00SD", units=1_000_000),
        "provider.insurance.coverage.currency_code",
        id="UpdateProvider.coverage-currency-nul",
    ),
    pytest.param(
        insurance_coverage(currency_code="USD", units=-5, nanos=2_000_000_000),
        "provider.insurance.coverage.nanos",
        id="UpdateProvider.coverage-nanos",
    ),
    pytest.param(
        insurance_coverage(currency_code="USD", units=-5),
        "provider.insurance.coverage",
        id="UpdateProvider.coverage-negative",
    ),
    pytest.param(verify_provider_note, "note", id="VerifyProvider.note-nul"),
    pytest.param(create_booking_instructions(NUL), "special_instructions", id="CreateBooking.instructions-nul"),
    # Text of nothing but a control character is refused as such, not stored or
    # answered as a database error.
    pytest.param(create_booking_instructions("\x00"), "special_instructions", id="CreateBooking.instructions-lone-nul"),
    pytest.param(
        create_booking_instructions("\x01"), "special_instructions", id="CreateBooking.instructions-lone-control"
    ),
    pytest.param(cancel_booking_reason, "reason", id="CancelBooking.reason-nul"),
    pytest.param(register_department_name, "department_name", id="RegisterDepartment.name-nul"),
    pytest.param(register_department_webhook, "webhook_url", id="RegisterDepartment.webhook_url-nul"),
    pytest.param(issue_api_key_label, "label", id="IssueApiKey.label-nul"),
    pytest.param(decline_sos_reason, "reason", id="DeclineSosAlert.reason-nul"),
    pytest.param(update_incident_unit, "assigned_unit", id="UpdateIncident.assigned_unit-nul"),
    pytest.param(search_providers_query, "query", id="SearchProviders.query-nul"),
    pytest.param(search_providers_tag, "tags", id="SearchProviders.tags-nul"),
    pytest.param(search_incidents_query, "query", id="SearchIncidents.query-nul"),
    pytest.param(raise_sos_time, "location.time", id="RaiseSos.location.time-range"),
    pytest.param(share_location_time, "location.time", id="ShareLocation.location.time-nanos"),
    pytest.param(share_location_zero_date, "location.time", id="ShareLocation.location.time-zero-date"),
    pytest.param(raise_sos_zero_date, "location.time", id="RaiseSos.location.time-zero-date"),
    pytest.param(incident_report_zero_date, "start_time", id="GetIncidentReport.start_time-zero-date"),
    pytest.param(provider_duty_time, "location.time", id="UpdateProviderDuty.location.time-range"),
    pytest.param(booking_start_time, "start_time", id="CreateBooking.start_time-nanos"),
    pytest.param(insurance_expire_time, "provider.insurance.expire_time", id="UpdateProvider.expire_time-range"),
    pytest.param(search_incidents_start, "start_time", id="SearchIncidents.start_time-range"),
    pytest.param(search_incidents_end, "end_time", id="SearchIncidents.end_time-nanos"),
    pytest.param(department_deep_geojson, "jurisdiction_geojson", id="RegisterDepartment.geojson-deep"),
    pytest.param(department_nan_altitude, "jurisdiction_geojson", id="RegisterDepartment.geojson-nan-altitude"),
    pytest.param(provider_deep_geojson, "provider.service_area_geojson", id="UpdateProvider.geojson-deep"),
    pytest.param(provider_huge_geojson, "provider.service_area_geojson", id="UpdateProvider.geojson-huge"),
    pytest.param(department_area(ANTIPODAL_EDGE), "jurisdiction_geojson", id="RegisterDepartment.geojson-antipodal"),
    pytest.param(
        department_area(HUGE_INT_COORDINATE), "jurisdiction_geojson", id="RegisterDepartment.geojson-huge-int"
    ),
    pytest.param(provider_area(ANTIPODAL_EDGE), "provider.service_area_geojson", id="UpdateProvider.geojson-antipodal"),
    pytest.param(
        provider_area(HUGE_INT_COORDINATE), "provider.service_area_geojson", id="UpdateProvider.geojson-huge-int"
    ),
    pytest.param(department_webhook("https://[::1"), "webhook_url", id="RegisterDepartment.webhook_url-bad-ipv6"),
    pytest.param(department_webhook("https://[zz]/hook"), "webhook_url", id="RegisterDepartment.webhook_url-not-ip"),
    pytest.param(
        department_webhook("https://a\uff0fb.example/hook"), "webhook_url", id="RegisterDepartment.webhook_url-nfkc"
    ),
    pytest.param(
        department_webhook("https://cad.example:99999/hook"), "webhook_url", id="RegisterDepartment.webhook_url-port"
    ),
    pytest.param(
        department_webhook("https://exa mple.com/hook"), "webhook_url", id="RegisterDepartment.webhook_url-space"
    ),
    pytest.param(
        department_webhook("https://user:pw@cad.example/hook"),
        "webhook_url",
        id="RegisterDepartment.webhook_url-credentials",
    ),
    pytest.param(ack_huge_event_id, "event_id", id="AckDispatchEvent.event_id-huge"),
    pytest.param(ack_unicode_digits, "event_id", id="AckDispatchEvent.event_id-unicode-digits"),
    pytest.param(watch_huge_resume, "resume_after_event_id", id="WatchDispatch.resume-huge"),
    pytest.param(stream_huge_resume, "subscribe.resume_after_event_id", id="StreamDispatch.resume-huge"),
    pytest.param(provider_schedule_flood, "provider.availability_schedule", id="UpdateProvider.schedule-flood"),
    pytest.param(update_user_contact_flood, "user.emergency_contacts", id="UpdateUser.contacts-flood"),
    pytest.param(provider_pricing_flood, "provider.pricing.rates", id="UpdateProvider.rates-flood"),
    pytest.param(list_providers_nan_rating, "min_rating", id="ListProviders.min_rating-nan"),
    pytest.param(sign_in_long_password, "password", id="SignIn.password-long"),
    pytest.param(update_first_name("\u200b"), "user.first_name", id="UpdateUser.first_name-invisible"),
    pytest.param(update_first_name("Ann\x9b2J"), "user.first_name", id="UpdateUser.first_name-c1-escape"),
    pytest.param(update_first_name("Ann\u202eevil"), "user.first_name", id="UpdateUser.first_name-bidi-override"),
    pytest.param(update_first_name("Ann\u2028Lee"), "user.first_name", id="UpdateUser.first_name-line-separator"),
    pytest.param(update_user_bad_id, "user.id", id="UpdateUser.user.id-garbage"),
    pytest.param(
        submit_kyc(date_of_birth="\uff11\uff19\uff19\uff10-01-01"), "kyc.date_of_birth", id="SubmitKyc.dob-fullwidth"
    ),
    pytest.param(submit_kyc(date_of_birth="2000-1-1"), "kyc.date_of_birth", id="SubmitKyc.dob-short"),
    pytest.param(submit_kyc(issuing_country="\u00df"), "kyc.issuing_country", id="SubmitKyc.country-sharp-s"),
    pytest.param(
        insurance_coverage(currency_code="USD\n", units=1_000_000),
        "provider.insurance.coverage.currency_code",
        id="UpdateProvider.coverage-currency-newline",
    ),
    pytest.param(record_event_type_newline, "events[0].event_type", id="RecordEvents.event_type-newline"),
    pytest.param(report_interval_nanos, "interval", id="GetIncidentReport.interval-nanos"),
    pytest.param(department_ack_timeout_nanos, "ack_timeout", id="RegisterDepartment.ack_timeout-nanos"),
    pytest.param(list_incidents_bad_department, "department_id", id="ListIncidents.department_id-garbage"),
]


async def expect_invalid(call: Awaitable[Any], field: str) -> ErrorDetails:
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field in err.fields, f"expected a violation of {field!r}, got {err.fields}"
    assert "Traceback" not in err.message
    assert "\x00" not in err.message
    return err


@pytest.mark.parametrize(("case", "field"), CASES)
async def test_bad_input_is_invalid_argument_naming_the_field(api: Api, case: Case, field: str) -> None:
    call = await case(World(api))
    await expect_invalid(call, field)


async def test_areas_with_altitudes_are_accepted_and_stored_flat(api: Api) -> None:
    """GeoJSON allows a third number (altitude) in a position; areas here are 2-D, so it
    is dropped, and routing and the provider's area work as without it."""
    lat, lng = SF
    ring = [
        [lng - 0.2, lat - 0.2, 10],
        [lng + 0.2, lat - 0.2, 12],
        [lng + 0.2, lat + 0.2, 9],
        [lng - 0.2, lat + 0.2, 0],
    ]
    area = json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]})
    admin = await api.admin()
    dept = (
        await api.agency.RegisterDepartment(
            agency_pb2.RegisterDepartmentRequest(
                department_name="Hill PD",
                jurisdiction_geojson=area,
                agency_type=agency_pb2.AGENCY_TYPE_POLICE_DEPARTMENT,
            ),
            metadata=admin.md,
        )
    ).department
    assert position_lengths(dept.jurisdiction_geojson) == {2}
    alert = await raise_sos(api, await api.sign_up(), SF)
    assert alert.assigned_agency_id == dept.id

    owner, prov = await api.verified_provider(admin)
    updated = await api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=prov.id, service_area_geojson=area),
            update_mask=mask("service_area_geojson"),
        ),
        metadata=owner.md,
    )
    assert position_lengths(updated.provider.service_area_geojson) == {2}


def position_lengths(geojson: str) -> set[int]:
    area = json.loads(geojson)
    polygons = [area["coordinates"]] if area["type"] == "Polygon" else area["coordinates"]
    return {len(pos) for polygon in polygons for ring in polygon for pos in ring}


async def test_multi_line_text_keeps_tabs_and_newlines(api: Api) -> None:
    """Only control characters are refused: a description may have line breaks."""
    person = await api.sign_up()
    text = "second floor\n\tback door"
    alert = (
        await api.sos.RaiseSos(
            sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), description=text, location=located()),
            metadata=person.md,
        )
    ).alert
    assert alert.description == text


async def test_a_value_the_database_refuses_is_invalid_argument_even_where_validation_missed_it(api: Api) -> None:
    """The unit of work's safety net: PostgreSQL's "this value cannot be stored" errors
    are the request's fault (INVALID_ARGUMENT naming the request), never INTERNAL."""
    for sql, value in (
        ("SELECT $1::text", "x\x00y"),
        ("SELECT $1::jsonb", {"k": "x\x00y"}),
        ("SELECT $1::int8", 10**30),
    ):
        with pytest.raises(InvalidArgument) as refused:
            async with api.app.db.unit_of_work() as uow:
                await uow.conn.fetchval(sql, value)
        assert refused.value.violations[0].field == "request"


# Page tokens ---------------------------------------------------------------------------


def tampered(token: str) -> str:
    """The token with its cursor replaced, everything else (any signature) kept."""
    body, dot, rest = token.partition(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["c"] = ["not-a-time", "not-a-uuid"] if len(data["c"]) == 2 else [2**70]
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    return forged + dot + rest


async def _two_users(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    admin = await w.admin()
    await w.person()

    def call(token: str) -> Awaitable[Any]:
        return w.api.users.ListUsers(users_pb2.ListUsersRequest(page_size=1, page_token=token), metadata=admin.md)

    return call, "next_page_token"


async def _two_alerts(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    admin = await w.admin()
    for _ in range(2):
        await raise_sos(w.api, await w.api.sign_up(), SF)

    def call(token: str) -> Awaitable[Any]:
        return w.api.sos.ListSosAlerts(sos_pb2.ListSosAlertsRequest(page_size=1, page_token=token), metadata=admin.md)

    return call, "next_page_token"


async def _two_bookings(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    person = await w.person()
    _, prov = await w.provider()
    for hours in (48, 72):
        await w.api.bookings.CreateBooking(booking_request(prov.id, hours), metadata=person.md)

    def call(token: str) -> Awaitable[Any]:
        return w.api.bookings.ListBookings(
            bookings_pb2.ListBookingsRequest(page_size=1, page_token=token), metadata=person.md
        )

    return call, "next_page_token"


async def _two_incidents(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    dispatcher = await w.dispatcher()
    for _ in range(2):
        await raise_sos(w.api, await w.api.sign_up(), SF)

    def call(token: str) -> Awaitable[Any]:
        return w.api.agency.ListIncidents(
            agency_pb2.ListIncidentsRequest(page_size=1, page_token=token), metadata=dispatcher.md
        )

    return call, "next_page_token"


async def _two_departments(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    admin = await w.admin()
    await register_department(w.api, admin, SF, name="North PD")
    await register_department(w.api, admin, SF, name="South PD")

    def call(token: str) -> Awaitable[Any]:
        return w.api.agency.ListDepartments(
            agency_pb2.ListDepartmentsRequest(page_size=1, page_token=token), metadata=admin.md
        )

    return call, "next_page_token"


async def _two_api_keys(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    admin = await w.admin()
    dept = await w.department()
    await w.api.agency.IssueApiKey(
        agency_pb2.IssueApiKeyRequest(department_id=dept.id, label="cad-2"), metadata=admin.md
    )

    def call(token: str) -> Awaitable[Any]:
        return w.api.agency.ListApiKeys(
            agency_pb2.ListApiKeysRequest(department_id=dept.id, page_size=1, page_token=token), metadata=admin.md
        )

    return call, "next_page_token"


async def _two_providers(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    admin = await w.admin()
    await w.api.verified_provider(admin, company="North Guards")
    await w.api.verified_provider(admin, company="South Guards")
    person = await w.person()

    def call(token: str) -> Awaitable[Any]:
        return w.api.providers.ListProviders(
            providers_pb2.ListProvidersRequest(page_size=1, page_token=token), metadata=person.md
        )

    return call, "next_page_token"


async def _two_locations(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    person = await w.person()
    alert = await raise_sos(w.api, person, SF)

    async def requests() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        for _ in range(3):
            yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=located())

    await w.api.sos.ShareLocation(requests(), metadata=person.md)

    def call(token: str) -> Awaitable[Any]:
        return w.api.sos.ListAlertLocations(
            sos_pb2.ListAlertLocationsRequest(alert_id=alert.id, page_size=1, page_token=token), metadata=person.md
        )

    return call, "next_page_token"


async def _two_scores(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    person = await w.person()
    # Alerts in two grid cells 2 km apart, each scored once.
    spots = [SF, (SF[0] + 0.018, SF[1])]
    for spot in spots:
        await raise_sos(w.api, await w.api.sign_up(), spot)
        await w.api.analytics.GetSafetyScore(
            analytics_pb2.GetSafetyScoreRequest(location=common_pb2.LatLng(latitude=spot[0], longitude=spot[1])),
            metadata=person.md,
        )
    near = common_pb2.LatLng(latitude=SF[0], longitude=SF[1])

    def call(token: str) -> Awaitable[Any]:
        return w.api.analytics.ListSafetyScores(
            analytics_pb2.ListSafetyScoresRequest(near=near, radius_m=5000, page_size=1, page_token=token),
            metadata=person.md,
        )

    return call, "next_page_token"


async def _search_providers(w: World) -> tuple[Callable[[str], Awaitable[Any]], Any]:
    admin = await w.admin()
    await w.api.verified_provider(admin, company="North Guards")
    await w.api.verified_provider(admin, company="South Guards")
    person = await w.person()

    def call(token: str) -> Awaitable[Any]:
        return w.api.search.SearchProviders(
            search_pb2.SearchProvidersRequest(page_size=1, page_token=token), metadata=person.md
        )

    return call, "next_page_token"


LISTINGS = [
    pytest.param(_two_users, id="ListUsers"),
    pytest.param(_two_alerts, id="ListSosAlerts"),
    pytest.param(_two_bookings, id="ListBookings"),
    pytest.param(_two_incidents, id="ListIncidents"),
    pytest.param(_two_departments, id="ListDepartments"),
    pytest.param(_two_api_keys, id="ListApiKeys"),
    pytest.param(_two_providers, id="ListProviders"),
    pytest.param(_two_locations, id="ListAlertLocations"),
    pytest.param(_two_scores, id="ListSafetyScores"),
    pytest.param(_search_providers, id="SearchProviders"),
]


@pytest.mark.parametrize("listing", LISTINGS)
async def test_page_tokens_the_server_did_not_issue_are_invalid(api: Api, listing: Any) -> None:
    call, field = await listing(World(api))
    first = await call("")
    token = getattr(first, field)
    assert token, "the listing has a second page"
    second = await call(token)  # the genuine token works
    assert second is not None
    for forged in (tampered(token), token[:-2], token + "AA", "e30", "W10"):
        await expect_invalid(call(forged), "page_token")


async def test_page_tokens_continue_on_another_replica(api: Api) -> None:
    """Replicas share SECURENOW_SECRET_KEY, so a listing begun on one continues on another."""
    admin = await api.admin()
    for _ in range(2):
        await api.sign_up()
    first = await api.users.ListUsers(users_pb2.ListUsersRequest(page_size=2), metadata=admin.md)
    assert first.next_page_token
    async with (
        extra_replica("paging-b") as rt,
        grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as other,
    ):
        rest = await users_pb2_grpc.UserServiceStub(other).ListUsers(
            users_pb2.ListUsersRequest(page_size=2, page_token=first.next_page_token), metadata=admin.md
        )
    ids = [u.id for u in [*first.users, *rest.users]]
    assert len(ids) == len(set(ids)) == 3
    assert not rest.next_page_token
    # What makes that work across processes too: the tag depends on the settings' secret only.
    body, _, tag = first.next_page_token.partition(".")
    key = make_settings().derived_key("page-token")
    expected = hmac.new(key, base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), hashlib.sha256).digest()[:16]
    assert tag == base64.urlsafe_b64encode(expected).decode().rstrip("=")


# Bytes that are not a protobuf message -------------------------------------------------

# A length-delimited field 1 claiming 100 bytes that are not there.
TRUNCATED = b"\x0a\x64abc"


async def test_undecodable_unary_request_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    sign_in = channel.unary_unary("/securenow.v1.AuthService/SignIn", request_serializer=None)
    err = await expect_invalid(sign_in(TRUNCATED, timeout=DEADLINE), "request")
    assert "DecodeError" not in err.message
    assert "Unexpected" not in err.message
    # The server still answers well-formed calls afterwards.
    await expect_error(
        channel.unary_unary("/securenow.v1.AuthService/SignIn", request_serializer=None)(
            auth_pb2.SignInRequest(email="nobody@example.com", password=PASSWORD).SerializeToString(),
            timeout=DEADLINE,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_undecodable_message_in_a_request_stream_is_invalid_argument(api: Api, channel: grpc.aio.Channel) -> None:
    person = await api.sign_up()
    share = channel.stream_unary("/securenow.v1.SosService/ShareLocation", request_serializer=None)

    async def requests() -> AsyncIterator[bytes]:
        yield sos_pb2.ShareLocationRequest(location=located()).SerializeToString()
        yield TRUNCATED

    await expect_invalid(share(requests(), metadata=person.md, timeout=DEADLINE), "request")


async def test_undecodable_message_in_a_dispatch_stream_is_invalid_argument(
    api: Api, channel: grpc.aio.Channel
) -> None:
    """StreamDispatch reads commands in a task that ends quietly on errors; the bad
    message still ends the call with INVALID_ARGUMENT."""
    dept = await register_department(api, await api.admin(), SF)
    stream = channel.stream_stream("/securenow.v1.AgencyService/StreamDispatch", request_serializer=None)
    sent_garbage = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe()).SerializeToString()
        yield TRUNCATED
        sent_garbage.set()
        await asyncio.Event().wait()  # keep the request side open: the server must end the call

    await expect_invalid(drain(stream(requests(), metadata=dept.md, timeout=DEADLINE)), "request")
    assert sent_garbage.is_set()


async def test_undecodable_server_stream_request_is_invalid_argument(api: Api, channel: grpc.aio.Channel) -> None:
    person = await api.sign_up()
    watch = channel.unary_stream("/securenow.v1.SosService/WatchSos", request_serializer=None)
    await expect_invalid(one_message(watch(TRUNCATED, metadata=person.md, timeout=DEADLINE)), "request")


# Where a call came from ----------------------------------------------------------------


def _access_lines(records: list[logging.LogRecord], rpc: str) -> list[tuple[str, str | None]]:
    return [
        (r.__dict__["peer"], r.__dict__["via"])
        for r in records
        if r.name == "securenow.access" and r.__dict__.get("rpc") == rpc
    ]


LOOPBACK = ("ipv4:127.0.0.1:", "ipv6:[::1]:")


async def test_access_log_names_the_forwarded_client_of_a_loopback_gateway(
    runtime: Runtime, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded gRPC-Web gateway connects from loopback and sets x-forwarded-for to
    the browser's address; the access log shows that address (the last hop), with the
    gateway's own socket as `via`. A header that is no address is ignored."""
    caplog.set_level(logging.INFO, logger="securenow.access")
    method = "/securenow.v1.AuthService/SignIn"
    request = auth_pb2.SignInRequest(email="nobody@example.com", password=PASSWORD)
    await expect_error(
        api.auth.SignIn(request, metadata=(("x-forwarded-for", "198.51.100.9, 203.0.113.7"),)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect_error(api.auth.SignIn(request), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        api.auth.SignIn(request, metadata=(("x-forwarded-for", "not an address"),)), grpc.StatusCode.UNAUTHENTICATED
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{runtime.http_port}{method}",
            data=frame(0, request.SerializeToString()),
            headers={"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"},
        ) as resp,
    ):
        await resp.read()

    # The line is written as the call ends, which may be just after the client has its answer.
    async def all_logged() -> list[tuple[str, str | None]] | None:
        lines = _access_lines(caplog.records, method)
        return lines if len(lines) >= 4 else None

    lines = await wait_for(all_logged, within=DEADLINE, what="four access-log lines")
    assert len(lines) == 4
    forwarded, direct, bogus, browser = lines
    assert forwarded[0] == "203.0.113.7"
    assert forwarded[1] is not None
    assert forwarded[1].startswith(LOOPBACK)
    for peer, via in (direct, bogus):
        assert peer.startswith(LOOPBACK)
        assert via is None
    assert browser[0] == "127.0.0.1"  # the browser's address as the gateway saw it
    assert browser[1] is not None
    assert browser[1].startswith(LOOPBACK)
