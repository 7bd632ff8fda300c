"""Access tokens (JWT, HS256) and opaque secrets (refresh tokens, API keys).

Opaque secrets have the form `<prefix>_<id>.<secret>`; only HMAC-SHA256(secret) is
stored, keyed by a server key, so a database leak does not reveal usable tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

ACCESS_TOKEN_TYPE = "access"
REFRESH_PREFIX = "rt"
API_KEY_PREFIX = "snk"
_ALGORITHM = "HS256"
_ISSUER = "securenow"
# Replicas share the signing key, not a clock: a token issued a moment ago by one whose
# clock runs ahead has its `iat` in this one's future. Allowed for `iat` and `nbf`
# only; expiry is exact.
CLOCK_SKEW_SECONDS = 30


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    role: str
    expire_time: datetime


class InvalidToken(Exception):
    """The token is malformed, expired or not signed by us."""


class AccessTokenCodec:
    def __init__(self, key: bytes, ttl: timedelta) -> None:
        self._key = key
        self.ttl = ttl

    def issue(
        self,
        user_id: str,
        session_id: str,
        role: str,
        now: datetime | None = None,
        *,
        not_after: datetime | None = None,
    ) -> tuple[str, datetime]:
        """A token for `ttl`, or until `not_after` (its session's end) if that is sooner."""
        now = now or datetime.now(UTC)
        expire = now + self.ttl
        if not_after is not None and not_after < expire:
            expire = not_after
        token = jwt.encode(
            {
                "iss": _ISSUER,
                "sub": user_id,
                "sid": session_id,
                "role": role,
                "typ": ACCESS_TOKEN_TYPE,
                "iat": int(now.timestamp()),
                "exp": int(expire.timestamp()),
                "jti": uuid.uuid4().hex,
            },
            self._key,
            algorithm=_ALGORITHM,
        )
        return token, expire.replace(microsecond=0)

    def decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                leeway=CLOCK_SKEW_SECONDS,  # for iat and nbf; exp is checked exactly below
                options={"require": ["exp", "iat", "iss", "sub", "sid", "typ"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("not an access token")
        try:
            session_id = str(uuid.UUID(str(claims["sid"])))
        except ValueError:
            raise InvalidToken("malformed session id") from None
        expire_time = datetime.fromtimestamp(int(claims["exp"]), UTC)
        if expire_time <= datetime.now(UTC):
            raise InvalidToken("expired")
        return AccessClaims(
            user_id=str(claims["sub"]),
            session_id=session_id,
            role=str(claims.get("role", "")),
            expire_time=expire_time,
        )


@dataclass(frozen=True)
class OpaqueSecret:
    """A freshly minted secret: `token` goes to the client once, `digest` to the database."""

    id: str
    token: str
    digest: bytes


class OpaqueSecretCodec:
    def __init__(self, prefix: str, key: bytes) -> None:
        self.prefix = prefix
        self._key = key

    def mint(self) -> OpaqueSecret:
        token_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        return OpaqueSecret(token_id, f"{self.prefix}_{token_id}.{secret}", self._digest(secret))

    def parse(self, token: str) -> tuple[str, str]:
        """Returns (id, secret) or raises InvalidToken."""
        head, sep, secret = token.partition(".")
        prefix, sep2, token_id = head.partition("_")
        if not (sep and sep2) or prefix != self.prefix or not secret:
            raise InvalidToken("malformed token")
        try:
            token_id = str(uuid.UUID(token_id))
        except ValueError:
            raise InvalidToken("malformed token") from None
        return token_id, secret

    def matches(self, secret: str, digest: bytes) -> bool:
        return hmac.compare_digest(self._digest(secret), digest)

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).digest()
