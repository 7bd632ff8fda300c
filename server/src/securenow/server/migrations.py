"""Schema migrations: plain SQL files in migrations/ applied by yoyo-migrations.

Two replicas may run `securenow migrate` at once: both take a PostgreSQL advisory
lock first, so one migrates while the other waits and then finds nothing to do.
Holding that lock also makes it safe to clear a yoyo lock row left behind by a
migrator that was killed.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from yoyo import get_backend, read_migrations
from yoyo.backends.base import DatabaseBackend

_LOCK_KEY = zlib.crc32(b"securenow:migrate")


def migrations_dir() -> Path:
    configured = os.environ.get("SECURENOW_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    # Source checkout: <repo>/server/src/securenow/server/migrations.py -> <repo>/migrations
    return Path(__file__).resolve().parents[4] / "migrations"


def _yoyo_url(database_url: str) -> str:
    scheme, _sep, rest = database_url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return database_url


@dataclass(frozen=True)
class MigrationStatus:
    id: str
    applied: bool


@contextmanager
def _migration_lock(database_url: str) -> Iterator[DatabaseBackend]:
    with psycopg.connect(database_url, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        backend = get_backend(_yoyo_url(database_url))
        try:
            backend.break_lock()  # only a dead migrator can own it while we hold the advisory lock
            with backend.lock():
                yield backend
        finally:
            backend.connection.close()
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def apply(database_url: str) -> list[str]:
    """Applies every pending migration; returns the ids applied."""
    migrations = read_migrations(str(migrations_dir()))
    with _migration_lock(database_url) as backend:
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
        return [m.id for m in pending]


def rollback(database_url: str, *, steps: int | None) -> list[str]:
    """Rolls back the last `steps` migrations (all when None); returns their ids."""
    migrations = read_migrations(str(migrations_dir()))
    with _migration_lock(database_url) as backend:
        applied = backend.to_rollback(migrations)
        chosen = applied if steps is None else applied[:steps]
        backend.rollback_migrations(chosen)
        return [m.id for m in chosen]


def status(database_url: str) -> list[MigrationStatus]:
    migrations = read_migrations(str(migrations_dir()))
    backend = get_backend(_yoyo_url(database_url))
    try:
        applied = {m.id for m in migrations if backend.is_applied(m)}
    finally:
        backend.connection.close()
    return [MigrationStatus(m.id, m.id in applied) for m in migrations]
