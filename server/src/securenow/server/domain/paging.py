"""AIP-158 paging: opaque page tokens carrying a keyset cursor.

A token is `base64url(JSON {"s": scope, "c": cursor}) "." base64url(tag)`, the tag an
HMAC-SHA256 (truncated to 128 bits) under a key derived from SECURENOW_SECRET_KEY. The
server only ever reads cursors it wrote itself: a forged or edited token is
INVALID_ARGUMENT before any query sees it, and every replica (same secret) continues
every other replica's listings. The scope binds a token to the filters it was minted
for, as AIP-158 asks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from securenow.server.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Tokens the server mints are well under this; longer text is not worth decoding.
MAX_TOKEN_LENGTH = 2048
_TAG_BYTES = 16
_NOT_ISSUED = "is not a token from a previous response"


class _TokenKey:
    """The HMAC key of page tokens. Until the composition root sets it from the settings
    (`use_token_key`), a random key: tokens then work within this process only."""

    value: bytes = secrets.token_bytes(32)


def use_token_key(key: bytes) -> None:
    """Called once at start-up with settings.derived_key("page-token")."""
    _TokenKey.value = key


def _tag(body: bytes) -> bytes:
    return hmac.new(_TokenKey.value, body, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def not_issued() -> InvalidArgument:
    return InvalidArgument.field("page_token", _NOT_ISSUED)


# Readers of cursor values, for PageRequest.keyset. Each raises ValueError or TypeError
# on a value of the wrong shape.


def cursor_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not a time")
    out = datetime.fromisoformat(value)
    if out.tzinfo is None:
        raise ValueError("a cursor time has a time zone")
    return out


def cursor_uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a UUID")
    return str(uuid.UUID(value))


def cursor_decimal(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise TypeError("not a decimal")
    try:
        out = Decimal(value)
    except InvalidOperation:
        raise ValueError("not a decimal") from None
    if not out.is_finite():
        raise ValueError("not a finite decimal")
    return out


def cursor_int(lo: int, hi: int) -> Callable[[Any], int]:
    def read(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"not an integer in [{lo}, {hi}]")
        return value

    return read


@dataclass(frozen=True)
class PageRequest:
    size: int
    cursor: list[Any] | None
    scope: str

    def next_token(self, last_row_cursor: list[Any] | None) -> str:
        if last_row_cursor is None:
            return ""
        body = json.dumps({"s": self.scope, "c": last_row_cursor}, default=str, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(_tag(body))}"

    def keyset(self, *readers: Callable[[Any], Any]) -> tuple[Any, ...] | None:
        """The cursor's values, each read by its reader; None on the first page. A cursor
        of another shape (say, minted by an older server version) is INVALID_ARGUMENT,
        never a failed query."""
        if self.cursor is None:
            return None
        if len(self.cursor) != len(readers):
            raise not_issued()
        try:
            return tuple(read(value) for read, value in zip(readers, self.cursor, strict=True))
        except (ValueError, TypeError, OverflowError):
            raise not_issued() from None


def page_request(
    page_size: int,
    page_token: str,
    *,
    filters: object,
    default: int = DEFAULT_PAGE_SIZE,
    maximum: int = MAX_PAGE_SIZE,
) -> PageRequest:
    """Validates size and token. `filters` describes the query; a token minted for
    other filters is rejected, as AIP-158 asks."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    size = min(page_size or default, maximum)
    scope = hashlib.sha256(repr(filters).encode()).hexdigest()[:16]
    if not page_token:
        return PageRequest(size, None, scope)
    body_text, dot, tag_text = page_token.partition(".")
    if len(page_token) > MAX_TOKEN_LENGTH or not dot:
        raise not_issued()
    try:
        body, tag = _unb64(body_text), _unb64(tag_text)
    except (ValueError, binascii.Error):
        raise not_issued() from None
    if not hmac.compare_digest(tag, _tag(body)):
        raise not_issued()
    # Signed by this server: the body is the JSON next_token wrote.
    data = json.loads(body)
    if data["s"] != scope:
        raise InvalidArgument.field("page_token", "belongs to a request with other filters")
    return PageRequest(size, data["c"], scope)
