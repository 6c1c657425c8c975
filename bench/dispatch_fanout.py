"""How long the hub takes to hand one component revision to N nodes, against a real Mosquitto.

    .venv/bin/python bench/dispatch_fanout.py [N ...]      (default: 100 1000)

Registers N nodes straight into a fresh hub store, each with a bundle key as
``edgeagent join`` sends it (so every assignment carries its bundle's key
wrapped to the node), stores one revision of the example web component
(rendered once by the Helm engine), then times
``Dispatcher.sync`` (plan + sign + publish one retained QoS 1 assignment per
node) and ``Dispatcher.publish_all`` (what the hub does on every broker
connect). Prints one line per N. Bounded: loopback only, N nodes, one run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployer_plugin import ChartArchive, component_fingerprint, load_component_file, render_component  # noqa: E402
from edgehub.dispatch import Dispatcher  # noqa: E402
from edgehub.identity import HubIdentity  # noqa: E402
from edgehub.store import HubStores  # noqa: E402
from edgehub.tokens import new_token  # noqa: E402
from edgekit.mqtt import MqttSession, SessionSettings  # noqa: E402
from edgeprotocol import bundle_crypto  # noqa: E402
from edgesim.fleet import Mosquitto  # noqa: E402


async def run(n: int, workdir: Path, broker_url: str) -> str:
    component, archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
    chart = ChartArchive.from_bytes(archive)
    renders = render_component(component, archive, revision=1)
    identity = HubIdentity.load_or_create(workdir)

    async def ignore(topic: str, payload: bytes) -> None:
        return None

    async with HubStores(workdir / "hub.db") as stores, MqttSession(
        SessionSettings(url=broker_url, client_id=f"bench-{n}"), on_message=ignore
    ) as session:
        await session.wait_connected(10)
        token = new_token()
        await stores.enrollment.create_token(token, pool="shanghai", ttl_seconds=600, uses=n)
        started = time.perf_counter()
        for i in range(n):
            await stores.enrollment.register_node(
                token, node=f"n{i}", requested_pool=None, labels={}, sign=lambda _: "cert",
                bundle_key=bundle_crypto.public_key_text(bundle_crypto.new_node_key()))
        register_s = time.perf_counter() - started
        await stores.components.save_component(
            namespace=component.namespace, name=component.name, spec=component.to_document(), chart_archive=archive,
            chart_name=chart.name, chart_version=chart.version,
            fingerprint=component_fingerprint(component, chart.fingerprint), revision=1, renders=renders,
        )

        async def publish(topic: str, payload: bytes, retain: bool) -> bool:
            return await session.publish(topic, payload, retain=retain)

        dispatcher = Dispatcher(stores.enrollment, stores.components, stores.assignments, identity.key, publish)
        started = time.perf_counter()
        report = await dispatcher.sync()
        sync_s = time.perf_counter() - started
        started = time.perf_counter()
        republished = await dispatcher.publish_all()
        all_s = time.perf_counter() - started
    return (f"nodes {n:5d}: register {register_s:6.2f} s | sync {sync_s:6.2f} s "
            f"({report.published} published, {report.published / sync_s:7.0f}/s) | "
            f"publish_all {all_s:6.2f} s ({republished / all_s:7.0f}/s)")


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [100, 1000]
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            for n in sizes:
                workdir = Path(tmp) / f"hub-{n}"
                print(asyncio.run(run(n, workdir, broker.url)), flush=True)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
