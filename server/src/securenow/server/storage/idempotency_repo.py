"""AIP-155 request ids: remember which resource a (caller, operation, request_id) created."""

from __future__ import annotations

from dataclasses import dataclass

from securenow.server.storage.rows import Conn


@dataclass(frozen=True)
class IdempotencyKey:
    request_id: str
    fingerprint: bytes  # hash of the request without its request_id


@dataclass(frozen=True)
class PriorRequest:
    fingerprint: bytes
    resource_id: str


class IdempotencyRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def claim(
        self, principal_id: str, operation: str, key: IdempotencyKey, resource_id: str
    ) -> PriorRequest | None:
        """Records the key for a new resource. If the key was already used, returns the
        earlier request instead (a concurrent first attempt is waited for by the insert)."""
        inserted = await self.conn.fetchval(
            """INSERT INTO idempotency_keys (principal_id, operation, request_id, request_hash, resource_id)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1""",
            principal_id,
            operation,
            key.request_id,
            key.fingerprint,
            resource_id,
        )
        if inserted:
            return None
        return await self.prior(principal_id, operation, key)

    async def prior(self, principal_id: str, operation: str, key: IdempotencyKey) -> PriorRequest:
        """The earlier request with this key (which must exist)."""
        prior = await self.find(principal_id, operation, key)
        if prior is None:
            raise LookupError("expected an earlier request")
        return prior

    async def find(self, principal_id: str, operation: str, key: IdempotencyKey) -> PriorRequest | None:
        row = await self.conn.fetchrow(
            """SELECT request_hash, resource_id FROM idempotency_keys
               WHERE principal_id = $1 AND operation = $2 AND request_id = $3""",
            principal_id,
            operation,
            key.request_id,
        )
        return None if row is None else PriorRequest(bytes(row["request_hash"]), str(row["resource_id"]))

    async def delete_older_than_days(self, days: int) -> int:
        result = await self.conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)", days
        )
        return int(result.split()[-1])
