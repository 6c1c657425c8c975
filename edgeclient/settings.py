"""Where a client finds the hub: the variables ``edgectl`` and the edge deployer both read.

``EDGECOLLAB_HUB`` (the hub's URL), ``EDGECOLLAB_TOKEN`` or the file ``EDGECOLLAB_TOKEN_FILE`` names
(the operator token; the hub writes it to STATE/admin-token) and ``EDGECOLLAB_CA_FILE`` (the CA an
https:// hub is trusted by; STATE/hub-ca.crt).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgeprotocol.errors import EdgeError

HUB_ENV = "EDGECOLLAB_HUB"
TOKEN_ENV = "EDGECOLLAB_TOKEN"
TOKEN_FILE_ENV = "EDGECOLLAB_TOKEN_FILE"
CA_FILE_ENV = "EDGECOLLAB_CA_FILE"
DEFAULT_HUB = "http://127.0.0.1:8470"


class TokenFileError(EdgeError):
    """The file ``EDGECOLLAB_TOKEN_FILE`` names cannot be read or is empty; the message names it."""


def operator_token_from(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The operator token and where it came from: ``EDGECOLLAB_TOKEN``, else the file ``EDGECOLLAB_TOKEN_FILE``
    names; (None, "") when neither is set."""
    if environ.get(TOKEN_ENV, "").strip():
        return environ[TOKEN_ENV].strip(), TOKEN_ENV
    if environ.get(TOKEN_FILE_ENV):
        path = Path(environ[TOKEN_FILE_ENV]).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{TOKEN_FILE_ENV} names {path}, which cannot be read: {exc}") from exc
        if not token:
            raise TokenFileError(f"{TOKEN_FILE_ENV} names {path}, which is empty")
        return token, f"the file {path} ({TOKEN_FILE_ENV})"
    return None, ""
