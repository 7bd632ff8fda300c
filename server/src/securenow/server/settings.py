"""Settings, read once from SECURENOW_* environment variables."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import secrets
import socket
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """The settings cannot be used (for example a missing secret in production)."""


class Settings(BaseSettings):
    # hide_input_in_errors: a bad setting's error must not echo the other settings (secrets).
    model_config = SettingsConfigDict(env_prefix="SECURENOW_", extra="ignore", frozen=True, hide_input_in_errors=True)

    env: Environment = Environment.DEVELOPMENT
    database_url: str = "postgresql://securenow:securenow@127.0.0.1:5432/securenow"
    redis_url: str = "redis://127.0.0.1:6379/0"
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    # Search backend: empty = PostgreSQL (embedded); set = Elasticsearch, fed by the workers.
    elasticsearch_url: str = ""
    # Index names are <prefix>providers and <prefix>incidents.
    elasticsearch_index_prefix: str = "securenow-"

    # Secrets. In production both are required; in development a missing one is
    # replaced by an ephemeral random value (tokens and KYC data do not survive a restart).
    # secret_key signs access tokens and keys the HMACs of API keys and refresh tokens.
    secret_key: SecretStr | None = None
    # data_key: base64 of 32 bytes, the AES-256-GCM key for data at rest (KYC, agency
    # credentials). data_keys_old: comma-separated retired keys, still used to decrypt.
    data_key: SecretStr | None = None
    data_keys_old: SecretStr | None = None

    # Production refuses a database, Redis or Elasticsearch URL that reaches another
    # host in plain text (sslmode=require or verify-*, rediss://, https:// instead).
    # true: they are on a private network of their own (one Docker host, say).
    allow_plaintext_backends: bool = False

    tls_cert_file: str = ""
    tls_key_file: str = ""
    # When set, clients must present a certificate signed by this CA (mTLS).
    tls_client_ca_file: str = ""

    access_token_ttl_seconds: int = Field(default=900, gt=0)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    # Bounds how long a cached session can outlive a revocation that could not reach Redis.
    session_cache_ttl_seconds: int = Field(default=60, gt=0)
    sign_in_attempts_per_minute: int = Field(default=10, gt=0)
    # Sign-in and sign-up attempts per caller address (IPv4 address or IPv6 /64) and
    # minute, whatever the account: password spraying across many accounts.
    sign_in_attempts_per_address_per_minute: int = Field(default=100, gt=0)
    # Networks of our own proxies (the embedded gRPC-Web gateway on loopback, Envoy):
    # their x-forwarded-for names the caller. Comma-separated CIDRs.
    trusted_proxies: str = "127.0.0.0/8,::1/128"
    # RecordEvents calls per user and minute (each up to 100 events).
    analytics_calls_per_minute: int = Field(default=120, gt=0)
    # Per caller and minute: searches and safety-score lookups (computed on demand),
    # and new bookings. Nothing on the SOS path is limited.
    lookup_calls_per_minute: int = Field(default=300, gt=0)
    booking_calls_per_minute: int = Field(default=30, gt=0)

    db_pool_min_size: int = Field(default=5, ge=1)
    db_pool_max_size: int = Field(default=20, ge=1)
    # How long a request waits for a database connection before UNAVAILABLE.
    db_acquire_timeout_seconds: float = Field(default=5.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Dispatch: how long an alert waits for acceptance before it escalates (default for
    # new departments, and for alerts that cannot be routed yet).
    ack_timeout_seconds: int = Field(default=30, ge=1, le=600)
    dispatch_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # A StreamDispatch client that sends nothing (not even heartbeats) this long is dropped.
    dispatch_idle_timeout_seconds: float = Field(default=90.0, gt=0)
    # Underneath, gRPC keepalive: a connection whose peer does not answer a ping (sent
    # after this long without traffic) within the timeout is closed with its streams,
    # so a CAD whose network vanished is noticed in about half a minute.
    keepalive_time_seconds: float = Field(default=20.0, gt=0)
    keepalive_timeout_seconds: float = Field(default=10.0, gt=0)
    # Unacknowledged events are sent again after this long (XAUTOCLAIM).
    dispatch_redeliver_after_seconds: float = Field(default=30.0, gt=0)
    dispatch_claim_interval_seconds: float = Field(default=5.0, gt=0)
    # The relay compares each department's stream with Postgres this often (puts back
    # what Redis lost), and trims settled entries acknowledged this long ago.
    dispatch_reconcile_interval_seconds: float = Field(default=2.0, gt=0)
    dispatch_trim_interval_seconds: float = Field(default=30.0, gt=0)
    dispatch_keep_acked_seconds: float = Field(default=300.0, ge=0)
    # Open streams (StreamDispatch, WatchDispatch, WatchSos) end this soon after their
    # credential stops being good (key revoked, session ended, account suspended).
    credential_check_interval_seconds: float = Field(default=2.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_base_delay_seconds: float = Field(default=2.0, gt=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    # Plain-http webhook URLs; allowed by default only in development.
    webhook_allow_http: bool | None = None
    # Emergency contacts of a person who raises an SOS are told through the operator's
    # SMS/voice gateway: one signed POST per contact to this URL (empty: nobody is told,
    # and alerts record NOT_CONFIGURED). The secret signs them as department webhooks
    # are signed; required in production when the URL is set.
    contact_notify_url: str = ""
    contact_notify_secret: SecretStr | None = None
    contact_notify_max_attempts: int = Field(default=5, ge=1)
    contact_notify_base_delay_seconds: float = Field(default=2.0, gt=0)
    contact_notify_timeout_seconds: float = Field(default=5.0, gt=0)
    # Background workers (outbox relay, escalation sweeper, webhooks, contact notifier, maintenance).
    # Off only for replicas that should serve calls and nothing else.
    run_workers: bool = True

    # Origins allowed to call the embedded gRPC-Web endpoint from other sites
    # (comma-separated; the console served by this server is same-origin and needs none).
    cors_origins: str = ""
    # The built dispatcher console served at "/"; empty: clients/web/dist of this checkout.
    console_dir: str = ""

    # Server processes on this machine (SO_REUSEPORT on the gRPC and HTTP ports); 1 runs
    # a single process without a supervisor.
    processes: int = Field(default=1, ge=1, le=64)
    # Set by the supervisor for its processes: bind ports that other processes share.
    reuse_port: bool = False

    # Identifies this replica (Redis consumer names, logs); unique per process.
    instance_id: str = ""

    log_level: str = "INFO"

    @field_validator("contact_notify_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes an unset variable as "": that is no secret, not an empty one.
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.env is Environment.PRODUCTION:
            missing = [n for n in ("secret_key", "data_key") if getattr(self, n) is None]
            if missing:
                raise SettingsError("production mode needs " + ", ".join(f"SECURENOW_{n.upper()}" for n in missing))
            if len(self._secret_key_bytes) < 32:
                raise SettingsError("SECURENOW_SECRET_KEY must be at least 32 characters")
            if "database_url" not in self.model_fields_set:
                # The default URL carries the development password.
                raise SettingsError("production mode needs SECURENOW_DATABASE_URL")
            plaintext = self.plaintext_backends()
            if plaintext and not self.allow_plaintext_backends:
                raise SettingsError(
                    f"production mode needs TLS to {', '.join(plaintext)} on another host"
                    " (sslmode=require or verify-full, rediss://, https://),"
                    " or SECURENOW_ALLOW_PLAINTEXT_BACKENDS=true on a private network"
                )
            if self.contact_notify_url and (
                self.contact_notify_secret is None or len(self.contact_notify_secret.get_secret_value()) < 16
            ):
                raise SettingsError(
                    "production mode needs SECURENOW_CONTACT_NOTIFY_SECRET (at least 16 characters)"
                    " with SECURENOW_CONTACT_NOTIFY_URL"
                )
        if self.contact_notify_url:
            scheme = self.contact_notify_url.partition("://")[0].lower()
            if scheme != "https" and not (scheme == "http" and self.allow_http_webhooks):
                raise SettingsError("SECURENOW_CONTACT_NOTIFY_URL must be an https:// URL")
        if self.data_key is not None or self.data_keys_old is not None:
            _ = self.data_keys  # a malformed key is a bad setting now, not an error at first use
        _ = self.trusted_proxy_networks
        return self

    def plaintext_backends(self) -> list[str]:
        """The backends this configuration reaches on another host without TLS."""
        found = []
        db = urlsplit(self.database_url)
        sslmode = dict(parse_qsl(db.query)).get("sslmode", "")
        if _remote(db.hostname) and sslmode not in ("require", "verify-ca", "verify-full"):
            found.append("PostgreSQL")
        redis = urlsplit(self.redis_url)
        if _remote(redis.hostname) and redis.scheme != "rediss":
            found.append("Redis")
        if self.elasticsearch_url:
            es = urlsplit(self.elasticsearch_url)
            if _remote(es.hostname) and es.scheme != "https":
                found.append("Elasticsearch")
        return found

    @cached_property
    def _secret_key_bytes(self) -> bytes:
        if self.secret_key is None:
            log.warning("SECURENOW_SECRET_KEY not set: using an ephemeral development key")
            return secrets.token_bytes(32)
        return self.secret_key.get_secret_value().encode()

    def derived_key(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose, derived from secret_key."""
        return hashlib.blake2b(purpose.encode(), key=self._secret_key_bytes[:64], digest_size=32).digest()

    @cached_property
    def data_keys(self) -> list[bytes]:
        """AES-256 keys: the first encrypts, all decrypt."""
        if self.data_key is None:
            log.warning("SECURENOW_DATA_KEY not set: using an ephemeral development key")
            keys = [secrets.token_bytes(32)]
        else:
            keys = [_decode_key(self.data_key.get_secret_value(), "SECURENOW_DATA_KEY")]
        if self.data_keys_old is not None:
            keys += [
                _decode_key(k, "SECURENOW_DATA_KEYS_OLD")
                for k in self.data_keys_old.get_secret_value().split(",")
                if k.strip()
            ]
        return keys

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        networks = []
        for text in self.trusted_proxies.split(","):
            if text.strip():
                try:
                    networks.append(ipaddress.ip_network(text.strip(), strict=False))
                except ValueError:
                    raise SettingsError(
                        f"SECURENOW_TRUSTED_PROXIES: {text.strip()!r} is not an IP network (CIDR)"
                    ) from None
        return tuple(networks)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def console_path(self) -> Path:
        if self.console_dir:
            return Path(self.console_dir)
        # Source checkout: <repo>/server/src/securenow/server/settings.py -> <repo>/clients/web/dist
        return Path(__file__).resolve().parents[4] / "clients" / "web" / "dist"

    @cached_property
    def contact_notify_signing_secret(self) -> str:
        """Signs contact notifications; an ephemeral value in development when unset."""
        if self.contact_notify_secret is None:
            if self.contact_notify_url:
                log.warning("SECURENOW_CONTACT_NOTIFY_SECRET not set: signing with an ephemeral development secret")
            return secrets.token_urlsafe(32)
        return self.contact_notify_secret.get_secret_value()

    @property
    def allow_http_webhooks(self) -> bool:
        if self.webhook_allow_http is not None:
            return self.webhook_allow_http
        return self.env is Environment.DEVELOPMENT

    @cached_property
    def resolved_instance_id(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _remote(host: str | None) -> bool:
    """Whether a URL's host is another machine (not a Unix socket, not loopback)."""
    if not host or host == "localhost" or host.startswith("/"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _decode_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise SettingsError(f"{name} must be base64") from exc
    if len(key) != 32:
        raise SettingsError(f"{name} must decode to 32 bytes, got {len(key)}")
    return key
