"""Who must be refused what, written down by hand from what the product allows (the
protos' comments, docs/) and checked against the running server for every RPC of
every securenow.v1 service found in the generated descriptors.

The table is deliberately not derived from transport/access.py: a wrong change there
(an admin-only RPC opened to any user, say) must fail here. An RPC that exists in the
protos but not in the table fails too, so every new RPC gets classified.

Each refusal is called with an otherwise empty request and must be the access gate's
own refusal (PERMISSION_DENIED with the interceptor's message), not a service's later
check: the services check some roles themselves too (defence in depth), which must
not hide a gate that lets the caller through.
"""

from __future__ import annotations

import asyncio
import pkgutil
from collections.abc import AsyncIterator
from enum import StrEnum
from importlib import import_module
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

import securenow.v1
from securenow.v1 import agency_pb2, users_pb2
from tests.dispatch_helpers import LA, SF, dispatcher_of, register_department
from tests.helpers import Api, error_details, unique_email


class Caller(StrEnum):
    """Kinds of authenticated callers (the value is the role the gate names)."""

    USER = "user"
    PROVIDER = "provider"
    POLICE = "police"  # a police dispatcher account (member of a department)
    SECURITY_AGENCY = "security_agency"  # a security agency's dispatcher account
    ADMIN = "admin"
    API_KEY = "api_key"  # an agency's CAD API key


EVERYONE = frozenset(Caller)
NOBODY: frozenset[Caller] = frozenset()
API_KEYS = frozenset({Caller.API_KEY})  # any signed-in person, but not API keys
ALL_BUT_ADMINS = EVERYONE - {Caller.ADMIN}
ALL_BUT_PROVIDERS = EVERYONE - {Caller.PROVIDER}
ALL_BUT_PROVIDERS_AND_ADMINS = EVERYONE - {Caller.PROVIDER, Caller.ADMIN}
ALL_BUT_CUSTOMERS = EVERYONE - {Caller.USER, Caller.PROVIDER}  # users and providers book
CUSTOMERS = frozenset({Caller.USER, Caller.PROVIDER})  # refused agency reads and dispatch
CUSTOMERS_AND_ADMINS = CUSTOMERS | {Caller.ADMIN}  # refused what only agencies do

# SignUp, SignIn and RefreshToken need no credentials; every other RPC does.
PUBLIC = frozenset({"AuthService/SignUp", "AuthService/SignIn", "AuthService/RefreshToken"})

