"""Secrets in a bundle are encrypted to the node they are for: a subscriber to everything on the broker does not
read them, the node does.

The real hub on aiohttp's test server, a real Mosquitto, a real Helm render of
a chart whose values put a password into a Secret, the agent's own join
(``edgeagent.identity.join``, which makes the node's bundle key) and the agent
itself in-process. Its runtime is the in-memory fake (what reaches it is what
is checked here); tests/e2e/test_secrets_reach_only_their_node.py runs the same
on podman. A node joined the old way, without a bundle key, is the control:
its bundle is plain, and the same reader finds the secret in it.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp.test_utils import TestClient
from fakes import FakeRuntime
from fleet_checks import readable_without_a_key, secret_forms
from hub_api import answer, create_token, join, unique

from deployer_plugin import package_chart
from edgeagent.agent import Agent, AgentSettings
from edgeagent.identity import BUNDLE_KEY_FILE, load_bundle_key
from edgeagent.identity import join as agent_join
from edgeagent.runtime import ReleaseRef
from edgehub.keys import DISPATCHER, ENROLLMENT_STORE, REPORT_STORE
from edgeprotocol import Assignment, DecryptionError, bundle_crypto, topics
from edgeprotocol.messages import NodeStatus
from edgesim.fleet import Mosquitto
from edgesim.watch import TopicRecorder

SECRET = "correct-horse-battery-staple-7"
CHART_FILES = {
    "Chart.yaml": "apiVersion: v2\nname: shopdb-client\nversion: 0.1.0\n",
    "values.yaml": 'password: ""\n',
    "templates/secret.yaml": """apiVersion: v1
kind: Secret
metadata:
  name: {{ .Release.Name }}-db
type: Opaque
data:
  password: {{ .Values.password | b64enc | quote }}
stringData:
  dsn: "postgres://app:{{ .Values.password }}@db/app"
""",
    "templates/deployment.yaml": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
      annotations:
        checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    spec:
      securityContext: {runAsUser: 65534, runAsNonRoot: true}
      containers:
        - name: client
          image: localhost/edgecollab-busybox:1
          command: [sh, -c, "sleep 3600"]
          env:
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: {{ .Release.Name }}-db, key: password}}
""",
}


def secret_component(tmp_path: Path, name: str = "shopdb") -> dict[str, Any]:
    chart = tmp_path / "chart"
    for path, text in CHART_FILES.items():
        (chart / path).parent.mkdir(parents=True, exist_ok=True)
        (chart / path).write_text(text)
    document = {"apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {"chart": str(chart), "values": {"password": SECRET}, "edge": {"nodePools": ["shanghai"]}}}
    return {"component": document, "chart_archive": base64.b64encode(package_chart(chart)).decode()}


async def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            found = check()
            if inspect.isawaitable(found):
                found = await found
            if found:
                return found
            await asyncio.sleep(0.05)


def secret_data(manifests: str) -> dict[str, str]:
    (secret,) = [d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "Secret"]
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} | secret.get("stringData", {})


