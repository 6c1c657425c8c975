"""What the node keeps on disk is its own: state directories 0700, stores, keys and the policy file 0600; and the
policy is the node's, read from its state directory unless ``--policy`` says otherwise."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.cli import install_policy, main, policy_from_args
from edgeagent.doctor import identity_checks
from edgeagent.identity import BUNDLE_KEY_FILE
from edgeagent.policy import NodePolicy, PolicyError
from edgeagent.store import AgentStore
from edgekit.sqlite import Database
from edgeprotocol import bundle_crypto


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The umask most machines have (0022): files would be world-readable unless made otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_the_agent_store_is_0600_with_its_wal_in_a_0700_state_dir(tmp_path: Path, loose_umask: None) -> None:
    state = tmp_path / "state"
    async with AgentStore(state / "agent.db") as store:
        await store.counters()
        await store.outbox_size()
        files = {p.name: mode(p) for p in state.iterdir()}
    assert mode(state) == 0o700
    assert files["agent.db"] == 0o600
    assert {name: m for name, m in files.items() if name.endswith(("-wal", "-shm"))} == {
        "agent.db-wal": 0o600, "agent.db-shm": 0o600}


async def test_a_store_left_readable_by_an_older_version_is_narrowed_on_open(tmp_path: Path, loose_umask: None) -> None:
    # The hub's store is built on the same Database: what holds here holds for hub.db.
    state = tmp_path / "hub-state"
    state.mkdir(mode=0o755)
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        (state / name).touch(mode=0o644)
    (state / "hub.db-wal").write_bytes(b"")

    async with Database(state / "hub.db", "CREATE TABLE IF NOT EXISTS t (x INTEGER);") as db:
        await db.transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        files = {p.name: mode(p) for p in state.iterdir()}  # while open: closing removes the WAL

    assert mode(state) == 0o700
    assert files == {"hub.db": 0o600, "hub.db-wal": 0o600, "hub.db-shm": 0o600}


def test_join_keeps_a_checked_copy_of_the_policy_readable_by_the_agent_only(tmp_path: Path, loose_umask: None) -> None:
    source = tmp_path / "policy.yaml"
    source.write_text("allow:\n  monitoring: [hostNetwork]\n")
    state = tmp_path / "state"

    policy = install_policy(source, state)

    assert (state / "policy.yaml").read_text() == source.read_text()
    assert (mode(state), mode(state / "policy.yaml")) == (0o700, 0o600)
    assert policy.allows("monitoring", "hostNetwork") and not policy.allows("demo", "hostNetwork")

    source.write_text("allow:\n  monitoring: [hostnetwork]\n")
    with pytest.raises(PolicyError, match="allow.monitoring: unknown privilege 'hostnetwork'"):
        install_policy(source, state)
    assert "hostNetwork" in (state / "policy.yaml").read_text()  # the good one stays


def test_run_uses_the_state_dirs_policy_unless_given_one_and_the_default_without_either(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert policy_from_args(argparse.Namespace(policy=None), state) == NodePolicy(path=str(state / "policy.yaml"))
    (state / "policy.yaml").write_text("namespaces: [demo]\n")
    assert policy_from_args(argparse.Namespace(policy=None), state).namespaces == {"demo"}
    override = tmp_path / "other.yaml"
    override.write_text("namespaces: [monitoring]\n")
    assert policy_from_args(argparse.Namespace(policy=override), state).namespaces == {"monitoring"}


def test_doctor_with_a_bad_policy_says_which_key_and_exits_2(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("namespaces: demo\n")

    code = main(["doctor", "--state-dir", str(tmp_path), "--policy", str(bad)])

    assert code == 2
    assert capsys.readouterr().err == f"edgeagent: policy file {bad}: namespaces must be a list of names\n"


def test_doctor_checks_the_bundle_key_is_private_and_says_when_the_node_has_none(tmp_path: Path) -> None:
    def bundle_key_check() -> tuple[bool, str]:
        (check,) = [c for c in identity_checks(tmp_path)[0] if c.name == "bundle-key"]
        return check.ok, check.detail

    ok, detail = bundle_key_check()
    assert ok and "none" in detail and "join again to encrypt them" in detail
    key = tmp_path / BUNDLE_KEY_FILE
    key.write_bytes(bundle_crypto.private_key_pem(bundle_crypto.new_node_key()))
    key.chmod(0o644)
    ok, detail = bundle_key_check()
    assert not ok and f"run: chmod 600 {key}" in detail
    key.chmod(0o600)
    assert bundle_key_check() == (True, f"{key} is private (mode 0600)")
