"""argon2id password hashing (argon2-cffi defaults: RFC 9106 low-memory profile).

Passwords are hashed in Unicode normal form NFKC (NIST SP 800-63B 5.1.1.2): "é" typed
as one code point or as "e" + combining accent, or full-width letters from an East
Asian keyboard, are the same password to the person typing it.
"""

from __future__ import annotations

import asyncio
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verifying against this keeps "unknown account" as slow as "wrong password".
_DUMMY_HASH = _hasher.hash("securenow-timing-equaliser")


def normalise_password(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


async def hash_password(password: str) -> str:
    # argon2 is CPU-bound (~50 ms); keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, normalise_password(password))


async def verify_password(password_hash: str | None, password: str) -> bool:
    normalised = normalise_password(password)

    def _check(candidate: str) -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, candidate)
        except (VerificationError, InvalidHashError):
            return False

    def _verify() -> bool:
        ok = _check(normalised)
        if not ok and normalised != password:
            # A hash made before passwords were normalised holds the password as typed
            # (an unknown account pays the same second verification: same timing).
            ok = _check(password)
        return ok and password_hash is not None

    return await asyncio.to_thread(_verify)
