"""One server interceptor wraps every RPC handler:

1. authenticates the bearer credential (unless the method is public) and checks the
   caller's role against the access table (default deny);
2. makes the caller available to the servicer (`context.current_principal()`);
3. turns domain errors into status codes with google.rpc details, request bytes that
   are not the method's message into INVALID_ARGUMENT (grpcio itself would answer
   UNKNOWN with its internal exception text), and anything unexpected into a logged
   INTERNAL without internals in the message;
4. counts calls and latency by method and status code (Prometheus), writes one
   JSON access-log line, and audits failed mutating calls.

The access log's `peer` is the caller's address. Calls through the embedded gRPC-Web
gateway arrive from loopback, calls through Envoy from Envoy; each sets
x-forwarded-for to the browser's address. That header is believed only from a peer
in SECURENOW_TRUSTED_PROXIES (loopback by default), and only its last hop (the one
that proxy added): from anyone else it is the caller's own claim. The caller's
address (address_key) is what per-address limits count.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.errors import DomainError, InvalidArgument, PermissionDenied, Unauthenticated
from securenow.server.transport.access import RULES, Rule
from securenow.server.transport.context import set_client_address, set_principal
from securenow.server.transport.errors import as_grpc_status, internal_status, to_rpc_status

log = logging.getLogger("securenow.access")

CALLS = Counter(
    "securenow_grpc_server_handled_total",
    "RPCs completed, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
LATENCY = Histogram(
    "securenow_grpc_server_handling_seconds",
    "RPC handling time (for streams: stream lifetime), by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
)

Authenticate = Callable[[str], Awaitable[Principal]]
AuditFailure = Callable[[Principal | None, str, str, str], Awaitable[None]]
# Counts a call of a rate-limited class for the caller; raises ResourceExhausted past the limit.
RateLimit = Callable[[Principal, str], Awaitable[None]]
# Outcomes of mutating calls that are not audited: nothing was attempted on an object.
# RESOURCE_EXHAUSTED (a rate limit) is among them: a guessing flood must not cost a
# database write per request; securenow_rate_limited_total and the access log count it.
_NOT_AUDITED = {"OK", "CANCELLED", "INVALID_ARGUMENT", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


async def audit_refusal(
    audit_failure: AuditFailure, principal: Principal | None, method: str, code: str, reason: str
) -> None:
    """Audits a refused or failed attempt (who tried what, and the outcome) unless its
    outcome says nothing was attempted on an object; never fails the caller."""
    if code in _NOT_AUDITED:
        return
    try:
        await audit_failure(principal, method, code, reason)
    except Exception:
        log.warning("could not audit a failed call to %s", method, exc_info=True)


class _Undecodable:
    """What a request deserializer hands over for bytes that are not its message."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's request deserializer, returning _UNDECODABLE instead of raising:
    grpcio answers a raising deserializer with UNKNOWN "Unexpected <class
    'DecodeError'>", while this lets the wrapped behaviour answer INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or invalid UTF-8 in a string field
            return _UNDECODABLE

    return deserialize


