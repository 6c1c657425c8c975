"""The API over HTTPS: whether it is served so, and the server certificate the hub CA issues for it.

``tls: auto`` (the default) serves HTTPS on any listen address but loopback;
``on`` and ``off`` force it. The server certificate is issued by the hub's
own CA (:mod:`edgehub.identity`), which agents pin through their join token
and ``edgectl`` trusts with ``--ca-file STATE/hub-ca.crt``. Its key is ECDSA
P-256 (what every TLS client takes for a server key; the CA's Ed25519
signature on it needs OpenSSL 1.1.1 or later, as Python's ssl, curl and Go
have). Its subject alternative names are what the API answers to: the
loopback names and addresses, the listen host (unless a wildcard address) and
every ``allowed_hosts`` name.

The key and certificate live in the state directory (``hub-server.key``, mode
0600, and ``hub-server.crt``) and are issued again, when those names change,
when the CA is another, or when less than a third of the certificate's life is
left, by the hub's certificate keeper (``edgehub.certificates``) at start and on
its timer while the hub runs; the running server then takes the new one for
every new connection.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509

from edgekit.http import is_loopback_host

from .identity import HubIdentity
from .keys import SETTINGS
from .settings import HubSettings, check_host_name

logger = logging.getLogger(__name__)

SERVER_KEY_FILE = "hub-server.key"
SERVER_CERT_FILE = "hub-server.crt"
# Issued again once less than a third is left: every 60 days (edgehub.certificates).
SERVER_CERT_DAYS = 90
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
TLS = web.AppKey("tls", ssl.SSLContext)


def serves_tls(settings: HubSettings) -> bool:
    """Whether the hub serves its API over HTTPS: ``tls: on``, or ``auto`` with a listen host off loopback
    (a wildcard address is off loopback: it listens on every interface)."""
    if settings.tls == "auto":
        return not is_loopback_host(settings.listen_host)
    return settings.tls == "on"


@dataclass(frozen=True, slots=True)
class ServerNames:
    """The names and addresses the server certificate holds."""

    dns: frozenset[str]
    ips: frozenset[str]

    @classmethod
    def of(cls, settings: HubSettings) -> ServerNames:
        wanted = {"localhost", *LOOPBACK_ADDRESSES, *settings.allowed_hosts}
        if settings.listen_host.strip("[]") not in WILDCARD_HOSTS:
            wanted.add(check_host_name(settings.listen_host))
        dns, ips = set(), set()
        for name in wanted:
            try:
                ips.add(str(ipaddress.ip_address(name)))
            except ValueError:
                dns.add(name)
        return cls(dns=frozenset(dns), ips=frozenset(ips))

    @classmethod
    def in_certificate(cls, certificate: x509.Certificate) -> ServerNames:
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return cls(dns=frozenset(), ips=frozenset())
        return cls(dns=frozenset(san.get_values_for_type(x509.DNSName)),
                   ips=frozenset(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))

    def names(self) -> list[str]:
        return sorted(self.dns) + sorted(self.ips)


def ensure_server_certificate(settings: HubSettings, identity: HubIdentity, *,
                              now: dt.datetime | None = None) -> bool:
    """Issue the server certificate again if the stored one cannot be served (see the module); True if issued.

    Blocking (key generation, files): call it from a thread.
    """
    names = ServerNames.of(settings).names()
    why = identity.ensure_certificate(settings.state_dir / SERVER_KEY_FILE, settings.state_dir / SERVER_CERT_FILE,
                                      "edgecollab hub", usage="server", names=names, days=SERVER_CERT_DAYS, now=now)
    if why is None:
        return False
    logger.info("Issued the API's server certificate (%s) for %s, valid %d days", why, ", ".join(names),
                SERVER_CERT_DAYS)
    return True


def server_context(state_dir: Path) -> ssl.SSLContext:
    """A TLS server context serving ``STATE/hub-server.crt``: TLS 1.2 or later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(state_dir / SERVER_CERT_FILE, state_dir / SERVER_KEY_FILE)
    return context


async def tls_ctx(app: web.Application) -> AsyncIterator[None]:
    """Says so when the API is served over plain HTTP off loopback. When it is served over HTTPS, the
    certificate keeper (``edgehub.certificates``) issues the server certificate and makes ``app[TLS]``."""
    settings = app[SETTINGS]
    if not serves_tls(settings) and not is_loopback_host(settings.listen_host):
        logger.warning("Serving the API over plain HTTP on %s (tls: off): join tokens and the operator token "
                       "cross the network in clear; nodes refuse to join over it. Use tls: auto unless a "
                       "proxy in front of the hub serves HTTPS.", settings.listen_host or "every address")
    yield
