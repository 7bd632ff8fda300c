"""Location fixes arriving out of order or racing a cancel, end to end: what the CAD,
the person, the users table and Redis see (services/locations.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2

from securenow.v1 import common_pb2, sos_pb2, sos_pb2_grpc, users_pb2
from tests.dispatch_helpers import SF, Cad, location, raise_sos, register_department
from tests.helpers import Account, Api, wait_for

# The ingestor forwards at most one alert_location per alert and second: a test that
# checks a fix is not forwarded waits this long first, or pacing alone would hold it back.
FORWARD_INTERVAL = 1.0


def fix_at(point: tuple[float, float], when: datetime) -> common_pb2.Location:
    loc = location(point)
    loc.time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(when.timestamp()), nanos=when.microsecond * 1000))
    return loc


def whole_ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


async def share(sos: sos_pb2_grpc.SosServiceStub, person: Account, alert_id: str, *fixes: common_pb2.Location) -> int:
    """One ShareLocation call (on `sos`: a replica's stub, or `api.sos`); it answers
    once its fixes are stored."""

    async def requests() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        for loc in fixes:
            yield sos_pb2.ShareLocationRequest(alert_id=alert_id, location=loc)

    response: sos_pb2.ShareLocationResponse = await sos.ShareLocation(requests(), metadata=person.md)
    return response.accepted_count


async def raise_at(api: Api, person: Account, loc: common_pb2.Location) -> sos_pb2.SosAlert:
    req = sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), description="help", location=loc)
    response: sos_pb2.RaiseSosResponse = await api.sos.RaiseSos(req, metadata=person.md)
    return response.alert


async def redis_text(redis_client: aioredis.Redis, key: str) -> str | None:
    value = await redis_client.get(key)
    return None if value is None else str(value)


async def after_alert(cad: Cad, barrier_id: str) -> list[str]:
    """Kinds of what the CAD gets up to a barrier alert's alert_raised (inclusive)."""
    return [m.WhichOneof("kind") or "" for m in await cad.events_until(barrier_id)]


async def test_an_older_fix_joins_the_trail_but_never_replaces_a_newer_position(
    api: Api, redis_client: aioredis.Redis, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person, other = await api.sign_up(), await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    now = whole_ms(datetime.now(UTC))
    newer, older = (SF[0] + 0.01, SF[1]), (SF[0] - 0.01, SF[1])
    try:
        alert = await raise_at(api, person, fix_at(SF, now - timedelta(seconds=120)))
        assert (await cad.next_event("alert_raised")).alert_raised.alert.id == alert.id
        watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
        assert (await watch.read()).event == "snapshot"

        assert await share(api.sos, person, alert.id, fix_at(newer, now - timedelta(seconds=5))) == 1
        moved = (await cad.next_event("alert_location")).alert_location
        assert abs(moved.location.point.latitude - newer[0]) < 1e-9
        seen = await asyncio.wait_for(watch.read(), 10)
        assert seen.event == "location"
        assert abs(seen.alert.location.point.latitude - newer[0]) < 1e-9

        await asyncio.sleep(FORWARD_INTERVAL + 0.2)  # past the pacing (see FORWARD_INTERVAL)
        # A fix the phone buffered a minute ago arrives late, in a call of its own.
        assert await share(api.sos, person, alert.id, fix_at(older, now - timedelta(seconds=60))) == 1

        barrier = await raise_sos(api, other, SF)
        assert await after_alert(cad, barrier.id) == ["alert_raised"]  # no alert_location for the older fix
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert abs(got.alert.location.point.latitude - newer[0]) < 1e-9
        me = await api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=person.md)
        assert abs(me.user.last_location.point.latitude - newer[0]) < 1e-9
        stored = await db_conn.fetchval("SELECT location_data->>'lat' FROM users WHERE id = $1", person.id)
        assert abs(float(stored) - newer[0]) < 1e-9
        live = await redis_text(redis_client, f"user:location:{person.id}")
        assert live is not None
        assert live.startswith(f"{newer[0]},{newer[1]},")
        # The trail keeps every fix, from where the alert was raised on, each with its own
        # time and in the order they were taken (the late one where its time puts it).
        trail = await api.sos.ListAlertLocations(
            sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=person.md
        )
        assert [(round(t.point.latitude, 6), t.time.ToDatetime(UTC)) for t in trail.locations] == [
            (round(SF[0], 6), now - timedelta(seconds=120)),
            (round(older[0], 6), now - timedelta(seconds=60)),
            (round(newer[0], 6), now - timedelta(seconds=5)),
        ]

        # A newer fix still moves everything, and is the next "location" the watcher sees.
        newest = (SF[0] + 0.02, SF[1])
        assert await share(api.sos, person, alert.id, fix_at(newest, datetime.now(UTC))) == 1
        moved = (await cad.next_event("alert_location")).alert_location
        assert abs(moved.location.point.latitude - newest[0]) < 1e-9
        seen = await asyncio.wait_for(watch.read(), 10)
        assert seen.event == "location"
        assert abs(seen.alert.location.point.latitude - newest[0]) < 1e-9
        live = await redis_text(redis_client, f"user:location:{person.id}")
        assert live is not None
        assert live.startswith(f"{newest[0]},{newest[1]},")
        watch.cancel()
    finally:
        await cad.close()


async def test_user_location_in_redis_keeps_a_newer_fix_written_by_another_replica(
    api: Api, redis_client: aioredis.Redis
) -> None:
    person = await api.sign_up()
    later = (datetime.now(UTC) + timedelta(minutes=1)).timestamp()
    # Another replica stored (and wrote to Redis) a fix a minute newer than ours, first.
    await redis_client.set(f"user:location:{person.id}", f"1.5,2.5,{later}")
    assert await share(api.sos, person, "", location(SF)) == 1  # plain tracking, no alert
    assert await redis_text(redis_client, f"user:location:{person.id}") == f"1.5,2.5,{later}"

    await redis_client.set(f"user:location:{person.id}", "1.5,2.5,1000.0")  # an old one: replaced
    assert await share(api.sos, person, "", location(SF)) == 1
    live = await redis_text(redis_client, f"user:location:{person.id}")
    assert live is not None
    assert live.startswith(f"{SF[0]},{SF[1]},")


async def lock_waiters(database: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        return int(
            await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        )
    finally:
        await conn.close()


async def _at_least(database: str, waiters: int) -> bool:
    return await lock_waiters(database) >= waiters


async def test_a_cancel_racing_a_location_flush_ends_the_trail_and_the_cad_feed(
    api: Api, db_conn: asyncpg.Connection, database: str
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person, other = await api.sign_up(), await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        assert (await cad.next_event("alert_raised")).alert_raised.alert.id == alert.id

        # Hold the alert's row so that the cancel, then the flush of a fix shared while
        # it is pending, both queue up behind it: the cancel commits first, and the
        # flush must then see the alert cancelled.
        holder = db_conn.transaction()
        await holder.start()
        try:
            await db_conn.execute("SELECT 1 FROM sos_alerts WHERE id = $1 FOR UPDATE", alert.id)
            cancel = asyncio.ensure_future(
                api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id, reason="safe"), metadata=person.md)
            )
            await wait_for(lambda: _at_least(database, 1), what="the cancel waiting for the alert's row")
            sharing = asyncio.ensure_future(share(api.sos, person, alert.id, location((SF[0] + 0.001, SF[1]))))
            await wait_for(lambda: _at_least(database, 2), what="the location flush waiting for the alert's row")
        finally:
            await holder.rollback()
        cancelled = (await cancel).alert
        assert cancelled.status == common_pb2.SOS_STATUS_CANCELLED
        assert await sharing == 1  # accepted: the person's own location still moved

        assert (await cad.next_event("alert_cancelled")).alert_cancelled.alert_id == alert.id
        barrier = await raise_sos(api, other, SF)
        assert await after_alert(cad, barrier.id) == ["alert_raised"]  # nothing about the alert after its cancel
        trail = await api.sos.ListAlertLocations(
            sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=person.md
        )
        # Only where it was raised: the fix flushed after the cancel is not the alert's.
        assert [(t.point.latitude, t.point.longitude) for t in trail.locations] == [SF]
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert abs(got.alert.location.point.latitude - SF[0]) < 1e-9
        me = await api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=person.md)
        assert abs(me.user.last_location.point.latitude - (SF[0] + 0.001)) < 1e-9
    finally:
        await cad.close()


