"""WatchSos fan-out: one Redis Pub/Sub connection per process (PSUBSCRIBE
sos:alert:*) feeds every local watcher in memory. Pub/Sub can drop messages while
Redis is unreachable, so after each subscription (the first included) every watcher is
told to resync (it re-reads the alert and sends a fresh snapshot); Postgres stays the
truth."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WATCH_CHANNEL_PREFIX = "sos:alert:"
RESYNC = "resync"
WATCHERS = Gauge("securenow_alert_watchers", "Open WatchSos streams in this process.")


def watch_channel(alert_id: str) -> str:
    return f"{WATCH_CHANNEL_PREFIX}{alert_id}"


class AlertWatchHub:
    def __init__(self, redis_url: str) -> None:
        self._redis: Any = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=2)
        self._watchers: dict[str, set[asyncio.Queue[str]]] = {}

    def watch(self, alert_id: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self._watchers.setdefault(alert_id, set()).add(queue)
        WATCHERS.inc()
        return queue

    def unwatch(self, alert_id: str, queue: asyncio.Queue[str]) -> None:
        queues = self._watchers.get(alert_id)
        if queues is not None and queue in queues:
            queues.discard(queue)
            WATCHERS.dec()
            if not queues:
                del self._watchers[alert_id]

    def _deliver(self, alert_id: str, event: str) -> None:
        for queue in list(self._watchers.get(alert_id, ())):
            if queue.full():
                continue  # a watcher this far behind resyncs from the next snapshot anyway
            queue.put_nowait(event)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{WATCH_CHANNEL_PREFIX}*")
                # Whatever was published before this subscription (while Redis was
                # unreachable, or before the first one: watchers may open as the process
                # starts) reached nobody: every watcher re-reads the alert.
                for alert_id in list(self._watchers):
                    self._deliver(alert_id, RESYNC)
                backoff = 0.1
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    alert_id = str(message["channel"])[len(WATCH_CHANNEL_PREFIX) :]
                    try:
                        event = json.loads(message["data"]).get("event", RESYNC)
                    except (ValueError, AttributeError):
                        event = RESYNC
                    self._deliver(alert_id, event)
            except (RedisError, OSError) as exc:
                log.warning("alert watch hub: Redis unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
        await self._redis.aclose()
