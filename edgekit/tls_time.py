"""TLS with certificate dates checked against a time other than this process's clock.

OpenSSL checks every certificate's validity period against the process clock.
On a node whose clock is wrong (a board without a real-time clock that boots
with a stale date) that check fails every handshake although nothing else is
wrong: a year behind, the server's certificate "is not yet valid"; a year
ahead, it "has expired". The node knows the right time (its offset from the
hub's signed time, ``edgeagent.clock``), so ``check_time_against`` makes a
client context check the dates against that instead:

- ``X509_V_FLAG_NO_CHECK_TIME`` (OpenSSL 1.1.0 and later; Python passes
  ``verify_flags`` through to it) turns off OpenSSL's date checks only: the
  chain to a trusted CA, every signature and the host name are still verified;
- right after each handshake, before a byte of the application's is sent, the
  server's certificate, and the trusted CA that issued it, are checked against
  ``now()`` (their ``notBefore``/``notAfter`` as ``getpeercert()`` and
  ``get_ca_certs()`` give them: no X.509 parser needed) and the connection is
  closed with ``CertificateTimeError`` (an ``ssl.SSLCertVerificationError``,
  so callers report it as any certificate that does not verify) when either is
  outside its validity.

Both ways a handshake happens are covered: ``ssl.SSLSocket`` (urllib, paho-mqtt)
through ``SSLContext.sslsocket_class``, and ``ssl.SSLObject`` (asyncio streams)
through ``SSLContext.sslobject_class``.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from typing import Any

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (x509_vfy.h); the ssl module has no name for it.
NO_CHECK_TIME = 0x200000
# OpenSSL's verify codes for these cases (X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED).
NOT_YET_VALID, HAS_EXPIRED = 9, 10

Clock = Callable[[], float]


class CertificateTimeError(ssl.SSLCertVerificationError):
    """A certificate the handshake verified is outside its validity at the corrected time."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(1, f"certificate verify failed: {message}")
        self.verify_code = code
        self.verify_message = message

    def __str__(self) -> str:
        return f"certificate verify failed: {self.verify_message}"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def date_problem(certificate: dict[str, Any], now: float, what: str) -> CertificateTimeError | None:
    """Why ``certificate`` (a ``getpeercert()``-style dict) is not valid at ``now`` (Unix seconds); None when it is."""
    try:
        not_before = ssl.cert_time_to_seconds(certificate["notBefore"])
        not_after = ssl.cert_time_to_seconds(certificate["notAfter"])
    except (KeyError, ValueError) as exc:
        return CertificateTimeError(HAS_EXPIRED, f"{what} has no readable validity period ({exc})")
    if now < not_before:
        return CertificateTimeError(NOT_YET_VALID, f"{what} is not yet valid: valid from {_iso(not_before)}, and the "
                                                   f"corrected time is {_iso(now)}")
    if now > not_after:
        return CertificateTimeError(HAS_EXPIRED, f"{what} has expired: valid until {_iso(not_after)}, and the "
                                                 f"corrected time is {_iso(now)}")
    return None


def _check(peer: dict[str, Any], context: ssl.SSLContext, now: float) -> None:
    """Raise CertificateTimeError when the verified ``peer`` certificate, or every trusted CA that issued it, is
    outside its validity at ``now``. An empty ``peer`` (a context that verifies nothing) has nothing to check."""
    if not peer:
        return
    problem = date_problem(peer, now, "the server's certificate")
    if problem is not None:
        raise problem
    issuers = [ca for ca in context.get_ca_certs() if ca.get("subject") == peer.get("issuer")]
    problems = [problem for ca in issuers
                if (problem := date_problem(ca, now, "the CA that issued the server's certificate")) is not None]
    if issuers and len(problems) == len(issuers):
        raise problems[0]


def check_time_against(context: ssl.SSLContext, now: Clock) -> ssl.SSLContext:
    """Make ``context`` (a client context that verifies its server) check certificate dates against ``now()``
    instead of the process clock, as the module says; ``context`` itself, changed."""
    if context.verify_mode == ssl.CERT_NONE:
        raise ValueError("this TLS context verifies no certificate: there are no dates to check")
    context.verify_flags |= NO_CHECK_TIME

    class TimeCheckedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            try:
                _check(self.getpeercert() or {}, self.context, now())
            except CertificateTimeError:
                self.close()  # nothing more goes over a connection to a server this node cannot trust now
                raise

    class TimeCheckedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            _check(self.getpeercert() or {}, self.context, now())  # asyncio closes the transport on the error

    context.sslsocket_class = TimeCheckedSocket
    context.sslobject_class = TimeCheckedObject
    return context
