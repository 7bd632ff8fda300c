"""AIP-158 paging: opaque page tokens carrying a keyset cursor."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from securenow.server.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class PageRequest:
    size: int
    cursor: list[Any] | None
    scope: str

    def next_token(self, last_row_cursor: list[Any] | None) -> str:
        if last_row_cursor is None:
            return ""
        body = json.dumps({"s": self.scope, "c": last_row_cursor}, default=str, separators=(",", ":"))
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


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
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = body["c"]
        token_scope = body["s"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token from a previous response") from None
    if token_scope != scope or not isinstance(cursor, list):
        raise InvalidArgument.field("page_token", "belongs to a request with other filters")
    return PageRequest(size, cursor, scope)
