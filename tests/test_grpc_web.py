"""The embedded gRPC-Web endpoint, spoken on the wire as a browser would."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote

import aiohttp
import pytest
from google.rpc import error_details_pb2, status_pb2

from securenow.server.runtime import Runtime
from securenow.v1 import agency_pb2, auth_pb2, sos_pb2, users_pb2
from tests.dispatch_helpers import SF, raise_sos, register_department
from tests.helpers import PASSWORD, Api, unique_email, unique_phone, wait_for

GRPC_WEB = "application/grpc-web+proto"


def encode(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def decode(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers, offset = [], {}, 0
    while offset < len(body):
        flag, length = struct.unpack_from(">BI", body, offset)
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


async def call(
    runtime: Runtime, method: str, request: bytes, *, token: str = "", text: bool = False, origin: str = ""
) -> tuple[int, dict[str, str], list[bytes], dict[str, str]]:
    headers = {"Content-Type": "application/grpc-web-text" if text else GRPC_WEB, "X-Grpc-Web": "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if origin:
        headers["Origin"] = origin
    body = encode(request)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{runtime.http_port}/{method}",
            data=base64.b64encode(body) if text else body,
            headers=headers,
        ) as resp,
    ):
        raw = await resp.read()
        if text:
            raw = b"".join(base64.b64decode(raw[i : i + 4]) for i in range(0, len(raw), 4))
        messages, trailers = decode(raw)
        if "grpc-status" in resp.headers:  # trailers-only response: the status is in the headers
            trailers = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("grpc-")}
        return resp.status, dict(resp.headers), messages, trailers


async def test_unary_call_in_binary_and_text_mode(runtime: Runtime) -> None:
    signup = auth_pb2.SignUpRequest(
        email=unique_email(), phone=unique_phone(), first_name="Web", last_name="User", password=PASSWORD
    )
    status, headers, messages, trailers = await call(
        runtime, "securenow.v1.AuthService/SignUp", signup.SerializeToString()
    )
    assert status == 200
    assert headers["Content-Type"] == GRPC_WEB
    assert trailers["grpc-status"] == "0"
    created = auth_pb2.SignUpResponse.FromString(messages[0])
    assert created.user.email == signup.email

    _, headers, messages, trailers = await call(
        runtime,
        "securenow.v1.UserService/GetUser",
        users_pb2.GetUserRequest(user_id="me").SerializeToString(),
        token=created.access_token,
        text=True,
    )
    assert headers["Content-Type"] == "application/grpc-web-text+proto"
    assert trailers["grpc-status"] == "0"
    assert users_pb2.GetUserResponse.FromString(messages[0]).user.id == created.user.id


async def test_errors_carry_status_and_rich_details(runtime: Runtime) -> None:
    bad = auth_pb2.SignUpRequest(email="nope", phone="1", first_name="", last_name="", password="x")
    _, _, messages, trailers = await call(runtime, "securenow.v1.AuthService/SignUp", bad.SerializeToString())
    assert messages == []  # nothing sent before the error: a trailers-only response
    assert trailers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "email" in unquote(trailers["grpc-message"])
    status = status_pb2.Status.FromString(base64.b64decode(trailers["grpc-status-details-bin"]))
    violations = error_details_pb2.BadRequest()
    assert any(d.Unpack(violations) for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
    assert {v.field for v in violations.field_violations} >= {"email", "phone", "password"}

    _, _, _, trailers = await call(
        runtime, "securenow.v1.UserService/GetUser", users_pb2.GetUserRequest(user_id="me").SerializeToString()
    )
    assert trailers["grpc-status"] == "16"  # UNAUTHENTICATED: the same authentication as native gRPC

    _, _, _, trailers = await call(runtime, "securenow.v1.SosService/ShareLocation", b"")
    assert trailers["grpc-status"] == "12"  # UNIMPLEMENTED: browsers cannot stream from the client


async def test_server_streaming_watch_over_grpc_web(runtime: Runtime, api: Api) -> None:
    person = await api.sign_up()
    raised = await raise_sos(api, person, (1.0, 1.0))
    headers = {"Content-Type": GRPC_WEB, "Authorization": f"Bearer {person.access_token}"}
    body = encode(sos_pb2.WatchSosRequest(alert_id=raised.id).SerializeToString())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{runtime.http_port}/securenow.v1.SosService/WatchSos", data=body, headers=headers
        ) as resp,
    ):
        header = await resp.content.readexactly(5)
        _, length = struct.unpack(">BI", header)
        first = sos_pb2.WatchSosResponse.FromString(await resp.content.readexactly(length))
        assert first.event == "snapshot"
        await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=raised.id), metadata=person.md)
        messages, trailers = decode(await resp.content.read())
    assert [sos_pb2.WatchSosResponse.FromString(m).event for m in messages] == ["cancelled"]
    assert trailers["grpc-status"] == "0"


async def test_cors_only_for_configured_origins(runtime: Runtime) -> None:
    url = f"http://127.0.0.1:{runtime.http_port}/securenow.v1.AuthService/SignIn"
    preflight = {"Origin": "http://console.example", "Access-Control-Request-Method": "POST"}
    async with aiohttp.ClientSession() as http:
        async with http.options(url, headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "http://console.example"
            assert "authorization" in resp.headers["Access-Control-Allow-Headers"]
        async with http.options(url, headers={**preflight, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
    _, headers, _, _ = await call(runtime, "securenow.v1.AuthService/SignIn", b"", origin="http://console.example")
    assert headers["Access-Control-Allow-Origin"] == "http://console.example"
    assert "grpc-status" in headers["Access-Control-Expose-Headers"]


def watchers_of(runtime: Runtime, alert_id: str) -> int:
    """Open WatchSos streams of one alert in the server (its in-memory fan-out)."""
    return len(runtime.app.watch_hub._watchers.get(alert_id, ()))


async def test_a_browser_that_goes_away_ends_its_watch_on_the_server(runtime: Runtime, api: Api) -> None:
    # A quiet alert: no change would ever make the server write (and notice) again.
    person = await api.sign_up()
    raised = await raise_sos(api, person, (1.0, 1.0))
    alert_id = raised.id
    headers = {"Content-Type": GRPC_WEB, "Authorization": f"Bearer {person.access_token}"}
    body = encode(sos_pb2.WatchSosRequest(alert_id=alert_id).SerializeToString())
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"http://127.0.0.1:{runtime.http_port}/securenow.v1.SosService/WatchSos", data=body, headers=headers
        )
        _, length = struct.unpack(">BI", await resp.content.readexactly(5))
        assert sos_pb2.WatchSosResponse.FromString(await resp.content.readexactly(length)).event == "snapshot"
        assert watchers_of(runtime, alert_id) == 1
        resp.close()  # the tab is closed: the socket goes away mid-stream

    async def gone() -> bool:
        return watchers_of(runtime, alert_id) == 0

    await wait_for(gone, within=5, what="the server to drop the closed tab's watcher")


async def post(
    runtime: Runtime, method: str, body: bytes | AsyncIterator[bytes], headers: Mapping[str, str]
) -> tuple[int, dict[str, str], list[bytes], dict[str, str]]:
    """A raw POST; the status comes from the trailer frame or, trailers-only, the headers."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{runtime.http_port}/{method}", data=body, headers=headers) as resp,
    ):
        raw = await resp.read()
        if resp.headers.get("Content-Type", "").startswith("application/grpc-web-text"):
            raw = b"".join(base64.b64decode(raw[i : i + 4]) for i in range(0, len(raw), 4))
        if not resp.headers.get("Content-Type", "").startswith("application/grpc-web"):
            return resp.status, dict(resp.headers), [], {}
        messages, trailers = decode(raw)
        if "grpc-status" in resp.headers:
            trailers = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("grpc-")}
        return resp.status, dict(resp.headers), messages, trailers


