"""Periodic upkeep, safe to run on every replica at once:
partitions ahead of time (daily), audit-chain sealing (every second), expiry of
stale on-duty providers, old idempotency records and settled outbox rows, and the
area safety scores (every 30 minutes, so the hour-long scores never lapse)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from securenow.server.domain.errors import Unavailable
from securenow.server.services.analytics import refresh_safety_scores
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database
from securenow.server.storage.relay_repo import RelayRepo

log = logging.getLogger(__name__)

IDEMPOTENCY_RETENTION_DAYS = 30
OUTBOX_RETENTION_DAYS = 7
# Ended sign-in sessions (signed out, revoked or expired) and their spent refresh tokens;
# a live session keeps every token it issued, for reuse detection.
SESSION_RETENTION_DAYS = 30
PROVIDER_DUTY_STALE_SECONDS = 15 * 60
# Scores stay valid for an hour; refreshing twice as often keeps the map complete.
SAFETY_REFRESH_SECONDS = 30 * 60.0


# The audit chain head is logged at most this often (when it moved).
ANCHOR_LOG_SECONDS = 60.0
# A task that failed unexpectedly is tried again after this (or its own period, if
# shorter), not a whole period later: a day without next month's partitions, say.
RETRY_AFTER_FAILURE_SECONDS = 60.0


@dataclass
class _Task:
    name: str
    every_seconds: float
    run: Callable[[], Awaitable[object]]
    due: float = 0.0


class Maintenance:
    def __init__(self, db: Database, live: LiveState) -> None:
        self._db = db
        self._live = live
        self._anchored_at = -ANCHOR_LOG_SECONDS
        self._tasks = [
            _Task("audit_seal", 1.0, self.seal_audit),
            _Task("partitions", 24 * 3600.0, self.ensure_partitions),
            _Task("stale_providers", 60.0, self.expire_stale_providers),
            _Task("retention", 3600.0, self.apply_retention),
            _Task("safety_scores", SAFETY_REFRESH_SECONDS, self.refresh_safety_scores),
        ]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for task in self._tasks:
                if task.due <= now:
                    task.due = now + task.every_seconds
                    try:
                        await task.run()
                    except Unavailable as exc:
                        log.warning("maintenance %s: %s", task.name, exc)
                        task.due = now + min(task.every_seconds, 5.0)
                    except Exception:
                        log.exception("maintenance %s failed", task.name)
                        task.due = now + min(task.every_seconds, RETRY_AFTER_FAILURE_SECONDS)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

    async def seal_audit(self) -> int:
        """Seals new audit entries into the chain, and at most every ANCHOR_LOG_SECONDS
        logs the chain's head: logs shipped off the machine are the anchor that shows a
        chain rewritten and re-sealed inside the database (`maintain --expect-head`)."""
        async with self._db.unit_of_work() as uow:
            sealed = await uow.audit.seal()
            due = time.monotonic() - self._anchored_at >= ANCHOR_LOG_SECONDS
            head = await uow.audit.head() if sealed and due else None
        if head is not None:
            self._anchored_at = time.monotonic()
            log.info("audit chain head %s", head, extra={"audit_chain_head": str(head)})
        return sealed

    async def ensure_partitions(self) -> int:
        async with self._db.unit_of_work() as uow:
            created = int(await uow.conn.fetchval("SELECT securenow_ensure_partitions()"))
        if created:
            log.info("created %d partitions", created)
        return created

    async def expire_stale_providers(self) -> int:
        return await self._live.expire_stale_providers(PROVIDER_DUTY_STALE_SECONDS)

    async def apply_retention(self) -> None:
        async with self._db.unit_of_work() as uow:
            await uow.idempotency.delete_older_than_days(IDEMPOTENCY_RETENTION_DAYS)
            await RelayRepo(uow.conn).delete_settled(OUTBOX_RETENTION_DAYS)
            await uow.accounts.delete_sessions_ended_before_days(SESSION_RETENTION_DAYS)

    async def refresh_safety_scores(self) -> int:
        """Rescores every grid cell with recent alerts (one replica at a time)."""
        refreshed = await refresh_safety_scores(self._db)
        if refreshed > 0:
            log.info("refreshed %d safety scores", refreshed)
        return refreshed
