"""The chart fetcher against a chart repository and an OCI registry served on 127.0.0.1 by the test
(tests/chart_server.py): versions and constraints, digests, bounds, the cache, and clear refusals.

Loopback is not a public address, so every fetcher here is given it as a user with a lab repository
gives it to the hub (chart_sources.allow); tests/deployer/test_chart_sources_are_checked.py is about
what happens without it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_server import ChartServer, closed_port, package

from deployer_plugin import ChartArchive, OciChart, RepoChart
from deployer_plugin.chart_repos import ChartCache, ChartFetcher, ChartUnavailable, unreachable_message

CHARTS = Path(__file__).resolve().parent / "charts"
GOOD = CHARTS / "good"


def lab_fetcher(**settings: Any) -> ChartFetcher:
    """A fetcher as a hub with `chart_sources: {allow: [127.0.0.0/8]}` has: loopback allowed."""
    return ChartFetcher(allow=["127.0.0.0/8"], **settings)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChartServer]:
    with ChartServer(tmp_path / "server") as server:
        for version in ("0.1.0", "0.2.0", "0.10.0", "1.0.0-rc.1"):
            server.add_chart(GOOD, version)
        server.push_oci("charts/good", GOOD, "0.3.0")
        server.push_oci("charts/good", GOOD, "0.4.0+build.7")
        yield server


def test_a_repository_chart_is_the_version_asked_for_checked_against_the_index(server: ChartServer, tmp_path: Path):
    fetched = lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))
    chart = ChartArchive.from_bytes(fetched.data)
    assert (chart.name, chart.version) == ("good", "0.2.0")
    assert fetched.url == f"{server.repo_url}/good-0.2.0.tgz" and fetched.warnings == ()
    index = yaml.safe_load((server.directory / "index.yaml").read_text())
    (entry,) = [e for e in index["entries"]["good"] if e["version"] == "0.2.0"]
    assert fetched.sha256 == entry["digest"] == hashlib.sha256(fetched.data).hexdigest()


@pytest.mark.parametrize(("constraint", "resolved"), [("^0.1", "0.1.0"), (">=0.1 <1", "0.10.0"), ("*", "0.10.0"),
                                                      (">=1.0.0-0", "1.0.0-rc.1")])
def test_a_version_constraint_takes_the_highest_match(server: ChartServer, constraint: str, resolved: str):
    fetched = lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version=constraint))
    assert fetched.version == resolved and ChartArchive.from_bytes(fetched.data).version == resolved


def test_absolute_urls_in_the_index_are_followed(server: ChartServer, tmp_path: Path):
    elsewhere = package(GOOD, tmp_path / "elsewhere", "0.5.0")
    (server.directory / "other").mkdir()
    index = server.reindex()
    index["entries"]["good"].append({"name": "good", "version": "0.5.0", "urls": [f"{server.url}/charts/moved.tgz"],
                                     "digest": hashlib.sha256(elsewhere.read_bytes()).hexdigest()})
    (server.directory / "index.yaml").write_text(yaml.safe_dump(index))
    (server.directory / "moved.tgz").write_bytes(elsewhere.read_bytes())
    fetched = lab_fetcher().fetch(RepoChart(repo=server.repo_url + "/", name="good", version="0.5.0"))
    assert fetched.url.endswith("/charts/moved.tgz") and fetched.version == "0.5.0"


def test_a_missing_version_is_refused_listing_the_versions_there_are(server: ChartServer):
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="0.9.0"))
    assert str(caught.value) == (f"spec.chart.version: chart good has no version 0.9.0 in the repository "
                                 f"{server.repo_url}; it has 1.0.0-rc.1, 0.10.0, 0.2.0, 0.1.0")
    with pytest.raises(ChartUnavailable, match=r"^spec.chart.version: chart good has no version matching '\^2' in"):
        lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="^2"))


def test_a_missing_chart_is_refused_with_a_suggestion(server: ChartServer):
    with pytest.raises(ChartUnavailable, match=r"^spec.chart.name: chart 'goood' is not in the repository .* "
                       r"\(did you mean good\?\); it holds 1 chart\(s\): good$"):
        lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="goood", version="0.1.0"))


def test_an_archive_that_does_not_match_the_index_digest_is_refused(server: ChartServer, tmp_path: Path):
    # The archive is replaced after indexing: another build of the same version (a changed chart).
    other = package(CHARTS / "generated", tmp_path / "other", "0.2.0")
    (server.directory / "good-0.2.0.tgz").write_bytes(other.read_bytes())
    with pytest.raises(ChartUnavailable, match=r"^spec.chart: the archive downloaded from .*/good-0.2.0.tgz has "
                       r"SHA-256 [0-9a-f]{64}, but the repository's index says [0-9a-f]{64}: refused"):
        lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))


def test_an_archive_of_another_chart_is_refused_even_without_a_digest(server: ChartServer, tmp_path: Path):
    other = package(CHARTS / "generated", tmp_path / "other", "0.2.0")
    (server.directory / "good-0.2.0.tgz").write_bytes(other.read_bytes())
    index = yaml.safe_load((server.directory / "index.yaml").read_text())
    for entry in index["entries"]["good"]:
        entry.pop("digest")
    (server.directory / "index.yaml").write_text(yaml.safe_dump(index))
    with pytest.raises(ChartUnavailable, match=r"good-0.2.0.tgz holds chart \w+ 0.2.0, not good 0.2.0"):
        lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))
    fetched = lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="0.1.0"))
    assert fetched.warnings == (f"the index of {server.repo_url} gives no digest for good 0.1.0: the archive "
                                "downloaded is not checked",)


def test_what_is_not_a_chart_is_refused(server: ChartServer):
    (server.directory / "good-0.2.0.tgz").write_bytes(b"<html>not found</html>")
    index = yaml.safe_load((server.directory / "index.yaml").read_text())
    for entry in index["entries"]["good"]:
        entry["digest"] = hashlib.sha256(b"<html>not found</html>").hexdigest()
    (server.directory / "index.yaml").write_text(yaml.safe_dump(index))
    with pytest.raises(ChartUnavailable, match=r"good-0.2.0.tgz is not a chart archive \(not gzip data\)"):
        lab_fetcher().fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))
    # What is not an index is no chart repository answering: the one message of a failed fetch,
    # the reason in the hub's log.
    ref = RepoChart(repo=server.repo_url, name="good", version="0.2.0")
    (server.directory / "index.yaml").write_text("just: [a, document")
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(ref)
    assert str(caught.value) == unreachable_message(ref)
    (server.directory / "index.yaml").write_text("apiVersion: v1\n")
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(ref)
    assert str(caught.value) == unreachable_message(ref)


def test_sizes_are_bounded(server: ChartServer):
    with pytest.raises(ChartUnavailable, match=r"^spec.chart.repo: the index of .* is \d+ bytes; the limit is 100$"):
        lab_fetcher(max_index_bytes=100).fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))
    with pytest.raises(ChartUnavailable,
                       match=r"^spec.chart: the archive of good 0.2.0 is \d+ bytes; the limit is 200$"):
        lab_fetcher(max_archive_bytes=200).fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))


def test_an_unreachable_repository_is_refused_at_once_and_the_cause_logged(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    started = time.monotonic()
    repo = f"http://127.0.0.1:{closed_port()}/charts"
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(RepoChart(repo=repo, name="good", version="0.2.0"))
    assert str(caught.value) == (f"spec.chart: {repo} could not be fetched (no chart repository answered there, "
                                 "or the address is not allowed: see chart_sources.allow)")
    assert time.monotonic() - started < 5
    assert f"cannot reach {repo}/index.yaml: connection refused" in caplog.text
    with ChartServer(tmp_path / "empty") as server:
        ref = RepoChart(repo=f"{server.url}/nowhere", name="good", version="0.2.0")
        with pytest.raises(ChartUnavailable) as caught:
            lab_fetcher().fetch(ref)
    assert str(caught.value) == unreachable_message(ref)
    assert f"{server.url}/nowhere/index.yaml answered 404 Not Found" in caplog.text


def test_a_repository_that_does_not_answer_in_time_is_refused(tmp_path: Path):
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        ref = RepoChart(repo=f"http://127.0.0.1:{silent.getsockname()[1]}", name="good", version="0.2.0")
        with pytest.raises(ChartUnavailable) as caught:
            lab_fetcher(timeout_seconds=0.5).fetch(ref)
        assert time.monotonic() - started < 3
        assert str(caught.value) == unreachable_message(ref)


def test_plain_http_is_for_loopback_hosts_without_a_warning():
    # A plain http:// repository elsewhere is fetched with a warning, and an OCI registry is spoken to over
    # plain HTTP only on a loopback host; no other host is reachable here, so the decision is checked alone.
    from deployer_plugin.chart_repos import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("[::1]")
    assert not _is_loopback("charts.example.com") and not _is_loopback("10.0.0.1")


def test_the_cache_keeps_archives_by_digest_and_is_bounded(server: ChartServer, tmp_path: Path):
    cache = ChartCache(tmp_path / "cache", max_bytes=10 * 1024 * 1024)
    fetcher = lab_fetcher(cache=cache)
    first = fetcher.fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))
    server.requests.clear()
    again = fetcher.fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0"))
    assert again.cached and again.data == first.data
    assert server.requests == ["/charts/index.yaml"]  # the archive came from the cache

    # A cache file that no longer matches its digest is dropped and fetched anew.
    (tmp_path / "cache" / f"sha256-{first.sha256}.tgz").write_bytes(b"rotten")
    assert not fetcher.fetch(RepoChart(repo=server.repo_url, name="good", version="0.2.0")).cached

    small = ChartCache(tmp_path / "small", max_bytes=len(first.data) + 10)
    small_fetcher = lab_fetcher(cache=small)
    for version in ("0.1.0", "0.2.0", "0.10.0"):
        small_fetcher.fetch(RepoChart(repo=server.repo_url, name="good", version=version))
        time.sleep(0.01)
    assert small.size() <= small.max_bytes and len(list((tmp_path / "small").glob("sha256-*.tgz"))) == 1


def test_an_oci_chart_is_fetched_through_the_distribution_api(server: ChartServer):
    fetched = lab_fetcher().fetch(OciChart(oci=f"oci://{server.oci_host}/charts/good", version="0.3.0"))
    assert (fetched.name, fetched.version) == ("good", "0.3.0")
    assert ChartArchive.from_bytes(fetched.data).version == "0.3.0"
    assert server.requests[0] == "/v2/charts/good/manifests/0.3.0"
    assert server.requests[1].startswith("/v2/charts/good/blobs/sha256:")
    # A version with build metadata is the tag with "_" for "+", as helm push writes it.
    assert lab_fetcher().fetch(OciChart(oci=f"oci://{server.oci_host}/charts/good", version="0.4.0+build.7")).version \
        == "0.4.0+build.7"


def test_an_oci_registry_asking_for_a_token_gets_the_anonymous_token_flow(server: ChartServer, tmp_path: Path):
    server.require_token = True
    cache = ChartCache(tmp_path / "cache")
    fetched = lab_fetcher(cache=cache).fetch(OciChart(oci=f"oci://{server.oci_host}/charts/good", version="0.3.0"))
    assert fetched.version == "0.3.0"
    assert server.requests[:4] == ["/v2/charts/good/manifests/0.3.0", "/token", "/v2/charts/good/manifests/0.3.0",
                                   server.requests[3]] and server.requests[3].startswith("/v2/charts/good/blobs/")
    server.requests.clear()
    assert lab_fetcher(cache=cache).fetch(OciChart(oci=f"oci://{server.oci_host}/charts/good", version="0.3.0")).cached
    assert not any(r.startswith("/v2/charts/good/blobs/") for r in server.requests)


def test_oci_refusals_name_the_reference(server: ChartServer):
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(OciChart(oci=f"oci://{server.oci_host}/charts/good", version="9.9.9"))
    assert str(caught.value) == (f"spec.chart: version 9.9.9 of oci://{server.oci_host}/charts/good is not in the "
                                 "registry; it has 0.4.0+build.7, 0.3.0")
    layer = next(d for d, b in server.blobs.items() if b.startswith(b"\x1f\x8b"))
    server.blobs[layer] = server.blobs[layer][:-1] + bytes([server.blobs[layer][-1] ^ 1])
    with pytest.raises(ChartUnavailable,
                       match=r"has SHA-256 [0-9a-f]{64}, but its manifest says [0-9a-f]{64}: refused"):
        lab_fetcher().fetch(OciChart(oci=f"oci://{server.oci_host}/charts/good", version="0.3.0"))
    closed = OciChart(oci=f"oci://127.0.0.1:{closed_port()}/charts/good", version="1.0.0")
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(closed)
    assert str(caught.value) == (f"spec.chart: {closed.oci} could not be fetched (no chart repository answered "
                                 "there, or the address is not allowed: see chart_sources.allow)")


# Nine levels of ten aliases: a few hundred bytes that stand for 10**9 strings.
BOMB = "".join(f"{b}: &{b} [" + ",".join([f"*{a}"] * 10) + "]\n"
               for a, b in zip("abcdefgh", "bcdefghi", strict=True))


def test_an_index_or_a_chart_yaml_with_a_yaml_alias_is_refused_before_it_is_read(
    server: ChartServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    index_text = (server.directory / "index.yaml").read_text()
    (server.directory / "index.yaml").write_text("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB
                                                 + index_text)
    ref = RepoChart(repo=server.repo_url, name="good", version="0.2.0")
    started = time.monotonic()
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(ref)
    # An index with an alias is no chart repository answering: the apply is told only that, the line is logged.
    assert str(caught.value) == unreachable_message(ref)
    assert (f"{server.repo_url}/index.yaml line 2: YAML aliases are not accepted (an alias bomb can expand a small "
            "file to gigabytes)") in caplog.text
    assert time.monotonic() - started < 5
    (server.directory / "index.yaml").write_text(index_text)

    # Helm never writes an alias in a Chart.yaml: a packaged chart with one is refused too.
    chart = tmp_path / "aliased"
    shutil.copytree(GOOD, chart)
    chart_yaml = (chart / "Chart.yaml").read_text()
    (chart / "Chart.yaml").write_text(chart_yaml + "keywords: &k [edge]\nannotations: {again: *k}\n")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        tar.add(chart, arcname="good")
    (server.directory / "good-0.2.0.tgz").write_bytes(data.getvalue())
    index = yaml.safe_load(index_text)
    for entry in index["entries"]["good"]:
        entry["digest"] = hashlib.sha256(data.getvalue()).hexdigest()
    (server.directory / "index.yaml").write_text(yaml.safe_dump(index))
    line = len(chart_yaml.splitlines()) + 2
    with pytest.raises(ChartUnavailable) as caught:
        lab_fetcher().fetch(ref)
    assert str(caught.value) == (f"spec.chart: the archive at {server.repo_url}/good-0.2.0.tgz: good/Chart.yaml "
                                 f"line {line}: YAML aliases are not accepted (an alias bomb can expand a small "
                                 "file to gigabytes)")