# "Service/Method" -> the callers that must be refused.
REFUSED: dict[str, frozenset[Caller]] = {
    "AuthService/SignUp": NOBODY,
    "AuthService/SignIn": NOBODY,
    "AuthService/RefreshToken": NOBODY,
    "AuthService/SignOut": API_KEYS,
    # Users read and change themselves; admins manage everyone.
    "UserService/GetUser": API_KEYS,
    "UserService/UpdateUser": API_KEYS,
    "UserService/DeleteUser": API_KEYS,
    "UserService/SubmitKyc": API_KEYS,
    "UserService/GetKyc": API_KEYS,
    "UserService/ListUsers": ALL_BUT_ADMINS,
    "UserService/SuspendUser": ALL_BUT_ADMINS,
    "UserService/ReinstateUser": ALL_BUT_ADMINS,
    "UserService/VerifyUser": ALL_BUT_ADMINS,
    "UserService/SetUserRole": ALL_BUT_ADMINS,
    # Provider accounts run their provider; admins verify; anyone may look.
    "ProviderService/CreateProvider": ALL_BUT_PROVIDERS,
    "ProviderService/GetProvider": NOBODY,
    "ProviderService/UpdateProvider": ALL_BUT_PROVIDERS,
    "ProviderService/ListProviders": API_KEYS,
    "ProviderService/VerifyProvider": ALL_BUT_ADMINS,
    "ProviderService/UpdateProviderDuty": ALL_BUT_PROVIDERS,
    "ProviderService/SearchNearbyProviders": NOBODY,
    # Customers book; the provider (or an admin) moves a booking along; admins record payments.
    "BookingService/CreateBooking": ALL_BUT_CUSTOMERS,
    "BookingService/GetBooking": API_KEYS,
    "BookingService/ListBookings": API_KEYS,
    "BookingService/ConfirmBooking": ALL_BUT_PROVIDERS_AND_ADMINS,
    "BookingService/StartBooking": ALL_BUT_PROVIDERS_AND_ADMINS,
    "BookingService/CompleteBooking": ALL_BUT_PROVIDERS_AND_ADMINS,
    "BookingService/CancelBooking": API_KEYS,
    "BookingService/UpdateBookingPaymentStatus": ALL_BUT_ADMINS,
    "BookingService/ReviewBooking": ALL_BUT_CUSTOMERS,
    # Anyone signed in raises and follows their alert; agencies (keys too) read theirs.
    "SosService/RaiseSos": API_KEYS,
    "SosService/GetSosAlert": NOBODY,
    "SosService/ListSosAlerts": NOBODY,
    "SosService/CancelSos": API_KEYS,
    "SosService/ShareLocation": API_KEYS,
    "SosService/WatchSos": NOBODY,
    "SosService/ListAlertLocations": NOBODY,
    # Departments and their CAD keys are the admins' alone (a key for any department
    # must never be issued by anyone else); a department reads itself.
    "AgencyService/RegisterDepartment": ALL_BUT_ADMINS,
    "AgencyService/GetDepartment": CUSTOMERS,
    "AgencyService/ListDepartments": ALL_BUT_ADMINS,
    "AgencyService/UpdateDepartment": ALL_BUT_ADMINS,
    "AgencyService/IssueApiKey": ALL_BUT_ADMINS,
    "AgencyService/RevokeApiKey": ALL_BUT_ADMINS,
    "AgencyService/ListApiKeys": ALL_BUT_ADMINS,
    # Dispatch is the agencies' work (keys and dispatchers); admins only read incidents.
    "AgencyService/StreamDispatch": CUSTOMERS_AND_ADMINS,
    "AgencyService/WatchDispatch": CUSTOMERS_AND_ADMINS,
    "AgencyService/AckDispatchEvent": CUSTOMERS_AND_ADMINS,
    "AgencyService/AcceptSosAlert": CUSTOMERS_AND_ADMINS,
    "AgencyService/DeclineSosAlert": CUSTOMERS_AND_ADMINS,
    "AgencyService/GetIncident": CUSTOMERS,
    "AgencyService/ListIncidents": CUSTOMERS,
    "AgencyService/UpdateIncident": CUSTOMERS_AND_ADMINS,
    "SearchService/SearchProviders": NOBODY,
    "SearchService/SearchIncidents": CUSTOMERS,
    # Events belong to people; scores are public to the signed in; reports to agencies.
    "AnalyticsService/RecordEvents": API_KEYS,
    "AnalyticsService/GetSafetyScore": NOBODY,
    "AnalyticsService/ListSafetyScores": NOBODY,
    "AnalyticsService/GetIncidentReport": CUSTOMERS,
}

# A call the gate let through may wait for more (a stream): this long is "not refused".
REFUSAL_WITHIN = 5.0


