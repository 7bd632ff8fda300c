"""Webhook deliveries: leased by any replica, retried with backoff, dead-lettered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securenow.server.storage.rows import Conn


@dataclass(frozen=True)
class WebhookJob:
    id: int
    department_id: str
    event_id: str
    event_type: str
    body: dict[str, Any]
    attempts: int
    url: str
    credentials: dict[str, Any] | None


class WebhooksRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def lease_due(
        self, limit: int, lease_seconds: float, *, per_department: int, running: dict[str, int]
    ) -> list[WebhookJob]:
        """Takes up to `limit` due webhook deliveries for `lease_seconds` (other replicas
        skip them meanwhile), fairly: at most `per_department` running at once for one
        department (`running`: what this process is sending now, by department), the
        oldest of each department first, so a department with a backlog or a slow
        endpoint cannot crowd out the others. Deliveries of a department that is not
        active are held: they stay pending until it is reactivated."""
        rows = await self.conn.fetch(
            """WITH running AS (
                   SELECT * FROM unnest($3::uuid[], $4::int[]) AS r(department_id, n)),
               ranked AS (
                   SELECT w.id, w.department_id,
                          row_number() OVER (PARTITION BY w.department_id ORDER BY w.next_attempt_at, w.id) AS n
                   FROM webhook_deliveries w JOIN police_departments d ON d.id = w.department_id
                   WHERE w.status = 'pending' AND w.next_attempt_at <= now() AND d.status = 'active'),
               due AS (
                   SELECT w.id FROM webhook_deliveries w JOIN ranked q ON q.id = w.id
                        LEFT JOIN running r ON r.department_id = q.department_id
                   WHERE q.n <= $5 - COALESCE(r.n, 0) AND w.status = 'pending' AND w.next_attempt_at <= now()
                   ORDER BY q.n, w.next_attempt_at LIMIT $1 FOR UPDATE OF w SKIP LOCKED)
               UPDATE webhook_deliveries w SET next_attempt_at = now() + make_interval(secs => $2)
               FROM due, police_departments d
               WHERE w.id = due.id AND d.id = w.department_id
               RETURNING w.id, w.department_id, w.event_id, w.event_type, w.body, w.attempts, d.webhook_url,
                         d.api_credentials""",
            limit,
            lease_seconds,
            list(running),
            list(running.values()),
            per_department,
        )
        return [
            WebhookJob(
                id=r["id"],
                department_id=str(r["department_id"]),
                event_id=r["event_id"],
                event_type=r["event_type"],
                body=r["body"],
                attempts=r["attempts"],
                url=r["webhook_url"] or "",
                credentials=r["api_credentials"],
            )
            for r in rows
        ]

    async def delivered(self, job_id: int) -> None:
        await self.conn.execute(
            """UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, delivered_at = now(),
                      last_error = NULL WHERE id = $1""",
            job_id,
        )

    async def failed(self, job_id: int, error: str, next_attempt_at: datetime | None) -> None:
        """Records a failed attempt; `next_attempt_at` None dead-letters the delivery."""
        await self.conn.execute(
            """UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $2,
                      status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,
                      next_attempt_at = COALESCE($3, next_attempt_at)
               WHERE id = $1""",
            job_id,
            error[:1000],
            next_attempt_at,
        )
