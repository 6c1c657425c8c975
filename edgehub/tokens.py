"""Bootstrap join tokens: ``ec1.<id>.<secret>.<pin>`` (the format is :mod:`edgeprotocol.enrollment`'s).

The id finds the token's row; only a SHA-256 hash of the secret is stored, so
a copy of the hub's database does not hold usable tokens. The secret has 192
random bits, so a plain hash (not a slow password hash) is enough. The pin
(the hub CA's SHA-256) is added when the token is printed and is for the
agent: the hub ignores it, and takes tokens without it too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from edgeprotocol.enrollment import JoinToken, TokenFormatError, parse_join_token

from .errors import JoinRefused

# The hub's name for a token: its id and secret (and, when printed, the CA pin).
TokenParts = JoinToken


def new_token() -> TokenParts:
    return TokenParts(token_id=secrets.token_hex(6), secret=secrets.token_urlsafe(24))


def parse_token(text: str) -> TokenParts:
    """Split a token as printed by ``edgectl token create``, pin dropped; JoinRefused (403) if it is not one."""
    try:
        return parse_join_token(text).without_pin()
    except TokenFormatError as exc:
        raise JoinRefused(str(exc)) from exc


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
