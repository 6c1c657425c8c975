"""Helm charts as bytes: packaging, opening and content fingerprints.

A chart travels between edgectl and the hub as a packaged ``.tgz``. The same
chart packaged twice gives different bytes (tar entries carry file mtimes),
so the identity of a chart is :func:`chart_fingerprint`, a digest of what the
archive holds, never a digest of the archive itself.

Every function that calls the Helm engine blocks the calling thread (Helm is
a C library): call them from a worker thread in async code, for example
``await asyncio.to_thread(package_chart, path)``.
"""

from __future__ import annotations

import contextlib
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

from .errors import ChartError

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
                    raise ChartError(f"the chart archive holds {name} of {member.size} bytes; the limit is {MAX_CHART_FILE_BYTES}")
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
