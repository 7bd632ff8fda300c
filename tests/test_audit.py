"""The audit log: every mutation recorded (also refused ones), append-only, and sealed
into a hash chain whose tampering is detected."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from securenow.server.storage.audit_repo import ChainAnchor
from securenow.v1 import agency_pb2, auth_pb2, sos_pb2, users_pb2
from tests.conftest import server_env
from tests.dispatch_helpers import SF, Cad, dispatcher_of, location, raise_sos, register_department
from tests.helpers import Api, expect_error, wait_for


async def test_mutations_and_refusals_are_audited_and_the_chain_verifies(api: Api, db_conn: asyncpg.Connection) -> None:
    account = await api.sign_up()
    await api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id="me", first_name="Zed"), update_mask={"paths": ["first_name"]}
        ),
        metadata=account.md,
    )
    await expect_error(
        api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=account.id), metadata=account.md),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password="Wrong-pass-123")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    rows = await db_conn.fetch("SELECT actor_id, action, resource_id, outcome FROM audit_log ORDER BY id")
    entries = [(r["action"], r["outcome"]) for r in rows]
    assert ("auth.sign_up", "OK") in entries
    assert ("user.update", "OK") in entries
    assert ("rpc:/securenow.v1.UserService/SuspendUser", "PERMISSION_DENIED") in entries
    assert ("rpc:/securenow.v1.AuthService/SignIn", "UNAUTHENTICATED") in entries
    update = next(r for r in rows if r["action"] == "user.update")
    assert update["actor_id"] == account.id
    assert update["resource_id"] == account.id

    sealed, broken = await api.app.audit.seal_and_verify()
    assert broken is None
    assert await db_conn.fetchval("SELECT count(*) FROM audit_log WHERE chain_seq IS NULL") == 0
    assert sealed >= 0


async def test_audit_rows_cannot_be_changed_or_deleted(api: Api, db_conn: asyncpg.Connection) -> None:
    await api.sign_up()
    await api.app.audit.seal_and_verify()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_conn.execute("UPDATE audit_log SET outcome = 'OK' WHERE id = (SELECT min(id) FROM audit_log)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_conn.execute("DELETE FROM audit_log")
    # Nor emptied: TRUNCATE skips row triggers, so it has a trigger of its own.
    async with api.app.db.unit_of_work() as uow:  # a server connection, as any attacker's SQL would use
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await uow.conn.execute("TRUNCATE audit_log")
    assert await db_conn.fetchval("SELECT count(*) FROM audit_log") > 0


async def test_tampering_with_a_sealed_entry_is_detected(api: Api, db_conn: asyncpg.Connection) -> None:
    for _ in range(3):
        await api.sign_up()
    _, broken = await api.app.audit.seal_and_verify()
    assert broken is None
    target = await db_conn.fetchval("SELECT chain_seq FROM audit_log ORDER BY chain_seq OFFSET 1 LIMIT 1")
    # Someone with table-owner rights bypasses the guard and rewrites history.
    async with db_conn.transaction():
        await db_conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await db_conn.execute("UPDATE audit_log SET actor_id = 'someone-else' WHERE chain_seq = $1", target)
        await db_conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    _, broken = await api.app.audit.seal_and_verify()
    assert broken == target


RESEAL_FROM = """
DO $$
DECLARE r audit_log; h BYTEA;
BEGIN
    SELECT entry_hash INTO h FROM audit_log WHERE chain_seq = {target} - 1;
    FOR r IN SELECT * FROM audit_log WHERE chain_seq >= {target} ORDER BY chain_seq LOOP
        UPDATE audit_log SET prev_hash = h, entry_hash = securenow_audit_entry_digest(h, r)
         WHERE id = r.id RETURNING entry_hash INTO h;
    END LOOP;
