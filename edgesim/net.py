"""Loopback helpers."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999 by default), from which every outgoing connection takes its local
# port: a port picked there can be taken by a client's connection before the server binds it, and processes
# asking the kernel for a free port at the same moment (tests on several workers) tend to get the same one.
_PICKED_FROM = range(20000, 32768)


def _binds(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, picked at random outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(_PICKED_FROM)
        if _binds(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
