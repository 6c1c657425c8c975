"""Errors raised at the protocol boundary, shared by hub and agent.

EdgeError
  ProtocolError      a message that fails decoding or validation
    SignatureError   a message not signed by the pinned hub key
    AddressError     a message that names another node than the one receiving it
    DecryptionError  a bundle this node's bundle key does not open (another node's, or changed on the way)
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of every error edgecollab raises on purpose."""


class ProtocolError(EdgeError):
    """A message that fails decoding or validation."""


class SignatureError(ProtocolError):
    """A message whose signature does not verify against the pinned hub key."""


class AddressError(ProtocolError):
    """A message addressed to another node than the one that received it."""


class DecryptionError(ProtocolError):
    """A bundle that does not decrypt with the receiving node's bundle key."""
