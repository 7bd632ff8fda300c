"""The schema: migrations up, down and up again; two migrators at once; partitions
created ahead of time; every table of the seed with its indexes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from securenow.server import migrations
from tests.conftest import DATABASE_URL, recreate_database

SCRATCH = urlunsplit(urlsplit(DATABASE_URL)._replace(path=urlsplit(DATABASE_URL).path + "_migrations"))
SEED_TABLES = {
    "users",
    "providers",
    "sos_alerts",
    "bookings",
    "police_incidents",
    "analytics_events",
    "safety_scores",
    "police_departments",
}
SEED_INDEXES = {
    "idx_users_location",
    "idx_sos_alerts_created_at",
    "idx_bookings_status",
    "idx_providers_type_location",
}
SEED_ENUMS = {
    "user_role",
    "user_status",
    "verification_status",
    "provider_type",
    "sos_status",
    "alert_priority",
    "service_type",
    "booking_status",
    "payment_status",
    "incident_type",
    "incident_priority",
    "incident_status",
    "department_status",
}


async def schema_of(url: str) -> tuple[set[str], set[str], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        enums = {r[0] for r in await conn.fetch("SELECT typname FROM pg_type WHERE typtype = 'e'")}
        return tables, indexes, enums
    finally:
        await conn.close()


async def test_migrations_go_up_down_and_up_again(database: str) -> None:
    await recreate_database(SCRATCH)
    applied = migrations.apply(SCRATCH)
    assert applied == [m.id for m in migrations.status(SCRATCH)]
    up = await schema_of(SCRATCH)
    assert up[0] >= SEED_TABLES
    assert up[1] >= SEED_INDEXES
    assert up[2] >= SEED_ENUMS
    rolled = migrations.rollback(SCRATCH, steps=None)
    assert rolled == list(reversed(applied))
    tables, _, enums = await schema_of(SCRATCH)
    assert not (SEED_TABLES & tables)
    assert not (SEED_ENUMS & enums)
    assert migrations.apply(SCRATCH) == applied
    assert await schema_of(SCRATCH) == up


async def test_two_replicas_migrating_at_once_apply_each_migration_once(database: str) -> None:
    await recreate_database(SCRATCH)
    env = {**os.environ, "SECURENOW_DATABASE_URL": SCRATCH}
    securenow = str(Path(sys.executable).parent / "securenow")
    procs = [
        await asyncio.create_subprocess_exec(securenow, "migrate", env=env, stdout=asyncio.subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [(await p.communicate())[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    counts = sorted(int(out.split()[1]) for out in outputs)  # "applied N migration(s)"
    assert counts == [0, len(migrations.status(SCRATCH))]
    conn = await asyncpg.connect(SCRATCH)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM _yoyo_migration")
    finally:
        await conn.close()
    assert applied == len(migrations.status(SCRATCH))


async def test_partitions_are_created_ahead_and_idempotently(db_conn: asyncpg.Connection) -> None:
    created = await db_conn.fetchval("SELECT securenow_ensure_partitions('2031-06-15'::timestamptz)")
    assert created > 0
    names = {r[0] for r in await db_conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE '%\\_20%'")}
    assert {"bookings_2024", "bookings_2033", "analytics_events_2024_01", "analytics_events_2031_09"} <= names
    assert await db_conn.fetchval("SELECT securenow_ensure_partitions('2031-06-15'::timestamptz)") == 0
    # Rows land in their partition.
    assert (
        await db_conn.fetchval("SELECT tableoid::regclass::text FROM (SELECT tableoid FROM analytics_events LIMIT 0) x")
        is None
    )
