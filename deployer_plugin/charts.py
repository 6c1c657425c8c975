"""Helm charts as bytes: packaging, opening and content fingerprints.

A chart travels between edgectl and the hub as a packaged ``.tgz``. The same
chart packaged twice gives different bytes (tar entries carry file mtimes),
so the identity of a chart is :func:`chart_fingerprint`, a digest of what the
archive holds, never a digest of the archive itself.

Every function that calls the Helm engine blocks the calling thread (Helm is
a C library): call them from a worker thread in async code, for example
``await asyncio.to_thread(package_chart, path)``.

:func:`check_installable` refuses, before anything renders, what ``helm install``
refuses about the chart itself: a dependency declared in Chart.yaml but
missing from ``charts/`` (Helm checks every declared one, whatever its
``condition`` or ``tags``), and a ``kubeVersion`` constraint that the
Kubernetes version the engine renders with (:func:`engine_kube_version`) does
not satisfy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import posixpath
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import helm_python
from helm_python import HelmError

from .errors import ChartError, ChartRefused
from .versions import satisfies

logger = logging.getLogger(__name__)

# Helm's own limits for a chart archive (MaxDecompressedChartSize and
# MaxDecompressedFileSize in helm.sh/helm/v4/pkg/chart/loader): a chart Helm
# would refuse is refused here too, before we spend memory inflating it.
MAX_CHART_BYTES = 100 * 1024 * 1024
MAX_CHART_FILE_BYTES = 5 * 1024 * 1024


def _detail(exc: HelmError) -> str:
    return str(exc).strip() or type(exc).__name__


def package_chart(path: str | os.PathLike[str]) -> bytes:
    """Package a chart directory (or re-package a ``.tgz``) and return the archive bytes.

    Blocks on the Helm engine.

    Raises:
        ChartError: if ``path`` is not a loadable Helm chart.
    """
    try:
        with helm_python.Chart.load(path) as chart, tempfile.TemporaryDirectory(prefix="edgecollab-chart-") as tmp:
            return Path(chart.save(tmp)).read_bytes()
    except HelmError as exc:
        raise ChartError(f"{os.fspath(path)} is not a Helm chart: {_detail(exc)}", detail=_detail(exc)) from exc


@contextlib.contextmanager
def open_chart(archive: bytes) -> Iterator[helm_python.Chart]:
    """Load archive bytes with the Helm engine; the chart is closed on exit.

    Blocks on the Helm engine.

    Raises:
        ChartError: if the bytes are not a chart archive.
    """
    try:
        chart = helm_python.Chart.load_archive(archive)
    except HelmError as exc:
        raise ChartError(f"the chart archive is not a Helm chart: {_detail(exc)}", detail=_detail(exc)) from exc
    with chart:
        yield chart


def chart_fingerprint(archive: bytes) -> str:
    """A ``sha256:`` digest of a chart archive's content, stable across re-packaging.

    It covers every file the archive holds (Chart.yaml, values, the schema,
    templates, other files, subcharts), by path and content, in sorted order,
    and nothing else: not mtimes, owners, modes or the order of tar entries.
    Pure Python, but it inflates the archive: run it in a thread for large
    charts in async code.

    Raises:
        ChartError: if the bytes are not a gzipped tar, hold a link or special
            file, or inflate past Helm's size limits.
    """
    files: dict[str, str] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = posixpath.normpath(member.name.lstrip("/"))
                if not member.isfile():
                    raise ChartError(f"the chart archive holds {name}, which is not a regular file")
                if member.size > MAX_CHART_FILE_BYTES:
                    raise ChartError(f"the chart archive holds {name} of {member.size} bytes; "
                                     f"the limit is {MAX_CHART_FILE_BYTES}")
                total += member.size
                if total > MAX_CHART_BYTES:
                    raise ChartError(f"the chart archive inflates past {MAX_CHART_BYTES} bytes")
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file always has content
                files[name] = hashlib.sha256(extracted.read()).hexdigest()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ChartError(f"the chart archive is not a gzipped tar: {exc}") from exc
    if not files:
        raise ChartError("the chart archive holds no files")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ChartArchive:
    """A packaged chart checked by the Helm engine, with what the hub needs to know of it."""

    data: bytes
    name: str
    version: str
    app_version: str
    fingerprint: str

    @classmethod
    def from_bytes(cls, data: bytes) -> ChartArchive:
        """Check that ``data`` is a chart Helm can load. Blocks on the Helm engine.

        Raises:
            ChartError: if it is not.
        """
        fingerprint = chart_fingerprint(data)
        with open_chart(data) as chart:
            metadata = chart.metadata
        return cls(
            data=data,
            name=str(metadata.get("name", "")),
            version=str(metadata.get("version", "")),
            app_version=str(metadata.get("appVersion", "")),
            fingerprint=fingerprint,
        )

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ChartArchive:
        """Package a chart directory or ``.tgz``. Blocks on the Helm engine."""
        return cls.from_bytes(package_chart(path))

    def __repr__(self) -> str:
        return f"ChartArchive({self.name}-{self.version}, {len(self.data)} bytes, {self.fingerprint[:19]})"


# --------------------------------------------------------------------------- installability

_PROBE_TEMPLATE = "{{ .Capabilities.KubeVersion.Version }}"


def _probe_archive() -> bytes:
    files = {
        "kube-probe/Chart.yaml": b"apiVersion: v2\nname: kube-probe\nversion: 0.1.0\n",
        "kube-probe/templates/version.txt": _PROBE_TEMPLATE.encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@functools.cache
def engine_kube_version() -> str:
    """The Kubernetes version the Helm engine renders with (``.Capabilities.KubeVersion``), e.g. ``v1.36.0``.

    Rendering is offline, so this is the engine's built-in default, not any
    node's. Asked of the engine once per process. Blocks on the Helm engine.
    """
    with open_chart(_probe_archive()) as chart:
        rendered = chart.render({}, name="probe", namespace="default", revision=1, is_install=True)
    return "".join(rendered.values()).strip()


def kube_version_satisfies(constraint: str, version: str) -> bool:
    """Whether ``version`` (``v1.36.0``) meets a Chart.yaml ``kubeVersion`` constraint, as Helm decides it.

    The constraint is Masterminds/semver syntax: comparisons joined by spaces or
    commas (all must hold), alternatives joined by ``||``, ``^1.2``, ``~1.2``
    (also ``~>1.2``), wildcards (``1.20.x``), hyphen ranges (``1.20 - 1.32``),
    ``!=`` and prereleases (``>=1.19.0-0``).

    Raises:
        ValueError: if the constraint or the version cannot be parsed (Helm
            then calls the chart incompatible).
    """
    return satisfies(constraint, version)


def check_installable(chart: helm_python.Chart) -> None:
    """Refuse a chart ``helm install`` would refuse before rendering it. Blocks on the Helm engine.

    Call it on a freshly loaded chart: rendering drops the subcharts its values
    disable from the loaded chart, after which they would look missing.

    Raises:
        ChartRefused: a dependency declared in Chart.yaml is missing from
            ``charts/``, or the chart's ``kubeVersion`` rules out the
            engine's Kubernetes version; the message is Helm's.
    """
    metadata = chart.metadata
    declared = [d for d in metadata.get("dependencies") or [] if isinstance(d, dict)]
    if declared:
        present = {str(d.get("name", "")) for d in chart.dependencies}
        missing = [str(d.get("name", "")) for d in declared if str(d.get("name", "")) not in present]
        if missing:
            detail = f"found in Chart.yaml, but missing in charts/ directory: {', '.join(missing)}"
            raise ChartRefused(
                f"chart {metadata.get('name', '')}: {detail} (Helm requires every declared dependency, whatever "
                "its condition or tags; run 'helm dependency build' on the chart, then apply again)",
                detail=detail,
            )
    constraint = str(metadata.get("kubeVersion") or "").strip()
    if constraint:
        kube = engine_kube_version()
        try:
            compatible = kube_version_satisfies(constraint, kube)
            unparsable = ""
        except ValueError as exc:
            compatible, unparsable = False, f" (not a version constraint Helm reads: {exc})"
        if not compatible:
            detail = f"chart requires kubeVersion: {constraint} which is incompatible with Kubernetes {kube}"
            raise ChartRefused(
                f"chart {metadata.get('name', '')}: {detail}{unparsable}; the hub renders for Kubernetes {kube}",
                detail=detail,
            )
