"""Charts in the shapes public charts take (tests/charts) render as Helm renders them, play on podman,
reach Deployed with the right ready count, and stay up through several probe periods without a restart.

Each chart stands for a family of public charts: ``webserver`` for web servers
built on a shared library chart (bitnami nginx with ``common``), ``keyvalue``
for databases (StatefulSet, generated password, pre-install hook),
``nodeexporter`` for node agents (hostNetwork DaemonSet).
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from pathlib import Path

from fleet_checks import component, container_state, node_events, vendored_chart, wait_deployed, write_spec

from edgesim.fleet import Fleet, wait_until

# Three probe periods of the test charts (2 s each) and a margin.
SEVERAL_PROBE_PERIODS = 8


def release_containers(node, release: str) -> list[str]:
    return sorted(c["Names"] for p in node.release_pods(release) for c in p["Containers"]
                  if not c["Names"].endswith("-infra"))


def test_a_web_chart_on_a_library_chart_with_probes_on_named_ports_stays_up_and_says_what_podman_skips(
    fleet: Fleet, tmp_path: Path
):
    hub = fleet.hub
    assert hub is not None
    node = fleet.add_node("sh-1", "shanghai")
    chart = vendored_chart("webserver", tmp_path)
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", name="site", chart=chart)))
    view = wait_deployed(hub, "demo/site", revision=1, nodes=1)
    (row,) = view["nodes"]
    assert (row["ready"], row["total"]) == (1, 1)
    assert "Service/site-webserver: not run on podman" in row["message"]

    (container,) = release_containers(node, "demo.site")
    before = container_state(node, container)
    time.sleep(SEVERAL_PROBE_PERIODS)  # the probes run meanwhile: a healthy server is left alone
    assert container_state(node, container) == before and before[1:] == (0, "running")
    # $(HTTP_PORT) in the command was expanded: httpd listens on 8080.
    page = node.podman("exec", container, "wget", "-q", "-O-", "http://127.0.0.1:8080/").stdout
    assert page == "hello from the webserver chart"
    assert (row["phase"], component(hub, "demo/site")["deployed"]) == ("Deployed", 1)


def test_two_releases_of_a_chart_with_an_emptydir_do_not_see_each_others_files(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    node = fleet.add_node("sh-1", "shanghai")
    chart = vendored_chart("webserver", tmp_path)
    for name in ("left", "right"):
        hub.ctl("apply", "-f", str(write_spec(tmp_path / f"{name}.yaml", name=name, chart=chart)))
        wait_deployed(hub, f"demo/{name}", revision=1, nodes=1)
    (left,) = release_containers(node, "demo.left")
    (right,) = release_containers(node, "demo.right")

    node.podman("exec", left, "sh", "-c", "echo secret-of-left > /var/cache/web/mark")
    assert node.podman("exec", left, "cat", "/var/cache/web/mark").stdout == "secret-of-left\n"
    seen = node.podman("exec", right, "ls", "-A", "/var/cache/web", check=False)
    assert seen.returncode == 0 and seen.stdout == ""


def test_a_database_chart_runs_its_hook_first_keeps_ordinal_pod_names_and_its_generated_password(
    fleet: Fleet, tmp_path: Path
):
    hub = fleet.hub
    assert hub is not None
    node = fleet.add_node("sh-1", "shanghai")
    chart = vendored_chart("keyvalue", tmp_path)
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "kv.yaml", name="kv", chart=chart)))
    view = wait_deployed(hub, "demo/kv", revision=1, nodes=1, timeout=120)
    assert (view["nodes"][0]["ready"], view["nodes"][0]["total"]) == (2, 2)

    names = sorted(p["Name"] for p in node.release_pods("demo.kv"))
    assert names == ["demo.kv-keyvalue-0", "demo.kv-keyvalue-1"]
    owners = [node.podman("exec", f"{n}-kv", "cat", "/data/owner").stdout.strip() for n in names]
    assert owners == ["kv-keyvalue-0", "kv-keyvalue-1"]

    hook_log = node.podman("logs", "demo.kv-keyvalue-init-pod-0-init", check=False)
    assert "preparing the key-value store for kv" in hook_log.stdout + hook_log.stderr
    reasons = [e["reason"] for e in node_events(hub, "sh-1") if e["release"] == "kv"]
    assert reasons[:1] == ["Applied"]

    def password_hash(pod: str) -> str:
        return node.container_env(f"{pod}-kv")["KV_PASSWORD"]

    first = password_hash(names[0])
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "kv.yaml", name="kv", chart=chart,
                                          values={"initMessage": "second revision"})))
    wait_deployed(hub, "demo/kv", revision=2, nodes=1, timeout=120)
    wait_until(lambda: password_hash(names[0]) == first, timeout=30, what="the password kept in revision 2")
    assert len(first) >= 20


def test_a_host_network_daemonset_serves_on_the_nodes_own_address(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    # Host access is the node owner's to grant, in the policy given at join; the hub cannot.
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow:\n  demo: [hostNetwork]\n")
    fleet.add_node("sh-1", "shanghai", options=dataclasses.replace(fleet.node_options, policy=policy))
    port = 19100 + (tmp_path.stat().st_ino % 500)  # a loopback port of this test's own
    chart = vendored_chart("nodeexporter", tmp_path)
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "ne.yaml", name="ne", chart=chart, values={"port": port})))
    view = wait_deployed(hub, "demo/ne", revision=1, nodes=1)
    assert "runs with the host's network (hostNetwork)" in view["nodes"][0]["message"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert 'node_exporter_build_info{node="sh-1"} 1' in answer.read().decode()
