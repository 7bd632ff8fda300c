"""Location ingestion for ShareLocation, batched per process.

Fixes from every stream go into one buffer; a flusher writes them every few
milliseconds: the alert trails (COPY), the alerts' and users' current positions,
`user:location:{user_id}` in Redis, and alert_location events for the handling agency
(and "location" watch events), paced per alert (latest wins, at most one per
`forward_interval`).

Fixes can arrive out of order (a phone sends what it buffered offline, two replicas
flush at once): every fix joins the alert's trail with its own time, but a current
position (alert, user, Redis key) only ever moves to a newer fix, and only a fix that
is the alert's current position is forwarded. The flush locks the alerts' rows, so a
cancel or resolve either waits for it or is seen by it: fixes for an alert closed
meanwhile neither join its trail nor reach the agency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

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
        max_buffered: int = 50_000,
        room_wait_seconds: float = 10.0,
    ) -> None:
        self._db = db
        self._live = live
        self._sos = sos
        self._flush_interval = flush_interval
        # Fixes received but not stored yet are held in memory: past `max_buffered`
        # (PostgreSQL slow or down, a phone flooding) a sender waits for room, and gets
        # UNAVAILABLE after `room_wait_seconds`, rather than the process growing.
        self._max_buffered = max_buffered
        self._room_wait = room_wait_seconds
        self._forward_interval = forward_interval
        self._buffer: list[_Fix] = []
        self._submitted = 0
        self._flushed = 0
        self._progress = asyncio.Condition()
        self._wake = asyncio.Event()
        self._last_forward: dict[str, float] = {}
        self._due: dict[str, LocationFix] = {}  # latest unforwarded fix per alert
        # Alerts whose first fix committed but whose routing failed: retried every flush.
        self._unrouted: set[str] = set()

    async def room(self) -> None:
        """Returns once another fix may be buffered (at once, normally)."""
        if self._unstored() < self._max_buffered:
            return
        async with self._progress:
            try:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._unstored() < self._max_buffered), self._room_wait
                )
            except TimeoutError:
                raise Unavailable("too many location fixes are waiting to be stored; retry shortly") from None

    def _unstored(self) -> int:
        """Fixes received and not stored yet: buffered, or in a flush under way."""
        return self._submitted - self._flushed

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
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await self._run(stop, stopping)
        finally:
            stopping.cancel()
        # Stopping (a deploy, a scale-down): what is buffered is stored, and each alert's
        # latest fix still held back by the pacing is forwarded now. It is where the
        # person was last seen; no other replica would ever send it to the agency.
        try:
            await self.flush(final=True)
        except Exception:
            log.exception("final location flush failed; %d fixes not stored", len(self._buffer))

    async def _run(self, stop: asyncio.Event, stopping: asyncio.Future[Any]) -> None:
        backoff = 0.1
        while not stop.is_set():
            # New fixes, a paced fix's turn (checked four times a forward interval), or
            # the stop: whichever comes first.
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait(
                (woken, stopping), timeout=self._forward_interval / 4, return_when=asyncio.FIRST_COMPLETED
            )
            woken.cancel()
            self._wake.clear()
            await asyncio.sleep(self._flush_interval)  # let a batch gather
            try:
                await self.flush()
                backoff = 0.1
            except Exception as exc:
                # The batch stays buffered and is retried; callers waiting on it time out
                # meanwhile. Anything unexpected is logged in full but never ends
                # ingestion for everyone.
                if isinstance(exc, Unavailable):
                    log.warning("location flush failed (%s); retrying", exc)
                else:
                    log.exception("location flush failed unexpectedly; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def flush(self, *, final: bool = False) -> None:
        batch, upto = self._buffer, self._submitted
        self._buffer = []
        try:
            await self._write(batch, final=final)
        except BaseException:
            self._buffer[:0] = batch  # keep order; retried by the next flush
            raise
        async with self._progress:
            self._flushed = max(self._flushed, upto)
            self._progress.notify_all()

    async def _write(self, batch: list[_Fix], *, final: bool = False) -> None:
        now = time.monotonic()

        def may_forward(alert_id: str) -> bool:
            last = self._last_forward.get(alert_id)
            return final or last is None or now - last >= self._forward_interval

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
        waiting = {a for a in self._due if may_forward(a)}  # unforwarded fixes whose turn came
        due = dict(self._due)
        forwarded: list[str] = []
        moved_users: set[str] = set()
        first_fixes: list[str] = []
        if trail or latest_user or waiting:
            async with self._db.unit_of_work() as uow:
                # The alerts' rows stay locked until commit: a cancel or resolve waits
                # for this flush or this flush sees it (an alert's trail and its
                # alert_location events end with the alert; fixes still streaming after
                # it only move the person's own location).
                alert_ids = sorted({a for a, _ in trail} | waiting)
                alerts = await uow.sos.lock_for_locations(alert_ids) if alert_ids else {}
                still_open = {a for a, alert in alerts.items() if alert.status in OPEN_STATUSES}
                trail = [(a, f) for a, f in trail if a in still_open]
                if trail:
                    await uow.sos.add_locations(trail)
                    # A fix older than the alert's current location joins the trail only:
                    # just the fixes that moved it are forwarded and announced.
                    moved = await uow.sos.set_latest_locations(
                        sorted((a, f) for a, f in latest_alert.items() if a in still_open)
                    )
                    due.update({a: latest_alert[a] for a in moved})
                if latest_user:
                    # Sorted: concurrent flushes (other replicas) lock rows in one order.
                    moved_users = await uow.sos.set_user_locations(sorted(latest_user.items()))
                for alert_id in sorted(a for a in due if may_forward(a)):
                    fix = due.pop(alert_id)
                    alert = alerts.get(alert_id)
                    if alert is None or alert.status not in OPEN_STATUSES:
                        continue
                    if alert.location_time is not None and fix.time < alert.location_time:
                        continue  # another replica stored (and forwards) a newer fix meanwhile
                    if alert.agency_id is None or alert.location_time is None:
                        first_fixes.append(alert_id)  # routed by it once this commits
                    await sos_events.alert_location(uow, alert_id, alert.user_id, alert.agency_id, fix)
                    forwarded.append(alert_id)
        self._due = due
        for alert_id in forwarded:
            self._last_forward[alert_id] = now
        if len(self._last_forward) > 10_000:
            cutoff = now - 60
            self._last_forward = {a: t for a, t in self._last_forward.items() if t > cutoff}
        INGESTED.inc(len(batch))
        if moved_users:
            # Conditional on the fix's time too: another replica's newer fix may be there.
            try:
                await self._live.set_user_locations(
                    {u: (latest_user[u].point, latest_user[u].time.timestamp()) for u in moved_users}
                )
            except Exception as exc:  # Redis down: Postgres has the positions
                log.warning("could not update user:location keys: %s", exc)
        # The fixes are committed: a failure from here on must not fail the flush, or
        # the batch would be written again (its trail twice, its events twice). An alert
        # whose routing failed is routed on a later flush.
        self._unrouted.update(first_fixes)
        for alert_id in sorted(self._unrouted):
            try:
                await self._sos.route_on_first_fix(alert_id)
            except Exception:
                log.exception("routing alert %s on its first fix failed; retrying", alert_id)
            else:
                self._unrouted.discard(alert_id)
