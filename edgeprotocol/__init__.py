"""What hub and agent must agree on: topics, message schemas, signatures and bundle encryption.

This package imports nothing from ``edgehub``, ``edgeagent`` or
``deployer_plugin`` and carries no heavy dependency, so the agent can install
it alone.
"""

from .errors import AddressError, DecryptionError, EdgeError, ProtocolError, SignatureError
from .messages import (
    PHASES,
    VERSION,
    Assignment,
    Bundle,
    Condition,
    Event,
    NodeStatus,
    Phase,
    Presence,
    ReleaseStatus,
    Resync,
)

__all__ = [
    "PHASES",
    "VERSION",
    "AddressError",
    "Assignment",
    "Bundle",
    "Condition",
    "DecryptionError",
    "EdgeError",
    "Event",
    "NodeStatus",
    "Phase",
    "Presence",
    "ProtocolError",
    "ReleaseStatus",
    "Resync",
    "SignatureError",
]
