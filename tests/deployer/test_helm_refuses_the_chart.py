"""What ``helm install`` refuses about a chart itself is refused before rendering, in Helm's words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer_plugin import (
    ChartError,
    ChartRefused,
    SpecError,
    engine_kube_version,
    kube_version_satisfies,
    package_chart,
    parse_component,
    render_component,
)

CHARTS = Path(__file__).parent / "charts"


def with_kube_version(copy_chart: Callable[[str], Path], constraint: str) -> bytes:
    chart = copy_chart("good")
    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    (chart / "Chart.yaml").write_text(yaml.safe_dump({**metadata, "kubeVersion": constraint}))
    return package_chart(chart)


def test_the_engine_renders_for_a_fixed_kubernetes_version() -> None:
    version = engine_kube_version()

    assert version.startswith("v1.") and version.count(".") == 2
    assert kube_version_satisfies(f">= {version}", version) and not kube_version_satisfies(f"> {version}", version)


def test_a_chart_missing_a_declared_dependency_is_refused_naming_it_whatever_its_condition(
    doc: dict[str, Any],
) -> None:
    archive = package_chart(CHARTS / "needs-dependency")

    with pytest.raises(ChartRefused) as caught:
        render_component(parse_component(doc), archive, revision=1)

    assert isinstance(caught.value, ChartError) and isinstance(caught.value, SpecError)
    # Helm's message; "present" is in charts/, "cache" is not (its condition is false: Helm checks it anyway).
    assert caught.value.detail == "found in Chart.yaml, but missing in charts/ directory: cache"
    assert "needs-dependency" in str(caught.value) and "helm dependency build" in str(caught.value)


def test_a_chart_with_its_declared_dependencies_in_charts_renders_them(doc: dict[str, Any], copy_chart) -> None:
    chart = copy_chart("needs-dependency")
    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    metadata["dependencies"] = [d for d in metadata["dependencies"] if d["name"] == "present"]
    (chart / "Chart.yaml").write_text(yaml.safe_dump(metadata))

    bundle = render_component(parse_component(doc), package_chart(chart), revision=1)[""]

    assert "name: web-present" in bundle.manifests and "name: web-config" in bundle.manifests


@pytest.mark.parametrize("constraint",
                         [">=1.40.0-0", "< 1.20", ">= 1.20, < 1.30", "~1.2", "<1.20 || >=2.0", "not-a-range"])
def test_a_kube_version_the_engine_does_not_meet_is_refused_with_helms_message(
    doc: dict[str, Any], copy_chart, constraint: str
) -> None:
    archive = with_kube_version(copy_chart, constraint)

    with pytest.raises(ChartRefused) as caught:
        render_component(parse_component(doc), archive, revision=1)

    kube = engine_kube_version()
    assert caught.value.detail == (f"chart requires kubeVersion: {constraint} "
                                   f"which is incompatible with Kubernetes {kube}")


@pytest.mark.parametrize(
    "constraint",
    [">=1.19.0-0", ">= 1.20, < 2.0", ">=1.20 <2.0", "^1.2", "~>1.36 || ~1.37", ">=v1.20", "1.x", "1.20 - 1.99",
     "!=1.19"],
)
def test_a_kube_version_the_engine_meets_renders(doc: dict[str, Any], copy_chart, constraint: str) -> None:
    archive = with_kube_version(copy_chart, constraint)

    assert "web-config" in render_component(parse_component(doc), archive, revision=1)[""].manifests


@pytest.mark.parametrize(
    ("constraint", "version", "met"),
    [
        (">=1.19.0-0", "v1.19.0", True),
        (">= 1.20, < 1.32", "v1.31.9", True),
        (">= 1.20, < 1.32", "v1.32.0", False),
        ("^1.2", "v1.99.0", True),
        ("^1.2", "v2.0.0", False),
        ("~1.2", "v1.2.9", True),
        ("~1.2", "v1.3.0", False),
        ("<1.20 || >=1.30", "v1.25.0", False),
        ("<1.20 || >=1.30", "v1.30.1", True),
        (">1.30", "v1.30.5", False),  # Masterminds: above every 1.30.x
        ("!=1.30.1", "v1.30.1", False),
        ("1.30.x", "v1.30.7", True),
    ],
)
def test_kube_version_constraints_read_as_helm_reads_them(constraint: str, version: str, met: bool) -> None:
    assert kube_version_satisfies(constraint, version) is met
