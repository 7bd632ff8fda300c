"""Redis live state, with the key names and channels of the seed design:

    session:{session_id}            cached session (user_data), EX session_cache_ttl; a tombstone once revoked
    rate_limit:{subject}:{action}   INCR + EXPIRE 60
    providers:locations             GEO set of on-duty providers
    providers:last_seen             ZSET provider_id -> unix time of the last location
    user:location:{user_id}         "{lat},{lng},{timestamp}"
    sos:active:{alert_id}           "{user_id},{lat},{lng},{timestamp}" (kept by the outbox relay:
                                    current location and fix time, or ",," and the raise time)
    channels: sos:emergency, booking:update, provider:status

Redis failures surface as `Unavailable`; callers decide whether that is fatal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from securenow.server.domain.errors import ResourceExhausted, Unavailable
from securenow.server.domain.geo import Point

PROVIDERS_GEO = "providers:locations"
PROVIDERS_LAST_SEEN = "providers:last_seen"
CHANNEL_SOS_EMERGENCY = "sos:emergency"
CHANNEL_BOOKING_UPDATE = "booking:update"
CHANNEL_PROVIDER_STATUS = "provider:status"

RATE_LIMITED = Counter(
    "securenow_rate_limited_total", "Calls refused for exceeding a per-caller rate limit.", ["action"]
)

P = ParamSpec("P")
T = TypeVar("T")


def redis_call(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"redis unavailable: {type(exc).__name__}") from exc
        except RedisError as exc:
            raise Unavailable(f"redis error: {exc}") from exc

    return wrapper


def connect_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry_on_timeout=False,
    )


@dataclass(frozen=True)
class NearbyHit:
    provider_id: str
    distance_m: float
    point: Point


def _off_duty(provider_id: str, reason: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"provider_id": provider_id, "on_duty": False, "reason": reason, **details, "timestamp": time.time()}


# A revoked session's cache entry (see _drop_sessions); revocation is final, so it only
# has to outlive any request that was reading the session when it was revoked.
SESSION_TOMBSTONE = json.dumps({"revoked": True})
SESSION_TOMBSTONE_SECONDS = 3600


# SET of "{lat},{lng},{timestamp}" unless the key holds a later timestamp.
_SET_NEWER_LOCATION = """
local current = redis.call('GET', KEYS[1])
if current then
    local stored = tonumber(string.match(current, ',([^,]*)$'))
    if stored and stored > tonumber(ARGV[2]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


class LiveState:
    def __init__(
        self, client: aioredis.Redis, *, session_cache_seconds: int = 60, local_session_seconds: float = 1.0
    ) -> None:
        self.redis = client
        self._session_cache_seconds = session_cache_seconds
        # A one-second copy of session:{id} in this process spares a Redis round trip on
        # most calls. Revocations drop it here at once (drop_sessions); other processes
        # and replicas see them within that second.
        self._local_session_seconds = local_session_seconds
        self._local_sessions: dict[str, tuple[float, dict[str, Any]]] = {}
        # Bumped by every change of sessions made here: a read of Redis that began before
        # the change must not put the old state back into the local copy after it.
        self._local_generation = 0
        self._set_newer_location = client.register_script(_SET_NEWER_LOCATION)

    # Sessions -------------------------------------------------------------------

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        cached = self._local_sessions.get(session_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        generation = self._local_generation
        data = await self._get_session(session_id)
        if data is not None and generation == self._local_generation:
            if len(self._local_sessions) > 50_000:
                self._local_sessions.clear()
            self._local_sessions[session_id] = (now + self._local_session_seconds, data)
        return data

    @redis_call
    async def _get_session(self, session_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"session:{session_id}")
        return json.loads(raw) if raw else None

    @redis_call
    async def put_session(self, session_id: str, data: dict[str, Any]) -> None:
        """Caches a session state read from Postgres. NX: a change written meanwhile (a
        revocation's tombstone, a new role) wins over this possibly stale read."""
        await self.redis.set(f"session:{session_id}", json.dumps(data), ex=self._session_cache_seconds, nx=True)

    async def replace_sessions(self, states: dict[str, dict[str, Any]]) -> None:
        """After a committed change to live sessions (a new role): the new state replaces
        whatever is cached, so no earlier read can bring the old one back."""
        try:
            await self._replace_sessions(states)
        finally:
            self._forget_local(states)

    @redis_call
    async def _replace_sessions(self, states: dict[str, dict[str, Any]]) -> None:
        if states:
            async with self.redis.pipeline(transaction=False) as pipe:
                for session_id, data in states.items():
                    pipe.set(f"session:{session_id}", json.dumps(data), ex=self._session_cache_seconds)
                await pipe.execute()

    async def drop_sessions(self, session_ids: list[str]) -> None:
        try:
            await self._drop_sessions(session_ids)
        finally:
            self._forget_local(session_ids)

    def _forget_local(self, session_ids: Iterable[str]) -> None:
        """Once Redis holds the change: this process's copies go, and reads of Redis
        that began before it (the old state) are not copied (see get_session)."""
        self._local_generation += 1
        for session_id in session_ids:
            self._local_sessions.pop(session_id, None)

    @redis_call
    async def _drop_sessions(self, session_ids: list[str]) -> None:
        """Replaces the cached sessions with tombstones rather than deleting them, so a
        request that read the session from Postgres just before the revocation cannot
        put the live state back (put_session only fills an empty key)."""
        if session_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for s in session_ids:
                    pipe.set(f"session:{s}", SESSION_TOMBSTONE, ex=SESSION_TOMBSTONE_SECONDS)
                await pipe.execute()

    # Rate limits ----------------------------------------------------------------

    @redis_call
    async def _count(self, key: str, window_seconds: int) -> tuple[int, int]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_seconds, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        return int(count), int(ttl)

    async def hit_rate_limit(self, subject: str, action: str, limit: int, window_seconds: int = 60) -> None:
        """Counts one attempt; raises ResourceExhausted past the limit. Fails open
        (allows) when Redis is down: availability of sign-in and SOS wins."""
        try:
            count, ttl = await self._count(f"rate_limit:{subject}:{action}", window_seconds)
        except Unavailable:
            return
        if count > limit:
            RATE_LIMITED.labels(action).inc()
            raise ResourceExhausted(
                f"too many {action} attempts; retry in {max(ttl, 1)} s", retry_after_seconds=float(max(ttl, 1))
            )

    @redis_call
    async def clear_rate_limit(self, subject: str, action: str) -> None:
        await self.redis.delete(f"rate_limit:{subject}:{action}")

    # Providers ------------------------------------------------------------------

    # Every change of duty is announced on provider:status in the same MULTI as the
    # change itself, so listeners never miss one (nor hear of one that did not happen).

    @redis_call
    async def put_provider_on_duty(self, provider_id: str, point: Point, status: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.geoadd(PROVIDERS_GEO, (point.longitude, point.latitude, provider_id))
            pipe.zadd(PROVIDERS_LAST_SEEN, {provider_id: time.time()})
            pipe.publish(CHANNEL_PROVIDER_STATUS, json.dumps(status, default=str))
            await pipe.execute()

    @redis_call
    async def take_provider_off_duty(self, provider_id: str, reason: str, **details: Any) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(PROVIDERS_GEO, provider_id)
            pipe.zrem(PROVIDERS_LAST_SEEN, provider_id)
            pipe.publish(CHANNEL_PROVIDER_STATUS, json.dumps(_off_duty(provider_id, reason, details)))
            await pipe.execute()

    @redis_call
    async def on_duty(self, provider_ids: list[str]) -> set[str]:
        if not provider_ids:
            return set()
        scores = await self.redis.zmscore(PROVIDERS_LAST_SEEN, provider_ids)
        return {pid for pid, score in zip(provider_ids, scores, strict=True) if score is not None}

    @redis_call
    async def nearby_providers(self, point: Point, radius_m: float, count: int) -> list[NearbyHit]:
        hits: list[Any] = await self.redis.geosearch(  # type: ignore[assignment]
            PROVIDERS_GEO,
            longitude=point.longitude,
            latitude=point.latitude,
            radius=radius_m,
            unit="m",
            sort="ASC",
            count=count,
            withdist=True,
            withcoord=True,
        )
        return [NearbyHit(str(name), float(dist), Point(float(lat), float(lng))) for name, dist, (lng, lat) in hits]

    @redis_call
    async def expire_stale_providers(self, max_age_seconds: float) -> int:
        """Takes providers off duty whose app stopped reporting its location."""
        cutoff = time.time() - max_age_seconds
        stale = await self.redis.zrangebyscore(PROVIDERS_LAST_SEEN, "-inf", cutoff)
        if stale:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(PROVIDERS_GEO, *stale)
                pipe.zrem(PROVIDERS_LAST_SEEN, *stale)
                for provider_id in stale:
                    off = _off_duty(str(provider_id), "location_stale", {})
                    pipe.publish(CHANNEL_PROVIDER_STATUS, json.dumps(off))
                await pipe.execute()
        return len(stale)

    # Live locations and alerts -------------------------------------------------

    @redis_call
    async def set_user_locations(self, fixes: dict[str, tuple[Point, float]], ttl_seconds: int = 86400) -> None:
        """`user:location:{user_id}` for each user -> (point, unix time of the fix), unless
        the key already holds a newer fix (another replica may store a later one first)."""
        if not fixes:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, (point, timestamp) in fixes.items():
                value = f"{point.latitude},{point.longitude},{timestamp}"
                await self._set_newer_location(
                    keys=[f"user:location:{user_id}"], args=[value, timestamp, ttl_seconds], client=pipe
                )
            await pipe.execute()

    @redis_call
    async def get_user_location(self, user_id: str) -> tuple[Point, float] | None:
        raw = await self.redis.get(f"user:location:{user_id}")
        if not raw:
            return None
        lat, lng, ts = str(raw).split(",")
        return Point(float(lat), float(lng)), float(ts)

    @redis_call
    async def forget_user_location(self, user_id: str) -> None:
        await self.redis.delete(f"user:location:{user_id}")

    @redis_call
    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await self.redis.publish(channel, json.dumps(payload, default=str))
