"""An HTTP endpoint standing in for what SecureNow POSTs signed events to: a
department's webhook URL, the operator's SMS gateway for emergency contacts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


class PostReceiver:
    """Records each POST (headers, body, arrival on time.monotonic()) and answers the
    `statuses` queued, in turn, then `status`."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.arrivals: list[float] = []
        self.statuses: list[int] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self.received.put_nowait((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else self.status)


@asynccontextmanager
async def post_receiver(path: str) -> AsyncIterator[PostReceiver]:
    """A PostReceiver listening on 127.0.0.1 (any free port) at `path`."""
    receiver = PostReceiver()
    app = web.Application()
    app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Checks X-SecureNow-Signature as a receiver would (independently of the server's code)."""
    parts = dict(p.split("=", 1) for p in headers["X-SecureNow-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])
