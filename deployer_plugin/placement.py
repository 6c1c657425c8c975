"""Placement: which nodes a component targets, and which render each one gets.

Pure decision logic, no I/O: the hub calls it with the nodes its registry
knows and assigns each targeted node the bundle of its render key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgeprotocol.topics import check_name

from .render import render_key_for
from .spec import POOL_LABEL, Component


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """An edge node as placement sees it: its name, its pool and its labels."""

    name: str
    pool: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_name(self.name, "node name")
        check_name(self.pool, "pool name")

    @property
    def effective_labels(self) -> dict[str, str]:
        """The node's labels plus ``edgecollab.io/pool=<pool>``, which always wins."""
        return {**self.labels, POOL_LABEL: self.pool}


def targets(component: Component, node: NodeInfo) -> bool:
    """Whether ``component`` runs on ``node``: in one of its pools (if any are
    listed) and matching its node selector (if it has one)."""
    edge = component.edge
    if edge.node_pools and node.pool not in edge.node_pools:
        return False
    return edge.node_selector is None or edge.node_selector.matches(node.effective_labels)


def place(component: Component, nodes: Iterable[NodeInfo]) -> dict[str, str]:
    """Map the name of every node ``component`` targets to its render key, sorted by node name.

    The render key is the node's pool when the component has poolValues for
    it, else ``""`` (the base render); see
    :func:`deployer_plugin.render.render_component`.

    Raises:
        ValueError: if two nodes share a name.
    """
    placed: dict[str, str] = {}
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise ValueError(f"node {node.name!r} is given twice")
        seen.add(node.name)
        if targets(component, node):
            placed[node.name] = render_key_for(component, node.pool)
    return dict(sorted(placed.items()))
