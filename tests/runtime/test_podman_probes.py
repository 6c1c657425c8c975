"""Probes run by the agent: healthy containers stay up, readiness holds a pod back, liveness restarts.

podman 4.3 cannot run them (see edgeagent.runtime.podman_probes); the pods run
with network none, so http and tcp checks prove the agent reaches the pod's own
loopback through its network namespace.
"""

from __future__ import annotations

import asyncio

import pytest

from edgeagent.runtime import Observation, ReleaseRef

from .helpers import DEMO_IMAGE, PodmanNode, eventually

pytestmark = pytest.mark.timeout(90)

SERVER = ("mkdir -p /www; echo ok > /www/index.html; touch /tmp/alive; trap 'exit 0' TERM; "
          "httpd -f -p 8080 -h /www & wait")


def probed(probes: str) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {DEMO_IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "{SERVER}"]
        ports: [{{name: http, containerPort: 8080}}]
{probes}"""


HEALTHY = """        startupProbe: {httpGet: {path: /, port: http}, periodSeconds: 1, failureThreshold: 10}
        livenessProbe: {tcpSocket: {port: http}, periodSeconds: 1, failureThreshold: 1, timeoutSeconds: 1}
        readinessProbe: {exec: {command: [test, -f, /www/index.html]}, periodSeconds: 1}
"""
REF = ReleaseRef("demo", "web")


async def ready_observation(node: PodmanNode) -> Observation | None:
    seen = await node.runtime.observe(REF)
    return seen if seen.ready == 1 else None


async def test_a_healthy_container_becomes_ready_and_is_never_restarted_by_its_probes(node: PodmanNode) -> None:
    await node.runtime.apply(REF, probed(HEALTHY), node.context)
    first = await eventually(lambda: ready_observation(node), within=15, what="the probed pod is ready")

    await asyncio.sleep(5)  # five liveness periods with failureThreshold 1

    after = await node.runtime.observe(REF)
    assert after.ready == 1
    assert after.pods[0].started_at == first.pods[0].started_at
    assert after.pods[0].container_ids == first.pods[0].container_ids
    assert node.runtime.probe_restarts == {}
    restarts = await node.podman("inspect", "demo.web-pod-0-httpd", "--format", "{{.RestartCount}}")
    assert restarts.strip() == "0"
    # podman was given no probe to mistranslate into a healthcheck
    assert (await node.podman("inspect", "demo.web-pod-0-httpd", "--format", "{{json .Config.Healthcheck}}")
            ).strip() == "null"


async def test_a_failing_readiness_probe_holds_the_pod_back_until_it_passes(node: PodmanNode) -> None:
    readiness = "        readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}\n"
    await node.runtime.apply(REF, probed(readiness), node.context)
    await asyncio.sleep(2.5)

    held = await node.runtime.observe(REF)
    assert (held.ready, held.total) == (0, 1)
    assert held.pods[0].phase == "Running"
    assert "readiness probe" in held.message or "not ready yet" in held.message

    await node.podman("exec", "demo.web-pod-0-httpd", "touch", "/tmp/ready")
    await eventually(lambda: ready_observation(node), within=5, what="ready once its probe passes")


async def test_a_failing_liveness_probe_restarts_the_container_after_its_failure_threshold(node: PodmanNode) -> None:
    liveness = ("        livenessProbe: {exec: {command: [test, -f, /tmp/alive]}, periodSeconds: 1, "
                "failureThreshold: 2}\n"
                "        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}\n")
    await node.runtime.apply(REF, probed(liveness), node.context)
    before = await eventually(lambda: ready_observation(node), within=15, what="the probed pod is ready")

    await node.podman("exec", "demo.web-pod-0-httpd", "rm", "/tmp/alive")

    async def restarted() -> Observation | None:
        seen = await node.runtime.observe(REF)
        return seen if seen.ready and seen.pods[0].started_at != before.pods[0].started_at else None

    after = await eventually(restarted, within=40, what="the container restarted by its liveness probe")
    assert node.runtime.probe_restarts == {"demo.web-pod-0-httpd": 1}
    assert after.pods[0].container_ids == before.pods[0].container_ids  # restarted, not recreated
    # The status counts the probe's restart as the kubelet would: the health gate restarts its clock on it.
    assert [(c.name, c.restarts) for c in after.pods[0].containers] == [("httpd", 1)]
