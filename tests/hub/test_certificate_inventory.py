"""``GET /api/v1/hub`` and ``/metrics``: every certificate in the chain with its end, from the running hub.

The hub is the real application on aiohttp's test server with a real (anonymous) Mosquitto; nodes join
through the API, so the node certificates are the ones the store holds. The renewals themselves are
``test_certificate_keeper.py``'s; with a broker with identities, ``tests/e2e/test_the_hub_renews_what_it_issues.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient
from cryptography import x509
from hub_api import answer, create_token, join, operator_token, refused, unique
from prometheus_client.parser import text_string_to_metric_families

from edgectl.cli import main as edgectl
from edgectl.views import HUB_NODES_SHOWN
from edgehub.broker_access import ANONYMOUS_BROKER_WARNING
from edgehub.keys import CERTIFICATES
from edgehub.settings import HubSettings


def parse(moment: str) -> dt.datetime:
    return dt.datetime.fromisoformat(moment)


async def test_the_hub_lists_its_ca_and_each_node_certificate_with_its_end(hub: TestClient, hub_settings: HubSettings):
    nodes = [unique("inv"), unique("inv")]
    certificates = {}
    for node in nodes:
        joined = await answer(await join(hub, await create_token(hub), node), 201)
        certificates[node] = x509.load_pem_x509_certificate(joined["certificate"].encode())
    view = await answer(await hub.get("/api/v1/hub"), 200)
    by_name = {c["name"]: c for c in view["certificates"]}
    ca = x509.load_pem_x509_certificate(hub_settings.ca_certificate_path.read_bytes())
    assert by_name["ca"]["serial"] == format(ca.serial_number, "x")
    assert parse(by_name["ca"]["not_after"]) == ca.not_valid_after_utc
    assert 3640 < by_name["ca"]["days_left"] <= 3650 and by_name["ca"]["renewed_by"] == "operator: edgehub ca rotate"
    for node, certificate in certificates.items():
        entry = by_name[f"node/{node}"]
        assert entry["serial"] == format(certificate.serial_number, "x") and entry["subject"] == node
        assert parse(entry["not_after"]) == certificate.not_valid_after_utc and entry["renewed_by"] == "agent"
        assert 89 < entry["days_left"] <= 90
    # An anonymous broker: no broker certificate, no hub MQTT client certificate; the API is plain HTTP.
    assert not {"broker", "hub_mqtt", "hub_https"} & set(by_name)
    assert view["nodes"]["certificates"] == len([n for n in by_name if n.startswith("node/")]) >= 2
    soonest = min((c for c in view["certificates"] if c["name"].startswith("node/")), key=lambda c: c["not_after"])
    assert view["nodes"]["soonest"]["name"] == soonest["name"] and view["nodes"]["expired"] == 0
    assert view["warnings"] == [ANONYMOUS_BROKER_WARNING]
    assert view["check_interval_seconds"] == 3600 and view["checked_at"] is not None


async def test_only_the_operator_reads_the_hub(hub: TestClient, hub_settings: HubSettings,
                                               stranger: aiohttp.ClientSession):
    viewer = (hub_settings.state_dir / "viewer-token").read_text().strip()
    await refused(await stranger.get("/api/v1/hub", headers={"Authorization": f"Bearer {viewer}"}), 401)
    await refused(await stranger.get("/api/v1/hub"), 401)


async def test_metrics_give_each_certificate_end_and_the_soonest_node_one(hub: TestClient, hub_settings: HubSettings):
    node = unique("met")
    joined = await answer(await join(hub, await create_token(hub), node), 201)
    await hub.app[CERTIFICATES].check()  # the gauges are as of the keeper's last check
    text = await (await hub.get("/metrics")).text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    ca = x509.load_pem_x509_certificate(hub_settings.ca_certificate_path.read_bytes())
    name = "edgecollab_certificate_expiry_timestamp_seconds"
    assert samples[(name, (("certificate", "ca"),))] == ca.not_valid_after_utc.timestamp()
    issued = x509.load_pem_x509_certificate(joined["certificate"].encode())  # this hub's only node
    assert samples[(name, (("certificate", "node_soonest"),))] == issued.not_valid_after_utc.timestamp()
    # One series for the nodes, not one per node.
    assert [labels for (metric, labels) in samples if metric == name] == [(("certificate", "ca"),),
                                                                          (("certificate", "node_soonest"),)]
    assert samples[("edgecollab_node_certificates_expiring", ())] == 0
    assert samples[("edgecollab_node_certificates_expired", ())] == 0


def test_the_check_interval_is_a_setting_with_bounds(tmp_path: Path):
    assert HubSettings(state_dir=tmp_path).certificate_check_seconds == 3600
    config = tmp_path / "hub.yaml"
    config.write_text("certificate_check_seconds: 2\n")
    assert HubSettings.from_file(config, state_dir=tmp_path).certificate_check_seconds == 2
    for bad in (0.5, 86_401):
        with pytest.raises(ValueError, match=f"certificate_check_seconds {bad} must be at least 1"):
            HubSettings(state_dir=tmp_path, certificate_check_seconds=bad)


async def run_edgectl(hub: TestClient, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``edgectl --hub URL --token T ARGS`` (off the loop that serves the hub: it blocks)."""
    capsys.readouterr()
    code = await asyncio.to_thread(edgectl, ["--hub", str(hub.make_url("")), "--token", operator_token(hub), *args])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


async def test_edgectl_describe_hub_prints_each_certificate_its_end_and_the_warnings(
        hub: TestClient, capsys: pytest.CaptureFixture[str]):
    nodes = [unique("ctl") for _ in range(HUB_NODES_SHOWN + 2)]
    token = await create_token(hub, uses=len(nodes))
    for node in nodes:
        await answer(await join(hub, token, node), 201)
    code, out, err = await run_edgectl(hub, capsys, "describe", "hub")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == "Certificates:" and lines[2].split() == ["NAME", "SUBJECT", "NOT", "AFTER", "DAYS", "LEFT",
                                                                "RENEWED", "BY"]
    ca_row = next(line for line in lines if line.startswith("ca "))
    assert "edgecollab hub CA" in ca_row and "operator: edgehub ca rotate" in ca_row
    shown = [n for n in nodes if f"node/{n} " in out]
    assert len(shown) == HUB_NODES_SHOWN and "(2 more with -o wide)" in out
    assert f"Nodes:     {len(nodes)} certificate(s); the soonest ends" in out
    assert "Warnings:" in out and ANONYMOUS_BROKER_WARNING[:40] in out

    code, wide, _ = await run_edgectl(hub, capsys, "describe", "hub", "-o", "wide")
    assert code == 0 and all(f"node/{n} " in wide for n in nodes) and "SERIAL" in wide and "SOURCE" in wide
    code, text, _ = await run_edgectl(hub, capsys, "describe", "hub", "-o", "json")
    as_json = json.loads(text)
    code, text, _ = await run_edgectl(hub, capsys, "describe", "hub", "-o", "yaml")
    assert yaml.safe_load(text)["certificates"] == as_json["certificates"]
    assert {c["name"] for c in as_json["certificates"]} == {"ca", *(f"node/{n}" for n in nodes)}


async def test_edgectl_describe_a_node_or_component_still_needs_its_name(hub: TestClient,
                                                                          capsys: pytest.CaptureFixture[str]):
    for kind in ("node", "component"):
        with pytest.raises(SystemExit) as exited:
            await run_edgectl(hub, capsys, "describe", kind)
        assert exited.value.code == 2
        assert f"describe {kind} needs the {kind}'s name" in capsys.readouterr().err
