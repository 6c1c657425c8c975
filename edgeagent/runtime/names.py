"""Names, keys and paths from manifests, checked as the Kubernetes API server checks them.

A node has no API server in front of it: whatever a chart renders reaches the
runtime as written, and names become host paths (podman writes a ConfigMap's
keys as files, a ``subPath`` becomes a bind). So every name, key and path a
runtime hands on is checked here first, with Kubernetes' own rules, and a
refusal is ``ManifestRejected`` naming the object and the field. Pure: no I/O.
"""

from __future__ import annotations

import re

from .base import ManifestRejected

__all__ = ["check_config_key", "check_dns_label", "check_relative_path"]

# Kubernetes' IsConfigMapKey: what a ConfigMap or Secret key may be.
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CONFIG_KEY_MAX = 253
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Longer paths than this are no path a chart means; they only make host paths that fail late.
_PATH_MAX = 1024


def check_config_key(key: object, where: str) -> str:
    """``key`` when it is a valid ConfigMap or Secret key; else ManifestRejected naming ``where``."""
    text = str(key)
    if not (_CONFIG_KEY.match(text) and len(text) <= _CONFIG_KEY_MAX) or text in (".", ".."):
        raise ManifestRejected(f"{where}: key {text!r} is not a valid key (letters, digits, '-', '_' and '.', "
                               f"at most {_CONFIG_KEY_MAX}, not '.' or '..')")
    return text


def check_relative_path(path: object, where: str) -> str:
    """``path`` when it is relative, non-empty and has no ``..`` element (Kubernetes' rule for ``items[].path``,
    ``subPath`` and ``subPathExpr``); else ManifestRejected naming ``where``."""
    if not isinstance(path, str) or not path:
        raise ManifestRejected(f"{where}: {path!r} is not a path")
    if path.startswith("/") or ".." in path.split("/") or "\0" in path or len(path) > _PATH_MAX:
        raise ManifestRejected(f"{where}: {path!r} must be a relative path without '..' (at most {_PATH_MAX} "
                               "characters)")
    return path


def check_dns_label(name: object, where: str) -> str:
    """``name`` when it is a DNS label (a container's or a volume's name); else ManifestRejected."""
    text = name if isinstance(name, str) else ""
    if not _DNS_LABEL.match(text):
        raise ManifestRejected(f"{where}: name {name!r} is not a valid name (a DNS label: lower-case letters, "
                               "digits and '-', at most 63)")
    return text
