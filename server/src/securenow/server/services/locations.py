"""Location ingestion for ShareLocation, batched per process.

Fixes from every stream go into one buffer; a flusher writes them every few
milliseconds: `user:location:{user_id}` in Redis, the alert trails (COPY), the
alerts' and users' latest positions, and alert_location events for the handling
agency, paced per alert (latest wins, at most one per `forward_interval`). Fixes for
an alert that was cancelled or resolved meanwhile neither join its trail nor reach
the agency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter

from securenow.server.domain.errors import Unavailable
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.sos import OPEN_STATUSES
from securenow.server.services import sos_events
from securenow.server.services.sos import SosService
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database

log = logging.getLogger(__name__)

INGESTED = Counter("securenow_location_fixes_total", "Location fixes stored.")


@dataclass(frozen=True)
class _Fix:
    user_id: str
    alert_id: str | None
    fix: LocationFix


class LocationIngestor:
    def __init__(
        self,
        db: Database,
        live: LiveState,
        sos: SosService,
        *,
        flush_interval: float = 0.02,
        forward_interval: float = 1.0,
    ) -> None:
        self._db = db
        self._live = live
        self._sos = sos
        self._flush_interval = flush_interval
        self._forward_interval = forward_interval
        self._buffer: list[_Fix] = []
        self._submitted = 0
        self._flushed = 0
        self._progress = asyncio.Condition()
        self._wake = asyncio.Event()
        self._last_forward: dict[str, float] = {}
        self._due: dict[str, LocationFix] = {}  # latest unforwarded fix per alert

    def submit(self, user_id: str, alert_id: str | None, fix: LocationFix) -> int:
        self._buffer.append(_Fix(user_id, alert_id, fix))
        self._submitted += 1
        self._wake.set()
        return self._submitted

    async def sync(self, upto: int, wait_seconds: float = 10.0) -> None:
        """Waits until fix number `upto` is stored; Unavailable if that takes too long."""
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(lambda: self._flushed >= upto), wait_seconds)
            except TimeoutError:
                raise Unavailable("location fixes could not be stored in time") from None

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self._forward_interval / 4)
            except TimeoutError:
                pass
            self._wake.clear()
            await asyncio.sleep(self._flush_interval)  # let a batch gather
            try:
                await self.flush()
                backoff = 0.1
            except Unavailable as exc:
                log.warning("location flush failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def flush(self) -> None:
        batch, upto = self._buffer, self._submitted
        self._buffer = []
        try:
            await self._write(batch)
        except BaseException:
            self._buffer[:0] = batch  # keep order; retried by the next flush
            raise
        async with self._progress:
            self._flushed = max(self._flushed, upto)
            self._progress.notify_all()

    async def _write(self, batch: list[_Fix]) -> None:
        now = time.monotonic()
        latest_user: dict[str, LocationFix] = {}
        latest_alert: dict[str, LocationFix] = {}
        trail: list[tuple[str, LocationFix]] = []
        for item in batch:
            if item.user_id not in latest_user or item.fix.time >= latest_user[item.user_id].time:
                latest_user[item.user_id] = item.fix
            if item.alert_id is not None:
                trail.append((item.alert_id, item.fix))
                if item.alert_id not in latest_alert or item.fix.time >= latest_alert[item.alert_id].time:
                    latest_alert[item.alert_id] = item.fix
        self._due.update(latest_alert)
        forward = {a: f for a, f in self._due.items() if now - self._last_forward.get(a, 0.0) >= self._forward_interval}
        unrouted: list[str] = []
        if trail or latest_user or forward:
            async with self._db.unit_of_work() as uow:
                # An alert's trail ends with the alert: fixes still streaming after a
                # cancel or resolve only move the person's own live location.
                alert_ids = sorted({a for a, _ in trail} | set(forward))
                owners = await uow.sos.owners(alert_ids) if alert_ids else {}
                still_open = {a for a, (_, _, status) in owners.items() if status in OPEN_STATUSES}
                trail = [(a, f) for a, f in trail if a in still_open]
                if trail:
                    await uow.sos.add_locations(trail)
                    # Sorted: concurrent flushes (other replicas) lock alert rows in one order.
                    await uow.sos.set_latest_locations(
                        sorted((a, f) for a, f in latest_alert.items() if a in still_open)
                    )
                if latest_user:
                    await uow.sos.set_user_locations(list(latest_user.items()))
                for alert_id, fix in forward.items():
                    if alert_id not in still_open:
                        continue
                    _, agency, _ = owners[alert_id]
                    if agency is None:
                        unrouted.append(alert_id)
                    await sos_events.alert_location(uow, alert_id, agency, fix)
        for alert_id in forward:
            self._last_forward[alert_id] = now
            self._due.pop(alert_id, None)
        if len(self._last_forward) > 10_000:
            cutoff = now - 60
            self._last_forward = {a: t for a, t in self._last_forward.items() if t > cutoff}
        INGESTED.inc(len(batch))
        if latest_user:
            try:
                async with self._live.redis.pipeline(transaction=False) as pipe:
                    for user_id, fix in latest_user.items():
                        pipe.set(
                            f"user:location:{user_id}",
                            f"{fix.point.latitude},{fix.point.longitude},{fix.time.timestamp()}",
                            ex=86400,
                        )
                    await pipe.execute()
            except Exception as exc:  # Redis down: Postgres has the positions
                log.warning("could not update user:location keys: %s", type(exc).__name__)
        for alert_id in unrouted:
            await self._sos.route_if_unassigned(alert_id)
