"""Sends department webhooks for dispatch status changes.

Each POST carries the event as JSON and the headers
    X-SecureNow-Event-Id, X-SecureNow-Event-Type,
    X-SecureNow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
where the secret is the department's webhook secret (shown once at registration).
A non-2xx answer or a timeout is retried with exponential backoff and jitter; after
`max_attempts` the delivery is dead-lettered (status 'dead', kept for operators).
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
    ) -> None:
        self._db = db
        self._enc = encryptor
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._batch = batch
        self._poll = poll_interval

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as session:
            while not stop.is_set():
                try:
                    sent = await self.send_due(session)
                except Unavailable as exc:
                    log.warning("webhooks: %s", exc)
                    sent = 0
                except Exception:
                    log.exception("webhooks: unexpected failure")
                    sent = 0
                if sent < self._batch:
                    try:
                        await asyncio.wait_for(stop.wait(), self._poll)
                    except TimeoutError:
                        pass

    async def send_due(self, session: aiohttp.ClientSession) -> int:
        async with self._db.unit_of_work() as uow:
            jobs = await WebhooksRepo(uow.conn).lease_due(self._batch, self._timeout * 3)
        if jobs:
            await asyncio.gather(*(self._send(session, job) for job in jobs))
        return len(jobs)

    async def _send(self, session: aiohttp.ClientSession, job: WebhookJob) -> None:
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
