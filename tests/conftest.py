"""Test stack: real PostgreSQL (with PostGIS) and real Redis, an in-process server on
port 0, clients through the generated stubs. Each test starts from empty tables and
an empty Redis database.

SECURENOW_TEST_DATABASE_URL and SECURENOW_TEST_REDIS_URL choose the stack; the
database named there is dropped and recreated at session start.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from securenow.client import SecureNowClient
from securenow.server import migrations
from securenow.server.bootstrap import App
from securenow.server.runtime import Runtime
from securenow.server.settings import Settings
from tests.helpers import Api

DATABASE_URL = os.environ.get(
    "SECURENOW_TEST_DATABASE_URL", "postgresql://securenow:securenow@127.0.0.1:5432/securenow_test"
)
REDIS_URL = os.environ.get("SECURENOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_SECRET_KEY = "test-secret-key-for-the-securenow-suite-0123456789"
TEST_DATA_KEY = base64.b64encode(b"k" * 32).decode()

TABLES = """users, auth_sessions, refresh_tokens, idempotency_keys, audit_log, providers, bookings,
    provider_reservations, police_departments, agency_api_keys, sos_alerts, police_incidents,
    sos_alert_locations, outbox, dispatch_sequences, webhook_deliveries, analytics_events, safety_scores,
    search_index_state"""


def admin_url(url: str, database: str = "postgres") -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": DATABASE_URL,
        "redis_url": REDIS_URL,
        "secret_key": TEST_SECRET_KEY,
        "data_key": TEST_DATA_KEY,
        "grpc_addr": "127.0.0.1:0",
        "http_addr": "127.0.0.1:0",
        "db_pool_max_size": 10,
        "shutdown_grace_seconds": 2.0,
        # Quick webhook retries so the dead-letter path is observable in a test.
        "webhook_max_attempts": 3,
        "webhook_base_delay_seconds": 0.2,
        "webhook_timeout_seconds": 2.0,
        "cors_origins": "http://console.example",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def recreate_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url(url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def database() -> str:
    await recreate_database(DATABASE_URL)
    migrations.apply(DATABASE_URL)
    return DATABASE_URL


@pytest.fixture(scope="session")
async def app(database: str) -> AsyncIterator[App]:
    application = await App.create(make_settings())
    return application


@pytest.fixture(scope="session")
async def runtime(app: App) -> AsyncIterator[Runtime]:
    rt = Runtime(app)
    await rt.start(grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0")
    yield rt
    await rt.stop(grace=1)


def target(runtime: Runtime) -> str:
    """The session server's gRPC address, as the SDK takes it."""
    return f"127.0.0.1:{runtime.grpc_port}"


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[SecureNowClient]:
    """A Python SDK client of the session server."""
    async with SecureNowClient(target(runtime)) as c:
        yield c


@pytest.fixture(scope="session")
async def channel(runtime: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="session")
async def redis_client(database: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def db_conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for tests that check what was stored."""
    # Lets clean_state empty audit_log, which otherwise refuses TRUNCATE (migration 08).
    conn = await asyncpg.connect(database, server_settings={"securenow.allow_audit_truncate": "on"})
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
async def clean_state(db_conn: asyncpg.Connection, redis_client: aioredis.Redis, app: App) -> None:
    """Every test starts from empty tables and an empty Redis database.
    (tests/unit overrides this fixture: those tests need no stack.)"""
    tables = [t.strip() for t in TABLES.split(",")]
    probe = " UNION ALL ".join(f"SELECT '{t}' FROM (SELECT 1 FROM {t} LIMIT 1) AS x" for t in tables)
    for attempt in range(10):
        try:
            # Only non-empty tables: truncating dozens of empty partitions is slow.
            used = [r[0] for r in await db_conn.fetch(probe)]
            if used:
                await db_conn.execute(f"TRUNCATE {', '.join(used)} RESTART IDENTITY CASCADE")
            break
        except asyncpg.DeadlockDetectedError:
            # The server's workers keep querying; a deadlock with them just means "again".
            if attempt == 9:
                raise
    await redis_client.flushdb()
    app.authenticator.forget_api_keys()


@pytest.fixture
async def api(channel: grpc.aio.Channel, app: App) -> Api:
    return Api(channel, app)


@asynccontextmanager
async def extra_replica(instance_id: str, **settings: object) -> AsyncIterator[Runtime]:
    """Another server replica on its own port, sharing Postgres and Redis, without
    background workers (the session's runtime runs those), with these settings."""
    rt = Runtime(await App.create(make_settings(instance_id=instance_id, run_workers=False, **settings)))
    await rt.start(grpc_addr="127.0.0.1:0", http_addr=None)
    try:
        yield rt
    finally:
        await rt.stop(grace=1)


@pytest.fixture
async def replica(database: str) -> AsyncIterator[Runtime]:
    """A second replica with fast redelivery of unacknowledged dispatch events."""
    async with extra_replica(
        "replica-b", dispatch_redeliver_after_seconds=1.0, dispatch_claim_interval_seconds=0.3
    ) as rt:
        yield rt


def server_env() -> dict[str, str]:
    """Environment for running `securenow` commands against the test database."""
    return {
        **os.environ,
        "SECURENOW_DATABASE_URL": DATABASE_URL,
        "SECURENOW_REDIS_URL": REDIS_URL,
        "SECURENOW_SECRET_KEY": TEST_SECRET_KEY,
        "SECURENOW_DATA_KEY": TEST_DATA_KEY,
        "SECURENOW_LOG_LEVEL": "WARNING",
    }
