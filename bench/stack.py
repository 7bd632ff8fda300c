"""The system under test: a fresh database, the server as separate processes, and the
data the scenarios need (departments with API keys, people, providers)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from securenow.server import migrations
from securenow.v1 import agency_pb2, agency_pb2_grpc, auth_pb2, auth_pb2_grpc

BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get("BENCH_POSTGRES_ADMIN_URL", "postgresql://securenow:securenow@127.0.0.1:5432/postgres")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://securenow:securenow@127.0.0.1:5432/securenow_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
SECRET_KEY = "bench-secret-key-0123456789-0123456789-0123456789"
DATA_KEY = base64.b64encode(b"b" * 32).decode()
PASSWORD = "Bench-passw0rd"
# 100 departments on a 10 x 10 grid of 0.1-degree squares around this corner.
GRID_ORIGIN = (37.0, -122.5)
GRID_STEP = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        "SECURENOW_DATABASE_URL": DATABASE_URL,
        "SECURENOW_REDIS_URL": REDIS_URL,
        "SECURENOW_SECRET_KEY": SECRET_KEY,
        "SECURENOW_DATA_KEY": DATA_KEY,
        "SECURENOW_LOG_LEVEL": "WARNING",
        "SECURENOW_DB_POOL_MAX_SIZE": "30",
        "SECURENOW_ACK_TIMEOUT_SECONDS": "600",  # no escalations during measurements
        # Every simulated person signs up from 127.0.0.1.
        "SECURENOW_SIGN_IN_ATTEMPTS_PER_ADDRESS_PER_MINUTE": "100000",
        # One simulated caller makes thousands of searches: limits stay on (their Redis
        # round trip is part of the figure) but out of reach.
        "SECURENOW_LOOKUP_CALLS_PER_MINUTE": "10000000",
        **overrides,
    }


async def fresh_database() -> None:
    name = DATABASE_URL.rsplit("/", 1)[1]
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    migrations.apply(DATABASE_URL)
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL)
    await r.flushdb()
    await r.aclose()


@dataclass
class Server:
    port: int
    http_port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process (or of all its processes)."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


LOG_DIR = Path(__file__).resolve().parent / "results"


def _spawn_server(port: int, http_port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    LOG_DIR.mkdir(exist_ok=True)
    with (LOG_DIR / f"server-{port}.log").open("ab") as log:  # warnings and errors only
        return subprocess.Popen(
            [str(BIN / "securenow"), "serve"],
            env=server_env(
                SECURENOW_GRPC_ADDR=f"127.0.0.1:{port}", SECURENOW_HTTP_ADDR=f"127.0.0.1:{http_port}", **env
            ),
            stdout=log,
            stderr=log,
        )


async def start_server(**env: str) -> Server:
    port, http_port = free_port(), free_port()
    proc = _spawn_server(port, http_port, env)
    server = Server(port, http_port, proc)
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(server.address) as ch:
        while True:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.aio.AioRpcError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            await asyncio.sleep(0.1)


def cell_center(i: int) -> tuple[float, float]:
    row, col = divmod(i, 10)
    return GRID_ORIGIN[0] + (row + 0.5) * GRID_STEP, GRID_ORIGIN[1] + (col + 0.5) * GRID_STEP


def cell_polygon(i: int) -> str:
    row, col = divmod(i, 10)
    lat0, lng0 = GRID_ORIGIN[0] + row * GRID_STEP, GRID_ORIGIN[1] + col * GRID_STEP
    ring = [
        [lng0, lat0],
        [lng0 + GRID_STEP, lat0],
        [lng0 + GRID_STEP, lat0 + GRID_STEP],
        [lng0, lat0 + GRID_STEP],
        [lng0, lat0],
    ]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


@dataclass
class Fixtures:
    admin_token: str
    departments: list[tuple[str, str]] = field(default_factory=list)  # (department id, api key)
    people: list[str] = field(default_factory=list)  # access tokens


async def create_fixtures(server: Server, *, departments: int, people: int) -> Fixtures:
    email = f"admin-{uuid.uuid4().hex[:8]}@bench.local"
    await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "securenow"), "create-admin", "--email", email, "--password", PASSWORD],
        env=server_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    async with grpc.aio.insecure_channel(server.address) as ch:
        auth = auth_pb2_grpc.AuthServiceStub(ch)
        admin = await auth.SignIn(auth_pb2.SignInRequest(email=email, password=PASSWORD))
        md = (("authorization", f"Bearer {admin.access_token}"),)
        fixtures = Fixtures(admin.access_token)
        agency = agency_pb2_grpc.AgencyServiceStub(ch)
        for i in range(departments):
            dept = await agency.RegisterDepartment(
                agency_pb2.RegisterDepartmentRequest(
                    department_name=f"Bench PD {i}", jurisdiction_geojson=cell_polygon(i)
                ),
                metadata=md,
            )
            key = await agency.IssueApiKey(agency_pb2.IssueApiKeyRequest(department_id=dept.department.id), metadata=md)
            fixtures.departments.append((dept.department.id, key.api_key))
        for i in range(people):
            signed = await auth.SignUp(
                auth_pb2.SignUpRequest(
                    email=f"person-{i}-{uuid.uuid4().hex[:6]}@bench.local",
                    phone=f"+1555{uuid.uuid4().int % 10**7:07d}",
                    first_name="Bench",
                    last_name=f"Person{i}",
                    password=PASSWORD,
                )
            )
            fixtures.people.append(signed.access_token)
    return fixtures
