"""Faults of the background workers found in an audit: the escalation sweeper with an
alert it cannot escalate, and the emergency-contact notifier stopping mid-way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from securenow.server.workers.contact_notifier import ContactGatewayConfig, ContactNotifier
from securenow.v1 import users_pb2
from tests.conftest import make_settings
from tests.dispatch_helpers import SF, raise_sos, register_department
from tests.helpers import Api, wait_for
from tests.receivers import PostReceiver, post_receiver

SECRET = "contact-gateway-secret-0123456789"


async def test_an_alert_that_cannot_be_escalated_does_not_hold_up_the_others(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """One alert whose escalation fails (here: a stored location the server cannot read)
    used to roll back the sweeper's whole batch, every half second, so no due alert was
    escalated at all. The others go on; the bad one is retried later, not at once."""
    admin = await api.admin()
    local = await register_department(api, admin, SF, half_deg=0.05, name="Precinct 3")
    county = await register_department(api, admin, SF, half_deg=0.5, name="County Sheriff")
    alerts = [await raise_sos(api, await api.sign_up(), SF) for _ in range(3)]
    assert {a.assigned_agency_id for a in alerts} == {local.id}
    bad, *good = alerts
    await db_conn.execute(
        """UPDATE sos_alerts SET location_data = '{"lat": 37.7749}', emergency_contacts_notified = '[]'
           WHERE id = $1""",
        bad.id,
    )
    # All due at once, the bad one first in the sweeper's order.
    await db_conn.execute("UPDATE sos_alerts SET escalate_at = now() - interval '1 minute' WHERE id = $1", bad.id)
    await db_conn.execute("UPDATE sos_alerts SET escalate_at = now() WHERE id = ANY($1::uuid[])", [a.id for a in good])

    async def good_ones_escalated() -> bool:
        rows = await db_conn.fetch(
            "SELECT assigned_agency::text AS agency, escalation_level FROM sos_alerts WHERE id = ANY($1::uuid[])",
            [a.id for a in good],
        )
        return all((r["agency"], r["escalation_level"]) == (county.id, 1) for r in rows)

    await wait_for(good_ones_escalated, what="the other due alerts escalated")
    row = await db_conn.fetchrow(
        """SELECT assigned_agency::text AS agency, escalation_level, status::text AS status,
                  escalate_at > now() AS later
           FROM sos_alerts WHERE id = $1""",
        bad.id,
    )
    # Left as it was, and put back for a later attempt rather than retried in a tight loop.
    assert (row["agency"], row["escalation_level"], row["status"]) == (local.id, 0, "active")
    assert row["later"]
    escalations = await db_conn.fetch(
        "SELECT resource_id FROM audit_log WHERE action = 'sos.escalate' ORDER BY resource_id"
    )
    assert [r["resource_id"] for r in escalations] == sorted(a.id for a in good)


def gateway_config(url: str, **overrides: object) -> ContactGatewayConfig:
    values: dict[str, object] = {
        "contact_notify_url": url,
        "contact_notify_secret": SECRET,
        "contact_notify_max_attempts": 3,
        "contact_notify_base_delay_seconds": 0.05,
        "contact_notify_timeout_seconds": 2.0,
    }
    return ContactGatewayConfig.from_settings(make_settings(**{**values, **overrides}))


@pytest.fixture
async def gateway(api: Api, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PostReceiver]:
    """The operator's gateway; the session server's own notifier stands aside (it leases
    nothing), so the test's notifiers play the replicas."""
    monkeypatch.setattr(api.app.contact_notifier, "_batch", 0)
    async with post_receiver("/notify") as server:
        yield server


async def person_with_a_contact(api: Api) -> str:
    person = await api.sign_up(first_name="Ada", last_name="Quinn")
    sis = users_pb2.EmergencyContact(name="Sis", phone="+15550102000", relationship="sister")
    await api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id="me", emergency_contacts=[sis]), update_mask={"paths": ["emergency_contacts"]}
        ),
        metadata=person.md,
    )
    return (await raise_sos(api, person, SF)).id


async def outcome(db_conn: asyncpg.Connection, alert_id: str) -> list[tuple[str, str]] | None:
    value = await db_conn.fetchval("SELECT emergency_contacts_notified FROM sos_alerts WHERE id = $1", alert_id)
    return None if value is None else [(c["name"], c["status"]) for c in json.loads(value)]


async def test_a_notifier_stopping_mid_way_hands_its_alerts_over_at_once(
    api: Api, db_conn: asyncpg.Connection, gateway: PostReceiver
) -> None:
    """A replica stopped (a rolling restart) while a contact's retry is pending records
    nothing and used to keep the alert leased for every attempt of every contact
    (minutes): the contacts waited that long. It gives the lease back, so another
    replica sends right away."""
    gateway.statuses = [500]  # the first attempt is refused; the retry is a minute away
    first = ContactNotifier(api.app.db, gateway_config(gateway.url, contact_notify_base_delay_seconds=60.0))
    stop_first = asyncio.Event()
    running = asyncio.create_task(first.run(stop_first))
    try:
        alert_id = await person_with_a_contact(api)
        await asyncio.wait_for(gateway.received.get(), 10)
    finally:
        stop_first.set()
        await asyncio.wait_for(running, 10)
    assert await outcome(db_conn, alert_id) is None  # nothing recorded by the stopped one

    second = ContactNotifier(api.app.db, gateway_config(gateway.url), poll_interval=0.05)
    stop_second = asyncio.Event()
    running = asyncio.create_task(second.run(stop_second))
    try:
        shown = await wait_for(lambda: outcome(db_conn, alert_id), what="contacts handled by another replica")
    finally:
        stop_second.set()
        await asyncio.wait_for(running, 10)
    assert shown == [("Sis", "sent")]
