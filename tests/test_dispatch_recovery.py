"""The dispatch streams' promise when Redis and Postgres disagree: Redis loses writes
but keeps the epoch, or an entry never makes it into a stream. Postgres is the truth;
the relay's reconciliation puts back what is missing, in order, with the same ids.
And the streams stay bounded: settled entries are trimmed, never unacknowledged ones,
and a CAD resuming from before the trimmed part gets it from Postgres."""

from __future__ import annotations

import logging

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from securenow.server.workers import outbox_relay
from securenow.server.workers.outbox_relay import OutboxRelay
from securenow.v1 import agency_pb2
from tests.conftest import DATABASE_URL
from tests.dispatch_helpers import SF, Cad, raise_sos, register_department
from tests.helpers import Api, wait_for

EPOCH = "dispatch:epoch"


async def published(db_conn: asyncpg.Connection, alert_id: str) -> str:
    """Waits until the alert's alert_raised is published; returns its event id."""

    async def seq() -> int | None:
        return await db_conn.fetchval(  # type: ignore[no-any-return]
            """SELECT dept_seq FROM outbox WHERE event_type = 'alert_raised' AND aggregate_id = $1
                 AND published_at IS NOT NULL""",
            alert_id,
        )

    return f"{await wait_for(seq, what='alert_raised published')}-0"


async def test_an_event_redis_lost_after_it_was_published_still_reaches_the_cad(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    event_id = await published(db_conn, alert.id)
    stream = f"dispatch:{dept.id}"
    assert [e[0] for e in await redis_client.xrange(stream)] == [event_id]
    # Redis loses the entry but keeps the epoch (appendfsync everysec and a crash, a
    # failover to a replica that lagged): nothing tells the relay to rebuild.
    await redis_client.xdel(stream, event_id)
    assert await redis_client.exists(EPOCH)

    cad = Cad(api.channel, dept.api_key)
    try:
        msg = await cad.next_event("alert_raised", within=15)
        assert msg.event_id == event_id
        assert msg.alert_raised.alert.id == alert.id
    finally:
        await cad.close()


async def test_events_put_back_below_where_a_cad_is_reading_live_reach_it_again(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    """Redis keeps the newest entry and loses the older ones: the connected CAD's hub
    reads the stream live past them, so the rewrite puts them back below its cursor.
    They must come again now, not after the redelivery interval (30 s here)."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alerts = [await raise_sos(api, person, SF, description=f"#{i}") for i in range(3)]
    cad = Cad(api.channel, dept.api_key)
    try:
        received = [await cad.next_event("alert_raised") for _ in alerts]
        assert [m.event_id for m in received] == ["1-0", "2-0", "3-0"]
        rewinds = REGISTRY.get_sample_value("securenow_dispatch_rewinds_total") or 0.0
        await redis_client.xdel(f"dispatch:{dept.id}", "1-0", "2-0")
        again = []
        while len(again) < 2:
            msg = await cad.next(within=10)
            if msg.WhichOneof("kind") == "alert_raised":
                again.append((msg.event_id, msg.alert_raised.alert.id))
        assert again == [("1-0", alerts[0].id), ("2-0", alerts[1].id)]
        assert REGISTRY.get_sample_value("securenow_dispatch_rewinds_total") == rewinds + 1  # seen on /metrics
    finally:
        await cad.close()


async def test_rewrites_still_reach_a_cad_when_redis_comes_back_empty_with_its_clock_behind(
    api: Api, redis_client: aioredis.Redis
) -> None:
    """Redis restarts without its data on a host whose clock is behind: new rewrite
    notices get ids below the ones the hub read before. After reconnecting, the hub
    must still see them, so events put back below a CAD's cursor reach it at once."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    for i in range(3):
        await raise_sos(api, person, SF, description=f"#{i}")
    cad = Cad(api.channel, dept.api_key)

    async def raised_again(count: int) -> list[str]:
        ids: list[str] = []
        while len(ids) < count:
            msg = await cad.next(within=10)
            if msg.WhichOneof("kind") == "alert_raised":
                ids.append(msg.event_id)
        return ids

    try:
        assert await raised_again(3) == ["1-0", "2-0", "3-0"]
        # A notice numbered by a clock far ahead (the old host's, as the hub sees it):
        # it rewinds the CAD, which shows the hub has read it.
        await redis_client.xadd("dispatch:rewrites", {"department": dept.id, "from_seq": "1"}, id="99999999999999-0")
        assert await raised_again(3) == ["1-0", "2-0", "3-0"]
        # Redis comes back empty: the notices are gone and every connection dropped.
        await redis_client.delete("dispatch:rewrites")
        readers = [c["id"] for c in await redis_client.client_list() if c["cmd"] == "xread"]
        assert readers, "the hub's reader, blocked in XREAD"
        for client_id in readers:
            await redis_client.client_kill_filter(_id=client_id)
        # Two entries lost too: the relay puts them back with a notice numbered now.
        await redis_client.xdel(f"dispatch:{dept.id}", "1-0", "2-0")
        assert await raised_again(2) == ["1-0", "2-0"]
    finally:
        await cad.close()


async def test_a_stream_redis_lost_is_rewritten_in_order_without_what_was_acknowledged(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_relay, "REWRITE_BATCH", 2)  # several MULTIs for a few events
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alerts = [await raise_sos(api, person, SF, description=f"#{i}") for i in range(4)]
    cad = Cad(api.channel, dept.api_key)
    try:
        received = [await cad.next_event("alert_raised") for _ in alerts]
        assert [m.alert_raised.alert.id for m in received] == [a.id for a in alerts]
        cad.ack(received[2].event_id)
        # Commands are processed in order: once this result is back, the ack is settled.
        await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alerts[2].id))
    finally:
        await cad.close()

    async def ack_stored() -> bool:
        return bool(
            await db_conn.fetchval(
                "SELECT acked_at IS NOT NULL FROM outbox WHERE department_id = $1 AND dept_seq = 3", dept.id
            )
        )

    await wait_for(ack_stored, what="the ack in Postgres")
    await redis_client.delete(f"dispatch:{dept.id}")  # the whole stream is gone, the epoch is not
    assert await redis_client.exists(EPOCH)

    again = Cad(api.channel, dept.api_key)
    try:
        got = []
        while len(got) < 3:
            msg = await again.next(within=15)
            if msg.WhichOneof("kind") == "alert_raised":
                got.append((msg.event_id, msg.alert_raised.alert.id))
        # Every unacknowledged one, in order, with its original id; not the acknowledged one.
        assert got == [(received[i].event_id, alerts[i].id) for i in (0, 1, 3)]
    finally:
        await again.close()
    # The rewritten stream has a gap where the acknowledged event was; a CAD resuming
    # from before it still gets it (from Postgres), in its place.
    resumed = Cad(api.channel, dept.api_key, resume_after=received[0].event_id)
    try:
        got = []
        while len(got) < 4:
            msg = await resumed.next()
            if msg.WhichOneof("kind") == "alert_raised":
                got.append((msg.event_id, msg.alert_raised.alert.id))
        assert got == [(received[i].event_id, alerts[i].id) for i in range(4)]
    finally:
        await resumed.close()


