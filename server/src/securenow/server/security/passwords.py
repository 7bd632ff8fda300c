"""argon2id password hashing (argon2-cffi defaults: RFC 9106 low-memory profile).

Passwords are hashed in Unicode normal form NFKC (NIST SP 800-63B 5.1.1.2): "é" typed
as one code point or as "e" + combining accent, or full-width letters from an East
Asian keyboard, are the same password to the person typing it.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from securenow.server.domain.accounts import password_as_hashed

_hasher = PasswordHasher()
# Verifying against this keeps "unknown account" as slow as "wrong password".
_DUMMY_HASH = _hasher.hash("securenow-timing-equaliser")


async def hash_password(password: str) -> str:
    # argon2 is CPU-bound (~50 ms); keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password_as_hashed(password))


async def verify_password(password_hash: str | None, password: str) -> bool:
    candidate = password_as_hashed(password)

    def _verify() -> bool:
        # No account, or one whose hash is blank or not an argon2 hash (an erased
        # account's "!", a password an operator blanked): as slow as a wrong password,
        # and never a match, whatever the candidate.
        if password_hash:
            try:
                return _hasher.verify(password_hash, candidate)
            except VerificationError:
                return False
            except InvalidHashError:
                pass
        try:
            _hasher.verify(_DUMMY_HASH, candidate)
        except VerificationError:
            pass
        return False

    return await asyncio.to_thread(_verify)
