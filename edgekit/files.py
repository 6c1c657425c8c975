"""Writing files that must never be seen half-written or by another user."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode`` (owner-only by default), replacing it atomically.

    The data goes to a temporary file beside ``path`` created with ``mode`` (so a
    key is never readable by others, not even for a moment), is synced, then
    renamed over ``path``: a crash leaves the old file or the new one.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)  # O_CREAT's mode applies only to a new file
    os.replace(tmp, path)


def write_if_changed(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """``write_atomic`` unless ``path`` holds ``data`` already; whether it was written (so a reader that must
    be told, a broker to signal, is told only of a change)."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data, mode=mode)
    return True
