"""SecureNow benchmarks: `make bench` (or `.venv/bin/python -m bench.run`).

Starts the server as its own process on a fresh database, drives it from separate
load-generator processes, measures each figure next to its raw limit (an empty
grpc.aio handler, a bare insert+commit loop, redis-benchmark), prints a table and
writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis

from bench import loadgen, raw_limits, stack
from securenow.v1 import common_pb2, sos_pb2, sos_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
CTX = multiprocessing.get_context("spawn")
TARGETS = {
    "delivery_p50_ms_at_200": 5.0,
    "delivery_p99_ms_at_200": 20.0,
    "location_updates_per_s": 20_000.0,
    "open_streams": 10_000.0,
    "open_streams_memory_gib": 2.0,
    "nearby_p99_ms": 5.0,
    "unary_read_ratio": 0.70,
}


def spawn(fn: Any, *args: Any) -> tuple[multiprocessing.Process, Any]:
    queue = CTX.Queue()
    proc = CTX.Process(target=loadgen.run, args=(fn, queue, *args), daemon=True)
    proc.start()
    return proc, queue


def collect(procs: list[tuple[multiprocessing.Process, Any]], timeout: float = 900) -> list[dict[str, Any]]:
    results = []
    for proc, queue in procs:
        result = queue.get(timeout=timeout)
        proc.join(timeout=30)
        if "error" in result:
            raise RuntimeError(result["error"])
        results.append(result)
    return results


def server_histogram(server: stack.Server, method: str) -> dict[float, float]:
    """Cumulative bucket counts of the server's own handling time for one RPC."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("securenow_grpc_server_handling_seconds_bucket") and f'grpc_method="{method}"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = buckets.get(float(le), 0.0) + float(line.split()[-1])
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (bucket edge, ms) of the q-quantile of calls made between two scrapes."""
    deltas = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    total = deltas[-1][1] if deltas else 0
    for le, count in deltas:
        if total and count >= q * total:
            return le * 1000
    return float("nan")


def cells() -> list[tuple[float, float]]:
    return [stack.cell_center(i) for i in range(100)]


# Scenarios ---------------------------------------------------------------------------------


def grpc_empty_limit(seconds: float, clients: int, concurrency: int, dsn: str = "") -> dict[str, Any]:
    port = stack.free_port()
    start = time.time() + 3
    end = start + seconds
    server = spawn(loadgen.empty_server, port, end + 2, dsn)
    time.sleep(1)
    load = [spawn(loadgen.empty_client, f"127.0.0.1:{port}", concurrency, start, end) for _ in range(clients)]
    calls = sum(r["calls"] for r in collect(load))
    collect([server])
    return {"qps": calls / seconds}


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def quiesce(limit_seconds: float = 90.0, idle_fraction: float = 0.75) -> dict[str, float]:
    """Waits until the machine is mostly idle (the relay drained the previous
    measurement's backlog, autovacuum after bulk inserts finished), so one figure does
    not pay for the one before. Gives up after `limit_seconds` and says so."""
    started = time.monotonic()
    idle = 0.0
    while time.monotonic() - started < limit_seconds:
        i0, t0 = _cpu_times()
        time.sleep(1.0)
        i1, t1 = _cpu_times()
        idle = (i1 - i0) / max(1, t1 - t0)
        if idle >= idle_fraction:
            break
    return {"waited_s": round(time.monotonic() - started, 1), "idle_fraction": round(idle, 2)}


def delivery_latency(server: stack.Server, fx: stack.Fixtures, rate: float, seconds: float) -> dict[str, Any]:
    settled = quiesce()
    start = time.time() + 8  # streams connect first, then two seconds of warm-up load
    end = start + seconds
    cad = spawn(loadgen.cad_consumers, server.address, fx.departments, start, end, start)
    raisers = [
        spawn(loadgen.raise_open_loop, server.address, fx.people, cells(), stack.GRID_STEP / 2, rate / 2, start, end)
        for _ in range(2)
    ]
    sent = collect(raisers)
    (delivered,) = collect([cad])
    return {
        "settled": settled,
        "rate_per_s": rate,
        "cad_streams": delivered["streams"],
        "raised_ok": sum(r["ok"] for r in sent),
        "raise_failed": sum(r["failed"] for r in sent),
        "delivered": delivered["delivered"],
        "p50_ms": delivered["p50_ms"],
        "p99_ms": delivered["p99_ms"],
        "max_ms": delivered["max_ms"],
        "server_p50_ms": delivered["server_p50_ms"],
        "server_p99_ms": delivered["server_p99_ms"],
    }


def raise_throughput(server: stack.Server, fx: stack.Fixtures, seconds: float, concurrency: int) -> dict[str, Any]:
    settled = quiesce()
    start = time.time() + 2
    end = start + seconds
    procs = [
        spawn(
            loadgen.raise_closed_loop, server.address, fx.people, cells(), stack.GRID_STEP / 2, concurrency, start, end
        )
        for _ in range(2)
    ]
    out = collect(procs)
    ok = sum(r["ok"] for r in out)
    return {
        "settled": settled,
        "alerts_per_s": ok / seconds,
        "failed": sum(r["failed"] for r in out),
        "concurrency": 2 * concurrency,
        "p50_ms": max(r["p50_ms"] for r in out),
        "p99_ms": max(r["p99_ms"] for r in out),
    }


async def raise_alerts(server: stack.Server, tokens: list[str], per_person: int) -> list[list[str]]:
    """Open alerts per person (for ShareLocation, WatchSos and GetSosAlert)."""
    out: list[list[str]] = []
    async with grpc.aio.insecure_channel(server.address) as ch:
        sos = sos_pb2_grpc.SosServiceStub(ch)
        for token in tokens:
            ids = []
            for _ in range(per_person):
                lat, lng = random.choice(cells())
                resp = await sos.RaiseSos(
                    sos_pb2.RaiseSosRequest(
                        request_id=str(uuid.uuid4()),
                        location=common_pb2.Location(point=common_pb2.LatLng(latitude=lat, longitude=lng)),
                    ),
                    metadata=loadgen.md(token),
                )
                ids.append(resp.alert.id)
            out.append(ids)
    return out


def location_ingest(server: stack.Server, tokens: list[str], alerts: list[str], seconds: float) -> dict[str, Any]:
    settled = quiesce()
    start = time.time() + 2
    end = start + seconds
    half = len(tokens) // 2
    procs = [
        spawn(loadgen.share_location, server.address, tokens[:half], alerts[:half], 50, start, end),
        spawn(loadgen.share_location, server.address, tokens[half:], alerts[half:], 50, start, end),
    ]
    accepted = sum(r["accepted"] for r in collect(procs))
    return {"settled": settled, "updates_per_s": accepted / seconds, "streams": len(tokens)}


def unary_reads(
    server: stack.Server, token: str, kind: str, ids: list[str], seconds: float, concurrency: int
) -> dict[str, Any]:
    settled = quiesce()
    start = time.time() + 2
    end = start + seconds
    procs = [spawn(loadgen.unary_reads, server.address, token, kind, ids, concurrency, start, end) for _ in range(2)]
    out = collect(procs)
    return {"settled": settled, "qps": sum(r["calls"] for r in out) / seconds, "errors": sum(r["errors"] for r in out)}


async def populate_providers(n: int) -> list[str]:
    """n verified providers in Postgres (based where they stand), all on duty in Redis
    (bench data, inserted directly)."""
    ids = [uuid.uuid4() for _ in range(n)]
    points = {i: (random.uniform(37.05, 37.95), random.uniform(-122.45, -121.55)) for i in ids}
    conn = await asyncpg.connect(stack.DATABASE_URL)
    try:
        pricing = json.dumps(
            {"rates": {"security_guard": {"currency_code": "USD", "amount": "40"}}, "minimum_hours": 1}
        )
        await conn.copy_records_to_table(
            "providers",
            columns=["id", "company_name", "business_type", "verification_status", "pricing_info", "location_data"],
            records=[
                (i, f"Bench Guards {k}", "security_guard", "verified", pricing, json.dumps({"lat": lat, "lng": lng}))
                for k, (i, (lat, lng)) in enumerate(points.items())
            ],
        )
        await conn.execute(
            """UPDATE providers SET location = ST_SetSRID(ST_MakePoint((location_data->>'lng')::float8,
                   (location_data->>'lat')::float8), 4326)::geography WHERE location_data IS NOT NULL"""
        )
        await conn.execute("ANALYZE providers")
    finally:
        await conn.close()
    r = aioredis.Redis.from_url(stack.REDIS_URL)
    now = time.time()
    for chunk in range(0, n, 10_000):
        async with r.pipeline(transaction=False) as pipe:
            for i in ids[chunk : chunk + 10_000]:
                lat, lng = points[i]
                pipe.geoadd("providers:locations", (lng, lat, str(i)))
                pipe.zadd("providers:last_seen", {str(i): now})
            await pipe.execute()
    await r.aclose()
    return [str(i) for i in ids]


def open_streams(
    server: stack.Server, pairs: list[tuple[str, str]], clients: int = 2, rate: float = 250.0
) -> dict[str, Any]:
    """Streams held by ONE server process (this server must run a single process),
    opened from `clients` processes at `rate` per second each."""
    before = server.rss_bytes()
    hold_until = time.time() + 900
    procs = []
    reports = []
    for k in range(clients):
        report = CTX.Queue()
        reports.append(report)
        procs.append(spawn(loadgen.hold_watch_streams, server.address, pairs[k::clients], 25, rate, hold_until, report))
    opened = [r.get(timeout=900) for r in reports]
    time.sleep(2)  # let the server settle before reading its memory
    after = server.rss_bytes()
    for proc, _ in procs:
        proc.terminate()
    held = sum(o["opened"] for o in opened)
    return {
        "streams": held,
        "reopened_after_failure": sum(o["retries"] for o in opened),
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "kib_per_stream": (after - before) / max(held, 1) / 1024,
    }


def latency_figure(server: stack.Server, method: str, fn: Any, token: str, calls: int = 2000) -> dict[str, Any]:
    """Sequential calls from a load-generator process, timed by the client and by the
    server's own histogram (bucket upper bounds)."""
    settled = quiesce()
    before = server_histogram(server, method)
    (measured,) = collect([spawn(fn, server.address, token, calls)])
    after = server_histogram(server, method)
    return {
        "settled": settled,
        **measured,
        "server_p50_ms_at_most": bucket_quantile(before, after, 0.50),
        "server_p99_ms_at_most": bucket_quantile(before, after, 0.99),
    }


# Orchestration -------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.seconds
    out: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"seconds_per_measurement": seconds, "server_processes": args.processes},
    }
    await stack.fresh_database()
    print("raw limits ...", flush=True)
    out["raw"] = {
        "grpc_empty_handler": grpc_empty_limit(seconds, clients=2, concurrency=64),
        "grpc_handler_one_select": grpc_empty_limit(seconds, clients=2, concurrency=64, dsn=stack.DATABASE_URL),
        "postgres_insert_commit_1_conn": await raw_limits.postgres_insert_commit(
            stack.DATABASE_URL, connections=1, seconds=seconds
        ),
        "postgres_insert_commit_32_conn": await raw_limits.postgres_insert_commit(
            stack.DATABASE_URL, connections=32, seconds=seconds
        ),
    }
    # The serving processes plus a worker process (supervisor), as deployed on a machine.
    server = await stack.start_server(SECURENOW_PROCESSES=str(args.processes))
    try:
        print("fixtures ...", flush=True)
        fx = await stack.create_fixtures(server, departments=100, people=60)
        out["delivery"] = []
        for rate in args.rates:
            print(f"SOS delivery at {rate}/s ...", flush=True)
            out["delivery"].append(delivery_latency(server, fx, rate, seconds))
        print("RaiseSos throughput ...", flush=True)
        out["raise_throughput"] = raise_throughput(server, fx, seconds, concurrency=32)
        alerts = await raise_alerts(server, fx.people, per_person=1)
        print("location ingestion ...", flush=True)
        out["location_ingest"] = location_ingest(server, fx.people, [a[0] for a in alerts], seconds)
        print("unary reads ...", flush=True)
        own = await raise_alerts(server, fx.people[:1], per_person=50)
        out["unary_get_sos_alert"] = unary_reads(server, fx.people[0], "GetSosAlert", own[0], seconds, 64)
        print(f"nearby search with {args.providers} on-duty providers ...", flush=True)
        provider_ids = await populate_providers(args.providers)
        out["unary_get_provider"] = unary_reads(server, fx.people[0], "GetProvider", provider_ids[:1000], seconds, 64)
        out["nearby"] = latency_figure(server, "SearchNearbyProviders", loadgen.nearby_latency, fx.people[0])
        out["nearby"]["providers"] = args.providers
        out["provider_search"] = latency_figure(server, "SearchProviders", loadgen.search_latency, fx.people[0])
        out["provider_search"]["providers"] = args.providers
        out["redis_benchmark_rps"] = raw_limits.redis_benchmark(stack.REDIS_URL)
    finally:
        server.stop()
    print(f"{args.streams} open streams in one process ...", flush=True)
    single = await stack.start_server(SECURENOW_PROCESSES="1")
    try:
        pairs = [(fx.people[i % len(fx.people)], alerts[i % len(fx.people)][0]) for i in range(args.streams)]
        out["open_streams"] = open_streams(single, pairs)
    finally:
        single.stop()
    out["finished"] = datetime.now(UTC).isoformat()
    out["vs_targets"] = versus_targets(out)
    return out


