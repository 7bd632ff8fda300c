"""Embedded gRPC-Web endpoint (for a single machine and tests; Envoy's grpc_web filter
does the same job in deployments).

Browsers POST `application/grpc-web[+proto]` or `application/grpc-web-text[+proto]` to
`/<package>.<Service>/<Method>`. Each call is forwarded as raw bytes over a loopback
HTTP/2 channel to this process's own gRPC server, so it meets the same interceptor
(authentication, access table, errors, metrics, audit) and the same servicers as
native calls. Unary and server-streaming methods work; browsers cannot send client or
bidirectional streams, so those answer UNIMPLEMENTED (the agency API has unary and
server-streaming twins for browsers: WatchDispatch, AckDispatchEvent, AcceptSosAlert...).

A request is exactly one uncompressed message (grpc-web-text: strict base64, padded
or not, per frame or whole); grpc-timeout is the call's deadline, counted from the
request's arrival (reading its body included). A body that stops arriving for
BODY_IDLE_TIMEOUT seconds is answered DEADLINE_EXCEEDED rather than waited for forever.

Whatever a browser sends, it gets a gRPC-Web status it can read (plain HTTP 415 or 405
only for a body that is not gRPC-Web protobuf at all or a method other than POST, with
CORS headers too): oversized bodies RESOURCE_EXHAUSTED, malformed frames, base64 or
headers INVALID_ARGUMENT or UNAUTHENTICATED, compression UNIMPLEMENTED, a gateway
fault INTERNAL. A browser that disconnects cancels its call (streams included) at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool

from securenow.server.domain.errors import DomainError, Unauthenticated
from securenow.server.transport.errors import to_rpc_status

log = logging.getLogger(__name__)

# Browser headers passed on as call metadata. x-forwarded-for is not among them: the
# gateway sets it itself (see call_metadata).
_FORWARDED_HEADERS = ("authorization", "x-request-id", "x-user-agent")
_ALLOW_HEADERS = "content-type, x-grpc-web, x-user-agent, authorization, grpc-timeout, x-request-id"
_EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"
_MAX_MESSAGE = 4 * 1024 * 1024
# The gRPC-Web content types (without parameters) -> whether the body is base64 text.
# Anything else (application/grpc-web+json...) would be forwarded as protobuf and
# misread, so it is refused.
CONTENT_TYPES = {
    "application/grpc-web": False,
    "application/grpc-web+proto": False,
    "application/grpc-web-text": True,
    "application/grpc-web-text+proto": True,
}
# A request is one message in one frame (5-byte header). Base64 text is 4/3 larger; a
# little slack covers clients that pad each frame separately.
MAX_BODY = _MAX_MESSAGE + 5
MAX_TEXT_BODY = (MAX_BODY + 2) // 3 * 4 + 64
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# A grpc-timeout may say up to 99999999 hours; grpc fails such a deadline at once, so
# anything longer than a year is no deadline at all.
_MAX_TIMEOUT = 365 * 24 * 3600.0
# A request body that sends nothing for this long is given up (a stalled or hostile
# client must not hold a handler and a socket forever; a slow upload still moves).
BODY_IDLE_TIMEOUT = 30.0
# Where base64 padding ends and more text follows: clients may encode each frame apart.
_AFTER_PADDING = re.compile(rb"(?<==)(?=[^=])")
# Client-streaming methods browsers reach through other methods.
_BROWSER_TWINS = {
    "securenow.v1.AgencyService/StreamDispatch": (
        "use WatchDispatch, with AckDispatchEvent, AcceptSosAlert, DeclineSosAlert and UpdateIncident"
    ),
}


def _identity(value: bytes) -> bytes:
    return value


def frame(flag: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def parse_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while offset < len(body):
        if len(body) - offset < 5:
            raise ValueError("truncated gRPC-Web frame header")
        flag, length = struct.unpack_from(">BI", body, offset)
        offset += 5
        if length > _MAX_MESSAGE:
            raise MessageTooLarge(f"a message of {length} bytes is larger than the limit of {_MAX_MESSAGE}")
        if offset + length > len(body):
            raise ValueError("truncated gRPC-Web frame")
        frames.append((flag, body[offset : offset + length]))
        offset += length
    return frames


def decode_text(body: bytes) -> bytes:
    """A grpc-web-text body: base64, each frame possibly encoded and padded on its own,
    the last padding optional. Anything else is a ValueError."""
    decoded = bytearray()
    for part in _AFTER_PADDING.split(body):
        if not part.endswith(b"="):
            part += b"=" * (-len(part) % 4)
        try:
            decoded += base64.b64decode(part, validate=True)
        except ValueError as exc:  # binascii.Error
            raise ValueError(f"invalid base64 ({exc})") from None
    return bytes(decoded)


def request_message(frames: list[tuple[int, bytes]], encoding: str | None) -> bytes:
    """The one uncompressed message a unary or server-streaming request carries."""
    if len(frames) != 1:
        raise _LocalStatus(
            grpc.StatusCode.INVALID_ARGUMENT, f"a request carries exactly one message, not {len(frames)}"
        )
    flag, payload = frames[0]
    if flag == 0x01:
        if encoding in (None, "identity"):
            raise _LocalStatus(grpc.StatusCode.INVALID_ARGUMENT, "a compressed message without a grpc-encoding")
        raise _LocalStatus(
            grpc.StatusCode.UNIMPLEMENTED,
            f"grpc-encoding {encoding} is not supported; send identity",
            (("grpc-accept-encoding", "identity"),),
        )
    if flag != 0:
        raise _LocalStatus(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected gRPC-Web frame flag 0x{flag:02x}")
    return payload


def trailer_block(code: grpc.StatusCode, message: str, metadata: Iterable[tuple[str, Any]]) -> bytes:
    lines = [f"grpc-status: {code.value[0]}", f"grpc-message: {quote(message, safe='')}"]
    for key, value in metadata:
        if key.endswith("-bin"):
            value = base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode()


def parse_timeout(header: str | None) -> float | None:
    """grpc-timeout in seconds (None: no deadline): 1 to 8 ASCII digits and a unit,
    otherwise INVALID_ARGUMENT."""
    if header is None:
        return None
    digits, unit = header[:-1], header[-1:]
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 8 and unit in _TIMEOUT_UNITS):
        raise _LocalStatus(
            grpc.StatusCode.INVALID_ARGUMENT, "grpc-timeout must be 1 to 8 digits and a unit (H M S m u n)"
        )
    seconds = int(digits) * _TIMEOUT_UNITS[unit]
    return None if seconds > _MAX_TIMEOUT else seconds


def _printable_ascii(value: str) -> bool:
    return all(" " <= ch <= "~" for ch in value)


def call_metadata(request: web.Request, service: str) -> list[tuple[str, str]]:
    """The call's metadata from the browser's headers. gRPC metadata values are printable
    ASCII; anything else is the caller's mistake and answered as such (UNAUTHENTICATED
    for credentials, as the server itself answers a malformed authorization), never
    passed on to fail inside grpc.

    x-forwarded-for is always the address this listener sees, replacing whatever the
    browser sent: the server trusts it only from a loopback peer (this gateway), so a
    browser-supplied value must never reach it."""
    metadata = []
    for header in _FORWARDED_HEADERS:
        values = request.headers.getall(header, [])
        if header == "authorization" and len(values) > 1:
            # As the server answers two authorization entries: refused, never resolved.
            raise _LocalStatus.of(
                Unauthenticated("send one authorization: Bearer <token>", reason="MALFORMED_CREDENTIALS"), service
            )
        for value in values:
            if not _printable_ascii(value):
                if header == "authorization":
                    raise _LocalStatus.of(
                        Unauthenticated("authorization must be 'Bearer <token>'", reason="MALFORMED_CREDENTIALS"),
                        service,
                    )
                raise _LocalStatus(grpc.StatusCode.INVALID_ARGUMENT, f"header {header} must be printable ASCII")
            metadata.append((header, value))
    if request.remote:
        metadata.append(("x-forwarded-for", request.remote))
    return metadata


async def read_body(request: web.Request, limit: int, deadline: float | None = None) -> bytes:
    """The request body, or RESOURCE_EXHAUSTED (as gRPC answers a message over the
    limit) once it passes `limit` bytes: a gRPC-Web status, not a bare HTTP 413.
    DEADLINE_EXCEEDED when the call's deadline (time.monotonic()) passes first, or when
    nothing arrives for BODY_IDLE_TIMEOUT seconds."""
    too_large = _LocalStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while True:
        wait = BODY_IDLE_TIMEOUT
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(request.content.readany(), wait)
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise _LocalStatus(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while the request body was read"
                ) from None
            raise _LocalStatus(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no request data for {BODY_IDLE_TIMEOUT:g} s; the body stalled"
            ) from None
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise too_large


class GrpcWebGateway:
    def __init__(self, allowed_origins: list[str]) -> None:
        self._origins = allowed_origins
        self._channel: grpc.aio.Channel | None = None
        self._pool = descriptor_pool.Default()

    def connect(self, loopback_target: str) -> None:
        self._channel = grpc.aio.insecure_channel(
            loopback_target,
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)],
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/{service}/{method}", self.handle),
            web.options("/{service}/{method}", self.preflight),
            web.route("*", "/{service}/{method}", self.not_post),
        ]

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not (origin in self._origins or "*" in self._origins):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": _EXPOSE_HEADERS,
            "Vary": "Origin",
        }

    async def preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if not headers:
            return web.Response(status=403, text="origin not allowed")
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
        return web.Response(status=204, headers=headers)

    async def not_post(self, request: web.Request) -> web.Response:
        # A plain HTTP answer, as for a wrong content type, but one the page can read.
        return web.Response(
            status=405, text="gRPC-Web calls are POST", headers={"Allow": "POST, OPTIONS", **self._cors(request)}
        )

    def _method_kind(self, service: str, method: str) -> tuple[bool, bool] | None:
        try:
            desc = self._pool.FindServiceByName(service).methods_by_name[method]
        except KeyError:
            return None
        return desc.client_streaming, desc.server_streaming

    async def handle(self, request: web.Request) -> web.StreamResponse:
        text_mode = CONTENT_TYPES.get(request.content_type.lower())
        if text_mode is None:
            return web.Response(
                status=415,
                text=f"expected one of {', '.join(CONTENT_TYPES)}",
                headers=self._cors(request),
            )
        service, method = request.match_info["service"], request.match_info["method"]
        content = "application/grpc-web-text+proto" if text_mode else "application/grpc-web+proto"
        headers = {"Content-Type": content, "Cache-Control": "no-store", **self._cors(request)}
        response = web.StreamResponse(status=200, headers=headers)

        async def send(chunk: bytes) -> None:
            if not response.prepared:
                await response.prepare(request)
            await response.write(base64.b64encode(chunk) if text_mode else chunk)

        try:
            code, message, trailers = await self._forward(request, service, method, text_mode, response, send)
        except _LocalStatus as status:
            code, message, trailers = status.code, status.message, status.trailers
        except ConnectionResetError:
            return response  # the browser went away while we wrote; nobody to answer
        except Exception:
            # Whatever went wrong, the browser gets a gRPC status it can read.
            log.exception("gRPC-Web call /%s/%s failed in the gateway", service, method)
            code, message, trailers = grpc.StatusCode.INTERNAL, "internal error; it was logged", ()
        block = trailer_block(code, message, trailers)
        try:
            if not response.prepared:
                # Nothing was sent: a trailers-only response carries the status in its headers.
                for line in block.decode().split("\r\n"):
                    if line:
                        key, _, value = line.partition(": ")
                        response.headers[key] = value
                await response.prepare(request)
            else:
                await send(frame(0x80, block))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the browser went away before the status
        return response

    async def _forward(
        self,
        request: web.Request,
        service: str,
        method: str,
        text_mode: bool,
        response: web.StreamResponse,
        send: Callable[[bytes], Awaitable[None]],
    ) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
        """Makes the call over loopback, sends its messages; returns its status."""
        started = time.monotonic()
        path = f"/{service}/{method}"
        kind = self._method_kind(service, method)
        if kind is None:
            raise _LocalStatus(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
        if kind[0]:
            twin = _BROWSER_TWINS.get(path[1:], "it needs a native gRPC client")
            raise _LocalStatus(
                grpc.StatusCode.UNIMPLEMENTED,
                f"browsers cannot send client streams to {path}; {twin} (unary and server-streaming methods work)",
            )
        metadata = call_metadata(request, service.rpartition(".")[2])
        timeout = parse_timeout(request.headers.get("grpc-timeout"))
        deadline = None if timeout is None else started + timeout
        body = await read_body(request, MAX_TEXT_BODY if text_mode else MAX_BODY, deadline)
        try:
            frames = parse_frames(decode_text(body) if text_mode else body)
        except MessageTooLarge as exc:
            raise _LocalStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except ValueError as exc:
            raise _LocalStatus(grpc.StatusCode.INVALID_ARGUMENT, f"malformed gRPC-Web body: {exc}") from None
        payload = request_message(frames, request.headers.get("grpc-encoding"))
        if deadline is not None:
            # What is left of the browser's deadline once its body arrived.
            timeout = max(0.0, deadline - time.monotonic())
        assert self._channel is not None, "gateway not connected"
        try:
            if kind[1]:
                # Streams answer with headers at once: a quiet stream (no event yet) is
                # still a live connection for the browser.
                await response.prepare(request)
                call = self._channel.unary_stream(path, _identity, _identity)(
                    payload, metadata=metadata, timeout=timeout
                )
                try:
                    async for item in call:
                        await send(frame(0, item))
                finally:
                    # The browser went away (the handler is cancelled then, see
                    # runtime.py) or a write failed: end the server stream too.
                    call.cancel()
                return grpc.StatusCode.OK, "", tuple(await call.trailing_metadata() or ())
            unary = self._channel.unary_unary(path, _identity, _identity)(payload, metadata=metadata, timeout=timeout)
            await send(frame(0, await unary))
            return grpc.StatusCode.OK, "", tuple(await unary.trailing_metadata() or ())
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or "", tuple(err.trailing_metadata() or ())


class MessageTooLarge(ValueError):
    """A frame announces a message over the gRPC message size limit."""


class _LocalStatus(Exception):
    """A status the gateway answers itself, without calling the server."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, Any], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers

    @classmethod
    def of(cls, error: DomainError, service: str) -> _LocalStatus:
        """The same status and google.rpc details the server sends for this error."""
        code, status = to_rpc_status(error, service)
        return cls(code, error.message, (("grpc-status-details-bin", status.SerializeToString()),))
