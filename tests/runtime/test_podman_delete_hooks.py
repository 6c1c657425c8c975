"""Removing a release runs its pre-delete hooks before its pods go and its post-delete hooks after,
and leaves nothing of the release behind (real podman)."""

from __future__ import annotations

import pytest

from edgeagent.runtime import ReleaseRef

from .helpers import DEMO_IMAGE, PodmanNode

pytestmark = pytest.mark.timeout(120)
REF = ReleaseRef("demo", "gone")

SERVER = f"""---
apiVersion: v1
kind: Pod
metadata: {{name: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: {DEMO_IMAGE}
      command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"""
# The hooks log to a hostPath directory of the test, so what they saw outlives them.
HOOK = """---
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  annotations: {{helm.sh/hook: {event}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: {image}
          command: ["sh", "-c", "echo {event} >> /log/order"]
          volumeMounts: [{{name: log, mountPath: /log}}]
      volumes: [{{name: log, hostPath: {{path: {log}}}}}]
"""


async def test_delete_hooks_run_around_the_removal_and_nothing_of_the_release_stays(node: PodmanNode, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    manifests = SERVER + "".join(HOOK.format(image=DEMO_IMAGE, name=name, event=event, log=log)
                                 for name, event in (("before", "pre-delete"), ("after", "post-delete")))
    result = await node.runtime.apply(REF, manifests, node.context)
    assert result.hooks == ()  # neither runs at install
    assert not (log / "order").exists()

    await node.runtime.remove(REF, node.context)

    assert (log / "order").read_text().split() == ["pre-delete", "post-delete"]
    assert await node.podman("pod", "ps", "-q") == ""
    assert not node.runtime.hooks_file(REF).exists() and not node.runtime.played_file(REF).exists()
