"""Credentials for every call: a user session (access + refresh token, refreshed
automatically) or an agency API key, sent as `authorization: Bearer <token>` by
client interceptors on the channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from securenow.client.errors import SecureNowError
from securenow.v1 import auth_pb2

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
#: Methods that take no credentials (and must not trigger a refresh).
PUBLIC_METHODS = frozenset(
    {
        "/securenow.v1.AuthService/SignUp",
        "/securenow.v1.AuthService/SignIn",
        "/securenow.v1.AuthService/RefreshToken",
    }
)
#: ErrorInfo reason of an UNAUTHENTICATED call whose access token expired or is invalid.
INVALID_TOKEN = "INVALID_TOKEN"

Refresher = Callable[[auth_pb2.RefreshTokenRequest], Awaitable[auth_pb2.RefreshTokenResponse]]
TokenResponse = auth_pb2.SignUpResponse | auth_pb2.SignInResponse | auth_pb2.RefreshTokenResponse


class Session:
    """The credentials a client presents. Either an API key (never refreshed) or user
    tokens: the access token is refreshed `refresh_margin` seconds before its expiry,
    and once when the server answers UNAUTHENTICATED with reason INVALID_TOKEN.
    Refresh tokens are single-use; refreshes are serialised so none is spent twice."""

    def __init__(self, *, refresh_margin: float = 60.0) -> None:
        self.refresh_margin = refresh_margin
        self._api_key: str | None = None
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0  # epoch seconds
        self._lock = asyncio.Lock()
        self._refresher: Refresher | None = None
        self._exchange: asyncio.Future[None] | None = None
        # Refresh attempts started so far, and how the latest one failed (None: it
        # succeeded): callers that queued behind an attempt share its outcome.
        self._attempts = 0
        self._failure: SecureNowError | None = None
        # The refusal that ended the session (REFRESH_TOKEN_REUSED, SESSION_ENDED...).
        self._ended: grpc.aio.AioRpcError | None = None
        self.refresh_count = 0

    # State ------------------------------------------------------------------------------

    def bind(self, refresher: Refresher) -> None:
        """Sets the function that calls AuthService.RefreshToken."""
        self._refresher = refresher

    def use_api_key(self, api_key: str) -> None:
        self._api_key, self._access, self._refresh, self._expires_at = api_key, None, None, 0.0
        self._ended = None

    def set_tokens(
        self, access_token: str, refresh_token: str, expire_time: datetime | timestamp_pb2.Timestamp | float
    ) -> None:
        """Uses these user tokens (for example restored from storage)."""
        if isinstance(expire_time, timestamp_pb2.Timestamp):
            expires_at = expire_time.seconds + expire_time.nanos / 1e9
        elif isinstance(expire_time, datetime):
            expires_at = expire_time.timestamp()
        else:
            expires_at = float(expire_time)
        self._api_key, self._access, self._refresh, self._expires_at = None, access_token, refresh_token, expires_at
        self._ended = None

    def store(self, response: TokenResponse) -> None:
        """Keeps the tokens of a SignUp, SignIn or RefreshToken response."""
        self.set_tokens(response.access_token, response.refresh_token, response.access_token_expire_time)

    def clear(self) -> None:
        self._api_key, self._access, self._refresh, self._expires_at = None, None, None, 0.0
        self._ended = None

    def expire_access_token(self) -> None:
        """Treats the access token as expired: the next call refreshes it first."""
        self._expires_at = 0.0

    @property
    def api_key(self) -> str | None:
        return self._api_key

    @property
    def access_token(self) -> str | None:
        return self._access

    @property
    def refresh_token(self) -> str | None:
        return self._refresh

    @property
    def access_token_expire_time(self) -> datetime | None:
        return datetime.fromtimestamp(self._expires_at, UTC) if self._access else None

    @property
    def can_refresh(self) -> bool:
        return self._refresh is not None and self._refresher is not None

    @property
    def ended_by(self) -> SecureNowError | None:
        """Why the server refused to refresh this session (reason REFRESH_TOKEN_REUSED,
        SESSION_ENDED...), once it did; None while the session can go on. Sign in again."""
        return None if self._ended is None else SecureNowError.from_rpc_error(self._ended)

    def check_not_ended(self) -> None:
        """Raises the refresh's refusal (a grpc.aio.AioRpcError, UNAUTHENTICATED with its
        reason) when the session is over and its access token has expired: calls fail
        with why, instead of presenting a dead token."""
        if self._ended is not None and self._access is not None and time.time() >= self._expires_at:
            raise _fresh_rpc_error(self._ended)

    def _due(self) -> bool:
        return self._access is not None and time.time() >= self._expires_at - self.refresh_margin

    # Use ----------------------------------------------------------------------------------

    async def bearer(self) -> str | None:
        """The token for the next call, refreshing the access token first when it is
        about to expire. A failed refresh is logged and the current token is used (the
        server then decides)."""
        if self._api_key is not None:
            return self._api_key
        if self.can_refresh and self._due():
            try:
                await self._refresh_if(lambda: self._due())
            except SecureNowError as err:
                log.warning("access token refresh failed: %s", err)
        return self._access

    async def refresh(self) -> None:
        """Refreshes the access token now; raises SecureNowError on failure."""
        await self._refresh_if(lambda: True)

    async def recover(self, error: grpc.aio.AioRpcError, used_token: str | None) -> bool:
        """After UNAUTHENTICATED/INVALID_TOKEN for a call made with `used_token`:
        refreshes (unless another call already did) and returns True when the call
        should be repeated with the new token."""
        if used_token is None or used_token == self._api_key or not self.can_refresh:
            return False
        if error.code() != grpc.StatusCode.UNAUTHENTICATED:
            return False
        if SecureNowError.from_rpc_error(error).reason != INVALID_TOKEN:
            return False
        try:
            await self._refresh_if(lambda: self._access == used_token)
        except SecureNowError as err:
            log.warning("access token refresh failed: %s", err)
            return False
        return self._access is not None and self._access != used_token

    async def _refresh_if(self, still_needed: Callable[[], bool]) -> None:
        # The attempt this caller may share: the one in flight, or else the next one.
        in_flight = self._exchange is not None and not self._exchange.done()
        attempts_seen = self._attempts - 1 if in_flight else self._attempts
        async with self._lock:
            if self._exchange is not None and not self._exchange.done():
                # A refresh whose caller was cancelled is still running: let it land.
                with contextlib.suppress(SecureNowError):
                    await asyncio.shield(self._exchange)
            if self._attempts != attempts_seen:
                # Single flight: a refresh ran while this caller waited; share its
                # outcome rather than exchanging (or re-presenting) the token again.
                if self._failure is not None:
                    raise self._failure.fresh()
                return
            if not still_needed():
                return  # another call refreshed meanwhile
            if self._refresh is None or self._refresher is None:
                if self._ended is not None:
                    raise SecureNowError.from_rpc_error(self._ended)
                raise SecureNowError(grpc.StatusCode.UNAUTHENTICATED, "no refresh token: sign in first")
            self._attempts += 1
            self._failure = None
            # The exchange runs as its own task: cancelling the caller must not lose the
            # response, or the spent refresh token would be presented again (reuse
            # detection would then end the session).
            self._exchange = asyncio.ensure_future(self._exchange_tokens(self._refresher, self._refresh))
            self._exchange.add_done_callback(_retrieve)
            await asyncio.shield(self._exchange)

    async def _exchange_tokens(self, refresher: Refresher, spent: str) -> None:
        try:
            response = await refresher(auth_pb2.RefreshTokenRequest(refresh_token=spent))
        except grpc.aio.AioRpcError as exc:
            error = SecureNowError.from_rpc_error(exc)
            if self._refresh == spent:
                self._failure = error
                if error.code == grpc.StatusCode.UNAUTHENTICATED:
                    self._refresh = None  # the session is over; do not try again
                    self._ended = exc
            raise error from None
        if self._refresh == spent:  # unless the tokens were replaced meanwhile
            self.store(response)
            self.refresh_count += 1
            log.debug("access token refreshed")


def _fresh_rpc_error(error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """An equal AioRpcError with no traceback (see SecureNowError.fresh)."""
    return grpc.aio.AioRpcError(
        error.code(),
        error.initial_metadata(),
        error.trailing_metadata(),
        error.details(),
        error.debug_error_string(),
    )


def _retrieve(task: asyncio.Future[None]) -> None:
    """Marks a background refresh's outcome as seen (its waiters may be gone)."""
    if not task.cancelled():
        task.exception()


