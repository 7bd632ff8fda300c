"""SosService for the person in danger, audited: what a watcher, an agency and the trail
get when things go wrong around the happy path (a watcher far behind, a replica that
stops, a failure after the fixes committed, bad and hostile input)."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from securenow.server.bootstrap import App
from securenow.server.storage.alert_watch import RESYNC, AlertWatchHub
from securenow.v1 import common_pb2, sos_pb2, sos_pb2_grpc
from tests.conftest import REDIS_URL, extra_replica
from tests.dispatch_helpers import SF, Cad, location, raise_sos, register_department
from tests.helpers import Api, expect_error, wait_for
from tests.test_location_order import fix_at, share


async def test_a_watch_ends_when_the_alert_closed_even_if_its_closing_event_never_reached_it(
    api: Api, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """The hub drops events for a watcher 1,000 behind (alert_watch.py): the closing
    event can be among them. The watcher still has older events queued, and each one
    shows the alert as it is now: closed. The stream must end there, saying how the
    alert ended, not wait forever for an event that will never come."""
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
    try:
        assert (await asyncio.wait_for(watch.read(), 10)).event == "snapshot"
        # The alert is cancelled, and this watcher's "cancelled" is the event that was
        # dropped; an older event it still had queued comes through.
        await db_conn.execute(
            """UPDATE sos_alerts SET status = 'cancelled', resolved_at = now(), cancel_reason = 'safe',
                   escalate_at = NULL WHERE id = $1""",
            alert.id,
        )
        await redis_client.publish(f"sos:alert:{alert.id}", json.dumps({"alert_id": alert.id, "event": "location"}))
        last = await asyncio.wait_for(watch.read(), 10)
        assert last.alert.status == common_pb2.SOS_STATUS_CANCELLED
        assert last.event == "cancelled"
        assert await asyncio.wait_for(watch.read(), 10) == grpc.aio.EOF
    finally:
        watch.cancel()


async def test_a_watch_that_sees_the_close_before_its_event_ends_with_one_closing_message(api: Api) -> None:
    """An event queued ahead of the closing one, read after the close committed: one
    message naming the close ends the stream (not a "location" showing a cancelled
    alert, then a second message)."""
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
    try:
        assert (await asyncio.wait_for(watch.read(), 10)).event == "snapshot"
        await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id, reason="ok"), metadata=person.md)
        messages = []
        while (msg := await asyncio.wait_for(watch.read(), 10)) != grpc.aio.EOF:
            messages.append(msg)
        assert [m.event for m in messages] == ["cancelled"]
        assert messages[0].alert.cancel_reason == "ok"
    finally:
        watch.cancel()


async def test_the_last_fix_held_back_by_pacing_reaches_the_agency_when_the_replica_stops(api: Api) -> None:
    """Fixes are forwarded at most once a second per alert (latest wins); the one held
    back is where the person was last seen. A replica that stops (a deploy) while it
    holds one must forward it: no other replica knows it."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person, other = await api.sign_up(), await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        assert (await cad.next_event("alert_raised")).alert_raised.alert.id == alert.id
        now = datetime.now(UTC)
        first, last = (SF[0] + 0.001, SF[1]), (SF[0] + 0.002, SF[1])
        async with extra_replica("replica-stopping") as rt:
            # A pace no test outlasts: the second fix is held back until the stop.
            rt.app.locations._forward_interval = 3600.0
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel:
                stub = sos_pb2_grpc.SosServiceStub(channel)
                assert await share(stub, person, alert.id, fix_at(first, now)) == 1
                moved = (await cad.next_event("alert_location")).alert_location
                assert abs(moved.location.point.latitude - first[0]) < 1e-9
                assert await share(stub, person, alert.id, fix_at(last, now + timedelta(seconds=1))) == 1
        # The replica stopped.
        moved = (await cad.next_event("alert_location")).alert_location
        assert moved.alert_id == alert.id
        assert abs(moved.location.point.latitude - last[0]) < 1e-9
        barrier = await raise_sos(api, other, SF)
        seen = await cad.events_until(barrier.id)
        assert [m.WhichOneof("kind") for m in seen] == ["alert_raised"]  # forwarded once
    finally:
        await cad.close()


async def test_a_failure_after_the_fixes_committed_neither_doubles_the_trail_nor_leaves_the_alert_unrouted(
    api: Api, app: App, db_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert raised without a fix is routed once its first fix is stored. If that
    routing fails (the database hiccups), the fixes are already committed: they must not
    be written again, and the routing must be tried again."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    route = app.sos.route_on_first_fix
    failures: list[str] = []

    async def fails_once(alert_id: str) -> None:
        if not failures:
            failures.append(alert_id)
            raise ConnectionResetError("the database went away")  # what asyncpg may raise
        await route(alert_id)

    monkeypatch.setattr(app.sos, "route_on_first_fix", fails_once)
    try:
        alert = await raise_sos(api, person, None)
        assert await share(api.sos, person, alert.id, location(SF)) == 1
        raised = (await cad.next_event("alert_raised")).alert_raised
        assert raised.alert.id == alert.id
        assert failures == [alert.id]
        count = await db_conn.fetchval("SELECT count(*) FROM sos_alert_locations WHERE alert_id = $1", alert.id)
        assert count == 1
        events = await db_conn.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'location' AND aggregate_id = $1", alert.id
        )
        assert events == 1
    finally:
        await cad.close()


