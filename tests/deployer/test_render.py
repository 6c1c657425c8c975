"""Rendering with the real Helm engine: one bundle per render key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from deployer_plugin import (
    ChartError,
    RenderError,
    SpecError,
    join_manifests,
    parse_component,
    render_component,
    render_keys,
)
from edgeprotocol.messages import Bundle


def objects(bundle: Bundle) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(bundle.manifests) if d is not None]


def configmap(bundle: Bundle) -> dict[str, Any]:
    (found,) = [o for o in objects(bundle) if o["kind"] == "ConfigMap"]
    return found


def test_render_produces_one_bundle_per_render_key_with_pool_values_visible(doc: dict[str, Any], good_archive: bytes) -> None:
    component = parse_component(doc)

    bundles = render_component(component, good_archive, revision=3)

    assert list(bundles) == ["", "shanghai"] == list(render_keys(component))
    assert configmap(bundles[""])["data"] == {"message": "hi", "greeting": "hi", "revision": "3", "isInstall": "true"}
    assert configmap(bundles["shanghai"])["data"] == {
        "message": "hi",
        "greeting": "ni hao",
        "revision": "3",
        "isInstall": "true",
    }
    assert bundles[""].digest != bundles["shanghai"].digest


def test_release_name_and_namespace_come_from_the_component(doc: dict[str, Any], good_archive: bytes) -> None:
    bundle = render_component(parse_component(doc), good_archive, revision=1)[""]

    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects(bundle)] == [
        ("ConfigMap", "web-config", "demo"),
        ("Pod", "web", "demo"),
    ]
    assert configmap(bundle)["metadata"]["labels"]["app.kubernetes.io/instance"] == "web"


def test_notes_hooks_tests_and_empty_output_are_left_out_in_template_path_order(
    doc: dict[str, Any], good_archive: bytes
) -> None:
    bundle = render_component(parse_component(doc), good_archive, revision=1)[""]

    assert bundle.manifests.startswith("---\n# Source: good/templates/configmap.yaml\napiVersion: v1\n")
    sources = [line for line in bundle.manifests.splitlines() if line.startswith("# Source:")]
    assert sources == ["# Source: good/templates/configmap.yaml", "# Source: good/templates/pod.yaml"]
    for left_out in ("is installed", "helm.sh/hook", "-migrate", "-test", "Secret"):
        assert left_out not in bundle.manifests


def test_a_template_with_several_documents_keeps_them_in_order(doc: dict[str, Any], good_archive: bytes) -> None:
    doc["spec"]["values"]["extra"] = {"enabled": True}

    bundle = render_component(parse_component(doc), good_archive, revision=1)[""]

    # configmap.yaml, disabled.yaml, then pod.yaml's two documents in their order
    assert [(o["kind"], o["metadata"]["name"]) for o in objects(bundle)] == [
        ("ConfigMap", "web-config"),
        ("Secret", "web-secret"),
        ("Pod", "web"),
        ("ConfigMap", "web-extra"),
    ]


def test_rendering_is_deterministic(doc: dict[str, Any], good_archive: bytes) -> None:
    component = parse_component(doc)

    assert render_component(component, good_archive, revision=5) == render_component(component, good_archive, revision=5)


def test_a_null_pool_value_deletes_the_key_even_when_the_chart_has_a_default(
    doc: dict[str, Any], good_archive: bytes
) -> None:
    doc["spec"]["edge"]["poolValues"] = {"beijing": {"greeting": None}}

    bundles = render_component(parse_component(doc), good_archive, revision=1)

    assert configmap(bundles[""])["data"]["greeting"] == "hi"
    assert "greeting" not in configmap(bundles["beijing"])["data"]


def test_bundles_survive_the_wire(doc: dict[str, Any], good_archive: bytes) -> None:
    bundle = render_component(parse_component(doc), good_archive, revision=1)["shanghai"]

    assert Bundle.from_wire(bundle.to_wire(), "test") == bundle


def test_a_template_error_raises_render_error_naming_the_component_and_helms_message(
    doc: dict[str, Any], broken_archive: bytes
) -> None:
    with pytest.raises(RenderError) as caught:
        render_component(parse_component(doc), broken_archive, revision=1)

    error = caught.value
    assert isinstance(error, SpecError)
    assert (error.component, error.pool) == ("demo/web", "")
    assert str(error).startswith("component demo/web: template error: ")
    assert "database.host is required" in str(error)
    assert "broken/templates/configmap.yaml" in str(error)


def test_a_template_error_in_one_pool_names_that_pool(doc: dict[str, Any], broken_archive: bytes) -> None:
    doc["spec"]["values"] = {"database": {"host": "db.local"}}
    doc["spec"]["edge"]["poolValues"] = {"shanghai": {"database": {"host": None}}}

    with pytest.raises(RenderError) as caught:
        render_component(parse_component(doc), broken_archive, revision=1)

    assert caught.value.pool == "shanghai"
    assert str(caught.value).startswith("component demo/web (poolValues of pool shanghai): template error:")


def test_values_that_break_the_schema_raise_render_error_naming_the_key(doc: dict[str, Any], schema_archive: bytes) -> None:
    doc["spec"]["values"] = {"replicas": "three"}

    with pytest.raises(RenderError) as caught:
        render_component(parse_component(doc), schema_archive, revision=1)

    message = str(caught.value)
    assert message.startswith("component demo/web: values do not match the chart's values.schema.json:")
    assert "/replicas" in message and "want integer" in message


def test_a_schema_violation_only_in_pool_values_names_the_pool(doc: dict[str, Any], schema_archive: bytes) -> None:
    doc["spec"]["values"] = {"replicas": 2}
    doc["spec"]["edge"]["poolValues"] = {"shanghai": {"replicas": 0}}

    with pytest.raises(RenderError, match=r"(?s)\(poolValues of pool shanghai\): values do not match .*minimum: got 0, want 1"):
        render_component(parse_component(doc), schema_archive, revision=1)


def test_values_within_the_schema_render(doc: dict[str, Any], schema_archive: bytes) -> None:
    doc["spec"]["values"] = {"replicas": 2}

    bundles = render_component(parse_component(doc), schema_archive, revision=1)

    assert configmap(bundles[""])["data"] == {"replicas": "2"}


def test_an_archive_that_is_not_a_chart_raises_chart_error(doc: dict[str, Any]) -> None:
    with pytest.raises(ChartError, match="the chart archive is not a Helm chart"):
        render_component(parse_component(doc), b"garbage", revision=1)


@pytest.mark.parametrize("revision", [0, -1, True, "1"])
def test_a_revision_below_one_is_a_programming_error(doc: dict[str, Any], good_archive: bytes, revision: Any) -> None:
    with pytest.raises(ValueError, match="revision must be an integer of at least 1"):
        render_component(parse_component(doc), good_archive, revision=revision)


def test_a_template_that_renders_invalid_yaml_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="component demo/web: c/templates/bad.yaml rendered invalid YAML"):
        join_manifests({"c/templates/bad.yaml": "a: [\n"}, component="demo/web")


def test_a_template_that_renders_a_bare_string_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="rendered a document that is not a Kubernetes object"):
        join_manifests({"c/templates/bad.yaml": "just text\n"}, component="demo/web")
