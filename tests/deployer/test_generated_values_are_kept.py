"""Values a chart generates at install are kept across revisions, as ``lookup`` would keep them on a cluster.

The ``generated`` test chart makes its password with ``randAlphaNum`` unless
``lookup`` finds the release's Secret (which it never does offline), and
annotates its Deployment with a checksum of that Secret.
"""

from __future__ import annotations

from typing import Any

import yaml

from deployer_plugin import parse_component, render_release
from edgeprotocol.messages import Bundle


def find(bundle: Bundle, kind: str) -> dict[str, Any]:
    (found,) = [d for d in yaml.safe_load_all(bundle.manifests) if d and d["kind"] == kind]
    return found


def password(bundle: Bundle) -> str:
    return find(bundle, "Secret")["data"]["password"]


def checksum(bundle: Bundle) -> str:
    return find(bundle, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]


def test_without_a_previous_revision_the_chart_generates_a_new_password_each_render(
    doc: dict[str, Any], generated_archive: bytes
) -> None:
    component = parse_component(doc)

    first = render_release(component, generated_archive, revision=1).bundles[""]
    again = render_release(component, generated_archive, revision=1).bundles[""]

    assert password(first) != password(again)


def test_the_password_generated_at_install_is_kept_at_revisions_2_and_3_while_a_changed_value_changes(
    doc: dict[str, Any], generated_archive: bytes
) -> None:
    doc["spec"]["values"] = {}
    first = render_release(parse_component(doc), generated_archive, revision=1)
    doc["spec"]["values"] = {"image": "docker.io/library/busybox:1.37"}
    second = render_release(parse_component(doc), generated_archive, revision=2, previous=first.bundles)
    doc["spec"]["values"]["auth"] = {"username": "admin"}
    third = render_release(parse_component(doc), generated_archive, revision=3, previous=second.bundles)

    for key in ("", "shanghai"):  # each render key keeps its own
        assert password(first.bundles[key]) == password(second.bundles[key]) == password(third.bundles[key])
        assert find(second.bundles[key], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "docker.io/library/busybox:1.37"
        )
        assert find(third.bundles[key], "Secret")["data"]["username"] == "YWRtaW4="  # admin, base64
        # The checksum over the Secret is generated too, so it is kept: the pods
        # do not restart for a password that did not change. Its limit: it stays
        # when the username changes as well (a cluster's Helm would change it).
        assert checksum(first.bundles[key]) == checksum(second.bundles[key]) == checksum(third.bundles[key])
    assert password(first.bundles[""]) != password(first.bundles["shanghai"])


def test_a_document_with_generated_values_reads_the_same_from_one_revision_to_the_next(
    doc: dict[str, Any], generated_archive: bytes
) -> None:
    component = parse_component(doc)
    first = render_release(component, generated_archive, revision=1)
    second = render_release(component, generated_archive, revision=2, previous=first.bundles)

    def secret_text(bundle: Bundle) -> str:
        (text,) = [part for part in bundle.manifests.split("---\n") if "kind: Secret" in part]
        return text

    assert secret_text(first.bundles[""]) == secret_text(second.bundles[""])
    assert "# Source: generated/templates/secret.yaml" in secret_text(second.bundles[""])


def test_a_password_given_in_the_values_is_not_generated_and_follows_the_values(
    doc: dict[str, Any], generated_archive: bytes
) -> None:
    doc["spec"]["values"] = {"auth": {"password": "one"}}
    first = render_release(parse_component(doc), generated_archive, revision=1)
    doc["spec"]["values"] = {"auth": {"password": "two"}}
    second = render_release(parse_component(doc), generated_archive, revision=2, previous=first.bundles)

    assert (password(first.bundles[""]), password(second.bundles[""])) == ("b25l", "dHdv")
    assert checksum(first.bundles[""]) != checksum(second.bundles[""])


def test_a_previous_render_without_the_document_leaves_the_new_value(doc: dict[str, Any],
                                                                     generated_archive: bytes) -> None:
    component = parse_component(doc)
    unrelated = {"": Bundle.of("---\n# Source: other/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\n"
                                   "metadata: {name: web-auth}\ndata: {password: old}\n")}

    release = render_release(component, generated_archive, revision=2, previous=unrelated)

    assert password(release.bundles[""]) != "old"