def sign_up_body(first_name: str) -> bytes:
    return encode(
        auth_pb2.SignUpRequest(
            email=unique_email(), phone=unique_phone(), first_name=first_name, last_name="User", password=PASSWORD
        ).SerializeToString()
    )


async def test_only_grpc_web_protobuf_content_types_are_accepted(runtime: Runtime) -> None:
    method, body = "securenow.v1.AuthService/SignUp", sign_up_body("Web")
    for content_type in ("application/grpc-web+json", "application/grpc-web-text+json", "application/json", ""):
        status, _, _, _ = await post(runtime, method, body, {"Content-Type": content_type})
        assert status == 415, content_type
    for content_type in ("application/grpc-web", "application/grpc-web+proto", "Application/gRPC-Web+proto"):
        status, _, _, trailers = await post(runtime, method, sign_up_body("Web"), {"Content-Type": content_type})
        assert (status, trailers["grpc-status"]) == (200, "0"), content_type
    for content_type in ("application/grpc-web-text", "application/grpc-web-text+proto"):
        status, _, _, trailers = await post(
            runtime, method, base64.b64encode(sign_up_body("Web")), {"Content-Type": content_type}
        )
        assert (status, trailers["grpc-status"]) == (200, "0"), content_type


async def test_large_bodies_get_a_grpc_status_in_text_mode_too(runtime: Runtime) -> None:
    # 3.5 MiB is under the 4 MiB message limit, but 4.7 MiB once base64-encoded: it must
    # reach the server (which refuses the name as too long), not stop at HTTP 413.
    method = "securenow.v1.AuthService/SignUp"
    text = {"Content-Type": "application/grpc-web-text"}
    status, _, _, trailers = await post(runtime, method, base64.b64encode(sign_up_body("x" * 3_500_000)), text)
    assert (status, trailers["grpc-status"]) == (200, "3")  # INVALID_ARGUMENT, from the server
    details = status_pb2.Status.FromString(base64.b64decode(trailers["grpc-status-details-bin"]))
    violations = error_details_pb2.BadRequest()
    assert any(d.Unpack(violations) for d in details.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
    assert "first_name" in {v.field for v in violations.field_violations}

    # Over the message limit: RESOURCE_EXHAUSTED, as native gRPC answers, in both modes.
    oversized = sign_up_body("x" * (4 * 1024 * 1024 + 10))
    status, _, _, trailers = await post(runtime, method, base64.b64encode(oversized), text)
    assert (status, trailers["grpc-status"]) == (200, "8")
    status, _, _, trailers = await post(runtime, method, oversized, {"Content-Type": GRPC_WEB})
    assert (status, trailers["grpc-status"]) == (200, "8")
    # A frame header announcing more than the limit, with a short body.
    lying = struct.pack(">BI", 0, 5 * 1024 * 1024) + b"x" * 10
    status, _, _, trailers = await post(runtime, method, lying, {"Content-Type": GRPC_WEB})
    assert (status, trailers["grpc-status"]) == (200, "8")


async def test_bad_headers_are_answered_as_grpc_errors_never_http_500(runtime: Runtime) -> None:
    method = "securenow.v1.UserService/GetUser"
    body = encode(users_pb2.GetUserRequest(user_id="me").SerializeToString())
    status, headers, _, trailers = await post(
        runtime,
        method,
        body,
        {"Content-Type": GRPC_WEB, "Authorization": "Bearer tökén", "Origin": "http://console.example"},
    )
    assert (status, trailers["grpc-status"]) == (200, "16")  # UNAUTHENTICATED
    assert headers["Access-Control-Allow-Origin"] == "http://console.example"  # readable by the page
    details = status_pb2.Status.FromString(base64.b64decode(trailers["grpc-status-details-bin"]))
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in details.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR))
    assert info.reason == "MALFORMED_CREDENTIALS"

    status, _, _, trailers = await post(runtime, method, body, {"Content-Type": GRPC_WEB, "X-Request-Id": "ünï"})
    assert (status, trailers["grpc-status"]) == (200, "3")  # INVALID_ARGUMENT
    assert "x-request-id" in unquote(trailers["grpc-message"])

    status, _, _, trailers = await post(runtime, method, b"\x00\x00", {"Content-Type": GRPC_WEB})
    assert (status, trailers["grpc-status"]) == (200, "3")  # a truncated frame


