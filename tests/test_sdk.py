"""The Python SDK (securenow.client) against the in-process server, over real
sockets: sessions and token refresh, structured errors, SOS retries and watching,
and the CAD dispatch consumer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
import pytest

from securenow.client import (
    CursorFileError,
    DispatchConsumer,
    FileCursorStore,
    MemoryCursorStore,
    RetryPolicy,
    SecureNowClient,
    SecureNowError,
    Session,
)
from securenow.client.cursor import is_after
from securenow.client.dispatch import RECONNECT_POLICY
from securenow.client.retry import Backoff
from securenow.client.sos import WATCH_POLICY
from securenow.server.runtime import Runtime
from securenow.v1 import agency_pb2, auth_pb2, common_pb2, sos_pb2, users_pb2
from tests.conftest import target
from tests.dispatch_helpers import SF, raise_sos, register_department
from tests.helpers import PASSWORD, Api, unique_email, unique_phone, wait_for
from tests.sdk_helpers import TcpProxy, self_signed_tls, silent_server

T = TypeVar("T")
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, total_timeout=20.0, attempt_timeout=5.0)
# The SDK's default reconnect policies (same codes, no overall limit), only quicker.
FAST_WATCH = dataclasses.replace(WATCH_POLICY, initial_backoff=0.05, max_backoff=0.5)
FAST_RECONNECT = dataclasses.replace(RECONNECT_POLICY, initial_backoff=0.05, max_backoff=0.5)
# Reconnect right away after a connection is cut (the default first backoff is 1 s).
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50))


@pytest.fixture
async def proxy(runtime: Runtime) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(runtime.grpc_port) as p:
        yield p


async def signed_up(c: SecureNowClient) -> users_pb2.User:
    return await c.sign_up(
        email=unique_email(), phone=unique_phone(), password=PASSWORD, first_name="Sam", last_name="Sdk"
    )


async def me(c: SecureNowClient) -> users_pb2.User:
    user: users_pb2.User = (await c.users.GetUser(users_pb2.GetUserRequest(user_id="me"))).user
    return user


# Sessions ------------------------------------------------------------------------------------


async def test_sign_up_and_sign_in_keep_tokens_that_authenticate_calls(
    runtime: Runtime, client: SecureNowClient
) -> None:
    email = unique_email()
    user = await client.sign_up(email=email, phone=unique_phone(), password=PASSWORD, first_name="A", last_name="B")
    assert client.session.access_token
    assert client.session.refresh_token
    assert client.session.access_token_expire_time is not None
    assert (await me(client)).id == user.id

    async with SecureNowClient(target(runtime)) as other:
        signed_in = await other.sign_in(email=email, password=PASSWORD)
        assert signed_in.id == user.id
        assert (await me(other)).id == user.id
        with pytest.raises(SecureNowError) as wrong:
            await other.sign_in(email=email, password="Wrong-password-1")
        assert wrong.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert wrong.value.reason == "BAD_CREDENTIALS"


async def test_an_expiring_access_token_is_refreshed_before_the_call(
    client: SecureNowClient, db_conn: asyncpg.Connection
) -> None:
    user = await signed_up(client)
    old_access, old_refresh = client.session.access_token, client.session.refresh_token
    assert (await me(client)).id == user.id
    assert client.session.refresh_count == 0  # a fresh token is not refreshed

    client.session.expire_access_token()
    assert (await me(client)).id == user.id
    assert client.session.refresh_count == 1
    assert client.session.access_token != old_access
    assert client.session.refresh_token != old_refresh
    # The server spent exactly one refresh token, once.
    assert await db_conn.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NOT NULL") == 1
    # Later calls use the new token without refreshing again.
    await me(client)
    assert client.session.refresh_count == 1


async def test_a_caller_cancelled_during_a_refresh_does_not_lose_the_new_tokens(client: SecureNowClient) -> None:
    user = await signed_up(client)
    budgets = (0.001, 0.003, 0.006, 0.01, 0.02, 0.04)
    for budget in budgets:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.refresh(), budget)  # the caller gives up mid-refresh
        # The exchange finishes anyway and its tokens are kept. Had the response been
        # lost, the next refresh would present a spent refresh token and the server's
        # reuse detection would end the session.
        assert (await me(client)).id == user.id
    await client.refresh()
    assert (await me(client)).id == user.id
    # (A caller cancelled while an earlier exchange was still landing started none.)
    assert 1 <= client.session.refresh_count <= len(budgets) + 1


async def test_a_refresh_margin_longer_than_the_token_lifetime_refreshes_before_every_call(runtime: Runtime) -> None:
    async with SecureNowClient(target(runtime), refresh_margin=24 * 3600) as c:
        await signed_up(c)
        await me(c)
        await me(c)
        assert c.session.refresh_count == 2


async def test_an_invalid_token_answer_refreshes_once_and_repeats_the_call(client: SecureNowClient) -> None:
    user = await signed_up(client)
    expire = client.session.access_token_expire_time
    assert expire is not None
    refresh = client.session.refresh_token
    assert refresh is not None
    # The server says INVALID_TOKEN for this one (as for an expired token the client
    # still believes valid, e.g. after a clock jump).
    client.session.set_tokens("not-a-valid-jwt", refresh, expire)
    assert (await me(client)).id == user.id
    assert client.session.refresh_count == 1
    assert client.session.access_token != "not-a-valid-jwt"

    # Streams recover the same way.
    alert = await client.raise_sos(location=SF)
    client.session.set_tokens("not-a-valid-jwt", client.session.refresh_token or "", expire)
    updates = client.watch_sos(alert.id, reconnect=FAST_WATCH)
    assert (await asyncio.wait_for(anext(updates), 10)).event == "snapshot"
    await updates.aclose()
    assert client.session.refresh_count == 2

    # Without a usable refresh token the INVALID_TOKEN error reaches the caller (once).
    client.session.set_tokens("not-a-valid-jwt", "rt_bogus", expire)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await me(client)
    error = SecureNowError.from_rpc_error(failed.value)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "INVALID_TOKEN"
    assert client.session.refresh_token is None  # a refused refresh token is not tried again


async def test_an_api_key_is_sent_as_is_and_never_refreshed(api: Api, runtime: Runtime) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    async with SecureNowClient(target(runtime), api_key=dept.api_key) as c:
        listed = await c.agency.ListIncidents(agency_pb2.ListIncidentsRequest())
        assert list(listed.incidents) == []
        assert c.session.refresh_count == 0


async def test_concurrent_callers_share_one_refresh_even_when_it_fails() -> None:
    session = Session()
    calls: list[str] = []
    release = asyncio.Event()

    async def refresher(request: auth_pb2.RefreshTokenRequest) -> auth_pb2.RefreshTokenResponse:
        calls.append(request.refresh_token)
        await release.wait()
        # The answer is lost: the server may have spent the token, so presenting it
        # again would look like reuse and end the session.
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "cut")

    session.bind(refresher)
    session.set_tokens("at_old", "rt_1", time.time() + 5)  # inside the refresh margin
    callers = [asyncio.create_task(session.bearer()) for _ in range(5)]
    await wait_for(lambda: _async(bool(calls)), what="the refresh to start")
    release.set()
    assert await asyncio.gather(*callers) == ["at_old"] * 5  # the current token is still used
    assert calls == ["rt_1"]  # one exchange for all five callers


async def test_a_refused_refresh_surfaces_its_reason_and_is_not_tried_again(client: SecureNowClient) -> None:
    await signed_up(client)
    access, spent = client.session.access_token, client.session.refresh_token
    assert access is not None
    assert spent is not None
    await client.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=spent))  # used elsewhere
    client.session.set_tokens(access, spent, time.time() - 1)  # expired: the next call refreshes first
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await me(client)
        error = SecureNowError.from_rpc_error(refused.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    assert client.session.refresh_token is None
    ended = client.session.ended_by
    assert ended is not None
    assert ended.reason == "REFRESH_TOKEN_REUSED"
    with pytest.raises(SecureNowError) as helper:
        await client.raise_sos(location=SF, retry=FAST)
    assert helper.value.reason == "REFRESH_TOKEN_REUSED"
    assert client.session.refresh_count == 0


# Errors -----------------------------------------------------------------------------------------


async def test_invalid_arguments_become_structured_errors_with_field_names(client: SecureNowClient) -> None:
    with pytest.raises(SecureNowError) as bad:
        await client.sign_up(email="not-an-email", phone="12", password="short", first_name="A", last_name="B")
    err = bad.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"email", "phone", "password"} <= set(err.field_violations)
    assert all(err.field_violations[f] for f in ("email", "phone", "password"))
    assert err.reason
    assert err.domain.startswith("securenow.v1")


async def test_invalid_sos_is_not_retried(client: SecureNowClient) -> None:
    await signed_up(client)
    retries: list[SecureNowError] = []
    with pytest.raises(SecureNowError) as bad:
        await client.raise_sos(
            location=(123.0, 500.0), description="x", retry=FAST, on_retry=lambda n, e, d: retries.append(e)
        )
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any("latitude" in field for field in bad.value.field_violations), bad.value.field_violations
    assert retries == []


async def test_rate_limit_errors_carry_the_retry_delay(client: SecureNowClient) -> None:
    email = unique_email()
    await client.sign_up(email=email, phone=unique_phone(), password=PASSWORD, first_name="A", last_name="B")
    error: SecureNowError | None = None
    for _ in range(20):
        try:
            await client.sign_in(email=email, password="Wrong-password-1")
        except SecureNowError as err:
            if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                error = err
                break
    assert error is not None, "sign-in was never rate limited"
    assert error.retry_delay is not None
    assert error.retry_delay >= 1.0
    # The SDK's backoff never waits less than the server asked for.
    assert FAST.delay(0, error.retry_delay) >= error.retry_delay


def test_backoff_stays_capped_however_long_it_retries() -> None:
    # A stream reconnecting for hours: 0.5 * 2**1024 would overflow a float.
    assert RECONNECT_POLICY.delay(5000) <= RECONNECT_POLICY.max_backoff * (1 + RECONNECT_POLICY.jitter)
    backoff = Backoff(FAST_RECONNECT)
    down = SecureNowError(grpc.StatusCode.UNAVAILABLE, "down")
    delays = [backoff.next_delay(down) for _ in range(2000)]
    assert all(d is not None and d <= 0.5 * 1.2 for d in delays)
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        assert Backoff(FAST).next_delay(SecureNowError(code, "no")) is None


async def test_a_hung_token_refresh_does_not_outlast_the_total_timeout() -> None:
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, total_timeout=1.0, attempt_timeout=0.5)
    async with silent_server() as stalled, SecureNowClient(stalled) as c:
        c.session.set_tokens("at_expired", "rt_1", time.time() - 1)  # the first call refreshes
        started = time.monotonic()
        with pytest.raises(SecureNowError) as gave_up:
            await asyncio.wait_for(c.raise_sos(location=SF, retry=policy), 10)
        assert gave_up.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3.0


# raise_sos --------------------------------------------------------------------------------------


async def test_raise_sos_retries_a_lost_response_with_the_same_request_id(
    api: Api, runtime: Runtime, proxy: TcpProxy, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    async with SecureNowClient(proxy.target, options=CHANNEL_OPTIONS) as c:
        await signed_up(c)
        retries: list[SecureNowError] = []
        proxy.drop_next_response()  # the server stores the alert; its answer is lost
        alert = await c.raise_sos(
            location=SF, description="lost answer", retry=FAST, on_retry=lambda n, e, d: retries.append(e)
        )
    assert proxy.dropped_responses == 1
    assert [e.code for e in retries] == [grpc.StatusCode.UNAVAILABLE]
    assert proxy.connections >= 2
    # Both attempts reached the server with one request_id: one alert, one idempotency key.
    assert await db_conn.fetchval("SELECT count(*) FROM sos_alerts") == 1
    assert await db_conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE operation = 'RaiseSos'") == 1
    stored = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=dept.md)
    assert stored.alert.description == "lost answer"
    assert alert.assigned_agency_id == dept.id


async def test_sign_up_retries_a_lost_response_and_gets_the_account_it_created(
    proxy: TcpProxy, db_conn: asyncpg.Connection
) -> None:
    email = unique_email()
    async with SecureNowClient(proxy.target, options=CHANNEL_OPTIONS) as c:
        proxy.drop_next_response()  # the server creates the account; its answer is lost
        user = await c.sign_up(
            email=email, phone=unique_phone(), password=PASSWORD, first_name="Lou", last_name="Lost", retry=FAST
        )
        assert (await me(c)).id == user.id  # signed in with the retry's tokens
    assert proxy.dropped_responses == 1
    assert await db_conn.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 1


async def test_raise_sos_gives_up_at_the_total_deadline(client: SecureNowClient) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    retries: list[SecureNowError] = []
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, total_timeout=1.0, attempt_timeout=0.5)
    started = time.monotonic()
    async with SecureNowClient(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as nowhere:
        with pytest.raises(SecureNowError) as gave_up:
            await nowhere.raise_sos(location=SF, retry=policy, on_retry=lambda n, e, d: retries.append(e))
    assert gave_up.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert len(retries) >= 2
    assert time.monotonic() - started < 3.0


# watch_sos --------------------------------------------------------------------------------------


async def test_watch_sos_reconnects_after_a_cut_and_ends_when_resolved(
    api: Api, proxy: TcpProxy, runtime: Runtime
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    async with SecureNowClient(proxy.target, options=CHANNEL_OPTIONS) as c:
        await signed_up(c)
        alert = await c.raise_sos(location=SF, description="watch me")
        updates = c.watch_sos(alert.id, reconnect=FAST_WATCH)
        first = await asyncio.wait_for(anext(updates), 10)
        assert first.event == "snapshot"
        assert first.alert.status == common_pb2.SOS_STATUS_ACTIVE

        connections = proxy.connections
        proxy.kill_connections()
        again = await asyncio.wait_for(anext(updates), 10)
        assert again.event == "snapshot"  # the server starts over with the current state
        assert proxy.connections > connections

        accepted = await api.agency.AcceptSosAlert(
            agency_pb2.AcceptSosAlertRequest(alert_id=alert.id, assigned_unit="U1", eta_minutes=3), metadata=dept.md
        )
        assert (await asyncio.wait_for(anext(updates), 10)).event == "accepted"
        incident_id = accepted.incident.id
        await api.agency.UpdateIncident(
            agency_pb2.UpdateIncidentRequest(incident_id=incident_id, status=common_pb2.INCIDENT_STATUS_ON_SCENE),
            metadata=dept.md,
        )
        # (Read before resolving: the server folds quick successive changes into one
        # message labelled with the first change; see the report.)
        on_scene = await asyncio.wait_for(anext(updates), 10)
        assert on_scene.event == "incident_updated"
        assert on_scene.incident.status == common_pb2.INCIDENT_STATUS_ON_SCENE
        await api.agency.UpdateIncident(
            agency_pb2.UpdateIncidentRequest(incident_id=incident_id, status=common_pb2.INCIDENT_STATUS_RESOLVED),
            metadata=dept.md,
        )
        rest = [u async for u in updates]  # ends by itself after "resolved"
        assert [u.event for u in rest] == ["resolved"]
        assert rest[-1].alert.status == common_pb2.SOS_STATUS_RESOLVED


async def test_watch_sos_passes_on_new_event_names_and_ends_when_cancelled(api: Api, client: SecureNowClient) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    await signed_up(client)
    alert = await client.raise_sos(location=SF, description="rerouted, then cancelled")
    assert alert.assigned_agency_id == dept.id
    updates = client.watch_sos(alert.id, reconnect=FAST_WATCH)
    assert (await asyncio.wait_for(anext(updates), 10)).event == "snapshot"
    suspend = agency_pb2.UpdateDepartmentRequest(
        department=agency_pb2.Department(id=dept.id, status=agency_pb2.DEPARTMENT_STATUS_SUSPENDED)
    )
    suspend.update_mask.paths.append("status")
    await api.agency.UpdateDepartment(suspend, metadata=admin.md)
    events: list[str] = []
    while "rerouted" not in events:  # an event name the SDK has no special case for
        update = await asyncio.wait_for(anext(updates), 10)
        events.append(update.event)
    await client.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id, reason="safe now"))
    rest = [update.event async for update in _within(updates, 10)]
    assert rest[-1] == "cancelled"  # and the watch ends by itself


async def _within(updates: AsyncIterator[T], seconds: float) -> AsyncIterator[T]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            yield await asyncio.wait_for(anext(updates), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return


async def test_watch_sos_of_someone_elses_alert_is_not_retried(api: Api, client: SecureNowClient) -> None:
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    await signed_up(client)
    with pytest.raises(SecureNowError) as denied:
        async for _ in client.watch_sos(alert.id, reconnect=FAST_WATCH):
            pass
    assert denied.value.code == grpc.StatusCode.NOT_FOUND


# DispatchConsumer -------------------------------------------------------------------------------


async def next_alert(events: AsyncIterator[agency_pb2.StreamDispatchResponse]) -> agency_pb2.StreamDispatchResponse:
    """The next alert_raised event (other kinds are skipped)."""
    while True:
        event: agency_pb2.StreamDispatchResponse = await asyncio.wait_for(anext(events), 10)
        if event.WhichOneof("kind") == "alert_raised":
            return event


async def test_consumer_acks_persist_the_cursor_and_a_new_consumer_resumes_after_it(
    api: Api, runtime: Runtime, tmp_path: Path
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cursor_file = tmp_path / "cad" / "cursor"
    async with SecureNowClient(target(runtime), api_key=dept.api_key) as c:
        async with c.dispatch_consumer(FileCursorStore(cursor_file)) as consumer:
            first = await raise_sos(api, person, SF, description="first")
            event = await next_alert(consumer)
            assert event.alert_raised.alert.id == first.id
            assert event.alert_raised.incident.status == common_pb2.INCIDENT_STATUS_REPORTED
            consumer.ack(event.event_id)
            assert consumer.cursor == event.event_id
            assert cursor_file.read_text().strip() == event.event_id
            assert [p.name for p in cursor_file.parent.iterdir()] == ["cursor"]  # no temporary files left

        second = await raise_sos(api, person, SF, description="raised while the CAD was away")
        async with c.dispatch_consumer(FileCursorStore(cursor_file)) as consumer:
            event = await next_alert(consumer)
            assert event.alert_raised.alert.id == second.id  # the acked first alert is not delivered again
            consumer.ack(event.event_id)
            assert cursor_file.read_text().strip() == event.event_id


async def test_consumer_reconnects_after_a_cut_and_drops_duplicates(api: Api, proxy: TcpProxy) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    async with SecureNowClient(proxy.target, api_key=dept.api_key, options=CHANNEL_OPTIONS) as c:
        consumer = c.dispatch_consumer(MemoryCursorStore(), reconnect=FAST_RECONNECT)
        async with consumer:
            acked = await raise_sos(api, person, SF, description="acked")
            event = await next_alert(consumer)
            assert event.alert_raised.alert.id == acked.id
            consumer.ack(event.event_id)
            unacked = await raise_sos(api, person, SF, description="seen, not acked")
            assert (await next_alert(consumer)).alert_raised.alert.id == unacked.id

            proxy.kill_connections()
            await wait_for(lambda: _async(consumer.connects >= 2), what="a reconnect")
            # The server redelivers the unacked alert (and maybe the acked one, if the
            # ack was lost in the cut): the consumer has handed both out already.
            later = await raise_sos(api, person, SF, description="after the cut")
            assert (await next_alert(consumer)).alert_raised.alert.id == later.id
            assert consumer.error is None


async def _async(value: T) -> T:
    return value


async def drain(consumer: DispatchConsumer) -> None:
    """Reads events until the consumer stops (raising its error)."""
    while True:
        await consumer.next_event(15)


async def test_commands_return_results_in_order_and_a_failed_command_keeps_the_stream(
    api: Api, runtime: Runtime
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    async with (
        SecureNowClient(target(runtime), api_key=dept.api_key) as c,
        c.dispatch_consumer(MemoryCursorStore()) as consumer,
    ):
        alert = await raise_sos(api, person, SF)
        raised = (await next_alert(consumer)).alert_raised
        incident_id = raised.incident.id

        # Sent together: results come back in order and each goes to its command. Acks
        # are never answered, not even a malformed one.
        consumer.ack("not-an-event-id")
        skip, accept = await asyncio.gather(
            consumer.update_incident(incident_id, common_pb2.INCIDENT_STATUS_ON_SCENE),
            consumer.accept(alert.id, "Unit 7", 4),
        )
        assert skip.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert skip.incident_id == incident_id
        assert consumer.cursor == ""  # an id the consumer never handed out moves no cursor
        assert accept.code == 0
        assert accept.alert_id == alert.id
        assert accept.incident_id == incident_id

        # The stream still works: the incident change arrives as an event.
        while True:
            event = await consumer.next_event(10)
            if event.WhichOneof("kind") == "incident_updated":
                break
        assert event.incident_updated.incident.status == common_pb2.INCIDENT_STATUS_DISPATCHED
        assert event.incident_updated.incident.assigned_unit == "Unit 7"
        on_scene = await consumer.update_incident(incident_id, common_pb2.INCIDENT_STATUS_ON_SCENE)
        assert on_scene.code == 0
        declined = await consumer.decline(alert.id, "busy")
        assert declined.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert consumer.error is None


async def test_a_revoked_key_stops_the_consumer_with_an_authentication_error(
    api: Api, runtime: Runtime, tmp_path: Path
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    async with SecureNowClient(target(runtime), api_key=dept.api_key) as c:
        async with c.dispatch_consumer(MemoryCursorStore(), reconnect=FAST_RECONNECT) as consumer:
            await raise_sos(api, person, SF)
            await next_alert(consumer)
            await api.agency.RevokeApiKey(agency_pb2.RevokeApiKeyRequest(key_id=dept.key_id), metadata=admin.md)
            with pytest.raises(SecureNowError) as stopped:
                await drain(consumer)
            assert stopped.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert stopped.value.reason == "API_KEY_REVOKED"
            assert consumer.connects == 1
            with pytest.raises(SecureNowError):
                await consumer.accept("00000000-0000-0000-0000-000000000000")

        # Starting with the revoked key fails at once instead of retrying forever.
        async with c.dispatch_consumer(MemoryCursorStore(), reconnect=FAST_RECONNECT) as consumer:
            with pytest.raises(SecureNowError) as refused:
                await consumer.next_event(10)
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert consumer.connects == 1


async def test_a_suspended_department_stops_the_consumer_at_once(api: Api, runtime: Runtime) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    async with (
        SecureNowClient(target(runtime), api_key=dept.api_key) as c,
        c.dispatch_consumer(MemoryCursorStore(), reconnect=FAST_RECONNECT) as consumer,
    ):
        await wait_for(lambda: _async(consumer.connected), what="the stream")
        suspend = agency_pb2.UpdateDepartmentRequest(
            department=agency_pb2.Department(id=dept.id, status=agency_pb2.DEPARTMENT_STATUS_SUSPENDED)
        )
        suspend.update_mask.paths.append("status")
        await api.agency.UpdateDepartment(suspend, metadata=admin.md)
        with pytest.raises(SecureNowError) as stopped:
            await asyncio.wait_for(drain(consumer), 20)
        assert (stopped.value.code, stopped.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "DEPARTMENT_INACTIVE")
        assert consumer.connects == 1


async def test_cancelling_close_cancels_the_caller_and_stops_the_stream() -> None:
    async with silent_server() as stalled, SecureNowClient(stalled, api_key="snk_x.y") as c:
        consumer = c.dispatch_consumer(MemoryCursorStore())
        consumer.start()
        await wait_for(lambda: _async(consumer.connected), what="the stream to open")
        closing = asyncio.create_task(consumer.close(grace=30))
        await asyncio.sleep(0)  # a turn of the loop: close() now waits for the stream to end
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closing, 5)
        assert not consumer.connected


async def test_heartbeats_keep_the_client_alive_on_the_server(api: Api, runtime: Runtime) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    async with (
        SecureNowClient(target(runtime), api_key=dept.api_key) as c,
        c.dispatch_consumer(MemoryCursorStore(), heartbeat_interval=0.05) as consumer,
    ):
        subs = await wait_for(
            lambda: _async([s for s in runtime.app.dispatch_hub.subscriptions() if s.department_id == dept.id]),
            what="the server-side subscription",
        )
        sub = subs[0]
        seen = sub.last_client_activity
        # Nothing but heartbeats is sent, yet the server keeps seeing the client.
        await wait_for(lambda: _async(sub.last_client_activity > seen), what="a heartbeat")
        seen = sub.last_client_activity
        await wait_for(lambda: _async(sub.last_client_activity > seen), what="another heartbeat")
        assert consumer.connects == 1


# Cursor stores ----------------------------------------------------------------------------------


def test_file_cursor_store_round_trips_and_replaces_atomically(tmp_path: Path) -> None:
    store = FileCursorStore(tmp_path / "cursor")
    assert store.load() == ""
    store.save("9-0")
    store.save("10-0")
    assert FileCursorStore(tmp_path / "cursor").load() == "10-0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cursor"]


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "event id")])
def test_a_cursor_file_without_a_cursor_is_refused_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "cursor").write_bytes(content)
    with pytest.raises(CursorFileError, match=message):
        FileCursorStore(tmp_path / "cursor").load()


def test_event_ids_compare_by_sequence() -> None:
    assert is_after("10-0", "9-0")
    assert not is_after("9-0", "10-0")
    assert not is_after("9-0", "9-0")
    assert is_after("1-0", "")


# TLS ------------------------------------------------------------------------------------------------


async def test_tls_with_a_private_root_certificate(runtime: Runtime) -> None:
    cert_pem, server_tls = self_signed_tls()
    async with TcpProxy(runtime.grpc_port, tls=server_tls) as tls_proxy:
        async with SecureNowClient(tls_proxy.target, root_certificates=cert_pem) as c:
            user = await signed_up(c)
            assert (await me(c)).id == user.id
        async with SecureNowClient(tls_proxy.target) as plaintext:  # no TLS: refused
            with pytest.raises(SecureNowError) as refused:
                # Refused on every attempt: retrying for long proves nothing more.
                await plaintext.sign_up(
                    email=unique_email(),
                    phone=unique_phone(),
                    password=PASSWORD,
                    first_name="Sam",
                    last_name="Sdk",
                    retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.2, total_timeout=2.0, attempt_timeout=1.0),
                )
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
