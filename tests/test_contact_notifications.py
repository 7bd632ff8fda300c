"""Emergency contacts are told about an SOS: one signed POST per contact to the
operator's gateway, retried, and the outcome shown on the alert."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from securenow.server.workers.contact_notifier import ContactGatewayConfig
from securenow.v1 import sos_pb2, users_pb2
from tests.conftest import make_settings
from tests.dispatch_helpers import SF, raise_sos
from tests.helpers import Account, Api, wait_for
from tests.receivers import PostReceiver, post_receiver, verify_signature

SECRET = "contact-gateway-secret-0123456789"
SENT = sos_pb2.CONTACT_NOTIFICATION_STATUS_SENT


@pytest.fixture
async def gateway(api: Api, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PostReceiver]:
    """The operator's SMS/voice gateway."""
    async with post_receiver("/notify") as server:
        settings = make_settings(
            contact_notify_url=server.url,
            contact_notify_secret=SECRET,
            contact_notify_max_attempts=3,
            contact_notify_base_delay_seconds=0.05,
            contact_notify_timeout_seconds=2.0,
        )
        # The session server's notifier sends to this gateway for the test (restored after).
        monkeypatch.setattr(api.app.contact_notifier, "config", ContactGatewayConfig.from_settings(settings))
        yield server


async def person_with_contacts(api: Api, *contacts: users_pb2.EmergencyContact) -> Account:
    person = await api.sign_up(first_name="Ada", last_name="Quinn")
    await api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id="me", emergency_contacts=list(contacts)),
            update_mask={"paths": ["emergency_contacts"]},
        ),
        metadata=person.md,
    )
    return person


SIS = users_pb2.EmergencyContact(name="Sis", phone="+15550102000", relationship="sister")
DAD = users_pb2.EmergencyContact(name="Dad", phone="+15550102001", relationship="father")


async def notified(api: Api, person: Account, alert_id: str) -> sos_pb2.SosAlert | None:
    """The alert once its contacts were handled (None before)."""
    alert = (await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert_id), metadata=person.md)).alert
    return alert if len(alert.emergency_contacts_notified) else None


async def handled(db_conn: asyncpg.Connection, alert_id: str) -> dict[str, Any] | None:
    row = await db_conn.fetchrow(
        "SELECT emergency_contacts_notified AS outcome FROM sos_alerts WHERE id = $1", alert_id
    )
    return {"outcome": json.loads(row["outcome"])} if row and row["outcome"] is not None else None


async def test_each_contact_gets_a_signed_post_and_the_alert_shows_them_sent(
    api: Api, gateway: PostReceiver, db_conn: asyncpg.Connection
) -> None:
    person = await person_with_contacts(api, SIS, DAD)
    alert = await raise_sos(api, person, SF)
    posts = [await asyncio.wait_for(gateway.received.get(), 10) for _ in range(2)]
    messages = []
    for headers, body in posts:
        assert verify_signature(SECRET, headers, body)
        assert not verify_signature("wrong-secret", headers, body)
        assert headers["X-SecureNow-Event-Type"] == "sos.contact_notify"
        message = json.loads(body)
        assert headers["X-SecureNow-Event-Id"] == message["event_id"]
        messages.append(message)
    by_name = {m["contact"]["name"]: m for m in messages}
    assert set(by_name) == {"Sis", "Dad"}
    assert by_name["Sis"]["contact"] == {"name": "Sis", "phone": "+15550102000", "relationship": "sister"}
    assert by_name["Dad"]["contact"]["phone"] == "+15550102001"
    for m in messages:
        assert m["alert_id"] == alert.id
        assert m["person"] == {"first_name": "Ada", "last_name": "Quinn"}
        assert m["location"] == {"lat": pytest.approx(SF[0]), "lng": pytest.approx(SF[1])}
        assert m["create_time"]
        assert "Ada Quinn" in m["message"]

    shown = await wait_for(lambda: notified(api, person, alert.id), what="contacts recorded on the alert")
    assert sorted((c.name, c.phone, c.status, c.attempts) for c in shown.emergency_contacts_notified) == [
        ("Dad", "+15550102001", SENT, 1),
        ("Sis", "+15550102000", SENT, 1),
    ]
    assert all(c.HasField("update_time") for c in shown.emergency_contacts_notified)
    audit = await db_conn.fetch(
        "SELECT actor_type, details FROM audit_log WHERE action = 'sos.contacts_notify' AND resource_id = $1", alert.id
    )
    assert [(r["actor_type"], json.loads(r["details"])) for r in audit] == [("system", {"contacts": 2, "sent": 2})]
    assert gateway.received.empty()  # one POST per contact, no more