async def test_the_server_sees_the_browsers_address_not_a_forwarded_for_it_sent(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="securenow.access")  # the server's one line per call
    body = encode(auth_pb2.SignInRequest(email="nobody@example.com", password=PASSWORD).SerializeToString())
    headers = {"Content-Type": GRPC_WEB, "X-Forwarded-For": "203.0.113.9"}
    _, _, _, trailers = await post(runtime, "securenow.v1.AuthService/SignIn", body, headers)
    assert trailers["grpc-status"] == "16"
    logged = [r for r in caplog.records if getattr(r, "rpc", "") == "/securenow.v1.AuthService/SignIn"]
    assert logged, "the server logged no SignIn call"
    fields = " ".join(str(v) for v in vars(logged[-1]).values())
    assert "203.0.113.9" not in fields  # a browser cannot choose the address the server logs
    assert "127.0.0.1" in fields  # this test's address (the browser's), as the gateway saw it


def sign_in_message() -> bytes:
    return auth_pb2.SignInRequest(email="nobody@example.com", password=PASSWORD).SerializeToString()


async def test_a_request_is_exactly_one_uncompressed_message(runtime: Runtime) -> None:
    method, message = "securenow.v1.AuthService/SignIn", sign_in_message()
    binary = {"Content-Type": GRPC_WEB}
    refused = {
        "two messages": (encode(message) + encode(message), binary, "3"),
        "no message": (b"", binary, "3"),
        "compressed, no grpc-encoding": (struct.pack(">BI", 1, len(message)) + message, binary, "3"),
        "gzip": (struct.pack(">BI", 1, len(message)) + message, {**binary, "grpc-encoding": "gzip"}, "12"),
        "a trailer frame": (struct.pack(">BI", 0x80, 3) + b"a:b", binary, "3"),
        "a trailer, then a message": (struct.pack(">BI", 0x80, 3) + b"a:b" + encode(message), binary, "3"),
    }
    for case, (body, headers, code) in refused.items():
        # Before, the extra or flagged frames were dropped and the call went on without them.
        status, _, _, trailers = await post(runtime, method, body, headers)
        assert (status, trailers["grpc-status"]) == (200, code), case
        assert "grpc-status-details-bin" not in trailers, case  # the gateway's answer, not the server's
    _, headers, _, _ = await post(
        runtime, method, struct.pack(">BI", 1, len(message)) + message, {**binary, "grpc-encoding": "gzip"}
    )
    assert headers["grpc-accept-encoding"] == "identity"
    # An empty message is a message: it reaches the server, which names the missing fields.
    status, _, _, trailers = await post(runtime, method, encode(b""), binary)
    assert (status, trailers["grpc-status"]) == (200, "3")
    assert "email" in unquote(trailers["grpc-message"])


