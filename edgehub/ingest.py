"""What nodes send the hub over MQTT: status, presence, events and resync requests.

Anyone who can reach the broker can publish on a node's topics, so every
message is bounded before the hub spends anything on it:

- a **status** has its release and condition messages cut to
  ``MAX_TEXT_CHARS`` (the protocol's decoder already cut each release's pods,
  containers and logs to ``MAX_PODS_DETAILED``, ``MAX_CONTAINERS_DETAILED``
  and ``MAX_LAST_LOG``); one that still encodes to more than
  ``max_status_bytes`` is stored without its pods' detail (each release's
  reason, restarts and message kept); it is dropped (with a warning) when it
  is over even so, lists more than ``MAX_STATUS_RELEASES`` releases or
  ``MAX_STATUS_CONDITIONS`` conditions, or its ``seq`` is more than
  ``max_seq_jump`` past the node's last (see :meth:`ReportStore.save_status`,
  which also says what a re-join does);
- an **event** has its message cut likewise and is dropped past
  ``MAX_EVENT_BYTES`` or ``max_seq_jump`` (events are kept by count, in
  arrival order: :meth:`ReportStore.add_event`);
- a **presence** is dropped unless its time is an RFC 3339 time of at most
  ``MAX_TIME_CHARS`` characters;
- a **resync** is answered at most once per node every
  ``resync_interval_seconds`` (a flood costs one re-publish), and only with
  the assignments the node lacks or holds an older revision of.

What a node that is not registered, or was reset or revoked, sends is
dropped: only the key that joined a name (and joined it last) is heard.

Thousands of nodes report at once (a rollout, a broker restart), so messages
are taken in batches: the MQTT session hands each to ``take``, which only
queues it, and one worker handles up to ``INGEST_BATCH`` queued messages
together, at most one batch every ``INGEST_INTERVAL`` while they keep
coming. A batch's statuses, events and presences are stored in one write
(``ReportStore.save_reports``: usually one statement per kind, since every
statement the store's thread runs must win the GIL back from a busy event
loop), and what follows a stored status
or a resync (tombstones, re-publishing) is first checked for the whole batch
with one read and no lock: only a node that needs something waits for the
dispatcher, which may be busy publishing a rollout. When the queue is full,
``take`` waits, the session acknowledges nothing more, and the broker holds
the rest: a message the hub acknowledged is never dropped for lack of room.

Dropped messages are logged at warning level, at most once a minute per node
and kind, so a flood cannot flood the log either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from edgekit.tasks import OwnedTask
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import (
    MAX_CONDITION_MESSAGE,
    Event,
    NodeStatus,
    Presence,
    Resync,
    now,
    parse_time,
)
from edgeprotocol.topics import NodeTopic

from .dispatch import Dispatcher
from .metrics import HubMetrics
from .settings import HubSettings
from .store.reports import ReportStore

logger = logging.getLogger(__name__)

# Messages for people are cut to this many characters before a status or an
# event is stored (the protocol cuts condition messages the same way).
MAX_TEXT_CHARS = MAX_CONDITION_MESSAGE
# A node holds one release per component assigned to it; a thousand is far
# beyond any real fleet's, and keeps each view of the node cheap.
MAX_STATUS_RELEASES = 1000
# A node has two condition types (RuntimeReady, StorageReady); room for more.
MAX_STATUS_CONDITIONS = 16
# An event as stored, message cut: a few hundred bytes in practice.
MAX_EVENT_BYTES = 16 * 1024
# "2024-01-01T00:00:00.000+00:00" is 29 characters.
MAX_TIME_CHARS = 64
# Nodes whose last resync (and last dropped-message warning) is remembered;
# past this the oldest is forgotten, which at worst lets one node resync early.
MAX_REMEMBERED_NODES = 10_000
# The least time between two warnings about dropped messages of one node and kind.
WARNING_INTERVAL_SECONDS = 60.0
# Messages taken and not yet handled, at most: past this the session stops taking (and acknowledging).
INGEST_QUEUE = 5000
# Messages handled together, their writes in as few transactions as the store's commits allow.
INGEST_BATCH = 1000
# The least time from one batch to the next while messages keep coming: each batch costs a few round trips to
# the store's thread, so a steady stream (a rollout's replies) is taken in batches rather than one by one. A
# message that arrives after a quiet spell is handled at once.
INGEST_INTERVAL = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestLimits:
    """Bounds on what nodes send; HubSettings explains and checks each one."""

    max_status_bytes: int = 256 * 1024
    max_seq_jump: int = 1_000_000
    resync_interval_seconds: float = 5.0

    @classmethod
    def of(cls, settings: HubSettings) -> IngestLimits:
        """The limits a HubSettings sets."""
        return cls(max_status_bytes=settings.max_status_bytes, max_seq_jump=settings.max_seq_jump,
                   resync_interval_seconds=settings.resync_interval_seconds)


class Dropped(Exception):
    """A message refused by a bound; the message says which."""


class _Recent:
    """Monotonic times by key, the oldest forgotten past ``MAX_REMEMBERED_NODES``."""

    def __init__(self) -> None:
        self._times: OrderedDict[tuple[str, str], float] = OrderedDict()

    def due(self, key: tuple[str, str], interval: float) -> bool:
        """Whether ``interval`` has passed since ``key`` was last due (and if so, remember now)."""
        at = time.monotonic()
        last = self._times.get(key)
        if last is not None and at - last < interval:
            return False
        self._times[key] = at
        self._times.move_to_end(key)
        while len(self._times) > MAX_REMEMBERED_NODES:
            self._times.popitem(last=False)
        return True


@dataclass(slots=True)
class _FollowUps:
    """What a batch of messages asks of the dispatcher once stored: statuses to check, resyncs to answer."""

    statuses: list[NodeStatus] = dataclasses.field(default_factory=list)
    resyncs: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)


@dataclass(slots=True)
class _Reports:
    """The statuses, events (each with its encoding) and presences of a batch that passed their checks, stored
    together."""

    statuses: list[tuple[NodeStatus, bytes]] = dataclasses.field(default_factory=list)
    events: list[tuple[Event, bytes]] = dataclasses.field(default_factory=list)
    presences: list[Presence] = dataclasses.field(default_factory=list)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


class NodeMessages:
    def __init__(self, reports: ReportStore, dispatcher: Dispatcher, limits: IngestLimits | None = None,
                 metrics: HubMetrics | None = None) -> None:
        self._reports = reports
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._limits = limits or IngestLimits()
        self._resynced = _Recent()
        self._warned = _Recent()
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=INGEST_QUEUE)
        self._worker = OwnedTask("node-messages")

    async def __aenter__(self) -> NodeMessages:
        self._worker.start(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._worker.stop()

    async def take(self, topic: str, payload: bytes) -> None:
        """Queue a message from the broker; waits while the queue is full (the caller then holds off)."""
        await self._queue.put((topic, payload))

    async def _run(self) -> None:
        last = -INGEST_INTERVAL
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(max(0.0, last + INGEST_INTERVAL - time.monotonic()))
            last = time.monotonic()
            while len(batch) < INGEST_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._handle_batch(batch)
            except Exception:  # a bug in what follows the batch: the next batch is still taken
                logger.exception("Handling a batch of %d node message(s) failed", len(batch))

    async def _handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        """Check messages one after the other, store what they report in one write, then do what their
        statuses and resyncs ask."""
        follow_ups, reports = _FollowUps(), _Reports()
        for topic, payload in batch:
            self._take_in(topic, payload, follow_ups, reports)
        if reports.statuses or reports.events or reports.presences:
            await self._store_reports(reports, follow_ups)
        if follow_ups.statuses:
            await self._dispatcher.on_statuses(follow_ups.statuses)
        if follow_ups.resyncs:
            for node, count in (await self._dispatcher.publish_nodes(follow_ups.resyncs)).items():
                # Every node asks on every connect: only an answer that sent something is news.
                logger.log(logging.INFO if count else logging.DEBUG,
                           "Node %s asked to resync; re-published %d assignment(s) it lacked or held older",
                           node, count)

    def _take_in(self, topic: str, payload: bytes, follow_ups: _FollowUps, reports: _Reports) -> None:
        """Check one message and add it to what its batch stores (``reports``) or asks for (``follow_ups``)."""
        try:
            parsed = NodeTopic.parse(topic)
        except ValueError:
            logger.debug("Ignoring message on foreign topic %s", topic)
            return
        if not payload:
            return  # a cleared retained message
        try:
            self._sort(parsed, payload, follow_ups, reports)
        except (ProtocolError, Dropped) as exc:
            self._dropped(parsed.kind, parsed.node, exc)
        except Exception:  # a bug: this message is skipped, the others of its batch are not
            logger.exception("Handling a %s message of node %s failed; skipping it", parsed.kind, parsed.node)

    def _dropped(self, kind: str, node: str, exc: Exception) -> None:
        if kind == "status" and self._metrics is not None:
            self._metrics.status_messages.labels(outcome="dropped").inc()
        if self._warned.due((node, kind), WARNING_INTERVAL_SECONDS):
            logger.warning("Dropping a %s message on the topic of node %s: %s (further drops of its %s "
                           "messages are logged at debug level for a minute)", kind, node, exc, kind)
        else:
            logger.debug("Dropping a %s message of node %s: %s", kind, node, exc)

    def _sort(self, topic: NodeTopic, payload: bytes, follow_ups: _FollowUps, reports: _Reports) -> None:
        if topic.kind == "status":
            reports.statuses.append(self._checked_status(topic, NodeStatus.decode(payload)))
        elif topic.kind == "presence":
            presence = Presence.decode(payload)
            self._check_sender(topic, presence.node)
            if len(presence.at) > MAX_TIME_CHARS:
                raise Dropped(f"its time is {len(presence.at)} characters long, over {MAX_TIME_CHARS}")
            if presence.at:
                try:
                    parse_time(presence.at)
                except ValueError as exc:
                    raise Dropped(f"its time {presence.at!r} is not an RFC 3339 time") from exc
            reports.presences.append(dataclasses.replace(presence, at=presence.at or now()))
        elif topic.kind == "events":
            reports.events.append(self._checked_event(topic, Event.decode(payload)))
        elif topic.kind == "resync":
            resync = Resync.decode(payload)
            self._check_sender(topic, resync.node)
            if not self._resynced.due((resync.node, "resync"), self._limits.resync_interval_seconds):
                logger.debug("Node %s asked to resync again within %.0f s; the broker's retained assignments "
                             "cover it", resync.node, self._limits.resync_interval_seconds)
                return
            follow_ups.resyncs[resync.node] = resync.held

    def _checked_status(self, topic: NodeTopic, status: NodeStatus) -> tuple[NodeStatus, bytes]:
        """The status as it is stored (messages cut) with its encoding; Dropped past a bound."""
        self._check_sender(topic, status.node)
        if len(status.releases) > MAX_STATUS_RELEASES:
            raise Dropped(f"status #{status.seq} lists {len(status.releases)} releases, over {MAX_STATUS_RELEASES}")
        if len(status.conditions) > MAX_STATUS_CONDITIONS:
            raise Dropped(f"status #{status.seq} lists {len(status.conditions)} conditions, "
                          f"over {MAX_STATUS_CONDITIONS}")
        status = dataclasses.replace(
            status,
            releases=tuple(dataclasses.replace(r, message=_cut(r.message)) for r in status.releases),
            conditions=tuple(dataclasses.replace(c, message=_cut(c.message)) for c in status.conditions),
        )
        encoded = status.encode()
        if len(encoded) > self._limits.max_status_bytes and any(r.pods for r in status.releases):
            # The pods' detail is what grows with a release's size; each release's reason, restarts and
            # message already sum it up, so a node with many or large releases keeps being heard without it.
            logger.debug("Status #%d of %s is %d bytes as stored, over %d: storing it without its pods' detail",
                         status.seq, status.node, len(encoded), self._limits.max_status_bytes)
            status = dataclasses.replace(status, releases=tuple(
                dataclasses.replace(r, pods=()) for r in status.releases))
            encoded = status.encode()
        if len(encoded) > self._limits.max_status_bytes:
            raise Dropped(f"status #{status.seq} is {len(encoded)} bytes as stored, over the bound of "
                          f"{self._limits.max_status_bytes} (max_status_bytes)")
        return status, encoded

    def _checked_event(self, topic: NodeTopic, event: Event) -> tuple[Event, bytes]:
        """The event as it is stored (message cut) with its encoding; Dropped past a bound."""
        self._check_sender(topic, event.node)
        event = dataclasses.replace(event, message=_cut(event.message))
        encoded = event.encode()
        if len(encoded) > MAX_EVENT_BYTES:
            raise Dropped(f"event #{event.seq} is {len(encoded)} bytes as stored, over {MAX_EVENT_BYTES}")
        return event, encoded

    async def _store_reports(self, reports: _Reports, follow_ups: _FollowUps) -> None:
        """Store a batch's statuses, events and presences in one write; each one refused is dropped as such,
        each status stored is followed up."""
        jump = self._limits.max_seq_jump
        status_outcomes, event_outcomes, presence_outcomes = await self._reports.save_reports(
            reports.statuses, reports.events, reports.presences, received_at=now(), max_seq_jump=jump)
        for presence, known in zip(reports.presences, presence_outcomes, strict=True):
            if not known:
                self._dropped("presence", presence.node, Dropped("the node is not registered, or was reset or revoked"))
        for (status, _), outcome in zip(reports.statuses, status_outcomes, strict=True):
            if self._metrics is not None:
                self._metrics.status(status, outcome)
            if outcome == "stored":
                follow_ups.statuses.append(status)
            elif outcome in ("too far ahead", "out of range"):
                self._dropped("status", status.node, Dropped(
                    f"status #{status.seq} is {outcome} of the node's last one (max_seq_jump {jump})"))
            else:
                logger.debug("Status #%d of %s dropped: %s", status.seq, status.node, outcome)
        for (event, _), outcome in zip(reports.events, event_outcomes, strict=True):
            if outcome in ("too far ahead", "out of range"):
                self._dropped("events", event.node, Dropped(
                    f"event #{event.seq} is {outcome} of the node's highest (max_seq_jump {jump})"))
            elif outcome == "unknown node":
                self._dropped("events", event.node, Dropped("the node is not registered, or was reset or revoked"))
            elif outcome != "stored":
                logger.debug("Event #%d of %s dropped: %s", event.seq, event.node, outcome)

    @staticmethod
    def _check_sender(topic: NodeTopic, node: str) -> None:
        if topic.node != node:
            raise ProtocolError(f"message on the topic of node {topic.node!r} claims to be from {node!r}")