def versus_targets(r: dict[str, Any]) -> dict[str, Any]:
    at200 = next((d for d in r["delivery"] if d["rate_per_s"] == 200), None)
    empty = r["raw"]["grpc_empty_handler"]["qps"]
    read_qps = min(r["unary_get_sos_alert"]["qps"], r["unary_get_provider"]["qps"])
    streams = r["open_streams"]
    memory_gib = streams["rss_after_mib"] / 1024
    rows = {
        "delivery_p50_ms_at_200": (at200["p50_ms"] if at200 else None, "<="),
        "delivery_p99_ms_at_200": (at200["p99_ms"] if at200 else None, "<="),
        "location_updates_per_s": (r["location_ingest"]["updates_per_s"], ">="),
        "open_streams": (streams["streams"], ">="),
        "open_streams_memory_gib": (memory_gib, "<="),
        "nearby_p99_ms": (r["nearby"]["p99_ms"], "<="),
        "unary_read_ratio": (read_qps / empty if empty else None, ">="),
    }
    out = {}
    for name, (value, sense) in rows.items():
        target = TARGETS[name]
        met = value is not None and (value <= target if sense == "<=" else value >= target)
        out[name] = {
            "value": value,
            "target": target,
            "met": met,
            "ratio_to_target": (value / target) if value is not None else None,
        }
    return out


