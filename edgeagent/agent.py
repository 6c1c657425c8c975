"""The agent: a reconciler and an uplink over one local store.

The two halves are independent on purpose. The uplink (``uplink.py``) only
verifies assignments and records newer ones in the store, and carries status
and events back; the reconciler (``reconciler.py``) drives the runtime towards
the store whether or not the link is up, and so the node keeps working (and
repairs itself) while offline. The store (``store.py``) is the truth on the
node and survives restarts.

Beside them, the certificate renewer (``renewal.py``) keeps the node's key and
certificate files current: it renews the certificate with the hub before it
expires, on a timer of its own, judging time by the hub's (``clock.py``: the
offset of the node's clock, measured at each check). The uplink connects only
once the renewer's first check is done, and never with an expired
certificate: a node back from months off renews over HTTPS first, while its
workloads run on.
"""

from __future__ import annotations

import asyncio
import contextlib

from edgekit.mqtt import MqttSession

from .clock import HubClock
from .health import NodeHealth
from .identity import NodeIdentity
from .reconciler import Reconciler
from .renewal import CertificateRenewer
from .runtime import NodeContext, Runtime
from .settings import AgentSettings
from .store import AgentStore, ReleaseRecord
from .uplink import Uplink

__all__ = ["Agent", "AgentSettings"]


class Agent:
    """One edge node's agent. Use as an async context manager."""

    def __init__(self, settings: AgentSettings, identity: NodeIdentity, runtime: Runtime) -> None:
        self.settings = settings
        self.identity = identity
        self.runtime = runtime
        self.node = identity.node
        self._context = NodeContext(node=identity.node, pool=identity.pool)
        self._stack: contextlib.AsyncExitStack | None = None
        self._store: AgentStore | None = None
        self._reconciler: Reconciler | None = None
        self._uplink: Uplink | None = None
        self._renewer: CertificateRenewer | None = None

    async def __aenter__(self) -> Agent:
        if self._stack is not None:
            raise RuntimeError(f"agent {self.node} is already running")
        self._stack = contextlib.AsyncExitStack()
        try:
            store = await self._stack.enter_async_context(
                AgentStore(self.settings.db_path, outbox_limit=self.settings.outbox_limit))
            # The runtime owns its background work (probes, say) for as long as the agent runs.
            await self._stack.enter_async_context(self.runtime)
            self._store = store
            # The uplink exists (and queues events) before it connects; the
            # reconciler starts from the local store before any contact with
            # the hub, so a node that reboots offline brings its workloads back.
            health = NodeHealth(self.runtime)
            assignment_arrived = asyncio.Event()
            clock = HubClock(self.settings.state_dir)
            # The node certificate is renewed before it expires, checked now and on a timer, by the hub's time.
            renewer = CertificateRenewer(self.settings.state_dir, self.identity, clock=clock)
            uplink = Uplink(self.settings, self.identity, store, runtime_name=self.runtime.name, health=health,
                            on_assignment=assignment_arrived.set, clock=clock,
                            before_connect=renewer.ready_to_connect)
            # Its events go to the uplink's outbox; after a renewal the uplink reconnects with the new
            # certificate (the broker refuses the old one).
            renewer.report, renewer.on_renewed = uplink.record_event, uplink.reconnect
            reconciler = Reconciler(self.settings, store, self.runtime, self._context, reporter=uplink,
                                    health=health, wake=assignment_arrived)
            self._uplink, self._reconciler = uplink, reconciler
            await self._stack.enter_async_context(reconciler)
            # The renewer before the uplink: its first check (the clock measured, a due or expired
            # certificate renewed) is under way when the uplink's first connection waits for it.
            self._renewer = await self._stack.enter_async_context(renewer)
            await self._stack.enter_async_context(uplink)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._store = self._reconciler = self._uplink = None
        self._renewer = None

    def _running(self) -> tuple[AgentStore, Reconciler, Uplink]:
        if self._store is None or self._reconciler is None or self._uplink is None:
            raise RuntimeError("the agent is not running")
        return self._store, self._reconciler, self._uplink

    @property
    def store(self) -> AgentStore:
        return self._running()[0]

    @property
    def session(self) -> MqttSession:
        return self._running()[2].session

    @property
    def renewer(self) -> CertificateRenewer:
        """The node certificate's renewal (its counts of renewals and failures)."""
        if self._renewer is None:
            raise RuntimeError("the agent is not running")
        return self._renewer

    @property
    def passes(self) -> int:
        """Reconcile passes done so far."""
        return self._running()[1].passes

    async def record_event(self, reason: str, message: str, rec: ReleaseRecord | None = None) -> None:
        """Queue an event in the persisted outbox and send what the link allows, in order."""
        await self._running()[2].record_event(reason, message, rec)
