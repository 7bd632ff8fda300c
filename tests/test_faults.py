"""Chaos: nothing that got OK is lost. Server processes killed with SIGKILL, Redis
killed and restarted empty, PostgreSQL cut off, a CAD connection cut mid-burst.
Real processes, their own database, their own Redis, real TCP proxies.

SECURENOW_CHAOS_RAISES sets the size of the bursts (200 in the regular suite;
`make chaos` runs 1000). Each test prints what it counted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
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
from tests.helpers import PASSWORD, Account, Api, unique_email, wait_for
from tests.processes import VENV_BIN, RedisProcess, ServerProcess, free_port
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

RAISES = int(os.environ.get("SECURENOW_CHAOS_RAISES", "200"))
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
) -> tuple[sos_pb2.SosAlert, int]:
    """What the phone app does: retry with the same request_id until OK. Returns the
    alert and how many attempts it took."""
    deadline = asyncio.get_running_loop().time() + within
    attempts = 0
    while True:
        attempts += 1
        try:
            req = sos_pb2.RaiseSosRequest(request_id=request_id, location=location(SF), description=request_id[:8])
            return (await sos.RaiseSos(req, metadata=person.md, timeout=5)).alert, attempts
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def start_burst(api: Api, person: Account) -> tuple[list[str], asyncio.Task[None]]:
    """RAISES alerts raised one after another (with retries) in the background; the list
    fills with their ids in the order they were raised."""
    raised: list[str] = []

    async def burst() -> None:
        for _ in range(RAISES):
            raised.append((await raise_with_retries(api.sos, person, str(uuid.uuid4())))[0].id)

    return raised, asyncio.create_task(burst())


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
        alerts = [(await raise_with_retries(api.sos, person, str(uuid.uuid4())))[0] for _ in range(5)]
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


async def test_server_killed_mid_burst_loses_no_acknowledged_raise(
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
    request_ids = [str(uuid.uuid4()) for _ in range(RAISES)]
    retries = 0
    a_third_done = asyncio.Event()

    async def phone(ids: list[str]) -> None:
        nonlocal retries
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            sos = sos_pb2_grpc.SosServiceStub(ch)
            for rid in ids:
                alert, attempts = await raise_with_retries(sos, person, rid)
                ok[rid] = alert.id
                retries += attempts - 1
                if len(ok) >= RAISES // 3:
                    a_third_done.set()

    phones = 8
    raising = asyncio.gather(*(phone(request_ids[i::phones]) for i in range(phones)))
    await asyncio.wait_for(a_third_done.wait(), 120)
    await first.kill()  # SIGKILL while the phones are raising
    killed_at = len(ok)
    second = ServerProcess(faults_db, redis_proc.url, port=port)
    servers.append(second)
    await second.start()
    await asyncio.wait_for(raising, 300)
    assert len(ok) == len(request_ids)

    async with grpc.aio.insecure_channel(second.address) as ch:
        cad = Cad(ch, dept.api_key)
        try:
            delivered: list[str] = []
            seen_events: set[str] = set()
            duplicates = 0
            while len(set(delivered)) < len(ok):
                msg = await cad.next_event("alert_raised", within=30)
                if msg.event_id in seen_events:
                    duplicates += 1  # a redelivery: the CAD deduplicates by event id
                    continue
                seen_events.add(msg.event_id)
                delivered.append(msg.alert_raised.alert.id)
                cad.ack(msg.event_id)
        finally:
            await cad.close()
    conn = await asyncpg.connect(faults_db)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM sos_alerts WHERE id = ANY($1::uuid[])", [uuid.UUID(a) for a in ok.values()]
        )
        total = await conn.fetchval("SELECT count(*) FROM sos_alerts")
    finally:
        await conn.close()
    print(
        f"\nkill -9 mid-burst: {len(ok)} raises OK ({killed_at} before the kill, {retries} client retries), "
        f"{stored} in Postgres, {total} alerts in total, {len(delivered)} delivered once after dedup "
        f"({duplicates} redeliveries dropped by event id)"
    )
    assert stored == total == len(request_ids)  # every OK alert stored, none twice
    assert len(delivered) == len(set(delivered)) == len(request_ids)  # each delivered, once after dedup


async def test_redis_outage_keeps_raise_working_and_delivery_resumes(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(faults_db, redis_proc.url, SECURENOW_DISPATCH_REDELIVER_AFTER_SECONDS="2")
    servers.append(server)
    await server.start()
    burst = max(RAISES // 4, 10)
    async with grpc.aio.insecure_channel(server.address) as ch:
        api, admin, person = await accounts(server, ch)
        dept = await register_department(api, admin, SF)
        cad = Cad(ch, dept.api_key)
        expected: list[str] = []
        delivered: list[str] = []
        seen_events: set[str] = set()
        duplicates = 0
        receiving: asyncio.Task[None] | None = None

        async def receive() -> None:
            nonlocal duplicates
            while True:
                msg = await cad.next_event("alert_raised", within=120)
                cad.ack(msg.event_id)
                if msg.event_id in seen_events:
                    duplicates += 1
                    continue
                seen_events.add(msg.event_id)
                delivered.append(msg.alert_raised.alert.id)

        try:
            expected += [(await raise_with_retries(api.sos, person, str(uuid.uuid4())))[0].id for _ in range(burst)]
            receiving = asyncio.create_task(receive())
            redis_proc.kill()  # mid-stream: the CAD is connected and reading
            for _ in range(burst):
                # OK while Redis is down: each is committed in PostgreSQL.
                resp = await api.sos.RaiseSos(
                    sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=location(SF)),
                    metadata=person.md,
                    timeout=10,
                )
                expected.append(resp.alert.id)
            redis_proc.start()  # back, and empty
            expected += [(await raise_with_retries(api.sos, person, str(uuid.uuid4())))[0].id for _ in range(burst)]

            async def all_delivered() -> bool:
                if receiving.done():
                    receiving.result()  # the receiver failed: show why
                return len(set(delivered)) >= len(expected)

            await wait_for(all_delivered, within=120, what="every alert on the CAD stream")
        finally:
            if receiving is not None:
                receiving.cancel()
            await cad.close()
    print(
        f"\nredis outage: {burst} raised before, {burst} OK while Redis was down, {burst} after it came back "
        f"empty; {len(set(delivered))}/{len(expected)} delivered ({duplicates} redeliveries dropped by event id)"
    )
    assert set(delivered) == set(expected)
    assert len(delivered) == len(expected)  # once each after dedup


async def test_postgres_outage_answers_unavailable_and_recovers(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    host, port = urlsplit(faults_db).hostname or "127.0.0.1", urlsplit(faults_db).port or 5432
    proxy = await TcpProxy(host, port).start()
    through_proxy = urlunsplit(urlsplit(faults_db)._replace(netloc=f"securenow:securenow@127.0.0.1:{proxy.port}"))
    server = ServerProcess(through_proxy, redis_proc.url, SECURENOW_DB_ACQUIRE_TIMEOUT_SECONDS="2")
    servers.append(server)
    try:
        await server.start()
        async with grpc.aio.insecure_channel(server.address) as ch:
            api, _, person = await accounts(server, ch)
            ok: list[str] = []
            outcomes: dict[str, int] = {}

            async def attempt() -> None:
                req = sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=location(SF))
                try:
                    ok.append((await api.sos.RaiseSos(req, metadata=person.md, timeout=5)).alert.id)
                    outcomes["OK"] = outcomes.get("OK", 0) + 1
                except grpc.aio.AioRpcError as err:
                    outcomes[err.code().name] = outcomes.get(err.code().name, 0) + 1

            await attempt()
            assert outcomes == {"OK": 1}
            await proxy.cut()  # PostgreSQL is gone for the server
            outcomes.clear()
            # Phones keep trying, many at once (more than the server's pool has connections).
            await asyncio.gather(*(attempt() for _ in range(max(RAISES // 10, 20))))
            during = dict(outcomes)
            # Never OK without a commit, and a clear, retryable answer: not a client timeout.
            assert set(during) == {"UNAVAILABLE"}, during

            await proxy.restore()
            restored = time.monotonic()
            outcomes.clear()
            while "OK" not in outcomes:
                await attempt()
                assert time.monotonic() - restored < 10, f"not recovered within 10 s: {outcomes}"
            recovery = time.monotonic() - restored
        conn = await asyncpg.connect(faults_db)
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM sos_alerts WHERE id = ANY($1::uuid[])", [uuid.UUID(a) for a in ok]
            )
        finally:
            await conn.close()
        print(
            f"\npostgres outage: during it {during}; first OK {recovery:.2f} s after it returned; "
            f"{stored}/{len(ok)} OK alerts stored"
        )
        assert stored == len(ok)
    finally:
        await proxy.close()


async def test_cad_connection_cut_mid_burst_resumes_everything_in_order(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(faults_db, redis_proc.url)
    servers.append(server)
    await server.start()
    proxy = await TcpProxy("127.0.0.1", server.port).start()
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            api, admin, person = await accounts(server, ch)
            dept = await register_department(api, admin, SF)
            raised, raising = start_burst(api, person)
            received: list[str] = []
            seen: set[str] = set()
            last_acked = ""
            cuts = 0
            while len(received) < RAISES:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as cad_ch:
                    cad = Cad(cad_ch, dept.api_key, resume_after=last_acked)
                    try:
                        while len(received) < RAISES:
                            if cuts == 0 and len(received) >= RAISES // 3:
                                cuts += 1
                                await proxy.cut()  # the CAD's network drops mid-burst
                                await proxy.restore()
                            try:
                                msg = await cad.next_event("alert_raised", within=5)
                            except AssertionError:
                                if cad.ended.is_set():
                                    break  # disconnected: reconnect with the cursor
                                raise
                            if msg.event_id not in seen:
                                seen.add(msg.event_id)
                                received.append(msg.alert_raised.alert.id)
                            cad.ack(msg.event_id)
                            last_acked = msg.event_id
                    finally:
                        await cad.close()
            await raising
        print(f"\nCAD cut mid-burst: {len(raised)} raised, {len(received)} received after {cuts} cut(s), in order")
        assert cuts == 1
        assert received == raised  # everything, in the order raised, nothing twice
    finally:
        await proxy.close()


async def test_cad_on_a_killed_replica_resumes_on_the_other_in_order(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    """Two replicas (own processes, own ports, both running the workers) share PostgreSQL
    and Redis. Phones raise on B; the CAD reads from A and acknowledges a few events
    behind. A is killed with SIGKILL mid-burst (its relay may be the leader); the CAD
    reconnects to B from its cursor and gets every alert, in order, the unacknowledged
    ones again."""
    a = ServerProcess(faults_db, redis_proc.url)
    b = ServerProcess(faults_db, redis_proc.url)
    servers.extend([a, b])
    await asyncio.gather(a.start(), b.start())
    async with grpc.aio.insecure_channel(b.address) as phone_ch:
        api, admin, person = await accounts(b, phone_ch)
        dept = await register_department(api, admin, SF)
        raised, raising = start_burst(api, person)
        received: list[str] = []
        seen: set[str] = set()
        unacked: list[str] = []
        last_acked = ""
        redelivered = 0
        for address in (a.address, b.address):
            async with grpc.aio.insecure_channel(address) as cad_ch:
                cad = Cad(cad_ch, dept.api_key, resume_after=last_acked)
                try:
                    while len(received) < RAISES:
                        if address == a.address and len(received) >= RAISES // 3:
                            await a.kill()  # the CAD's server dies with events unacknowledged
                            break
                        msg = await cad.next_event("alert_raised", within=20)
                        if msg.event_id in seen:
                            redelivered += 1
                            continue
                        seen.add(msg.event_id)
                        received.append(msg.alert_raised.alert.id)
                        unacked.append(msg.event_id)
                        if len(unacked) > 5:  # acknowledge a few events behind, as a busy CAD does
                            last_acked = unacked.pop(0)
                            cad.ack(last_acked)
                finally:
                    await cad.close()
        await raising
    print(
        f"\nreplica killed under the CAD: {len(raised)} raised on B, {len(received)} received "
        f"({redelivered} unacknowledged events delivered again by B), in order"
    )
    assert received == raised
    assert redelivered > 0  # the events A had sent but the CAD had not acknowledged


def child_pids(parent: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


async def test_several_server_processes_share_the_port_and_a_dead_one_is_replaced(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(
        faults_db, redis_proc.url, SECURENOW_PROCESSES="2", SECURENOW_HTTP_ADDR=f"127.0.0.1:{free_port()}"
    )
    servers.append(server)
    await server.start()
    assert server.proc is not None

    async def all_children() -> set[int] | None:
        pids = child_pids(server.proc.pid)  # type: ignore[union-attr]
        return pids if len(pids) == 3 else None  # two serving processes and the worker process

    first = await wait_for(all_children, what="two server processes and a worker process")
    os.kill(next(iter(first)), signal.SIGKILL)

    async def replaced() -> set[int] | None:
        pids = await all_children()
        return pids if pids and pids != first else None

    await wait_for(replaced, within=20, what="the killed process replaced")
    async with grpc.aio.insecure_channel(server.address) as ch:
        api, _, person = await accounts(server, ch)
        for _ in range(10):  # calls land on both processes
            await raise_with_retries(api.sos, person, str(uuid.uuid4()))
    code = await server.kill(signal.SIGTERM)
    assert code == 0
    assert child_pids(server.proc.pid) == set()


CAD_SWARM = """
import asyncio, sys
import grpc
from securenow.v1 import agency_pb2, agency_pb2_grpc

