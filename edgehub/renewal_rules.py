"""What the hub decides about a node's certificate renewal, apart from the proof: pure rules with an injected clock.

The proof (a signature by the key of the certificate the hub holds) says *who*
asks; these rules say whether the request may be taken *now*:

- its timestamp is within ``RENEWAL_WINDOW_SECONDS`` of the hub's clock
  (with the nonce, which the store takes once, a captured request cannot be
  used again);
- the certificate the hub holds has not expired, or expired less than the
  hub's *offline horizon* ago (``offline_horizon_days``): a node switched off
  for months (a ship, a seasonal site, a spare in a drawer) comes back by
  itself, with no operator and no new token. Past the horizon the node must be
  reset and join again, and the refusal says so.

The node's key is its identity: the horizon lets that key prove a renewal for
longer, it does not make a certificate valid for longer (the broker refuses an
expired certificate whatever the horizon). A node that was revoked or reset is
refused by the store before these rules are asked, at any age
(``EnrollmentStore.renew_certificate``). docs/security.md, "Certificates expire and
the agent renews them", says why this is safe and what the horizon trades.
"""

from __future__ import annotations

import datetime as dt

from edgeprotocol.enrollment import RENEWAL_WINDOW_SECONDS

from .errors import RenewalRefused


def check_timestamp(timestamp: int, *, now: float) -> None:
    """Refuse a request whose ``timestamp`` (Unix seconds) is more than ``RENEWAL_WINDOW_SECONDS`` from ``now``."""
    # Compared before any arithmetic: an integer too large for a float fails the comparison instead of raising.
    if not now - RENEWAL_WINDOW_SECONDS <= timestamp <= now + RENEWAL_WINDOW_SECONDS:
        shown = repr(timestamp) if len(repr(timestamp)) <= 40 else repr(timestamp)[:37] + "..."  # no megabyte echoed
        raise RenewalRefused(f"the request's time {shown} is more than {RENEWAL_WINDOW_SECONDS} s from the hub's "
                             f"({now:.0f}): a replay, or the node's clock is wrong (an agent of this version "
                             "measures its offset from the hub and corrects for it)")


def _days(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 10 else f"{days:.1f} days"


def check_certificate_age(node: str, not_after: dt.datetime, *, now: dt.datetime, horizon_days: float) -> str | None:
    """Whether the certificate of ``node`` that ends at ``not_after`` may still be renewed at ``now``.

    Returns None for a certificate in force, a note for the log when it expired
    within the horizon, and raises RenewalRefused, naming the horizon and the
    cure, when it expired ``horizon_days`` or longer ago (a horizon of 0: an
    expired certificate is never renewed).
    """
    if now < not_after:
        return None
    ago = now - not_after
    horizon = dt.timedelta(days=horizon_days)
    if ago < horizon:
        return (f"its certificate expired at {not_after.isoformat()} ({_days(ago)} ago), within this hub's offline "
                f"horizon of {horizon_days:g} days")
    raise RenewalRefused(
        f"the certificate of node {node!r} expired at {not_after.isoformat()} ({_days(ago)} ago), beyond this hub's "
        f"offline horizon of {horizon_days:g} days (offline_horizon_days); an operator can free the name with: "
        f"edgectl node reset {node}, and the node join again with a new token")
