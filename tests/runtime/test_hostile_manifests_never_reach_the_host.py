"""Generated hostile manifests (names, keys, paths, subPaths, replicas) and generated link plans in a volume
never make a plan or a bind that reaches past the release's confinement (property-based, hypothesis).

The planner and the last check either refuse (``ManifestRejected``) or produce a plan this test's own,
independent reading finds confined: every host path a pod binds lies in the release's files or mounts
dir (or is an allowed hostPath apart from the node's state and podman's storage), every file written
lies in the files dir, every key and ``items`` path stays inside its volume, no ``subPath`` is left for
podman, the pod count is within the limit. ``open_beneath`` either refuses or opens something beneath
the volume's root, whatever links were planted on the way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.policy import PRIVILEGES, NodePolicy
from edgeagent.runtime import ManifestRejected, NodeContext, ReleaseRef, RuntimeApplyError
from edgeagent.runtime.host_mounts import open_beneath
from edgeagent.runtime.podman_confinement import Confinement, check_confinement
from edgeagent.runtime.podman_plan import build_plan

REF = ReleaseRef("demo", "evil")
NODE = NodeContext(node="n1", pool="p")
STATE = "/var/lib/edgeagent"
CONFINEMENT = Confinement(files_dir=f"{STATE}/podman/demo/evil.d", mounts_dir=f"{STATE}/podman/demo/evil.mounts",
                          protected=(STATE, "/var/lib/containers/storage", "/run/containers/storage"))
DEFAULT = NodePolicy()
HOST_ALLOWED = NodePolicy(allow={"*": frozenset(PRIVILEGES)})

FRAGMENTS = ["..", ".", "", "x", "y", "data", "etc", "tmp", "var", "lib", "edgeagent", "$(X)", "$(UP)", "a b",
             "..a", "a..", "\\", "~", "-", "policy.yaml", "\x00", "x" * 300]
hostile_paths = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), min_size=0, max_size=6).map("/".join),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["/", "/var/lib/edgeagent", "/var/lib/edgeagent/policy.yaml", "/var/lib", "/var/lib/containers",
                     "/srv/data", "../../../../tmp/victim/x", "x/../../..", f"{STATE}/podman/demo/evil.d/../.."]),
    st.text(min_size=1, max_size=12),
)


# One place per release is hostile, the rest is what charts write: a plan must get far enough to have
# binds worth checking, and each hostile value is met where it can do harm.
SITES = ("configmap key", "secret key", "items path", "items key", "subPath", "subPathExpr env", "hostPath",
         "volume name", "container name", "claim name", "object name", "replicas", None)
fine_paths = st.sampled_from(["app.conf", "x/y", "data", "a/b/c", "$(X)", "sub"])
fine_keys = st.sampled_from(["app.conf", "a", "ok-key_1.txt", "x", "sub", "data"])
fine_names = st.sampled_from(["data", "conf", "v", "scratch"])
hostile_names = st.one_of(st.sampled_from(["Bad_Name", "..", "-x", "a" * 70, ""]), st.text(min_size=1, max_size=8))


def pick(draw: Any, site: str | None, here: str, fine: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
         ) -> Any:
    return draw(hostile if site == here else fine)


@st.composite
def volumes(draw: Any, site: str | None) -> dict[str, Any]:
    name = pick(draw, site, "volume name", fine_names, hostile_names)
    kind = draw(st.sampled_from(["configMap", "secret", "pvc", "emptyDir", "hostPath"]))
    if kind == "configMap":
        body: dict[str, Any] = {"name": "cfg"}
        if draw(st.booleans()):
            body["items"] = [{"key": pick(draw, site, "items key", st.just("app.conf"), hostile_paths),
                              "path": pick(draw, site, "items path", fine_paths, hostile_paths)}]
        return {"name": name, "configMap": body}
    if kind == "secret":
        return {"name": name, "secret": {"secretName": "sec"}}
    if kind == "pvc":
        claim = pick(draw, site, "claim name", st.just("data"), st.sampled_from(["Data", "x/y", "..", ""]))
        return {"name": name, "persistentVolumeClaim": {"claimName": claim}}
    if kind == "emptyDir":
        return {"name": name, "emptyDir": {}}
    return {"name": name, "hostPath": {"path": pick(draw, site, "hostPath", st.just("/srv/data"), hostile_paths)}}


@st.composite
def containers(draw: Any, site: str | None, volume_names: list[str]) -> dict[str, Any]:
    mounts = []
    for _ in range(draw(st.integers(0, 3))):
        mount: dict[str, Any] = {"name": draw(st.sampled_from(volume_names or ["data"])), "mountPath": "/m"}
        which = draw(st.sampled_from(["", "subPath", "subPathExpr"]))
        if which == "subPath":
            mount[which] = pick(draw, site, "subPath", fine_paths, hostile_paths)
        elif which:
            mount[which] = draw(st.sampled_from(["$(X)", "$(X)/$(UP)", "a/$(X)", "$(UP)"]))
        mounts.append(mount)
    return {"name": pick(draw, site, "container name", st.just("c"), hostile_names), "image": "busybox",
            "env": [{"name": "X", "value": pick(draw, site, "subPathExpr env", fine_paths, hostile_paths)},
                    {"name": "UP", "value": ".."}],
            "securityContext": {"runAsUser": 65534}, "volumeMounts": mounts}


@st.composite
def releases(draw: Any) -> str:
    site = draw(st.sampled_from(SITES))
    pod_volumes = draw(st.lists(volumes(site), max_size=4, unique_by=lambda v: v["name"]))
    volume_names = [str(v["name"]) for v in pod_volumes]
    pod_spec: dict[str, Any] = {"containers": [draw(containers(site, volume_names))], "volumes": pod_volumes}
    if draw(st.booleans()):
        init = draw(containers(site, volume_names))
        pod_spec["initContainers"] = [{**init, "name": "init"}]
    kind = draw(st.sampled_from(["Pod", "Deployment", "StatefulSet", "Job", "DaemonSet"]))
    name = pick(draw, site, "object name", st.just("w"), hostile_names)
    workload: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    if kind == "Pod":
        workload["spec"] = pod_spec
    else:
        replicas = pick(draw, site, "replicas", st.integers(0, 3), st.integers(0, 100_000))
        spec: dict[str, Any] = {"template": {"spec": pod_spec}, "replicas": replicas}
        if kind == "StatefulSet" and draw(st.booleans()):
            spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}}]
        if kind == "Job":
            spec["template"]["spec"]["restartPolicy"] = "Never"
        workload["spec"] = spec
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                 "data": {pick(draw, site, "configmap key", fine_keys, hostile_paths): "v", "app.conf": "c"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
              "stringData": {pick(draw, site, "secret key", fine_keys, hostile_paths): "s"}}
    return yaml.safe_dump_all([configmap, secret, workload])


def beneath(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def apart(path: str, protected: tuple[str, ...]) -> bool:
    return not any(beneath(path, guarded) or beneath(guarded, path) for guarded in protected)


KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def assert_confined(plan: Any, policy: NodePolicy) -> None:
    """This test's own reading of what the plan reaches."""
    host_allowed = policy.allows(REF.namespace, "hostPath")
    own = (CONFINEMENT.files_dir, CONFINEMENT.mounts_dir)
    assert len(plan.pods) <= policy.limits.pods_per_release
    for relative in plan.files:
        assert ".." not in relative.split("/") and not relative.startswith("/")
        assert beneath(os.path.join(CONFINEMENT.files_dir, relative), CONFINEMENT.files_dir)
    for mount in plan.subpath_mounts.values():
        assert ".." not in mount.path.split("/") and not mount.path.startswith("/") and "\x00" not in mount.path
        if mount.kind == "volume":
            assert mount.root.startswith("demo.evil.")
        else:
            assert host_allowed and apart(mount.root, CONFINEMENT.protected)
    for play in plan.plays:
        for doc in yaml.safe_load_all(play.text):
            if doc.get("kind") == "ConfigMap":
                assert doc["metadata"]["name"].startswith("demo.evil.")
                for field in ("data", "binaryData"):
                    for key in doc.get(field) or {}:
                        assert KEY.match(key) and key not in (".", "..")
                continue
            for volume in doc["spec"].get("volumes") or ():
                if "hostPath" in volume:
                    path = volume["hostPath"]["path"]
                    assert path.startswith("/") and ".." not in path.split("/")
                    if not any(beneath(path, root) for root in own):
                        assert host_allowed and apart(path, CONFINEMENT.protected), path
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"].startswith("demo.evil.")
                if "configMap" in volume:
                    assert volume["configMap"]["name"].startswith("demo.evil.")
                    for item in volume["configMap"].get("items") or ():
                        assert ".." not in item["path"].split("/") and not item["path"].startswith("/")
            for container in [*doc["spec"].get("initContainers", []), *doc["spec"]["containers"]]:
                for mount in container.get("volumeMounts") or ():
                    assert not mount.get("subPath") and not mount.get("subPathExpr")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests=releases(), host_allowed=st.booleans())