async def test_grpc_web_text_is_strict_base64_padded_or_not(runtime: Runtime) -> None:
    method, text = "securenow.v1.AuthService/SignIn", {"Content-Type": "application/grpc-web-text"}
    body = encode(sign_in_message() + b"\x10\x00")  # a length that base64 pads
    assert len(body) % 3
    padded = base64.b64encode(body)
    per_frame = base64.b64encode(body[:7]) + base64.b64encode(body[7:])  # each part padded on its own
    for case, data in {"padded": padded, "unpadded": padded.rstrip(b"="), "padded per part": per_frame}.items():
        _, _, _, trailers = await post(runtime, method, data, text)
        assert trailers["grpc-status"] == "16", case  # decoded and answered by the server

    async def in_pieces_of_5() -> AsyncIterator[bytes]:
        for i in range(0, len(per_frame), 5):
            yield per_frame[i : i + 5]

    _, _, _, trailers = await post(runtime, method, in_pieces_of_5(), text)
    assert trailers["grpc-status"] == "16"

    # Before, non-alphabet characters were skipped: "!!!!" became an empty request.
    for case, data in {"not base64": b"!!!!", "garbage first": b"AAAA!!!!" + padded, "bad padding": b"AAA=A"}.items():
        status, _, _, trailers = await post(runtime, method, data, text)
        assert (status, trailers["grpc-status"]) == (200, "3"), case
        assert "base64" in unquote(trailers["grpc-message"]), case


