"""A Helm chart repository and an OCI registry on 127.0.0.1, for the tests of charts the hub fetches.

No real repository or registry is reachable from the tests, so this serves
what the hub fetches from one, with aiohttp on a thread of its own (usable
from sync tests, async tests and an ``edgectl`` subprocess alike):

- a chart repository under ``/charts/``: the ``index.yaml`` Helm's own
  ``helm repo index`` writes (the Helm engine's ``repo_index_generate``) and
  the archives Helm packages from the test charts;
- an OCI registry doing just what ``helm pull oci://`` asks of one: ``GET
  /v2/NAME/manifests/TAG`` (an OCI image manifest with a Helm chart layer),
  ``GET /v2/NAME/blobs/DIGEST`` and ``GET /v2/NAME/tags/list``; with
  ``require_token`` it answers 401 with a ``WWW-Authenticate: Bearer`` challenge
  and hands out anonymous pull tokens at ``/token``, as public registries do.

It is a test double of a remote server, not of anything of ours. ``requests``
records every path asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

import helm_python
from aiohttp import web

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def package(chart: Path, destination: Path, version: str | None = None) -> Path:
    """``helm package`` of ``chart`` (at ``version`` when given) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    return Path(helm_python.package(chart, destination=destination, version=version))


class ChartServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory / "charts"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.requests: list[str] = []
        self.require_token = False
        self.tokens: set[str] = set()
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def repo_url(self) -> str:
        return f"{self.url}/charts"

    @property
    def oci_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ content

    def add_chart(self, chart: Path, version: str | None = None) -> Path:
        """Package ``chart`` into the repository and index it again, as ``helm repo index`` does."""
        archive = package(chart, self.directory, version)
        self.reindex()
        return archive

    def reindex(self) -> dict[str, Any]:
        (self.directory / "index.yaml").unlink(missing_ok=True)
        return helm_python.repo_index_generate(self.directory)

    def push_oci(self, repository: str, chart: Path, version: str) -> bytes:
        """Put ``chart`` at ``version`` in the registry as ``helm push`` lays it out; returns the archive."""
        archive = package(chart, self.directory / ".oci", version).read_bytes()
        config = json.dumps({"name": chart.name, "version": version}).encode()
        layer_digest, config_digest = (f"sha256:{hashlib.sha256(b).hexdigest()}" for b in (archive, config))
        self.blobs[layer_digest], self.blobs[config_digest] = archive, config
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": HELM_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": HELM_LAYER, "digest": layer_digest, "size": len(archive)}],
        }
        self.manifests[(repository, version.replace("+", "_"))] = json.dumps(manifest).encode()
        return archive

    # ------------------------------------------------------------------ serving

    def _authorized(self, request: web.Request) -> bool:
        if not self.require_token:
            return True
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    def _challenge(self, repository: str) -> web.Response:
        realm = f'Bearer realm="{self.url}/token",service="test-registry",scope="repository:{repository}:pull"'
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                 headers={"WWW-Authenticate": realm})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        path = self.directory / request.match_info["file"]
        if "/" in request.match_info["file"] or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type="application/x-yaml"
                            if path.suffix == ".yaml" else "application/gzip")

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        assert request.query.get("service") == "test-registry", request.query
        token = secrets.token_hex(8)
        self.tokens.add(token)
        return web.json_response({"token": token})

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        path = request.match_info["path"]
        match = re.fullmatch(r"(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)", path) or re.fullmatch(
            r"(?P<repo>.+)/(?P<kind>tags)/list", path)
        if match is None:
            raise web.HTTPNotFound()
        repository, kind, tail = match["repo"], match["kind"], match.groupdict().get("ref")
        if not self._authorized(request):
            return self._challenge(repository)
        if kind == "manifests":
            manifest = self.manifests.get((repository, tail))
            if manifest is None:
                return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
            assert OCI_MANIFEST in request.headers.get("Accept", ""), request.headers
            return web.Response(body=manifest, content_type=OCI_MANIFEST)
        if kind == "blobs":
            blob = self.blobs.get(tail)
            if blob is None:
                return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
            return web.Response(body=blob, content_type="application/octet-stream")
        tags = sorted(tag for repo, tag in self.manifests if repo == repository)
        return web.json_response({"name": repository, "tags": tags})

    def start(self) -> ChartServer:
        app = web.Application()
        app.router.add_get("/charts/{file}", self._file)
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/{path:.+}", self._v2)
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="chart-server", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the chart server did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        shutil.rmtree(self.directory / ".oci", ignore_errors=True)

    def __enter__(self) -> ChartServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
