"""The composition root: builds pools, clients and services from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio as aioredis

from securenow.server.domain.accounts import Principal
from securenow.server.domain.paging import use_token_key as use_page_token_key
from securenow.server.security.encryption import FieldEncryptor
from securenow.server.security.tokens import API_KEY_PREFIX, REFRESH_PREFIX, AccessTokenCodec, OpaqueSecretCodec
from securenow.server.services.agency import AgencyService
from securenow.server.services.analytics import AnalyticsService
from securenow.server.services.audit import AuditService
from securenow.server.services.auth import Authenticator, AuthService
from securenow.server.services.bookings import BookingService
from securenow.server.services.credentials import CredentialMonitor
from securenow.server.services.dispatch import DispatchService
from securenow.server.services.locations import LocationIngestor
from securenow.server.services.providers import ProviderService
from securenow.server.services.routing import Router
from securenow.server.services.search import SearchService
from securenow.server.services.sos import SosService
from securenow.server.services.users import UserService
from securenow.server.settings import Settings
from securenow.server.storage.alert_watch import AlertWatchHub
from securenow.server.storage.dispatch_streams import DispatchHub
from securenow.server.storage.live_state import LiveState, connect_redis
from securenow.server.storage.postgres import Database
from securenow.server.storage.search_elastic import ElasticSearch
from securenow.server.workers.contact_notifier import ContactGatewayConfig, ContactNotifier
from securenow.server.workers.maintenance import Maintenance
from securenow.server.workers.outbox_relay import OutboxRelay
from securenow.server.workers.search_indexer import SearchIndexer
from securenow.server.workers.webhooks import WebhookSender


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
    dispatch: DispatchService
    sos: SosService
    agency: AgencyService
    locations: LocationIngestor
    dispatch_hub: DispatchHub
    watch_hub: AlertWatchHub
    credentials: CredentialMonitor
    relay: OutboxRelay
    webhooks: WebhookSender
    contact_notifier: ContactNotifier
    maintenance: Maintenance
    analytics: AnalyticsService
    search: SearchService
    # Set when SECURENOW_ELASTICSEARCH_URL is: the search copy and what keeps it current.
    elastic: ElasticSearch | None
    search_indexer: SearchIndexer | None

    @classmethod
    async def create(cls, settings: Settings) -> App:
        db = await Database.connect(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            acquire_timeout=settings.db_acquire_timeout_seconds,
        )
        use_page_token_key(settings.derived_key("page-token"))  # every replica reads every replica's tokens
        redis = connect_redis(settings.redis_url)
        live = LiveState(redis, session_cache_seconds=settings.session_cache_ttl_seconds)
        encryptor = FieldEncryptor(settings.data_keys)
        access_tokens = AccessTokenCodec(
            settings.derived_key("access-token"), timedelta(seconds=settings.access_token_ttl_seconds)
        )
        refresh_tokens = OpaqueSecretCodec(REFRESH_PREFIX, settings.derived_key("refresh-token"))
        api_keys = OpaqueSecretCodec(API_KEY_PREFIX, settings.derived_key("api-key"))
        ack_timeout = timedelta(seconds=settings.ack_timeout_seconds)
        dispatch = DispatchService(db, Router(live), default_ack_timeout=ack_timeout)
        sos = SosService(db, live, dispatch)
        authenticator = Authenticator(db, live, access_tokens, api_keys)
        providers = ProviderService(db, live)
        bookings = BookingService(db)
        elastic = None
        if settings.elasticsearch_url:
            elastic = ElasticSearch(settings.elasticsearch_url, index_prefix=settings.elasticsearch_index_prefix)
        return cls(
            settings=settings,
            db=db,
            redis=redis,
            live=live,
            encryptor=encryptor,
            access_tokens=access_tokens,
            api_keys=api_keys,
            authenticator=authenticator,
            auth=AuthService(
                db,
                live,
                access_tokens,
                refresh_tokens,
                refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
                sign_in_attempts_per_minute=settings.sign_in_attempts_per_minute,
                sign_in_attempts_per_address=settings.sign_in_attempts_per_address_per_minute,
            ),
            users=UserService(db, live, encryptor, bookings),
            providers=providers,
            bookings=bookings,
            audit=AuditService(db),
            dispatch=dispatch,
            sos=sos,
            agency=AgencyService(
                db,
                live,
                dispatch,
                encryptor,
                api_keys,
                default_ack_timeout_seconds=settings.ack_timeout_seconds,
                allow_http_webhooks=settings.allow_http_webhooks,
                on_key_revoked=authenticator.forget_api_keys,
            ),
            locations=LocationIngestor(db, live, sos),
            dispatch_hub=DispatchHub(
                db,
                settings.redis_url,
                redis,
                settings.resolved_instance_id,
                redeliver_after=settings.dispatch_redeliver_after_seconds,
                claim_interval=settings.dispatch_claim_interval_seconds,
            ),
            watch_hub=AlertWatchHub(settings.redis_url),
            credentials=CredentialMonitor(db, interval=settings.credential_check_interval_seconds),
            relay=OutboxRelay(
                db,
                redis,
                settings.database_url,
                reconcile_interval=settings.dispatch_reconcile_interval_seconds,
                trim_interval=settings.dispatch_trim_interval_seconds,
                keep_acked_seconds=settings.dispatch_keep_acked_seconds,
            ),
            webhooks=WebhookSender(
                db,
                encryptor,
                max_attempts=settings.webhook_max_attempts,
                base_delay=settings.webhook_base_delay_seconds,
                timeout=settings.webhook_timeout_seconds,
            ),
            contact_notifier=ContactNotifier(db, ContactGatewayConfig.from_settings(settings)),
            maintenance=Maintenance(db, live),
            analytics=AnalyticsService(db, live, calls_per_minute=settings.analytics_calls_per_minute),
            search=SearchService(db, providers, elastic),
            elastic=elastic,
            search_indexer=SearchIndexer(db, elastic, settings.database_url) if elastic else None,
        )

    async def rate_limit(self, caller: Principal, limit: str) -> None:
        """Counts a call of a rate-limited class (transport.access.Rule.limit)."""
        per_minute = {
            "lookup": self.settings.lookup_calls_per_minute,
            "booking": self.settings.booking_calls_per_minute,
        }[limit]
        await self.live.hit_rate_limit(caller.id, limit, per_minute)

    async def close(self) -> None:
        if self.elastic is not None:
            await self.elastic.close()
        await self.redis.aclose()
        await self.db.close()
