"""The HTTP listener (SECURENOW_HTTP_ADDR): the embedded gRPC-Web endpoint, the
dispatcher console (static files), Prometheus /metrics and /healthz."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from securenow.server.transport.grpc_web import GrpcWebGateway


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_http_app(gateway: GrpcWebGateway, console_dir: Path | None) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024 + 1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(gateway.routes())
    if console_dir is not None and (console_dir / "index.html").is_file():
        index = console_dir / "index.html"

        async def console(_: web.Request) -> web.FileResponse:
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

        app.router.add_get("/", console)
        if (console_dir / "assets").is_dir():
            app.router.add_static("/assets", console_dir / "assets")
    return app