# Interceptors ---------------------------------------------------------------------------------


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _has_authorization(details: Any) -> bool:
    return any(key == AUTHORIZATION for key, _ in (details.metadata or ()))


def _with_token(details: Any, token: str, timeout: float | None) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[AUTHORIZATION] = f"Bearer {token}"
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


def _left(details: Any, started: float) -> float | None:
    """What is left of the call's timeout (None: no deadline) at this moment."""
    if details.timeout is None:
        return None
    left: float = details.timeout - (time.monotonic() - started)
    return max(0.0, left)


def _refresh_deadline_exceeded() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "deadline exceeded while the access token was being refreshed",
    )


class _AuthBase:
    def __init__(self, session: Session) -> None:
        self._session = session

    async def _prepare(self, details: Any, started: float | None = None) -> tuple[Any, str | None]:
        """Adds the credentials (unless the method is public or the caller set its own).
        The call's timeout counts from `started` (time.monotonic(); default now): the
        time a refresh took comes off what the call itself is given."""
        if _method_name(details) in PUBLIC_METHODS or _has_authorization(details):
            return details, None
        if started is None:
            started = time.monotonic()
        try:
            # A refresh that hangs must not outlast the call's own deadline.
            token = await asyncio.wait_for(self._session.bearer(), _left(details, started))
        except TimeoutError:
            raise _refresh_deadline_exceeded() from None
        self._session.check_not_ended()
        if token is None:
            return details, None
        return _with_token(details, token, _left(details, started)), token


class _UnaryUnaryAuth(_AuthBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        started = time.monotonic()
        details, token = await self._prepare(client_call_details, started)
        call = await continuation(details, request)
        if token is None:
            return call
        try:
            await call
        except grpc.aio.AioRpcError as err:
            try:
                recovered = await asyncio.wait_for(
                    self._session.recover(err, token), _left(client_call_details, started)
                )
            except TimeoutError:
                raise _refresh_deadline_exceeded() from None
            if recovered:
                # The repeat shares the caller's deadline.
                details, _ = await self._prepare(client_call_details, started)
                return await continuation(details, request)
        return call


class _UnaryStreamAuth(_AuthBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        details, _ = await self._prepare(client_call_details)
        return await continuation(details, request)


class _StreamUnaryAuth(_AuthBase, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        details, _ = await self._prepare(client_call_details)
        return await continuation(details, request_iterator)


class _StreamStreamAuth(_AuthBase, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        details, _ = await self._prepare(client_call_details)
        return await continuation(details, request_iterator)


def auth_interceptors(session: Session) -> list[Any]:
    """Client interceptors that authenticate every call with `session`. Unary calls
    that fail with INVALID_TOKEN are refreshed and repeated once; streaming calls get
    the same proactive refresh (the SDK's stream helpers recover themselves)."""
    return [_UnaryUnaryAuth(session), _UnaryStreamAuth(session), _StreamUnaryAuth(session), _StreamStreamAuth(session)]
