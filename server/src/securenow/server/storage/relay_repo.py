"""Outbox reads and writes of the relay (leader only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from securenow.server.storage.rows import Conn

COLUMNS = "id, topic, event_type, aggregate_id, department_id, payload, dept_seq, created_at"


@dataclass(frozen=True)
class OutboxEvent:
    id: int
    topic: str
    event_type: str
    aggregate_id: str | None
    department_id: str | None
    payload: dict[str, Any]
    dept_seq: int | None
    created_at: datetime


def _event(r: asyncpg.Record) -> OutboxEvent:
    return OutboxEvent(
        id=r["id"],
        topic=r["topic"],
        event_type=r["event_type"],
        aggregate_id=str(r["aggregate_id"]) if r["aggregate_id"] else None,
        department_id=str(r["department_id"]) if r["department_id"] else None,
        payload=r["payload"],
        dept_seq=r["dept_seq"],
        created_at=r["created_at"],
    )


def active_alert_value(user_id: str, lat: float | None, lng: float | None, timestamp: float) -> str:
    """The seed's `sos:active:{alert_id}` value "{user_id},{lat},{lng},{timestamp}": the
    alert's current location and the unix time of that fix, or empty coordinates and
    the time the alert was raised while it has no location."""
    return f"{user_id},{'' if lat is None else lat},{'' if lng is None else lng},{timestamp}"


class RelayRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def sequenced_unpublished(self, limit: int) -> list[OutboxEvent]:
        """Events that have their sequence number but did not reach Redis yet (an earlier
        publish failed). Ordered by department then sequence: whatever the limit cuts,
        each department gets a prefix, so stream ids only ever grow."""
        rows = await self.conn.fetch(
            f"""SELECT {COLUMNS} FROM outbox WHERE published_at IS NULL AND dept_seq IS NOT NULL
                ORDER BY department_id, dept_seq LIMIT $1""",
            limit,
        )
        return [_event(r) for r in rows]

    async def claim_new(self, limit: int) -> list[OutboxEvent]:
        """Takes the oldest unpublished events without a sequence number and gives each
        dispatch event the next number of its department, in id order: one statement,
        so one round trip and one commit on the delivery path.

        The same statement creates the webhook deliveries (one per numbered event whose
        department has a webhook_url; location updates are too frequent): webhooks
        depend on Postgres only, so they keep flowing while Redis is down."""
        rows = await self.conn.fetch(
            """WITH batch AS (
                   SELECT id, department_id FROM outbox
                   WHERE published_at IS NULL AND dept_seq IS NULL ORDER BY id LIMIT $1 FOR UPDATE),
               numbered AS (
                   SELECT id, department_id, row_number() OVER (PARTITION BY department_id ORDER BY id) AS n
                   FROM batch WHERE department_id IS NOT NULL),
               counts AS (
                   SELECT department_id, count(*) AS c FROM numbered GROUP BY department_id),
               tops AS (
                   INSERT INTO dispatch_sequences AS s (department_id, last_seq)
                   SELECT department_id, c FROM counts
                   ON CONFLICT (department_id) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
                   RETURNING department_id, last_seq),
               assigned AS (
                   UPDATE outbox o SET dept_seq = t.last_seq - c.c + n.n
                   FROM numbered n JOIN counts c USING (department_id) JOIN tops t USING (department_id)
                   WHERE o.id = n.id
                   RETURNING o.id, o.dept_seq, o.department_id, o.event_type, o.created_at, o.payload),
               hooks AS (
                   INSERT INTO webhook_deliveries (outbox_id, department_id, event_id, event_type, body)
                   SELECT a.id, a.department_id, a.dept_seq || '-0', a.event_type,
                          jsonb_build_object('event_id', a.dept_seq || '-0', 'event_type', a.event_type,
                                             'event_time', a.created_at, 'department_id', a.department_id,
                                             'data', a.payload)
                   FROM assigned a JOIN police_departments d ON d.id = a.department_id
                   WHERE d.webhook_url IS NOT NULL AND a.event_type <> 'alert_location'
                   ON CONFLICT (outbox_id, department_id) DO NOTHING)
               SELECT o.id, o.topic, o.event_type, o.aggregate_id, o.department_id, o.payload,
                      a.dept_seq, o.created_at
               FROM batch b JOIN outbox o ON o.id = b.id LEFT JOIN assigned a ON a.id = b.id
               ORDER BY o.id""",
            limit,
        )
        return [_event(r) for r in rows]

    async def mark_published(self, ids: list[int]) -> None:
        """Marks events published to Redis (their webhooks exist since claim_new)."""
        await self.conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids)

    async def departments_with_unacked(self) -> list[str]:
        """Departments with numbered events nobody acknowledged (published or not)."""
        rows = await self.conn.fetch(
            """SELECT DISTINCT department_id FROM outbox WHERE dept_seq IS NOT NULL AND acked_at IS NULL
               ORDER BY department_id"""
        )
        return [str(r["department_id"]) for r in rows]

    async def unacked_of_department(
        self, department_id: str, after_seq: int, limit: int, *, published_only: bool
    ) -> list[OutboxEvent]:
        """A department's unacknowledged events after `after_seq`, in stream order (a
        page of them: streams are rebuilt in batches)."""
        published = "AND published_at IS NOT NULL" if published_only else ""
        rows = await self.conn.fetch(
            f"""SELECT {COLUMNS} FROM outbox
                WHERE department_id = $1 AND dept_seq > $2 AND dept_seq IS NOT NULL AND acked_at IS NULL {published}
                ORDER BY dept_seq LIMIT $3""",
            department_id,
            after_seq,
            limit,
        )
        return [_event(r) for r in rows]

    async def unacked_published_ranges(self) -> list[tuple[str, int, int]]:
        """(department, lowest seq, highest seq) of the published events each department
        has not acknowledged: what its Redis stream must hold."""
        rows = await self.conn.fetch(
            """SELECT department_id, min(dept_seq) AS low, max(dept_seq) AS high FROM outbox
               WHERE dept_seq IS NOT NULL AND acked_at IS NULL AND published_at IS NOT NULL
               GROUP BY department_id"""
        )
        return [(str(r["department_id"]), int(r["low"]), int(r["high"])) for r in rows]

    async def trim_points(self, keep_seconds: float) -> list[tuple[str, int]]:
        """Per department: the lowest stream id it still needs, i.e. its oldest
        unacknowledged event, or else the first one published within `keep_seconds`
        (kept so that replicas still reading live get them). Departments with nothing
        old enough are left out. Everything below the id is acknowledged and old."""
        rows = await self.conn.fetch(
            """SELECT department_id, least(oldest_unacked, newest_old + 1) AS keep_from FROM (
                   SELECT s.department_id,
                          (SELECT min(o.dept_seq) FROM outbox o WHERE o.department_id = s.department_id
                             AND o.dept_seq IS NOT NULL AND o.acked_at IS NULL) AS oldest_unacked,
                          (SELECT max(o.dept_seq) FROM outbox o WHERE o.department_id = s.department_id
                             AND o.dept_seq IS NOT NULL
                             AND o.published_at < now() - make_interval(secs => $1)) AS newest_old
                   FROM dispatch_sequences s) d
               WHERE newest_old IS NOT NULL""",
            keep_seconds,
        )
        return [(str(r["department_id"]), int(r["keep_from"])) for r in rows]

    async def published_between(self, department_id: str, after_seq: int, before_seq: int | None) -> list[OutboxEvent]:
        """A department's published events with after_seq < seq < before_seq (None: no
        upper bound), in order: what a CAD resuming from an old cursor needs that its
        trimmed stream no longer holds."""
        rows = await self.conn.fetch(
            f"""SELECT {COLUMNS} FROM outbox
                WHERE department_id = $1 AND dept_seq > $2 AND ($3::bigint IS NULL OR dept_seq < $3)
                  AND published_at IS NOT NULL
                ORDER BY dept_seq""",
            department_id,
            after_seq,
            before_seq,
        )
        return [_event(r) for r in rows]

    async def old_unacked_published(
        self, older_than_seconds: float, after: tuple[uuid.UUID, int], limit: int
    ) -> list[tuple[str, int]]:
        """(department, seq) of events published more than `older_than_seconds` ago and
        still unacknowledged, in (department, seq) order after `after` (a keyset cursor
        over idx_outbox_unacked, so passes walk the whole backlog in turn)."""
        rows = await self.conn.fetch(
            """SELECT department_id, dept_seq FROM outbox
               WHERE dept_seq IS NOT NULL AND acked_at IS NULL AND (department_id, dept_seq) > ($2, $3)
                 AND published_at < now() - make_interval(secs => $1)
               ORDER BY department_id, dept_seq LIMIT $4""",
            older_than_seconds,
            after[0],
            after[1],
            limit,
        )
        return [(str(r["department_id"]), int(r["dept_seq"])) for r in rows]

    async def unacked_published_seqs(self, department_id: str) -> list[int]:
        rows = await self.conn.fetch(
            """SELECT dept_seq FROM outbox WHERE department_id = $1 AND dept_seq IS NOT NULL
                 AND acked_at IS NULL AND published_at IS NOT NULL ORDER BY dept_seq""",
            department_id,
        )
        return [int(r["dept_seq"]) for r in rows]

    async def open_alert_markers(self) -> list[tuple[str, str]]:
        """`sos:active:{id}` keys and values of every open alert (to restore Redis), as
        the relay writes them (active_alert_value)."""
        rows = await self.conn.fetch(
            """SELECT id, user_id, (location_data->>'lat')::float8 AS lat, (location_data->>'lng')::float8 AS lng,
                      extract(epoch FROM coalesce((location_data->>'time')::timestamptz, created_at))::float8 AS ts
               FROM sos_alerts WHERE status IN ('active', 'responding')"""
        )
        return [
            (f"sos:active:{r['id']}", active_alert_value(str(r["user_id"]), r["lat"], r["lng"], r["ts"])) for r in rows
        ]

    async def mark_acked(self, acks: list[tuple[str, int]]) -> None:
        """Marks these (department, seq) events acknowledged, in one statement. Only
        events whose XACK removed them from the group's pending list belong here: an
        ack of an id nothing was pending under (a duplicate, an event not sent yet, an
        id not issued yet) must not settle an event a later rebuild of the stream from
        PostgreSQL would then leave out."""
        await self.conn.execute(
            """UPDATE outbox o SET acked_at = now()
               FROM unnest($1::uuid[], $2::bigint[]) AS a(department_id, seq)
               WHERE o.department_id = a.department_id AND o.dept_seq = a.seq AND o.acked_at IS NULL""",
            [department for department, _ in acks],
            [seq for _, seq in acks],
        )

    async def last_issued_seq(self, department_id: str) -> int:
        """The highest sequence number the department's events have been given (0: none
        yet); no event id above it was ever issued."""
        last = await self.conn.fetchval(
            "SELECT last_seq FROM dispatch_sequences WHERE department_id = $1", department_id
        )
        return int(last or 0)

    async def delete_settled(self, older_than_days: int) -> int:
        result = await self.conn.execute(
            """DELETE FROM outbox WHERE published_at IS NOT NULL
                 AND (dept_seq IS NULL OR acked_at IS NOT NULL)
                 AND created_at < now() - make_interval(days => $1)""",
            older_than_days,
        )
        return int(result.split()[-1])
