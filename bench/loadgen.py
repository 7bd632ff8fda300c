"""Load generators. Each function runs in its own process (never in the server's), on
uvloop, and reports a dict of numbers through a multiprocessing queue."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing import Queue
from typing import Any

import asyncpg
import grpc
import uvloop

from securenow.v1 import (
    agency_pb2,
    agency_pb2_grpc,
    common_pb2,
    providers_pb2,
    providers_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    sos_pb2,
    sos_pb2_grpc,
)

# Each channel its own TCP connection (by default gRPC shares one connection between
# channels to the same target, which piles thousands of streams onto it).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def run(fn: Callable[..., Awaitable[dict[str, Any]]], out: Queue, *args: Any) -> None:  # type: ignore[type-arg]
    """Process entry point: runs one generator and puts its result on `out`."""
    try:
        out.put(uvloop.run(fn(*args)))
    except Exception as exc:  # the orchestrator reports it
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def random_point(cells: list[tuple[float, float]], half: float) -> common_pb2.Location:
    lat, lng = random.choice(cells)
    return common_pb2.Location(
        point=common_pb2.LatLng(
            latitude=lat + random.uniform(-half, half) * 0.8, longitude=lng + random.uniform(-half, half) * 0.8
        ),
        accuracy_m=10,
    )


# SOS delivery -------------------------------------------------------------------------


async def cad_consumers(
    address: str, departments: list[tuple[str, str]], start_at: float, end_at: float, ready_at: float
) -> dict[str, Any]:
    """One StreamDispatch per department; records raise->delivery latency of alerts raised
    in [start_at, end_at] (the raiser puts its wall-clock send time in metadata["t0"])."""
    latencies: list[float] = []
    server_side: list[float] = []  # from the alert's creation in the server to the CAD
    connected = 0
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(4)]

    async def consume(i: int, api_key: str) -> None:
        nonlocal connected
        outbox: asyncio.Queue[agency_pb2.StreamDispatchRequest] = asyncio.Queue()
        outbox.put_nowait(agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe()))

        async def requests():  # type: ignore[no-untyped-def]
            while True:
                yield await outbox.get()

        call = agency_pb2_grpc.AgencyServiceStub(channels[i % len(channels)]).StreamDispatch(
            requests(), metadata=md(api_key)
        )
        connected += 1
        async for msg in call:
            if msg.WhichOneof("kind") == "alert_raised":
                now = time.time()
                t0 = float(msg.alert_raised.alert.metadata.get("t0", "0"))
                if start_at <= t0 <= end_at:
                    latencies.append(now - t0)
                    server_side.append(now - msg.alert_raised.alert.create_time.ToMicroseconds() / 1e6)
            if msg.event_id:
                outbox.put_nowait(agency_pb2.StreamDispatchRequest(ack=agency_pb2.Ack(event_id=msg.event_id)))

    tasks = [asyncio.create_task(consume(i, key)) for i, (_, key) in enumerate(departments)]
    await wait_until(end_at + 3.0)  # late deliveries still count
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close()
    return {
        "streams": connected,
        "delivered": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "server_p50_ms": percentile(server_side, 50) * 1000,
        "server_p99_ms": percentile(server_side, 99) * 1000,
    }


async def raise_open_loop(
    address: str,
    tokens: list[str],
    cells: list[tuple[float, float]],
    half: float,
    rate: float,
    start_at: float,
    end_at: float,
) -> dict[str, Any]:
    """Raises SOS alerts at a fixed rate (open loop: sends do not wait for answers)."""
    ok = failed = 0
    in_flight: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        sos = sos_pb2_grpc.SosServiceStub(ch)

        async def one(t0: float) -> None:
            nonlocal ok, failed
            # Warm-up alerts are not part of the measurement; the CAD side counts the same window.
            counted = start_at <= t0 <= end_at
            try:
                await sos.RaiseSos(
                    sos_pb2.RaiseSosRequest(
                        request_id=str(uuid.uuid4()), location=random_point(cells, half), metadata={"t0": repr(t0)}
                    ),
                    metadata=md(random.choice(tokens)),
                    timeout=30,
                )
                ok += counted
            except grpc.aio.AioRpcError as err:
                failed += counted
                if failed == 1:
                    print(f"RaiseSos failed: {err.code().name} {err.details()}", flush=True)

        # Two seconds of the same load before the window opens: pools, prepared
        # statements and streams are warm when measuring (alerts sent before
        # start_at are not counted by the CAD side).
        warm_start = start_at - 2.0
        await wait_until(warm_start)
        n = 0
        while True:
            due = warm_start + n / rate
            if due > end_at:
                break
            await wait_until(due)
            task = asyncio.create_task(one(time.time()))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        if in_flight:
            await asyncio.wait(in_flight, timeout=30)
    return {"ok": ok, "failed": failed}


async def raise_closed_loop(
    address: str,
    tokens: list[str],
    cells: list[tuple[float, float]],
    half: float,
    concurrency: int,
    start_at: float,
    end_at: float,
) -> dict[str, Any]:
    """As many RaiseSos as `concurrency` callers can get answered."""
    ok = failed = 0
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        sos = sos_pb2_grpc.SosServiceStub(ch)

        async def caller() -> None:
            nonlocal ok, failed
            while time.time() < end_at:
                t0 = time.perf_counter()
                try:
                    await sos.RaiseSos(
                        sos_pb2.RaiseSosRequest(request_id=str(uuid.uuid4()), location=random_point(cells, half)),
                        metadata=md(random.choice(tokens)),
                        timeout=30,
                    )
                    ok += 1
                    latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError:
                    failed += 1

        await wait_until(start_at)
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {
        "ok": ok,
        "failed": failed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


# Location sharing ---------------------------------------------------------------------


async def share_location(
    address: str, tokens: list[str], alert_ids: list[str], batch: int, start_at: float, end_at: float
) -> dict[str, Any]:
    """One ShareLocation stream per (person, alert), each sending fixes back to back."""
    accepted = 0
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        sos = sos_pb2_grpc.SosServiceStub(ch)

        async def stream(token: str, alert_id: str) -> None:
            nonlocal accepted
            base = random.uniform(37.1, 37.9)

            async def fixes():  # type: ignore[no-untyped-def]
                i = 0
                while time.time() < end_at:
                    for _ in range(batch):
                        i += 1
                        yield sos_pb2.ShareLocationRequest(
                            alert_id=alert_id,
                            location=common_pb2.Location(
                                point=common_pb2.LatLng(latitude=base + i * 1e-6, longitude=-122.3), accuracy_m=5
                            ),
                        )
                    await asyncio.sleep(0)

            resp = await sos.ShareLocation(fixes(), metadata=md(token), timeout=120)
            accepted += resp.accepted_count

        await wait_until(start_at)
        await asyncio.gather(*(stream(t, a) for t, a in zip(tokens, alert_ids, strict=True)))
    return {"accepted": accepted}


# Open streams ----------------------------------------------------------------------------


async def hold_watch_streams(
    address: str, tokens_and_alerts: list[tuple[str, str]], channels: int, rate: float, hold_until: float, report: Queue
) -> dict[str, Any]:  # type: ignore[type-arg]
    """Opens one WatchSos per (token, alert) at `rate` per second, like phones coming
    online, re-opening a stream that fails (as the SDK does), and holds them open until
    `hold_until`. Reports on `report` once every stream has its snapshot."""
    chans = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(channels)]
    opened = 0
    retries = 0
    ready = asyncio.Event()

    async def watch(i: int, token: str, alert_id: str) -> None:
        nonlocal opened, retries
        await asyncio.sleep(i / rate)
        backoff = 0.2
        while True:
            call = sos_pb2_grpc.SosServiceStub(chans[i % channels]).WatchSos(
                sos_pb2.WatchSosRequest(alert_id=alert_id), metadata=md(token)
            )
            try:
                await call.read()
            except grpc.aio.AioRpcError:
                retries += 1
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 5.0)
                continue
            opened += 1
            if opened == len(tokens_and_alerts):
                ready.set()
            try:
                await call.read()  # held open: nothing changes
            except grpc.aio.AioRpcError:
                opened -= 1
            return

    tasks = [asyncio.create_task(watch(i, t, a)) for i, (t, a) in enumerate(tokens_and_alerts)]
    try:
        await asyncio.wait_for(ready.wait(), 600)
    finally:
        report.put({"opened": opened, "retries": retries})
    await wait_until(hold_until)
    for t in tasks:
        t.cancel()
    for ch in chans:
        await ch.close()
    return {"opened": opened, "retries": retries}


# Reads and nearby search ----------------------------------------------------------------------


async def unary_reads(
    address: str, token: str, kind: str, ids: list[str], concurrency: int, start_at: float, end_at: float
) -> dict[str, Any]:
    calls = 0
    errors = 0
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        sos = sos_pb2_grpc.SosServiceStub(ch)
        providers = providers_pb2_grpc.ProviderServiceStub(ch)
        meta = md(token)

        async def worker() -> None:
            nonlocal calls, errors
            while time.time() < end_at:
                i = random.choice(ids)
                try:
                    if kind == "GetSosAlert":
                        await sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=i), metadata=meta)
                    else:
                        await providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=i), metadata=meta)
                    calls += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        await wait_until(start_at)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"calls": calls, "errors": errors}


async def _latencies(calls: int, call: Callable[[int], Awaitable[int]]) -> dict[str, Any]:
    """`calls` sequential calls of `call(i)` (which returns how many results it got)."""
    latencies = []
    found = 0
    for i in range(calls):
        t0 = time.perf_counter()
        found += await call(i)
        latencies.append(time.perf_counter() - t0)
    return {
        "calls": calls,
        "avg_results": found / calls,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def _random_bay_point() -> common_pb2.LatLng:
    return common_pb2.LatLng(latitude=random.uniform(37.2, 37.8), longitude=random.uniform(-122.4, -121.6))


async def nearby_latency(address: str, token: str, calls: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as ch:
        providers = providers_pb2_grpc.ProviderServiceStub(ch)
        meta = md(token)

        async def call(i: int) -> int:
            resp = await providers.SearchNearbyProviders(
                providers_pb2.SearchNearbyProvidersRequest(point=_random_bay_point(), radius_m=2000, max_results=10),
                metadata=meta,
            )
            return len(resp.results)

        return await _latencies(calls, call)


async def search_latency(address: str, token: str, calls: int) -> dict[str, Any]:
    """SearchProviders with text and a place (the PostgreSQL backend: tsvector + PostGIS)."""
    async with grpc.aio.insecure_channel(address) as ch:
        search = search_pb2_grpc.SearchServiceStub(ch)
        meta = md(token)

        async def call(i: int) -> int:
            resp = await search.SearchProviders(
                search_pb2.SearchProvidersRequest(
                    query=f"guards {random.randrange(100_000)}" if i % 2 else "bench guards",
                    near=_random_bay_point(),
                    radius_m=5_000,
                    page_size=10,
                ),
                metadata=meta,
            )
            return len(resp.results)

        return await _latencies(calls, call)


# Raw limit: an empty grpc.aio handler -------------------------------------------------------------


async def empty_server(port: int, stop_at: float, dsn: str = "") -> dict[str, Any]:
    """An empty unary handler; with `dsn`, the handler does one pooled `SELECT 1`
    (the floor of any read that touches PostgreSQL once, with grpc.aio and asyncpg)."""
    pool = await asyncpg.create_pool(dsn, min_size=10, max_size=20) if dsn else None

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if pool is not None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        return b""

    handler = grpc.method_handlers_generic_handler(
        "bench.Empty", {"Call": grpc.unary_unary_rpc_method_handler(call, lambda b: b, lambda b: b)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await wait_until(stop_at)
    await server.stop(0)
    if pool is not None:
        await pool.close()
    return {}


async def empty_client(address: str, concurrency: int, start_at: float, end_at: float) -> dict[str, Any]:
    calls = 0
    async with grpc.aio.insecure_channel(address) as ch:
        fn = ch.unary_unary("/bench.Empty/Call", request_serializer=lambda b: b, response_deserializer=lambda b: b)

        async def worker() -> None:
            nonlocal calls
            while time.time() < end_at:
                await fn(b"")
                calls += 1

        await wait_until(start_at)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"calls": calls}