def test_a_plan_is_refused_or_confined_whatever_the_manifests_ask(manifests: str, host_allowed: bool) -> None:
    policy = HOST_ALLOWED if host_allowed else DEFAULT
    try:
        plan = build_plan(REF, manifests, NODE, files_dir=CONFINEMENT.files_dir, mounts_dir=CONFINEMENT.mounts_dir,
                          policy=policy)
        check_confinement(plan, REF, CONFINEMENT, policy)
    except ManifestRejected:
        return
    assert_confined(plan, policy)


def test_the_last_check_refuses_a_plan_that_binds_past_the_release_whatever_made_it() -> None:
    """Plans no planner should make, edited by hand: the check refuses each, naming what it would reach."""
    pod = """
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  securityContext: {runAsUser: 65534}
  containers: [{name: c, image: busybox, volumeMounts: [{name: v, mountPath: /v, subPath: a}]}]
  volumes: [{name: v, emptyDir: {}}]
"""
    plan = build_plan(REF, pod, NODE, files_dir=CONFINEMENT.files_dir, mounts_dir=CONFINEMENT.mounts_dir)
    check_confinement(plan, REF, CONFINEMENT, DEFAULT)  # as made: fine

    for bad, message in [
        (lambda text: text.replace(CONFINEMENT.mounts_dir, "/etc"), "binds /etc/"),
        (lambda text: text.replace(CONFINEMENT.mounts_dir, CONFINEMENT.mounts_dir + "/../../.."),
         "is not an absolute, normal path"),
        (lambda text: text.replace("claimName: demo.evil.", "claimName: demo.other."), "is not the release's"),
        (lambda text: text.replace("mountPath: /v", "mountPath: /v\n      subPath: x"), "left for podman"),
    ]:
        plays = [dataclasses.replace(play, text=bad(play.text)) for play in plan.plays]
        with pytest.raises(ManifestRejected, match=re.escape(message)):
            check_confinement(dataclasses.replace(plan, plays=plays), REF, CONFINEMENT, DEFAULT)
    with pytest.raises(ManifestRejected, match="must be a relative path without '..'"):
        check_confinement(dataclasses.replace(plan, files={"../../escape": (b"x", 0o644)}), REF, CONFINEMENT,
                          DEFAULT)


