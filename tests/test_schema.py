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
from tests.helpers import Api

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


async def test_partitions_are_created_ahead_and_idempotently(api: Api, db_conn: asyncpg.Connection) -> None:
    created = await db_conn.fetchval("SELECT securenow_ensure_partitions('2031-06-15'::timestamptz)")
    assert created > 0
    names = {r[0] for r in await db_conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE '%\\_20%'")}
    assert {"bookings_2024", "bookings_2033", "analytics_events_2024_01", "analytics_events_2031_09"} <= names
    assert await db_conn.fetchval("SELECT securenow_ensure_partitions('2031-06-15'::timestamptz)") == 0

    # Rows land in the partition of their UTC year (bookings) or month (analytics events),
    # on either side of the boundary.
    admin = await api.admin()
    _, provider = await api.verified_provider(admin)
    customer = await api.sign_up()

    async def booking_partition(starts: str) -> str:
        booking_id = await db_conn.fetchval(
            """INSERT INTO bookings (user_id, provider_id, service_type, booking_date, duration, location_data,
                                     total_price, currency_code)
               VALUES ($1, $2, 'security_guard', $3::text::timestamptz, 1, '{}', 45, 'USD') RETURNING id""",
            customer.id,
            provider.id,
            starts,
        )
        return str(await db_conn.fetchval("SELECT tableoid::regclass::text FROM bookings WHERE id = $1", booking_id))

    async def event_partition(at: str) -> str:
        event_id = await db_conn.fetchval(
            """INSERT INTO analytics_events (user_id, event_type, event_data, timestamp)
               VALUES ($1, 'app_open', '{}', $2::text::timestamptz) RETURNING id""",
            customer.id,
            at,
        )
        return str(
            await db_conn.fetchval("SELECT tableoid::regclass::text FROM analytics_events WHERE id = $1", event_id)
        )

    # (One provider, one-hour bookings: they must not overlap.)
    assert await booking_partition("2032-12-31 21:59:59+00") == "bookings_2032"
    assert await booking_partition("2033-01-01 00:00:00+01") == "bookings_2032"  # 23:00 UTC
    assert await booking_partition("2033-01-01 00:00:00+00") == "bookings_2033"
    assert await event_partition("2031-08-31 23:59:59.999999+00") == "analytics_events_2031_08"
    assert await event_partition("2031-09-01 01:00:00+02") == "analytics_events_2031_08"  # 23:00 UTC
    assert await event_partition("2031-09-01 00:00:00+00") == "analytics_events_2031_09"
