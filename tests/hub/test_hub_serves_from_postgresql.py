"""``edgehub serve --store postgresql://...``: a real hub process keeps its state in a real PostgreSQL server.

A node joins (``edgeagent join``) and a component is applied (``edgectl apply``); what they stored is read
back from PostgreSQL itself, the hub keeps it across a restart, and no SQLite file is made. A URL the hub
cannot use, and a PostgreSQL URL without psycopg, stop ``edgehub serve`` with a message naming the cause.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgesim.fleet import Hub, Mosquitto

REPO = Path(__file__).resolve().parents[2]


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg  # here: the tests of a missing psycopg below run without it

    with psycopg.connect(url) as db:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]


def test_a_hub_on_postgresql_joins_a_node_and_applies_a_component_into_the_database(
    tmp_path: Path, broker: Mosquitto, postgres_url: str
):
    hub = Hub(tmp_path / "hub", broker.url, store=postgres_url).start()
    try:
        token = hub.token("shanghai")
        joined = subprocess.run([sys.executable, "-m", "edgeagent.cli", "join", "--hub", hub.url, "--token", token,
                                 "--name", "pg-1", "--state-dir", str(tmp_path / "node")],
                                capture_output=True, text=True, timeout=60)
        assert joined.returncode == 0, joined.stderr
        hub.ctl("apply", "-f", str(REPO / "examples" / "web" / "component.yaml"))

        assert query(postgres_url, "SELECT name, pool, standing, generation FROM nodes") == [
            ("pg-1", "shanghai", "joined", 1)]
        assert query(postgres_url, "SELECT uses_left FROM tokens") == [(0,)]
        assert query(postgres_url, "SELECT namespace, name, revision, deleted FROM components") == [
            ("demo", "web", 1, 0)]
        assert query(postgres_url, "SELECT revision, status, origin FROM revisions") == [
            (1, "current", "apply by edgectl")]
        ((archive,),) = query(postgres_url, "SELECT archive FROM charts")
        assert isinstance(archive, bytes) and archive[:2] == b"\x1f\x8b"  # the chart, a gzipped tar, as bytes
        assert query(postgres_url, "SELECT node, namespace, release, revision, kind FROM assignments") == [
            ("pg-1", "demo", "web", 1, "release")]
        # The render the node's assignment names carries its pool's values.
        ((manifests,),) = query(postgres_url, """SELECT r.manifests FROM renders AS r JOIN assignments AS a
            ON a.namespace = r.namespace AND a.release = r.name AND a.revision = r.revision
            AND a.render_key = r.render_key WHERE a.node = 'pg-1'""")
        assert "ni hao shanghai" in str(manifests)

        hub.stop()
        hub.start()
        assert [n["name"] for n in hub.api("/api/v1/nodes")] == ["pg-1"]
        assert hub.ctl_json("get", "components")[0]["revision"] == 1
        assert not (hub.state_dir / "hub.db").exists()  # the keys are in the state directory, the store is not
    finally:
        hub.stop()


def serve(*args: str, tmp_path: Path, hide_psycopg: bool = False) -> subprocess.CompletedProcess[str]:
    """``edgehub serve ARGS`` (optionally as if psycopg were not installed); it must exit before serving."""
    prelude = "import sys; sys.modules['psycopg'] = None; " if hide_psycopg else "import sys; "
    code = prelude + "from edgehub.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "serve", "--state", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://db.example/hub", "store URL 'mysql://db.example/hub': unknown scheme 'mysql'"),
    ("sqlite://hub.db", "store URL 'sqlite://hub.db': a SQLite store is sqlite:///ABSOLUTE/PATH"),
    ("postgresql://hub:s3cret@db.example:5432", "store URL 'postgresql://hub:***@db.example:5432' names no database"),
    ("postgresql://db.example:port/hub", "store URL 'postgresql://db.example:port/hub' does not parse"),
])
def test_a_store_url_the_hub_cannot_use_stops_it_naming_the_url(tmp_path: Path, url: str, message: str):
    result = serve("--store", url, tmp_path=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "s3cret" not in result.stderr


def test_a_postgresql_store_without_psycopg_says_to_install_the_postgres_extra(tmp_path: Path):
    result = serve("--store", "postgresql://hub@127.0.0.1:5432/hub", tmp_path=tmp_path, hide_psycopg=True)
    assert result.returncode == 2, result.stderr
    assert "psycopg is not installed; install the postgres extra: pip install 'edgecollab[postgres]'" in result.stderr


def test_a_postgresql_server_that_does_not_answer_stops_the_hub_naming_the_store(tmp_path: Path):
    from edgesim.net import free_port

    url = f"postgresql://hub:s3cret@127.0.0.1:{free_port()}/hub"
    result = serve("--store", url, "--mqtt", "mqtt://127.0.0.1:1", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "cannot open the PostgreSQL store postgresql://hub:***@127.0.0.1:" in result.stderr
    assert "s3cret" not in result.stderr
