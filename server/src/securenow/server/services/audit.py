"""Audit records that do not belong to a successful transaction: refused or failed
calls of mutating RPCs (written by the interceptor), and chain verification."""

from __future__ import annotations

from securenow.server.domain.accounts import Principal
from securenow.server.storage.audit_repo import AuditEntry, ChainAnchor
from securenow.server.storage.postgres import Database


class AuditService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_failure(self, principal: Principal | None, method: str, code: str, reason: str) -> None:
        async with self._db.unit_of_work() as uow:
            await uow.audit.record(principal, AuditEntry(f"rpc:{method}", "rpc", None, code, {"reason": reason}))

    async def seal_and_verify(self, anchor: ChainAnchor | None = None) -> tuple[int, int | None]:
        """Seals pending entries; returns (sealed count, first tampered chain_seq or None).
        The chain verifies itself, which someone able to rewrite the table could redo
        after changing an entry; an `anchor` recorded outside the database (the head
        the worker logs, or that `securenow maintain` printed) catches that too: its
        entry must still have its hash."""
        async with self._db.unit_of_work() as uow:
            sealed = 0
            while batch := await uow.audit.seal():
                sealed += batch
            tampered = await uow.audit.verify()
            if anchor is not None and await uow.audit.hash_at(anchor.chain_seq) != anchor.entry_hash:
                tampered = anchor.chain_seq if tampered is None else min(tampered, anchor.chain_seq)
            return sealed, tampered

    async def head(self) -> ChainAnchor | None:
        async with self._db.reader() as uow:
            return await uow.audit.head()
