"""Tells a person's emergency contacts that they raised an SOS.

For every newly raised alert (sos_alerts.emergency_contacts_notified still NULL) one
replica leases the alert, snapshots the person's emergency contacts and POSTs one JSON
message per contact to the operator's SMS/voice gateway (SECURENOW_CONTACT_NOTIFY_URL),
signed as department webhooks are (workers/webhooks.py):
    X-SecureNow-Event-Id: <stable per alert and phone number: a gateway can de-duplicate>,
    X-SecureNow-Event-Type: sos.contact_notify,
    X-SecureNow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
A non-2xx answer or a timeout is retried with exponential backoff and jitter, up to
`max_attempts`. The outcome per contact (sent, failed, not_configured, expired) is
stored on the alert, with an audit entry, and watchers of the alert are told
(WatchSos event "contacts_notified"). Alerts found more than an hour after they
were raised (an outage) are recorded as expired, not texted hours late. A replica that
dies mid-way leaves its lease to run out; one that is stopped gives it back at once;
either way another replica then sends again (at least once: the event id lets the
gateway drop the repeat).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client import Counter

from securenow.server.domain.accounts import SYSTEM, EmergencyContact
from securenow.server.domain.errors import Unavailable
from securenow.server.domain.sos import ContactNotification, ContactNotificationStatus
from securenow.server.services import sos_events
from securenow.server.settings import Settings
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.contact_notifications_repo import ContactNotificationsRepo, PendingAlert
from securenow.server.storage.postgres import Database
from securenow.server.workers.webhooks import sign

log = logging.getLogger(__name__)

NOTIFICATIONS = Counter("securenow_contact_notifications_total", "Emergency contacts handled, by outcome.", ["status"])
EVENT_TYPE = "sos.contact_notify"
# The WatchSos event of an alert whose contacts' outcome was stored.
WATCH_EVENT = "contacts_notified"
# Contacts are told about alerts at most this long after they were raised.
NOTIFY_WINDOW_SECONDS = 3600.0


@dataclass(frozen=True)
class ContactGatewayConfig:
    """Where and how to send; url "" means no gateway is configured."""

    url: str
    secret: str
    max_attempts: int
    base_delay: float
    timeout: float
    max_delay: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ContactGatewayConfig:
        return cls(
            url=settings.contact_notify_url,
            secret=settings.contact_notify_signing_secret if settings.contact_notify_url else "",
            max_attempts=settings.contact_notify_max_attempts,
            base_delay=settings.contact_notify_base_delay_seconds,
            timeout=settings.contact_notify_timeout_seconds,
        )

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones."""
        return min(self.base_delay * 2.0 ** (attempts - 1), self.max_delay) * random.uniform(0.8, 1.2)

    @property
    def lease_seconds(self) -> float:
        """Long enough for every attempt of every contact (they are sent concurrently)."""
        waits = sum(min(self.base_delay * 2.0 ** (n - 1), self.max_delay) * 1.2 for n in range(1, self.max_attempts))
        return float(self.max_attempts * self.timeout + waits + 30.0)


class _Stopping(Exception):
    """The replica is stopping mid-way: record nothing, give the lease back."""


