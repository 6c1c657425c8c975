"""``JsonHttpClient`` tells "nothing answered" (``Unreachable``) from "something answered an error".

``edgectl`` turns the first into exit code 3 and the second into 1 (or 4 for 404), so scripts can
retry the one and not the other. Real sockets on loopback, no mocks.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from edgekit.http import HttpError, JsonHttpClient, Unreachable
from edgesim.net import free_port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def not_http_server() -> Iterator[int]:
    """A port that answers every connection with a line that is not HTTP, then hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_a_refused_connection_is_unreachable():
    with pytest.raises(Unreachable, match="cannot reach the hub at http://127.0.0.1:") as caught:
        JsonHttpClient(f"http://127.0.0.1:{free_port()}").get("/healthz")
    assert caught.value.status == 0


def test_a_server_that_does_not_answer_in_time_is_unreachable(silent_server: int):
    with pytest.raises(Unreachable, match="timed out"):
        JsonHttpClient(f"http://127.0.0.1:{silent_server}", timeout=0.5).get("/healthz")


def test_an_answer_that_is_not_http_is_an_error_but_not_unreachable(not_http_server: int):
    with pytest.raises(HttpError, match="not a whole HTTP answer") as caught:
        JsonHttpClient(f"http://127.0.0.1:{not_http_server}", timeout=5).get("/healthz")
    assert not isinstance(caught.value, Unreachable)
