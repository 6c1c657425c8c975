"""A small synchronous JSON-over-HTTP client: ``edgectl`` and the agent's join use it.

Synchronous on purpose: both callers are one-shot commands with no event loop.
Every failure is an ``HttpError``: ``status`` is the HTTP status of an answer
that was an error (its JSON ``error`` field is the message), 0 when nothing
answered. When nothing answered at all (connection refused, a timeout, a name
that does not resolve) it is the subclass ``Unreachable``.

With ``token`` every request carries ``Authorization: Bearer <token>``.
Redirects are not followed: urllib would send that header on to wherever a
redirect points, so a redirect is an error naming where it pointed.

For an ``https://`` URL, ``ssl_context`` says whom to trust: ``tls_context``
makes one that trusts one CA (given as PEM or a file) and checks the host
name, ``unverified_tls_context`` one that checks nothing (only to fetch what
is then checked against a pin). Without one, the system's CAs are trusted. A
certificate that does not verify is an ``HttpError`` with
``certificate_error`` set.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Applying renders charts on the hub; a minute covers large charts.
REQUEST_TIMEOUT_SECONDS = 60.0
# Host names that are this machine (besides 127.0.0.0/8 and ::1).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or address, brackets allowed) is this machine's loopback."""
    text = host.strip().strip("[]").lower().rstrip(".")
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


class HttpError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0, *, certificate_error: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # The server's TLS certificate did not verify against the CA trusted.
        self.certificate_error = certificate_error


def tls_context(*, ca_pem: str | None = None, ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts only the CA given (PEM text or a file), or the system's when neither,
    and checks the server's host name. TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None, cadata=ca_pem or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def unverified_tls_context() -> ssl.SSLContext:
    """A client context that checks neither the certificate nor the host name: for fetching what a pin checks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Unreachable(HttpError):
    """Nothing answered: the server could not be reached, or did not answer in time."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class JsonHttpClient:
    """JSON requests to one base URL; ``name`` says what the server is in error messages.

    ``token``: a bearer token sent with every request (None: no Authorization header).
    ``ssl_context``: whom to trust for an ``https://`` URL (None: the system's CAs).
    """

    def __init__(self, base_url: str, *, timeout: float = REQUEST_TIMEOUT_SECONDS, name: str = "the hub",
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.name = name
        self.token = token
        self._opener = _OPENER if ssl_context is None else urllib.request.build_opener(
            _RefuseRedirects, urllib.request.HTTPSHandler(context=ssl_context))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "?")
                raise HttpError(f"{self.name} at {self.base_url} answered {method} {path} with a redirect "
                                f"({exc.code}) to {where}; not followed", status=exc.code) from exc
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise HttpError(str(message), status=exc.code) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise HttpError(f"{self.name} at {self.base_url} presented a TLS certificate that does not verify: "
                                f"{reason.verify_message or reason}", certificate_error=True) from exc
            if isinstance(reason, http.client.RemoteDisconnected) and self.base_url.startswith("http://"):
                raise Unreachable(f"cannot reach {self.name} at {self.base_url}: {exc} (if it serves HTTPS, use "
                                  "https://)") from exc
            if isinstance(reason, http.client.HTTPException):
                # Something answered, but not HTTP (another service on the port), or broke off its answer.
                raise HttpError(f"{self.name} at {self.base_url} answered {method} {path} with something that is "
                                f"not a whole HTTP answer ({type(exc).__name__})") from exc
            raise Unreachable(f"cannot reach {self.name} at {self.base_url}: {exc}") from exc
        except ValueError as exc:
            raise HttpError(f"{self.name} at {self.base_url} answered {method} {path} with invalid JSON") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
