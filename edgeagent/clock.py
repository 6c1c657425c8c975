"""The node's clock, corrected by the hub's: the offset measured from the hub's signed time.

Edge boards often have no real-time clock, or a flat battery behind it, and
boot with a stale date; NTP may be out of reach. A node whose clock is wrong
would stamp its renewal proof with a time the hub refuses (more than 300 s
off), think its certificate due or expired when it is not (or the other way
round), and fail every TLS handshake on the certificates' dates. So the
agent measures how far its clock is from the hub's and judges time by
``local + offset`` wherever it must be right: the renewal proof's timestamp,
whether the node certificate is due or expired, and the validity of the
certificates the hub's HTTPS and the broker show.

**Measuring.** ``GET /api/v1/time?nonce=HEX`` on the hub URL from
``identity.json``, over TLS that verifies nothing (a wrong clock fails
verification, which is the point; and the hub's chain may have changed): the
answer is trusted because it is signed by the hub key pinned at join over the
node's fresh nonce (``edgeprotocol.hub_facts``). The hub stamps its time
somewhere in the round trip; the node takes the middle, so the error is at
most half the round trip, and an answer slower than ``MAX_ROUND_TRIP_SECONDS``
is not taken (a man in the middle can delay an answer, not change it: this
bounds what the delay can do to ±5 s). The agent measures when it starts,
before it renews or connects, and at every renewal check (the renewer's
timer, at most hourly).

**Keeping it.** ``STATE/clock.json`` (written atomically) holds the offset,
when and how it was measured, and the *high-water mark*: the latest hub time
this node has seen. A measurement that would put the hub's time before the
mark (more than ``HIGH_WATER_SLACK_SECONDS``, an NTP step on the hub) is
refused and the earlier offset kept, and the corrected time never goes below
the mark: an old time cannot be made to pass for now (a replayed or forged
answer, a hub restored on a machine whose clock was set back), so a
certificate that has expired stays expired. Within the process that
measured, time runs on from the hub's answer by the boot clock
(``CLOCK_BOOTTIME``, which counts suspend), so a step of the node's own clock
(NTP coming back, say) changes nothing until the next measurement.

**Significant offset.** Beyond ``SIGNIFICANT_OFFSET_SECONDS`` (60 s) the node
reports ``ClockSynchronized=False`` with the offset, and its TLS contexts
check certificate dates against the corrected time (``edgekit.tls_time``:
OpenSSL's own date checks off, chain and host name still verified, the dates
checked right after each handshake). Within it, OpenSSL checks the dates
against the process clock as usual: certificates the hub issues start 5
minutes before they are issued (``edgehub.identity.BACKDATE``) and a renewal
may be 300 s off, so such a clock passes every check; 60 s is well above
what a measurement can be off by (±5 s) and what a clock without NTP drifts
in a day (a few seconds), so a right clock never raises the condition, and
well below the 300 s where it would matter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edgeclient.hub import HubClient
from edgekit.files import write_atomic
from edgekit.http import HttpError, JsonHttpClient, unverified_tls_context
from edgekit.tls_time import check_time_against
from edgeprotocol.errors import EdgeError, ProtocolError
from edgeprotocol.hub_facts import HubFacts, open_facts
from edgeprotocol.messages import Condition, ConditionType
from edgeprotocol.signing import load_public_key

if TYPE_CHECKING:  # identity.py imports this module (the join measures the hub's time too)
    from .identity import NodeIdentity

logger = logging.getLogger(__name__)

CLOCK_FILE = "clock.json"
# Beyond this the clock is reported and TLS dates are checked by the corrected time (the module's docstring
# says why 60 s: far above a measurement's error and a day's drift, far below the hub's 300 s margins).
SIGNIFICANT_OFFSET_SECONDS = 60.0
# An answer slower than this is not taken: its time may be off by up to half of it.
MAX_ROUND_TRIP_SECONDS = 10.0
# Each request of a measurement waits at most this long (urllib's timeout is per socket operation).
MEASURE_TIMEOUT_SECONDS = 10.0
# How far back the hub's time may go between two answers and still be taken (a step of the hub's own clock).
HIGH_WATER_SLACK_SECONDS = 60.0
CONDITION: ConditionType = "ClockSynchronized"


class ClockError(EdgeError):
    """The hub's time could not be measured or taken now; the message says why."""


