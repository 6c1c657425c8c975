"""podman has no namespaces: releases of different namespaces must still not touch each other."""

from __future__ import annotations

import pytest

from edgeagent.runtime import ManifestRejected, ReleaseRef, RuntimeApplyError

from .helpers import PodmanNode, render_web

pytestmark = pytest.mark.timeout(60)


async def test_releases_of_the_same_name_in_two_namespaces_do_not_clash(node: PodmanNode) -> None:
    shop, lab = ReleaseRef("shop", "web"), ReleaseRef("lab", "web")

    await node.runtime.apply(shop, render_web({"message": "shop"}, namespace="shop"), node.context)
    await node.runtime.apply(lab, render_web({"message": "lab"}, namespace="lab"), node.context)

    assert await node.fetch("shop.web-pod-0-httpd") == "shop\n"
    assert await node.fetch("lab.web-pod-0-httpd") == "lab\n"
    assert (await node.runtime.observe(shop)).ready == 1
    assert (await node.runtime.observe(lab)).ready == 1

    await node.runtime.remove(shop)

    assert (await node.runtime.observe(lab)).ready == 1
    assert await node.fetch("lab.web-pod-0-httpd") == "lab\n"


async def test_a_pod_another_release_of_the_namespace_runs_is_not_replaced(node: PodmanNode) -> None:
    first, second = ReleaseRef("demo", "web"), ReleaseRef("demo", "copy")
    await node.runtime.apply(first, render_web(), node.context)
    before = await node.runtime.observe(first)

    # Same object names as the first release: in Kubernetes this is a conflict too.
    clash_message = "demo.web-pod-0 already exists and belongs to release demo.web"
    with pytest.raises(RuntimeApplyError, match=clash_message) as clash:
        await node.runtime.apply(second, render_web(), node.context)
    assert not isinstance(clash.value, ManifestRejected)  # fine once the other release is gone

    after = await node.runtime.observe(first)
    assert after.pods[0].container_ids == before.pods[0].container_ids
    assert after.ready == 1


async def test_releases_lists_the_releases_that_run_and_those_on_record(node: PodmanNode) -> None:
    assert await node.runtime.releases() == set()
    await node.runtime.apply(ReleaseRef("shop", "web"), render_web(namespace="shop"), node.context)
    await node.runtime.apply(ReleaseRef("lab", "web"), render_web(namespace="lab"), node.context)

    assert await node.runtime.releases() == {ReleaseRef("shop", "web"), ReleaseRef("lab", "web")}

    # Known from pod labels alone when the played file is lost ...
    node.runtime.played_file(ReleaseRef("lab", "web")).unlink()
    assert ReleaseRef("lab", "web") in await node.runtime.releases()
    # ... and gone once removed.
    await node.runtime.remove(ReleaseRef("lab", "web"))
    assert await node.runtime.releases() == {ReleaseRef("shop", "web")}
