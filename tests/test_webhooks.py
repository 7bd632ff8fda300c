"""Department webhooks: signed, retried with backoff, dead-lettered."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from securenow.v1 import agency_pb2
from tests.dispatch_helpers import SF, Cad, raise_sos, register_department
from tests.helpers import Api, wait_for
from tests.processes import free_port
from tests.receivers import PostReceiver, post_receiver, verify_signature


@pytest.fixture
async def hook() -> AsyncIterator[PostReceiver]:
    async with post_receiver("/hook") as receiver:
        yield receiver


async def test_status_changes_are_posted_signed_to_the_webhook(api: Api, hook: PostReceiver) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF, webhook_url=hook.url)
    assert dept.webhook_secret.startswith("whsec_")
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    headers, body = await asyncio.wait_for(hook.received.get(), 10)
    assert verify_signature(dept.webhook_secret, headers, body)
    assert not verify_signature("whsec_wrong", headers, body)
    event = json.loads(body)
    assert headers["X-SecureNow-Event-Type"] == event["event_type"] == "alert_raised"
    assert headers["X-SecureNow-Event-Id"] == event["event_id"]
    assert event["department_id"] == dept.id
    assert event["data"]["alert"]["id"] == alert.id

    await api.agency.AcceptSosAlert(
        agency_pb2.AcceptSosAlertRequest(alert_id=alert.id, assigned_unit="U7"), metadata=dept.md
    )
    headers, body = await asyncio.wait_for(hook.received.get(), 10)
    event = json.loads(body)
    assert event["event_type"] == "incident_updated"
    assert event["data"]["incident"]["status"] == "dispatched"
    assert verify_signature(dept.webhook_secret, headers, body)


async def test_failing_webhook_is_retried_with_backoff_then_dead_lettered(
    api: Api, hook: PostReceiver, db_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, base_delay = api.app.webhooks, 0.5
    # The sender looks for due deliveries every 0.5 s, which would blur retry gaps of a
    # fraction of a second: look every 20 ms, and back off from 0.5 s, so the gaps are
    # far apart compared with that and with the test's own scheduling.
    monkeypatch.setattr(sender, "_poll", 0.02)
    monkeypatch.setattr(sender, "_base_delay", base_delay)
    hook.status = 500
    admin = await api.admin()
    dept = await register_department(api, admin, SF, webhook_url=hook.url)
    person = await api.sign_up()
    await raise_sos(api, person, SF)
    max_attempts = api.app.settings.webhook_max_attempts

    async def dead() -> dict | None:  # type: ignore[type-arg]
        row = await db_conn.fetchrow(
            "SELECT status, attempts, last_error FROM webhook_deliveries WHERE department_id = $1", dept.id
        )
        return dict(row) if row and row["status"] == "dead" else None

    row = await wait_for(dead, within=20, what="dead-lettered webhook")
    assert row["attempts"] == max_attempts
    assert row["last_error"] == "HTTP 500"
    assert hook.received.qsize() == max_attempts  # every attempt reached the endpoint, then no more
    # Exponential backoff: the n-th retry waits base * 2**(n-1), give or take 20 % jitter.
    gaps = [later - earlier for earlier, later in itertools.pairwise(hook.arrivals)]
    nominal = [base_delay * 2**n for n in range(max_attempts - 1)]
    assert all(gap >= 0.8 * delay - 0.01 for gap, delay in zip(gaps, nominal, strict=True)), (gaps, nominal)
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps


async def test_webhooks_keep_flowing_while_the_relay_cannot_reach_redis(api: Api, hook: PostReceiver, db_conn) -> None:  # type: ignore[no-untyped-def]
    admin = await api.admin()
    dept = await register_department(api, admin, SF, webhook_url=hook.url)
    person = await api.sign_up()
    relay = api.app.relay
    # Fault injection: the relay's Redis is a port nobody listens on (the rest of the
    # server keeps its Redis, so RaiseSos is not disturbed).
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    real, relay._redis = relay._redis, dead
    try:
        alert = await raise_sos(api, person, SF)
        headers, body = await asyncio.wait_for(hook.received.get(), 10)
        event = json.loads(body)
        assert verify_signature(dept.webhook_secret, headers, body)
        assert event["event_type"] == "alert_raised"
        assert event["data"]["alert"]["id"] == alert.id
        published = await db_conn.fetchval(
            "SELECT published_at FROM outbox WHERE event_type = 'alert_raised' AND aggregate_id = $1", alert.id
        )
        assert published is None  # the webhook did not wait for Redis
    finally:
        relay._redis = real
        await dead.aclose()
    # Redis is back for the relay: the CAD stream gets the same event, with the same id.
    cad = Cad(api.channel, dept.api_key)
    try:
        msg = await cad.next_event("alert_raised")
        assert msg.event_id == event["event_id"]
        assert msg.alert_raised.alert.id == alert.id
    finally:
        await cad.close()
