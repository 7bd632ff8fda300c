"""The authenticated caller of the current RPC and its address, set by the interceptor."""

from __future__ import annotations

from contextvars import ContextVar

from securenow.server.domain.accounts import Principal
from securenow.server.domain.errors import Unauthenticated

_principal: ContextVar[Principal | None] = ContextVar("securenow_principal", default=None)
_address: ContextVar[str] = ContextVar("securenow_client_address", default="")


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("credentials are required", reason="MISSING_CREDENTIALS")
    return principal


def set_principal(principal: Principal | None) -> None:
    _principal.set(principal)


def current_client_address() -> str:
    """The caller's address as per-address limits count it (interceptor.address_key)."""
    return _address.get()


def set_client_address(address: str) -> None:
    _address.set(address)
