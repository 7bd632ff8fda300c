"""Settings: production refuses to start without secrets; development does not."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from securenow.server.settings import Settings


def test_production_requires_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECURENOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("SECURENOW_DATA_KEY", raising=False)
    with pytest.raises(ValidationError, match="SECURENOW_SECRET_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(env="production", secret_key="short", data_key=base64.b64encode(b"k" * 32).decode())
    with pytest.raises(ValidationError, match="SECURENOW_DATABASE_URL"):
        # The default database URL carries the development password.
        Settings(env="production", secret_key="x" * 40, data_key=base64.b64encode(b"k" * 32).decode())
    ok = Settings(
        env="production",
        secret_key="x" * 40,
        data_key=base64.b64encode(b"k" * 32).decode(),
        database_url="postgresql://app:s3cret@db/securenow?sslmode=verify-full",
    )
    assert not ok.allow_http_webhooks


def test_production_refuses_plain_text_to_backends_on_other_hosts() -> None:
    secrets = {"secret_key": "x" * 40, "data_key": base64.b64encode(b"k" * 32).decode()}
    remote_db = "postgresql://app:s3cret@db.internal/securenow"
    with pytest.raises(ValidationError, match="TLS to PostgreSQL, Redis, Elasticsearch"):
        Settings(
            env="production",
            database_url=remote_db,
            redis_url="redis://cache.internal:6379/0",
            elasticsearch_url="http://search.internal:9200",
            **secrets,
        )
    encrypted = Settings(
        env="production",
        database_url=remote_db + "?sslmode=require",
        redis_url="rediss://cache.internal:6379/0",
        elasticsearch_url="https://search.internal:9200",
        **secrets,
    )
    assert encrypted.plaintext_backends() == []
    # Loopback and Unix sockets never leave the machine.
    local = Settings(
        env="production",
        database_url="postgresql://app:s3cret@/securenow?host=/run/postgresql",
        redis_url="redis://[::1]:6379/0",
        elasticsearch_url="http://localhost:9200",
        **secrets,
    )
    assert local.plaintext_backends() == []
    # A private network of their own (one Docker host) is an explicit choice.
    private = Settings(env="production", database_url=remote_db, allow_plaintext_backends=True, **secrets)
    assert private.plaintext_backends() == ["PostgreSQL"]


def test_a_bad_setting_is_reported_without_echoing_secrets() -> None:
    data_key = base64.b64encode(b"k" * 32).decode()
    with pytest.raises(ValidationError) as err:
        Settings(env="production", secret_key="short-but-secret", data_key=data_key)
    assert "at least 32" in str(err.value)
    assert "short-but-secret" not in str(err.value)
    assert data_key not in str(err.value)


def test_development_generates_ephemeral_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECURENOW_SECRET_KEY", raising=False)
    dev = Settings(env="development")
    assert len(dev.derived_key("access-token")) == 32
    assert dev.derived_key("a") != dev.derived_key("b")
    assert dev.allow_http_webhooks


def test_data_key_must_be_32_bytes_of_base64() -> None:
    # Refused when the settings are read, before the server touches anything.
    with pytest.raises(ValidationError, match="32 bytes"):
        Settings(data_key=base64.b64encode(b"short").decode())
    with pytest.raises(ValidationError, match="base64"):
        Settings(data_key="not base64!")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURENOW_GRPC_ADDR", "0.0.0.0:6000")
    monkeypatch.setenv("SECURENOW_ACK_TIMEOUT_SECONDS", "45")
    s = Settings()
    assert s.grpc_addr == "0.0.0.0:6000"
    assert s.ack_timeout_seconds == 45


def test_trusted_proxies_are_networks_and_a_bad_one_stops_the_start() -> None:
    assert [str(n) for n in Settings().trusted_proxy_networks] == ["127.0.0.0/8", "::1/128"]
    assert [str(n) for n in Settings(trusted_proxies="10.8.0.0/16, fd00::/8").trusted_proxy_networks] == [
        "10.8.0.0/16",
        "fd00::/8",
    ]
    with pytest.raises(ValidationError, match="SECURENOW_TRUSTED_PROXIES: 'envoy' is not an IP network"):
        Settings(trusted_proxies="10.0.0.0/8,envoy")