def print_table(r: dict[str, Any]) -> None:
    raw = r["raw"]
    print()
    print(f"{'measurement':58} {'value':>14}   raw limit / target")
    print("-" * 100)
    for d in r["delivery"]:
        print(
            f"SOS raise->CAD delivery at {d['rate_per_s']:.0f}/s, {d['cad_streams']} CAD streams (p50/p99/max ms)"
            f"{'':2} {d['p50_ms']:6.1f}/{d['p99_ms']:.1f}/{d['max_ms']:.0f}"
            f"   from server commit {d['server_p50_ms']:.1f}/{d['server_p99_ms']:.1f}; "
            f"delivered {d['delivered']}/{d['raised_ok']}"
        )
    t = r["raise_throughput"]
    pg1, pg32 = raw["postgres_insert_commit_1_conn"], raw["postgres_insert_commit_32_conn"]
    print(
        f"{'RaiseSos sustained throughput (alerts/s, durable)':58} {t['alerts_per_s']:14.0f}   "
        f"insert+commit: {pg1['rows_per_s']:.0f}/s (1 conn), {pg32['rows_per_s']:.0f}/s (32 conns)"
    )
    print(f"{'ShareLocation updates ingested (/s)':58} {r['location_ingest']['updates_per_s']:14.0f}   target 20000")
    s = r["open_streams"]
    print(
        f"{'open WatchSos streams in one process':58} {s['streams']:14d}   "
        f"RSS {s['rss_after_mib']:.0f} MiB, {s['kib_per_stream']:.1f} KiB/stream (target 10000 < 2 GiB)"
    )
    n = r["nearby"]
    print(
        f"{'nearest providers, ' + str(n['providers']) + ' on duty (client p50/p99 ms)':58} "
        f"{n['p50_ms']:7.2f}/{n['p99_ms']:.2f}   server <= {n['server_p50_ms_at_most']:g}/"
        f"{n['server_p99_ms_at_most']:g} ms; redis GEOSEARCH {r['redis_benchmark_rps'].get('GEOSEARCH', 0):.0f}/s"
    )
    p = r["provider_search"]
    print(
        f"{'provider search, text + 5 km (client p50/p99 ms)':58} {p['p50_ms']:7.2f}/{p['p99_ms']:.2f}   "
        f"server <= {p['server_p50_ms_at_most']:g}/{p['server_p99_ms_at_most']:g} ms; "
        f"{p['avg_results']:.1f} results a call (PostgreSQL backend)"
    )
    empty = raw["grpc_empty_handler"]["qps"]
    one_select = raw["grpc_handler_one_select"]["qps"]
    for key, label in (("unary_get_sos_alert", "GetSosAlert"), ("unary_get_provider", "GetProvider")):
        q = r[key]["qps"]
        print(
            f"{'unary ' + label + ' QPS':58} {q:14.0f}   empty handler {empty:.0f} ({q / empty:.0%}); "
            f"handler with one SELECT 1 {one_select:.0f} ({q / one_select:.0%})"
        )
    print(
        f"{'redis-benchmark (requests/s)':58} {'':14}   "
        + ", ".join(f"{k} {v:.0f}" for k, v in r["redis_benchmark_rps"].items())
    )
    print()
    for name, v in r["vs_targets"].items():
        value = "n/a" if v["value"] is None else f"{v['value']:.3g}"
        print(f"  target {name:28} {value:>10} vs {v['target']:<8g} {'met' if v['met'] else 'MISSED'}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0, 500.0])
    parser.add_argument("--providers", type=int, default=100_000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="server processes (SO_REUSEPORT)")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (RESULTS / name).write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: bench/results/bench-{stamp}.json")


if __name__ == "__main__":
    cli()
