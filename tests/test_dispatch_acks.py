"""Acknowledgements settle only what was delivered: an ack (StreamDispatch) or an
AckDispatchEvent naming an event that was not pending in the consumer group (a future
id, an event numbered but not published yet) must not mark it acknowledged in
PostgreSQL, or a rebuild of the streams after Redis lost its data would leave out an
event no CAD ever received."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from securenow.server.workers.outbox_relay import OutboxRelay
from securenow.v1 import agency_pb2
from tests.conftest import DATABASE_URL
from tests.dispatch_helpers import SF, Cad, Department, raise_sos, register_department
from tests.helpers import Api, expect_error, wait_for

EPOCH = "dispatch:epoch"


class PublishGate:
    """While closed, the session relay's publishing to Redis fails as if Redis were
    unreachable, and numbering in Postgres goes on: an event is then numbered but in
    no stream. Opened, the relay publishes what it numbered meanwhile."""

    def __init__(self, relay: OutboxRelay, monkeypatch: pytest.MonkeyPatch) -> None:
        self.is_open = True
        publish: Callable[[list[Any]], Awaitable[None]] = relay._publish

        async def gated(events: list[Any]) -> None:
            if not self.is_open:
                raise RedisConnectionError("publishing held by the test")
            await publish(events)

        monkeypatch.setattr(relay, "_publish", gated)

    def close(self) -> None:
        self.is_open = False

    def open(self) -> None:
        self.is_open = True


@pytest.fixture
async def gate(api: Api, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PublishGate]:
    g = PublishGate(api.app.relay, monkeypatch)
    try:
        yield g
    finally:
        g.open()


async def outbox_state(db_conn: asyncpg.Connection, dept: Department) -> dict[int, tuple[bool, bool]]:
    """Per event of the department: (published, acknowledged)."""
    rows = await db_conn.fetch(
        """SELECT dept_seq, published_at IS NOT NULL AS published, acked_at IS NOT NULL AS acked FROM outbox
           WHERE department_id = $1 AND dept_seq IS NOT NULL""",
        dept.id,
    )
    return {r["dept_seq"]: (r["published"], r["acked"]) for r in rows}


async def numbered_unpublished(db_conn: asyncpg.Connection, dept: Department, seq: int) -> bool:
    return (await outbox_state(db_conn, dept)).get(seq) == (False, False)


async def pending_ids(redis_client: aioredis.Redis, dept: Department) -> list[str]:
    pending = await redis_client.xpending_range(f"dispatch:{dept.id}", "cad", min="-", max="+", count=100)
    return [p["message_id"] for p in pending]


async def lose_redis_data(redis_client: aioredis.Redis, dept: Department, expected: list[str]) -> None:
    """Redis comes back empty; returns once the relay rebuilt the department's stream."""
    await redis_client.flushdb()

    async def rebuilt() -> bool:
        entries = [e[0] for e in await redis_client.xrange(f"dispatch:{dept.id}")]
        return bool(await redis_client.exists(EPOCH)) and entries == expected

    await wait_for(rebuilt, within=15, what=f"the stream rebuilt with {expected}")