def proto_methods() -> dict[str, MethodDescriptor]:
    """Every RPC of every service in the generated securenow.v1 modules, by
    "Service/Method" (a new *_pb2 module is picked up without changing this test)."""
    methods: dict[str, MethodDescriptor] = {}
    for module in pkgutil.iter_modules(securenow.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = import_module(f"securenow.v1.{module.name}").DESCRIPTOR
        for service in descriptor.services_by_name.values():
            assert service.full_name.startswith("securenow.v1."), service.full_name
            for method in service.methods:
                methods[f"{service.name}/{method.name}"] = method
    return methods


METHODS = proto_methods()


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...] | None
) -> grpc.aio.AioRpcError | None:
    """Calls `method` with an empty request (one empty message on client streams) and
    returns its error, or None when it succeeded or a stream stayed open."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_cls = GetMessageClass(method.input_type)
    response_cls = GetMessageClass(method.output_type)
    ser, de = request_cls.SerializeToString, response_cls.FromString

    async def one() -> AsyncIterator[Any]:
        yield request_cls()

    rpc: Any
    match (method.client_streaming, method.server_streaming):
        case (False, False):
            rpc = channel.unary_unary(path, ser, de)(request_cls(), metadata=metadata)
            outcome = rpc
        case (False, True):
            rpc = channel.unary_stream(path, ser, de)(request_cls(), metadata=metadata)
            outcome = rpc.read()
        case (True, False):
            rpc = channel.stream_unary(path, ser, de)(one(), metadata=metadata)
            outcome = rpc
        case _:
            rpc = channel.stream_stream(path, ser, de)(one(), metadata=metadata)
            outcome = rpc.read()
    try:
        await asyncio.wait_for(outcome, REFUSAL_WITHIN)
        return None
    except grpc.aio.AioRpcError as err:
        return err
    except TimeoutError:
        return None
    finally:
        rpc.cancel()


def test_every_rpc_in_the_protos_is_classified() -> None:
    unclassified = sorted(set(METHODS) - set(REFUSED))
    assert unclassified == [], f"classify who must be refused these RPCs in REFUSED: {unclassified}"
    gone = sorted(set(REFUSED) - set(METHODS))
    assert gone == [], f"REFUSED names RPCs the protos no longer have: {gone}"
    assert all(REFUSED[name] == NOBODY for name in PUBLIC)
    # Sanity: the loop below really sees every service.
    assert {name.partition("/")[0] for name in METHODS} >= {
        "AuthService",
        "UserService",
        "ProviderService",
        "BookingService",
        "SosService",
        "AgencyService",
        "SearchService",
        "AnalyticsService",
    }


async def test_no_credentials_only_for_sign_up_sign_in_refresh_and_health(channel: grpc.aio.Channel) -> None:
    wrong = []
    for name, method in METHODS.items():
        err = await call(channel, method, None)
        details = error_details(err) if err is not None else None
        missing = details is not None and (details.code, details.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "MISSING_CREDENTIALS",
        )
        if name in PUBLIC:
            if missing or (details is not None and details.code == grpc.StatusCode.PERMISSION_DENIED):
                wrong.append(f"{name}: public, but {details}")
        elif not missing:
            wrong.append(f"{name}: without credentials gave {details or 'no error'}")
    assert wrong == []
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def callers(api: Api) -> dict[Caller, tuple[tuple[str, str], ...]]:
    """One caller of each kind: the credential metadata to call with."""
    admin = await api.admin()
    police_dept = await register_department(api, admin, SF, name="Metro PD")
    agency_dept = await register_department(
        api, admin, LA, name="LA Security", agency_type=agency_pb2.AGENCY_TYPE_SECURITY_AGENCY
    )
    police = await dispatcher_of(api, admin, police_dept)
    guard = await api.sign_up(email=unique_email("agency"))
    await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(
            user_id=guard.id, role=users_pb2.USER_ROLE_SECURITY_AGENCY, agency_id=agency_dept.id
        ),
        metadata=admin.md,
    )
    return {
        Caller.USER: (await api.sign_up()).md,
        Caller.PROVIDER: (await api.sign_up(users_pb2.USER_ROLE_PROVIDER)).md,
        Caller.POLICE: police.md,
        Caller.SECURITY_AGENCY: guard.md,
        Caller.ADMIN: admin.md,
        Caller.API_KEY: police_dept.md,
    }


def gate_refusal(kind: Caller) -> str:
    """The access gate's message refusing `kind` (interceptor.py)."""
    if kind is Caller.API_KEY:
        return "API keys cannot call this method"
    return f"role {kind.value} cannot call this method"


async def test_every_rpc_refuses_the_callers_it_must(api: Api, channel: grpc.aio.Channel) -> None:
    by_kind = await callers(api)
    checks = [(name, kind) for name, refused in REFUSED.items() for kind in sorted(refused)]
    outcomes = await asyncio.gather(*(call(channel, METHODS[name], by_kind[kind]) for name, kind in checks))
    wrong = []
    for (name, kind), err in zip(checks, outcomes, strict=True):
        details = error_details(err) if err is not None else None
        if details is None:
            wrong.append(f"{name} as {kind}: not refused")
        elif details.code != grpc.StatusCode.PERMISSION_DENIED or details.message != gate_refusal(kind):
            wrong.append(f"{name} as {kind}: {details.code.name} {details.reason} {details.message!r}")
    assert wrong == [], "\n".join(wrong)
    assert len(checks) > 100  # the table really was exercised
