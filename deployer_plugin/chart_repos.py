"""Fetching charts from Helm chart repositories and OCI registries: bounded, checked and cached.

:class:`ChartFetcher` turns a :class:`~deployer_plugin.spec.RepoChart` or an
:class:`~deployer_plugin.spec.OciChart` into chart archive bytes:

- a chart repository: ``GET REPO/index.yaml`` (at most ``max_index_bytes``,
  parsed with YAML's safe loader), the chart's entry of the highest version
  meeting ``version`` (an exact version or a constraint,
  :func:`deployer_plugin.versions.highest_match`), its first ``urls`` entry
  (relative to the repository URL, or absolute), the archive (at most
  ``max_archive_bytes``), checked against the entry's ``digest`` (SHA-256)
  when the index gives one;
- an OCI registry (the distribution API, as ``helm pull oci://`` uses it):
  ``GET /v2/REPOSITORY/manifests/VERSION`` (Accept: the OCI image manifest),
  the layer of media type ``application/vnd.cncf.helm.chart.content.v1.tar+gzip``,
  ``GET /v2/REPOSITORY/blobs/DIGEST``, checked against the digest. A registry
  that answers 401 with ``WWW-Authenticate: Bearer realm=...`` gets the
  anonymous token flow (a pull token from the realm, no credentials). The
  registry is spoken to over HTTPS, or plain HTTP when its host is a loopback
  address (as Docker treats ``localhost`` registries).

Both check that the archive is a gzipped tar whose ``Chart.yaml`` names the
chart and version asked for. Every request has the fetcher's time bound
(the whole fetch must finish within ``timeout_seconds``), every answer a size
bound checked while it is read; redirects are followed but never from HTTPS
to plain HTTP (nor to anything but HTTP(S)), and an ``Authorization`` header
never follows a redirect to another host. Credentials are not supported (the
spec refuses them in URLs, and a redirect carrying some is not followed);
proxies come from the usual environment variables (``https_proxy``, ...).

Only public addresses are connected to, and those in the networks the
fetcher is given (``allow``, the hub's ``chart_sources.allow``): every
address of every host, redirects included, is checked after DNS and the
connection made to the address checked (:mod:`deployer_plugin.chart_addresses`).

Whoever can apply a component picks the URLs, so what a failure says must not
make the hub a port scanner: every failure to get a proper answer (refused,
reset, timed out, TLS, any HTTP status but the one expected, an address not
allowed, an answer that is not a chart repository's or registry's) is the
same :func:`unreachable_message` for the chart's URL, and the real cause is
logged at the hub. What only a real repository or registry can have said (the
chart or version it lacks, a digest mismatch, a size bound) is told as it is.

A plain ``http://`` chart repository is fetched, with a warning unless it is
on a loopback address: over plain HTTP the index's digest arrives by the same
channel as the archive, so it detects corruption, not tampering.

:class:`ChartCache` keeps fetched archives in a directory by their SHA-256,
so a re-apply of the same version downloads only the index (or the manifest).

Everything here blocks on the network: async callers run it in a worker
thread (``await asyncio.to_thread(fetcher.fetch, ref)``). Failures are
:class:`ChartUnavailable` (a :class:`~deployer_plugin.errors.ChartError`),
whose message starts with the spec field at fault (``spec.chart.version: ...``).
"""

from __future__ import annotations

import contextlib
import difflib
import email.message
import hashlib
import io
import ipaddress
import json
import logging
import os
import posixpath
import re
import socket
import ssl
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import yaml

from .chart_addresses import AddressGuard, AddressRefused, IPNetwork, parse_network
from .errors import ChartError
from .spec import OciChart, RepoChart
from .versions import highest_match
from .yaml_aliases import ALIASES_REFUSED, first_alias_line

logger = logging.getLogger(__name__)

# With the render bound (30 s by default) it stays inside edgectl's 60 s wait for an answer.
DEFAULT_TIMEOUT_SECONDS = 20.0
# Public repositories' indexes run to tens of megabytes (every version of every chart).
MAX_INDEX_BYTES = 32 * 1024 * 1024
# A packaged chart: the same bound as a local chart sent in an apply request.
MAX_ARCHIVE_BYTES = 16 * 1024 * 1024
# An OCI manifest or a token answer is a small JSON document.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024

HELM_CHART_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# How many versions or tags a refusal lists.
SHOWN_VERSIONS = 20

