"""Analytics: app events, area safety scores and the incident (response-time) report."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime, timedelta

from securenow.server.domain.accounts import Principal
from securenow.server.domain.analytics import (
    EventInput,
    ReportBucket,
    ValidEvent,
    validate_events,
    validate_report_window,
)
from securenow.server.domain.errors import NotFound, PermissionDenied
from securenow.server.domain.geo import Point
from securenow.server.domain.paging import page_request
from securenow.server.domain.safety_score import (
    CELLS_PER_DEGREE,
    SCORE_RADIUS_M,
    VALIDITY,
    WINDOW,
    SafetyScore,
    assess,
    cell_of,
)
from securenow.server.domain.validation import Validator
from securenow.server.services.common import reads_of, replayed_resource
from securenow.server.storage.analytics_repo import MissingPartition
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database

log = logging.getLogger(__name__)

DEFAULT_LIST_RADIUS_M = 5_000.0
# A user's safety score follows a location they shared within this long; older ones
# (or none) leave the score as it was (the seed's default of 85 for a new account).
USER_LOCATION_MAX_AGE = timedelta(days=1)
MAX_LIST_RADIUS_M = 50_000.0


def _point(v: Validator, name: str, point: Point | None) -> Point:
    if point is None:
        v.add(name, "is required")
        return Point(0.0, 0.0)
    v.lat_lng(name, point.latitude, point.longitude)
    return point


async def refresh_safety_scores(db: Database, now: datetime | None = None) -> int:
    """Recomputes the score of every cell that had a (non-cancelled) alert in the
    window, and of every stored cell last scored below 100, so the area map is there
    before anyone asks. One replica at a time (the others skip); returns how many
    cells it stored, or -1 when another replica was refreshing."""
    now = now or datetime.now(UTC)
    async with db.unit_of_work() as uow:
        if not await uow.analytics.try_lock_refresh():
            return -1
        cells = await uow.analytics.incidents_of_active_cells(now, WINDOW, SCORE_RADIUS_M)
        scores = [(cell, assess(incidents)) for cell, incidents in cells.items()]
        if scores:
            await uow.analytics.save_scores(scores, SCORE_RADIUS_M, now, now + VALIDITY)
        # A user's own score is that of where they were last seen (users.safety_score).
        await uow.analytics.refresh_user_scores(CELLS_PER_DEGREE, now - USER_LOCATION_MAX_AGE)
    return len(scores)


class AnalyticsService:
    def __init__(self, db: Database, live: LiveState, *, calls_per_minute: int) -> None:
        self._db = db
        self._live = live
        self._calls_per_minute = calls_per_minute

    async def record_events(self, caller: Principal, events: list[EventInput], key: IdempotencyKey | None) -> int:
        if caller.user_id is None:
            raise PermissionDenied("events belong to a user account", reason="ROLE_NOT_ALLOWED")
        valid = validate_events(events, datetime.now(UTC))
        # The seed's rate_limit:{user_id}:{action}: an app flushes its queue now and then;
        # a client looping on RecordEvents gets RESOURCE_EXHAUSTED with a retry delay.
        await self._live.hit_rate_limit(caller.user_id, "record_events", self._calls_per_minute)
        try:
            return await self._store_events(caller, caller.user_id, valid, key)
        except MissingPartition:
            # Every accepted time has a partition while the maintenance loop runs; if it
            # has not run for months, create them now rather than refuse the events.
            log.warning("analytics_events had no partition for an event time; creating the missing partitions")
            async with self._db.unit_of_work() as uow:
                await uow.analytics.ensure_partitions(datetime.now(UTC))
            return await self._store_events(caller, caller.user_id, valid, key)

    async def _store_events(
        self, caller: Principal, user_id: str, valid: list[ValidEvent], key: IdempotencyKey | None
    ) -> int:
        async with self._db.unit_of_work() as uow:
            # The batch's id stands for the resource; a retry (same id, same events) was stored.
            if await replayed_resource(uow, caller, "RecordEvents", key, str(uuid.uuid4())) is not None:
                return len(valid)
            await uow.analytics.add_events(user_id, valid)
            await uow.audit.record(
                caller,
                AuditEntry(
                    "analytics.record_events",
                    "analytics_events",
                    None,
                    details={"count": len(valid), "event_types": sorted({e.event_type for e in valid})[:20]},
                ),
            )
        return len(valid)

    async def get_safety_score(self, caller: Principal, location: Point | None) -> SafetyScore:
        v = Validator()
        point = _point(v, "location", location)
        v.check()
        cell = cell_of(point)
        async with self._db.reader() as uow:
            stored = await uow.analytics.fresh_score(cell)
        if stored is not None:
            return stored
        now = datetime.now(UTC)
        async with self._db.unit_of_work() as uow:
            incidents = await uow.analytics.incidents_near(cell.centre, SCORE_RADIUS_M, now, WINDOW)
            return await uow.analytics.save_score(cell, SCORE_RADIUS_M, assess(incidents), now, now + VALIDITY)

    async def list_safety_scores(
        self, caller: Principal, near: Point | None, radius_m: float, page_size: int, page_token: str
    ) -> tuple[list[SafetyScore], str]:
        v = Validator()
        point = _point(v, "near", near)
        radius = radius_m or DEFAULT_LIST_RADIUS_M
        if not math.isfinite(radius) or not 0 < radius <= MAX_LIST_RADIUS_M:
            v.add("radius_m", f"must be between 0 and {MAX_LIST_RADIUS_M:.0f}")
        v.check()
        page = page_request(page_size, page_token, filters=("safety_scores", point.latitude, point.longitude, radius))
        async with self._db.reader() as uow:
            scores, cursor = await uow.analytics.list_scores(page, point, radius)
        return scores, page.next_token(cursor)

    async def incident_report(
        self,
        caller: Principal,
        department_id: str,
        start: datetime | None,
        end: datetime | None,
        interval: timedelta | None,
    ) -> list[ReportBucket]:
        v = Validator()
        requested = v.uuid("department_id", department_id, required=False) or None
        window = validate_report_window(v, start, end, interval)
        v.check()
        assert window is not None
        if caller.is_admin:
            async with self._db.reader() as uow:
                if requested is not None and await uow.agency.get_department(requested) is None:
                    raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
                return await uow.analytics.incident_report(window, requested)
        if caller.agency_id is None:
            raise PermissionDenied("this account does not belong to an agency", reason="NO_AGENCY")
        if requested is not None and requested != caller.agency_id:
            raise PermissionDenied("agencies can only report on their own department", reason="OTHER_DEPARTMENT")
        # Row-level security limits the rows to the agency's as well.
        async with reads_of(self._db, caller) as uow:
            return await uow.analytics.incident_report(window, caller.agency_id)
