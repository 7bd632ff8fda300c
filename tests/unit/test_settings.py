"""Settings: production refuses to start without secrets; development does not."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from securenow.server.settings import Settings, SettingsError


def test_production_requires_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECURENOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("SECURENOW_DATA_KEY", raising=False)
    with pytest.raises(ValidationError, match="SECURENOW_SECRET_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(env="production", secret_key="short", data_key=base64.b64encode(b"k" * 32).decode())
    ok = Settings(env="production", secret_key="x" * 40, data_key=base64.b64encode(b"k" * 32).decode())
    assert not ok.allow_http_webhooks


def test_development_generates_ephemeral_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECURENOW_SECRET_KEY", raising=False)
    dev = Settings(env="development")
    assert len(dev.derived_key("access-token")) == 32
    assert dev.derived_key("a") != dev.derived_key("b")
    assert dev.allow_http_webhooks


def test_data_key_must_be_32_bytes_of_base64() -> None:
    with pytest.raises(SettingsError, match="32 bytes"):
        Settings(data_key=base64.b64encode(b"short").decode()).data_keys  # noqa: B018


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURENOW_GRPC_ADDR", "0.0.0.0:6000")
    monkeypatch.setenv("SECURENOW_ACK_TIMEOUT_SECONDS", "45")
    s = Settings()
    assert s.grpc_addr == "0.0.0.0:6000"
    assert s.ack_timeout_seconds == 45