BAD_NUMBERS = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", [*BAD_NUMBERS, 90.0001, -1000.0])
async def test_a_fix_with_an_impossible_latitude_is_refused_naming_the_field(api: Api, value: float) -> None:
    person = await api.sign_up()
    loc = location((value, SF[1]))
    raised = api.sos.RaiseSos(sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=loc), metadata=person.md)
    details = await expect_error(raised, grpc.StatusCode.INVALID_ARGUMENT)
    assert set(details.fields) == {"location.point.latitude"}
    alert = await raise_sos(api, person, None)
    details = await expect_error(share(api.sos, person, alert.id, loc), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(details.fields) == {"location.point.latitude"}
    details = await expect_error(share(api.sos, person, "", loc), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(details.fields) == {"location.point.latitude"}


@pytest.mark.parametrize("field", ["accuracy_m", "heading_deg", "speed_mps"])
async def test_non_finite_fix_details_are_refused_naming_the_field(api: Api, field: str) -> None:
    person = await api.sign_up()
    for value in BAD_NUMBERS:
        loc = location(SF)
        setattr(loc, field, value)
        details = await expect_error(share(api.sos, person, "", loc), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(details.fields) == {f"location.{field}"}


async def test_a_fix_from_far_in_the_future_is_refused_and_moves_nothing(api: Api, db_conn: asyncpg.Connection) -> None:
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    future = fix_at((SF[0] + 0.01, SF[1]), datetime.now(UTC) + timedelta(hours=1))
    details = await expect_error(share(api.sos, person, alert.id, future), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(details.fields) == {"location.time"}
    details = await expect_error(
        api.sos.RaiseSos(sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=future), metadata=person.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(details.fields) == {"location.time"}
    assert await db_conn.fetchval("SELECT count(*) FROM sos_alert_locations WHERE alert_id = $1", alert.id) == 1
    assert await db_conn.fetchval("SELECT count(*) FROM sos_alerts") == 1


async def test_metadata_limits_name_the_field(api: Api) -> None:
    person = await api.sign_up()
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({f"k{i}": "v" for i in range(33)}, {"metadata"}),
        ({"k" * 65: "v"}, {"metadata"}),
        ({"floor": "x" * 513}, {"metadata[floor]"}),
        ({"line\nbreak": "v"}, {"metadata"}),
    ]
    for metadata, fields in cases:
        req = sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), metadata=metadata, location=location(SF))
        details = await expect_error(api.sos.RaiseSos(req, metadata=person.md), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(details.fields) == fields, metadata


async def test_a_retry_with_the_same_request_id_but_another_body_is_refused_and_changes_nothing(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    request_id = str(uuid.uuid4())
    first = sos_pb2.RaiseSosRequest(request_id=request_id, location=location(SF), metadata={"floor": "3"})
    raised = (await api.sos.RaiseSos(first, metadata=person.md)).alert
    variants: list[dict[str, Any]] = [
        {"metadata": {"floor": "4"}},
        {"location": location((SF[0] + 0.01, SF[1]))},
        {"priority": common_pb2.ALERT_PRIORITY_CRITICAL},
        {"location": None},
    ]
    for change in variants:
        retry = sos_pb2.RaiseSosRequest()
        retry.CopyFrom(first)
        for name, value in change.items():
            if value is None:
                retry.ClearField("location")
            elif name == "metadata":
                retry.metadata.clear()
                retry.metadata.update(value)
            elif name == "location":
                retry.location.CopyFrom(value)
            else:
                setattr(retry, name, value)
        await expect_error(
            api.sos.RaiseSos(retry, metadata=person.md), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"
        )
    again = (await api.sos.RaiseSos(first, metadata=person.md)).alert
    assert again.id == raised.id
    assert await db_conn.fetchval("SELECT count(*) FROM sos_alerts") == 1
    # Another person's identical request id is theirs: a new alert.
    other = await api.sign_up()
    theirs = (await api.sos.RaiseSos(first, metadata=other.md)).alert
    assert theirs.id != raised.id


async def test_nobody_else_reads_cancels_watches_or_shares_into_an_alert(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    elsewhere = await register_department(api, admin, (SF[0] + 5, SF[1]), name="Elsewhere PD")
    person, stranger = await api.sign_up(), await api.sign_up()
    alert = await raise_sos(api, person, SF)
    for caller in (stranger.md, elsewhere.md):
        await expect_error(
            api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=caller),
            grpc.StatusCode.NOT_FOUND,
            "ALERT_NOT_FOUND",
        )
        await expect_error(
            api.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=caller),
            grpc.StatusCode.NOT_FOUND,
            "ALERT_NOT_FOUND",
        )
        await expect_error(
            api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=caller).read(),
            grpc.StatusCode.NOT_FOUND,
        )
        listed = await api.sos.ListSosAlerts(sos_pb2.ListSosAlertsRequest(), metadata=caller)
        assert alert.id not in [a.id for a in listed.alerts]
    # The handling agency reads it; it cannot cancel it (CancelSos is the person's).
    got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=dept.md)
    assert got.alert.id == alert.id
    await expect_error(
        api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=stranger.md),
        grpc.StatusCode.NOT_FOUND,
        "ALERT_NOT_FOUND",
    )
    await expect_error(share(api.sos, stranger, alert.id, location(SF)), grpc.StatusCode.NOT_FOUND, "ALERT_NOT_FOUND")
    # A closed alert takes no more fixes, from its owner either.
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=person.md)
    await expect_error(
        share(api.sos, person, alert.id, location(SF)), grpc.StatusCode.FAILED_PRECONDITION, "ALERT_CLOSED"
    )
    again = await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=person.md)
    assert again.alert.status == common_pb2.SOS_STATUS_CANCELLED


