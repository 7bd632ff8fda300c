"""Embedded gRPC-Web endpoint (for a single machine and tests; Envoy's grpc_web filter
does the same job in deployments).

Browsers POST `application/grpc-web[+proto]` or `application/grpc-web-text[+proto]` to
`/<package>.<Service>/<Method>`. Each call is forwarded as raw bytes over a loopback
HTTP/2 channel to this process's own gRPC server, so it meets the same interceptor
(authentication, access table, errors, metrics, audit) and the same servicers as
native calls. Unary and server-streaming methods work; browsers cannot send client or
bidirectional streams, so those answer UNIMPLEMENTED (the agency API has unary and
server-streaming twins for browsers: WatchDispatch, AckDispatchEvent, AcceptSosAlert...).
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool

log = logging.getLogger(__name__)

_FORWARDED_HEADERS = ("authorization", "x-request-id", "x-user-agent")
_ALLOW_HEADERS = "content-type, x-grpc-web, x-user-agent, authorization, grpc-timeout, x-request-id"
_EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"
_MAX_MESSAGE = 4 * 1024 * 1024
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


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
        if length > _MAX_MESSAGE or offset + length > len(body):
            raise ValueError("truncated or oversized gRPC-Web frame")
        frames.append((flag, body[offset : offset + length]))
        offset += length
    return frames


def trailer_block(code: grpc.StatusCode, message: str, metadata: Iterable[tuple[str, Any]]) -> bytes:
    lines = [f"grpc-status: {code.value[0]}", f"grpc-message: {quote(message, safe='')}"]
    for key, value in metadata:
        if key.endswith("-bin"):
            value = base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode()


def parse_timeout(header: str | None) -> float | None:
    if not header or len(header) < 2 or header[-1] not in _TIMEOUT_UNITS or not header[:-1].isdigit():
        return None
    return int(header[:-1]) * _TIMEOUT_UNITS[header[-1]]


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
        return [web.post("/{service}/{method}", self.handle), web.options("/{service}/{method}", self.preflight)]

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

    def _method_kind(self, service: str, method: str) -> tuple[bool, bool] | None:
        try:
            desc = self._pool.FindServiceByName(service).methods_by_name[method]
        except KeyError:
            return None
        return desc.client_streaming, desc.server_streaming

    async def handle(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("application/grpc-web"):
            return web.Response(status=415, text="expected application/grpc-web")
        text_mode = content_type.startswith("application/grpc-web-text")
        service, method = request.match_info["service"], request.match_info["method"]
        path = f"/{service}/{method}"
        content = "application/grpc-web-text+proto" if text_mode else "application/grpc-web+proto"
        headers = {"Content-Type": content, "Cache-Control": "no-store", **self._cors(request)}
        response = web.StreamResponse(status=200, headers=headers)

        async def send(chunk: bytes) -> None:
            if not response.prepared:
                await response.prepare(request)
            await response.write(base64.b64encode(chunk) if text_mode else chunk)

        code, message, trailers = grpc.StatusCode.OK, "", ()
        try:
            kind = self._method_kind(service, method)
            if kind is None:
                raise _LocalStatus(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
            if kind[0]:
                raise _LocalStatus(
                    grpc.StatusCode.UNIMPLEMENTED, "browsers cannot send client streams; use the unary or watch variant"
                )
            body = await request.read()
            try:
                frames = parse_frames(base64.b64decode(body) if text_mode else body)
            except ValueError as exc:
                raise _LocalStatus(grpc.StatusCode.INVALID_ARGUMENT, f"malformed gRPC-Web body: {exc}") from None
            messages = [payload for flag, payload in frames if flag == 0]
            payload = messages[0] if messages else b""
            metadata = [(h, request.headers[h]) for h in _FORWARDED_HEADERS if h in request.headers]
            if request.remote:
                metadata.append(("x-forwarded-for", request.remote))
            timeout = parse_timeout(request.headers.get("grpc-timeout"))
            assert self._channel is not None, "gateway not connected"
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
                    call.cancel()  # the browser went away: end the server stream too
                trailers = tuple(await call.trailing_metadata() or ())
            else:
                unary = self._channel.unary_unary(path, _identity, _identity)(
                    payload, metadata=metadata, timeout=timeout
                )
                await send(frame(0, await unary))
                trailers = tuple(await unary.trailing_metadata() or ())
        except grpc.aio.AioRpcError as err:
            code, message, trailers = err.code(), err.details() or "", tuple(err.trailing_metadata() or ())
        except _LocalStatus as status:
            code, message = status.code, status.message
        block = trailer_block(code, message, trailers)
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
        return response


class _LocalStatus(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
