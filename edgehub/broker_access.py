"""Keeps the broker's identities in step with the hub's registry.

On a broker written by ``edgehub mosquitto-config`` a client the dynamic
security plugin knows may do only what its role allows; any other client (a
joined node) gets only what the broker's ACL file gives its own name
(``broker_roles``), so a join costs the broker nothing in proportion to the
fleet. The hub is the plugin's administrator: it refuses a node when an
operator resets or revokes it (the broker disconnects it at once), lets the
name back when it joins again, and admits dashboard credentials. Commands go
over the plugin's control topic on the hub's own MQTT session; the answers
come back on the response topic.

Each time the hub connects it reconciles the whole list (a broker restored from
an old file, or a reset, revoke or re-join while the broker was down, is put right), in a task of
its own: the session delivers the answers only after its connect hook returns.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edgekit.tasks import OwnedTask
from edgeprotocol.topics import check_name

from .broker_roles import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    DASHBOARD_ROLE,
    DASHBOARD_USER_PREFIX,
    HUB_USER,
    LEGACY_NODE_ROLE_PREFIX,
    REFUSED_ROLE,
    dashboard_role,
    dashboard_user,
    hub_role,
    refused_role,
)

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[bool]]
# The identities the hub's registry holds: (nodes reset or revoked, dashboard credential names).
Registry = Callable[[], Awaitable[tuple[set[str], set[str]]]]

ANONYMOUS_BROKER_WARNING = (
    "the broker is anonymous (mqtt://): any process on this machine can read every assignment and forge any "
    "node's reports; for development only. Use 'edgehub mosquitto-config' and an mqtts:// broker")

# The broker answers in milliseconds; a broker without the plugin never does.
COMMAND_TIMEOUT_SECONDS = 10.0
# Commands per control message while reconciling a large fleet.
BATCH = 200


class BrokerAccessError(RuntimeError):
    """The broker did not carry out an identity command; the message says which and why."""


class BrokerAccess:
    """The hub's side of the broker's dynamic security plugin. ``enabled`` is False on an anonymous
    (loopback, development) broker, where every call does nothing."""

    def __init__(self, publish: Publish, registry: Registry, *, enabled: bool) -> None:
        self._publish = publish
        self._registry = registry
        self.enabled = enabled
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reconcile = OwnedTask("broker-identities-reconcile")
        # One change at a time: a reconcile works from a snapshot of the registry, and a revoke
        # racing it must not be undone by it.
        self._changing = asyncio.Lock()
        # Set once a reconcile has finished since the last connect (tests and the demo wait on it).
        self.reconciled = asyncio.Event()

    async def __aenter__(self) -> BrokerAccess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._reconcile.stop()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    # --- what the hub calls --------------------------------------------------

    def on_connect(self) -> None:
        """Start a reconcile of every identity (replacing one still running)."""
        if not self.enabled:
            return
        self.reconciled.clear()
        self._reconcile.restart(self._reconcile_all())

    async def admit_node(self, node: str) -> None:
        """Let ``node`` (just joined) have its own topics: take it out of the refused, if it was there (a
        name joining for the first time was not: the broker answers "not found" and writes nothing)."""
        if self.enabled:
            await self._run_tolerating([{"command": "deleteClient", "username": check_name(node, "node name")}],
                                       what=f"admit {node}")

    async def expel_node(self, node: str) -> None:
        """Refuse ``node`` every topic and disconnect it (reset or revoked)."""
        if self.enabled:
            await self._run_tolerating(_refuse(node), what=f"expel {node}")

    async def admit_dashboard(self, name: str) -> None:
        if self.enabled:
            await self._run_tolerating(
                [{"command": "createClient", "username": dashboard_user(name),
                  "roles": [{"rolename": DASHBOARD_ROLE}]}],
                what=f"admit dashboard {name}")

    async def expel_dashboard(self, name: str) -> None:
        if self.enabled:
            await self._run_tolerating([{"command": "deleteClient", "username": dashboard_user(name)}],
                                       what=f"expel dashboard {name}")

    async def on_response(self, payload: bytes) -> None:
        """An answer on the control response topic: hand each to the command waiting for it."""
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            logger.warning("Ignoring a malformed answer on %s", CONTROL_RESPONSE_TOPIC)
            return
        for response in responses if isinstance(responses, list) else ():
            if not isinstance(response, dict):
                continue
            future = self._waiting.pop(str(response.get("correlationData")), None)
            if future is not None and not future.done():
                future.set_result(response)

    # --- commands ------------------------------------------------------------

    async def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one control message and return the broker's answer to each, in order."""
        futures = []
        loop = asyncio.get_running_loop()
        for command in commands:
            key = f"ec-{next(self._ids)}"
            command["correlationData"] = key
            futures.append(self._waiting.setdefault(key, loop.create_future()))
        try:
            if not await self._publish(CONTROL_TOPIC, json.dumps({"commands": commands}).encode()):
                raise BrokerAccessError("not connected to the broker")
            async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise BrokerAccessError(
                f"the broker did not answer identity commands within {COMMAND_TIMEOUT_SECONDS:.0f} s: is it running "
                "with the configuration 'edgehub mosquitto-config' writes (the dynamic security plugin)?") from None
        finally:
            for command in commands:
                self._waiting.pop(command["correlationData"], None)

    async def _run_tolerating(self, commands: list[dict[str, Any]], *, what: str) -> list[dict[str, Any]]:
        """Run commands whose 'already exists' / 'not found' answers mean the broker is already as wanted;
        the answers (none when the broker could not be reached: the reconcile when the hub next connects
        puts it right)."""
        try:
            async with self._changing:
                answers = await self.run(commands)
        except BrokerAccessError as exc:
            logger.warning("Could not %s on the broker now (%s); done when the hub next connects", what, exc)
            return []
        for answer in answers:
            error = answer.get("error")
            if error and not _harmless(error):
                logger.error("Broker refused to %s: %s: %s", what, answer.get("command"), error)
        return answers

    async def _list(self, command: str, key: str) -> set[str]:
        (answer,) = await self.run([{"command": command, "count": -1}])
        if answer.get("error"):
            raise BrokerAccessError(f"{command}: {answer['error']}")
        return set(answer.get("data", {}).get(key, []))

    async def _reconcile_all(self) -> None:
        async with self._changing:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        try:
            clients = await self._list("listClients", "clients")
            roles = await self._list("listRoles", "roles")
            refused_nodes, dashboards = await self._registry()
            fixed = (hub_role(), dashboard_role(), refused_role())
            commands: list[dict[str, Any]] = [
                # The fixed roles as this hub version defines them (an older file may hold others).
                *({"command": "createRole", **role} for role in fixed),
                *({"command": "modifyRole", **role} for role in fixed),
            ]
            # A node name in the plugin is one this hub refused (an older hub entered every joined node,
            # with a role of its own: those are removed below).
            for node in sorted(refused_nodes - clients):
                commands += _refuse(node)
            for name in sorted(dashboards):
                if dashboard_user(name) not in clients:
                    commands.append({"command": "createClient", "username": dashboard_user(name),
                                     "roles": [{"rolename": DASHBOARD_ROLE}]})
            wanted_dashboards = {dashboard_user(n) for n in dashboards}
            # Joined nodes have no entry (an older hub gave each one, with a role of its own).
            expelled = sorted(c for c in clients - refused_nodes - {HUB_USER} - wanted_dashboards
                              if c.startswith(DASHBOARD_USER_PREFIX) or _is_node_name(c))
            commands += ({"command": "deleteClient", "username": c} for c in expelled)
            commands += ({"command": "deleteRole", "rolename": role} for role in sorted(roles)
                         if role.startswith(LEGACY_NODE_ROLE_PREFIX))
            for start in range(0, len(commands), BATCH):
                for answer in await self.run(commands[start:start + BATCH]):
                    error = answer.get("error")
                    if error and not _harmless(error):
                        logger.error("Broker identity reconcile: %s: %s", answer.get("command"), error)
            logger.info("Broker identities in step with the registry: %d node(s) refused, %d dashboard(s); "
                        "removed %s", len(refused_nodes), len(dashboards), expelled or "none")
            self.reconciled.set()
        except BrokerAccessError as exc:
            logger.error("Could not reconcile the broker's identities: %s", exc)


def _refuse(node: str) -> list[dict[str, Any]]:
    # modifyClient disconnects a connected client, and replaces the roles of one entered before.
    role = [{"rolename": REFUSED_ROLE}]
    return [{"command": "createClient", "username": node, "roles": role},
            {"command": "modifyClient", "username": node, "roles": role}]


def _harmless(error: str) -> bool:
    """Answers that mean the broker already is as the command wants it."""
    text = error.lower()
    return "already exists" in text or "not found" in text or "already has" in text


def _is_node_name(name: str) -> bool:
    try:
        check_name(name, "node name")
    except ValueError:
        return False
    return True
