"""The HTTP listener (SECURENOW_HTTP_ADDR): the embedded gRPC-Web endpoint, the
dispatcher console (static files), Prometheus /metrics and /healthz."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from securenow.server.supervisor import metrics_dir
from securenow.server.transport.grpc_web import MAX_TEXT_BODY, GrpcWebGateway

# The console loads only its own scripts and styles and talks only to this origin.
CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def metrics(_: web.Request) -> web.Response:
    if metrics_dir() is not None:
        # Several server processes: add up what all of them recorded.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def healthz_handler(health: HealthServicer) -> Callable[[web.Request], Awaitable[web.Response]]:
    """/healthz answers what grpc.health.v1 Check answers for the server as a whole (""):
    200 SERVING, otherwise 503, so Envoy, Docker and Kubernetes probes stop sending
    work once a graceful shutdown has begun. It reads the servicer's state, no
    database round trip per probe."""

    async def healthz(_: web.Request) -> web.Response:
        # Check uses its context only to abort for an unknown service; "" is always known.
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), None)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        serving = answer.status == health_pb2.HealthCheckResponse.SERVING
        return web.json_response({"status": name}, status=200 if serving else 503)

    return healthz


class Console:
    """Serves the built console; a console built after the server started is picked up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def index(self, _: web.Request) -> web.StreamResponse:
        index = self.directory / "index.html"
        if not index.is_file():
            return web.Response(
                status=404, text="The console is not built: run `npm run build` in clients/web (make run does).\n"
            )
        return web.FileResponse(index, headers={"Cache-Control": "no-cache", **CONSOLE_HEADERS})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.directory / "assets" / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        # Asset names carry a content hash: they never change.
        return web.FileResponse(
            path, headers={"Cache-Control": "public, max-age=31536000, immutable", **CONSOLE_HEADERS}
        )


def build_http_app(gateway: GrpcWebGateway, console_dir: Path, health: HealthServicer) -> web.Application:
    # The gateway reads its bodies itself, with limits that answer a gRPC status
    # (grpc_web.read_body); nothing else on this listener takes a body.
    app = web.Application(client_max_size=MAX_TEXT_BODY)
    console = Console(console_dir)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz_handler(health))
    app.router.add_get("/", console.index)
    app.router.add_get("/assets/{name}", console.asset)
    app.router.add_routes(gateway.routes())
    return app
