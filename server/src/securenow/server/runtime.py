"""Runs one replica: the grpc.aio server (with health checking and reflection), the
HTTP listener and the background workers; stops them gracefully."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from securenow.server.bootstrap import App
from securenow.server.settings import Settings
from securenow.server.transport.grpc_web import GrpcWebGateway
from securenow.server.transport.http import build_http_app
from securenow.server.transport.interceptor import CallInterceptor
from securenow.server.transport.servicers.agency import AgencyServicer
from securenow.server.transport.servicers.analytics import AnalyticsServicer
from securenow.server.transport.servicers.auth import AuthServicer
from securenow.server.transport.servicers.bookings import BookingServicer
from securenow.server.transport.servicers.providers import ProviderServicer
from securenow.server.transport.servicers.search import SearchServicer
from securenow.server.transport.servicers.sos import SosServicer
from securenow.server.transport.servicers.users import UserServicer
from securenow.server.workers.escalation import run_escalations
from securenow.v1 import (
    agency_pb2,
    agency_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    bookings_pb2,
    bookings_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    sos_pb2,
    sos_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)

log = logging.getLogger(__name__)

WORKER_CRASHES = Counter(
    "securenow_worker_crashes_total", "Background tasks that failed unexpectedly and were restarted", ["worker"]
)
# A crashed worker is started again after this, doubling up to the maximum.
RESTART_DELAY_SECONDS = 0.5
MAX_RESTART_DELAY_SECONDS = 30.0

GC_PAUSE = Histogram(
    "securenow_gc_pause_seconds",
    "Python garbage-collection pauses (every thread stops), by generation.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
_gc_started = 0.0
# (generation, seconds) of pauses not yet in GC_PAUSE. The GC callback must not touch
# prometheus_client: a collection can start inside it (an allocation while a multiprocess
# metric holds its non-reentrant lock), and observing from the callback then waits on
# that lock forever, freezing the process (seen with SECURENOW_PROCESSES > 1). A deque
# append is safe there; _report_gc_pauses moves them into the histogram.
_gc_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)


def _observe_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started))


async def _report_gc_pauses(stop: asyncio.Event) -> None:
    gc.callbacks.append(_observe_gc)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            while _gc_pauses:
                generation, seconds = _gc_pauses.popleft()
                GC_PAUSE.labels(str(generation)).observe(seconds)
    finally:
        gc.callbacks.remove(_observe_gc)


# Keepalive pings to detect dead peers are timed by settings (keepalive_*_seconds).
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _supervised(name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
    """Runs a background worker until `stop`. Each worker handles the failures it
    expects (a database or Redis outage) itself; anything else would end its task
    silently while the server looks healthy (no more deliveries, say). It is logged,
    counted (securenow_worker_crashes_total) and the worker started again, after a
    delay that doubles while it keeps crashing."""
    delay = RESTART_DELAY_SECONDS
    while not stop.is_set():
        started = time.monotonic()
        try:
            await run(stop)
            return
        except Exception:
            WORKER_CRASHES.labels(name).inc()
            log.exception("%s failed unexpectedly; restarting it in %.1f s", name, delay)
        if time.monotonic() - started > MAX_RESTART_DELAY_SECONDS:
            delay = RESTART_DELAY_SECONDS  # it ran a good while: a new failure, not a loop
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, MAX_RESTART_DELAY_SECONDS)


def _start(name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(_supervised(name, run, stop), name=name)


def background_workers(app: App, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """The outbox relay, escalation sweeper, webhook sender, emergency-contact notifier,
    maintenance and (with Elasticsearch) the search indexer."""
    tasks = [
        _start("outbox-relay", app.relay.run, stop),
        _start("escalation", lambda s: run_escalations(app.dispatch, s), stop),
        _start("webhooks", app.webhooks.run, stop),
        _start("contact-notifier", app.contact_notifier.run, stop),
        _start("maintenance", app.maintenance.run, stop),
    ]
    if app.search_indexer is not None:
        tasks.append(_start("search-indexer", app.search_indexer.run, stop))
    return tasks


class Runtime:
    def __init__(self, app: App) -> None:
        self.app = app
        self.health = HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.http_runner: web.AppRunner | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.grpc_web = GrpcWebGateway(app.settings.cors_origin_list)
        self._stop_workers = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    def _build_grpc_server(self) -> grpc.aio.Server:
        app = self.app
        options = [o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport"]
        options += [
            ("grpc.so_reuseport", 1 if app.settings.reuse_port else 0),
            ("grpc.keepalive_time_ms", int(app.settings.keepalive_time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(app.settings.keepalive_timeout_seconds * 1000)),
            # gRPC's other pings (flow-control probes after data) hold keepalive back
            # while they are out, and wait a minute for an answer by default: a peer that
            # vanished right after traffic would go unnoticed that long.
            ("grpc.http2.ping_timeout_ms", int(app.settings.keepalive_timeout_seconds * 1000)),
        ]
        server = grpc.aio.server(
            interceptors=[
                CallInterceptor(
                    app.authenticator.authenticate,
                    app.audit.record_failure,
                    app.rate_limit,
                    trusted_proxies=app.settings.trusted_proxy_networks,
                )
            ],
            options=options,
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(app.auth), server)
        users_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(app.users), server)
        providers_pb2_grpc.add_ProviderServiceServicer_to_server(ProviderServicer(app.providers), server)
        bookings_pb2_grpc.add_BookingServiceServicer_to_server(BookingServicer(app.bookings), server)
        sos_pb2_grpc.add_SosServiceServicer_to_server(
            SosServicer(app.sos, app.locations, app.watch_hub, app.credentials), server
        )
        search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(app.search), server)
        agency_pb2_grpc.add_AgencyServiceServicer_to_server(
            AgencyServicer(
                app.agency,
                app.dispatch,
                app.dispatch_hub,
                app.credentials,
                app.audit.record_failure,
                heartbeat_interval=app.settings.dispatch_heartbeat_seconds,
                client_idle_timeout=app.settings.dispatch_idle_timeout_seconds,
            ),
            server,
        )
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsServicer(app.analytics), server)
        names = [
            auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
            users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
            providers_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name,
            bookings_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name,
            sos_pb2.DESCRIPTOR.services_by_name["SosService"].full_name,
            agency_pb2.DESCRIPTOR.services_by_name["AgencyService"].full_name,
            analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
            search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
        ]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        self.service_names = names
        return server

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.app.settings
        if not (s.tls_cert_file and s.tls_key_file):
            return None
        client_ca = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    async def start(self, *, grpc_addr: str, http_addr: str | None) -> None:
        self.grpc_server = self._build_grpc_server()
        credentials = self._credentials()
        if credentials is None:
            self.grpc_port = self.grpc_server.add_insecure_port(grpc_addr)
        else:
            self.grpc_port = self.grpc_server.add_secure_port(grpc_addr, credentials)
        # The embedded gRPC-Web endpoint reaches the same server over loopback, in the clear.
        loopback_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        await self.grpc_server.start()
        self.grpc_web.connect(f"127.0.0.1:{loopback_port}")
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if http_addr is not None:
            # handler_cancellation: a browser that goes away cancels its handler at once,
            # and with it the loopback call (a quiet WatchSos would otherwise hold its
            # watcher until the next write failed, possibly forever).
            self.http_runner = web.AppRunner(
                build_http_app(self.grpc_web, self.app.settings.console_path, self.health),
                access_log=None,
                handler_cancellation=True,
            )
            await self.http_runner.setup()
            sock = socket.create_server(_split(http_addr), reuse_port=self.app.settings.reuse_port)
            self.http_port = sock.getsockname()[1]
            await web.SockSite(self.http_runner, sock).start()
        app, stop = self.app, self._stop_workers
        # Serving components: streams and location sharing need them.
        self._workers = [
            _start("dispatch-hub", app.dispatch_hub.run, stop),
            _start("watch-hub", app.watch_hub.run, stop),
            _start("credentials", app.credentials.run, stop),
            _start("locations", app.locations.run, stop),
        ]
        if app.settings.run_workers:
            self._workers += background_workers(app, stop)

    async def stop(self, grace: float) -> None:
        """Stops taking calls, lets in-flight calls finish within `grace` seconds, then
        stops the workers and closes pools."""
        await self.health.enter_graceful_shutdown()
        if self.grpc_server is not None:
            stopping = asyncio.create_task(self.grpc_server.stop(grace))
            # Long-lived streams would hold shutdown for the whole grace period: tell
            # their clients to reconnect (to another replica) now.
            await asyncio.sleep(min(grace, 0.5))
            self.app.dispatch_hub.close_all()
            await stopping
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        await self.grpc_web.close()
        self._stop_workers.set()
        if self._workers:
            await asyncio.wait(self._workers, timeout=5)
            for task in self._workers:
                task.cancel()
        await self.app.close()


async def serve(settings: Settings) -> None:
    app = await App.create(settings)
    runtime = Runtime(app)
    await runtime.start(grpc_addr=settings.grpc_addr, http_addr=settings.http_addr)
    stop = asyncio.Event()
    gc_report = asyncio.create_task(_report_gc_pauses(stop), name="gc-pauses")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, _ = _split(settings.grpc_addr)
    http_host, _ = _split(settings.http_addr)
    log.info(
        "securenow serving",
        extra={
            "grpc": f"{host}:{runtime.grpc_port}",
            "http": f"http://{http_host}:{runtime.http_port}",
            "env": settings.env.value,
            "instance": settings.resolved_instance_id,
        },
    )
    await stop.wait()
    log.info("shutting down: finishing in-flight calls", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await runtime.stop(settings.shutdown_grace_seconds)
    await gc_report
    log.info("stopped")


async def work(settings: Settings) -> None:
    """Background workers only, no listeners: with several serving processes on a
    machine the relay then never waits behind request handling for the event loop."""
    app = await App.create(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [*background_workers(app, stop), asyncio.create_task(_report_gc_pauses(stop), name="gc-pauses")]
    log.info("securenow workers running", extra={"instance": settings.resolved_instance_id})
    await stop.wait()
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    await app.close()