END $$"""


async def test_a_rewritten_and_resealed_chain_is_caught_by_an_anchor_kept_outside(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """Someone who can rewrite the table can also recompute every hash after the entry
    they changed: the chain then verifies on its own. A head recorded outside the
    database earlier (logged by the worker, printed by `securenow maintain`) does not
    match any more."""
    for _ in range(3):
        await api.sign_up()
    await api.app.audit.seal_and_verify()
    anchor = await api.app.audit.head()
    assert anchor is not None
    assert (await api.app.audit.seal_and_verify(anchor))[1] is None
    assert ChainAnchor.parse(str(anchor)) == anchor
    target = await db_conn.fetchval("SELECT chain_seq FROM audit_log ORDER BY chain_seq OFFSET 1 LIMIT 1")
    async with db_conn.transaction():
        await db_conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await db_conn.execute("UPDATE audit_log SET actor_id = 'someone-else' WHERE chain_seq = $1", target)
        await db_conn.execute(RESEAL_FROM.format(target=int(target)))
        await db_conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")

    assert (await api.app.audit.seal_and_verify())[1] is None  # consistent in itself
    assert (await api.app.audit.seal_and_verify(anchor))[1] == anchor.chain_seq


async def maintain(*args: str) -> tuple[int, str]:
    """`securenow maintain` as an operator runs it: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "securenow"),
        "maintain",
        *args,
        env=server_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_maintain_prints_the_chain_head_and_checks_one_given(api: Api) -> None:
    await api.sign_up()
    code, out = await maintain()
    assert code == 0, out
    found = re.search(r"audit chain head: (\d+):([0-9a-f]{64})", out)
    assert found, out
    seq, digest = found.groups()
    code, out = await maintain("--expect-head", f"{seq}:{digest}")
    assert code == 0, out
    code, out = await maintain("--expect-head", f"{seq}:{'0' * 64}")
    assert code == 1
    assert f"audit chain broken at entry {seq}" in out
    code, out = await maintain("--expect-head", "yesterday")
    assert code != 0
    assert "--expect-head: 'yesterday' is not <chain_seq>:<hex hash>" in out


async def test_sharing_refreshing_and_agency_reads_of_an_emergency_are_audited(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)

    async def fixes() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        for i in range(3):
            yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location((SF[0] + i * 1e-4, SF[1])))

    shared = await api.sos.ShareLocation(fixes(), metadata=person.md)
    assert shared.accepted_count == 3
    await api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=person.refresh_token))
    # The department looks through its alerts, reads the trail and watches the alert.
    await api.sos.ListSosAlerts(sos_pb2.ListSosAlertsRequest(), metadata=dept.md)
    incidents = await api.agency.ListIncidents(agency_pb2.ListIncidentsRequest(), metadata=dept.md)
    await api.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=dept.md)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=dept.md)
    assert (await watch.read()).event == "snapshot"
    watch.cancel()
    # The person reading their own alert is not someone else's emergency: not audited.
    await api.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=person.md)

    rows = await db_conn.fetch("SELECT actor_type, actor_id, action, resource_id, details FROM audit_log")
    by_action: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_action.setdefault(r["action"], []).append(r)
    (sharing,) = by_action["sos.share_location"]
    assert sharing["actor_id"] == person.id
    assert json.loads(sharing["details"]) == {"alert_ids": [alert.id], "accepted": 3}
    (refresh,) = by_action["auth.refresh"]
    assert refresh["actor_id"] == person.id
    (listing,) = by_action["sos.list"]
    assert listing["actor_id"] == dept.key_id
    assert json.loads(listing["details"])["alert_ids"] == [alert.id]
    (incident_listing,) = by_action["incident.list"]
    assert incident_listing["actor_id"] == dept.key_id
    assert json.loads(incident_listing["details"])["incident_ids"] == [i.id for i in incidents.incidents]
    assert len(incidents.incidents) == 1
    for action in ("sos.trail_read", "sos.watch"):
        (row,) = by_action[action]
        assert (row["actor_type"], row["actor_id"], row["resource_id"]) == ("api_key", dept.key_id, alert.id)


