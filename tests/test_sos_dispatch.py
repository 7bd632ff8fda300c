"""SOS to CAD, end to end over real sockets: routing by jurisdiction, the dispatch
stream's delivery promise, commands, and what the person sees."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from securenow.server.bootstrap import App
from securenow.v1 import agency_pb2, common_pb2, sos_pb2, users_pb2
from tests.conftest import extra_replica
from tests.dispatch_helpers import LA, SF, Cad, dispatcher_of, raise_sos, register_department
from tests.helpers import Api, error_details, expect_error, wait_for
from tests.tcp_proxy import TcpProxy


async def test_raised_sos_reaches_the_department_whose_jurisdiction_contains_it(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, person, SF, description="someone is following me")
        assert alert.status == common_pb2.SOS_STATUS_ACTIVE
        assert alert.priority == common_pb2.ALERT_PRIORITY_HIGH
        assert alert.assigned_agency_id == dept.id
        msg = await cad.next_event("alert_raised")
        raised = msg.alert_raised
        assert msg.event_id
        assert raised.alert.id == alert.id
        assert raised.alert.description == "someone is following me"
        assert abs(raised.alert.location.point.latitude - SF[0]) < 1e-9
        assert raised.incident.status == common_pb2.INCIDENT_STATUS_REPORTED
        assert raised.incident.police_department_id == dept.id
    finally:
        await cad.close()


async def test_departments_only_see_alerts_in_their_jurisdiction(api: Api) -> None:
    admin = await api.admin()
    sf = await register_department(api, admin, SF, name="SFPD")
    la = await register_department(api, admin, LA, name="LAPD")
    person = await api.sign_up()
    cad_sf, cad_la = Cad(api.channel, sf.api_key), Cad(api.channel, la.api_key)
    try:
        in_sf = await raise_sos(api, person, SF)
        in_la = await raise_sos(api, person, LA)  # committed after in_sf: a barrier for LA's stream
        assert (await cad_sf.next_event("alert_raised")).alert_raised.alert.id == in_sf.id
        # LA's first event is its own alert: SF's alert never entered LA's stream.
        assert (await cad_la.next_event("alert_raised")).alert_raised.alert.id == in_la.id
        sf_incident = (
            await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=in_sf.id), metadata=sf.md)
        ).incident

        # LA can neither read nor act on SF's alert or incident.
        await expect_error(
            api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=in_sf.id), metadata=la.md),
            grpc.StatusCode.NOT_FOUND,
            "ALERT_NOT_FOUND",
        )
        await expect_error(
            api.agency.GetIncident(agency_pb2.GetIncidentRequest(incident_id=sf_incident.id), metadata=la.md),
            grpc.StatusCode.NOT_FOUND,
            "INCIDENT_NOT_FOUND",
        )
        await expect_error(
            api.agency.UpdateIncident(
                agency_pb2.UpdateIncidentRequest(
                    incident_id=sf_incident.id, status=common_pb2.INCIDENT_STATUS_DISPATCHED
                ),
                metadata=la.md,
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        result = await cad_la.command(accept=agency_pb2.AcceptAlert(alert_id=in_sf.id, assigned_unit="LA-1"))
        assert result.code == grpc.StatusCode.NOT_FOUND.value[0]
        listed = await api.agency.ListIncidents(agency_pb2.ListIncidentsRequest(), metadata=la.md)
        assert [i.sos_alert_id for i in listed.incidents] == [in_la.id]
    finally:
        await cad_sf.close()
        await cad_la.close()


async def test_row_level_security_limits_an_agency_even_in_a_query_that_forgets_to(api: Api, app: App) -> None:
    """The second wall: as the agency reader role, unfiltered queries see only the
    agency's rows (and the caller's own alerts), and cannot write."""
    admin = await api.admin()
    sf = await register_department(api, admin, SF, name="SFPD")
    la = await register_department(api, admin, LA, name="LAPD")
    person, officer = await api.sign_up(), await api.sign_up()
    in_sf = await raise_sos(api, person, SF)
    in_la = await raise_sos(api, person, LA)
    own_in_sf = await raise_sos(api, officer, SF)
    alerts = "SELECT id::text FROM sos_alerts ORDER BY created_at"
    incidents = "SELECT DISTINCT police_department_id::text FROM police_incidents"
    trails = "SELECT DISTINCT alert_id::text FROM sos_alert_locations"

    async with app.db.reader() as uow:  # the server's own role sees everything
        assert [r[0] for r in await uow.conn.fetch(alerts)] == [in_sf.id, in_la.id, own_in_sf.id]
        for alert, (lat, lng) in ((in_sf, SF), (in_la, LA)):  # a location trail for each
            await uow.conn.execute(
                "INSERT INTO sos_alert_locations (alert_id, recorded_at, latitude, longitude)"
                " VALUES ($1, now(), $2, $3)",
                alert.id,
                lat,
                lng,
            )
    async with app.db.agency_reader(la.id, None) as uow:
        assert [r[0] for r in await uow.conn.fetch(alerts)] == [in_la.id]
        assert [r[0] for r in await uow.conn.fetch(incidents)] == [la.id]
        assert [r[0] for r in await uow.conn.fetch(trails)] == [in_la.id]
    async with app.db.agency_reader(la.id, officer.id) as uow:  # an LA dispatcher's own SOS in SF
        assert {r[0] for r in await uow.conn.fetch(alerts)} == {in_la.id, own_in_sf.id}
        assert [r[0] for r in await uow.conn.fetch(incidents)] == [la.id]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with app.db.agency_reader(sf.id, None) as uow:
            await uow.conn.execute("UPDATE sos_alerts SET description = 'x'")
    # The settings and the role end with the transaction: the pooled connection is clean.
    async with app.db.reader() as uow:
        assert await uow.conn.fetchval("SELECT current_user") != "securenow_agency_reader"
        assert len(await uow.conn.fetch(alerts)) == 3


async def test_accept_and_incident_updates_reach_the_person_watching(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    alert = await raise_sos(api, person, SF)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
    try:
        first = await watch.read()
        assert first.event == "snapshot"
        assert first.alert.status == common_pb2.SOS_STATUS_ACTIVE
        assert first.incident.status == common_pb2.INCIDENT_STATUS_REPORTED
        msg = await cad.next_event("alert_raised")
        raised = msg.alert_raised
        cad.ack(msg.event_id)

        result = await cad.command(
            accept=agency_pb2.AcceptAlert(alert_id=alert.id, assigned_unit="Unit 12", eta_minutes=4)
        )
        assert result.code == 0
        assert result.incident_id == raised.incident.id
        accepted = await watch.read()
        assert accepted.event == "accepted"
        assert accepted.alert.status == common_pb2.SOS_STATUS_RESPONDING
        assert accepted.alert.police_notified
        assert accepted.alert.HasField("response_time")
        assert accepted.incident.status == common_pb2.INCIDENT_STATUS_DISPATCHED
        assert accepted.incident.assigned_unit == "Unit 12"
        assert accepted.incident.estimated_arrival_minutes == 4

        result = await cad.command(
            update=agency_pb2.IncidentUpdate(incident_id=raised.incident.id, status=common_pb2.INCIDENT_STATUS_ON_SCENE)
        )
        assert result.code == 0
        on_scene = await watch.read()
        assert on_scene.event == "incident_updated"
        assert on_scene.incident.status == common_pb2.INCIDENT_STATUS_ON_SCENE
        assert on_scene.incident.HasField("actual_arrival_time")

        result = await cad.command(
            update=agency_pb2.IncidentUpdate(
                incident_id=raised.incident.id, status=common_pb2.INCIDENT_STATUS_RESOLVED, notes="person safe"
            )
        )
        assert result.code == 0
        resolved = await watch.read()
        assert resolved.event == "resolved"
        assert resolved.alert.status == common_pb2.SOS_STATUS_RESOLVED
        assert resolved.incident.resolution_notes == "person safe"
        assert await watch.read() == grpc.aio.EOF  # nothing more can change: the watch ends
    finally:
        watch.cancel()
        await cad.close()


async def test_invalid_incident_transition_is_a_command_error_and_the_stream_stays_open(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        incident = (await cad.next_event("alert_raised")).alert_raised.incident
        skip = await cad.command(
            update=agency_pb2.IncidentUpdate(incident_id=incident.id, status=common_pb2.INCIDENT_STATUS_ON_SCENE)
        )
        assert skip.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "reported" in skip.message
        bad_id = await cad.command(accept=agency_pb2.AcceptAlert(alert_id="not-a-uuid"))
        assert bad_id.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert bad_id.message.startswith("accept.alert_id: "), bad_id.message  # named as the CAD sent it
        empty = await cad.command()
        assert empty.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "one of ack, accept" in empty.message
        ok = await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alert.id, assigned_unit="U1"))
        assert ok.code == 0
        assert cad.error is None
    finally:
        await cad.close()


async def test_a_command_that_fails_inside_the_server_is_an_internal_result_and_the_stream_stays_open(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        await cad.next_event("alert_raised")

        async def broken_accept(*args: object, **kwargs: object) -> None:
            raise RuntimeError("injected fault")  # not a domain error: a bug or a crashed dependency

        monkeypatch.setattr(api.app.dispatch, "accept", broken_accept)
        failed = await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alert.id, assigned_unit="U1"))
        assert failed.code == grpc.StatusCode.INTERNAL.value[0]
        assert failed.alert_id == alert.id
        assert "internal error" in failed.message
        assert "injected" not in failed.message  # no internals leak to the client
        monkeypatch.undo()

        # Same stream: the next command works, and new events still arrive.
        ok = await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alert.id, assigned_unit="U1"))
        assert ok.code == 0
        later = await raise_sos(api, person, SF)
        while (msg := await cad.next()).WhichOneof("kind") != "alert_raised":
            pass
        assert msg.alert_raised.alert.id == later.id
        assert cad.error is None
        assert not cad.ended.is_set()
    finally:
        await cad.close()


async def test_cancel_reaches_the_cad_and_the_watcher_and_only_the_owner_can_cancel(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person, stranger = await api.sign_up(), await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    alert = await raise_sos(api, person, SF)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
    try:
        assert (await watch.read()).event == "snapshot"
        await cad.next_event("alert_raised")
        await expect_error(
            api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=stranger.md),
            grpc.StatusCode.NOT_FOUND,
            "ALERT_NOT_FOUND",
        )
        await expect_error(
            api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=stranger.md).read(),
            grpc.StatusCode.NOT_FOUND,
        )
        cancelled = await api.sos.CancelSos(
            sos_pb2.CancelSosRequest(alert_id=alert.id, reason="false alarm"), metadata=person.md
        )
        assert cancelled.alert.status == common_pb2.SOS_STATUS_CANCELLED
        msg = await cad.next_event("alert_cancelled")
        assert msg.alert_cancelled.alert_id == alert.id
        assert msg.alert_cancelled.reason == "false alarm"
        seen = await watch.read()
        assert seen.event == "cancelled"
        assert seen.alert.cancel_reason == "false alarm"
        assert await watch.read() == grpc.aio.EOF
        # The closed incident keeps what it was closed with: the CAD cannot rewrite it.
        incident_id = seen.incident.id
        rewrite = await cad.command(
            update=agency_pb2.IncidentUpdate(
                incident_id=incident_id, status=seen.incident.status, notes="overwritten", assigned_unit="X9"
            )
        )
        assert rewrite.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "cancelled" in rewrite.message
        kept = await api.agency.GetIncident(agency_pb2.GetIncidentRequest(incident_id=incident_id), metadata=dept.md)
        assert kept.incident.resolution_notes == seen.incident.resolution_notes
        assert "overwritten" not in kept.incident.resolution_notes
        assert kept.incident.assigned_unit != "X9"
    finally:
        watch.cancel()
        await cad.close()


async def test_retried_raise_with_the_same_request_id_creates_one_alert(api: Api, db_conn) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        first = await raise_sos(api, person, SF, request_id="5c2f4d8e-8a5b-4c61-9d2b-6a0f2d6c1e01")
        again = await raise_sos(api, person, SF, request_id="5c2f4d8e-8a5b-4c61-9d2b-6a0f2d6c1e01")
        assert again.id == first.id
        assert await db_conn.fetchval("SELECT count(*) FROM sos_alerts") == 1
        await expect_error(
            raise_sos(api, person, SF, request_id="5c2f4d8e-8a5b-4c61-9d2b-6a0f2d6c1e01", description="other"),
            grpc.StatusCode.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
        )
        barrier = await raise_sos(api, person, SF)
        seen = await cad.events_until(barrier.id)
        raised = [m.alert_raised.alert.id for m in seen if m.WhichOneof("kind") == "alert_raised"]
        assert raised == [first.id, barrier.id]
    finally:
        await cad.close()


async def test_reconnect_redelivers_unacked_events_in_order_and_resume_replays(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    alerts = [await raise_sos(api, person, SF, description=f"#{i}") for i in range(3)]
    received = [await cad.next_event("alert_raised") for _ in alerts]
    assert [m.alert_raised.alert.id for m in received] == [a.id for a in alerts]
    event_ids = [m.event_id for m in received]
    cad.ack(event_ids[0])
    cad.ack(event_ids[1])
    # Commands are processed in order: once this result is back, both acks are settled.
    await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alerts[0].id))
    await cad.close()

    later = [await raise_sos(api, person, SF, description=f"#{i}") for i in range(3, 5)]
    cad2 = Cad(api.channel, dept.api_key)
    try:
        got = []
        while len(got) < 3:
            msg = await cad2.next()
            if msg.WhichOneof("kind") == "alert_raised":
                got.append(msg.alert_raised.alert.id)
        # The unacked third alert first, then the two raised while disconnected, in order.
        assert got == [alerts[2].id, later[0].id, later[1].id]
    finally:
        await cad2.close()

    cad3 = Cad(api.channel, dept.api_key, resume_after=event_ids[0])
    try:
        replay = []
        while len(replay) < 4:
            msg = await cad3.next()
            if msg.WhichOneof("kind") == "alert_raised":
                replay.append(msg.alert_raised.alert.id)
        assert replay == [alerts[1].id, alerts[2].id, later[0].id, later[1].id]
    finally:
        await cad3.close()


async def test_revoked_api_key_closes_its_open_stream(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        await raise_sos(api, person, SF)
        await cad.next_event("alert_raised")
        await api.agency.RevokeApiKey(agency_pb2.RevokeApiKeyRequest(key_id=dept.key_id), metadata=admin.md)
        error = await cad.wait_closed(within=10)
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await cad.close()
    await expect_error(
        api.agency.ListIncidents(agency_pb2.ListIncidentsRequest(), metadata=dept.md),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )


async def test_browser_ack_settles_every_event_up_to_the_cursor(api: Api, redis_client) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    board = api.agency.WatchDispatch(agency_pb2.WatchDispatchRequest(), metadata=dispatcher.md)
    try:
        alerts = [await raise_sos(api, person, SF) for _ in range(3)]
        events = []
        while len(events) < 3:
            msg = (await board.read()).event
            if msg.WhichOneof("kind") == "alert_raised":
                events.append(msg)
        assert [e.alert_raised.alert.id for e in events] == [a.id for a in alerts]
        await api.agency.AckDispatchEvent(
            agency_pb2.AckDispatchEventRequest(event_id=events[1].event_id), metadata=dispatcher.md
        )
        pending = await redis_client.xpending_range(f"dispatch:{dept.id}", "cad", min="-", max="+", count=10)
        assert [p["message_id"] for p in pending] == [events[2].event_id]  # the first two are settled
    finally:
        board.cancel()


async def test_dispatcher_stream_closes_when_the_dispatcher_is_suspended(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    board = api.agency.WatchDispatch(agency_pb2.WatchDispatchRequest(), metadata=dispatcher.md)
    await raise_sos(api, person, SF)
    while (await board.read()).event.WhichOneof("kind") != "alert_raised":
        pass
    await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=dispatcher.id), metadata=admin.md)

    async def closed_with() -> grpc.StatusCode | None:
        try:
            while True:
                await board.read()
        except grpc.aio.AioRpcError as err:
            return err.code()

    code = await asyncio.wait_for(closed_with(), 10)  # closed within the credential-check interval
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_concurrent_retries_of_one_raise_create_one_alert(api: Api, db_conn) -> None:  # type: ignore[no-untyped-def]
    person = await api.sign_up()
    request_id = "0b7f3c3e-2f4a-4c1e-9a77-3f1d2b9c8e10"
    alerts = await asyncio.gather(*(raise_sos(api, person, SF, request_id=request_id) for _ in range(8)))
    assert len({a.id for a in alerts}) == 1
    assert await db_conn.fetchval("SELECT count(*) FROM sos_alerts") == 1
    assert await db_conn.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'alert_raised'") == 1
    assert await db_conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'sos.raise'") == 1


async def test_a_silent_cad_stream_is_dropped_while_one_sending_heartbeats_stays_open(api: Api) -> None:
    # A replica with a short idle timeout, so "silent for too long" happens within the test.
    async with extra_replica("quick-idle", dispatch_heartbeat_seconds=0.1, dispatch_idle_timeout_seconds=1.5) as rt:
        admin = await api.admin()
        dept = await register_department(api, admin, SF)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as ch:
            silent, alive = Cad(ch, dept.api_key), Cad(ch, dept.api_key)

            async def heartbeats() -> None:
                while not alive.ended.is_set():
                    alive.send(heartbeat=agency_pb2.Heartbeat())
                    await asyncio.sleep(0.1)

            beating = asyncio.create_task(heartbeats())
            try:
                await asyncio.wait_for(silent.ended.wait(), 10)
                assert silent.error is not None
                details = error_details(silent.error)
                assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "CLIENT_SILENT")
                # The one that keeps talking is still open, and still gets alerts.
                assert not alive.ended.is_set()
                person = await api.sign_up()
                alert = await raise_sos(api, person, SF)  # published by the main runtime's relay
                assert (await alive.next_event("alert_raised")).alert_raised.alert.id == alert.id
            finally:
                beating.cancel()
                await silent.close()
                await alive.close()


async def test_a_cad_whose_network_vanished_is_dropped_by_keepalive(api: Api) -> None:
    """No reset, no FIN: the CAD's packets just stop arriving (and ours stop reaching it).
    The server's keepalive ping goes unanswered, so it closes the connection and the
    stream's subscription, long before the application's idle timeout would."""
    async with extra_replica(
        "keepalive",
        keepalive_time_seconds=1.0,
        keepalive_timeout_seconds=2.0,  # not less: a busy CI machine must not miss a live ping
        dispatch_heartbeat_seconds=600,
        dispatch_idle_timeout_seconds=600,
    ) as rt:
        admin = await api.admin()
        dept = await register_department(api, admin, SF)
        proxy = await TcpProxy("127.0.0.1", rt.grpc_port).start()

        def open_streams() -> int:
            return sum(1 for sub in rt.app.dispatch_hub.subscriptions() if sub.department_id == dept.id)

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as ch:
                cad = Cad(ch, dept.api_key)
                try:
                    person = await api.sign_up()
                    alert = await raise_sos(api, person, SF)
                    assert (await cad.next_event("alert_raised")).alert_raised.alert.id == alert.id
                    assert open_streams() == 1
                    proxy.go_silent()

                    async def dropped() -> bool:
                        return open_streams() == 0

                    await wait_for(dropped, within=30, what="the server to drop the silent CAD's subscription")
                finally:
                    await cad.close()
        finally:
            await proxy.close()


async def test_concurrent_cancel_and_incident_update_of_one_alert_never_deadlock(api: Api) -> None:
    """CancelSos and UpdateIncident lock the same alert and incident: in the same order,
    so one waits for the other; each call is OK or refused, never UNAVAILABLE."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alerts = [await raise_sos(api, person, SF) for _ in range(40)]
    incidents = []
    for alert in alerts:
        accepted = await api.agency.AcceptSosAlert(
            agency_pb2.AcceptSosAlertRequest(alert_id=alert.id, assigned_unit="U1"), metadata=dept.md
        )
        incidents.append(accepted.incident)

    async def outcome(call: object) -> grpc.StatusCode:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    calls = []
    for alert, incident in zip(alerts, incidents, strict=True):
        calls.append(outcome(api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=person.md)))
        calls.append(
            outcome(
                api.agency.UpdateIncident(
                    agency_pb2.UpdateIncidentRequest(
                        incident_id=incident.id, status=common_pb2.INCIDENT_STATUS_ON_SCENE
                    ),
                    metadata=dept.md,
                )
            )
        )
    codes = await asyncio.gather(*calls)
    cancels, updates = codes[0::2], codes[1::2]
    assert set(cancels) == {grpc.StatusCode.OK}  # a responding alert can always be cancelled
    assert set(updates) <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    for alert in alerts:
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert got.alert.status == common_pb2.SOS_STATUS_CANCELLED
        assert got.incident.status == common_pb2.INCIDENT_STATUS_RESOLVED
