"""Polling the hub for ``edgectl get -w`` and ``edgectl events --follow``: until Ctrl-C or a timeout,
through the hub going away and coming back.

A poll that finds the hub unreachable is said once on stderr and retried at
the interval; when the hub answers again that is said too, and the next poll
is told so (``resumed=True``) in case what it keeps track of moved meanwhile.
Any other failure (the hub refused the token, answered 404 or 500) ends the
loop by raising it, for ``edgectl`` to turn into its exit code. Ctrl-C is the
caller's to catch (``edgectl`` ends a watch with 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgeclient.hub import HubClient
from edgekit.http import Unreachable

DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 0.5
MAX_INTERVAL = 300.0
# One poll waits at most this long for an answer (or what is left of the
# timeout): a hub that accepts connections but does not answer is unreachable
# to a watch, not a hang.
POLL_REQUEST_TIMEOUT = 10.0


def poll_until_stopped(hub: HubClient, poll: Callable[[bool], None], *, interval: float,
                       timeout: float | None, note: Callable[[str], None],
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> None:
    """Call ``poll(resumed)`` every ``interval`` seconds until ``timeout`` seconds have passed (None: until
    Ctrl-C). ``note`` says on stderr that the hub cannot be reached (once per outage) and that it is back."""
    deadline = None if timeout is None else clock() + timeout
    down = False
    while True:
        wait = interval
        if deadline is not None:
            wait = min(wait, deadline - clock())
        if wait > 0:
            sleep(wait)
        if deadline is not None and clock() >= deadline:
            return
        left = POLL_REQUEST_TIMEOUT if deadline is None else deadline - clock()
        hub.http.timeout = max(0.5, min(POLL_REQUEST_TIMEOUT, left))
        try:
            poll(down)
        except Unreachable as exc:
            if not down:
                note(f"edgectl: {exc}; retrying every {interval:g} s")
                down = True
            continue
        if down:
            note(f"edgectl: {hub.http.name} at {hub.http.base_url} answers again")
            down = False