_CHUNK = 64 * 1024
_SHA256 = re.compile(r"^(sha256:)?([0-9a-f]{64})$")
_USER_AGENT = "edgecollab-hub (chart fetcher)"


class ChartUnavailable(ChartError):
    """A chart that could not be fetched: unreachable, not found, too large, a digest mismatch, not a chart."""


def unreachable_message(ref: RepoChart | OciChart) -> str:
    """The one refusal for every transport- or HTTP-level failure to fetch ``ref``: it must not tell a
    closed port from a 403 or a TLS failure, nor an address not allowed from one where nothing answers."""
    url = ref.repo if isinstance(ref, RepoChart) else ref.oci
    return (f"spec.chart: {_shown_url(url)} could not be fetched (no chart repository answered there, "
            "or the address is not allowed: see chart_sources.allow)")


@dataclass(frozen=True, slots=True)
class FetchedChart:
    """A fetched chart archive, with where it came from and what to warn about."""

    data: bytes
    name: str
    version: str  # the version resolved (a constraint's highest match)
    url: str  # where the archive was downloaded from (or would have been, on a cache hit)
    sha256: str  # hex
    cached: bool = False
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- cache


class ChartCache:
    """Chart archives in a directory, one file per SHA-256 (``sha256-HEX.tgz``), at most ``max_bytes`` in all.

    Least recently used archives are removed first once a new one would go
    past the bound (a hit touches its file); an archive larger than the bound
    is not kept. A file whose content no longer matches its name is removed
    and counts as a miss. Safe to share between threads.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def _path(self, sha256: str) -> Path:
        return self.directory / f"sha256-{sha256}.tgz"

    def get(self, sha256: str) -> bytes | None:
        path = self._path(sha256)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            logger.warning("Chart cache file %s does not match its digest; removed", path)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self._path(sha256))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._prune()

    def _prune(self) -> None:
        entries = []
        for path in self.directory.glob("sha256-*.tgz"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("sha256-*.tgz")) if self.directory.exists() else 0


# --------------------------------------------------------------------------- HTTP


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _shown_url(url: str) -> str:
    return url if len(url) <= 200 else url[:197] + "..."


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from HTTPS to HTTP, and drop Authorization when the host changes
    (a registry redirects blob downloads to a storage service, which must not see its token)."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        problem = None
        if new.scheme not in ("http", "https"):  # urllib itself would follow ftp://, past the address check
            problem = "not to HTTP(S)"
        elif old.scheme == "https" and new.scheme != "https":
            problem = "away from HTTPS"
        elif new.username is not None or new.password is not None:
            problem = "with credentials in the URL"
        if problem:
            fp.close()
            raise _Unreachable(f"{_shown_url(req.full_url)} redirects to {_shown_url(newurl)}, {problem}")
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and old.netloc != new.netloc:
            redirected.remove_header("Authorization")
        return redirected


class _Refused(Exception):
    """A problem with what a real repository or registry answered; the caller puts the field in front."""


class _Unreachable(Exception):
    """No proper answer (see the module's docstring): logged, and answered with unreachable_message alone."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: email.message.Message
    url: str


class _Http:
    """GETs with one deadline for the whole fetch and a size bound for each answer, to allowed addresses only."""

    def __init__(self, timeout: float, allow: Iterable[IPNetwork] = ()) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        guard = AddressGuard(allow, deadline=self.deadline)
        # Built by hand rather than with build_opener, which adds ftp:, file: and data: handlers.
        self._opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), *guard.handlers(ssl.create_default_context()),
                        urllib.request.HTTPDefaultErrorHandler(), _Redirects(),
                        urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
            self._opener.add_handler(handler)

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Unreachable(f"no answer within {self.timeout:g} s")
        return remaining

    def get(self, url: str, *, limit: int, what: str, headers: dict[str, str] | None = None,
            statuses: tuple[int, ...] = ()) -> _Answer:
        """GET ``url``; an answer whose status is not 2xx or in ``statuses`` is refused. ``what`` names it."""
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **(headers or {})})
        try:
            response = self._opener.open(request, timeout=self._remaining())
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code in statuses:
                    try:
                        return _Answer(exc.code, self._read(exc, limit, what), exc.headers, exc.url)
                    except _Refused as refused:  # the size of an error page says nothing a repository said
                        raise _Unreachable(f"{_shown_url(url)} answered {exc.code}: {refused}") from refused
            raise _Unreachable(f"{_shown_url(exc.url or url)} answered {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise _Unreachable(f"cannot reach {_shown_url(url)}: {self._reason(exc.reason)}") from exc
        except TimeoutError as exc:
            raise _Unreachable(f"{_shown_url(url)}: no answer within {self.timeout:g} s") from exc
        except (OSError, ValueError, HTTPException) as exc:
            raise _Unreachable(f"cannot fetch {_shown_url(url)}: {exc}") from exc
        with response:
            return _Answer(response.status, self._read(response, limit, what), response.headers, response.url)

    @staticmethod
    def _reason(reason: Any) -> str:
        if isinstance(reason, AddressRefused):
            return f"address not allowed: {reason}"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return f"the name does not resolve ({reason.strerror})"
        if isinstance(reason, TimeoutError):
            return "no answer in time"
        if isinstance(reason, ssl.SSLError):
            return f"TLS failed ({getattr(reason, 'reason', None) or reason})"
        return str(getattr(reason, "strerror", None) or reason)

    def _read(self, response: Any, limit: int, what: str) -> bytes:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise _Refused(f"{what} is {int(length)} bytes; the limit is {limit}")
        buffer = io.BytesIO()
        try:
            while True:
                self._remaining()
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                buffer.write(chunk)
                if buffer.tell() > limit:
                    raise _Refused(f"{what} is larger than the limit of {limit} bytes")
        except TimeoutError as exc:
            raise _Unreachable(f"{what}: no answer within {self.timeout:g} s") from exc
        except (OSError, HTTPException) as exc:
            raise _Unreachable(f"{what}: the transfer failed ({exc})") from exc
        return buffer.getvalue()


# --------------------------------------------------------------------------- archives


def _chart_yaml(data: bytes, where: str) -> dict[str, Any]:
    """The Chart.yaml of a chart archive (the one at the top directory). Raises _Refused, naming ``where``."""
    if not data.startswith(b"\x1f\x8b"):
        raise _Refused(f"{where} is not a chart archive (not gzip data)")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = posixpath.normpath(member.name.lstrip("/"))
                if name.count("/") == 1 and name.endswith("/Chart.yaml") and member.isfile():
                    if member.size > 1024 * 1024:
                        raise _Refused(f"{where} holds a Chart.yaml of {member.size} bytes")
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    text = extracted.read()
                    # Helm writes no aliases; a Chart.yaml with one is a bomb for str() below.
                    alias_line = first_alias_line(text, name=name)
                    if alias_line is not None:
                        raise _Refused(f"{where}: {name} line {alias_line}: {ALIASES_REFUSED}")
                    metadata = yaml.safe_load(text)
                    if not isinstance(metadata, dict):
                        raise _Refused(f"{where} holds a Chart.yaml that is not a mapping")
                    return metadata
    except (tarfile.TarError, EOFError, zlib.error, OSError, yaml.YAMLError) as exc:
        raise _Refused(f"{where} is not a chart archive ({exc})") from exc
    raise _Refused(f"{where} is not a chart archive (no Chart.yaml)")


def _check_chart(data: bytes, name: str, version: str, where: str) -> None:
    metadata = _chart_yaml(data, where)
    found = (str(metadata.get("name", "")), str(metadata.get("version", "")))
    if found != (name, version):
        raise _Refused(f"{where} holds chart {found[0]} {found[1]}, not {name} {version}")


# --------------------------------------------------------------------------- the fetcher


class ChartFetcher:
    """Fetches charts from repositories and registries; ``cache`` (optional) keeps archives by digest.

    ``allow``: networks (``ipaddress`` networks, or CIDR strings) fetched from besides public addresses,
    the hub's ``chart_sources.allow``; by default none, not even loopback.
    """

    def __init__(self, *, cache: ChartCache | None = None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 max_index_bytes: int = MAX_INDEX_BYTES, max_archive_bytes: int = MAX_ARCHIVE_BYTES,
                 allow: Iterable[IPNetwork | str] = ()) -> None:
        self.cache = cache
        self.allow: tuple[IPNetwork, ...] = tuple(n if not isinstance(n, str) else parse_network(n) for n in allow)
        self.timeout_seconds = timeout_seconds
        self.max_index_bytes = max_index_bytes
        self.max_archive_bytes = max_archive_bytes

    def fetch(self, ref: RepoChart | OciChart) -> FetchedChart:
        """The chart archive ``ref`` names. Blocks on the network.

        Raises:
            ChartUnavailable: naming the spec field at fault and the reason; for no proper answer, only
                :func:`unreachable_message` (the cause is logged).
        """
        try:
            if isinstance(ref, RepoChart):
                return self._fetch_repo(ref)
            return self._fetch_oci(ref)
        except _Unreachable as exc:
            logger.warning("Chart %s could not be fetched: %s", ref, exc)
            # Not chained: the cause is for the hub's log, never for the one who applied.
            raise ChartUnavailable(unreachable_message(ref)) from None

    # ------------------------------------------------------------- chart repositories

    def _fetch_repo(self, ref: RepoChart) -> FetchedChart:
        http = _Http(self.timeout_seconds, self.allow)
        base = ref.repo.rstrip("/") + "/"
        warnings: list[str] = []
        if urllib.parse.urlsplit(base).scheme == "http" and not _is_loopback(urllib.parse.urlsplit(base).hostname):
            warnings.append(f"chart repository {ref.repo} is plain HTTP: the chart and its index's digest could be "
                            "altered on the way; use https://")
        index_url = urllib.parse.urljoin(base, "index.yaml")
        try:
            answer = http.get(index_url, limit=self.max_index_bytes, what=f"the index of {ref.repo}")
        except _Refused as exc:
            raise ChartUnavailable(f"spec.chart.repo: {exc}") from exc
        index = self._parse_index(answer.body, index_url)
        entry, version = self._entry(index, ref)

        urls = entry.get("urls")
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str) or not urls[0].strip():
            raise ChartUnavailable(f"spec.chart: the index of {ref.repo} gives no URL for {ref.name} {version}")
        url = urllib.parse.urljoin(base, urls[0].strip())
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ChartUnavailable(f"spec.chart: the index of {ref.repo} points {ref.name} {version} at "
                                   f"{_shown_url(url)}, which is not an http(s) URL")
        if urllib.parse.urlsplit(base).scheme == "https" and scheme != "https":
            raise ChartUnavailable(f"spec.chart: the index of {ref.repo} points {ref.name} {version} at "
                                   f"{_shown_url(url)}, away from HTTPS")
        digest = entry.get("digest")
        expected = None
        if isinstance(digest, str) and (match := _SHA256.match(digest.strip().lower())):
            expected = match.group(2)
        elif digest:
            raise ChartUnavailable(f"spec.chart: the index of {ref.repo} gives {ref.name} {version} a digest that "
                                   f"is not a SHA-256: {str(digest)[:80]!r}")
        else:
            warnings.append(f"the index of {ref.repo} gives no digest for {ref.name} {version}: the archive "
                            "downloaded is not checked")

        if expected and self.cache is not None:
            cached = self.cache.get(expected)
            if cached is not None:
                return FetchedChart(cached, ref.name, version, url, expected, cached=True, warnings=tuple(warnings))
        try:
            data = http.get(url, limit=self.max_archive_bytes, what=f"the archive of {ref.name} {version}").body
            actual = hashlib.sha256(data).hexdigest()
            if expected and actual != expected:
                raise _Refused(f"the archive downloaded from {_shown_url(url)} has SHA-256 {actual}, but the "
                               f"repository's index says {expected}: refused (a changed or corrupted archive)")
            _check_chart(data, ref.name, version, f"the archive at {_shown_url(url)}")
        except _Refused as exc:
            raise ChartUnavailable(f"spec.chart: {exc}") from exc
        if self.cache is not None:
            self.cache.put(actual, data)
        logger.info("Fetched chart %s %s from %s (%d bytes, sha256 %s)", ref.name, version, url, len(data), actual)
        return FetchedChart(data, ref.name, version, url, actual, warnings=tuple(warnings))

    def _parse_index(self, body: bytes, index_url: str) -> dict[str, Any]:
        # What is not an index is no chart repository answering: said as a failure to fetch, since telling
        # it apart would tell that some other server answers 200 there.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            # Helm writes no aliases; an index with one is refused before anything is built from it.
            alias_line = first_alias_line(body, name="index.yaml")
            if alias_line is None:
                index = yaml.load(body, Loader=loader)  # noqa: S506 - a safe loader
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise _Unreachable(f"{_shown_url(index_url)} is not YAML: {str(exc).splitlines()[0][:200]}") from exc
        if alias_line is not None:
            raise _Unreachable(f"{_shown_url(index_url)} line {alias_line}: {ALIASES_REFUSED}")
        if not isinstance(index, dict) or not isinstance(index.get("entries"), dict):
            raise _Unreachable(f"{_shown_url(index_url)} is not a chart repository index (no entries)")
        return index

    def _entry(self, index: dict[str, Any], ref: RepoChart) -> tuple[dict[str, Any], str]:
        entries = index["entries"]
        chart_entries = entries.get(ref.name)
        if not isinstance(chart_entries, list):
            names = sorted(str(n) for n in entries)
            close = difflib.get_close_matches(ref.name, names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            shown = ", ".join(names[:SHOWN_VERSIONS]) + (", ..." if len(names) > SHOWN_VERSIONS else "")
            raise ChartUnavailable(f"spec.chart.name: chart {ref.name!r} is not in the repository {ref.repo}{hint}; "
                                   f"it holds {len(names)} chart(s): {shown or 'none'}")
        by_version = {str(e["version"]): e for e in chart_entries if isinstance(e, dict) and e.get("version")}
        version = highest_match(ref.version, by_version)
        if version is None:
            available = sorted(by_version, key=_version_order, reverse=True)
            shown = ", ".join(available[:SHOWN_VERSIONS]) + (", ..." if len(available) > SHOWN_VERSIONS else "")
            what = f"version {ref.version}" if _exact(ref.version) else f"version matching {ref.version!r}"
            raise ChartUnavailable(f"spec.chart.version: chart {ref.name} has no {what} in the repository "
                                   f"{ref.repo}; it has {shown or 'no versions'}")
        return by_version[version], version

    # ------------------------------------------------------------- OCI registries

    def _fetch_oci(self, ref: OciChart) -> FetchedChart:
        http = _Http(self.timeout_seconds, self.allow)
        host = urllib.parse.urlsplit(ref.oci).hostname
        scheme = "http" if _is_loopback(host) else "https"
        registry = f"{scheme}://{ref.host}"
        tag = ref.version.replace("+", "_")
        manifest_url = f"{registry}/v2/{ref.repository}/manifests/{urllib.parse.quote(tag)}"
        headers = {"Accept": OCI_MANIFEST}
        try:
            answer = http.get(manifest_url, limit=MAX_MANIFEST_BYTES, what="the chart's manifest", headers=headers,
                              statuses=(401, 404))
            if answer.status == 401:
                headers["Authorization"] = f"Bearer {self._anonymous_token(http, answer, ref, registry)}"
                answer = http.get(manifest_url, limit=MAX_MANIFEST_BYTES, what="the chart's manifest",
                                  headers=headers, statuses=(404,))
            if answer.status == 404:
                raise ChartUnavailable(self._missing_tag(http, ref, registry, headers))
            layer = self._chart_layer(answer.body, ref)
        except _Refused as exc:
            raise ChartUnavailable(f"spec.chart: {exc}") from exc
        digest = str(layer["digest"])
        expected = digest.partition(":")[2]
        if self.cache is not None:
            cached = self.cache.get(expected)
            if cached is not None:
                return FetchedChart(cached, ref.name, ref.version, ref.to_document(), expected, cached=True)
        blob_url = f"{registry}/v2/{ref.repository}/blobs/{digest}"
        try:
            data = http.get(blob_url, limit=self.max_archive_bytes, what=f"the archive of {ref}", headers={
                k: v for k, v in headers.items() if k == "Authorization"}).body
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise _Refused(f"the chart layer of {ref} has SHA-256 {actual}, but its manifest says {expected}: "
                               "refused (a changed or corrupted blob)")
            metadata = _chart_yaml(data, f"the chart layer of {ref}")
            if str(metadata.get("version", "")) != ref.version:
                raise _Refused(f"{ref} holds chart {metadata.get('name', '')} {metadata.get('version', '')}, "
                               f"not version {ref.version}")
        except _Refused as exc:
            raise ChartUnavailable(f"spec.chart: {exc}") from exc
        if self.cache is not None:
            self.cache.put(actual, data)
        logger.info("Fetched chart %s (%d bytes, sha256 %s)", ref, len(data), actual)
        return FetchedChart(data, str(metadata.get("name", ref.name)), ref.version, ref.to_document(), actual)

    def _anonymous_token(self, http: _Http, answer: _Answer, ref: OciChart, registry: str) -> str:
        challenge = answer.headers.get("WWW-Authenticate", "")
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            raise _Unreachable(f"the registry {ref.host} asks for credentials ({challenge[:80] or 'no challenge'}); "
                               "only anonymous pulls are supported")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm", "")
        realm_parts = urllib.parse.urlsplit(realm)
        if realm_parts.scheme not in ("http", "https") or not realm_parts.hostname:
            raise _Unreachable(f"the registry {ref.host} names no usable token realm ({realm[:80]!r})")
        if urllib.parse.urlsplit(registry).scheme == "https" and realm_parts.scheme != "https":
            raise _Unreachable(f"the registry {ref.host} sends for a token to {realm[:80]}, away from HTTPS")
        query = {"scope": fields.get("scope") or f"repository:{ref.repository}:pull"}
        if fields.get("service"):
            query["service"] = fields["service"]
        separator = "&" if realm_parts.query else "?"
        token_answer = http.get(realm + separator + urllib.parse.urlencode(query), limit=MAX_MANIFEST_BYTES,
                                what="the registry's token answer", statuses=(401, 403))
        if token_answer.status in (401, 403):
            raise _Unreachable(f"the registry {ref.host} refuses an anonymous pull of {ref.repository} "
                               f"({token_answer.status}); only public charts can be fetched")
        try:
            document = json.loads(token_answer.body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError) as exc:
            raise _Unreachable(f"the registry's token answer is not JSON with a token ({exc})") from exc
        if not isinstance(token, str) or not token:
            raise _Unreachable("the registry's token answer holds no token")
        return token

    def _chart_layer(self, body: bytes, ref: OciChart) -> dict[str, Any]:
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise _Unreachable(f"the manifest of {ref} is not JSON ({exc})") from exc
        layers = manifest.get("layers") if isinstance(manifest, dict) else None
        if not isinstance(layers, list):
            raise _Unreachable(f"the manifest of {ref} lists no layers: not an OCI image manifest")
        charts = [layer for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == HELM_CHART_LAYER]
        if len(charts) != 1:
            raise _Refused(f"{ref} is not a Helm chart: its manifest has {len(charts)} layers of {HELM_CHART_LAYER}")
        layer = charts[0]
        digest = str(layer.get("digest", ""))
        if not digest.startswith("sha256:") or not _SHA256.match(digest):
            raise _Refused(f"the chart layer of {ref} has digest {digest[:80]!r}, not sha256:HEX")
        size = layer.get("size")
        if isinstance(size, int) and size > self.max_archive_bytes:
            raise _Refused(f"the chart layer of {ref} is {size} bytes; the limit is {self.max_archive_bytes}")
        return layer

    def _missing_tag(self, http: _Http, ref: OciChart, registry: str, headers: dict[str, str]) -> str:
        # A 404 alone is what any web server says: the version is said to be missing only when the
        # repository's tag list answers as a registry's does.
        url = f"{registry}/v2/{ref.repository}/tags/list"
        try:
            answer = http.get(url, limit=MAX_MANIFEST_BYTES, what="the tag list",
                              headers={k: v for k, v in headers.items() if k == "Authorization"})
            document = json.loads(answer.body)
            listed = document["tags"] if isinstance(document, dict) else None
            if not isinstance(listed, list | None):
                raise ValueError("no list of tags")
        except (_Refused, ValueError, KeyError) as exc:
            raise _Unreachable(f"the manifest of {ref} answered 404, and {url} is no tag list ({exc})") from exc
        tags = [str(t).replace("_", "+") for t in listed or []]
        tags.sort(key=_version_order, reverse=True)
        message = f"spec.chart: version {ref.version} of {ref.oci} is not in the registry"
        shown = ", ".join(tags[:SHOWN_VERSIONS]) + (", ..." if len(tags) > SHOWN_VERSIONS else "")
        return f"{message}; it has {shown or 'no tags'}"


def _exact(version: str) -> bool:
    return bool(re.fullmatch(r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?", version))


def _version_order(text: str) -> tuple[int, Any]:
    """Sort key: semver versions by precedence above anything else (by text)."""
    import semantic_version

    try:
        return (1, semantic_version.Version.coerce(text.lstrip("vV")))
    except ValueError:
        return (0, text)
