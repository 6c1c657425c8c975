"""Bootstrap join tokens: ``ec1.<id>.<secret>``.

The id finds the token's row; only a SHA-256 hash of the secret is stored, so
a copy of the hub's database does not hold usable tokens. The secret has 192
random bits, so a plain hash (not a slow password hash) is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .errors import TokenFormatError

PREFIX = "ec1"


@dataclass(frozen=True, slots=True)
class TokenParts:
    token_id: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.token_id}.{self.secret}"


def new_token() -> TokenParts:
    return TokenParts(token_id=secrets.token_hex(6), secret=secrets.token_urlsafe(24))


def parse_token(text: str) -> TokenParts:
    """Split a token as printed by ``edgectl token create``; TokenFormatError if it is not one."""
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise TokenFormatError("token is malformed: expected ec1.<id>.<secret> as printed by 'edgectl token create'")
    return TokenParts(token_id=parts[1], secret=parts[2])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