async def test_grpc_timeout_is_the_calls_deadline_and_a_malformed_one_is_refused(runtime: Runtime, api: Api) -> None:
    method, body = "securenow.v1.AuthService/SignIn", encode(sign_in_message())
    for value in ("abc", "\u00b2S", "100000000S", "5", "S"):  # "²S" was an INTERNAL error
        status, _, _, trailers = await post(runtime, method, body, {"Content-Type": GRPC_WEB, "grpc-timeout": value})
        assert (status, trailers["grpc-status"]) == (200, "3"), value
        assert "grpc-timeout" in unquote(trailers["grpc-message"]), value
    for value, code in (("99999999H", "16"), ("30S", "16"), ("0n", "4")):  # 99999999H expired at once
        _, _, _, trailers = await post(runtime, method, body, {"Content-Type": GRPC_WEB, "grpc-timeout": value})
        assert trailers["grpc-status"] == code, value

    # A stream ends with DEADLINE_EXCEEDED when its grpc-timeout runs out.
    person = await api.sign_up()
    raised = await raise_sos(api, person, (1.0, 1.0))
    headers = {"Content-Type": GRPC_WEB, "Authorization": f"Bearer {person.access_token}", "grpc-timeout": "500m"}
    watch = encode(sos_pb2.WatchSosRequest(alert_id=raised.id).SerializeToString())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{runtime.http_port}/securenow.v1.SosService/WatchSos", data=watch, headers=headers
        ) as resp,
    ):
        messages, trailers = decode(await asyncio.wait_for(resp.content.read(), 10))
    assert [sos_pb2.WatchSosResponse.FromString(m).event for m in messages] == ["snapshot"]
    assert trailers["grpc-status"] == "4"


async def test_other_http_methods_get_405_the_page_can_read(runtime: Runtime) -> None:
    url = f"http://127.0.0.1:{runtime.http_port}/securenow.v1.AuthService/SignIn"
    async with aiohttp.ClientSession() as http:
        for verb in ("GET", "PUT", "DELETE", "PATCH"):
            async with http.request(verb, url, headers={"Origin": "http://console.example"}) as resp:
                assert resp.status == 405, verb
                assert resp.headers["Allow"] == "POST, OPTIONS"
                assert resp.headers["Access-Control-Allow-Origin"] == "http://console.example"


async def test_unknown_and_client_streaming_methods_are_unimplemented(runtime: Runtime) -> None:
    binary = {"Content-Type": GRPC_WEB, "Origin": "http://console.example"}
    for path in ("securenow.v1.NopeService/Get", "securenow.v1.AuthService/Nope", "..%2F..%2Fetc/passwd"):
        status, headers, _, trailers = await post(runtime, path, encode(b""), binary)
        assert (status, trailers["grpc-status"]) == (200, "12"), path
        assert headers["Access-Control-Allow-Origin"] == "http://console.example"
    _, _, _, trailers = await post(runtime, "securenow.v1.AgencyService/StreamDispatch", encode(b""), binary)
    assert trailers["grpc-status"] == "12"
    assert "use WatchDispatch" in unquote(trailers["grpc-message"])  # not just "use the watch variant"
    _, _, _, trailers = await post(runtime, "securenow.v1.SosService/ShareLocation", encode(b""), binary)
    assert trailers["grpc-status"] == "12"
    assert "native gRPC client" in unquote(trailers["grpc-message"])


async def test_a_huge_declared_body_is_refused_before_it_is_read(runtime: Runtime) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.http_port)
    head = f"POST /securenow.v1.AuthService/SignIn HTTP/1.1\r\nHost: x\r\nContent-Type: {GRPC_WEB}\r\n"
    writer.write(f"{head}Content-Length: 10000000000\r\n\r\n".encode() + b"\x00" * 1024)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # 10 GB never sent
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"grpc-status: 8" in answer  # RESOURCE_EXHAUSTED


def dispatch_subscribers(runtime: Runtime, department_id: str) -> int:
    """Open WatchDispatch/StreamDispatch subscriptions of one department in the server."""
    return len(runtime.app.dispatch_hub._subs.get(department_id, ()))


async def test_a_browser_that_goes_away_ends_its_dispatch_watch_on_the_server(runtime: Runtime, api: Api) -> None:
    dept = await register_department(api, await api.admin(), SF)
    headers = {"Content-Type": GRPC_WEB, "Authorization": f"Bearer {dept.api_key}"}
    url = f"http://127.0.0.1:{runtime.http_port}/securenow.v1.AgencyService/WatchDispatch"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url, data=encode(agency_pb2.WatchDispatchRequest().SerializeToString()), headers=headers)
        assert resp.status == 200

        async def subscribed() -> bool:
            return dispatch_subscribers(runtime, dept.id) == 1

        await wait_for(subscribed, within=5, what="the browser's dispatch subscription")
        resp.close()  # the console tab is closed on a quiet department

    async def gone() -> bool:
        return dispatch_subscribers(runtime, dept.id) == 0

    await wait_for(gone, within=5, what="the server to drop the closed tab's dispatch subscription")