def _boottime() -> float:
    """Seconds since boot, suspend included: how long passed since a measurement, whatever the wall clock did."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class Measurement:
    """One signed answer of the hub, timed."""

    offset: float        # hub time − local time, seconds
    hub_time: float      # the time the hub answered (Unix seconds)
    local_time: float    # this node's clock at that moment (the middle of the round trip)
    round_trip: float    # seconds
    ticks: float         # the boot clock at that moment (_boottime)
    facts: HubFacts


@dataclass(frozen=True, slots=True)
class ClockRecord:
    """``STATE/clock.json``."""

    offset_seconds: float
    hub_time: float
    local_time: float
    round_trip_seconds: float
    high_water: float    # the latest hub time this node has seen

    @classmethod
    def load(cls, path: Path) -> ClockRecord | None:
        try:
            data = json.loads(path.read_text())
            record = cls(**{k: float(data[k]) for k in ("offset_seconds", "hub_time", "local_time",
                                                         "round_trip_seconds", "high_water")})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("Ignoring %s (%s): the hub's time is measured again", path, exc)
            return None
        if not all(math.isfinite(v) for v in asdict(record).values()):
            logger.warning("Ignoring %s (a number in it is not finite): the hub's time is measured again", path)
            return None
        return record

    def save(self, path: Path) -> None:
        data = {**asdict(self), "measured_at": _iso(self.hub_time), "high_water_at": _iso(self.high_water)}
        write_atomic(path, json.dumps(data, indent=2) + "\n", mode=0o644)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_offset(offset: float) -> str:
    """``365.0 days behind``, ``2.5 minutes ahead of``: how the node's clock stands to the hub's."""
    size = abs(offset)
    for unit, seconds in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if size >= seconds:
            amount = f"{size / seconds:.1f} {unit}"
            break
    else:
        amount = f"{size:.1f} seconds"
    return f"{amount} {'behind' if offset > 0 else 'ahead of'}"


@dataclass(frozen=True, slots=True)
class Asked:
    """The hub's answer to one time request, timed, not verified yet (a joining node learns the hub's key from
    the join's answer, after it asked)."""

    answer: Any
    nonce: str
    started_wall: float
    started_ticks: float
    round_trip: float
    ticks: Callable[[], float]

    @property
    def hub_time(self) -> float:
        """The time the hub answered, unverified; ClockError when the answer holds no time."""
        moment = self.answer.get("time") if isinstance(self.answer, dict) else None
        if isinstance(moment, bool) or not isinstance(moment, int | float) or not math.isfinite(moment):
            raise ClockError("the hub's time answer holds no time")
        return float(moment)

    @property
    def offset(self) -> float:
        return self.hub_time - (self.started_wall + self.round_trip / 2)

    def now(self) -> float:
        """The hub's time now, by this answer: for checking certificate dates before the answer can be verified."""
        return self.hub_time + (self.ticks() - (self.started_ticks + self.round_trip / 2))

    def verified(self, hub_public_key: str) -> Measurement:
        """The measurement, once the answer verifies with ``hub_public_key`` (PEM) and came back in time."""
        try:
            facts = open_facts(self.answer, load_public_key(hub_public_key), nonce=self.nonce)
        except ProtocolError as exc:
            raise ClockError(f"the hub's time was refused: {exc}") from exc
        if self.round_trip > MAX_ROUND_TRIP_SECONDS:
            raise ClockError(f"the hub's time took {self.round_trip:.1f} s to arrive (more than "
                             f"{MAX_ROUND_TRIP_SECONDS:.0f} s): too late to tell the time by; asked again later")
        middle = self.started_wall + self.round_trip / 2
        return Measurement(offset=facts.time - middle, hub_time=facts.time, local_time=middle,
                           round_trip=self.round_trip, ticks=self.started_ticks + self.round_trip / 2, facts=facts)


def ask(hub_url: str, *, timeout: float = MEASURE_TIMEOUT_SECONDS, wall: Callable[[], float] = time.time,
        ticks: Callable[[], float] = _boottime) -> Asked:
    """Ask the hub at ``hub_url`` for its signed time, with a fresh nonce, and time the answer. Blocking (HTTP):
    call it from a thread. ClockError when the hub cannot be asked."""
    nonce = secrets.token_hex(16)
    https = urlsplit(hub_url).scheme == "https"
    # Unverified on purpose: see the module's docstring. The signature and the nonce are what is trusted.
    hub = HubClient(JsonHttpClient(hub_url, timeout=timeout,
                                   ssl_context=unverified_tls_context() if https else None))
    started, started_wall = ticks(), wall()
    try:
        answer = hub.signed_time(nonce)
    except HttpError as exc:
        raise ClockError(f"cannot ask the hub for its time: {exc}") from exc
    return Asked(answer=answer, nonce=nonce, started_wall=started_wall, started_ticks=started,
                 round_trip=ticks() - started, ticks=ticks)


def measure(identity: NodeIdentity, *, timeout: float = MEASURE_TIMEOUT_SECONDS,
            wall: Callable[[], float] = time.time, ticks: Callable[[], float] = _boottime) -> Measurement:
    """Ask the hub this node joined for its signed time and check it with the hub key pinned at join. Blocking
    (HTTP): call it from a thread.

    ClockError when the hub cannot be asked, the answer does not verify, or it took too long to be useful.
    """
    return ask(identity.hub_url, timeout=timeout, wall=wall, ticks=ticks).verified(identity.hub_public_key)


