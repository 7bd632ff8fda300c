"""Routing beyond the simple case: escalation, declines, alerts outside every police
jurisdiction, alerts raised before the phone has a fix, and department registration."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from securenow.v1 import agency_pb2, common_pb2, sos_pb2
from tests.dispatch_helpers import LA, NOWHERE, SF, Cad, location, raise_sos, register_department
from tests.helpers import Api, expect_error, wait_for


async def test_unaccepted_alert_escalates_to_the_next_department(api: Api) -> None:
    admin = await api.admin()
    local = await register_department(api, admin, SF, half_deg=0.05, name="Precinct 3", ack_timeout_s=1)
    county = await register_department(api, admin, SF, half_deg=0.5, name="County Sheriff")
    person = await api.sign_up()
    cad_local, cad_county = Cad(api.channel, local.api_key), Cad(api.channel, county.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        assert alert.assigned_agency_id == local.id  # the most specific jurisdiction first
        watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
        assert (await watch.read()).event == "snapshot"
        started = time.monotonic()
        await cad_local.next_event("alert_raised")
        escalated = await cad_local.next_event("alert_escalated", within=10)
        assert escalated.alert_escalated.alert_id == alert.id
        assert escalated.alert_escalated.priority == common_pb2.ALERT_PRIORITY_CRITICAL
        assert time.monotonic() - started >= 0.9  # not before the acknowledgement timeout
        moved = await cad_county.next_event("alert_raised")
        assert moved.alert_raised.alert.id == alert.id
        assert moved.alert_raised.alert.priority == common_pb2.ALERT_PRIORITY_CRITICAL
        assert moved.alert_raised.alert.escalation_level == 1
        assert moved.alert_raised.incident.police_department_id == county.id
        seen = await watch.read()
        assert seen.event == "escalated"
        assert seen.alert.assigned_agency_id == county.id
        watch.cancel()
        # The first department no longer sees the incident.
        await expect_error(
            api.agency.GetIncident(
                agency_pb2.GetIncidentRequest(incident_id=moved.alert_raised.incident.id), metadata=local.md
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    finally:
        await cad_local.close()
        await cad_county.close()


async def test_declined_alert_is_rerouted(api: Api) -> None:
    admin = await api.admin()
    local = await register_department(api, admin, SF, half_deg=0.05, name="Precinct 3")
    county = await register_department(api, admin, SF, half_deg=0.5, name="County Sheriff")
    person = await api.sign_up()
    cad_local, cad_county = Cad(api.channel, local.api_key), Cad(api.channel, county.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        await cad_local.next_event("alert_raised")
        result = await cad_local.command(decline=agency_pb2.DeclineAlert(alert_id=alert.id, reason="no units"))
        assert result.code == 0
        moved = await cad_county.next_event("alert_raised")
        assert moved.alert_raised.alert.id == alert.id
        notice = await cad_local.next_event("alert_escalated")
        assert "declined: no units" in notice.alert_escalated.reason
        again = await cad_local.command(decline=agency_pb2.DeclineAlert(alert_id=alert.id))
        assert again.code == grpc.StatusCode.NOT_FOUND.value[0]  # no longer theirs
    finally:
        await cad_local.close()
        await cad_county.close()


async def test_alert_outside_every_jurisdiction_goes_to_the_nearest_security_agency(api: Api) -> None:
    admin = await api.admin()
    await register_department(api, admin, SF, name="SFPD")
    near = await register_department(
        api,
        admin,
        (NOWHERE[0] + 1.0, NOWHERE[1]),
        name="Plains Security",
        agency_type=agency_pb2.AGENCY_TYPE_SECURITY_AGENCY,
    )
    await register_department(api, admin, LA, name="LA Security", agency_type=agency_pb2.AGENCY_TYPE_SECURITY_AGENCY)
    person = await api.sign_up()
    cad = Cad(api.channel, near.api_key)
    try:
        alert = await raise_sos(api, person, NOWHERE)
        assert alert.outside_jurisdiction
        assert alert.assigned_agency_id == near.id
        raised = (await cad.next_event("alert_raised")).alert_raised
        assert raised.alert.outside_jurisdiction
        result = await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alert.id, assigned_unit="Patrol 2"))
        assert result.code == 0
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert got.alert.status == common_pb2.SOS_STATUS_RESPONDING
        assert not got.alert.police_notified  # a security agency, not the police
    finally:
        await cad.close()


async def test_alert_without_a_fix_is_routed_by_the_first_shared_location(api: Api, redis_client) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    phone: asyncio.Queue[sos_pb2.ShareLocationRequest | None] = asyncio.Queue()

    async def fixes():  # type: ignore[no-untyped-def]
        while (item := await phone.get()) is not None:
            yield item

    try:
        alert = await raise_sos(api, person, None)
        assert not alert.HasField("location")
        assert alert.assigned_agency_id == ""
        sharing = asyncio.ensure_future(api.sos.ShareLocation(fixes(), metadata=person.md))
        phone.put_nowait(sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(SF)))
        raised = (await cad.next_event("alert_raised")).alert_raised
        assert raised.alert.id == alert.id
        assert abs(raised.alert.location.point.latitude - SF[0]) < 1e-9

        # The person keeps moving: 20 fixes over about 2 seconds.
        path = [(SF[0] + i * 0.0005, SF[1]) for i in range(1, 21)]
        for point in path:
            phone.put_nowait(sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(point)))
            await asyncio.sleep(0.1)  # the phone's own pace, not a wait for the server
        phone.put_nowait(None)
        assert (await sharing).accepted_count == 1 + len(path)

        # Location events are paced (latest wins, about one a second), and the last
        # one carries the last fix.
        forwarded = []
        while not forwarded or abs(forwarded[-1].location.point.latitude - path[-1][0]) > 1e-9:
            msg = await cad.next(within=5)
            if msg.WhichOneof("kind") == "alert_location":
                forwarded.append(msg.alert_location)
        assert 1 <= len(forwarded) <= 5

        trail = await api.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=dept.md)
        assert [round(loc.point.latitude, 6) for loc in trail.locations] == [round(p[0], 6) for p in [SF, *path]]
        assert all(loc.accuracy_m == 8.0 for loc in trail.locations)
        live = await redis_client.get(f"user:location:{person.id}")
        assert live.startswith(f"{path[-1][0]},{path[-1][1]},")
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert got.alert.assigned_agency_id == dept.id
        assert abs(got.alert.location.point.latitude - path[-1][0]) < 1e-9
    finally:
        await cad.close()


async def test_the_person_watching_sees_an_alert_without_a_fix_get_its_agency(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, None)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
    try:
        first = await watch.read()
        assert first.event == "snapshot"
        assert first.alert.assigned_agency_id == ""
        assert not first.HasField("incident")

        async def one_fix():  # type: ignore[no-untyped-def]
            yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(SF))

        assert (await api.sos.ShareLocation(one_fix(), metadata=person.md)).accepted_count == 1
        seen = []
        while not seen or seen[-1].event != "incident_updated":
            seen.append(await asyncio.wait_for(watch.read(), 10))
        routed = seen[-1]
        assert {m.event for m in seen} <= {"location", "incident_updated"}
        assert routed.alert.assigned_agency_id == dept.id
        assert routed.incident.police_department_id == dept.id
        assert routed.incident.status == common_pb2.INCIDENT_STATUS_REPORTED
    finally:
        watch.cancel()


async def test_fixes_shared_after_a_cancel_do_not_extend_the_trail_or_reach_the_cad(api: Api, redis_client) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person, other = await api.sign_up(), await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    phone: asyncio.Queue[sos_pb2.ShareLocationRequest | None] = asyncio.Queue()

    async def fixes():  # type: ignore[no-untyped-def]
        while (item := await phone.get()) is not None:
            yield item

    try:
        alert = await raise_sos(api, person, SF)
        await cad.next_event("alert_raised")
        sharing = asyncio.ensure_future(api.sos.ShareLocation(fixes(), metadata=person.md))
        before = (SF[0] + 0.001, SF[1])
        phone.put_nowait(sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(before)))
        assert (await cad.next_event("alert_location")).alert_location.alert_id == alert.id
        await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=person.md)
        assert (await cad.next_event("alert_cancelled")).alert_cancelled.alert_id == alert.id

        # The phone has not noticed yet and keeps sending, at its own pace, for longer
        # than the forwarding interval.
        after = [(SF[0] + 0.002 + i * 0.0005, SF[1]) for i in range(6)]
        for point in after:
            phone.put_nowait(sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(point)))
            await asyncio.sleep(0.3)  # the phone's pace, not a wait for the server
        phone.put_nowait(None)
        assert (await sharing).accepted_count == 1 + len(after)  # stored once it answers

        barrier = await raise_sos(api, other, SF)
        seen = await cad.events_until(barrier.id)
        assert [m.WhichOneof("kind") for m in seen] == ["alert_raised"]  # no alert_location after the cancel
        trail = await api.sos.ListAlertLocations(
            sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=person.md
        )
        # Where it was raised, then the one fix shared before the cancel.
        assert [round(loc.point.latitude, 6) for loc in trail.locations] == [round(SF[0], 6), round(before[0], 6)]
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert abs(got.alert.location.point.latitude - before[0]) < 1e-9
        # The person's own live location still follows them.
        assert (await redis_client.get(f"user:location:{person.id}")).startswith(f"{after[-1][0]},")
    finally:
        await cad.close()


async def test_sharing_location_on_someone_elses_alert_is_not_found(api: Api) -> None:
    person, stranger = await api.sign_up(), await api.sign_up()
    alert = await raise_sos(api, person, None)

    async def fixes():  # type: ignore[no-untyped-def]
        yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(SF))

    await expect_error(
        api.sos.ShareLocation(fixes(), metadata=stranger.md), grpc.StatusCode.NOT_FOUND, "ALERT_NOT_FOUND"
    )

    async def bad_fix():  # type: ignore[no-untyped-def]
        yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location((123.0, 0.0)))

    err = await expect_error(api.sos.ShareLocation(bad_fix(), metadata=person.md), grpc.StatusCode.INVALID_ARGUMENT)
    assert "location.point.latitude" in err.fields


async def test_register_department_validates_the_jurisdiction(api: Api) -> None:
    admin = await api.admin()
    bow_tie = json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]})
    err = await expect_error(
        api.agency.RegisterDepartment(
            agency_pb2.RegisterDepartmentRequest(department_name="Twisted PD", jurisdiction_geojson=bow_tie),
            metadata=admin.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "Self-intersection" in err.fields["jurisdiction_geojson"]
    err = await expect_error(
        api.agency.RegisterDepartment(
            agency_pb2.RegisterDepartmentRequest(
                jurisdiction_geojson='{"type": "Point", "coordinates": [0, 0]}', webhook_url="ftp://example.com/hook"
            ),
            metadata=admin.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(err.fields) == {"department_name", "jurisdiction_geojson", "webhook_url"}
    person = await api.sign_up()
    await expect_error(
        api.agency.RegisterDepartment(agency_pb2.RegisterDepartmentRequest(), metadata=person.md),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


async def test_api_keys_are_shown_once_and_stored_hashed(api: Api, db_conn) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    stored = await db_conn.fetchrow(
        "SELECT secret_hash, display_prefix FROM agency_api_keys WHERE id = $1", dept.key_id
    )
    secret = dept.api_key.split(".", 1)[1]
    assert secret.encode() not in bytes(stored["secret_hash"])
    assert dept.api_key.startswith(stored["display_prefix"])
    keys = await api.agency.ListApiKeys(agency_pb2.ListApiKeysRequest(department_id=dept.id), metadata=admin.md)
    assert [k.key_id for k in keys.keys] == [dept.key_id]
    assert secret not in str(keys)
    # More keys page newest first, each once.
    issued = [dept.key_id]
    for label in ("cad-2", "cad-3"):
        more = await api.agency.IssueApiKey(
            agency_pb2.IssueApiKeyRequest(department_id=dept.id, label=label), metadata=admin.md
        )
        issued.append(more.key_id)
    listed, token = [], ""
    while True:
        page = await api.agency.ListApiKeys(
            agency_pb2.ListApiKeysRequest(department_id=dept.id, page_size=2, page_token=token), metadata=admin.md
        )
        assert len(page.keys) <= 2
        listed += [k.key_id for k in page.keys]
        token = page.next_page_token
        if not token:
            break
    assert listed == issued[::-1]
    credentials = await db_conn.fetchval("SELECT api_credentials::text FROM police_departments WHERE id = $1", dept.id)
    assert dept.webhook_secret not in credentials  # encrypted at rest


async def test_stream_dispatch_rejects_wrong_callers_and_a_missing_subscribe(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    for md, code in (((), grpc.StatusCode.UNAUTHENTICATED), (person.md, grpc.StatusCode.PERMISSION_DENIED)):
        call = api.agency.StreamDispatch(metadata=md)
        await call.write(agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe()))
        await expect_error(call.read(), code)
    call = api.agency.StreamDispatch(metadata=dept.md)
    await call.write(agency_pb2.StreamDispatchRequest(heartbeat=agency_pb2.Heartbeat()))
    err = await expect_error(call.read(), grpc.StatusCode.INVALID_ARGUMENT)
    assert "subscribe" in err.fields


async def test_a_second_replica_delivers_and_redelivers_unacked_events(api: Api, replica) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as other:
        cad = Cad(other, dept.api_key)  # connected to replica B
        try:
            alert = await raise_sos(api, person, SF)  # raised on replica A
            first = await cad.next_event("alert_raised")
            assert first.alert_raised.alert.id == alert.id
            # Not acked: replica B claims it again (XAUTOCLAIM) and resends the same event.
            again = await cad.next_event("alert_raised", within=10)
            assert again.event_id == first.event_id
            cad.ack(again.event_id)
        finally:
            await cad.close()


async def test_every_connection_of_a_department_gets_every_event_whichever_replica_it_is_on(  # type: ignore[no-untyped-def]
    api: Api, replica
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    people = [await api.sign_up() for _ in range(4)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as other:
        here, there = Cad(api.channel, dept.api_key), Cad(other, dept.api_key)  # replicas A and B
        try:
            # Both are subscribed once both have the first alert (live or from the catch-up).
            # Nobody acks it before both have it: a connection that subscribes after an
            # event was acked does not get it (by design), and either may subscribe late.
            first = await raise_sos(api, people[0], SF)
            firsts = [await cad.next_event("alert_raised") for cad in (here, there)]
            for cad, event in zip((here, there), firsts, strict=True):
                assert event.alert_raised.alert.id == first.id
                cad.ack(event.event_id)
            # Each later alert is acknowledged at once by the connection on A; the one on B
            # still gets every one of them, in order (an acked event is never redelivered,
            # so B can only have it from live delivery).
            alerts = [await raise_sos(api, person, SF) for person in people[1:]]
            seen_here, seen_there = [], []
            for cad, seen in ((here, seen_here), (there, seen_there)):
                ids: set[str] = set()
                while len(seen) < len(alerts):
                    event = await cad.next_event("alert_raised")
                    cad.ack(event.event_id)
                    if event.event_id not in ids:  # at least once: duplicates are dropped by id
                        ids.add(event.event_id)
                        seen.append(event.alert_raised.alert.id)
            assert seen_here == seen_there == [a.id for a in alerts]
        finally:
            await here.close()
            await there.close()


async def test_raising_sos_updates_live_redis_state(api: Api, redis_client) -> None:  # type: ignore[no-untyped-def]
    person = await api.sign_up()
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("sos:emergency")
    try:
        alert = await raise_sos(api, person, SF)

        async def marker() -> str | None:
            return await redis_client.get(f"sos:active:{alert.id}")  # type: ignore[no-any-return]

        active = await wait_for(marker, what="sos:active key")  # kept by the outbox relay
        assert active.startswith(f"{person.id},{SF[0]},{SF[1]},")

        async def emergency() -> dict | None:  # type: ignore[type-arg]
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            return json.loads(msg["data"]) if msg else None

        published = await wait_for(emergency, what="sos:emergency message")
        assert published["type"] == "alert_raised"
        assert published["alert"]["id"] == alert.id
        await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=person.md)

        async def cleared() -> bool:
            return await marker() is None

        await wait_for(cleared, what="sos:active key removed")
    finally:
        await pubsub.aclose()


async def test_an_alert_escalated_before_it_had_a_fix_goes_to_the_police_once_located(api: Api, db_conn) -> None:  # type: ignore[no-untyped-def]
    """Raised without a location and escalated before the phone had one, an alert goes to
    a security agency (nobody knows where it is); its first fix, inside a police
    jurisdiction, hands it to that police department, and the person sees it move."""
    admin = await api.admin()
    police = await register_department(api, admin, SF, name="SFPD")
    guards = await register_department(
        api, admin, LA, name="Statewide Guards", agency_type=agency_pb2.AGENCY_TYPE_SECURITY_AGENCY
    )
    person = await api.sign_up()
    police_cad, guards_cad = Cad(api.channel, police.api_key), Cad(api.channel, guards.api_key)
    try:
        alert = await raise_sos(api, person, None)
        watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
        assert (await watch.read()).event == "snapshot"
        await db_conn.execute("UPDATE sos_alerts SET escalate_at = now() WHERE id = $1", alert.id)
        escalated = (await guards_cad.next_event("alert_raised")).alert_raised.alert
        assert (escalated.id, escalated.assigned_agency_id) == (alert.id, guards.id)
        assert escalated.outside_jurisdiction

        async def first_fix():  # type: ignore[no-untyped-def]
            yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location(SF))

        assert (await api.sos.ShareLocation(first_fix(), metadata=person.md)).accepted_count == 1
        routed = (await police_cad.next_event("alert_raised")).alert_raised.alert
        assert (routed.id, routed.assigned_agency_id, routed.outside_jurisdiction) == (alert.id, police.id, False)
        # The security agency is told the alert left it (after, maybe, the fix itself).
        while (msg := await guards_cad.next()).WhichOneof("kind") != "alert_escalated":
            assert msg.WhichOneof("kind") == "alert_location"
        assert msg.alert_escalated.alert_id == alert.id
        events = []
        while not events or events[-1].event != "rerouted":
            events.append(await asyncio.wait_for(watch.read(), 10))
        assert events[-1].alert.assigned_agency_id == police.id
        watch.cancel()
    finally:
        await police_cad.close()
        await guards_cad.close()