async def test_an_event_a_superseded_relay_published_past_is_repaired_not_skipped(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Split brain: a relay that lost its lock without noticing yet publishes event 3
    before the new leader publishes event 2. Redis refuses 2 ("equal or smaller"),
    which must not be taken for "already published"."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    first = await raise_sos(api, person, SF, description="first")
    first_id = await published(db_conn, first.id)
    assert first_id == "1-0"
    stream = f"dispatch:{dept.id}"
    [(_, fields)] = await redis_client.xrange(stream)
    await redis_client.xadd(stream, fields, id="3-0")  # the old leader's event 3 (any content)

    with caplog.at_level(logging.WARNING, logger="securenow.server.workers.outbox_relay"):
        second = await raise_sos(api, person, SF, description="second")
        assert await published(db_conn, second.id) == "2-0"

        async def repaired() -> bool:
            return [e[0] for e in await redis_client.xrange(stream)] == ["1-0", "2-0"]

        await wait_for(repaired, within=15, what="the stream rewritten from Postgres")
    assert "another relay published past them" in caplog.text

    cad = Cad(api.channel, dept.api_key)
    try:
        got = [await cad.next_event("alert_raised") for _ in range(2)]
        assert [(m.event_id, m.alert_raised.alert.id) for m in got] == [("1-0", first.id), ("2-0", second.id)]
        third = await raise_sos(api, person, SF, description="third")  # its id is free again
        msg = await cad.next_event("alert_raised")
        assert (msg.event_id, msg.alert_raised.alert.id) == ("3-0", third.id)
    finally:
        await cad.close()


async def test_settled_entries_are_trimmed_and_an_old_cursor_resumes_from_postgres(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    stream = f"dispatch:{dept.id}"
    alerts = [await raise_sos(api, person, SF, description=f"#{i}") for i in range(4)]
    cad = Cad(api.channel, dept.api_key)
    try:
        received = [await cad.next_event("alert_raised") for _ in alerts]
        ids = [m.event_id for m in received]
        assert ids == ["1-0", "2-0", "3-0", "4-0"]
        for i in (0, 1, 3):  # the third stays unacknowledged
            cad.ack(ids[i])

        async def acks_stored() -> bool:
            acked = await db_conn.fetchval(
                "SELECT count(*) FROM outbox WHERE department_id = $1 AND acked_at IS NOT NULL", dept.id
            )
            return bool(acked == 3)

        await wait_for(acks_stored, what="three acks in Postgres")

        async def entries() -> list[str]:
            return [e[0] for e in await redis_client.xrange(stream)]

        # The relay's own trimmer, with the default delay, keeps recent acknowledged entries.
        patient = OutboxRelay(api.app.db, api.app.redis, DATABASE_URL)
        assert await patient.trim() == 0
        assert await entries() == ids
        # Without the delay: everything below the oldest unacknowledged entry goes, nothing from it on.
        eager = OutboxRelay(api.app.db, api.app.redis, DATABASE_URL, keep_acked_seconds=0)
        assert await eager.trim() == 2
        assert await entries() == ["3-0", "4-0"]
        cad.ack(ids[2])

        async def all_acked() -> bool:
            return not await db_conn.fetchval(
                "SELECT count(*) FROM outbox WHERE department_id = $1 AND acked_at IS NULL", dept.id
            )

        await wait_for(all_acked, what="every ack in Postgres")
        assert await eager.trim() == 2
        assert await entries() == []
    finally:
        await cad.close()

    # A CAD resuming after event 1: events 2-4 are gone from Redis, and come from Postgres,
    # in order, followed by new ones.
    later = await raise_sos(api, person, SF, description="later")
    resumed = Cad(api.channel, dept.api_key, resume_after="1-0")
    try:
        got = []
        while len(got) < 4:
            msg = await resumed.next()
            if msg.WhichOneof("kind") == "alert_raised":
                got.append(msg)
        assert [(m.event_id, m.alert_raised.alert.id) for m in got] == [
            ("2-0", alerts[1].id),
            ("3-0", alerts[2].id),
            ("4-0", alerts[3].id),
            ("5-0", later.id),
        ]
        for replayed, original in zip(got[:3], received[1:], strict=True):  # the same events, not look-alikes
            assert replayed.alert_raised == original.alert_raised
            assert replayed.event_time == original.event_time
    finally:
        await resumed.close()