async def test_the_active_alert_key_follows_the_location_and_survives_a_redis_rebuild_unchanged(
    api: Api, redis_client: aioredis.Redis
) -> None:
    person = await api.sign_up()
    key = None

    async def marker() -> str | None:
        assert key is not None
        return await redis_text(redis_client, key)

    # Raised without a fix: no coordinates, and the time it was raised.
    alert = await raise_sos(api, person, None)
    key = f"sos:active:{alert.id}"
    raised_at = alert.create_time.ToDatetime(UTC).timestamp()
    assert await wait_for(marker, what="sos:active key") == f"{person.id},,,{raised_at}"
    assert await restored_after_redis_loss(redis_client, key) == f"{person.id},,,{raised_at}"

    # The first fix, then a later one: the key follows, with the time of the fix.
    for point, when in (
        ((SF[0] + 0.001, SF[1]), whole_ms(datetime.now(UTC)) - timedelta(seconds=3)),
        ((SF[0] + 0.002, SF[1]), whole_ms(datetime.now(UTC))),
    ):
        assert await share(api.sos, person, alert.id, fix_at(point, when)) == 1
        expected = f"{person.id},{point[0]},{point[1]},{when.timestamp()}"

        async def moved(expected: str = expected) -> bool:
            return await marker() == expected

        await wait_for(moved, what=f"sos:active key at {point}")
    # Redis loses its data: the relay puts back exactly what it kept live.
    assert await restored_after_redis_loss(redis_client, key) == expected

    # Raised with a fix: its coordinates and its time.
    other = await api.sign_up()
    when = whole_ms(datetime.now(UTC)) - timedelta(seconds=30)
    second = await raise_at(api, other, fix_at(SF, when))
    key = f"sos:active:{second.id}"
    assert await wait_for(marker, what="sos:active key") == f"{other.id},{SF[0]},{SF[1]},{when.timestamp()}"

    # Closing the alert removes the key.
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=person.md)
    key = f"sos:active:{alert.id}"

    async def gone() -> bool:
        return await marker() is None

    await wait_for(gone, what="sos:active key removed")


async def restored_after_redis_loss(redis_client: aioredis.Redis, key: str) -> str:
    await redis_client.flushdb()

    async def back() -> str | None:
        return await redis_text(redis_client, key)

    return await wait_for(back, what=f"{key} restored by the outbox relay")


async def test_a_fix_from_a_clock_running_ahead_does_not_freeze_the_position(api: Api) -> None:
    """A phone whose clock ran four minutes ahead, then was corrected: its later, real
    fixes must still move the alert (the early one is taken as of its arrival)."""
    person = await api.sign_up()
    now = datetime.now(UTC)
    alert = await raise_at(api, person, fix_at(SF, now))
    ahead, later = (SF[0] + 0.01, SF[1]), (SF[0] + 0.02, SF[1])
    assert await share(api.sos, person, alert.id, fix_at(ahead, now + timedelta(minutes=4))) == 1
    assert await share(api.sos, person, alert.id, fix_at(later, datetime.now(UTC))) == 1
    got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
    assert abs(got.alert.location.point.latitude - later[0]) < 1e-9
    assert got.alert.location.time.ToDatetime(UTC) <= datetime.now(UTC)
