"""The raw limits each SecureNow figure is compared with, measured in the same run on
the same machine: PostgreSQL single-row insert+commit loops and redis-benchmark."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg


async def postgres_insert_commit(database_url: str, *, connections: int, seconds: float) -> dict[str, Any]:
    """Rows/s of `INSERT ... ; COMMIT` (autocommit, durable: synchronous_commit on)."""
    setup = await asyncpg.connect(database_url)
    await setup.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
    sync = await setup.fetchval("SHOW synchronous_commit")
    await setup.close()
    conns = [await asyncpg.connect(database_url) for _ in range(connections)]
    done = 0
    end = time.perf_counter() + seconds

    async def loop(conn: asyncpg.Connection) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await conn.execute("INSERT INTO bench_raw (payload) VALUES ($1::jsonb)", '{"k": 1}')
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    return {"connections": connections, "rows_per_s": done / elapsed, "synchronous_commit": sync}


def redis_benchmark(redis_url: str, requests: int = 50_000, clients: int = 50) -> dict[str, float]:
    """redis-benchmark for the commands SecureNow uses on its hot paths."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    parts = urlsplit(redis_url)
    base = [
        binary,
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 6379),
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-q",
        "--dbnum",
        parts.path.lstrip("/") or "0",
    ]
    commands = {
        "SET": ["SET", "bench:key", "37.77,-122.41,1700000000"],
        "GET": ["GET", "bench:key"],
        "PUBLISH": ["PUBLISH", "bench:channel", "payload"],
        "XADD": ["XADD", "bench:stream", "MAXLEN", "~", "10000", "*", "type", "alert_raised", "payload", "{}"],
        # A hub's read of a department stream (one entry), the sign-in limiter's
        # counter, a provider's last-seen stamp.
        "XREAD": ["XREAD", "COUNT", "1", "STREAMS", "bench:stream", "0-0"],
        "INCR": ["INCR", "bench:counter"],
        "ZADD": ["ZADD", "bench:last_seen", "1700000000", "provider"],
        "GEOADD": ["GEOADD", "bench:geo", "-122.41", "37.77", "provider"],
        "GEOSEARCH": [
            "GEOSEARCH",
            "providers:locations",
            "FROMLONLAT",
            "-122.0",
            "37.5",
            "BYRADIUS",
            "2000",
            "m",
            "ASC",
            "COUNT",
            "10",
            "WITHDIST",
            "WITHCOORD",
        ],
    }
    out = {}
    for name, cmd in commands.items():
        text = subprocess.run(base + cmd, capture_output=True, text=True, timeout=120).stdout
        match = re.findall(r"([\d.]+) requests per second", text)
        if match:
            out[name] = float(match[-1])
    return out
