"""Analytics events, stored safety scores (one row per grid cell) and the aggregates
they are computed from."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from securenow.server.domain.analytics import ReportBucket, ReportWindow, ValidEvent
from securenow.server.domain.enums import IncidentType
from securenow.server.domain.geo import Point
from securenow.server.domain.paging import PageRequest, cursor_int, cursor_uuid
from securenow.server.domain.safety_score import (
    CELLS_PER_DEGREE,
    Assessment,
    Cell,
    IncidentCount,
    RiskFactor,
    SafetyScore,
)
from securenow.server.storage.rows import Conn, geog_point, must

SCORE_COLUMNS = """s.id, s.cell, ST_Y(s.location::geometry) AS lat, ST_X(s.location::geometry) AS lng, s.radius_m,
    s.score, s.risk_factors, s.recommendations, s.calculated_at, s.valid_until"""

# The grid cell of an alert's point, exactly as domain.safety_score.cell_of computes it
# (float8 multiplication and floor are the same IEEE operations in both).
_CELL_I = (
    f"LEAST(GREATEST(floor(ST_Y(a.location::geometry) * {CELLS_PER_DEGREE}), -{90 * CELLS_PER_DEGREE}), "
    f"{90 * CELLS_PER_DEGREE - 1})::int"
)
_CELL_J = (
    f"(mod(floor(ST_X(a.location::geometry) * {CELLS_PER_DEGREE})::int + {180 * CELLS_PER_DEGREE}, "
    f"{360 * CELLS_PER_DEGREE}) - {180 * CELLS_PER_DEGREE})"
)
# Alerts that count towards safety scores: not cancelled, with a point, in the window
# ending at $1 ($2 seconds long).
_SCORED_ALERTS = (
    "a.location IS NOT NULL AND a.status <> 'cancelled' "
    "AND a.created_at > $1::timestamptz - $2::float8 * INTERVAL '1 second'"
)
_AGE_DAYS = "GREATEST(0, floor(extract(epoch FROM ($1::timestamptz - a.created_at)) / 86400))::int"

INSERT_EVENT_SQL = f"""INSERT INTO analytics_events
        (user_id, event_type, event_data, location_data, location, timestamp, session_id, device_info)
    VALUES ($1, $2, $3, $4, {geog_point("$5", "$6")}, $7, $8, $9)"""

UPSERT_SCORE_SQL = f"""INSERT INTO safety_scores AS s (cell, location_data, location, radius_m, score, risk_factors,
        recommendations, calculated_at, valid_until, id)
    VALUES ($1, $2, {geog_point("$3", "$4")}, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (cell) DO UPDATE SET location_data = EXCLUDED.location_data, location = EXCLUDED.location,
        radius_m = EXCLUDED.radius_m, score = EXCLUDED.score, risk_factors = EXCLUDED.risk_factors,
        recommendations = EXCLUDED.recommendations, calculated_at = EXCLUDED.calculated_at,
        valid_until = EXCLUDED.valid_until
    -- A slower computation never overwrites a newer one.
    WHERE s.calculated_at <= EXCLUDED.calculated_at
    RETURNING {SCORE_COLUMNS}"""
# The same, for a perfect score: only a cell that is stored already is updated, so
# asking about quiet places does not fill the table (they are 100 without a row).
UPDATE_SCORE_SQL = f"""UPDATE safety_scores AS s SET location_data = $2, location = {geog_point("$3", "$4")},
        radius_m = $5, score = $6, risk_factors = $7, recommendations = $8, calculated_at = $9, valid_until = $10
    WHERE s.cell = $1 AND s.id = $11 AND s.calculated_at <= $9
    RETURNING {SCORE_COLUMNS}"""


def score_from_row(r: asyncpg.Record) -> SafetyScore:
    return SafetyScore(
        id=str(r["id"]),
        cell=r["cell"] or "",
        centre=Point(float(r["lat"]), float(r["lng"])),
        radius_m=float(r["radius_m"]),
        score=int(r["score"]),
        risk_factors=tuple(
            RiskFactor(str(f.get("name", "")), float(f.get("weight", 0.0)), str(f.get("description", "")))
            for f in (r["risk_factors"] or [])
        ),
        recommendations=tuple(str(x) for x in (r["recommendations"] or [])),
        calculate_time=r["calculated_at"],
        valid_until=r["valid_until"],
    )


def _score_args(
    cell: Cell, radius_m: float, a: Assessment, calculated_at: datetime, valid_until: datetime
) -> tuple[Any, ...]:
    centre = cell.centre
    return (
        cell.name,
        centre.to_json(),
        centre.longitude,
        centre.latitude,
        radius_m,
        a.score,
        [f.__dict__ for f in a.risk_factors],
        list(a.recommendations),
        calculated_at,
        valid_until,
        cell.score_id,
    )


class MissingPartition(Exception):
    """No partition of analytics_events holds an event's time: the maintenance loop,
    which keeps them three months ahead, has not run for that long."""


class AnalyticsRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def add_events(self, user_id: str, events: list[ValidEvent]) -> None:
        """Raises MissingPartition when a month has no partition (the transaction is then
        aborted: the caller creates the partitions and tries again in a new one)."""
        try:
            await self._insert_events(user_id, events)
        except asyncpg.exceptions.CheckViolationError as exc:
            # analytics_events has no CHECK constraint: on insert, 23514 is PostgreSQL's
            # "no partition of relation found for row".
            raise MissingPartition(str(exc)) from exc

    async def ensure_partitions(self, at: datetime) -> int:
        """Creates the partitions that should exist at `at` (migration 05's function:
        months from 2024-01 to three months ahead); returns how many it created."""
        return int(await self.conn.fetchval("SELECT securenow_ensure_partitions($1)", at))

    async def _insert_events(self, user_id: str, events: list[ValidEvent]) -> None:
        await self.conn.executemany(
            INSERT_EVENT_SQL,
            [
                (
                    user_id,
                    e.event_type,
                    e.event_data,
                    e.location.to_json() if e.location else None,
                    e.location.point.longitude if e.location else None,
                    e.location.point.latitude if e.location else None,
                    e.event_time,
                    e.session_id,
                    e.device_info,
                )
                for e in events
            ],
        )

    # Safety scores ----------------------------------------------------------------

    async def fresh_score(self, cell: Cell) -> SafetyScore | None:
        row = await self.conn.fetchrow(
            f"SELECT {SCORE_COLUMNS} FROM safety_scores s WHERE s.cell = $1 AND s.valid_until > now()", cell.name
        )
        return score_from_row(row) if row else None

    async def incidents_near(
        self, centre: Point, radius_m: float, now: datetime, window: timedelta
    ) -> list[IncidentCount]:
        rows = await self.conn.fetch(
            f"""SELECT a.incident_type::text AS incident_type, {_AGE_DAYS} AS age_days, count(*)::int AS n
                FROM sos_alerts a
                WHERE {_SCORED_ALERTS} AND ST_DWithin(a.location, {geog_point("$3", "$4")}, $5)
                GROUP BY 1, 2""",
            now,
            window.total_seconds(),
            centre.longitude,
            centre.latitude,
            radius_m,
        )
        return [IncidentCount(IncidentType(r["incident_type"]), r["age_days"], r["n"]) for r in rows]

    async def incidents_of_active_cells(
        self, now: datetime, window: timedelta, radius_m: float
    ) -> dict[Cell, list[IncidentCount]]:
        """For every cell holding a scored alert, and every stored cell last scored below
        100 (so it returns to 100 once its incidents age out), the incidents within
        `radius_m` of its centre. One statement."""
        rows = await self.conn.fetch(
            f"""WITH cells AS (
                    SELECT DISTINCT {_CELL_I} AS i, {_CELL_J} AS j FROM sos_alerts a WHERE {_SCORED_ALERTS}
                    UNION
                    SELECT split_part(cell, ':', 2)::int, split_part(cell, ':', 3)::int FROM safety_scores
                    WHERE cell LIKE $4 AND score < 100
                ), centres AS (
                    SELECT i, j, {geog_point(f"(j + 0.5) / {CELLS_PER_DEGREE}.0", f"(i + 0.5) / {CELLS_PER_DEGREE}.0")}
                        AS centre
                    FROM cells
                )
                SELECT c.i, c.j, a.incident_type::text AS incident_type, {_AGE_DAYS} AS age_days,
                       count(a.id)::int AS n
                FROM centres c
                LEFT JOIN sos_alerts a ON {_SCORED_ALERTS} AND ST_DWithin(a.location, c.centre, $3)
                GROUP BY 1, 2, 3, 4""",
            now,
            window.total_seconds(),
            radius_m,
            f"{CELLS_PER_DEGREE}:%",
        )
        out: dict[Cell, list[IncidentCount]] = {}
        for r in rows:
            items = out.setdefault(Cell.at(r["i"], r["j"]), [])
            if r["incident_type"] is not None:
                items.append(IncidentCount(IncidentType(r["incident_type"]), r["age_days"], r["n"]))
        return out

    async def save_score(
        self, cell: Cell, radius_m: float, a: Assessment, calculated_at: datetime, valid_until: datetime
    ) -> SafetyScore:
        args = _score_args(cell, radius_m, a, calculated_at, valid_until)
        if not a.risk_factors:
            row = await self.conn.fetchrow(UPDATE_SCORE_SQL, *args)
            if row is None:  # not stored (or a newer computation is: this one is as good)
                return SafetyScore(
                    cell.score_id,
                    cell.name,
                    cell.centre,
                    radius_m,
                    a.score,
                    (),
                    a.recommendations,
                    calculated_at,
                    valid_until,
                )
        else:
            row = await self.conn.fetchrow(UPSERT_SCORE_SQL, *args)
        if row is None:
            # Another computation, started later, stored its result first: serve that.
            row = await self.conn.fetchrow(f"SELECT {SCORE_COLUMNS} FROM safety_scores s WHERE s.cell = $1", cell.name)
        return score_from_row(must(row))

    async def save_scores(
        self, scores: list[tuple[Cell, Assessment]], radius_m: float, calculated_at: datetime, valid_until: datetime
    ) -> None:
        # In cell order, so concurrent writers lock rows in the same order (no deadlocks).
        ordered = sorted(scores, key=lambda s: s[0].name)
        await self.conn.executemany(
            UPSERT_SCORE_SQL, [_score_args(c, radius_m, a, calculated_at, valid_until) for c, a in ordered]
        )

    async def refresh_user_scores(self, cells_per_degree: int, located_since: datetime) -> int:
        """Sets each user's safety_score to the score of the map cell of their last
        location, if they shared one since `located_since` (100 where no score is
        stored: a quiet cell). The cell is computed as domain.safety_score.Cell.at does.
        Returns how many users changed."""
        result = await self.conn.execute(
            """WITH located AS (
                   SELECT id, $1::int || ':'
                          || LEAST(GREATEST(floor((location_data->>'lat')::float8 * $1)::int, -90 * $1), 90 * $1 - 1)
                          || ':'
                          || ((floor((location_data->>'lng')::float8 * $1)::int + 180 * $1) % (360 * $1) - 180 * $1)
                          AS cell
                   FROM users
                   WHERE location_data ? 'lat' AND (location_data->>'time')::timestamptz >= $2)
               UPDATE users u SET safety_score = COALESCE(s.score, 100), updated_at = now()
               FROM located l LEFT JOIN safety_scores s ON s.cell = l.cell
               WHERE u.id = l.id AND u.safety_score IS DISTINCT FROM COALESCE(s.score, 100)""",
            cells_per_degree,
            located_since,
        )
        return int(result.split()[-1])

    async def try_lock_refresh(self) -> bool:
        """Transaction-scoped: only one replica refreshes the map at a time."""
        return bool(await self.conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('securenow_safety_refresh'))"))

    async def list_scores(
        self, page: PageRequest, near: Point, radius_m: float
    ) -> tuple[list[SafetyScore], list[Any] | None]:
        args: list[Any] = [near.longitude, near.latitude, radius_m, page.size + 1]
        after = ""
        keyset = page.keyset(cursor_int(0, 100), cursor_uuid)  # scores are 0..100
        if keyset is not None:
            args += keyset
            after = "AND (s.score < $5 OR (s.score = $5 AND s.id > $6::uuid))"
        rows = await self.conn.fetch(
            f"""SELECT {SCORE_COLUMNS} FROM safety_scores s
                WHERE s.valid_until > now() AND ST_DWithin(s.location, {geog_point("$1", "$2")}, $3) {after}
                ORDER BY s.score DESC, s.id ASC LIMIT $4""",
            *args,
        )
        scores = [score_from_row(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        cursor = [scores[-1].score, scores[-1].id] if more and scores else None
        return scores, cursor

    # Incident report ----------------------------------------------------------------

    async def incident_report(self, window: ReportWindow, department_id: str | None) -> list[ReportBucket]:
        """Buckets over sos_alerts.created_at, every bucket present (zeros when empty).
        Intervals are passed as seconds so a day is always 86400 s whatever the session
        time zone (generate_series and date_bin must agree)."""
        rows = await self.conn.fetch(
            """WITH alerts AS (
                   SELECT date_bin($3::float8 * INTERVAL '1 second', a.created_at, $1::timestamptz) AS bucket,
                          a.status, a.response_time, a.police_notified, a.escalation_level
                   FROM sos_alerts a
                   WHERE a.created_at >= $1 AND a.created_at < $2::timestamptz
                     AND ($4::uuid IS NULL OR a.assigned_agency = $4::uuid)
               )
               SELECT g.bucket,
                      count(a.bucket) AS alert_count,
                      count(*) FILTER (WHERE a.response_time IS NOT NULL OR a.police_notified) AS accepted_count,
                      count(*) FILTER (WHERE a.escalation_level > 0) AS escalated_count,
                      count(*) FILTER (WHERE a.status = 'cancelled') AS cancelled_count,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY a.response_time) AS median_s,
                      percentile_cont(0.9) WITHIN GROUP (ORDER BY a.response_time) AS p90_s
               FROM generate_series(0, $5::int - 1) AS k
               CROSS JOIN LATERAL (SELECT $1 + k * $3 * INTERVAL '1 second' AS bucket) g
               LEFT JOIN alerts a ON a.bucket = g.bucket
               GROUP BY g.bucket
               ORDER BY g.bucket""",
            window.start,
            window.end,
            window.interval.total_seconds(),
            department_id,
            window.bucket_count,
        )
        return [
            ReportBucket(
                start_time=r["bucket"],
                alert_count=r["alert_count"],
                accepted_count=r["accepted_count"],
                escalated_count=r["escalated_count"],
                cancelled_count=r["cancelled_count"],
                median_response_time=None if r["median_s"] is None else timedelta(seconds=r["median_s"]),
                p90_response_time=None if r["p90_s"] is None else timedelta(seconds=r["p90_s"]),
            )
            for r in rows
        ]
