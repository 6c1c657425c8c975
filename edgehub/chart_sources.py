"""Where an apply's chart comes from: the request (a local chart edgectl packaged) or the hub's own fetch.

A component whose ``spec.chart`` is a local path comes with its chart in the
apply request (``chart_archive``). One whose ``spec.chart`` names a chart
repository entry or an OCI reference comes without: the hub fetches it
(:class:`deployer_plugin.chart_repos.ChartFetcher`) on a worker thread, at
most ``MAX_PARALLEL_FETCHES`` at a time, each bounded in time and size, and
keeps the archives in ``STATE/chart-cache/`` by SHA-256 (at most
``CACHE_BYTES``, least recently used out first). A re-apply of the same
version then downloads only the repository's index (or the registry's
manifest) again: the index may have moved a version constraint on.

The hub fetches from public addresses only, and from the networks of the
``chart_sources.allow`` setting (a lab repository on loopback or the LAN):
whoever holds the operator token chooses the URL, and must not reach cloud
metadata or the hub's own network through it (docs/charts.md).

Refusals: a request whose archive does not fit its spec is a ``BadRequest``
on ``chart_archive`` (400); a chart that cannot be fetched is a
``ChartUnavailable`` (a ``SpecError``: the components service answers it
with 422, naming ``spec.chart``), one and the same message for every way of
not getting an answer (the cause is in the hub's log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from deployer_plugin import Component
from deployer_plugin.chart_addresses import IPNetwork
from deployer_plugin.chart_repos import DEFAULT_TIMEOUT_SECONDS, ChartCache, ChartFetcher

from .errors import BadRequest

CACHE_DIRECTORY = "chart-cache"
CACHE_BYTES = 512 * 1024 * 1024
MAX_PARALLEL_FETCHES = 4


class ChartSources:
    """The chart archive of each apply: the one sent, or one fetched (and cached)."""

    def __init__(self, fetcher: ChartFetcher, *, parallel: int = MAX_PARALLEL_FETCHES) -> None:
        self.fetcher = fetcher
        self._slots = asyncio.Semaphore(parallel)

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, allow: Iterable[IPNetwork] = (),
                     timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> ChartSources:
        """Fetching into ``STATE/chart-cache``, from public addresses and the networks in ``allow``."""
        cache = ChartCache(state_dir / CACHE_DIRECTORY, max_bytes=CACHE_BYTES)
        return cls(ChartFetcher(cache=cache, timeout_seconds=timeout_seconds, allow=allow))

    async def archive_for(self, component: Component, archive: bytes | None) -> tuple[bytes, tuple[str, ...]]:
        """The chart archive of ``component`` and warnings about where it came from.

        Raises:
            BadRequest: a local chart without its archive, or a repository chart with one.
            ChartUnavailable: the chart could not be fetched (a SpecError naming spec.chart).
        """
        remote = component.remote_chart
        if remote is None:
            if archive is None:
                raise BadRequest("is required: spec.chart is a local chart, which the request must carry "
                                 "(edgectl apply packages it)", field="chart_archive")
            return archive, ()
        if archive is not None:
            raise BadRequest(f"must be left out: spec.chart names {remote}, which the hub fetches itself",
                             field="chart_archive")
        async with self._slots:
            fetched = await asyncio.to_thread(self.fetcher.fetch, remote)
        return fetched.data, fetched.warnings
