"""Who may do what on the broker with identities: MQTT user names and the roles of Mosquitto's
dynamic security plugin.

The broker takes a client's user name from the common name of its
certificate (``use_identity_as_username``) and uses it as the client ID too
(``use_username_as_clientid``), so a client can only ever take over its own
session. A node's user name is its node name (a DNS label, never containing a
dot); the hub's and dashboards' names contain a dot, so no node can hold them.

Nodes are not in the plugin at all. Mosquitto 2.0's plugin has no ``%u``
substitution in role ACLs, and it rewrites its whole file after every change,
so a role per node made each join cost the broker time in proportion to the
fleet (joins stalled at a few thousand nodes). Instead the broker's
``acl_file`` holds patterns (``NODE_ACL_PATTERNS``) that give the client named
``%u`` its own topics and nothing else; the plugin answers first for every
client it knows and leaves the rest to those patterns. So the plugin holds only
the hub, dashboards and the nodes it must refuse: a node reset or revoked is
entered with the ``REFUSED_ROLE``, whose explicit denials win over the
patterns, until the name joins again.
"""

from __future__ import annotations

from typing import Any

from edgeprotocol import topics

HUB_USER = "hub.edgecollab"
DASHBOARD_USER_PREFIX = "dashboard."
HUB_ROLE = "edgecollab-hub"
DASHBOARD_ROLE = "edgecollab-dashboard"
REFUSED_ROLE = "edgecollab-refused"
# Roles of one node each, from hub versions before the patterns: removed when the hub reconciles.
LEGACY_NODE_ROLE_PREFIX = "edgecollab-node."

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


def _acl(kind: str, topic: str, *, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": priority, "allow": allow}


def _deny_everything(priority: int) -> list[dict[str, Any]]:
    """Explicit denials of every topic: the plugin then answers itself rather than leaving the
    client to the node patterns of the ACL file (below the role's allowances, by ``priority``)."""
    return [_acl(kind, "#", allow=False, priority=priority)
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]


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
            "acls": [*(acl for topic in DASHBOARD_TOPICS for acl in _read(topic)), *_deny_everything(-1)]}


def refused_role() -> dict[str, Any]:
    """A node reset or revoked: nothing at all, whatever the ACL file's node patterns would allow."""
    return {"rolename": REFUSED_ROLE, "textname": "edge nodes reset or revoked: refused every topic",
            "acls": _deny_everything(0)}


def node_acl_patterns() -> str:
    """The broker's ACL file: a node (user name ``%u``) reads only its own assignments and writes only
    its own status, presence, events and resync."""
    node = "%u"
    writes = (topics.status(node), topics.presence(node), topics.events(node), topics.resync(node))
    return "".join([
        "# Written by 'edgehub mosquitto-config': what every edge node may do, by its own name.\n",
        f"pattern read {topics.assignments_of(node)}\n",
        *(f"pattern write {topic}\n" for topic in writes),
    ])


def initial_document() -> dict[str, Any]:
    """The dynamic security file a new broker starts from: the hub and the fixed roles. The hub adds
    nodes and dashboards itself, over the plugin's control topic."""
    return {
        "defaultACLAccess": DEFAULT_ACCESS,
        "clients": [{"username": HUB_USER, "textname": "the edgecollab hub", "roles": [{"rolename": HUB_ROLE}]}],
        "groups": [],
        "roles": [hub_role(), dashboard_role(), refused_role()],
    }