class HubClock:
    """The hub's time as this node knows it: ``now()`` is the node's clock corrected by the last offset taken.

    Read by whatever judges time on the node (the renewer, the renewal process, the TLS contexts, doctor,
    status); measured by the agent (``refresh``). Without a measurement, the node's own clock.
    """

    def __init__(self, state_dir: Path, *, threshold: float = SIGNIFICANT_OFFSET_SECONDS,
                 wall: Callable[[], float] = time.time, ticks: Callable[[], float] = _boottime) -> None:
        self.path = state_dir / CLOCK_FILE
        self.threshold = threshold
        self._wall, self._ticks = wall, ticks
        self._record = ClockRecord.load(self.path)
        # (hub time, boot clock) of the last measurement made in this process: time runs on from it.
        self._anchor: tuple[float, float] | None = None
        self._condition: Condition | None = None
        self._said = False  # whether this process has logged the condition
        self._update_condition()

    @property
    def record(self) -> ClockRecord | None:
        return self._record

    def now(self) -> float:
        """The corrected time, Unix seconds: never before the latest hub time seen."""
        if self._anchor is not None:
            hub_time, at = self._anchor
            moment = hub_time + (self._ticks() - at)
        elif self._record is not None:
            moment = self._wall() + self._record.offset_seconds
        else:
            moment = self._wall()
        return max(moment, self._record.high_water) if self._record is not None else moment

    def now_utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC)

    @property
    def offset(self) -> float:
        """How far the hub's time is ahead of this node's clock now, seconds (0 without a measurement)."""
        return self.now() - self._wall() if self._record is not None else 0.0

    @property
    def significant(self) -> bool:
        """Whether the node's clock is too far off to be trusted for certificate dates."""
        return abs(self.offset) > self.threshold

    def take(self, measurement: Measurement) -> None:
        """Use ``measurement`` from now on and keep it in ``STATE/clock.json``; ClockError (and the earlier
        offset kept) when it would move the hub's time back before what this node has seen. Blocking (a file)."""
        before = self._record
        if before is not None and measurement.hub_time < before.high_water - HIGH_WATER_SLACK_SECONDS:
            raise ClockError(
                f"the hub answered the time {_iso(measurement.hub_time)}, before {_iso(before.high_water)}, the latest "
                "hub time this node has seen: refused (time does not go back; was the hub's clock set back?); "
                f"the node keeps its offset of {before.offset_seconds:+.1f} s")
        record = ClockRecord(offset_seconds=measurement.offset, hub_time=measurement.hub_time,
                             local_time=measurement.local_time, round_trip_seconds=measurement.round_trip,
                             high_water=max(measurement.hub_time, before.high_water if before else 0.0))
        record.save(self.path)
        self._record, self._anchor = record, (measurement.hub_time, measurement.ticks)
        was = self._condition
        self._update_condition()
        moved = before is None or abs(measurement.offset - before.offset_seconds) > self.threshold
        if self._condition is not None and (not self._said or was is None or moved):
            # Said once by each process that measures, and when the offset changes: not at every measurement.
            logger.warning("Clock: %s", self._condition.message)
            self._said = True
        elif self._condition is None and was is not None:
            logger.info("Clock: the node's clock is within %.0f s of the hub's again (offset %+.1f s)",
                        self.threshold, measurement.offset)
        else:
            logger.debug("Clock: offset %+.3f s (round trip %.3f s)", measurement.offset, measurement.round_trip)

    async def refresh(self, identity: NodeIdentity) -> Measurement:
        """Measure the offset now and take it (``measure`` and ``take``, off the event loop); ClockError."""
        measurement = await asyncio.wait_for(asyncio.to_thread(measure, identity), 2 * MEASURE_TIMEOUT_SECONDS + 5)
        await asyncio.to_thread(self.take, measurement)
        return measurement

    def _update_condition(self) -> None:
        record = self._record
        if record is None or abs(record.offset_seconds) <= self.threshold:
            self._condition = None  # a clock that is right raises no condition
            return
        offset = record.offset_seconds
        message = (f"the node's clock is {describe_offset(offset)} the hub's (offset {offset:+.1f} s, measured "
                   f"{_iso(record.hub_time)}); the agent corrects for it")
        before = self._condition
        self._condition = Condition(type=CONDITION, status="False",
                                    reason="ClockBehindHub" if offset > 0 else "ClockAheadOfHub", message=message,
                                    since=before.since if before is not None else self._stamp())

    def _stamp(self) -> str:
        """The corrected time in the protocol's format (``edgeprotocol.messages.now``'s)."""
        return self.now_utc().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """``ClockSynchronized=False`` with the offset when the clock is off by more than the threshold; else none."""
        return (self._condition,) if self._condition is not None else ()

    def adjust_tls(self, context: ssl.SSLContext) -> None:
        """For ``TlsIdentity.adjust`` and ``NodeIdentity.hub_client``: when the clock is significantly off, check
        certificate dates against the corrected time (``edgekit.tls_time``); else leave OpenSSL's checks as they are."""
        if self.significant and context.verify_mode != ssl.CERT_NONE:
            check_time_against(context, self.now)