def test_an_allowed_host_path_holding_the_nodes_state_or_podmans_storage_is_refused() -> None:
    for path in ("/", "/var", "/var/lib/edgeagent", "/var/lib/edgeagent/policy.yaml", "/var/lib/containers"):
        manifests = f"""
apiVersion: v1
kind: Pod
metadata: {{name: p}}
spec:
  containers: [{{name: c, image: busybox}}]
  volumes: [{{name: h, hostPath: {{path: {path}}}}}]
"""
        with pytest.raises(ManifestRejected, match="refused whatever the policy allows"):
            check_confinement(build_plan(REF, manifests, NODE, policy=HOST_ALLOWED), REF, CONFINEMENT, HOST_ALLOWED)
    plan = build_plan(REF, manifests.replace("/var/lib/containers", "/srv/data"), NODE, policy=HOST_ALLOWED)
    check_confinement(plan, REF, CONFINEMENT, HOST_ALLOWED)  # elsewhere, allowed by the policy: fine
    # A NUL byte (which hypothesis found made the check itself fail) is refused like any other odd path.
    plan = build_plan(REF, manifests.replace("/var/lib/containers", '"/srv/\\0x"'), NODE, policy=HOST_ALLOWED)
    with pytest.raises(ManifestRejected, match="is not an absolute, normal path"):
        check_confinement(plan, REF, CONFINEMENT, HOST_ALLOWED)


# -- links planted in a volume ---------------------------------------------------------------------

LINK_TARGETS = ["/", "/etc", "..", "../..", "x", "../outside", "/tmp"]
link_plans = st.lists(st.tuples(st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=3).map("/".join),
                                st.one_of(st.just("dir"), st.just("file"), st.sampled_from(LINK_TARGETS))),
                      max_size=6)
wanted = st.lists(st.sampled_from(["x", "y", "z", "new"]), min_size=1, max_size=4).map("/".join)


@settings(max_examples=200, deadline=None)
@given(plan=link_plans, relative=wanted)
def test_open_beneath_never_leaves_the_volume_whatever_links_a_pod_planted(plan: list[tuple[str, str]],
                                                                         relative: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="ec-links-"))
    try:
        root = base / "volume"
        root.mkdir()
        (base / "outside").mkdir()
        for where, what in plan:
            target = root / where
            if target.exists() or target.is_symlink():
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if what == "dir":
                    target.mkdir()
                elif what == "file":
                    target.write_text("f")
                else:
                    target.symlink_to(what)
            except OSError:
                continue  # a parent is a file or a link: the plan cannot be laid out that way
        try:
            fd = open_beneath(str(root), relative, what="test")
        except RuntimeApplyError as exc:
            assert "symbolic link" in str(exc) or "not a directory" in str(exc) or "cannot" in str(exc), str(exc)
            return
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        assert beneath(opened, os.path.realpath(root)), (opened, plan, relative)
        assert opened == os.path.join(os.path.realpath(root), relative)
    finally:
        shutil.rmtree(base, ignore_errors=True)
