"""Which addresses the hub may fetch charts from, and HTTP connections that only reach those.

Anyone holding the operator token chooses the URLs the hub fetches
(``spec.chart: {repo: URL}``, ``oci://`` references, and the archive URLs and
token realms those servers name). Without a rule, that makes the hub a proxy
into its own network: cloud metadata at 169.254.169.254, admin ports on
loopback, the LAN behind it. So an address is fetched from only when it is
public (:func:`not_public` names why it is not) or inside a network the
operator allowed (hub setting ``chart_sources.allow``).

The rule is applied to addresses, not names, after DNS: every address a name
resolves to is checked, and the connection goes to one of those very
addresses (:class:`AddressGuard`), with ``Host`` and TLS SNI/certificate
checks still for the name. Resolving once and connecting to what was checked
is what stops DNS rebinding (a name that answers a public address to the
check and a private one to the connect). Each redirect is a new connection
through the same guard, so it is checked too.

Behind an HTTP proxy (``https_proxy``... in the hub's environment, set by
whoever runs the hub), the connection goes to the proxy, which resolves the
name again itself: the target's addresses are still checked first, but
only the proxy's own rules can stop a rebinding name there.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# IPv4 ranges that are not the public internet (IANA special-purpose registry), with the reason given.
_NOT_PUBLIC_V4: tuple[tuple[IPNetwork, str], ...] = (
    # Connecting to 0.0.0.0 reaches the machine itself on Linux.
    (_V4("0.0.0.0/8"), "unspecified"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("100.64.0.0/10"), "shared (carrier-grade NAT)"),
    # Cloud metadata services live here (169.254.169.254).
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("192.0.0.0/24"), "reserved"),
    (_V4("192.0.2.0/24"), "reserved"),
    (_V4("198.51.100.0/24"), "reserved"),
    (_V4("203.0.113.0/24"), "reserved"),
    (_V4("198.18.0.0/15"), "reserved"),
    (_V4("192.88.99.0/24"), "reserved"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),  # 255.255.255.255 (broadcast) with it
)

# Forms of IPv6 address that carry an IPv4 address the packets really go to: judged by that one.
_MAPPED = _V6("::ffff:0:0/96")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")
# The public IPv6 internet is 2000::/3; everything outside it is loopback, unspecified, ULA (fc00::/7),
# link-local (fe80::/10), site-local, multicast (ff00::/8) or unassigned.
_GLOBAL_UNICAST = _V6("2000::/3")
_NOT_PUBLIC_V6: tuple[tuple[IPNetwork, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("fc00::/7"), "private (unique local)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("ff00::/8"), "multicast"),
    # Inside 2000::/3 but not public: IETF protocol assignments (Teredo among them), documentation.
    (_V6("2001::/23"), "reserved"),
    (_V6("2001:db8::/32"), "reserved"),
    (_V6("3fff::/20"), "reserved"),
)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in _MAPPED or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def not_public(address: IPAddress) -> str | None:
    """Why ``address`` is not a public internet address ("loopback", "private", ...), or None if it is."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((why for net, why in _NOT_PUBLIC_V4 if address in net), None)
    address = ipaddress.IPv6Address(int(address))  # without a %scope
    embedded = _embedded_v4(address)
    if embedded is not None:
        why = not_public(embedded)
        return f"{why} (as {embedded})" if why else None
    for net, why in _NOT_PUBLIC_V6:
        if address in net:
            return why
    return None if address in _GLOBAL_UNICAST else "reserved"


def parse_network(text: object) -> IPNetwork:
    """A network of ``chart_sources.allow``: a CIDR (``10.1.0.0/16``, ``::1/128``) or one address.

    Raises:
        ValueError: ``text`` is neither; the message says what is wrong, not which setting.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not a CIDR or an IP address")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR or an IP address ({exc})") from None


class AddressRefused(OSError):
    """An address the rule does not allow; raised before any connection to it is made."""


class AddressGuard:
    """Resolves a host once, refuses it unless every address is allowed, and connects to a checked address.

    ``allow`` are networks allowed besides public addresses; ``deadline`` (``time.monotonic()``) bounds
    every connection attempt together.
    """

    def __init__(self, allow: Iterable[IPNetwork | str] = (), *, deadline: float | None = None) -> None:
        self.allow: tuple[IPNetwork, ...] = tuple(
            n if isinstance(n, _V4 | _V6) else parse_network(n) for n in allow)
        self.deadline = deadline

    def refusal(self, address: IPAddress) -> str | None:
        """Why the hub may not fetch from ``address``, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address):
            address = ipaddress.IPv6Address(int(address))  # without a %scope
        forms: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_v4(address)) is not None:
            forms.append(embedded)  # allowing 127.0.0.0/8 allows ::ffff:127.0.0.1 too
        if any(form in net for form in forms for net in self.allow if form.version == net.version):
            return None
        why = not_public(address)
        return f"{address} ({why}) is not in chart_sources.allow" if why else None

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """The ``getaddrinfo`` results of ``host``, each one checked.

        Raises:
            AddressRefused: one of the addresses is not allowed (the others are not used either: a name
                that also means a private address is not one to trust).
            OSError: the name does not resolve.
        """
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} resolves to no address")
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            why = self.refusal(address)
            if why is not None:
                named = "" if str(address) == host.strip("[]") else f"{host} resolves to "
                raise AddressRefused(f"{named}{why}")
        return infos

    def connect(self, address: tuple[str, int], timeout: object = None,
                source_address: tuple[str, int] | None = None) -> socket.socket:
        """``socket.create_connection`` to a checked address of ``address``'s host, never the name itself."""
        host, port = address
        if not isinstance(timeout, int | float):  # http.client's "no timeout given" is an object of its own
            timeout = None
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in self.resolve(host, port):
            attempt_timeout = timeout
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no time left to connect")
                attempt_timeout = left if timeout is None else min(timeout, left)
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(attempt_timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        assert error is not None
        raise error

    def check_url(self, url: str) -> None:
        """Resolve and check the host of ``url`` (before asking a proxy to fetch it)."""
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise AddressRefused(f"{url[:200]} names no host")
        self.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    def connection_for(self, base: type[http.client.HTTPConnection], req: urllib.request.Request) -> Callable[..., Any]:
        # urllib points a request that goes through a proxy at the proxy (has_proxy for http://, a CONNECT
        # tunnel for https://). The proxy comes from the hub's own environment, so it is connected to as it
        # is, after the target's addresses have been checked.
        if req.has_proxy() or getattr(req, "_tunnel_host", None):
            self.check_url(req.full_url)
            return base
        return partial(_GUARDED[base], guard=self)

    def handlers(self, context: Any) -> list[urllib.request.BaseHandler]:
        """urllib handlers for http:// and https:// (``context``: the TLS context) through this guard."""
        return [_GuardedHTTPHandler(self), _GuardedHTTPSHandler(self, context)]


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # connect() opens its socket with this (socket.create_connection by default); HTTPS wraps that
        # socket for self.host, the name, so SNI and the certificate check are for the name.
        self._create_connection = guard.connect


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = guard.connect


_GUARDED: dict[type[http.client.HTTPConnection], Callable[..., http.client.HTTPConnection]] = {
    http.client.HTTPConnection: _GuardedHTTPConnection,
    http.client.HTTPSConnection: _GuardedHTTPSConnection,
}


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self._guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._guard.connection_for(http.client.HTTPConnection, req), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: AddressGuard, context: Any) -> None:
        super().__init__(context=context)
        self._guard = guard
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._guard.connection_for(http.client.HTTPSConnection, req), req, context=self._tls)