def _undecodable() -> InvalidArgument:
    return InvalidArgument.field("request", "is not a valid protobuf encoding of the method's request message")


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[IpNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def peer_host(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a grpc peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000"), or
    in a bare address; None for anything else (a Unix socket)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition("]")[0].lstrip("[")
    else:
        host = peer
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(
    peer: str, metadata: tuple[Any, ...] | None, trusted: Sequence[IpNetwork] = LOOPBACK_NETWORKS
) -> tuple[str, str | None]:
    """(the caller's address, the proxy it came through or None). The x-forwarded-for
    of a peer in a `trusted` network (a proxy we run) is believed: its last hop, the one
    that proxy added, if that is an IP address."""
    host = peer_host(peer)
    if host is None or not any(host in network for network in trusted):
        return peer, None
    forwarded = [value for key, value in metadata or () if key == "x-forwarded-for"]
    if not forwarded:
        return peer, None
    last = forwarded[-1]
    hop = (last.decode(errors="replace") if isinstance(last, bytes) else last).rpartition(",")[2].strip()
    try:
        return str(ipaddress.ip_address(hop)), peer
    except ValueError:
        return peer, None


def address_key(peer: str) -> str:
    """Who a caller is for per-address limits: its IPv4 address, or its IPv6 /64 (one
    subscriber's network, whose addresses are theirs to rotate through)."""
    host = peer_host(peer)
    if host is None:
        return peer
    if isinstance(host, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((host, 64), strict=False))
    return str(host)


def _bearer(metadata: tuple[Any, ...] | None) -> str | None:
    """The one bearer credential of the call. Two authorization entries are refused,
    never resolved: a proxy may have checked one while this would use the other."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("send one authorization: Bearer <token>", reason="MALFORMED_CREDENTIALS")
    value = values[0]
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'", reason="MALFORMED_CREDENTIALS")
    return token.strip()


class _Call:
    """State of one RPC, shared by the wrappers below."""

    __slots__ = (
        "address",
        "code",
        "method",
        "peer",
        "principal",
        "reason",
        "rule",
        "service",
        "short",
        "started",
        "via",
    )

    def __init__(
        self,
        method: str,
        rule: Rule | None,
        context: grpc.aio.ServicerContext,
        metadata: tuple[Any, ...] | None,
        trusted: Sequence[IpNetwork],
    ) -> None:
        self.method = method
        # Read while the call is alive: grpcio crashes (segfault) on peer() of a call
        # the client already tore down, which is how streams usually end.
        self.peer, self.via = client_address(context.peer(), metadata, trusted)
        self.address = address_key(self.peer)
        self.rule = rule
        _, _, tail = method.partition("/")
        self.service, _, self.short = tail.partition("/")
        self.principal: Principal | None = None
        self.code = "OK"
        self.reason = ""
        self.started = time.perf_counter()


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticate: Authenticate,
        audit_failure: AuditFailure,
        rate_limit: RateLimit,
        *,
        trusted_proxies: Sequence[IpNetwork] = LOOPBACK_NETWORKS,
    ) -> None:
        self._authenticate = authenticate
        self._audit_failure = audit_failure
        self._rate_limit = rate_limit
        self._trusted = tuple(trusted_proxies)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        rule = RULES.get(method)

        async def enter(call: _Call) -> None:
            set_client_address(call.address)
            if rule is None:
                raise PermissionDenied("this method is not open to callers", reason="METHOD_NOT_ALLOWED")
            if rule.public:
                set_principal(None)
                return
            token = _bearer(metadata)
            if token is None:
                raise Unauthenticated(
                    "credentials are required: authorization: Bearer <token>", reason="MISSING_CREDENTIALS"
                )
            principal = await self._authenticate(token)
            call.principal = principal
            if principal.kind is PrincipalKind.API_KEY and not rule.api_key:
                raise PermissionDenied("API keys cannot call this method", reason="API_KEY_NOT_ALLOWED")
            # API keys too (police or security agency): a rule open to keys but not to
            # their role (an admin-only one marked api_key by mistake) stays closed.
            if not rule.allows_role(principal.role):
                raise PermissionDenied(
                    f"role {principal.role.value} cannot call this method", reason="ROLE_NOT_ALLOWED"
                )
            if rule.limit:
                await self._rate_limit(principal, rule.limit)
            set_principal(principal)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _Call(method, rule, context, metadata, self._trusted)
                try:
                    await enter(call)
                    if request is _UNDECODABLE:
                        raise _undecodable()
                    return await inner_uu(request, context)
                except BaseException as exc:
                    await self._fail(call, context, exc)
                finally:
                    await self._finish(call)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )

        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = _Call(method, rule, context, metadata, self._trusted)
                try:
                    await enter(call)
                    if request is _UNDECODABLE:
                        raise _undecodable()
                    async for response in inner_us(request, context):
                        yield response
                except BaseException as exc:
                    await self._fail(call, context, exc)
                finally:
                    await self._finish(call)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
            )

        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                call = _Call(method, rule, context, metadata, self._trusted)
                try:
                    await enter(call)
                    return await inner_su(self._decoded(requests, call, context), context)
                except BaseException as exc:
                    await self._fail(call, context, exc)
                finally:
                    await self._finish(call)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )

        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, rule, context, metadata, self._trusted)
            try:
                await enter(call)
                async for response in inner_ss(self._decoded(requests, call, context), context):
                    yield response
            except BaseException as exc:
                await self._fail(call, context, exc)
            finally:
                await self._finish(call)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, _tolerant(handler.request_deserializer), handler.response_serializer
        )

    async def _decoded(
        self, requests: AsyncIterator[Any], call: _Call, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The client's messages; an undecodable one ends the call with INVALID_ARGUMENT
        right here, so the answer does not depend on how the servicer treats errors
        while reading (StreamDispatch, for one, ends quietly when its reader fails)."""
        async for request in requests:
            if request is _UNDECODABLE:
                await self._fail(call, context, _undecodable())  # aborts: raises AbortError
            yield request

    async def _fail(self, call: _Call, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        """Classifies the exception, then aborts the RPC (or re-raises cancellation)."""
        if isinstance(exc, asyncio.CancelledError):
            call.code = "CANCELLED"
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            # A servicer aborted on purpose (rare); keep its status.
            code = context.code()
            call.code = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise exc
        if isinstance(exc, DomainError):
            code, status = to_rpc_status(exc, call.service.rpartition(".")[2])
            call.code, call.reason = code.name, exc.reason
            await self._audit_refusal(call)  # recorded before the caller hears the answer
            await context.abort_with_status(as_grpc_status(status))
        if isinstance(exc, (GeneratorExit, KeyboardInterrupt, SystemExit)):
            raise exc
        if isinstance(exc, NotImplementedError):
            call.code = "UNIMPLEMENTED"
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented yet")
        call.code = "INTERNAL"
        log.error("unhandled error in %s", call.method, exc_info=exc, extra={"rpc": call.method})
        await self._audit_refusal(call)
        await context.abort_with_status(as_grpc_status(internal_status()))

    async def _audit_refusal(self, call: _Call) -> None:
        """Mutating calls that failed are audited too (who tried what, and the outcome)."""
        if call.rule is not None and call.rule.mutating:
            await audit_refusal(self._audit_failure, call.principal, call.method, call.code, call.reason)

    async def _finish(self, call: _Call) -> None:
        elapsed = time.perf_counter() - call.started
        CALLS.labels(call.service, call.short, call.code).inc()
        LATENCY.labels(call.service, call.short, call.code).observe(elapsed)
        principal = call.principal
        log.info(
            "rpc",
            extra={
                "rpc": call.method,
                "code": call.code,
                "reason": call.reason or None,
                "duration_ms": round(elapsed * 1000, 3),
                "principal": principal.id if principal else None,
                "role": principal.role.value if principal else None,
                "peer": call.peer,
                "via": call.via,
            },
        )
