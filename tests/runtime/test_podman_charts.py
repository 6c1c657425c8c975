"""What public charts need from podman: long annotations, emptyDir, subPath, $(VAR), StatefulSets, host access.

Each test plays real manifests on the simulated node and checks what a user
would check inside the pods.
"""

from __future__ import annotations

import json

import pytest

from edgeagent.runtime import ManifestRejected, ReleaseRef

from .helpers import DEMO_IMAGE, PodmanNode

pytestmark = pytest.mark.timeout(90)

SLEEP = "trap 'exit 0' TERM; sleep 3600 & wait"


def pod(name: str, body: str = "", *, spec: str = "", annotations: str = "") -> str:
    """A Pod of one busybox container ``c`` running ``SLEEP`` (indented YAML snippets are spliced in)."""
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations: {{{annotations}}}
spec:
{spec}  containers:
  - name: c
    image: {DEMO_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{SLEEP}"]
{body}"""


async def test_annotations_longer_than_podman_accepts_are_kept_in_the_record_and_the_pod_runs(
    node: PodmanNode,
) -> None:
    checksum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    ref = ReleaseRef("demo", "ann")

    await node.runtime.apply(ref, pod("p", annotations=f"checksum/config: {checksum}, short: ok"), node.context)

    assert (await node.runtime.observe(ref)).ready == 1
    played = node.runtime._played[ref].pods["demo.p"]
    assert played.annotations == {"checksum/config": checksum}
    assert checksum in node.runtime.played_file(ref).read_text()


async def test_two_releases_of_one_chart_do_not_share_their_empty_dirs(node: PodmanNode) -> None:
    chart = pod("writer", "    volumeMounts: [{name: scratch, mountPath: /scratch}]\n",
                spec="  volumes: [{name: scratch, emptyDir: {}}]\n")
    one, two = ReleaseRef("one", "app"), ReleaseRef("two", "app")
    await node.runtime.apply(one, chart, node.context)
    await node.runtime.apply(two, chart, node.context)

    await node.podman("exec", "one.writer-c", "sh", "-c", "echo mine > /scratch/one")

    assert await node.podman("exec", "two.writer-c", "ls", "/scratch") == ""
    assert await node.podman("exec", "one.writer-c", "cat", "/scratch/one") == "mine\n"
    # An emptyDir lives as long as its pod: a re-apply (new pods) starts it empty.
    await node.runtime.apply(one, chart, node.context)
    assert await node.podman("exec", "one.writer-c", "ls", "/scratch") == ""
    await node.runtime.remove(one)
    assert "one.app.empty.writer.scratch" not in await node.podman("volume", "ls", "--format", "{{.Name}}")


async def test_sub_paths_mount_one_key_or_one_directory_of_a_volume(node: PodmanNode) -> None:
    manifests = """
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
data: {app.conf: "answer=42\\n", other.conf: "x"}
---
""" + pod("p", """    volumeMounts:
    - {name: conf, mountPath: /etc/app/app.conf, subPath: app.conf}
    - {name: data, mountPath: /var/lib/app, subPath: app}
    - {name: data, mountPath: /var/lib/all}
    - {name: scratch, mountPath: /tmp/part, subPath: part}
""", spec="""  volumes:
  - {name: conf, configMap: {name: conf}}
  - {name: data, persistentVolumeClaim: {claimName: data}}
  - {name: scratch, emptyDir: {}}
""")
    ref = ReleaseRef("demo", "sub")

    await node.runtime.apply(ref, manifests, node.context)

    assert await node.podman("exec", "demo.p-c", "cat", "/etc/app/app.conf") == "answer=42\n"
    await node.podman("exec", "demo.p-c", "sh", "-c", "echo kept > /var/lib/app/f")
    assert await node.podman("exec", "demo.p-c", "cat", "/var/lib/all/app/f") == "kept\n"
    await node.podman("exec", "demo.p-c", "sh", "-c", "echo ok > /tmp/part/f")


async def test_var_references_in_command_args_and_env_are_expanded_as_the_kubelet_does(node: PodmanNode) -> None:
    manifests = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {MODE: fast}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c"]
    args: ["echo '$(GREETING) $(EDGE_NODE_NAME) $(MODE) $$(GREETING) $(UNKNOWN)' > /tmp/out; %s"]
    env:
    - {name: WHO, value: world}
    - {name: GREETING, value: "hello $(WHO)"}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: MODE}}}
""" % (DEMO_IMAGE, SLEEP)  # noqa: UP031 - the YAML's flow-style braces stay single
    ref = ReleaseRef("demo", "vars")

    await node.runtime.apply(ref, manifests, node.context)

    out = await node.podman("exec", "demo.p-c", "cat", "/tmp/out")
    assert out == "hello world edge-1 fast $(GREETING) $(UNKNOWN)\n"
    env = dict(e.split("=", 1) for e in json.loads(
        await node.podman("inspect", "demo.p-c", "--format", "{{json .Config.Env}}")))
    assert env["GREETING"] == "hello world"


STATEFULSET = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: %d
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: %s
        imagePullPolicy: Never
        command: ["sh", "-c", "%s"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"""


async def test_a_statefulset_runs_stable_pods_with_a_claim_each_that_survives_reapplies(node: PodmanNode) -> None:
    ref = ReleaseRef("demo", "db")
    await node.runtime.apply(ref, STATEFULSET % (2, DEMO_IMAGE, SLEEP), node.context)

    seen = await node.runtime.observe(ref)
    assert [p.name for p in seen.pods] == ["demo.db-0", "demo.db-1"] and seen.ready == 2
    assert await node.podman("exec", "demo.db-0-db", "hostname") == "db-0\n"
    await node.podman("exec", "demo.db-1-db", "sh", "-c", "echo second > /data/who")

    await node.runtime.apply(ref, STATEFULSET % (1, DEMO_IMAGE, SLEEP), node.context)  # scale down: claim kept
    assert "demo.db.pvc.data-db-1" in await node.podman("volume", "ls", "--format", "{{.Name}}")
    await node.runtime.apply(ref, STATEFULSET % (2, DEMO_IMAGE, SLEEP), node.context)  # and found again
    assert await node.podman("exec", "demo.db-1-db", "cat", "/data/who") == "second\n"
    assert await node.podman("exec", "demo.db-0-db", "ls", "/data") == ""

    await node.runtime.remove(ref)  # removal takes the claims with it (see docs/runtimes.md)
    assert await node.podman("volume", "ls", "-q") == ""


async def test_host_network_and_host_pid_pods_get_the_hosts_and_say_so(node: PodmanNode) -> None:
    ref = ReleaseRef("ops", "exporter")
    manifests = pod("exporter", spec="  hostNetwork: true\n  hostPID: true\n") + "---\n" + pod("plain")

    result = await node.runtime.apply(ref, manifests, node.context)

    assert "Pod/exporter: runs with the host's network (hostNetwork): its ports are the node's" in result.warnings
    assert any(w.startswith("Pod/exporter: runs in the host's PID namespace (hostPID)") for w in result.warnings)
    host_links = set((await node.podman("exec", "ops.exporter-c", "ls", "/sys/class/net")).split())
    plain_links = set((await node.podman("exec", "ops.plain-c", "ls", "/sys/class/net")).split())
    assert plain_links == {"lo"} and host_links - {"lo"}
    processes = len((await node.podman("exec", "ops.exporter-c", "ps")).splitlines())
    assert processes > 10, "hostPID: the pod sees the host's processes"
    assert len((await node.podman("exec", "ops.plain-c", "ps")).splitlines()) < 6
    assert (await node.runtime.observe(ref)).ready == 2


async def test_a_secret_volume_of_a_secret_outside_the_release_is_refused_naming_it(node: PodmanNode) -> None:
    manifests = pod("p", "    volumeMounts: [{name: tls, mountPath: /tls}]\n",
                    spec="  volumes: [{name: tls, secret: {secretName: cluster-tls}}]\n")

    with pytest.raises(ManifestRejected, match=r"^Pod/p: volume 'tls' names Secret 'cluster-tls', which is not part"):
        await node.runtime.apply(ReleaseRef("demo", "tls"), manifests, node.context)


async def test_fs_group_service_accounts_and_kinds_podman_cannot_run_are_warnings(node: PodmanNode) -> None:
    manifests = pod("p", spec="  serviceAccountName: app\n  securityContext: {fsGroup: 1001}\n") + """
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: app}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: app}
"""
    result = await node.runtime.apply(ReleaseRef("demo", "warn"), manifests, node.context)

    assert any(w.startswith("Pod/p: serviceAccountName 'app' ignored") for w in result.warnings)
    assert any(w.startswith("Pod/p: securityContext.fsGroup 1001 ignored") for w in result.warnings)
    assert "ServiceAccount/app: not run on podman (the node has no Kubernetes API, so no account tokens)" in (
        result.warnings)
    assert any(w.startswith("ServiceMonitor/app: not run on podman (a custom resource") for w in result.warnings)
    assert (await node.podman("pod", "ps", "--format", "{{.Name}}")).split() == ["demo.p"]
