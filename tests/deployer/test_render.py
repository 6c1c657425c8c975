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
    package_chart,
    parse_component,
    render_component,
    render_keys,
    render_release,
)
from edgeprotocol.messages import Bundle


def objects(bundle: Bundle) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(bundle.manifests) if d is not None]


def configmap(bundle: Bundle) -> dict[str, Any]:
    (found,) = [o for o in objects(bundle) if o["kind"] == "ConfigMap"]
    return found


def test_render_produces_one_bundle_per_render_key_with_pool_values_visible(doc: dict[str, Any],
                                                                            good_archive: bytes) -> None:
    component = parse_component(doc)

    bundles = render_component(component, good_archive, revision=3)

    assert list(bundles) == ["", "shanghai"] == list(render_keys(component))
    release = {"revision": "3", "isInstall": "false", "isUpgrade": "true"}
    assert configmap(bundles[""])["data"] == {"message": "hi", "greeting": "hi", **release}
    assert configmap(bundles["shanghai"])["data"] == {"message": "hi", "greeting": "ni hao", **release}
    assert bundles[""].digest != bundles["shanghai"].digest


def test_release_name_and_namespace_come_from_the_component(doc: dict[str, Any], good_archive: bytes) -> None:
    bundle = render_component(parse_component(doc), good_archive, revision=1)[""]

    assert [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects(bundle)] == [
        ("ConfigMap", "web-config", "demo"),
        ("Pod", "web", "demo"),
        ("Job", "web-migrate", None),  # the hook, as the chart writes it
    ]
    assert configmap(bundle)["metadata"]["labels"]["app.kubernetes.io/instance"] == "web"


def test_notes_test_hooks_and_empty_output_are_left_out_and_hooks_follow_the_manifests(
    doc: dict[str, Any], good_archive: bytes
) -> None:
    bundle = render_component(parse_component(doc), good_archive, revision=1)[""]

    assert bundle.manifests.startswith("---\n# Source: good/templates/configmap.yaml\napiVersion: v1\n")
    sources = [line for line in bundle.manifests.splitlines() if line.startswith("# Source:")]
    assert sources == [
        "# Source: good/templates/configmap.yaml",
        "# Source: good/templates/pod.yaml",
        "# Source: good/templates/hook-job.yaml",
    ]
    assert '"helm.sh/hook": pre-install' in bundle.manifests
    for left_out in ("is installed", "-test", "Secret"):
        assert left_out not in bundle.manifests


def test_documents_come_in_helms_install_order_by_kind_keeping_template_order_within_a_kind(
    doc: dict[str, Any], good_archive: bytes
) -> None:
    doc["spec"]["values"]["extra"] = {"enabled": True}

    bundle = render_component(parse_component(doc), good_archive, revision=1)[""]

    # Secret before ConfigMap before Pod; the two ConfigMaps as configmap.yaml
    # then pod.yaml's second document render them; the hook last.
    assert [(o["kind"], o["metadata"]["name"]) for o in objects(bundle)] == [
        ("Secret", "web-secret"),
        ("ConfigMap", "web-config"),
        ("ConfigMap", "web-extra"),
        ("Pod", "web"),
        ("Job", "web-migrate"),
    ]
    sources = [line[len("# Source: "):] for line in bundle.manifests.splitlines() if line.startswith("# Source:")]
    assert sources == ["good/templates/disabled.yaml", "good/templates/configmap.yaml", "good/templates/pod.yaml",
                       "good/templates/pod.yaml", "good/templates/hook-job.yaml"]


def test_rendering_is_deterministic(doc: dict[str, Any], good_archive: bytes) -> None:
    component = parse_component(doc)

    first = render_component(component, good_archive, revision=5)
    assert first == render_component(component, good_archive, revision=5)


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


def test_values_that_break_the_schema_raise_render_error_naming_the_key(doc: dict[str, Any],
                                                                        schema_archive: bytes) -> None:
    doc["spec"]["values"] = {"replicas": "three"}

    with pytest.raises(RenderError) as caught:
        render_component(parse_component(doc), schema_archive, revision=1)

    message = str(caught.value)
    assert message.startswith("component demo/web: values do not match the chart's values.schema.json:")
    assert "/replicas" in message and "want integer" in message


def test_a_schema_violation_only_in_pool_values_names_the_pool(doc: dict[str, Any], schema_archive: bytes) -> None:
    doc["spec"]["values"] = {"replicas": 2}
    doc["spec"]["edge"]["poolValues"] = {"shanghai": {"replicas": 0}}

    with pytest.raises(RenderError,
                       match=r"(?s)\(poolValues of pool shanghai\): values do not match .*minimum: got 0, want 1"):
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


@pytest.mark.parametrize(("document", "missing"), [
    ("kind: ConfigMap\nmetadata: {name: x}\n", "apiVersion"),
    ("apiVersion: v1\nmetadata: {name: x}\n", "kind"),
    ("metadata: {name: x}\n", "apiVersion or kind"),
])
def test_a_document_without_api_version_or_kind_is_a_render_error(document: str, missing: str) -> None:
    with pytest.raises(RenderError,
                       match=f"c/templates/cm.yaml rendered a document without {missing}, which Kubernetes"):
        join_manifests({"c/templates/cm.yaml": document}, component="demo/web")


