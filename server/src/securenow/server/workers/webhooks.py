"""Sends department webhooks for dispatch status changes.

Each POST carries the event as JSON and the headers
    X-SecureNow-Event-Id, X-SecureNow-Event-Type,
    X-SecureNow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
where the secret is the department's webhook secret (shown once at registration).
A non-2xx answer or a timeout is retried with exponential backoff and jitter; after
`max_attempts` the delivery is dead-lettered (status 'dead', kept for operators).

Each POST runs on its own: a department whose endpoint hangs until the timeout, or
that has a backlog, holds up nobody else. At most `per_department` POSTs to one
department run at once (its oldest deliveries first), `concurrency` in all. A
department that is not active gets nothing (its deliveries wait until it is active
again); one without a webhook URL any more has its pending deliveries dead-lettered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import UTC, datetime, timedelta

import aiohttp
from prometheus_client import Counter

from securenow.server.domain.errors import Unavailable
from securenow.server.security.encryption import DecryptionError, FieldEncryptor
from securenow.server.storage.postgres import Database
from securenow.server.storage.webhooks_repo import WebhookJob, WebhooksRepo

log = logging.getLogger(__name__)

ATTEMPTS = Counter("securenow_webhook_attempts_total", "Webhook POSTs, by outcome.", ["outcome"])


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookSender:
    def __init__(
        self,
        db: Database,
        encryptor: FieldEncryptor,
        *,
        max_attempts: int,
        base_delay: float,
        max_delay: float = 3600.0,
        timeout: float = 5.0,
        batch: int = 20,
        poll_interval: float = 0.5,
        per_department: int = 4,
    ) -> None:
        self._db = db
        self._enc = encryptor
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._batch = batch  # POSTs in flight at most, across departments
        self._poll = poll_interval
        self._per_department = per_department
        self._running: dict[str, int] = {}  # department -> POSTs in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as session:
            try:
                while not stop.is_set():
                    try:
                        full = await self.send_due(session)
                    except Unavailable as exc:
                        log.warning("webhooks: %s", exc)
                        full = False
                    except Exception:
                        log.exception("webhooks: unexpected failure")
                        full = False
                    if not full:
                        await self._wait(stop, self._poll)
                    elif len(self._tasks) >= self._batch:
                        await self._wait(stop, None)  # until a POST finishes
            finally:
                # POSTs under way finish (each within the timeout) and record their
                # outcome; whatever is cut short is sent again once its lease ends.
                if self._tasks:
                    _, cut = await asyncio.wait(self._tasks, timeout=min(self._timeout, 3.0))
                    for task in cut:
                        task.cancel()

    async def _wait(self, stop: asyncio.Event, within: float | None) -> None:
        """Until `stop`, a POST finishing, or `within` seconds."""
        self._finished.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._finished.wait())]
        try:
            await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def send_due(self, session: aiohttp.ClientSession) -> bool:
        """Starts POSTs for due deliveries, as many as there is room for. True when it
        took all it asked for (more may be due at once)."""
        room = self._batch - len(self._tasks)
        if room <= 0:
            return True
        async with self._db.unit_of_work() as uow:
            jobs = await WebhooksRepo(uow.conn).lease_due(
                room, self._timeout * 3, per_department=self._per_department, running=dict(self._running)
            )
        for job in jobs:
            self._running[job.department_id] = self._running.get(job.department_id, 0) + 1
            task = asyncio.create_task(self._send_one(session, job), name=f"webhook-{job.id}")
            self._tasks.add(task)
        return len(jobs) == room

    async def _send_one(self, session: aiohttp.ClientSession, job: WebhookJob) -> None:
        try:
            await self._send(session, job)
        except Exception:
            # Its lease runs out and it is tried again; nothing else is held up.
            log.exception("webhooks: delivery %s to department %s failed unexpectedly", job.id, job.department_id)
        finally:
            left = self._running.get(job.department_id, 1) - 1
            if left > 0:
                self._running[job.department_id] = left
            else:
                self._running.pop(job.department_id, None)
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            self._finished.set()

    async def _send(self, session: aiohttp.ClientSession, job: WebhookJob) -> None:
        if not job.url:
            # The webhook was removed after the event: there is nowhere to send it.
            ATTEMPTS.labels("dead").inc()
            log.warning("webhook %s to department %s dead-lettered: no webhook URL", job.event_id, job.department_id)
            async with self._db.unit_of_work() as uow:
                await WebhooksRepo(uow.conn).failed(job.id, "the department has no webhook URL", None)
            return
        error = ""
        try:
            secret = self._secret(job)
            body = json.dumps(job.body, separators=(",", ":"), default=str).encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "SecureNow-Webhooks/1",
                "X-SecureNow-Event-Id": job.event_id,
                "X-SecureNow-Event-Type": job.event_type,
                "X-SecureNow-Signature": sign(secret, int(time.time()), body),
            }
            async with session.post(job.url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    ATTEMPTS.labels("delivered").inc()
                    async with self._db.unit_of_work() as uow:
                        await WebhooksRepo(uow.conn).delivered(job.id)
                    return
                error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except DecryptionError:
            error = "webhook secret cannot be decrypted with the configured data keys"
        attempts = job.attempts + 1
        if attempts >= self._max_attempts:
            ATTEMPTS.labels("dead").inc()
            log.warning("webhook %s to department %s dead-lettered: %s", job.event_id, job.department_id, error)
            next_at = None
        else:
            ATTEMPTS.labels("retry").inc()
            delay = min(self._base_delay * 2 ** (attempts - 1), self._max_delay) * random.uniform(0.8, 1.2)
            next_at = datetime.now(UTC) + timedelta(seconds=delay)
        async with self._db.unit_of_work() as uow:
            await WebhooksRepo(uow.conn).failed(job.id, error, next_at)

    def _secret(self, job: WebhookJob) -> str:
        if not job.credentials:
            raise DecryptionError("no webhook secret")
        return str(self._enc.decrypt(job.credentials, bound_to=f"department:{job.department_id}")["webhook_secret"])
