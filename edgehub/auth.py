"""Who may call the hub's API: the operator token, and the checks that keep browsers out.

The operator token is a random secret the hub creates on first start in
``STATE/admin-token`` (mode 0600, the state directory 0700) and never
rewrites; ``edgectl`` reads it from ``EDGECOLLAB_TOKEN_FILE``. Every endpoint
but the join, a node's certificate renewal, the CA certificate, ``/healthz``
and the web dashboard's page and files (``OPEN_ROUTES``) needs
``Authorization: Bearer <token>``; nodes join with their join token instead,
and renew with a proof by their key. The read-only viewer token
(``STATE/viewer-token``) is accepted too on ``VIEWER_ROUTES``: status reads,
the live stream and metrics.

The middlewares here run in ``create_app``'s order, before any handler:

    same_origin_only    the Host must be on the allow-list (loopback, listen_host,
                        allowed_hosts: defeats DNS rebinding), and an Origin
                        header must be the hub's own (defeats CSRF)      421 / 403
    operator_only       the bearer token, compared in constant time       401
    json_bodies_only    POST, PUT, PATCH and a DELETE with a body must be
                        application/json, which a browser cannot send
                        cross-origin without a preflight                  415

Their refusals are ``HubError``s; ``edgehub.routes.error_answers.json_errors``
answers them.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from edgekit.http import LOOPBACK_NAMES

from .errors import ForeignOrigin, MisdirectedHost, Unauthorized, UnsupportedMediaType
from .keys import SETTINGS
from .settings import HubSettings, check_host_name

logger = logging.getLogger(__name__)

OPERATOR_TOKEN = web.AppKey("operator_token", str)
VIEWER_TOKEN = web.AppKey("viewer_token", str)
ADMIN_TOKEN_FILE = "admin-token"
# A read-only credential for dashboards and metrics scrapers: GET on VIEWER_ROUTES only.
VIEWER_TOKEN_FILE = "viewer-token"
# 32 random bytes, URL-safe base64 (43 characters). A token given by hand in
# the file must be at least as long.
TOKEN_BYTES = 32
MIN_TOKEN_CHARS = 32
# (method, route path as registered) that answer without the operator token:
# a node's join (it has a join token) and certificate renewal (it proves its
# key), the hub's CA certificate (public; an agent checks it against its
# token's pin), the hub's signed time (public; a node checks the signature),
# the health check, and the web dashboard's page and files
# (they hold no data: the page reads the fleet with the viewer token).
OPEN_ROUTES = frozenset({("POST", "/api/v1/join"), ("POST", "/api/v1/nodes/{name}/certificate"),
                         ("GET", "/api/v1/ca"), ("HEAD", "/api/v1/ca"), ("GET", "/api/v1/time"),
                         ("GET", "/healthz"), ("HEAD", "/healthz"),
                         ("GET", "/"), ("HEAD", "/"), ("GET", "/ui/{file}"), ("HEAD", "/ui/{file}")})
# (method, route path as registered) the viewer token may read too: status, never specs' secrets or tokens.
VIEWER_ROUTES = frozenset({("GET", path) for path in (
    "/api/v1/nodes", "/api/v1/nodes/{name}", "/api/v1/nodes/{name}/events", "/api/v1/pools",
    "/api/v1/components", "/api/v1/events", "/api/v1/stream", "/metrics")})
# Names every hub answers to: loopback's (any 127.0.0.0/8 or ::1 too), LOOPBACK_NAMES.
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SHOWN_CHARS = 60



class OperatorTokenError(ValueError):
    """``STATE/admin-token`` holds no usable token; the hub does not start."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "...")


# --- the operator token --------------------------------------------------------------


def load_or_create_operator_token(state_dir: Path) -> str:
    """The operator token in ``state_dir/admin-token``, created on first start; an existing one is never rewritten.

    Blocking (file system): call it from a thread.
    """
    return load_or_create_token(state_dir, ADMIN_TOKEN_FILE)


