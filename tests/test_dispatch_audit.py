"""Delivery of dispatch events as a CAD integrator relies on it: what a resume cursor
brings after Redis lost data, dead-stream detection while events flow, and the
relay's resilience. Real sockets, real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.enums import Role
from securenow.server.domain.errors import Unauthenticated
from securenow.server.storage.dispatch_streams import DispatchEvent, Subscription
from securenow.server.transport.servicers.agency import AgencyServicer
from securenow.v1 import agency_pb2
from tests.conftest import extra_replica
from tests.dispatch_helpers import SF, Cad, Department, raise_sos, register_department
from tests.helpers import Api, wait_for

EPOCH = "dispatch:epoch"


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def acked_seqs(db_conn: asyncpg.Connection, dept: Department) -> set[int]:
    rows = await db_conn.fetch("SELECT dept_seq FROM outbox WHERE department_id = $1 AND acked_at IS NOT NULL", dept.id)
    return {int(r["dept_seq"]) for r in rows}


async def raised_ids(cad: Cad, count: int, within: float = 15.0) -> list[str]:
    """The event ids of the next `count` alert_raised messages."""
    deadline = time.monotonic() + within
    ids: list[str] = []
    while len(ids) < count:
        msg = await cad.next(max(deadline - time.monotonic(), 0.01))
        if msg.WhichOneof("kind") == "alert_raised":
            ids.append(msg.event_id)
    return ids


async def acks_handled(cad: Cad) -> None:
    """Commands are answered in order: once this one's result is back, the acks sent
    before it were handled."""
    result = await cad.command(accept=agency_pb2.AcceptAlert(alert_id="00000000-0000-4000-8000-000000000000"))
    assert result.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_a_resume_after_redis_lost_its_data_gets_the_acknowledged_events_after_the_last_unacknowledged(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    """Redis comes back empty; the relay rebuilds the stream from the unacknowledged
    events only, so acknowledged events after the last unacknowledged one are in no
    stream any more. A CAD resuming from before them must still get them (the contract:
    "a reconnect with resume_after_event_id gets everything after it again"), from
    PostgreSQL, in order."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    for i in range(4):
        await raise_sos(api, person, SF, description=f"#{i}")
    console = Cad(api.channel, dept.api_key)  # another connection of the department
    try:
        assert await raised_ids(console, 4) == ["1-0", "2-0", "3-0", "4-0"]
        for acked in ("1-0", "3-0", "4-0"):  # 2 stays unacknowledged
            console.ack(acked)
        await acks_handled(console)
        await wait_for(lambda: _equals(acked_seqs(db_conn, dept), {1, 3, 4}), what="the three acks recorded")
    finally:
        await console.close()

    await redis_client.flushdb()  # Redis restarts without its data

    async def rebuilt() -> bool:
        entries = [e[0] for e in await redis_client.xrange(f"dispatch:{dept.id}") or []]
        return bool(await redis_client.exists(EPOCH)) and entries == ["2-0"]

    await wait_for(rebuilt, within=15, what="the stream rebuilt with the unacknowledged event")

    # The CAD processed event 1 before it went down.
    cad = Cad(api.channel, dept.api_key, resume_after="1-0")
    try:
        assert await raised_ids(cad, 3) == ["2-0", "3-0", "4-0"]
    finally:
        await cad.close()


async def test_a_cad_that_sends_nothing_is_dropped_even_while_events_keep_coming(api: Api, database: str) -> None:
    """The server drops a client that sent nothing for the idle timeout (its messages
    no longer arrive: acks are lost and every event is redelivered for ever). Not only
    on a quiet stream: also while events arrive more often than the heartbeat."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    async with (
        extra_replica("idle-check", dispatch_heartbeat_seconds=1.0, dispatch_idle_timeout_seconds=1.5) as replica,
        grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel,
    ):
        cad = Cad(channel, dept.api_key)  # subscribes, then never sends again
        try:
            deadline = time.monotonic() + 8.0
            while not cad.ended.is_set() and time.monotonic() < deadline:
                await raise_sos(api, person, SF)  # an event every few milliseconds
                # Paced by the CAD receiving it (or the stream ending).
                received = asyncio.ensure_future(cad.received.get())
                ended = asyncio.ensure_future(cad.ended.wait())
                await asyncio.wait({received, ended}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                received.cancel()
                ended.cancel()
            assert cad.ended.is_set(), "the silent client was never dropped"
            error = cad.error
        finally:
            await cad.close()
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "idle" in (error.details() or "")


async def test_a_stream_whose_credential_ended_gets_no_more_queued_events() -> None:
    """A revoked key on a CAD that reads slowly has events queued for it: the stream
    ends with UNAUTHENTICATED before the next one, not after the whole queue."""
    principal = Principal(PrincipalKind.API_KEY, "key-1", Role.POLICE, "dept-1")
    sub = Subscription(principal, "dept-1")
    sub.start([DispatchEvent(seq, "alert_raised", datetime.now(UTC), {}) for seq in range(1, 6)])
    sub.close(Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED"))
    timing = SimpleNamespace(_idle_timeout=90.0, _heartbeat=15.0)
    responses = AgencyServicer._responses(timing, sub, client_sends=True)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        await anext(responses)
