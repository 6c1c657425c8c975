"""Who may do what on the broker with identities: MQTT user names and the roles of Mosquitto's
dynamic security plugin.

The broker takes a client's user name from the common name of its
certificate (``use_identity_as_username``) and uses it as the client ID too
(``use_username_as_clientid``), so a client can only ever take over its own
session. A node's user name is its node name (a DNS label, never containing a
dot); the hub's and dashboards' names contain a dot, so no node can hold them.

Mosquitto 2.0's dynamic security plugin has no ``%u`` substitution in role
ACLs, so every node gets a role of its own naming its topics.
"""

from __future__ import annotations

from typing import Any

from edgeprotocol import topics

HUB_USER = "hub.edgecollab"
DASHBOARD_USER_PREFIX = "dashboard."
HUB_ROLE = "edgecollab-hub"
DASHBOARD_ROLE = "edgecollab-dashboard"
NODE_ROLE_PREFIX = "edgecollab-node."

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

# What dashboards read: fleet summaries, the hub's own state on the bus, and
# Home Assistant discovery documents (written by the hub under this prefix).
DASHBOARD_TOPICS = (f"{topics.PREFIX}/summary/#", f"{topics.PREFIX}/hub/#", "homeassistant/#")

# Nothing is allowed unless a role says so.
DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                  "unsubscribe": True}


def dashboard_user(name: str) -> str:
    return f"{DASHBOARD_USER_PREFIX}{name}"


def node_role_name(node: str) -> str:
    return f"{NODE_ROLE_PREFIX}{node}"


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def _read(topic: str) -> list[dict[str, Any]]:
    return [_acl("subscribePattern", topic), _acl("publishClientReceive", topic)]


def hub_role() -> dict[str, Any]:
    """The hub reads and writes every topic (``#`` does not cover ``$`` topics) and administers identities."""
    return {"rolename": HUB_ROLE, "textname": "the edgecollab hub",
            "acls": [_acl("publishClientSend", "#"), *_read("#"),
                     _acl("publishClientSend", CONTROL_TOPIC), *_read(f"{CONTROL_TOPIC}/#")]}


def dashboard_role() -> dict[str, Any]:
    """Read-only: summaries and hub state, nothing a node sends or receives."""
    return {"rolename": DASHBOARD_ROLE, "textname": "read-only fleet dashboards",
            "acls": [acl for topic in DASHBOARD_TOPICS for acl in _read(topic)]}


def node_role(node: str) -> dict[str, Any]:
    """A node reads only its own assignments and writes only its own status, presence, events and resync."""
    releases = f"{topics.PREFIX}/nodes/{node}/releases/#"
    writes = (topics.status(node), topics.presence(node), topics.events(node), topics.resync(node))
    return {"rolename": node_role_name(node), "textname": f"edge node {node}",
            "acls": [*_read(releases), *(_acl("publishClientSend", t) for t in writes)]}


def initial_document() -> dict[str, Any]:
    """The dynamic security file a new broker starts from: the hub and the fixed roles. The hub adds
    nodes and dashboards itself, over the plugin's control topic."""
    return {
        "defaultACLAccess": DEFAULT_ACCESS,
        "clients": [{"username": HUB_USER, "textname": "the edgecollab hub", "roles": [{"rolename": HUB_ROLE}]}],
        "groups": [],
        "roles": [hub_role(), dashboard_role()],
    }