async def test_a_subscriber_to_everything_does_not_read_a_secret_that_the_node_it_is_for_applies(
    hub: TestClient, broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="edgehub.dispatch")
    node, older = unique("sh"), unique("sh")
    state = tmp_path / "node"
    recorder = await asyncio.to_thread(TopicRecorder(broker.port, f"{topics.PREFIX}/#").__enter__)
    try:
        identity = await asyncio.to_thread(agent_join, hub_url=str(hub.make_url("")), token=await create_token(hub),
                                           state_dir=state, node=node)
        # A node whose agent is older than bundle encryption: it joins without a bundle key.
        await answer(await join(hub, await create_token(hub), older), 201)
        await answer(await hub.post("/api/v1/components", json=secret_component(tmp_path)), 201)
        for name, bundles in ((node, "encrypted"), (older, "plain")):
            assert (await answer(await hub.get(f"/api/v1/nodes/{name}"), 200))["bundles"] == bundles

        runtime = FakeRuntime()
        ref = ReleaseRef(namespace="demo", release="shopdb")
        async with Agent(AgentSettings(state_dir=state, reconcile_interval=0.5), identity, runtime):
            await until(lambda: ref in runtime.running)

            async def deployed() -> bool:
                record = await hub.app[REPORT_STORE].get_node(node)
                status: NodeStatus | None = record.status if record else None
                return status is not None and [(r.release, r.phase) for r in status.releases] == [
                    ("shopdb", "Deployed")]

            await until(deployed)
        # Publishing everything again (as on every broker connect) warns about the older node no more than once.
        await hub.app[DISPATCHER].publish_all()
        older_topic = topics.assignment(older, "demo", "shopdb")
        await until(lambda: sum(t == older_topic for t, _ in recorder.messages()) >= 2)
        messages = recorder.messages()
    finally:
        await asyncio.to_thread(recorder.__exit__)

    # The node has the Secret: it decrypted its bundle and applied it, and its own store keeps it.
    assert secret_data(runtime.running[ref]) == {"password": SECRET, "dsn": f"postgres://app:{SECRET}@db/app"}
    assert (state / BUNDLE_KEY_FILE).stat().st_mode & 0o777 == 0o600

    # Nothing anyone could read on the broker holds it: not the node's assignments, status, events or presence.
    ours = [(topic, payload) for topic, payload in messages if f"/nodes/{node}/" in topic]
    assert {topic for topic, _ in ours} >= {topics.assignment(node, "demo", "shopdb"), topics.status(node),
                                            topics.presence(node), topics.events(node)}
    for topic, payload in ours:
        seen = readable_without_a_key(payload)
        for form in secret_forms(SECRET):
            assert form not in seen, f"{form!r} readable on {topic}"
    for _, payload in ours:
        if payload and json.loads(payload).get("body", {}).get("bundle"):
            assert json.loads(payload)["body"]["bundle"]["encoding"] == bundle_crypto.ENCODING

    # The control: the older node's bundle is plain, and the same reader finds the secret in it.
    (plain, *_) = [p for t, p in messages if t == older_topic]
    assert json.loads(plain)["body"]["bundle"]["encoding"] == "gzip+base64"
    assert all(form in readable_without_a_key(plain) for form in secret_forms(SECRET))
    warnings = [r.getMessage() for r in caplog.records if older in r.getMessage()]
    assert len(warnings) == 1 and "1 node(s) joined without a bundle key" in warnings[0]
    assert not [r for r in caplog.records if node in r.getMessage()]


@pytest.mark.parametrize(("bundle_key", "reason"), [
    ("not base64!", "not base64"),
    (base64.b64encode(b"short").decode(), "must be 32 bytes"),
    (base64.b64encode(bytes(32)).decode(), "low-order point"),
    (7, "must be a string"),
])
async def test_a_join_with_a_bundle_key_the_hub_cannot_encrypt_to_is_refused_and_spends_nothing(
    hub: TestClient, bundle_key: object, reason: str
):
    token, node = await create_token(hub), unique("sh")
    refusal = await answer(await join(hub, token, node, bundle_key=bundle_key), 400)
    assert refusal["field"] == "bundle_key" and reason in refusal["error"]
    good = bundle_crypto.public_key_text(bundle_crypto.new_node_key())
    assert (await answer(await join(hub, token, node, bundle_key=good), 201))["node"] == node


async def test_every_join_replaces_the_bundle_key_so_a_key_from_before_a_reset_no_longer_opens_anything(
    hub: TestClient, broker: Mosquitto, tmp_path: Path
):
    node, url = unique("sh"), str(hub.make_url(""))
    await answer(await hub.post("/api/v1/components", json=secret_component(tmp_path)), 201)
    first = await asyncio.to_thread(agent_join, hub_url=url, token=await create_token(hub), state_dir=tmp_path / "a",
                                    node=node)
    await answer(await hub.post(f"/api/v1/nodes/{node}/reset", json={}), 200)
    second = await asyncio.to_thread(agent_join, hub_url=url, token=await create_token(hub), state_dir=tmp_path / "b",
                                     node=node)
    stored = (await hub.app[ENROLLMENT_STORE].joined_nodes())[node]
    assert stored.generation == 2 == second.generation and first.generation == 1
    assert stored.bundle_key == bundle_crypto.public_key_text(load_bundle_key(tmp_path / "b"))
    assert stored.bundle_key != bundle_crypto.public_key_text(load_bundle_key(tmp_path / "a"))

    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        await mqtt.subscribe(topics.assignment(node, "demo", "shopdb"), qos=1)
        async with asyncio.timeout(5):
            payload = (await anext(aiter(mqtt.messages))).payload
    assert isinstance(payload, bytes)
    body = json.loads(payload)["body"]
    assert body["generation"] == 2
    with pytest.raises(DecryptionError, match="not this node's"):
        Assignment.from_body(body, bundle_key=load_bundle_key(tmp_path / "a"))
    opened = Assignment.from_body(body, bundle_key=load_bundle_key(tmp_path / "b"))
    assert opened.bundle is not None and secret_data(opened.bundle.manifests)["password"] == SECRET
