"""Transactional outbox: events written with the change they describe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from securenow.server.storage.rows import Conn

INSERT_SQL = """INSERT INTO outbox (topic, event_type, aggregate_id, department_id, payload)
                VALUES ($1, $2, $3, $4, $5) RETURNING id"""


@dataclass(frozen=True)
class OutboxRow:
    topic: str
    event_type: str
    payload: dict[str, Any]
    aggregate_id: str | None = None
    department_id: str | None = None


class OutboxRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def add(
        self,
        topic: str,
        event_type: str,
        payload: dict[str, Any],
        *,
        aggregate_id: str | None = None,
        department_id: str | None = None,
    ) -> int:
        return await self.add_row(OutboxRow(topic, event_type, payload, aggregate_id, department_id))

    async def add_row(self, row: OutboxRow) -> int:
        return int(
            await self.conn.fetchval(
                INSERT_SQL, row.topic, row.event_type, row.aggregate_id, row.department_id, row.payload
            )
        )
