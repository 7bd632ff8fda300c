"""The authenticated caller of the current RPC, set by the interceptor."""

from __future__ import annotations

from contextvars import ContextVar

from securenow.server.domain.accounts import Principal
from securenow.server.domain.errors import Unauthenticated

_principal: ContextVar[Principal | None] = ContextVar("securenow_principal", default=None)


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("credentials are required", reason="MISSING_CREDENTIALS")
    return principal


def set_principal(principal: Principal | None) -> None:
    _principal.set(principal)
