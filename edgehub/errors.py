"""Errors the hub raises on purpose, one tree for every refusal its API can answer.

EdgeError                    (edgeprotocol.errors)
  HubError                   a request the hub refuses; the message says why
    BadRequest               400  a malformed request; ``field`` names the field at fault
      CsrError               400  a certificate request the hub will not sign
    JoinRefused              403  a join with a malformed, unknown, expired or used-up token, or for another
                                  pool, or with a name registered to another key or revoked
    RenewalRefused           403  a certificate renewal of a node that is not joined (unknown, reset,
                                  revoked), with a wrong proof, an expired certificate, a stale
                                  timestamp, or a nonce already taken
    NotFound                 404  no such node or component
    ConcurrentChange         409  another apply of the same component got there first
      RendererBusy           409  every render slot is taken and the queue is full: apply again
    SpecRefused              422  a spec or chart that does not validate or render;
                                  wraps (and chains) deployer_plugin's SpecError
    Unauthorized             401  no operator token, or a wrong one
    ForeignOrigin            403  a request from a web page of another origin (CSRF)
    UnsupportedMediaType     415  a request body that is not application/json
    MisdirectedHost          421  a Host the hub does not answer to (DNS rebinding)
    RateLimited              429  more requests from one source than its limit allows

The statuses above are documentation: the one place that maps an exception
type to its HTTP status is ``edgehub.routes.error_answers.STATUS``, read by
the API's ``json_errors`` middleware. Handlers and services raise these; none
builds an error response. Anything else that escapes a handler is a bug: the
middleware logs its traceback and answers 500 with a generic message.
"""

from __future__ import annotations

import math

from deployer_plugin import SpecError
from edgeprotocol.errors import EdgeError


class HubError(EdgeError):
    """Root of every refusal the hub's API answers with a 4xx status."""


class BadRequest(HubError):
    """A malformed request. ``field`` names the field at fault (None for the body as a whole).

    The message starts with the field, the way SpecError's problems start with
    the path of the spec field: ``limit: must be an integer from 1 to 1000, not 'abc'``.
    """

    def __init__(self, problem: str, *, field: str | None = None) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class CsrError(BadRequest):
    """A certificate signing request that the hub refuses to sign."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem, field="csr")


class JoinRefused(HubError):
    """A join that the hub refuses; the message says why."""


class RenewalRefused(HubError):
    """A node certificate renewal that the hub refuses; the message says why."""


class RotationRefused(HubError):
    """409: a CA rotation step that cannot be taken now (another is due first, or nodes still hold
    certificates of the CA it would retire); the message says why and what to run."""


class NotFound(HubError):
    """The node or component a request names does not exist."""


class ConcurrentChange(HubError):
    """Two applies of the same component raced; the later one must apply again."""


class AlreadyExists(HubError):
    """409: the name a request would create is taken."""


class SpecRefused(HubError):
    """A component spec or chart that does not validate or render.

    Carries the deployer's ``SpecError`` (also chained as ``__cause__``); its
    ``problems`` each start with the path of the field at fault.
    """

    def __init__(self, error: SpecError, *, context: str = "") -> None:
        self.error = error
        self.problems = error.problems
        super().__init__(f"{context}: {error}" if context else str(error))


class Unauthorized(HubError):
    """401: no operator token, or a wrong one."""


class ForeignOrigin(HubError):
    """403: a request sent by a web page of another origin (CSRF)."""


class UnsupportedMediaType(HubError):
    """415: a request body that is not ``application/json``."""


class MisdirectedHost(HubError):
    """421: a Host the hub does not answer to (DNS rebinding, or a name missing from ``allowed_hosts``)."""


class RateLimited(HubError):
    """429: the source sent more requests than its limit allows; ``retry_after`` says when to try again (s)."""

    def __init__(self, what: str, retry_after: float) -> None:
        # Retry-After takes whole seconds; rounding up never invites an early retry.
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many {what} requests from this address; retry after {self.retry_after} s")


class RendererBusy(ConcurrentChange):
    """Every render slot is taken and the queue is full (or no slot came free in time): apply again."""
