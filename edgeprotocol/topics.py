"""MQTT topic names of protocol version 1.

Every topic lives under ``ec/v1/`` so a future version can run beside this one
on the same broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

PREFIX = "ec/v1"

# A node, namespace or release name is a DNS label: it is used in topics, in
# podman pod names and as a Kubernetes name, and must be safe in all three.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid DNS label, else raise ValueError naming ``what``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use 1-63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return value


def assignment(node: str, namespace: str, release: str) -> str:
    return f"{PREFIX}/nodes/{node}/releases/{namespace}/{release}"


def assignments_of(node: str) -> str:
    """The wildcard filter an agent subscribes to for all of its assignments."""
    return f"{PREFIX}/nodes/{node}/releases/+/+"


def status(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/status"


def presence(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/presence"


def events(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/events"


def resync(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/resync"


# Filters the hub subscribes to.
ALL_STATUS = f"{PREFIX}/nodes/+/status"
ALL_PRESENCE = f"{PREFIX}/nodes/+/presence"
ALL_EVENTS = f"{PREFIX}/nodes/+/events"
ALL_RESYNC = f"{PREFIX}/nodes/+/resync"


NodeTopicKind = Literal["releases", "status", "presence", "events", "resync"]
NODE_TOPIC_KINDS: tuple[NodeTopicKind, ...] = get_args(NodeTopicKind)


@dataclass(frozen=True, slots=True)
class NodeTopic:
    """A topic under ``ec/v1/nodes/{node}/...`` split into its parts."""

    node: str
    kind: NodeTopicKind
    namespace: str | None = None
    release: str | None = None

    @classmethod
    def parse(cls, topic: str) -> NodeTopic:
        parts = topic.split("/")
        if len(parts) < 4 or "/".join(parts[:2]) != PREFIX or parts[2] != "nodes":
            raise ValueError(f"topic {topic!r} is not an edgecollab v1 node topic")
        node, kind = parts[3], parts[4] if len(parts) > 4 else ""
        if kind == "releases" and len(parts) == 7:
            return cls(node=node, kind="releases", namespace=parts[5], release=parts[6])
        if kind in NODE_TOPIC_KINDS and kind != "releases" and len(parts) == 5:
            return cls(node=node, kind=kind)
        raise ValueError(f"topic {topic!r} is not an edgecollab v1 node topic")
