"""The server as operators and integrators meet it: health, reflection, the access
table, metrics, structured logs, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

import aiohttp
import asyncpg
import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from securenow.server.logs import JsonFormatter
from securenow.server.runtime import WORKER_CRASHES, Runtime
from securenow.server.transport.access import RULES
from securenow.v1 import (
    agency_pb2,
    analytics_pb2,
    auth_pb2,
    bookings_pb2,
    providers_pb2,
    search_pb2,
    sos_pb2,
    users_pb2,
)
from tests.conftest import REDIS_URL
from tests.dispatch_helpers import SF, Cad, raise_sos, register_department
from tests.helpers import PASSWORD, Api, expect_error, wait_for
from tests.processes import ServerProcess

SERVICES = [
    f.services_by_name[name]
    for f, name in [
        (auth_pb2.DESCRIPTOR, "AuthService"),
        (users_pb2.DESCRIPTOR, "UserService"),
        (providers_pb2.DESCRIPTOR, "ProviderService"),
        (bookings_pb2.DESCRIPTOR, "BookingService"),
        (sos_pb2.DESCRIPTOR, "SosService"),
        (agency_pb2.DESCRIPTOR, "AgencyService"),
        (search_pb2.DESCRIPTOR, "SearchService"),
        (analytics_pb2.DESCRIPTOR, "AnalyticsService"),
    ]
]
ALL_METHODS = [(s, m) for s in SERVICES for m in s.methods]


async def test_health_reports_serving(runtime: Runtime, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "securenow.v1.SosService", "securenow.v1.AgencyService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for resp in stub.ServerReflectionInfo(ask()):
        names = {s.name for s in resp.list_services_response.service}
        break
    assert {s.full_name for s in SERVICES} | {"grpc.health.v1.Health"} <= names


def test_every_rpc_has_an_access_rule() -> None:
    missing = [f"/{s.full_name}/{m.name}" for s, m in ALL_METHODS if f"/{s.full_name}/{m.name}" not in RULES]
    assert missing == []
    public = sorted(path for path, rule in RULES.items() if rule.public and path.startswith("/securenow"))
    assert public == [
        "/securenow.v1.AuthService/RefreshToken",
        "/securenow.v1.AuthService/SignIn",
        "/securenow.v1.AuthService/SignUp",
    ]


@pytest.mark.parametrize(("service", "method"), ALL_METHODS, ids=lambda x: getattr(x, "name", ""))
async def test_every_non_public_rpc_needs_credentials(channel: grpc.aio.Channel, service, method) -> None:  # type: ignore[no-untyped-def]
    path = f"/{service.full_name}/{method.name}"
    if RULES[path].public:
        return
    request_cls = GetMessageClass(method.input_type)
    kind = (method.client_streaming, method.server_streaming)
    serialize, deserialize = request_cls.SerializeToString, lambda b: b
    if kind == (False, False):
        call = channel.unary_unary(path, serialize, deserialize)(request_cls())
    elif kind == (False, True):
        call = channel.unary_stream(path, serialize, deserialize)(request_cls()).read()
    else:

        async def one():  # type: ignore[no-untyped-def]
            yield request_cls()

        if kind == (True, False):
            call = channel.stream_unary(path, serialize, deserialize)(one())
        else:
            call = channel.stream_stream(path, serialize, deserialize)(one()).read()
    await expect_error(call, grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_metrics_count_calls_by_method_and_code(api: Api, runtime: Runtime) -> None:
    await expect_error(
        api.auth.SignIn(auth_pb2.SignInRequest(email="nobody@example.com", password="x")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{runtime.http_port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert (
        'securenow_grpc_server_handled_total{grpc_code="UNAUTHENTICATED",grpc_method="SignIn",'
        'grpc_service="securenow.v1.AuthService"}' in text
    )
    assert "securenow_grpc_server_handling_seconds_bucket" in text


async def test_access_logs_are_json_and_never_hold_secrets(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    account = await api.sign_up(password="Sup3r-secret-pass")
    await api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password="Sup3r-secret-pass"))
    await api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=account.md)
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    access = [json.loads(line) for line in lines if '"msg": "rpc"' in line]
    assert {entry["rpc"] for entry in access} >= {
        "/securenow.v1.AuthService/SignUp",
        "/securenow.v1.AuthService/SignIn",
        "/securenow.v1.UserService/GetUser",
    }
    assert all({"code", "duration_ms", "principal"} <= set(entry) for entry in access)
    everything = "\n".join(lines)
    for secret in ("Sup3r-secret-pass", account.access_token, account.refresh_token, PASSWORD):
        assert secret not in everything


async def test_sigterm_lets_the_in_flight_call_finish_refuses_new_ones_and_exits_0(
    database: str, db_conn: asyncpg.Connection
) -> None:
    """`securenow serve` as deployed, stopped the way an orchestrator stops it."""
    server = ServerProcess(database, REDIS_URL, SECURENOW_RUN_WORKERS="false", SECURENOW_SHUTDOWN_GRACE_SECONDS="30")
    blocker = await asyncpg.connect(database)
    try:
        await server.start()
        assert server.proc is not None
        async with grpc.aio.insecure_channel(server.address) as ch:
            api = Api(ch, None)  # type: ignore[arg-type]
            account = await api.sign_up()
            # Hold UpdateUser in flight: it waits on a row lock this test holds.
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", account.id)
            in_flight = asyncio.ensure_future(
                api.users.UpdateUser(
                    users_pb2.UpdateUserRequest(
                        user=users_pb2.User(id="me", first_name="Grace"), update_mask={"paths": ["first_name"]}
                    ),
                    metadata=account.md,
                    timeout=60,
                )
            )

            async def blocked() -> bool:
                waiting = await db_conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'SELECT%FOR UPDATE%'"
                )
                return bool(waiting)

            await wait_for(blocked, what="UpdateUser waiting on the row lock")
            server.proc.send_signal(signal.SIGTERM)

            async def refused() -> bool:
                try:
                    await api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=account.md, timeout=2)
                except grpc.aio.AioRpcError as err:
                    # A call racing the start of shutdown may be cancelled or left
                    # unanswered; once the server stopped listening, new calls are UNAVAILABLE.
                    return bool(err.code() == grpc.StatusCode.UNAVAILABLE)
                return False  # served: the signal is not handled yet

            await wait_for(refused, what="new calls refused after SIGTERM")
            # Refusing new calls while this one is still held, and still running.
            assert not in_flight.done()
            assert server.proc.returncode is None

            await tx.rollback()
            resp = await in_flight  # the in-flight call completes normally
            assert resp.user.first_name == "Grace"
        assert await asyncio.wait_for(server.proc.wait(), 15) == 0, server.output()
        stored = await db_conn.fetchval("SELECT first_name FROM users WHERE id = $1", account.id)
        assert stored == "Grace"
    finally:
        await blocker.close()
        await server.stop()


async def test_a_worker_that_fails_unexpectedly_is_restarted(
    api: Api, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a background worker (here the outbox relay: an error it does not expect)
    must not end it silently while the server looks healthy: it is logged, counted and
    started again, and the alert raised meanwhile still reaches the CAD."""
    relay = runtime.app.relay
    real_step = relay.step
    failed: list[bool] = []

    async def step_failing_once() -> int:
        if not failed:
            failed.append(True)
            raise RuntimeError("an unexpected bug")
        return await real_step()

    crashes = WORKER_CRASHES.labels("outbox-relay")
    before = crashes._value.get()
    monkeypatch.setattr(relay, "step", step_failing_once)
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, await api.sign_up(), SF)
        raised = await cad.next_event("alert_raised", within=15)
        assert raised.alert_raised.alert.id == alert.id
    finally:
        await cad.close()
    assert failed == [True]
    assert crashes._value.get() == before + 1
    assert any("outbox-relay failed unexpectedly" in r.getMessage() for r in caplog.records)
