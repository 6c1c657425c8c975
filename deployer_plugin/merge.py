"""Merging of Helm values, the way Helm merges several ``-f`` files."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``override`` merged over ``base``; neither argument is modified.

    Helm semantics: where both sides hold a mapping the two are merged key by
    key; any other value in ``override`` (a list, a scalar) replaces the one in
    ``base``. A ``None`` (YAML ``null``) in ``override`` deletes the key: it is
    kept in the result as ``None`` rather than dropped, because Helm deletes a
    null key only when it coalesces user values with the chart's defaults, so
    keeping it is what also removes a default the chart itself sets.

        >>> deep_merge({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": None}, "b": [2]})
        {'a': {'x': 1, 'y': None}, 'b': [2]}
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
