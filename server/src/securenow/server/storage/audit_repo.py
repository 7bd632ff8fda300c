"""Audit log writes (append-only; sealed into a hash chain by securenow_audit_seal)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from securenow.server.domain.accounts import Principal
from securenow.server.storage.rows import Conn


@dataclass(frozen=True)
class AuditEntry:
    action: str
    resource_type: str
    resource_id: str | None
    outcome: str = "OK"
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChainAnchor:
    """An audit chain entry's position and hash, kept outside the database."""

    chain_seq: int
    entry_hash: bytes

    def __str__(self) -> str:
        return f"{self.chain_seq}:{self.entry_hash.hex()}"

    @classmethod
    def parse(cls, text: str) -> ChainAnchor:
        """ "<chain_seq>:<hex entry_hash>", as printed."""
        seq, sep, digest = text.strip().partition(":")
        try:
            if not sep or not seq.isascii() or not seq.isdigit():
                raise ValueError
            return cls(int(seq), bytes.fromhex(digest))
        except ValueError:
            raise ValueError(f"{text!r} is not <chain_seq>:<hex hash>") from None


INSERT_SQL = """INSERT INTO audit_log (actor_type, actor_id, actor_role, action, resource_type, resource_id,
                                       outcome, details)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""


def audit_args(actor: Principal | None, entry: AuditEntry) -> tuple[Any, ...]:
    return (
        actor.kind.value if actor else "anonymous",
        actor.id if actor else None,
        actor.role.value if actor else None,
        entry.action,
        entry.resource_type,
        entry.resource_id,
        entry.outcome,
        entry.details or {},
    )


class AuditRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def record(self, actor: Principal | None, entry: AuditEntry) -> None:
        await self.conn.execute(INSERT_SQL, *audit_args(actor, entry))

    async def record_many(self, entries: list[tuple[Principal | None, AuditEntry]]) -> None:
        """Several entries in one round trip."""
        await self.conn.executemany(INSERT_SQL, [audit_args(actor, entry) for actor, entry in entries])

    async def seal(self, batch_size: int = 1000) -> int:
        return int(await self.conn.fetchval("SELECT securenow_audit_seal($1)", batch_size))

    async def head(self) -> ChainAnchor | None:
        """The newest sealed entry."""
        row = await self.conn.fetchrow(
            "SELECT chain_seq, entry_hash FROM audit_log WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1"
        )
        return None if row is None else ChainAnchor(int(row["chain_seq"]), bytes(row["entry_hash"]))

    async def hash_at(self, chain_seq: int) -> bytes | None:
        value = await self.conn.fetchval("SELECT entry_hash FROM audit_log WHERE chain_seq = $1", chain_seq)
        return None if value is None else bytes(value)

    async def verify(self) -> int | None:
        """chain_seq of the first tampered entry, or None when the chain is intact."""
        result = await self.conn.fetchval("SELECT securenow_audit_verify()")
        return None if result is None else int(result)
