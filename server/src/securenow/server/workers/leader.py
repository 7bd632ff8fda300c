"""Leadership through a PostgreSQL session advisory lock held on a dedicated
connection: if the leader dies, its connection closes and the lock is free again."""

from __future__ import annotations

import zlib

import asyncpg


def lock_key(name: str) -> int:
    return zlib.crc32(f"securenow:{name}".encode())


class AdvisoryLeader:
    def __init__(self, dsn: str, name: str) -> None:
        self._dsn = dsn
        self._key = lock_key(name)
        self.conn: asyncpg.Connection | None = None

    async def try_acquire(self) -> bool:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self._dsn, timeout=5)
        got = bool(await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        if not got:
            await self.release()
        return got

    async def release(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()
