"""The Python SDK: defects found in review, each pinned by a test (real server,
real sockets)."""

from __future__ import annotations

import asyncio
import signal
import time
import traceback
from pathlib import Path

import grpc
import pytest

from securenow.client import MemoryCursorStore, SecureNowClient, SecureNowError
from securenow.server.runtime import Runtime
from securenow.v1 import auth_pb2, users_pb2
from tests.conftest import target
from tests.dispatch_helpers import SF, raise_sos, register_department
from tests.helpers import PASSWORD, Api, unique_email, unique_phone, wait_for
from tests.sdk_helpers import connector, silent_server


def alert_of(line: str) -> str:
    return line.split("alert=")[1].split()[0]


def depth(error: BaseException) -> int:
    return len(traceback.extract_tb(error.__traceback__))


async def test_an_ended_session_raises_a_fresh_error_on_every_call(client: SecureNowClient) -> None:
    await client.sign_up(
        email=unique_email(), phone=unique_phone(), password=PASSWORD, first_name="Tb", last_name="Growth"
    )
    # The server refuses this refresh token: the session is over, the access token "expired".
    client.session.set_tokens(client.session.access_token or "", "rt_unknown.secret", time.time() - 1)
    errors: list[grpc.aio.AioRpcError] = []
    for _ in range(6):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.users.GetUser(users_pb2.GetUserRequest(user_id="me"))
        errors.append(failed.value)
    assert {e.code() for e in errors} == {grpc.StatusCode.UNAUTHENTICATED}
    assert client.session.ended_by is not None
    # Before, one stored error was raised again each time: its traceback grew by every
    # call (and kept every frame alive), a leak in a long-running app.
    assert len({id(e) for e in errors}) == len(errors)
    assert depth(errors[-1]) == depth(errors[1])


async def test_a_stopped_consumer_raises_a_fresh_error_each_time(runtime: Runtime) -> None:
    async with SecureNowClient(target(runtime), api_key="sk_not_a_key") as c:
        consumer = c.dispatch_consumer(MemoryCursorStore())
        async with consumer:
            errors: list[SecureNowError] = []
            for _ in range(6):
                with pytest.raises(SecureNowError) as stopped:
                    await asyncio.wait_for(anext(consumer), 10)
                errors.append(stopped.value)
    assert {e.code for e in errors} == {grpc.StatusCode.UNAUTHENTICATED}
    assert len({id(e) for e in errors}) == len(errors)
    assert depth(errors[-1]) == depth(errors[1])


async def test_the_time_a_refresh_takes_comes_off_the_calls_own_deadline() -> None:
    refreshed = asyncio.Event()

    async def slow_refresh(request: auth_pb2.RefreshTokenRequest) -> auth_pb2.RefreshTokenResponse:
        # A slow, but answering, token exchange (a congested link): 0.6 s of the 1 s.
        await asyncio.sleep(0.6)
        refreshed.set()
        response = auth_pb2.RefreshTokenResponse(access_token="at_new", refresh_token="rt_2")
        response.access_token_expire_time.FromSeconds(int(time.time()) + 900)
        return response

    async with silent_server() as stalled, SecureNowClient(stalled) as c:
        c.session.bind(slow_refresh)
        c.session.set_tokens("at_old", "rt_1", time.time() - 1)  # the call refreshes first
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await c.users.GetUser(users_pb2.GetUserRequest(user_id="me"), timeout=1.0)
        elapsed = time.monotonic() - started
    assert refreshed.is_set()
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Before, the call got its full second again after the refresh: 1.6 s for a 1 s
    # deadline (and a RaiseSos attempt bounded to 10 s could take 20).
    assert elapsed < 1.4, elapsed


async def test_events_the_connector_prints_while_stopping_are_acknowledged_not_printed_again(
    api: Api, runtime: Runtime, tmp_path: Path
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    for n in range(25):  # a backlog: the connector is still printing it when told to stop
        await raise_sos(api, person, SF, description=f"backlog {n}")
    cursor_file = tmp_path / "cursor"
    args = ["--server", f"127.0.0.1:{runtime.grpc_port}", "--cursor-file", str(cursor_file), "--no-stdin"]
    env = {"SECURENOW_API_KEY": dept.api_key}
    async with connector(args, env=env) as cad:
        await cad.out.until("ALERT alert=", what="the first alert line")
        cad.proc.send_signal(signal.SIGTERM)
        assert await cad.exit_code() == 0
        assert cad.proc.stdout is not None
        rest = (await cad.proc.stdout.read()).decode().splitlines()
    printed = {alert_of(line) for line in cad.out.lines + rest if "ALERT alert=" in line}
    assert printed

    # Every event printed (and so recorded in the cursor file) was acknowledged to the
    # server: the next run does not print it again. Before, events printed while the
    # stream was closing were acked after the half-close, so their acks never left;
    # the cursor passed them anyway and the next run printed them a second time.
    async with connector(args, env=env) as cad:
        # The marker comes after the catch-up (pending events first, in order).
        marker = await raise_sos(api, person, SF, description="marker")
        await cad.out.until(f"ALERT alert={marker.id}", what="the marker alert")
        again = {alert_of(line) for line in cad.out.lines if "ALERT alert=" in line} - {marker.id}
        cad.proc.send_signal(signal.SIGTERM)
        assert await cad.exit_code() == 0
    assert not printed & again, f"{len(printed & again)} of {len(printed)} printed alerts came again"


async def test_a_consumer_hands_out_no_event_once_close_began(api: Api, runtime: Runtime) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    for n in range(25):
        await raise_sos(api, person, SF, description=f"backlog {n}")
    store = MemoryCursorStore()
    handled: list[str] = []
    async with SecureNowClient(target(runtime), api_key=dept.api_key) as c:
        consumer = c.dispatch_consumer(store)

        async def handle_all() -> None:
            async for event in consumer:
                await asyncio.sleep(0)  # handing the alert on to the CAD takes a moment
                handled.append(event.alert_raised.alert.id)
                consumer.ack(event.event_id)

        async with consumer:
            worker = asyncio.create_task(handle_all())
            await wait_for(lambda: _true(bool(handled)), what="the first event")
        await asyncio.wait_for(worker, 10)  # iteration ends with close()

        # Everything handed out was acknowledged to the server: a new consumer from
        # the same cursor gets none of it again (only what was never handed out).
        marker = await raise_sos(api, person, SF, description="marker")
        again: list[str] = []
        async with c.dispatch_consumer(store) as second:
            while not again or again[-1] != marker.id:
                event = await second.next_event(10)
                again.append(event.alert_raised.alert.id)
                second.ack(event.event_id)
    assert not set(handled) & set(again), f"{len(set(handled) & set(again))} of {len(handled)} came again"


async def _true(value: bool) -> bool:
    return value
