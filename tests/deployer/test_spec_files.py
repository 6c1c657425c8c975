"""Reading spec files for edgectl: one YAML document, chart resolved next to the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from deployer_plugin import ChartError, SpecError, chart_fingerprint, load_component_file, package_chart

SPEC = """\
apiVersion: edgecollab.io/v1alpha1
kind: Component
metadata: {{name: web, namespace: demo}}
spec:
  chart: {chart}
  values: {{message: hi, released: 2024-01-01}}
  edge:
    nodePools: [shanghai]
"""


def write_spec(path: Path, chart: str, text: str = SPEC) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.format(chart=chart))
    return path


def test_chart_path_is_resolved_relative_to_the_spec_file_not_the_cwd(
    tmp_path: Path, copy_chart: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_chart("good", tmp_path / "app" / "chart")
    spec = write_spec(tmp_path / "app" / "web.yaml", "./chart")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    component, archive = load_component_file(os.path.relpath(spec))

    assert component.chart_ref == "./chart"
    assert chart_fingerprint(archive) == chart_fingerprint(package_chart(tmp_path / "app" / "chart"))


def test_a_packaged_tgz_chart_works_and_matches_its_directory(tmp_path: Path) -> None:
    archive = package_chart(Path(__file__).parent / "charts" / "good")
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "good-0.1.0.tgz").write_bytes(archive)
    spec = write_spec(tmp_path / "web.yaml", "{path: charts/good-0.1.0.tgz}")

    component, packaged = load_component_file(spec)

    assert component.chart_ref == "charts/good-0.1.0.tgz"
    assert chart_fingerprint(packaged) == chart_fingerprint(archive)


def test_a_missing_chart_directory_names_the_field_and_the_resolved_path(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "web.yaml", "./nope")

    with pytest.raises(ChartError) as caught:
        load_component_file(spec)

    assert caught.value.problems == (f"spec.chart: chart directory ./nope not found (resolved to {tmp_path / 'nope'})",)
    assert str(caught.value).startswith(f"{spec}: spec.chart:")


def test_a_directory_that_is_not_a_chart_says_so_with_helms_reason(tmp_path: Path) -> None:
    (tmp_path / "notachart").mkdir()
    spec = write_spec(tmp_path / "web.yaml", "./notachart")

    with pytest.raises(ChartError, match=r"spec\.chart: \./notachart is not a Helm chart: Chart\.yaml file is missing"):
        load_component_file(spec)


def test_a_file_that_is_not_a_chart_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "web.tgz").write_bytes(b"definitely not gzip")
    spec = write_spec(tmp_path / "web.yaml", "./web.tgz")

    with pytest.raises(ChartError, match=r"spec\.chart: \./web\.tgz is not a Helm chart"):
        load_component_file(spec)


def test_a_file_with_several_documents_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "web.yaml", "./chart", SPEC + "---\n" + SPEC)

    with pytest.raises(SpecError, match="holds 2 documents; put one Component per file"):
        load_component_file(spec)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text("# nothing here\n---\n")

    with pytest.raises(SpecError, match="holds no document; expected one Component"):
        load_component_file(spec)


def test_invalid_yaml_reports_where(tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text("apiVersion: [unclosed\n")

    with pytest.raises(SpecError) as caught:
        load_component_file(spec)

    assert str(caught.value).startswith(f"{spec}: not valid YAML: while parsing a flow sequence")
    assert f'in "{spec}", line 1, column 13' in str(caught.value)


def test_a_duplicate_key_is_refused_instead_of_silently_keeping_the_last(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "web.yaml", "./chart", SPEC + "  values: {{message: again}}\n")

    with pytest.raises(SpecError, match="found duplicate key 'values'"):
        load_component_file(spec)


def test_a_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec file: No such file or directory"):
        load_component_file(tmp_path / "absent.yaml")


def test_field_errors_in_a_file_are_prefixed_with_the_file_name(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "web.yaml", "./chart", SPEC.replace("nodePools", "nodePool"))

    with pytest.raises(SpecError) as caught:
        load_component_file(spec)

    assert str(caught.value) == f"{spec}: spec.edge.nodePool: unknown field (did you mean nodePools?)"


def test_a_date_in_values_stays_text_as_helm_would_read_it(tmp_path: Path, copy_chart: Callable[..., Path]) -> None:
    copy_chart("good", tmp_path / "chart")
    spec = write_spec(tmp_path / "web.yaml", "./chart")

    component, _ = load_component_file(spec)

    assert component.values["released"] == "2024-01-01"
    assert yaml.safe_load(spec.read_text())["spec"]["values"]["released"] != "2024-01-01"  # PyYAML's default would not


ALIASES_REFUSED = "YAML aliases are not accepted (an alias bomb can expand a small file to gigabytes)"


# Nine levels of ten aliases under spec.values: 10**9 strings in about 500 bytes.
BOMB = "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"    {b}: &{b} [" + ",".join([f"*{a}"] * 10) + "]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize("values", [
    BOMB,
    "    base: &base {message: hi}\n    copy: *base\n",
    "    base: &base {message: hi}\n    copy: {<<: *base, extra: 1}\n",  # a merge key is an alias too
])
def test_a_yaml_alias_is_refused_naming_its_line_before_anything_is_built(
    tmp_path: Path, copy_chart: Callable[..., Path], values: str
) -> None:
    copy_chart("good", tmp_path / "chart")
    spec = tmp_path / "web.yaml"
    spec.write_text("apiVersion: edgecollab.io/v1alpha1\nkind: Component\nmetadata: {name: web, namespace: demo}\n"
                    "spec:\n  chart: ./chart\n  values:\n" + values)

    with pytest.raises(SpecError) as caught:
        load_component_file(spec)

    assert str(caught.value) == f"{spec} line 8: {ALIASES_REFUSED}"  # the first alias, on values' second line


def test_stars_and_ampersands_in_text_are_not_aliases(tmp_path: Path, copy_chart: Callable[..., Path]) -> None:
    copy_chart("good", tmp_path / "chart")
    spec = write_spec(tmp_path / "web.yaml", "./chart", SPEC.replace(
        "values: {{message: hi, released: 2024-01-01}}",
        "values: {{message: '**bold** & *x', glob: \"*.log\", anchored: &kept {{a: 1}}}}"))

    component, _ = load_component_file(spec)

    assert component.values == {"message": "**bold** & *x", "glob": "*.log", "anchored": {"a": 1}}
