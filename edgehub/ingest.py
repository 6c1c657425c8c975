"""What nodes send the hub over MQTT: status, presence, events and resync requests."""

from __future__ import annotations

import logging

from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import Event, NodeStatus, Presence, Resync, now
from edgeprotocol.topics import NodeTopic

from .dispatch import Dispatcher
from .store import HubStore

logger = logging.getLogger(__name__)


class NodeMessages:
    def __init__(self, store: HubStore, dispatcher: Dispatcher) -> None:
        self._store = store
        self._dispatcher = dispatcher

    async def handle(self, topic: str, payload: bytes) -> None:
        try:
            parsed = NodeTopic.parse(topic)
        except ValueError:
            logger.debug("Ignoring message on foreign topic %s", topic)
            return
        if not payload:
            return  # a cleared retained message
        try:
            await self._dispatch(parsed, payload)
        except ProtocolError as exc:
            logger.warning("Dropping a bad %s message from node %s: %s", parsed.kind, parsed.node, exc)

    async def _dispatch(self, topic: NodeTopic, payload: bytes) -> None:
        if topic.kind == "status":
            status = NodeStatus.decode(payload)
            self._check_sender(topic, status.node)
            if await self._store.save_status(status, received_at=now()):
                await self._dispatcher.on_status(status)
            else:
                logger.debug("Status #%d of %s is stale or the node is unknown; dropped", status.seq, status.node)
        elif topic.kind == "presence":
            presence = Presence.decode(payload)
            self._check_sender(topic, presence.node)
            if not await self._store.set_presence(presence.node, presence.state, presence.at or now()):
                logger.warning("Presence from unregistered node %s ignored", presence.node)
        elif topic.kind == "events":
            event = Event.decode(payload)
            self._check_sender(topic, event.node)
            await self._store.add_event(event)
        elif topic.kind == "resync":
            resync = Resync.decode(payload)
            self._check_sender(topic, resync.node)
            count = await self._dispatcher.publish_node(resync.node)
            logger.info("Node %s asked to resync; re-published %d assignment(s)", resync.node, count)

    @staticmethod
    def _check_sender(topic: NodeTopic, node: str) -> None:
        if topic.node != node:
            raise ProtocolError(f"message on the topic of node {topic.node!r} claims to be from {node!r}")
