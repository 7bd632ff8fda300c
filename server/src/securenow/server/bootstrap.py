"""The composition root: builds pools, clients and services from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio as aioredis

from securenow.server.security.encryption import FieldEncryptor
from securenow.server.security.tokens import API_KEY_PREFIX, REFRESH_PREFIX, AccessTokenCodec, OpaqueSecretCodec
from securenow.server.services.audit import AuditService
from securenow.server.services.auth import Authenticator, AuthService
from securenow.server.services.bookings import BookingService
from securenow.server.services.providers import ProviderService
from securenow.server.services.users import UserService
from securenow.server.settings import Settings
from securenow.server.storage.live_state import LiveState, connect_redis
from securenow.server.storage.postgres import Database
from securenow.server.workers.maintenance import Maintenance
from securenow.server.workers.outbox_relay import OutboxRelay


@dataclass
class App:
    settings: Settings
    db: Database
    redis: aioredis.Redis
    live: LiveState
    encryptor: FieldEncryptor
    access_tokens: AccessTokenCodec
    api_keys: OpaqueSecretCodec
    authenticator: Authenticator
    auth: AuthService
    users: UserService
    providers: ProviderService
    bookings: BookingService
    audit: AuditService
    relay: OutboxRelay
    maintenance: Maintenance

    @classmethod
    async def create(cls, settings: Settings) -> App:
        db = await Database.connect(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            acquire_timeout=settings.db_acquire_timeout_seconds,
        )
        redis = connect_redis(settings.redis_url)
        live = LiveState(redis)
        encryptor = FieldEncryptor(settings.data_keys)
        access_tokens = AccessTokenCodec(
            settings.derived_key("access-token"), timedelta(seconds=settings.access_token_ttl_seconds)
        )
        refresh_tokens = OpaqueSecretCodec(REFRESH_PREFIX, settings.derived_key("refresh-token"))
        api_keys = OpaqueSecretCodec(API_KEY_PREFIX, settings.derived_key("api-key"))
        return cls(
            settings=settings,
            db=db,
            redis=redis,
            live=live,
            encryptor=encryptor,
            access_tokens=access_tokens,
            api_keys=api_keys,
            authenticator=Authenticator(
                db, live, access_tokens, api_keys, session_cache_ttl=settings.session_cache_ttl_seconds
            ),
            auth=AuthService(
                db,
                live,
                access_tokens,
                refresh_tokens,
                refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
                sign_in_attempts_per_minute=settings.sign_in_attempts_per_minute,
            ),
            users=UserService(db, live, encryptor),
            providers=ProviderService(db, live),
            bookings=BookingService(db),
            audit=AuditService(db),
            relay=OutboxRelay(db, redis, settings.database_url),
            maintenance=Maintenance(db, live),
        )

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.close()
