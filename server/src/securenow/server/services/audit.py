"""Audit records that do not belong to a successful transaction: refused or failed
calls of mutating RPCs (written by the interceptor), and chain verification."""

from __future__ import annotations

from securenow.server.domain.accounts import Principal
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.postgres import Database


class AuditService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_failure(self, principal: Principal | None, method: str, code: str, reason: str) -> None:
        async with self._db.unit_of_work() as uow:
            await uow.audit.record(principal, AuditEntry(f"rpc:{method}", "rpc", None, code, {"reason": reason}))

    async def seal_and_verify(self) -> tuple[int, int | None]:
        """Seals pending entries; returns (sealed count, first tampered chain_seq or None)."""
        async with self._db.unit_of_work() as uow:
            sealed = 0
            while batch := await uow.audit.seal():
                sealed += batch
            return sealed, await uow.audit.verify()
