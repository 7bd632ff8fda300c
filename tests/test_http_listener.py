"""The HTTP listener's probe: /healthz follows the server's grpc.health.v1 state."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from securenow.server.bootstrap import App
from securenow.server.runtime import Runtime
from tests.conftest import make_settings
from tests.helpers import wait_for


async def probe(runtime: Runtime) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{runtime.http_port}/healthz") as resp,
    ):
        return resp.status, (await resp.json())["status"]


async def test_healthz_is_ready_while_serving_and_not_once_shutdown_begins(database: str) -> None:
    runtime = Runtime(await App.create(make_settings(instance_id="probe", run_workers=False)))
    await runtime.start(grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0")
    stopping: asyncio.Task[None] | None = None
    try:
        assert await probe(runtime) == (200, "SERVING")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        # A graceful stop: in-flight calls may finish, but load balancers and probes
        # must stop sending new work while the HTTP listener is still up.
        stopping = asyncio.create_task(runtime.stop(grace=2))

        async def not_ready() -> bool:
            return await probe(runtime) == (503, "NOT_SERVING")

        await wait_for(not_ready, what="/healthz to report NOT_SERVING during shutdown")
    finally:
        if stopping is None:
            await runtime.stop(grace=1)
        else:
            await stopping