def load_or_create_token(state_dir: Path, file_name: str) -> str:
    """The token in ``state_dir/file_name`` (created on first start, never rewritten). Blocking."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(state_dir.stat().st_mode) & 0o077:
        # The directory holds the hub key and the operator token: owner only.
        try:
            state_dir.chmod(0o700)
        except OSError as exc:
            logger.warning("State directory %s is open to other users and cannot be made 0700 (%s); "
                           "fix its permissions", state_dir, exc)
    path = state_dir / file_name
    if not path.exists():
        _create_token_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("%s is readable by other users (mode %04o); anyone who reads it can use the hub as "
                       "it allows: chmod 600 it", path, mode)
    token = path.read_text(encoding="utf-8", errors="replace").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise OperatorTokenError(f"{path} must hold one token of at least {MIN_TOKEN_CHARS} printable characters "
                                 f"without spaces (it holds {len(token)}); delete it to have the hub create one")
    return token


def _create_token_file(path: Path) -> None:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    while token.startswith("-"):  # 'edgectl --token -x...' would read it as an option
        token = secrets.token_urlsafe(TOKEN_BYTES)
    # Written whole to a private temporary file, then linked into place:
    # link() refuses to replace a file, so a token another hub process wrote
    # meanwhile is kept, and a crash never leaves a half-written token.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
            logger.info("Created %s", path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)


async def operator_token_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load (or create) the operator token before the API answers anything."""
    # File system work: a thread keeps the loop free.
    state_dir = app[SETTINGS].state_dir
    app[OPERATOR_TOKEN] = await asyncio.to_thread(load_or_create_operator_token, state_dir)
    app[VIEWER_TOKEN] = await asyncio.to_thread(load_or_create_token, state_dir, VIEWER_TOKEN_FILE)
    yield


@web.middleware
async def operator_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (401) a request to any route but ``OPEN_ROUTES`` without the operator token."""
    resource = request.match_info.route.resource
    if resource is not None and (request.method, resource.canonical) in OPEN_ROUTES:
        return await handler(request)
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("this request needs the operator token: send 'Authorization: Bearer <token>' "
                           "(the hub writes it to STATE/admin-token)")
    given = credentials.strip().encode("utf-8", "replace")
    if hmac.compare_digest(given, request.app[OPERATOR_TOKEN].encode()):
        return await handler(request)
    if resource is not None and (request.method, resource.canonical) in VIEWER_ROUTES \
            and hmac.compare_digest(given, request.app[VIEWER_TOKEN].encode()):
        return await handler(request)
    raise Unauthorized("the operator token is wrong (the hub's is in STATE/admin-token; the read-only viewer "
                       "token in STATE/viewer-token reads status and metrics only)")


# --- browsers: Host, Origin and content type ------------------------------------------


def host_name(host_header: str) -> str | None:
    """The name in a Host header, lower case, without port, brackets or trailing dot; None if malformed."""
    text = host_header.strip().lower()
    if text.startswith("["):
        name, closed, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
        if not closed or (rest and not (rest.startswith(":") and port.isdigit())):
            return None
    else:
        name, _, port = text.partition(":")
        if ":" in port or (port and not port.isdigit()):
            return None
    try:
        return check_host_name(name)
    except ValueError:
        return None


class HostAllowList:
    """The Host names the API answers to: loopback, ``listen_host`` (unless a wildcard) and ``allowed_hosts``."""

    def __init__(self, settings: HubSettings) -> None:
        names = set(LOOPBACK_NAMES) | set(settings.allowed_hosts)
        if settings.listen_host not in _WILDCARDS:
            names.add(check_host_name(settings.listen_host))
        self.names = frozenset(names)

    def allows(self, name: str) -> bool:
        if name in self.names:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return None
    if not parsed.scheme or not parsed.host:
        return None
    return parsed.scheme.lower(), parsed.host.lower().rstrip("."), parsed.port


def same_origin_only(hosts: HostAllowList) -> Middleware:
    """Middleware: the Host must be on ``hosts`` (421), and an Origin header must be the hub's own (403)."""

    @web.middleware
    async def same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host")
        if header is None:
            raise MisdirectedHost("the request names no Host; the hub answers only to the names it is configured for")
        name = host_name(header)
        if name is None or not hosts.allows(name):
            raise MisdirectedHost(f"the hub does not answer to the host {_shown(header)}; if that is its name, "
                                  "add it to allowed_hosts in the hub's settings")
        origin = request.headers.get("Origin")
        if origin is not None:
            own = _origin(f"{request.scheme}://{header}")
            if own is None or _origin(origin) != own:
                raise ForeignOrigin(f"requests from the web origin {_shown(origin)} are refused; "
                                    "only the hub's own origin may call its API")
        return await handler(request)

    return same_origin


@web.middleware
async def json_bodies_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (415) a POST, PUT, PATCH or DELETE with a body whose Content-Type is not application/json."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # no such route or method: the router's 404 or 405 says more
    if request.method in _BODY_METHODS or (request.method == "DELETE" and request.body_exists):
        given = request.headers.get("Content-Type")
        if given is None:
            raise UnsupportedMediaType("the request body must be JSON sent as Content-Type: application/json; "
                                       "this request names no Content-Type")
        if request.content_type != "application/json":
            raise UnsupportedMediaType("the request body must be JSON sent as Content-Type: application/json, "
                                       f"not {_shown(request.content_type)}")
    return await handler(request)
