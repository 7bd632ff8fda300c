"""SecureNowClient: one channel, the generated stubs behind an auth layer, and the
high-level helpers (sign-in, SOS, dispatch)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import grpc

from securenow.client.auth import Session, auth_interceptors
from securenow.client.cursor import CursorStore
from securenow.client.dispatch import RECONNECT_POLICY, DispatchConsumer
from securenow.client.errors import SecureNowError
from securenow.client.retry import RetryHook, RetryPolicy, call_with_retry
from securenow.client.sos import RAISE_POLICY, WATCH_POLICY, raise_sos, watch_sos
from securenow.v1 import (
    agency_pb2_grpc,
    analytics_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    bookings_pb2_grpc,
    common_pb2,
    providers_pb2_grpc,
    search_pb2_grpc,
    sos_pb2,
    sos_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)

if TYPE_CHECKING:
    from securenow.v1.agency_pb2_grpc import AgencyServiceAsyncStub
    from securenow.v1.analytics_pb2_grpc import AnalyticsServiceAsyncStub
    from securenow.v1.auth_pb2_grpc import AuthServiceAsyncStub
    from securenow.v1.bookings_pb2_grpc import BookingServiceAsyncStub
    from securenow.v1.providers_pb2_grpc import ProviderServiceAsyncStub
    from securenow.v1.search_pb2_grpc import SearchServiceAsyncStub
    from securenow.v1.sos_pb2_grpc import SosServiceAsyncStub
    from securenow.v1.users_pb2_grpc import UserServiceAsyncStub

LocationLike = common_pb2.Location | tuple[float, float]
#: SignUp is retried on transient failures with its one request_id.
SIGN_UP_POLICY = RetryPolicy()
#: Channel options used unless overridden: keepalive pings while calls are open, so a
#: dead connection under a long stream is noticed (the server allows pings every 5 s).
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def make_location(value: LocationLike) -> common_pb2.Location:
    """A Location from a Location message or a (latitude, longitude) pair."""
    if isinstance(value, common_pb2.Location):
        return value
    latitude, longitude = value
    return common_pb2.Location(point=common_pb2.LatLng(latitude=latitude, longitude=longitude))


class SecureNowClient:
    """A connection to a SecureNow server at "host:port".

    The stubs (`auth`, `users`, `providers`, `bookings`, `sos`, `agency`, `search`,
    `analytics`) are the generated grpc.aio stubs; every call through them carries the
    session's credentials and raises grpc.aio.AioRpcError on failure (turn it into a
    SecureNowError with SecureNowError.from_rpc_error). The helper methods raise
    SecureNowError.

    TLS: pass `root_certificates` (PEM bytes) or `tls=True` for the system roots.
    `options` are grpc channel options (they override DEFAULT_OPTIONS).
    Credentials: `sign_up`/`sign_in` (tokens refreshed automatically, `refresh_margin`
    seconds before expiry, each refresh bounded by `refresh_timeout` seconds and by
    the deadline of the call waiting for it), or `api_key` for an agency (never
    refreshed).
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        refresh_margin: float = 60.0,
        refresh_timeout: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.refresh_timeout = refresh_timeout
        self.session = Session(refresh_margin=refresh_margin)
        interceptors = auth_interceptors(self.session)
        given = {name for name, _ in options}
        options = [*(o for o in DEFAULT_OPTIONS if o[0] not in given), *options]
        if root_certificates is not None or tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel: grpc.aio.Channel = grpc.aio.secure_channel(
                target, credentials, options=list(options), interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
        self.auth = cast("AuthServiceAsyncStub", auth_pb2_grpc.AuthServiceStub(self.channel))
        self.users = cast("UserServiceAsyncStub", users_pb2_grpc.UserServiceStub(self.channel))
        self.providers = cast("ProviderServiceAsyncStub", providers_pb2_grpc.ProviderServiceStub(self.channel))
        self.bookings = cast("BookingServiceAsyncStub", bookings_pb2_grpc.BookingServiceStub(self.channel))
        self.sos = cast("SosServiceAsyncStub", sos_pb2_grpc.SosServiceStub(self.channel))
        self.agency = cast("AgencyServiceAsyncStub", agency_pb2_grpc.AgencyServiceStub(self.channel))
        self.search = cast("SearchServiceAsyncStub", search_pb2_grpc.SearchServiceStub(self.channel))
        self.analytics = cast("AnalyticsServiceAsyncStub", analytics_pb2_grpc.AnalyticsServiceStub(self.channel))
        self.session.bind(self._refresh_tokens)
        if api_key is not None:
            self.session.use_api_key(api_key)

    async def __aenter__(self) -> SecureNowClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    # Credentials ------------------------------------------------------------------------

    async def _refresh_tokens(self, request: auth_pb2.RefreshTokenRequest) -> auth_pb2.RefreshTokenResponse:
        """AuthService.RefreshToken for the session, bounded: a hung refresh would hold
        up every call waiting for it."""
        response: auth_pb2.RefreshTokenResponse = await self.auth.RefreshToken(request, timeout=self.refresh_timeout)
        return response

    async def sign_up(
        self,
        *,
        email: str,
        phone: str,
        password: str,
        first_name: str,
        last_name: str,
        role: users_pb2.UserRole.ValueType = users_pb2.USER_ROLE_USER,
        request_id: str = "",
        retry: RetryPolicy = SIGN_UP_POLICY,
    ) -> users_pb2.User:
        """Creates an account, signs it in and keeps its tokens. One request_id (uuid4
        unless given) for every attempt: a retry after a lost answer gets the account
        it created, signed in, not ALREADY_EXISTS. Transient failures are retried with
        backoff within `retry.total_timeout`; anything else raises SecureNowError."""
        request = auth_pb2.SignUpRequest(
            email=email,
            phone=phone,
            password=password,
            first_name=first_name,
            last_name=last_name,
            role=role,
            request_id=request_id or str(uuid.uuid4()),
        )

        async def attempt(attempt_timeout: float | None) -> auth_pb2.SignUpResponse:
            answer: auth_pb2.SignUpResponse = await self.auth.SignUp(request, timeout=attempt_timeout)
            return answer

        response = await call_with_retry(attempt, retry)
        self.session.store(response)
        user: users_pb2.User = response.user
        return user

    async def sign_in(self, *, password: str, email: str = "", phone: str = "") -> users_pb2.User:
        """Signs in with e-mail (or phone) and password and keeps the tokens."""
        try:
            response = await self.auth.SignIn(auth_pb2.SignInRequest(email=email, phone=phone, password=password))
        except grpc.aio.AioRpcError as exc:
            raise SecureNowError.from_rpc_error(exc) from None
        self.session.store(response)
        user: users_pb2.User = response.user
        return user

    async def sign_out(self) -> None:
        """Ends the session on the server and forgets the tokens."""
        try:
            await self.auth.SignOut(auth_pb2.SignOutRequest())
        except grpc.aio.AioRpcError as exc:
            raise SecureNowError.from_rpc_error(exc) from None
        finally:
            self.session.clear()

    def use_api_key(self, api_key: str) -> None:
        """Authenticates every further call with an agency API key."""
        self.session.use_api_key(api_key)

    async def refresh(self) -> None:
        """Refreshes the access token now (it is also refreshed automatically)."""
        await self.session.refresh()

    # SOS ------------------------------------------------------------------------------------

    async def raise_sos(
        self,
        *,
        location: LocationLike | None = None,
        description: str = "",
        priority: common_pb2.AlertPriority.ValueType = common_pb2.ALERT_PRIORITY_UNSPECIFIED,
        incident_type: common_pb2.IncidentType.ValueType = common_pb2.INCIDENT_TYPE_UNSPECIFIED,
        metadata: Mapping[str, str] | None = None,
        request_id: str = "",
        retry: RetryPolicy = RAISE_POLICY,
        on_retry: RetryHook | None = None,
    ) -> sos_pb2.SosAlert:
        """Raises an SOS. One request_id (uuid4 unless given) is used for every
        attempt; UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried with
        backoff within `retry.total_timeout`; anything else raises SecureNowError."""
        request = sos_pb2.RaiseSosRequest(
            request_id=request_id,
            description=description,
            priority=priority,
            incident_type=incident_type,
            metadata=dict(metadata or {}),
        )
        if location is not None:
            request.location.CopyFrom(make_location(location))
        return await raise_sos(self.sos, request, policy=retry, on_retry=on_retry)

    def watch_sos(
        self, alert_id: str, *, reconnect: RetryPolicy = WATCH_POLICY
    ) -> AsyncGenerator[sos_pb2.WatchSosResponse, None]:
        """Watches an alert (see securenow.client.sos.watch_sos): reconnects on
        UNAVAILABLE and ends once the alert is resolved or cancelled."""
        return watch_sos(self.sos, self.session, alert_id, policy=reconnect)

    # Dispatch -----------------------------------------------------------------------------

    def dispatch_consumer(
        self,
        cursor_store: CursorStore,
        *,
        heartbeat_interval: float = 15.0,
        receive_timeout: float | None = 60.0,
        reconnect: RetryPolicy = RECONNECT_POLICY,
    ) -> DispatchConsumer:
        """A DispatchConsumer on this client (create the client with an agency API key)."""
        return DispatchConsumer(
            self,
            cursor_store,
            heartbeat_interval=heartbeat_interval,
            receive_timeout=receive_timeout,
            reconnect=reconnect,
        )