async def test_a_failing_gateway_is_retried_until_it_accepts(api: Api, gateway: PostReceiver) -> None:
    gateway.statuses = [500]
    person = await person_with_contacts(api, SIS)
    alert = await raise_sos(api, person, None)
    first = await asyncio.wait_for(gateway.received.get(), 10)
    second = await asyncio.wait_for(gateway.received.get(), 10)
    assert first[1] == second[1]  # the same message, signed again
    assert json.loads(second[1])["location"] is None  # no fix yet
    shown = await wait_for(lambda: notified(api, person, alert.id), what="contacts recorded")
    [contact] = shown.emergency_contacts_notified
    assert (contact.name, contact.status, contact.attempts) == ("Sis", SENT, 2)


async def test_a_gateway_that_never_accepts_is_recorded_failed(
    api: Api, gateway: PostReceiver, db_conn: asyncpg.Connection
) -> None:
    gateway.statuses = [503] * 10
    person = await person_with_contacts(api, DAD)
    alert = await raise_sos(api, person, SF)
    shown = await wait_for(lambda: notified(api, person, alert.id), what="contacts recorded")
    [contact] = shown.emergency_contacts_notified
    assert (contact.status, contact.attempts) == (sos_pb2.CONTACT_NOTIFICATION_STATUS_FAILED, 3)
    assert gateway.received.qsize() == 3
    [stored] = (await handled(db_conn, alert.id) or {})["outcome"]
    assert stored["error"] == "HTTP 503"


async def test_without_a_gateway_contacts_are_recorded_not_configured(api: Api, db_conn: asyncpg.Connection) -> None:
    assert not api.app.contact_notifier.config.url  # the suite's server has none
    people = [await person_with_contacts(api, SIS, DAD) for _ in range(3)]
    # Raised together, so the notifier records several in one batch.
    alerts = await asyncio.gather(*(raise_sos(api, person, SF) for person in people))
    for person, alert in zip(people, alerts, strict=True):
        shown = await wait_for(functools.partial(notified, api, person, alert.id), what="contacts recorded")
        assert [(c.name, c.status, c.attempts) for c in shown.emergency_contacts_notified] == [
            ("Sis", sos_pb2.CONTACT_NOTIFICATION_STATUS_NOT_CONFIGURED, 0),
            ("Dad", sos_pb2.CONTACT_NOTIFICATION_STATUS_NOT_CONFIGURED, 0),
        ]
    audited = await db_conn.fetch(
        "SELECT resource_id, details FROM audit_log WHERE action = 'sos.contacts_notify' ORDER BY resource_id"
    )
    assert [(r["resource_id"], json.loads(r["details"])) for r in audited] == sorted(
        (a.id, {"contacts": 2, "not_configured": 2}) for a in alerts
    )


async def test_watchers_see_the_outcome_for_the_contacts_as_a_change(api: Api, db_conn: asyncpg.Connection) -> None:
    """WatchSos sends a snapshot, then every change: the contacts' outcome is one."""
    assert not api.app.contact_notifier.config.url  # the suite's server has none
    person = await person_with_contacts(api, SIS, DAD)
    alert = await raise_sos(api, person, SF)
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
    try:
        # The notifier skips a locked alert (SKIP LOCKED): held until the snapshot is
        # read, so the snapshot shows the contacts not handled yet.
        async with db_conn.transaction():
            await db_conn.execute("SELECT 1 FROM sos_alerts WHERE id = $1 FOR UPDATE", alert.id)
            snapshot = await asyncio.wait_for(watch.read(), 10)
            assert snapshot.event == "snapshot"
            assert len(snapshot.alert.emergency_contacts_notified) == 0
        change = await asyncio.wait_for(watch.read(), 10)
    finally:
        watch.cancel()
    assert change.event == "contacts_notified"
    assert [(c.name, c.status) for c in change.alert.emergency_contacts_notified] == [
        ("Sis", sos_pb2.CONTACT_NOTIFICATION_STATUS_NOT_CONFIGURED),
        ("Dad", sos_pb2.CONTACT_NOTIFICATION_STATUS_NOT_CONFIGURED),
    ]
    assert change.alert.update_time.ToDatetime() > snapshot.alert.update_time.ToDatetime()
    shown = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
    assert shown.alert.update_time == change.alert.update_time


