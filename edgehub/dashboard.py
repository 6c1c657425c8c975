"""The web dashboard: a page and its assets, served at ``/`` and ``/ui/{file}`` without a token.

The files (``edgehub/web/``: ``index.html``, ``app.js``, ``style.css``,
``icon.svg``) hold no data and run no build step: plain HTML, CSS and
JavaScript, read from the package once when the hub starts. The page reads
the fleet in the browser with the read-only viewer token (``STATE/viewer-token``):
the live stream of summaries (``GET /api/v1/stream``, server-sent events read
with ``fetch()`` so it can send the ``Authorization`` header) and recent
events. The token reaches the page in the URL's fragment
(``http://HUB:8470/#token=...``), which a browser never sends to the server;
the page keeps it in the tab's ``sessionStorage`` and takes it out of the
address bar.

Every answer here carries a Content-Security-Policy that allows scripts,
styles, images and connections from the hub itself only (no inline script,
no other origin, no framing, no form submission), so the page can run
nothing but its own files even if some value it shows were crafted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from .errors import NotFound

# The route paths as registered (auth.OPEN_ROUTES names them).
PAGE_PATH = "/"
ASSET_PATH = "/ui/{file}"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",  # the token form is read by the script, never submitted: a token stays out of URLs
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (an ETag makes that cheap): a hub upgrade shows at once.
    "Cache-Control": "no-cache",
}

# The files the hub serves, with their types; nothing else under /ui/ answers.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
PAGE = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``edgehub/web`` the dashboard serves, read from the installed package."""
    folder = resources.files("edgehub") / "web"
    loaded = {}
    for name, content_type in ASSETS.items():
        body = (folder / name).read_bytes()
        loaded[name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return loaded


DASHBOARD_ASSETS = web.AppKey("dashboard_assets", dict)


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def page(request: web.Request) -> web.Response:
    return _answer(request, request.app[DASHBOARD_ASSETS][PAGE])


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    found = request.app[DASHBOARD_ASSETS].get(name)
    if found is None:
        raise NotFound(f"no dashboard file {name[:60]!r}")
    return _answer(request, found)


def add_dashboard_routes(app: web.Application) -> None:
    # Read once, here: a package installed without its web files fails at start, not on a page load.
    app[DASHBOARD_ASSETS] = load_assets()
    app.router.add_get(PAGE_PATH, page)
    app.router.add_get(ASSET_PATH, asset)
