"""A password given in a component's values reaches the container on the node it is for, and nothing a
subscriber to every topic of the broker reads holds it (bundles are encrypted to the node).

The whole fleet as a user runs it: Mosquitto, ``edgehub serve``, ``edgeagent
join``/``run`` and podman, with the database-shaped test chart (``keyvalue``:
a Secret read by a StatefulSet through ``secretKeyRef``).
"""

from __future__ import annotations

import json
from pathlib import Path

from fleet_checks import readable_without_a_key, secret_forms, vendored_chart, wait_deployed, write_spec

from edgeprotocol import bundle_crypto, topics
from edgesim.fleet import Fleet
from edgesim.watch import TopicRecorder

SECRET = "tr0ub4dor-and-3-of-the-shop"


def test_a_password_in_a_secret_runs_in_its_nodes_container_and_no_broker_subscriber_reads_it(
    fleet: Fleet, tmp_path: Path
):
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    with TopicRecorder(broker.port, f"{topics.PREFIX}/#", tls=broker.identity()) as everything:
        node = fleet.add_node("sh-1", "shanghai")
        chart = vendored_chart("keyvalue", tmp_path)
        hub.ctl("apply", "-f", str(write_spec(tmp_path / "kv.yaml", name="kv", chart=chart,
                                              values={"auth": {"password": SECRET}, "replicaCount": 1})))
        wait_deployed(hub, "demo/kv", revision=1, nodes=1, timeout=120)
        messages = everything.messages()

    # On the node, the container runs with the password the Secret carried.
    assert node.container_env("demo.kv-keyvalue-0-kv")["KV_PASSWORD"] == SECRET

    # On the broker, the node's bundle is encrypted, and no message holds the password or its base64.
    assignment = [p for t, p in messages if t == topics.assignment("sh-1", "demo", "kv") and p]
    assert assignment and json.loads(assignment[-1])["body"]["bundle"]["encoding"] == bundle_crypto.ENCODING
    assert {t for t, _ in messages} >= {topics.status("sh-1"), topics.events("sh-1"), topics.presence("sh-1")}
    for topic, payload in messages:
        seen = readable_without_a_key(payload)
        for form in secret_forms(SECRET):
            assert form not in seen, f"{form!r} readable on {topic}"