async def test_a_person_without_contacts_gets_an_empty_list_and_no_post(
    api: Api, gateway: PostReceiver, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    before = await db_conn.fetchval("SELECT updated_at FROM sos_alerts WHERE id = $1", alert.id)
    row = await wait_for(lambda: handled(db_conn, alert.id), what="contacts handled")
    assert row["outcome"] == []
    # Nothing a watcher sees changed (an empty list before and after): no watch event.
    assert await db_conn.fetchval("SELECT updated_at FROM sos_alerts WHERE id = $1", alert.id) == before
    assert not await db_conn.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'contacts_notified' AND aggregate_id = $1", alert.id
    )
    assert (
        await db_conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'sos.contacts_notify' AND resource_id = $1", alert.id
        )
        == 1
    )
    assert gateway.received.empty()


async def test_an_alert_found_after_the_window_is_recorded_expired_not_sent(
    api: Api, gateway: PostReceiver, db_conn: asyncpg.Connection
) -> None:
    person = await person_with_contacts(api, SIS)
    # An alert raised two hours ago that nobody handled (an outage): written directly.
    alert_id = await db_conn.fetchval(
        """INSERT INTO sos_alerts (user_id, location_data, created_at, updated_at)
           VALUES ($1, '{}', now() - interval '2 hours', now() - interval '2 hours') RETURNING id::text""",
        person.id,
    )
    row = await wait_for(lambda: handled(db_conn, alert_id), what="expired alert handled")
    assert [(c["name"], c["status"], c["attempts"]) for c in row["outcome"]] == [("Sis", "expired", 0)]
    assert gateway.received.empty()


def test_production_needs_the_gateway_secret_and_https() -> None:
    production = {"env": "production"}
    for missing in ({}, {"contact_notify_secret": ""}, {"contact_notify_secret": "short"}):
        with pytest.raises(ValueError, match="SECURENOW_CONTACT_NOTIFY_SECRET"):
            make_settings(**production, contact_notify_url="https://sms.example/notify", **missing)
    with pytest.raises(ValueError, match="https"):
        make_settings(**production, contact_notify_url="http://sms.example/notify", contact_notify_secret=SECRET)
    ok = make_settings(**production, contact_notify_url="https://sms.example/notify", contact_notify_secret=SECRET)
    assert ContactGatewayConfig.from_settings(ok).secret == SECRET
    assert make_settings().contact_notify_url == ""  # optional


async def test_one_unreadable_alert_does_not_stop_everyone_elses_contacts(
    api: Api, gateway: PostReceiver, db_conn: asyncpg.Connection
) -> None:
    """Leases are taken for a batch of alerts together: a row that cannot be read (its
    contacts corrupted outside the API) must not undo the batch, or nobody's contacts
    would ever be told."""
    broken = await person_with_contacts(api, DAD)
    await db_conn.execute(
        """UPDATE users SET emergency_contacts = '[{"nickname": "not a contact"}]'::jsonb WHERE id = $1""",
        uuid.UUID(broken.id),
    )
    fine = await person_with_contacts(api, SIS)
    await raise_sos(api, broken, SF)
    alert = await raise_sos(api, fine, SF)
    _, body = await asyncio.wait_for(gateway.received.get(), 10)
    assert json.loads(body)["contact"]["phone"] == SIS.phone
    told = await wait_for(functools.partial(notified, api, fine, alert.id), what="the contact to be recorded")
    assert [c.status for c in told.emergency_contacts_notified] == [SENT]