async def test_plain_tracking_moves_only_the_persons_location(
    api: Api, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    moved = (SF[0] + 0.003, SF[1])
    assert await share(api.sos, person, "", location(moved)) == 1

    async def live() -> str | None:
        value = await redis_client.get(f"user:location:{person.id}")
        return None if value is None else str(value)

    value = await wait_for(live, what="user:location key")
    assert value.startswith(f"{moved[0]},{moved[1]},")
    assert await db_conn.fetchval("SELECT count(*) FROM sos_alert_locations WHERE alert_id = $1", alert.id) == 1


async def test_watchers_open_before_the_hub_subscribed_are_told_to_resync() -> None:
    """A WatchSos opened as a process starts registers before the hub's first Pub/Sub
    subscription: a change published in between reaches nobody, so the hub tells every
    watcher to re-read the alert once subscribed (as after a reconnect)."""
    hub = AlertWatchHub(REDIS_URL)
    queue = hub.watch(str(uuid.uuid4()))
    stop = asyncio.Event()
    running = asyncio.create_task(hub.run(stop))
    try:
        assert await asyncio.wait_for(queue.get(), 10) == RESYNC
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def test_fixes_waiting_to_be_stored_are_bounded(api: Api, db_conn: asyncpg.Connection) -> None:
    """While PostgreSQL cannot store fixes, a sender does not grow the server's memory
    without end: past the limit it gets UNAVAILABLE (and retries); what was accepted
    is stored once the database moves again."""
    person = await api.sign_up()
    points = [(SF[0] + i * 0.001, SF[1]) for i in range(1, 6)]

    async def fixes() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        for point in points:
            yield sos_pb2.ShareLocationRequest(location=location(point))  # plain tracking

    async with extra_replica("replica-bounded") as rt:
        rt.app.locations._max_buffered = 3
        rt.app.locations._room_wait = 0.5
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel:
            stub = sos_pb2_grpc.SosServiceStub(channel)
            async with db_conn.transaction():
                # The person's row is held: storing their position waits.
                await db_conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", uuid.UUID(person.id))
                await expect_error(stub.ShareLocation(fixes(), metadata=person.md), grpc.StatusCode.UNAVAILABLE)

            async def stored() -> bool:
                lat = await db_conn.fetchval(
                    "SELECT (location_data->>'lat')::float8 FROM users WHERE id = $1", uuid.UUID(person.id)
                )
                return lat is not None and abs(lat - points[2][0]) < 1e-9

            await wait_for(stored, what="the three accepted fixes to be stored")


async def test_a_late_retry_of_a_raise_whose_fix_aged_out_gets_the_alert(api: Api) -> None:
    """A phone that lost RaiseSos's answer retries later; by then its fix may be older
    than a new raise may carry. The retry answers with the alert raised, as any retry."""
    person = await api.sign_up()
    aged_at = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=2)
    req = sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), description="help", location=fix_at(SF, aged_at))
    first = (await api.sos.RaiseSos(req, metadata=person.md)).alert

    async def aged_out() -> bool:
        return datetime.now(UTC) - aged_at > timedelta(days=1, seconds=0.2)

    await wait_for(aged_out, within=10, what="the fix to age past a day")
    again = (await api.sos.RaiseSos(req, metadata=person.md)).alert
    assert again.id == first.id
    fresh = sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), description="help", location=fix_at(SF, aged_at))
    details = await expect_error(api.sos.RaiseSos(fresh, metadata=person.md), grpc.StatusCode.INVALID_ARGUMENT)
    assert "location.time" in details.fields
