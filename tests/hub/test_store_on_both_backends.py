"""The hub's stores keep the same promises on SQLite and on a real PostgreSQL server (docs/store.md).

Each test runs once per backend (the ``store_location`` fixture); the PostgreSQL
runs are skipped where Debian's postgresql package is not installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from raw_store import execute

from edgehub.errors import AlreadyExists, ConcurrentChange, JoinRefused, RenewalRefused
from edgehub.identity import HubIdentity
from edgehub.store import HubStores
from edgehub.store.assignments import AssignmentRecord
from edgehub.store.components import ComponentStore, RolloutRow
from edgehub.store.enrollment import EnrollmentStore
from edgehub.store.schema import chart_digest
from edgehub.tokens import new_token
from edgeprotocol.messages import Bundle, NodeStatus

# Not valid UTF-8 and with a NUL: a chart archive is bytes, and must come back byte for byte.
ARCHIVE = b"\x1f\x8b\x00\xff chart " + os.urandom(64)


async def join(enrollment: EnrollmentStore, node: str, *, pool: str = "p",
               labels: dict[str, str] | None = None) -> None:
    token = new_token()
    await enrollment.create_token(token, pool=pool, ttl_seconds=60, uses=1)
    await enrollment.register_node(token, node=node, requested_pool=None, labels=labels or {},
                                   sign=lambda n: f"cert-{n}", bundle_key=f"key-{node}")


async def apply(components: ComponentStore, revision: int, *, name: str = "web", archive: bytes = ARCHIVE,
                history_limit: int = 10, rollout: RolloutRow | None = None, rolled_back_to: int | None = None) -> None:
    await components.save_component(
        namespace="default", name=name, spec={"values": {"replicas": revision}}, chart_archive=archive,
        chart_name="web", chart_version="1.0.0", fingerprint=f"fp{revision}", revision=revision,
        renders={"": Bundle(manifests=f"kind: Pod # r{revision}", digest=f"d{revision}"),
                 "arm64": Bundle(manifests=f"kind: Pod # arm r{revision}", digest=f"a{revision}")},
        history_limit=history_limit, rollout=rollout, rolled_back_to=rolled_back_to,
        origin="rollback" if rolled_back_to else "apply")


async def test_a_node_joins_reports_and_is_reset_and_revoked(store_location: Path | str):
    async with HubStores(store_location) as stores:
        enrollment, reports = stores.enrollment, stores.reports
        await join(enrollment, "n1", pool="shanghai", labels={"tier": "store"})
        (node,) = await reports.list_nodes()
        assert (node.name, node.pool, node.labels, node.generation, node.standing, node.bundle_key) == (
            "n1", "shanghai", {"tier": "store"}, 1, "joined", "key-n1")
        assert node.certificate == "cert-n1" and node.registered_at > 0
        assert await reports.set_presence("n1", "online", "2024-01-01T00:00:00Z")
        assert not await reports.set_presence("nobody", "online", "2024-01-01T00:00:00Z")
        report = NodeStatus(node="n1", seq=7, observed_at="2024-01-01T00:00:00Z", releases=())
        assert await reports.save_status(report, encoded=report.encode(), received_at="t1",
                                         max_seq_jump=100) == "stored"
        node = await reports.get_node("n1")
        assert node is not None and node.status == report and (node.presence, node.last_seen) == ("online", "t1")
        assert (await enrollment.joined_nodes())["n1"].bundle_key == "key-n1"
        # The registry's own reads leave the status to the reports store.
        registered = await enrollment.get_node("n1")
        assert registered is not None and registered.status is None and registered.certificate == "cert-n1"
        assert [(n.name, n.status) for n in await enrollment.list_nodes()] == [("n1", None)]

        with pytest.raises(JoinRefused, match="already registered"):
            await join(enrollment, "n1")
        revoked = await enrollment.revoke_node("n1")
        assert revoked is not None and revoked.standing == "revoked" and revoked.certificate == ""
        assert await enrollment.joined_nodes() == {}
        assert await enrollment.reset_node("n1") is not None
        await join(enrollment, "n1")
        node = await reports.get_node("n1")
        assert node is not None and (node.generation, node.standing) == (2, "joined")
        # The re-joined agent may count on from its previous registration's last report.
        report = NodeStatus(node="n1", seq=107, observed_at="2024-01-01T00:00:00Z", releases=())
        assert await reports.save_status(report, encoded=report.encode(), received_at="t2",
                                         max_seq_jump=100) == "stored"
        assert await enrollment.reset_node("nobody") is None


async def test_a_fleet_listing_reuses_the_record_of_an_unchanged_node_and_shows_every_change(
    store_location: Path | str,
):
    async with HubStores(store_location) as stores:
        reports = stores.reports
        for name in ("n1", "n2"):
            await join(stores.enrollment, name)
        first = {n.name: n for n in await reports.list_nodes(with_certificate=False)}
        report = NodeStatus(node="n2", seq=1, observed_at="2024-01-01T00:00:00Z", releases=())
        assert await reports.save_status(report, encoded=report.encode(), received_at="t1",
                                         max_seq_jump=100) == "stored"
        second = {n.name: n for n in await reports.list_nodes(with_certificate=False)}
        assert second["n1"] is first["n1"]
        assert second["n2"] is not first["n2"] and second["n2"].status == report and second["n2"].last_seen == "t1"
        assert await reports.set_presence("n1", "offline", "2024-01-01T00:00:01Z")
        third = {n.name: n for n in await reports.list_nodes(with_certificate=False)}
        assert third["n1"].presence == "offline" and third["n2"] is second["n2"]
        # With certificates, records are made afresh (and carry them).
        assert [n.certificate for n in await reports.list_nodes()] == ["cert-n1", "cert-n2"]


async def test_components_keep_their_revisions_history_charts_and_renders(store_location: Path | str):
    async with HubStores(store_location) as stores:
        components = stores.components
        await apply(components, 1)
        await apply(components, 2, archive=ARCHIVE + b"v2")
        with pytest.raises(ConcurrentChange, match="now at revision 2"):
            await apply(components, 2)
        component = await components.get_component("default", "web")
        assert component is not None and (component.revision, component.deleted, component.fingerprint) == (
            2, False, "fp2")
        assert component.spec == {"values": {"replicas": 2}} and component.updated_at > 1.6e9
        assert await components.get_chart_archive("default", "web") == ARCHIVE + b"v2"
        assert await components.get_chart(chart_digest(ARCHIVE)) == ARCHIVE
        assert await components.get_render("default", "web", 1, "arm64") == Bundle(manifests="kind: Pod # arm r1",
                                                                                  digest="a1")
        assert list(await components.get_renders("default", "web", 2)) == ["", "arm64"]
        assert [(r.revision, r.status, r.origin, r.has_spec)
                for r in await components.list_revisions("default", "web")] == [
            (2, "current", "apply", True), (1, "superseded", "apply", True)]

        # A rollback to revision 1 makes revision 3 from it; 2 becomes "rolled back".
        await apply(components, 3, rolled_back_to=1)
        assert [(r.revision, r.status) for r in await components.list_revisions("default", "web")] == [
            (3, "current"), (2, "rolled back"), (1, "superseded")]
        revision = await components.get_revision("default", "web", 1)
        assert revision is not None and revision.spec == {"values": {"replicas": 1}}

        # A smaller history limit prunes the oldest revisions with their renders, never the current one.
        await components.set_history_limit("default", "web", spec={"values": {"replicas": 3}}, history_limit=2,
                                           revision=3)
        window = await components.revision_window("default", "web")
        assert (window.oldest, window.current) == (2, 3)
        assert await components.get_revision("default", "web", 1) is None
        assert await components.prune_history() == 0  # pruned with its revision already: no assignment names it
        assert await components.get_renders("default", "web", 1) == {}

        assert await components.delete_component("default", "web") == 4
        assert await components.delete_component("default", "web") is None
        assert await components.list_components() == []
        (deleted,) = await components.list_components(include_deleted=True, with_spec=False)
        assert (deleted.name, deleted.revision, deleted.deleted) == ("web", 4, True)
        # The deletion (revision 4, limit 2) pruned revision 2; nothing is assigned, so revision 3's two renders,
        # the charts and the specs go.
        assert await components.prune_deleted() == 2
        assert await components.get_chart_archive("default", "web") is None
        assert await components.get_chart(chart_digest(ARCHIVE)) is None
        assert [(r.revision, r.has_spec) for r in await components.list_revisions("default", "web")] == [
            (4, False), (3, False)]


async def test_a_render_an_assignment_names_outlives_its_pruned_revision(store_location: Path | str):
    async with HubStores(store_location) as stores:
        components, assignments = stores.components, stores.assignments
        await apply(components, 1, history_limit=1)
        await assignments.update_assignments([AssignmentRecord(node="n1", namespace="default", release="web",
                                                               revision=1, kind="release", render_key="")])
        await apply(components, 2, history_limit=1)
        assert await components.get_revision("default", "web", 1) is None
        assert await components.get_render("default", "web", 1, "") is not None  # n1 may not have revision 2 yet
        assert await components.get_render("default", "web", 1, "arm64") is None
        await assignments.update_assignments([AssignmentRecord(node="n1", namespace="default", release="web",
                                                               revision=2, kind="release", render_key="")])
        assert await components.prune_history() == 1
        assert await components.get_render("default", "web", 1, "") is None


async def test_assignments_are_upserted_and_deleted_together(store_location: Path | str):
    async with HubStores(store_location) as stores:
        assignments = stores.assignments
        first = [AssignmentRecord(node=n, namespace="default", release="web", revision=1, kind="release",
                                  render_key="arm64" if n == "n2" else "") for n in ("n2", "n1")]
        await assignments.update_assignments(first)
        assert await assignments.list_assignments() == sorted(first, key=lambda a: a.node)
        tombstone = AssignmentRecord(node="n1", namespace="default", release="web", revision=2, kind="tombstone")
        await assignments.update_assignments([tombstone], deletes=[("n2", "default", "web")])
        assert await assignments.list_assignments() == [tombstone]
        assert await assignments.list_assignments(node="n2") == []
        await assignments.update_assignments([], deletes=[])  # nothing to do is no error


async def test_a_rollout_is_stored_with_its_revision_and_replaced_only_as_expected(store_location: Path | str):
    async with HubStores(store_location) as stores:
        components = stores.components
        started = RolloutRow(namespace="default", name="web", revision=1, previous=0, state="progressing",
                             body='{"wave": 0}')
        await apply(components, 1, rollout=started)
        assert await components.get_rollout("default", "web") == started
        moved = RolloutRow(namespace="default", name="web", revision=1, previous=0, state="progressing",
                           body='{"wave": 1}')
        assert await components.save_rollout(moved, expect=started)
        assert not await components.save_rollout(started, expect=started)  # someone moved it meanwhile
        assert await components.list_rollouts() == [moved]
        await apply(components, 2)  # an apply without a rollout drops it
        assert await components.get_rollout("default", "web") is None


async def test_credentials_and_certificate_renewals(store_location: Path | str):
    async with HubStores(store_location) as stores:
        enrollment = stores.enrollment
        record = await enrollment.add_credential("grafana", "viewer", lambda: "PEM")
        with pytest.raises(AlreadyExists):
            await enrollment.add_credential("grafana", "viewer", lambda: pytest.fail("issued for a taken name"))
        assert await enrollment.list_credentials() == [record]
        assert await enrollment.delete_credential("grafana") and not await enrollment.delete_credential("grafana")

        await join(enrollment, "n1")
        renewed = await enrollment.renew_certificate("n1", nonce="a", at=100.0, forget_before=0.0,
                                                     renew=lambda current: current + "-renewed")
        assert renewed == "cert-n1-renewed"
        with pytest.raises(RenewalRefused, match="replay"):
            await enrollment.renew_certificate("n1", nonce="a", at=100.0, forget_before=0.0, renew=lambda c: c)
        # Nonces older than forget_before are forgotten.
        assert await enrollment.renew_certificate("n1", nonce="a", at=300.0, forget_before=200.0,
                                                  renew=lambda c: "again") == "again"


async def test_replaced_and_voided_certificates_are_kept_until_they_expire(store_location: Path | str,
                                                                             tmp_path: Path):
    """What the broker's revocation list is made of (edgehub.broker_revocations): the certificate a renewal
    replaced and the one a reset or revoke voided, by serial, while they have not expired."""
    ca = HubIdentity.load_or_create(tmp_path / "ca")

    def issue(node: str, lifetime: dt.timedelta = dt.timedelta(days=1)) -> str:
        key = Ed25519PrivateKey.generate()
        return ca.issue(key.public_key(), node, usage="client", lifetime=lifetime).public_bytes(
            serialization.Encoding.PEM).decode()

    def serial(pem: str) -> int:
        return x509.load_pem_x509_certificate(pem.encode()).serial_number

    async with HubStores(store_location) as stores:
        enrollment = stores.enrollment
        for node in ("n1", "n2", "n3"):
            token = new_token()
            await enrollment.create_token(token, pool="p", ttl_seconds=60, uses=1)
            await enrollment.register_node(token, node=node, requested_pool=None, labels={}, sign=issue)
        first = {n.name: n.certificate for n in await enrollment.list_nodes()}
        assert await enrollment.void_certificates() == []
        renewed = await enrollment.renew_certificate("n1", nonce="a", at=100.0, forget_before=0.0,
                                                     renew=lambda current: issue("n1"))
        await enrollment.revoke_node("n2")
        await enrollment.reset_node("n3")
        voided = await enrollment.void_certificates()
        assert sorted(s for s, _ in voided) == sorted(serial(first[n]) for n in ("n1", "n2", "n3"))
        assert all(abs(at - time.time()) < 60 for _, at in voided)
        # A second renewal voids the first one's certificate too; one that has expired is left out.
        await enrollment.renew_certificate("n1", nonce="b", at=100.0, forget_before=0.0,
                                           renew=lambda current: issue("n1", dt.timedelta(seconds=1)))
        assert serial(renewed) in {s for s, _ in await enrollment.void_certificates()}
        await enrollment.renew_certificate("n1", nonce="c", at=100.0, forget_before=0.0,
                                           renew=lambda current: issue("n1"))
        await asyncio.sleep(1.1)
        assert len(await enrollment.void_certificates()) == 4  # n1's first two, n2's, n3's; not the expired one


async def test_a_store_reopened_holds_what_was_written(store_location: Path | str):
    async with HubStores(store_location) as stores:
        await join(stores.enrollment, "n1")
        await apply(stores.components, 1)
    async with HubStores(store_location) as stores:
        assert [n.name for n in await stores.enrollment.list_nodes()] == ["n1"]
        assert await stores.components.get_chart_archive("default", "web") == ARCHIVE


async def test_two_stores_on_one_postgresql_database_never_both_take_the_same_revision(postgres_url: str):
    """Two hubs sharing a database: applies race for each revision and exactly one wins each time.

    Without the write lock both would read revision N under READ COMMITTED and both store N + 1 (the
    second overwriting the first); with it the second sees the first's commit and is refused.
    """
    async with HubStores(postgres_url) as one, HubStores(postgres_url) as two:
        for revision in range(1, 11):
            results = await asyncio.gather(apply(one.components, revision), apply(two.components, revision),
                                           return_exceptions=True)
            refused = [r for r in results if isinstance(r, ConcurrentChange)]
            assert len(refused) == 1 and results.count(None) == 1, results
        assert [r.revision for r in await one.components.list_revisions("default", "web")] == list(range(10, 0, -1))
    # The write lock is taken per transaction: none is held once the stores are closed.
    assert execute(postgres_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]


async def test_a_store_whose_postgresql_connection_is_lost_connects_again_on_the_next_call(postgres_url: str):
    import psycopg

    database = postgres_url.rsplit("/", 1)[1]
    async with HubStores(postgres_url) as stores:
        await join(stores.enrollment, "n1")
        (killed,) = execute(postgres_url.rsplit("/", 1)[0] + "/postgres",
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = ? AND application_name = 'edgecollab'", (database,))
        assert killed == (True,)
        # The call that finds the connection gone fails (it cannot know what the server did with it) ...
        with pytest.raises(psycopg.OperationalError):
            await stores.reports.list_nodes()
        # ... and the next one works on a new connection.
        assert [n.name for n in await stores.reports.list_nodes()] == ["n1"]


async def test_a_store_on_postgresql_bounds_every_statement_unless_its_url_says_otherwise(postgres_url: str):
    """A statement that hangs (a lock held elsewhere, a wedged server) cannot hold the store's thread, and
    with it every write, forever; an operator's own bound in the URL wins."""
    query = "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"
    async with HubStores(postgres_url) as stores:
        assert await stores._database.read(lambda c: c.execute(query).fetchone()[0]) == "60000"  # milliseconds
    own = postgres_url + ("&" if "?" in postgres_url else "?") + "options=-c%20statement_timeout%3D5000"
    async with HubStores(own) as stores:
        assert await stores._database.read(lambda c: c.execute(query).fetchone()[0]) == "5000"