def test_a_chart_rendering_a_document_without_kind_is_refused_naming_the_template(
    doc: dict[str, Any], copy_chart
) -> None:
    chart = copy_chart("good")
    (chart / "templates" / "kindless.yaml").write_text("apiVersion: v1\nmetadata:\n  name: {{ .Release.Name }}-x\n")

    with pytest.raises(RenderError,
                       match="component demo/web: good/templates/kindless.yaml rendered a document without kind"):
        render_component(parse_component(doc), package_chart(chart), revision=1)


def test_revision_1_renders_as_an_install_and_later_revisions_as_upgrades(doc: dict[str, Any],
                                                                          good_archive: bytes) -> None:
    component = parse_component(doc)

    first = configmap(render_release(component, good_archive, revision=1).bundles[""])["data"]
    second = configmap(render_release(component, good_archive, revision=2).bundles[""])["data"]
    reinstalled = configmap(render_release(component, good_archive, revision=4, upgrade=False).bundles[""])["data"]

    assert (first["isInstall"], first["isUpgrade"], first["revision"]) == ("true", "false", "1")
    assert (second["isInstall"], second["isUpgrade"], second["revision"]) == ("false", "true", "2")
    assert (reinstalled["isInstall"], reinstalled["isUpgrade"], reinstalled["revision"]) == ("true", "false", "4")
    with pytest.raises(ValueError, match="revision 1 is always an install"):
        render_release(component, good_archive, revision=1, upgrade=True)


def test_hooks_go_to_the_node_with_their_annotations_in_the_order_helm_runs_them(
    doc: dict[str, Any], generated_archive: bytes
) -> None:
    release = render_release(parse_component(doc), generated_archive, revision=2)
    found = objects(release.bundles[""])

    # Manifests in install order (Secret before Deployment), then the hooks by weight (-5 before 5).
    assert [(o["kind"], o["metadata"]["name"]) for o in found] == [
        ("Secret", "web-auth"), ("Deployment", "web"), ("ConfigMap", "web-schema"), ("Job", "web-migrate"),
    ]
    assert found[3]["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-install,pre-upgrade",
        "helm.sh/hook-weight": "5",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
    }
    assert found[2]["data"] == {"isUpgrade": "true", "revision": "2"}
    assert "test-auth" not in release.bundles[""].manifests
    assert release.warnings == ("left out 1 Helm test hook document(s): edge nodes do not run 'helm test'",)


def test_a_hook_that_names_no_helm_event_is_left_out_as_helm_does() -> None:
    rendered = {"c/templates/x.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  annotations:\n"
                                      "    helm.sh/hook: after-lunch\n"}

    assert join_manifests(rendered) == ""


def test_notes_are_rendered_with_the_base_values_as_an_install_or_an_upgrade(
    doc: dict[str, Any], generated_archive: bytes, good_archive: bytes, schema_archive: bytes
) -> None:
    component = parse_component(doc)

    notes = render_release(component, generated_archive, revision=1).notes
    assert notes.startswith("web is installed at revision 1.\n")
    assert render_release(component, generated_archive, revision=2).notes.startswith("web is upgraded at revision 2.\n")
    assert render_release(component, good_archive, revision=1).notes == "web is installed.\n"
    assert render_release(component, schema_archive, revision=1).notes == ""  # the chart has no NOTES.txt


def test_a_notes_txt_that_fails_to_render_is_a_template_error(doc: dict[str, Any], copy_chart) -> None:
    chart = copy_chart("good")
    (chart / "templates" / "NOTES.txt").write_text('{{ required "notes.contact is required" .Values.notes }}\n')

    with pytest.raises(RenderError, match="(?s)template error: .*notes.contact is required"):
        render_release(parse_component(doc), package_chart(chart), revision=1)


def test_a_pool_can_enable_a_subchart_that_the_base_values_disable(doc: dict[str, Any], copy_chart) -> None:
    chart = copy_chart("needs-dependency")
    (chart / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "needs-dependency", "version": "0.1.0",
        "dependencies": [{"name": "present", "version": "0.1.0", "condition": "present.enabled"}],
    }))
    doc["spec"]["values"] = {"present": {"enabled": False}}
    doc["spec"]["edge"]["poolValues"] = {"shanghai": {"present": {"enabled": True}}}

    bundles = render_component(parse_component(doc), package_chart(chart), revision=1)

    assert "web-present" not in bundles[""].manifests
    assert "web-present" in bundles["shanghai"].manifests


def test_the_charts_crds_directory_reaches_the_node_before_its_custom_resources_at_every_revision(
    doc: dict[str, Any], copy_chart
) -> None:
    # Public operator charts keep their CustomResourceDefinitions in crds/, which Helm installs untemplated.
    archive = package_chart(copy_chart("with-crds"))
    component = parse_component({**doc, "spec": {**doc["spec"], "values": {}, "edge": {"nodePools": ["shanghai"]}}})
    for revision in (1, 3):  # an install, and an upgrade a node joining late receives first
        bundle = render_component(component, archive, revision=revision)[""]
        assert [(o["kind"], o["metadata"]["name"]) for o in objects(bundle)] == [
            ("CustomResourceDefinition", "gadgets.example.com"), ("Gadget", "web")]
        assert "# Source: with-crds/crds/gadgets.yaml" in bundle.manifests