async def test_fixes_stored_before_a_bad_one_are_audited_and_so_is_the_routing_they_caused(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """A stream that ends in an error still stored the fixes before it: the audit log
    says so. Here the alert was raised without a fix, so the first fix also routed it to
    the department, which is audited too."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, None)
    assert not alert.assigned_agency_id

    async def fixes() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        for i in range(2):
            yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location((SF[0] + i * 1e-4, SF[1])))
        bad = location(SF)
        bad.speed_mps = -1
        yield sos_pb2.ShareLocationRequest(alert_id=alert.id, location=bad)

    await expect_error(api.sos.ShareLocation(fixes(), metadata=person.md), grpc.StatusCode.INVALID_ARGUMENT)
    trail = await api.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=person.md)
    assert len(trail.locations) == 2

    async def routed() -> bool:
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        return got.alert.assigned_agency_id == dept.id

    await wait_for(routed, what="the first fix routes the alert")
    sharing = await db_conn.fetch("SELECT actor_id, details FROM audit_log WHERE action = 'sos.share_location'")
    assert [(r["actor_id"], json.loads(r["details"])) for r in sharing] == [
        (person.id, {"alert_ids": [alert.id], "accepted": 2})
    ]
    route = await db_conn.fetch("SELECT resource_id, details FROM audit_log WHERE action = 'sos.route'")
    assert [(r["resource_id"], json.loads(r["details"])) for r in route] == [(alert.id, {"from": None, "to": dept.id})]


async def test_acknowledgements_are_audited_with_who_acknowledged_what(api: Api, db_conn: asyncpg.Connection) -> None:
    """A CAD's stream acks (batched: one entry per department and key every few
    seconds) and a dispatcher's AckDispatchEvent both say who settled which events."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    cad = Cad(api.channel, dept.api_key)
    try:
        alerts = [await raise_sos(api, person, SF) for _ in range(3)]
        received = [await cad.next_event("alert_raised") for _ in alerts]
        for msg in received[:2]:
            cad.ack(msg.event_id)
        # Commands are processed in order: once this result is back, the acks are in.
        await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alerts[0].id))
    finally:
        await cad.close()
    await api.agency.AckDispatchEvent(
        agency_pb2.AckDispatchEventRequest(event_id=received[2].event_id), metadata=dispatcher.md
    )

    async def acks() -> list[tuple[str, str, str, list[str] | str]] | None:
        rows = await db_conn.fetch(
            "SELECT actor_type, actor_id, resource_id, details FROM audit_log WHERE action = 'dispatch.ack' ORDER BY id"
        )
        found = []
        for r in rows:
            details = json.loads(r["details"])
            found.append(
                (r["actor_type"], r["actor_id"], r["resource_id"], details.get("event_ids", details.get("through")))
            )
        by_key = [e for f in found if f[1] == dept.key_id for e in f[3]]
        return found if sorted(by_key) == sorted(m.event_id for m in received[:2]) else None

    found = await wait_for(acks, within=20, what="the stream's acks in the audit log")
    assert ("user", dispatcher.id, dept.id, received[2].event_id) in found
    assert {f[2] for f in found} == {dept.id}


async def test_a_stream_command_refused_on_another_departments_alert_is_audited(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """Probing another department's alerts over StreamDispatch leaves the same trace as
    doing it with AcceptSosAlert; a command with merely bad input does not."""
    admin = await api.admin()
    await register_department(api, admin, SF, name="Metro PD")
    other = await register_department(api, admin, (SF[0] + 5, SF[1]), name="Far PD")
    alert = await raise_sos(api, await api.sign_up(), SF)
    cad = Cad(api.channel, other.api_key)
    try:
        accepted = await cad.command(accept=agency_pb2.AcceptAlert(alert_id=alert.id, assigned_unit="U1"))
        declined = await cad.command(decline=agency_pb2.DeclineAlert(alert_id=alert.id))
        malformed = await cad.command(accept=agency_pb2.AcceptAlert(alert_id="not-an-id"))
    finally:
        await cad.close()
    assert [r.code for r in (accepted, declined, malformed)] == [
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    ]
    rows = await db_conn.fetch(
        "SELECT action, outcome, details FROM audit_log WHERE actor_id = $1 AND action LIKE 'rpc:%' ORDER BY id",
        other.key_id,
    )
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("rpc:/securenow.v1.AgencyService/StreamDispatch:accept", "NOT_FOUND"),
        ("rpc:/securenow.v1.AgencyService/StreamDispatch:decline", "NOT_FOUND"),
    ]
