"""Nothing that got OK is lost: server processes killed with SIGKILL, Redis killed and
restarted empty. Real processes, their own database and their own Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from securenow.server import migrations
from securenow.v1 import auth_pb2, sos_pb2, sos_pb2_grpc
from tests.conftest import DATABASE_URL, recreate_database
from tests.dispatch_helpers import SF, Cad, location, register_department
from tests.helpers import PASSWORD, Account, Api, unique_email
from tests.processes import VENV_BIN, RedisProcess, ServerProcess

pytestmark = pytest.mark.slow

FAULTS_DB = urlunsplit(urlsplit(DATABASE_URL)._replace(path=urlsplit(DATABASE_URL).path + "_faults"))


@pytest.fixture
async def faults_db() -> str:
    """A fresh database per test: only the server processes of the test use it."""
    await recreate_database(FAULTS_DB)
    migrations.apply(FAULTS_DB)
    return FAULTS_DB


@pytest.fixture
async def redis_proc() -> AsyncIterator[RedisProcess]:
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for s in started:
        await s.stop()


async def accounts(server: ServerProcess, channel: grpc.aio.Channel) -> tuple[Api, Account, Account]:
    """An admin (created with `securenow create-admin`, as an operator would) and a person."""
    admin_email = unique_email("admin")
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "securenow"),
        "create-admin",
        "--email",
        admin_email,
        "--password",
        PASSWORD,
        env=server.env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await proc.wait() == 0
    api = Api(channel, None)  # type: ignore[arg-type]
    signed = await api.auth.SignIn(auth_pb2.SignInRequest(email=admin_email, password=PASSWORD))
    return api, Account(signed.user, signed.access_token, signed.refresh_token), await api.sign_up()


async def raise_with_retries(
    sos: sos_pb2_grpc.SosServiceStub, person: Account, request_id: str, within: float = 60.0
) -> sos_pb2.SosAlert:
    """What the phone app does: retry with the same request_id until OK."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            req = sos_pb2.RaiseSosRequest(request_id=request_id, location=location(SF), description=request_id[:8])
            return (await sos.RaiseSos(req, metadata=person.md, timeout=5)).alert
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_sigkill_between_commit_and_publish_loses_nothing(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    # A replica without workers commits alerts but never publishes them...
    api_only = ServerProcess(faults_db, redis_proc.url, SECURENOW_RUN_WORKERS="false")
    servers.append(api_only)
    await api_only.start()
    async with grpc.aio.insecure_channel(api_only.address) as ch:
        api, admin, person = await accounts(api_only, ch)
        dept = await register_department(api, admin, SF)
        alerts = [await raise_with_retries(api.sos, person, str(uuid.uuid4())) for _ in range(5)]
    conn = await asyncpg.connect(faults_db)
    try:
        unpublished = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE department_id = $1 AND published_at IS NULL", uuid.UUID(dept.id)
        )
        assert unpublished == 5  # committed, not yet in Redis
    finally:
        await conn.close()
    await api_only.kill()  # ...and dies with SIGKILL.

    replacement = ServerProcess(faults_db, redis_proc.url)
    servers.append(replacement)
    await replacement.start()
    async with grpc.aio.insecure_channel(replacement.address) as ch:
        cad = Cad(ch, dept.api_key)
        try:
            got = [(await cad.next_event("alert_raised", within=20)).alert_raised.alert.id for _ in alerts]
            assert got == [a.id for a in alerts]
        finally:
            await cad.close()


async def test_server_killed_mid_stream_loses_no_acknowledged_raise(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    port = ServerProcess(faults_db, redis_proc.url).port
    first = ServerProcess(faults_db, redis_proc.url, port=port)
    servers.append(first)
    await first.start()
    async with grpc.aio.insecure_channel(first.address) as ch:
        api, admin, person = await accounts(first, ch)
        dept = await register_department(api, admin, SF)

    ok: dict[str, str] = {}  # request_id -> alert id, for every raise that got OK
    request_ids = [str(uuid.uuid4()) for _ in range(40)]
    ten_done = asyncio.Event()

    async def phone() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            sos = sos_pb2_grpc.SosServiceStub(ch)
            for rid in request_ids:
                ok[rid] = (await raise_with_retries(sos, person, rid)).id
                if len(ok) == 10:
                    ten_done.set()

    raising = asyncio.create_task(phone())
    await asyncio.wait_for(ten_done.wait(), 60)
    await first.kill()  # SIGKILL while the phone is raising
    second = ServerProcess(faults_db, redis_proc.url, port=port)
    servers.append(second)
    await second.start()
    await asyncio.wait_for(raising, 120)
    assert len(ok) == len(request_ids)

    async with grpc.aio.insecure_channel(second.address) as ch:
        cad = Cad(ch, dept.api_key)
        try:
            delivered: list[str] = []
            seen_events: set[str] = set()
            while set(delivered) != set(ok.values()):
                msg = await cad.next_event("alert_raised", within=20)
                if msg.event_id in seen_events:
                    continue  # a CAD deduplicates by event id
                seen_events.add(msg.event_id)
                delivered.append(msg.alert_raised.alert.id)
            assert len(delivered) == len(set(delivered))  # one alert per request id: no duplicates
            assert delivered == [ok[rid] for rid in request_ids]  # in the order they were raised
        finally:
            await cad.close()
    conn = await asyncpg.connect(faults_db)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM sos_alerts WHERE id = ANY($1::uuid[])", [uuid.UUID(a) for a in ok.values()]
        )
        assert count == len(request_ids)
    finally:
        await conn.close()


async def test_redis_outage_keeps_raise_working_and_delivery_resumes(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(faults_db, redis_proc.url, SECURENOW_DISPATCH_REDELIVER_AFTER_SECONDS="2")
    servers.append(server)
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as ch:
        api, admin, person = await accounts(server, ch)
        dept = await register_department(api, admin, SF)
        cad = Cad(ch, dept.api_key)
        try:
            before = await raise_with_retries(api.sos, person, str(uuid.uuid4()))
            assert (await cad.next_event("alert_raised")).alert_raised.alert.id == before.id

            redis_proc.kill()
            during = (
                await api.sos.RaiseSos(
                    sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=location(SF)),
                    metadata=person.md,
                    timeout=10,
                )
            ).alert  # OK while Redis is down: it is committed in Postgres
            redis_proc.start()  # back, and empty

            seen = set()
            while during.id not in seen:
                msg = await cad.next(within=30)
                if msg.WhichOneof("kind") == "alert_raised":
                    seen.add(msg.alert_raised.alert.id)
        finally:
            await cad.close()
