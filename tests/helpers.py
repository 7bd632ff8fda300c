"""Client-side helpers for the tests: stubs, accounts, error inspection, waiting."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from redis.asyncio.client import PubSub

from securenow.server.bootstrap import App
from securenow.v1 import (
    agency_pb2_grpc,
    analytics_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    bookings_pb2_grpc,
    common_pb2,
    providers_pb2,
    providers_pb2_grpc,
    search_pb2_grpc,
    sos_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)

T = TypeVar("T")
PASSWORD = "Correct-Horse-9"
_counter = itertools.count(1)


@dataclass
class Account:
    user: users_pb2.User
    access_token: str
    refresh_token: str

    @property
    def id(self) -> str:
        return self.user.id

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)


def unique_phone() -> str:
    return f"+1555{next(_counter) % 10_000_000:07d}"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


class Api:
    def __init__(self, channel: grpc.aio.Channel, app: App) -> None:
        self.channel = channel
        self.app = app
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.users = users_pb2_grpc.UserServiceStub(channel)
        self.providers = providers_pb2_grpc.ProviderServiceStub(channel)
        self.bookings = bookings_pb2_grpc.BookingServiceStub(channel)
        self.sos = sos_pb2_grpc.SosServiceStub(channel)
        self.agency = agency_pb2_grpc.AgencyServiceStub(channel)
        self.search = search_pb2_grpc.SearchServiceStub(channel)
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)

    async def sign_up(self, role: int = users_pb2.USER_ROLE_USER, **fields: Any) -> Account:
        req = auth_pb2.SignUpRequest(
            email=fields.pop("email", unique_email()),
            phone=fields.pop("phone", unique_phone()),
            first_name=fields.pop("first_name", "Test"),
            last_name=fields.pop("last_name", "Person"),
            password=fields.pop("password", PASSWORD),
            role=role,
        )
        resp = await self.auth.SignUp(req)
        return Account(resp.user, resp.access_token, resp.refresh_token)

    async def admin(self) -> Account:
        email = unique_email("admin")
        await self.app.auth.create_admin(
            email=email, password=PASSWORD, phone=unique_phone(), first_name="Ada", last_name="Admin"
        )
        resp = await self.auth.SignIn(auth_pb2.SignInRequest(email=email, password=PASSWORD))
        return Account(resp.user, resp.access_token, resp.refresh_token)

    async def verified_provider(
        self,
        admin: Account,
        *,
        rates: dict[int, int] | None = None,
        minimum_hours: int = 1,
        company: str = "Acme Guards",
        business_type: int = providers_pb2.PROVIDER_TYPE_SECURITY_GUARD,
    ) -> tuple[Account, providers_pb2.Provider]:
        owner = await self.sign_up(users_pb2.USER_ROLE_PROVIDER)
        rates = rates or {providers_pb2.SERVICE_TYPE_SECURITY_GUARD: 45}
        created = await self.providers.CreateProvider(
            providers_pb2.CreateProviderRequest(
                provider=providers_pb2.Provider(
                    company_name=company,
                    business_type=business_type,
                    license_number="LIC-1",
                    pricing=providers_pb2.Pricing(
                        rates=[
                            providers_pb2.ServiceRate(
                                service_type=s, hourly_rate=common_pb2.Money(currency_code="USD", units=u)
                            )
                            for s, u in rates.items()
                        ],
                        minimum_hours=minimum_hours,
                    ),
                )
            ),
            metadata=owner.md,
        )
        verified = await self.providers.VerifyProvider(
            providers_pb2.VerifyProviderRequest(
                provider_id=created.provider.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED
            ),
            metadata=admin.md,
        )
        return owner, verified.provider


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    fields: dict[str, str]
    metadata: dict[str, str]
    retry_delay_seconds: float | None


def error_details(err: grpc.aio.AioRpcError) -> ErrorDetails:
    reason = domain = ""
    fields: dict[str, str] = {}
    metadata: dict[str, str] = {}
    retry: float | None = None
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields = {v.field: v.description for v in bad.field_violations}
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_r = error_details_pb2.RetryInfo()
                detail.Unpack(info_r)
                retry = info_r.retry_delay.ToTimedelta().total_seconds()
    return ErrorDetails(err.code(), err.details() or "", reason, domain, fields, metadata, retry)


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, reason: str | None = None) -> ErrorDetails:
    """Awaits a call that must fail with `code` (and `reason`, when given)."""
    try:
        result = await call
    except grpc.aio.AioRpcError as err:
        details = error_details(err)
        assert details.code == code, f"expected {code.name}, got {details.code.name}: {details.message}"
        if reason is not None:
            assert details.reason == reason, f"expected reason {reason}, got {details.reason!r}: {details.message}"
        return details
    raise AssertionError(f"expected {code.name}, but the call succeeded: {result}")


async def wait_for(
    condition: Callable[[], Awaitable[T | None]], *, within: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Polls `condition` until it returns something truthy; fails after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or condition}")
        await asyncio.sleep(interval)


async def next_message(
    pubsub: PubSub, matches: Callable[[dict[str, Any]], bool], within: float = 10.0
) -> dict[str, Any]:
    """The first JSON message for which `matches` is true; fails after `within` s."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0))
        if msg is None:
            continue
        payload = json.loads(msg["data"])
        if matches(payload):
            return payload
    raise AssertionError(f"no matching message within {within} s")