async def main(address, key, n):
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    calls = []
    for i in range(n):
        async def requests():
            yield agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe())
            await asyncio.sleep(3600)
        call = agency_pb2_grpc.AgencyServiceStub(channels[i % 4]).StreamDispatch(
            requests(), metadata=(("authorization", "Bearer " + key),))
        calls.append(call)
    print("open", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_cad_clients_vanishing_mid_stream_do_not_take_the_server_down(
    faults_db: str, redis_proc: RedisProcess, servers
) -> None:  # type: ignore[no-untyped-def]
    # Regression: logging the peer of a stream the client had torn down crashed grpcio.
    server = ServerProcess(faults_db, redis_proc.url, SECURENOW_LOG_LEVEL="INFO")
    servers.append(server)
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as ch:
        api, admin, person = await accounts(server, ch)
        dept = await register_department(api, admin, SF)
        for _ in range(3):
            swarm = await asyncio.create_subprocess_exec(
                str(VENV_BIN / "python"),
                "-c",
                CAD_SWARM,
                server.address,
                dept.api_key,
                "50",
                stdout=asyncio.subprocess.PIPE,
            )
            assert swarm.stdout is not None
            assert (await asyncio.wait_for(swarm.stdout.readline(), 30)).strip() == b"open"
            await raise_with_retries(api.sos, person, str(uuid.uuid4()))
            swarm.kill()  # 50 CAD streams vanish at once
            await swarm.wait()
        _, attempts = await raise_with_retries(api.sos, person, str(uuid.uuid4()), within=10)
        assert attempts == 1  # answered at once: the server is alive
    assert server.proc is not None
    assert server.proc.returncode is None
