"""The web dashboard's page and files: served without a token, locked down by their headers, holding no data.

The hub is the real application on aiohttp's test server with a real
Mosquitto (fixtures in ``conftest.py``); ``stranger`` has no token. What the
page does in a browser is tested in ``tests/e2e/test_web_dashboard.py``.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, operator_token, refused

from edgehub.dashboard import ASSETS, CONTENT_SECURITY_POLICY
from edgehub.settings import HubSettings

FILES = ["/", *(f"/ui/{name}" for name in ASSETS)]


def csp(header: str) -> dict[str, str]:
    return {d.split()[0]: " ".join(d.split()[1:]) for d in (p.strip() for p in header.split(";")) if d}


async def test_the_page_and_its_files_answer_without_a_token_with_their_types_and_a_strict_policy(
        stranger: aiohttp.ClientSession):
    for path in FILES:
        response = await stranger.get(path)
        body = await response.read()
        assert response.status == 200, (path, body[:200])
        assert body, path
        expected = ASSETS["index.html" if path == "/" else path.rpartition("/")[2]]
        assert response.headers["Content-Type"] == expected, path
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        head = await stranger.head(path)
        assert head.status == 200 and head.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
    policy = csp(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert policy[directive] == "'self'", directive  # no inline script or style, no other origin
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'none'"


async def test_the_page_runs_no_inline_script_and_loads_everything_from_the_hub(stranger: aiohttp.ClientSession):
    page = await (await stranger.get("/")).text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="/ui/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", page), "an inline event handler (the policy would block it)"
    assert "<style" not in page and " style=" not in page
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith("/ui/"), url  # no CDN, nothing from elsewhere
    script = await (await stranger.get("/ui/app.js")).text()
    # The data the page shows becomes text, never markup.
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script


async def test_an_unchanged_file_is_not_sent_again(stranger: aiohttp.ClientSession):
    first = await stranger.get("/ui/app.js")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await stranger.get("/ui/app.js", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_no_other_file_answers_under_ui(stranger: aiohttp.ClientSession):
    for path in ("/ui/", "/ui/missing.js", "/ui/..%2Fdashboard.py", "/ui/%2e%2e/app.py", "/ui/../auth.py",
                 "/ui/web/app.js", "/index.html"):
        response = await stranger.get(path)
        assert response.status in (401, 404), (path, response.status)
        assert response.content_type == "application/json", path


async def test_the_page_holds_no_data_and_the_data_still_needs_a_token(hub: TestClient, hub_settings: HubSettings,
                                                                       stranger: aiohttp.ClientSession,
                                                                       example: dict[str, Any]):
    await answer(await join(hub, await create_token(hub, "kunming"), "km-secret-node"), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    viewer = (hub_settings.state_dir / "viewer-token").read_text().strip()
    for path in FILES:
        body = await (await stranger.get(path)).text()
        for secret in ("km-secret-node", "kunming", viewer, operator_token(hub)):
            assert secret not in body, (path, secret)
    for path in ("/api/v1/stream", "/api/v1/nodes", "/api/v1/pools", "/api/v1/components",
                 "/api/v1/nodes/km-secret-node/events", "/metrics"):
        await refused(await stranger.get(path), 401)
        await refused(await stranger.get(path, headers={"Authorization": "Bearer not-the-token-" + "x" * 40}), 401)
    # The viewer token the page uses reads the stream; the page's same-origin request passes the Origin check.
    origin = str(hub.make_url("")).rstrip("/")
    response = await stranger.get("/api/v1/stream", headers={"Authorization": f"Bearer {viewer}", "Origin": origin})
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    response.close()
    # A page elsewhere cannot use it: its Origin is refused.
    await refused(await stranger.get("/api/v1/stream", headers={"Authorization": f"Bearer {viewer}",
                                                                "Origin": "http://evil.example"}), 403)


async def test_a_foreign_host_gets_no_page(stranger: aiohttp.ClientSession):
    # DNS rebinding: the Host allow-list applies to the page too.
    await refused(await stranger.get("/", headers={"Host": "evil.example"}), 421)