async def alert_raised_ids(cad: Cad, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        msg = await cad.next(within=15)
        if msg.WhichOneof("kind") == "alert_raised":
            ids.append(msg.event_id)
    return ids


async def acks_handled(cad: Cad) -> None:
    """Commands are answered in order: once this one's result is back, the acks sent
    before it were handled (an accept of an alert that does not exist changes nothing)."""
    result = await cad.command(accept=agency_pb2.AcceptAlert(alert_id=str(uuid.uuid4())))
    assert result.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_an_ack_of_an_event_not_sent_yet_does_not_settle_it_when_it_comes(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection, gate: PublishGate
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    await raise_sos(api, person, SF, description="first")
    cad = Cad(api.channel, dept.api_key)
    try:
        assert await alert_raised_ids(cad, 1) == ["1-0"]
        # The second alert is numbered 2 but not published: no CAD can have it.
        gate.close()
        await raise_sos(api, person, SF, description="second")
        await wait_for(lambda: numbered_unpublished(db_conn, dept, 2), what="event 2 numbered, unpublished")
        cad.ack("2-0")  # never sent to it
        cad.ack("7-0")  # not even issued
        cad.ack("1-0")  # delivered: this one counts
        # Acks go to Postgres in order, a batch every 0.2 s: once 1 is recorded, the
        # ones sent before it were handled too.
        await wait_for(
            lambda: _equals(outbox_state(db_conn, dept), {1: (True, True), 2: (False, False)}),
            what="the ack of 1 recorded, and nothing else",
        )
        gate.open()
        assert await alert_raised_ids(cad, 1) == ["2-0"]
        assert await pending_ids(redis_client, dept) == ["2-0"]
        await wait_for(
            lambda: _equals(outbox_state(db_conn, dept), {1: (True, True), 2: (True, False)}),
            what="event 2 published, not acknowledged",
        )
    finally:
        await cad.close()

    await lose_redis_data(redis_client, dept, ["2-0"])
    fresh = Cad(api.channel, dept.api_key)
    try:
        assert await alert_raised_ids(fresh, 1) == ["2-0"]
    finally:
        await fresh.close()


async def test_an_ack_repeated_or_for_the_future_settles_nothing_more(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    """Without holding the relay: a future id acked, then that event raised at once."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    await raise_sos(api, person, SF, description="first")
    cad = Cad(api.channel, dept.api_key)
    try:
        assert await alert_raised_ids(cad, 1) == ["1-0"]
        cad.ack("2-0")
        await acks_handled(cad)
        await raise_sos(api, person, SF, description="second")
        assert await alert_raised_ids(cad, 1) == ["2-0"]
        cad.ack("1-0")
        cad.ack("1-0")  # a duplicate
        await acks_handled(cad)
        await wait_for(
            lambda: _equals(outbox_state(db_conn, dept), {1: (True, True), 2: (True, False)}),
            what="only the ack of 1 recorded",
        )
        assert await pending_ids(redis_client, dept) == ["2-0"]
    finally:
        await cad.close()
    await lose_redis_data(redis_client, dept, ["2-0"])
    fresh = Cad(api.channel, dept.api_key)
    try:
        assert await alert_raised_ids(fresh, 1) == ["2-0"]
        fresh.ack("2-0")
        await wait_for(
            lambda: _equals(outbox_state(db_conn, dept), {1: (True, True), 2: (True, True)}),
            what="the ack of 2 recorded",
        )
    finally:
        await fresh.close()


async def test_ack_dispatch_event_settles_only_what_was_pending(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection, gate: PublishGate
) -> None:
    """A console's ack by cursor: an id after the department's newest event is refused
    (INVALID_ARGUMENT, nothing settled); an id numbered but not published yet settles
    what was pending up to it, not itself."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    await raise_sos(api, person, SF, description="first")
    cad = Cad(api.channel, dept.api_key)
    try:
        assert await alert_raised_ids(cad, 1) == ["1-0"]
    finally:
        await cad.close()

    refused = await expect_error(
        api.agency.AckDispatchEvent(agency_pb2.AckDispatchEventRequest(event_id="2-0"), metadata=dept.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(refused.fields) == {"event_id"}
    assert "1-0" in refused.fields["event_id"]  # names the newest event
    assert await pending_ids(redis_client, dept) == ["1-0"]
    # Nothing settled. (The relay records publication in PostgreSQL just after the
    # entry reaches Redis, so a CAD can hold the event a moment before that.)
    await wait_for(
        lambda: _equals(outbox_state(db_conn, dept), {1: (True, False)}), what="event 1 published, unacknowledged"
    )

    gate.close()
    await raise_sos(api, person, SF, description="second")
    await wait_for(lambda: numbered_unpublished(db_conn, dept, 2), what="event 2 numbered, unpublished")
    await api.agency.AckDispatchEvent(agency_pb2.AckDispatchEventRequest(event_id="2-0"), metadata=dept.md)
    assert await outbox_state(db_conn, dept) == {1: (True, True), 2: (False, False)}
    assert await pending_ids(redis_client, dept) == []
    gate.open()
    await wait_for(
        lambda: _equals(outbox_state(db_conn, dept), {1: (True, True), 2: (True, False)}), what="event 2 published"
    )
    assert await pending_ids(redis_client, dept) == ["2-0"]
    # Acknowledging again is harmless (a retry), and settles nothing new.
    await api.agency.AckDispatchEvent(agency_pb2.AckDispatchEventRequest(event_id="1-0"), metadata=dept.md)
    assert await outbox_state(db_conn, dept) == {1: (True, True), 2: (True, False)}
    assert await pending_ids(redis_client, dept) == ["2-0"]

    await lose_redis_data(redis_client, dept, ["2-0"])
    fresh = Cad(api.channel, dept.api_key)
    try:
        assert await alert_raised_ids(fresh, 1) == ["2-0"]
    finally:
        await fresh.close()


async def test_acks_sent_as_fast_as_events_arrive_are_all_recorded(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    """An event a CAD receives is already pending in the group (the relay adds it and
    reads it into the group in one MULTI): an ack racing the relay is never lost."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    count = 20
    try:
        raising = asyncio.gather(*(raise_sos(api, person, SF, description=f"#{i}") for i in range(count)))
        received: list[str] = []
        while len(received) < count:
            msg = await cad.next(within=15)
            if msg.WhichOneof("kind") == "alert_raised":
                cad.ack(msg.event_id)
                received.append(msg.event_id)
        await raising
        assert received == [f"{n}-0" for n in range(1, count + 1)]
        everything = {n: (True, True) for n in range(1, count + 1)}
        await wait_for(lambda: _equals(outbox_state(db_conn, dept), everything), what="every ack recorded")
        assert await pending_ids(redis_client, dept) == []
    finally:
        await cad.close()


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_an_ack_redis_has_but_postgres_lost_is_recorded_by_the_relay(
    api: Api, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """A hub XACKs at once and records acks in PostgreSQL 0.2 s later; a process that
    dies in between leaves the event acknowledged in Redis only, where it would hold back
    trimming forever. The relay's trim pass records it; an event still pending is left."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    cad = Cad(api.channel, dept.api_key)
    try:
        await raise_sos(api, await api.sign_up(), SF)
        second = await raise_sos(api, await api.sign_up(), SF)
        seen = [m.event_id for m in await cad.events_until(second.id) if m.WhichOneof("kind") == "alert_raised"]
        assert len(seen) == 2
    finally:
        await cad.close()
    # The dead process's XACK of the first event reached Redis; its record never came.
    stream = f"dispatch:{dept.id}"
    assert await redis_client.xack(stream, "cad", seen[0]) == 1
    # Both are older than the relay keeps acknowledged entries around.
    await db_conn.execute(
        "UPDATE outbox SET published_at = now() - interval '1 hour' WHERE department_id = $1", uuid.UUID(dept.id)
    )

    await api.app.relay.settle_lost_acks()

    state = await outbox_state(db_conn, dept)
    seq_first, seq_second = (int(e.split("-")[0]) for e in seen)
    assert state[seq_first][1], "the acknowledgement Redis had is recorded"
    assert not state[seq_second][1], "an event still pending stays unacknowledged"


async def test_lost_acks_behind_a_backlog_of_pending_events_are_found(
    api: Api, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """Each trim pass checks a batch of old unacknowledged events; passes go on where the
    last one stopped, so events still pending at the front cannot hide a lost
    acknowledgement behind them for ever."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    cad = Cad(api.channel, dept.api_key)
    try:
        alerts = [await raise_sos(api, await api.sign_up(), SF) for _ in range(3)]
        seen = [m.event_id for m in await cad.events_until(alerts[-1].id) if m.WhichOneof("kind") == "alert_raised"]
        assert len(seen) == 3
    finally:
        await cad.close()
    # The first two are still pending (the CAD never acked them); the last one's ack
    # reached Redis only.
    assert await redis_client.xack(f"dispatch:{dept.id}", "cad", seen[2]) == 1
    await db_conn.execute(
        "UPDATE outbox SET published_at = now() - interval '1 hour' WHERE department_id = $1", uuid.UUID(dept.id)
    )
    last = int(seen[2].split("-")[0])
    # A relay of the test's own: the session's relay runs trim passes meanwhile, and
    # those move the shared cursor (one that found nothing starts it over).
    relay = OutboxRelay(api.app.db, api.app.redis, DATABASE_URL)

    async def recorded() -> bool:
        await relay.settle_lost_acks(batch=1)
        return bool((await outbox_state(db_conn, dept))[last][1])

    # One event a pass: at most three passes reach it (the old rule checked the oldest
    # batch every time, which here is always the first, still pending, event).
    for _ in range(3):
        if await recorded():
            break
    state = await outbox_state(db_conn, dept)
    assert state[last][1], "the lost acknowledgement behind the pending ones is recorded"
    assert [state[int(e.split("-")[0])][1] for e in seen[:2]] == [False, False]
