"""AES-256-GCM envelopes for sensitive columns (kyc_data, api_credentials).

An envelope is JSON: {"v": 1, "kid": <key id>, "nonce": b64, "ct": b64}. The row's id
is bound as associated data, so a ciphertext copied to another row does not decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class DecryptionError(Exception):
    """No configured key decrypts the envelope (wrong key or tampered data)."""


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:12]


class FieldEncryptor:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one data key is needed")
        self._active = keys[0]
        self._by_id = {_key_id(k): AESGCM(k) for k in keys}

    def encrypt(self, value: dict[str, Any], *, bound_to: str) -> dict[str, Any]:
        nonce = os.urandom(12)
        plaintext = json.dumps(value, separators=(",", ":")).encode()
        ct = AESGCM(self._active).encrypt(nonce, plaintext, bound_to.encode())
        return {
            "v": 1,
            "kid": _key_id(self._active),
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def decrypt(self, envelope: dict[str, Any], *, bound_to: str) -> dict[str, Any]:
        aead = self._by_id.get(str(envelope.get("kid")))
        if aead is None or envelope.get("v") != 1:
            raise DecryptionError("no key for this envelope")
        try:
            plaintext = aead.decrypt(
                base64.b64decode(envelope["nonce"]), base64.b64decode(envelope["ct"]), bound_to.encode()
            )
        except (InvalidTag, KeyError, ValueError):
            raise DecryptionError("envelope does not decrypt") from None
        result: dict[str, Any] = json.loads(plaintext)
        return result
