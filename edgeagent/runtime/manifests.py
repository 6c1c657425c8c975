"""Reading and writing a release's manifests as YAML, safely: shared by every runtime.

Every manifest a runtime is given is loaded through ``load_yaml_all``: PyYAML's
safe loader (libyaml's when present), which refuses (``ManifestRejected``) a
document whose aliases would add more than ``ALIAS_EXPANSION_LIMIT`` nodes,
before building any Python object from it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from ..policy import NodePolicy
from .base import ManifestRejected, ReleaseRef

__all__ = ["ALIAS_EXPANSION_LIMIT", "dump_yaml_all", "load_yaml_all"]

# libyaml's parser and emitter where PyYAML was built with them (ten times
# faster on a large release), the pure-Python ones otherwise. Same safe subset
# of YAML either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# Nodes YAML aliases may add to a document beyond those written out. An alias
# stands for its anchor's whole subtree: nine nested levels of ten aliases (a
# 564-byte "billion laughs") stand for 10**9 nodes, and whatever walks the
# constructed document (str(), the plan's copies) walks every one of them.
# Helm never writes aliases; a hand-written chart uses a few, adding hundreds.
ALIAS_EXPANSION_LIMIT = 100_000


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes ``root`` stands for with its aliases expanded, counting stops past ``limit``.

    Composed nodes are shared between their anchor and its aliases, so each is
    sized once (memoized by identity): linear in the document's size. Raises
    ManifestRejected for a node that contains itself (a recursive alias).
    """
    sizes: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[key] = 1
            continue
        if children_done:
            busy.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if key in busy:
            raise ManifestRejected("YAML that contains itself through an alias")
        busy.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in busy:
                raise ManifestRejected("YAML that contains itself through an alias")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def load_yaml_all(text: str, *, alias_limit: int = ALIAS_EXPANSION_LIMIT) -> list[Any]:
    """Every document of ``text`` (None for an empty one); raises yaml.YAMLError.

    Raises ManifestRejected, before building any Python object, for a document
    whose aliases add more than ``alias_limit`` nodes to it (see
    ALIAS_EXPANSION_LIMIT): time and memory stay linear in the text's size.
    """
    loader = _SafeLoader(text)
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                docs.append(None)
                continue
            # Counting the distinct nodes costs the same walk as sizing them.
            distinct = _count_distinct(node)
            expanded = _expanded_size(node, distinct + alias_limit)
            if expanded - distinct > alias_limit:
                raise ManifestRejected(f"YAML document {len(docs) + 1}: its aliases expand it by more than "
                                       f"{alias_limit} nodes (an alias bomb?); refused unread")
            docs.append(loader.construct_document(node))
    finally:
        loader.dispose()
    return docs


def _count_distinct(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return len(seen)


def dump_yaml_all(docs: Iterable[Any]) -> str:
    """``docs`` as multi-document YAML, keys in their given order."""
    return yaml.dump_all(docs, Dumper=_SafeDumper, sort_keys=False)


def release_documents(ref: ReleaseRef, manifests: str, policy: NodePolicy | None) -> tuple[NodePolicy, list[Any]]:
    """The node's policy (the default, safe one when None) and the release's YAML documents, once the policy
    allows the release at all. ManifestRejected names the release when it does not, or when the YAML is bad.
    Every runtime's plan starts here."""
    policy = policy if policy is not None else NodePolicy()
    refusal = policy.release_refusal(ref.namespace, ref.release)
    if refusal:
        raise ManifestRejected(refusal)
    try:
        docs = [d for d in load_yaml_all(manifests) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestRejected(f"manifests of {ref}: invalid YAML: {exc}") from exc
    except ManifestRejected as exc:
        raise ManifestRejected(f"manifests of {ref}: {exc}") from exc
    return policy, docs