class ContactNotifier:
    def __init__(self, db: Database, config: ContactGatewayConfig, *, batch: int = 20, poll_interval: float = 0.5):
        self._db = db
        # Read once per alert: replacing it changes where later alerts go.
        self.config = config
        self._batch = batch
        self._poll = poll_interval

    async def run(self, stop: asyncio.Event) -> None:
        inflight: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession() as session:
            try:
                while not stop.is_set():
                    room = self._batch - len(inflight)
                    leased = 0
                    if room > 0:
                        try:
                            leased = await self._start_due(session, stop, room, inflight)
                        except Unavailable as exc:
                            log.warning("contact notifier: %s", exc)
                        except Exception:
                            log.exception("contact notifier: unexpected failure")
                    if room <= 0 or leased < room:
                        try:
                            await asyncio.wait_for(stop.wait(), self._poll)
                        except TimeoutError:
                            pass
            finally:
                if inflight:
                    await asyncio.wait(inflight, timeout=self.config.timeout + 1)
                    for task in inflight:
                        task.cancel()

    async def _start_due(
        self, session: aiohttp.ClientSession, stop: asyncio.Event, limit: int, inflight: set[asyncio.Task[None]]
    ) -> int:
        config = self.config
        async with self._db.unit_of_work() as uow:
            alerts = await ContactNotificationsRepo(uow.conn).lease_pending(
                limit, config.lease_seconds, NOTIFY_WINDOW_SECONDS
            )
        to_send = [a for a in alerts if config.url and a.contacts and not a.expired]
        # Sending starts first: a failure recording the others below must not leave
        # these leased and unsent until their lease runs out.
        for alert in to_send:
            task = asyncio.create_task(self._handle(session, config, alert, stop), name=f"contacts-{alert.alert_id}")
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        # Nothing to send for the rest (expired, no gateway, no contacts): recorded
        # together, one transaction for the batch rather than one per alert.
        settled = [(a, _unsent(a)) for a in alerts if a not in to_send]
        if settled:
            await self._record(settled)
        return len(alerts)

    async def _handle(
        self, session: aiohttp.ClientSession, config: ContactGatewayConfig, alert: PendingAlert, stop: asyncio.Event
    ) -> None:
        try:
            # Every contact's sending runs to its end (a POST under way is not orphaned
            # when a sibling stops): an outcome, _Stopping, or an unexpected error.
            results = await asyncio.gather(
                *(self._notify(session, config, alert, c, stop) for c in alert.contacts), return_exceptions=True
            )
            if any(isinstance(r, _Stopping) for r in results):
                await self._release(alert)
                return
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            await self._record([(alert, [r for r in results if isinstance(r, ContactNotification)])])
        except Unavailable as exc:
            log.warning("contact notifier: alert %s not recorded: %s", alert.alert_id, exc)
        except Exception:
            log.exception("contact notifier: alert %s failed", alert.alert_id)

    async def _release(self, alert: PendingAlert) -> None:
        """Gives back the lease of an alert this replica stops handling (shutting down):
        another replica takes it at once instead of when the lease runs out, which
        covers every attempt of every contact (minutes). Contacts this one reached
        may be sent again: the event id is the same, for the gateway to drop."""
        async with self._db.unit_of_work() as uow:
            await ContactNotificationsRepo(uow.conn).release(alert.alert_id)

    async def _record(self, items: list[tuple[PendingAlert, list[ContactNotification]]]) -> None:
        async with self._db.unit_of_work() as uow:
            stored = set(await ContactNotificationsRepo(uow.conn).record([(a.alert_id, o) for a, o in items]))
            done = [(alert, outcome) for alert, outcome in items if alert.alert_id in stored]
            # WatchSos shows every change: the outcome is one when there are contacts
            # (an empty list looks the same as none recorded yet).
            for alert, outcome in done:
                if outcome:
                    await sos_events.watch(uow, alert.alert_id, WATCH_EVENT)
            # Counts only: the contacts' numbers are on the alert, not in the audit log.
            if done:
                await uow.audit.record_many(
                    [
                        (SYSTEM, AuditEntry("sos.contacts_notify", "sos_alert", a.alert_id, details=_counts(o)))
                        for a, o in done
                    ]
                )
        for _, outcome in done:
            for contact in outcome:
                NOTIFICATIONS.labels(contact.status.value).inc()

    async def _notify(
        self,
        session: aiohttp.ClientSession,
        config: ContactGatewayConfig,
        alert: PendingAlert,
        contact: EmergencyContact,
        stop: asyncio.Event,
    ) -> ContactNotification:
        event_id = str(uuid.uuid5(uuid.UUID(alert.alert_id), contact.phone))
        body = json.dumps(_message(alert, contact, event_id), separators=(",", ":")).encode()
        attempts, error = 0, ""
        while True:
            attempts += 1
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "SecureNow-ContactNotify/1",
                "X-SecureNow-Event-Id": event_id,
                "X-SecureNow-Event-Type": EVENT_TYPE,
                "X-SecureNow-Signature": sign(config.secret, int(time.time()), body),
            }
            try:
                async with session.post(
                    config.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=config.timeout),
                ) as resp:
                    if 200 <= resp.status < 300:
                        return _outcome(contact, ContactNotificationStatus.SENT, attempts)
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            if attempts >= config.max_attempts:
                # The alert id, not the contact: phone numbers stay out of the logs.
                log.warning("contact notification for alert %s failed %d times: %s", alert.alert_id, attempts, error)
                return _outcome(contact, ContactNotificationStatus.FAILED, attempts, error)
            try:
                await asyncio.wait_for(stop.wait(), config.delay(attempts))
            except TimeoutError:
                continue
            raise _Stopping


def _unsent(alert: PendingAlert) -> list[ContactNotification]:
    """Expired, or no gateway to send through."""
    status = ContactNotificationStatus.EXPIRED if alert.expired else ContactNotificationStatus.NOT_CONFIGURED
    return [_outcome(c, status, 0) for c in alert.contacts]


def _counts(outcome: list[ContactNotification]) -> dict[str, int]:
    return {"contacts": len(outcome), **Tally(c.status.value for c in outcome)}


def _outcome(
    contact: EmergencyContact, status: ContactNotificationStatus, attempts: int, error: str = ""
) -> ContactNotification:
    return ContactNotification(contact.name, contact.phone, status, attempts, datetime.now(UTC), error)


def _message(alert: PendingAlert, contact: EmergencyContact, event_id: str) -> dict[str, Any]:
    person = " ".join(p for p in (alert.first_name, alert.last_name) if p) or "Someone"
    fix = alert.location
    where = f" Last known location: {fix.point.latitude:.5f},{fix.point.longitude:.5f}." if fix else ""
    text = (
        f"SecureNow: {person} raised an SOS emergency alert at {alert.create_time.astimezone(UTC):%H:%M} UTC."
        f"{where} You are listed as their emergency contact."
    )
    return {
        "event_id": event_id,
        "event_type": EVENT_TYPE,
        "alert_id": alert.alert_id,
        "contact": {"name": contact.name, "phone": contact.phone, "relationship": contact.relationship},
        "person": {"first_name": alert.first_name, "last_name": alert.last_name},
        "location": {"lat": fix.point.latitude, "lng": fix.point.longitude} if fix else None,
        "create_time": alert.create_time.isoformat(),
        "message": text,
    }
