"""gRPC-Web endpoint: defects found in review, each pinned by a test."""

from __future__ import annotations

import asyncio
import time

import pytest
from multidict import CIMultiDict

from securenow.server.runtime import Runtime
from securenow.server.transport import grpc_web
from securenow.v1 import users_pb2
from tests.helpers import Api
from tests.test_grpc_web import GRPC_WEB, encode, post


async def _stalled_post(runtime: Runtime, extra_headers: str, within: float) -> bytes:
    """POSTs a body that announces 100 bytes, sends 10 and then nothing; returns the
    response head, read within `within` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.http_port)
    try:
        head = (
            "POST /securenow.v1.AuthService/SignIn HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: {GRPC_WEB}\r\n{extra_headers}Content-Length: 100\r\n\r\n"
        )
        writer.write(head.encode() + b"\x00" * 10)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
    finally:
        writer.close()


async def test_grpc_timeout_also_bounds_a_request_body_that_stops_arriving(runtime: Runtime) -> None:
    # Before, the deadline only started once the whole body was in: a browser (or a
    # hostile client) whose upload stalled held the handler and its socket forever.
    started = time.monotonic()
    answer = await _stalled_post(runtime, "grpc-timeout: 300m\r\n", within=5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"grpc-status: 4" in answer  # DEADLINE_EXCEEDED, as the browser asked
    assert time.monotonic() - started < 3


async def test_a_stalled_body_without_a_deadline_is_given_up_after_the_idle_limit(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_web, "BODY_IDLE_TIMEOUT", 0.3)  # 30 s in production
    answer = await _stalled_post(runtime, "", within=5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"grpc-status: 4" in answer
    assert b"stalled" in answer


async def test_two_authorization_headers_are_refused_not_resolved(runtime: Runtime, api: Api) -> None:
    """As over native gRPC: a proxy may have checked one of the two, the server must
    not pick the other."""
    account = await api.sign_up()
    body = encode(users_pb2.GetUserRequest(user_id="me").SerializeToString())
    method = "securenow.v1.UserService/GetUser"
    mine = ("Authorization", f"Bearer {account.access_token}")
    two = CIMultiDict([("Content-Type", GRPC_WEB), mine, ("Authorization", "Bearer someone-elses-token")])
    _, _, messages, trailers = await post(runtime, method, body, two)
    assert (trailers["grpc-status"], messages) == ("16", [])  # UNAUTHENTICATED, nothing read
    _, _, messages, trailers = await post(runtime, method, body, CIMultiDict([("Content-Type", GRPC_WEB), mine]))
    assert trailers["grpc-status"] == "0"
    assert users_pb2.GetUserResponse.FromString(messages[0]).user.id == account.id
