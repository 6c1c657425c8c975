"""Jobs run to completion, and Helm hooks run around the release in Helm's order (real podman)."""

from __future__ import annotations

import pytest

from edgeagent.runtime import ReleaseRef, RuntimeApplyError
from edgeagent.runtime.podman_hooks import hooks_for, parse_hooks

from .helpers import DEMO_IMAGE, PodmanNode, eventually

pytestmark = pytest.mark.timeout(120)
REF = ReleaseRef("demo", "db")


def job(name: str, script: str, *, hook: str | None = None, weight: int = 0, policy: str | None = None,
        backoff: int = 0, log_dir: str | None = None) -> str:
    """A Job logging to /log: the release's claim ``log``, or the host directory ``log_dir`` (outlives the release)."""
    volume = f"hostPath: {{path: {log_dir}}}" if log_dir else "persistentVolumeClaim: {claimName: log}"
    annotations = ""
    if hook:
        annotations = f"  annotations:\n    helm.sh/hook: {hook}\n    helm.sh/hook-weight: \"{weight}\"\n"
        if policy:
            annotations += f"    helm.sh/hook-delete-policy: {policy}\n"
    return f"""---
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
{annotations}spec:
  backoffLimit: {backoff}
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: {DEMO_IMAGE}
          command: ["sh", "-c", {script!r}]
          volumeMounts: [{{name: log, mountPath: /log}}]
      volumes: [{{name: log, {volume}}}]
"""


SERVER = f"""---
apiVersion: v1
kind: Pod
metadata: {{name: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: {DEMO_IMAGE}
      command: ["sh", "-c", "echo server >> /log/order; trap 'exit 0' TERM; sleep 3600 & wait"]
      volumeMounts: [{{name: log, mountPath: /log}}]
  volumes: [{{name: log, persistentVolumeClaim: {{claimName: log}}}}]
"""


def test_hooks_are_ordered_by_weight_then_kind_then_name():
    docs = [{"kind": k, "metadata": {"name": n, "annotations": {"helm.sh/hook": e, "helm.sh/hook-weight": w}}}
            for k, n, e, w in [("Job", "b", "pre-install", "0"), ("Job", "a", "pre-install", "0"),
                               ("ConfigMap", "c", "pre-install,post-install", "0"), ("Job", "z", "pre-install", "-5"),
                               ("Job", "late", "post-install", "0")]]
    order = [h.name for h in hooks_for(parse_hooks(docs), "pre-install")]
    assert order == ["z", "c", "a", "b"]
    assert [h.name for h in hooks_for(parse_hooks(docs), "post-install")] == ["c", "late"]


async def test_a_job_runs_to_completion_and_counts_as_ready_without_being_replayed(node: PodmanNode):
    manifests = job("migrate", "echo migrated >> /log/order")
    await node.runtime.apply(REF, manifests, node.context)

    async def done():
        seen = await node.runtime.observe(REF)
        return seen if seen.ready == seen.total == 1 else None

    seen = await eventually(done, within=30, what="the Job to complete")
    assert seen.pods[0].phase == "Succeeded"
    assert await node.podman("logs", "demo.migrate-pod-0-main") == ""  # it wrote to the volume, not the log


async def test_install_hooks_run_in_order_around_the_release_and_a_failing_hook_fails_the_apply(node: PodmanNode):
    manifests = "".join([
        SERVER,
        job("second", "echo pre-second >> /log/order", hook="pre-install", weight=2),
        job("first", "echo pre-first >> /log/order", hook="pre-install", weight=-1, policy="hook-succeeded"),
        job("after", "echo post >> /log/order", hook="post-install"),
        job("upgrade", "echo pre-upgrade >> /log/order", hook="pre-upgrade"),
    ])
    result = await node.runtime.apply(REF, manifests, node.context)

    assert [line.split(" succeeded")[0] for line in result.hooks] == [
        "pre-install hook Job/first", "pre-install hook Job/second", "post-install hook Job/after"]
    order = await node.podman("exec", "demo.server-main", "cat", "/log/order")
    assert order.split() == ["pre-first", "pre-second", "server", "post"]
    pods = await node.podman("pod", "ps", "--format", "{{.Name}}")
    assert "demo.first-pod-0" not in pods.split()  # hook-succeeded: removed
    assert "demo.second-pod-0" in pods.split()  # before-hook-creation (the default): kept until the next run
    observed = await node.runtime.observe(REF)
    assert observed.total == 1 and "leftover" not in observed.message  # hook pods are not the workload

    failing = manifests.replace("echo pre-upgrade >> /log/order", "echo nope; exit 3")
    with pytest.raises(RuntimeApplyError, match=r"pre-upgrade hook Job/upgrade of release demo/db failed: "
                                                r"container demo.upgrade-pod-0-main exited 3.*nope"):
        await node.runtime.apply(REF, failing, node.context)
    # The failed pre-upgrade hook stopped the upgrade: the server kept running untouched.
    assert (await node.podman("exec", "demo.server-main", "cat", "/log/order")).split()[-1] == "post"

    await node.runtime.remove(REF, node.context)
    assert await node.podman("pod", "ps", "-q") == ""


async def test_delete_hooks_run_around_the_removal_and_nothing_of_the_release_stays(node: PodmanNode, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    manifests = SERVER + "".join(job(name, f"echo {event} >> /log/order", hook=event, log_dir=str(log))
                                 for name, event in (("before", "pre-delete"), ("after", "post-delete")))
    result = await node.runtime.apply(REF, manifests, node.context)
    assert result.hooks == ()  # neither runs at install
    assert not (log / "order").exists()

    await node.runtime.remove(REF, node.context)

    assert (log / "order").read_text().split() == ["pre-delete", "post-delete"]
    assert await node.podman("pod", "ps", "-q") == ""
    assert not node.runtime.hooks_file(REF).exists() and not node.runtime.played_file(REF).exists()
