"""Transactional outbox: events written with the change they describe."""

from __future__ import annotations

from typing import Any

from securenow.server.storage.rows import Conn


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
        return int(
            await self.conn.fetchval(
                """INSERT INTO outbox (topic, event_type, aggregate_id, department_id, payload)
                   VALUES ($1, $2, $3, $4, $5) RETURNING id""",
                topic,
                event_type,
                aggregate_id,
                department_id,
                payload,
            )
        )
