"""spec.chart names a chart repository entry or an OCI reference as well as a local chart, and each form
is refused field by field, as the other fields are."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deployer_plugin import OciChart, RepoChart, SpecError, parse_component
from deployer_plugin.versions import highest_match

BASE: dict[str, Any] = {
    "apiVersion": "edgecollab.io/v1alpha1",
    "kind": "Component",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {"edge": {"nodePools": ["shanghai"]}},
}


def with_chart(chart: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"]["chart"] = chart
    return doc


@pytest.mark.parametrize(
    ("chart", "expected", "written_back"),
    [
        ("./chart", "./chart", "./chart"),
        ({"path": "./chart"}, "./chart", "./chart"),
        (
            {"repo": "https://charts.example.com/stable/", "name": "nginx", "version": "1.2.3"},
            RepoChart(repo="https://charts.example.com/stable", name="nginx", version="1.2.3"),
            {"repo": "https://charts.example.com/stable", "name": "nginx", "version": "1.2.3"},
        ),
        (
            {"repo": "http://127.0.0.1:8080", "name": "web", "version": ">=1.0 <2"},
            RepoChart(repo="http://127.0.0.1:8080", name="web", version=">=1.0 <2"),
            {"repo": "http://127.0.0.1:8080", "name": "web", "version": ">=1.0 <2"},
        ),
        (
            "oci://registry.example.com:5000/charts/web:1.2.3+build.1",
            OciChart(oci="oci://registry.example.com:5000/charts/web", version="1.2.3+build.1"),
            "oci://registry.example.com:5000/charts/web:1.2.3+build.1",
        ),
        (
            {"oci": "oci://ghcr.io/acme/charts/web", "version": "0.4.0"},
            OciChart(oci="oci://ghcr.io/acme/charts/web", version="0.4.0"),
            "oci://ghcr.io/acme/charts/web:0.4.0",
        ),
    ],
)
def test_each_chart_form_parses_and_reads_back_the_same(chart: Any, expected: Any, written_back: Any):
    component = parse_component(with_chart(chart))
    assert component.chart_ref == expected
    assert component.remote_chart == (None if isinstance(expected, str) else expected)
    document = component.to_document()
    assert document["spec"]["chart"] == written_back
    assert parse_component(document) == component


def test_an_oci_reference_knows_its_registry_repository_and_name():
    ref = parse_component(with_chart("oci://registry.example.com:5000/charts/web:1.0.0")).chart_ref
    assert isinstance(ref, OciChart)
    assert (ref.host, ref.repository, ref.name) == ("registry.example.com:5000", "charts/web", "web")


@pytest.mark.parametrize(
    ("chart", "problems"),
    [
        ({"repo": "https://charts.example.com", "name": "nginx"}, ["spec.chart.version: required: the chart version"]),
        ({"repo": "https://charts.example.com", "version": "1.0.0"}, ["spec.chart.name: required"]),
        ({"name": "nginx", "version": "1.0.0"}, ["spec.chart.repo: required"]),
        ({"rpeo": "https://c.example.com", "name": "nginx", "version": "1"},
         ["spec.chart.rpeo: unknown field (did you mean repo?)", "spec.chart.repo: required"]),
        ({"repo": "https://c.example.com", "name": "nginx", "verison": "1"},
         ["spec.chart.verison: unknown field (did you mean version?)", "spec.chart.version: required"]),
        ({"repo": "https://user:secret@c.example.com", "name": "n", "version": "1"},
         ["spec.chart.repo: must not carry credentials"]),
        ({"repo": "ftp://c.example.com", "name": "n", "version": "1"},
         ["spec.chart.repo: 'ftp://c.example.com' must start with https:// or http://"]),
        ({"repo": "https://", "name": "n", "version": "1"}, ["spec.chart.repo: 'https://' names no host"]),
        ({"repo": "https://c.example.com?x=1", "name": "n", "version": "1"}, ["must not have a query or fragment"]),
        ({"repo": "https://c.example.com", "name": "bad name", "version": "1"},
         ["spec.chart.name: 'bad name' is not a chart name"]),
        ({"repo": "https://c.example.com", "name": "n", "version": "one point two"},
         ["spec.chart.version: 'one point two' is not a version (1.2.3) or a version constraint"]),
        ({"repo": "https://c.example.com", "name": "n", "version": 1.2},
         ["spec.chart.version: must be a string, not a number"]),
        ({"repo": "https://c.example.com", "name": "n", "version": "1", "path": "./c"},
         ["spec.chart.path: cannot be given with repo and name"]),
        ({"path": "./chart", "version": "1.0.0"}, ["spec.chart.version: belongs to a chart from a repository"]),
        ({"oic": "oci://r.example.com/web", "version": "1"}, ["spec.chart.oic: unknown field (did you mean oci?)"]),
        ({"oci": "oci://r.example.com/web"}, ["spec.chart.version: required: the chart version, the registry's tag"]),
        ({"oci": "oci://r.example.com/web:1", "version": "1"},
         ["spec.chart.oci: 'oci://r.example.com/web:1' has a tag"]),
        ({"oci": "oci://r.example.com/web", "version": "1", "name": "web"},
         ["spec.chart.name: cannot be given with oci"]),
        ({"oci": "https://r.example.com/web", "version": "1"}, ["must start with oci://"]),
        ("oci://r.example.com/charts/web", ["spec.chart: 'oci://r.example.com/charts/web' names no version"]),
        ("oci://r.example.com/Charts/Web:1", ["is not a registry repository"]),
        ("oci://r.example.com/web@sha256:" + "0" * 64, ["a digest (@sha256:...) is not supported"]),
        ("oci://u:p@r.example.com/web:1", ["spec.chart: must not carry credentials"]),
        ("oci://r.example.com/web:1 2", ["holds spaces or control characters"]),
        ("https://charts.example.com/web-1.0.0.tgz",
         ["spec.chart: 'https://charts.example.com/web-1.0.0.tgz' is a URL"]),
        (5, ["spec.chart: must be a path, an oci:// reference or a mapping, not a number"]),
    ],
)
def test_a_bad_chart_reference_is_refused_naming_the_field(chart: Any, problems: list[str]):
    with pytest.raises(SpecError) as caught:
        parse_component(with_chart(chart))
    assert len(caught.value.problems) == len(problems), caught.value.problems
    for found, expected in zip(caught.value.problems, problems, strict=True):
        assert expected in found, caught.value.problems


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("1.2.3", "1.2.3"),
        ("^1.2", "1.10.0"),
        ("~1.2.0", "1.2.4"),
        (">=1.0 <2", "1.10.0"),
        (">=1.0, <2", "1.10.0"),
        ("1.x", "1.10.0"),
        ("*", "2.0.0"),
        (">= 2.1.0-0", "2.1.0-rc.1"),
        ("^3", None),
        ("v1.2.3", "1.2.3"),
        ("weird-tag", "weird-tag"),
    ],
)
def test_a_version_constraint_resolves_to_the_highest_match_as_helm_does(constraint: str, expected: str | None):
    versions = ["1.2.3", "1.2.4", "1.10.0", "1.9.9", "2.0.0", "2.1.0-rc.1", "weird-tag"]
    assert highest_match(constraint, versions) == expected
