"""Enrollment: join tokens, the nodes registered with their identities, broker credentials, renewal nonces and
the node certificates the hub no longer stands behind.

A node name belongs to the key that joined it: a join with a name already
registered is refused until an operator resets the name (``reset_node``),
and a revoked name (``revoke_node``) is refused until then too. Each
accepted join of a name raises its join generation, which the dispatcher
seals into the node's assignments. Only a node in standing ``joined`` is
published to and heard from: what a reset or revoked node sends is taken as
if it came from no registered node (``edgehub.store.reports``).

Node certificates the hub no longer stands behind (``void_certificates``: the
one a renewal replaced, the one a reset or revoke voided) are kept until they
expire, by serial number; ``edgehub.broker_revocations`` makes the broker's
certificate revocation list of them.

The nodes read here are records of the registry (their status None): the
reports store lists nodes with what they last reported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from edgekit.sql import Connection, Row
from edgeprotocol.messages import NodeStatus

from ..errors import AlreadyExists, JoinRefused, RenewalRefused
from ..tokens import TokenParts, hash_secret, secret_matches
from .database import NAMES_PER_QUERY, HubDatabase
from .listed import NO_ROWS, Touches

logger = logging.getLogger(__name__)

Standing = Literal["joined", "reset", "revoked"]
# Messages are taken only from nodes in this standing, and assignments published only to them.
JOINED = "standing = 'joined'"
# A node's row without its status and certificate (each read only when needed).
NODE_COLUMNS = ("name, pool, labels, registered_at, presence, presence_at, last_seen, generation, standing, "
                "bundle_key")


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    pool: str
    labels: dict[str, str]
    registered_at: float
    presence: str
    presence_at: str
    last_seen: str
    status: NodeStatus | None
    generation: int = 0
    standing: Standing = "joined"
    # The X25519 public key (base64) its bundles are encrypted to; '' when it joined without one.
    bundle_key: str = ""
    # The node's certificate (PEM) as the hub last issued it; "" after a
    # reset or revoke, and when read without it.
    certificate: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: Row, *, status: NodeStatus | None = None) -> NodeRecord:
        return cls(
            name=row["name"],
            pool=row["pool"],
            labels=json.loads(row["labels"]),
            registered_at=row["registered_at"],
            presence=row["presence"],
            presence_at=row["presence_at"],
            last_seen=row["last_seen"],
            status=status,
            generation=row["generation"],
            standing=row["standing"],
            bundle_key=row["bundle_key"],
            certificate=row["certificate"] if "certificate" in row.keys() else "",  # noqa: SIM118 - a Row's `in` looks at its values
        )


@dataclass(frozen=True, slots=True)
class Registration:
    """What an accepted join stored: the node's pool, certificate and join generation.

    ``rejoined``: the name was registered before (and reset), so assignments
    kept for it must be sealed again for the new generation.
    """

    pool: str
    certificate: str
    generation: int
    rejoined: bool


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """A broker credential the hub issued besides node identities (today: read-only dashboards)."""

    name: str
    role: str
    certificate: str
    created_at: float


@dataclass(frozen=True, slots=True)
class JoinedNode:
    """What publishing to a node in standing ``joined`` needs: its join generation and bundle key
    (base64 X25519; '' when its agent sent none at join)."""

    generation: int
    bundle_key: str


class EnrollmentStore:
    """Tokens, node registrations, credentials, renewals and void certificates, in the hub's database."""

    def __init__(self, database: HubDatabase) -> None:
        self._database = database

    # --- join tokens and joins -------------------------------------------------

    async def create_token(self, token: TokenParts, *, pool: str, ttl_seconds: float, uses: int) -> float:
        now = time.time()
        expires_at = now + ttl_seconds
        await self._database.write(
            lambda c: c.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                (token.token_id, hash_secret(token.secret), pool, now, expires_at, uses),
            ),
            NO_ROWS,
        )
        return expires_at

    async def register_node(
        self,
        token: TokenParts,
        *,
        node: str,
        requested_pool: str | None,
        labels: dict[str, str],
        sign: Callable[[str], str],
        bundle_key: str = "",
    ) -> Registration:
        """Spend one use of ``token`` and register ``node``, or re-register a name an operator reset.

        A name registered to a key (standing ``joined``) or revoked is
        refused, after the token is checked (so a stranger cannot probe for
        names) and before anything changes. ``sign(node)`` produces the node
        certificate inside the transaction, so a refused join leaves neither
        a spent token nor a node behind. Each accepted join of a name raises
        its generation by one (1 for a new name) and replaces its ``bundle_key``.
        """

        def run(c: Connection) -> Registration:
            row = c.execute("SELECT * FROM tokens WHERE token_id = ?", (token.token_id,)).fetchone()
            if row is None or not secret_matches(token.secret, row["secret_hash"]):
                raise JoinRefused("token is unknown")
            if row["expires_at"] <= time.time():
                raise JoinRefused("token has expired; create a new one with 'edgectl token create'")
            if row["uses_left"] <= 0:
                raise JoinRefused("token has no uses left")
            pool = row["pool"]
            if requested_pool and requested_pool != pool:
                raise JoinRefused(f"token is for pool {pool!r}, not {requested_pool!r}")
            held = c.execute("SELECT generation, standing, certificate FROM nodes WHERE name = ?", (node,)).fetchone()
            if held is not None and held["standing"] != "reset":
                why = "is revoked" if held["standing"] == "revoked" else "is already registered to another key"
                raise JoinRefused(f"node {node!r} {why}; an operator can free the name with: edgectl node reset {node}")
            generation = held["generation"] + 1 if held is not None else 1
            certificate = sign(node)
            if held is not None:
                _void_certificate(c, node, held["certificate"])
            c.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_id = ?", (token.token_id,))
            # A join starts the node's report count over (the reports' columns, written here because the
            # join decides it, in its transaction): the last count of its previous registration is kept as
            # the mark its next reports are measured from (``ReportStore.save_status``).
            c.execute(
                """INSERT INTO nodes (name, pool, labels, certificate, registered_at, generation, bundle_key)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET pool = excluded.pool, labels = excluded.labels,
                       certificate = excluded.certificate, registered_at = excluded.registered_at,
                       generation = excluded.generation, bundle_key = excluded.bundle_key, standing = 'joined',
                       seq_before_join = CASE WHEN nodes.status_seq > nodes.seq_before_join
                           THEN nodes.status_seq ELSE nodes.seq_before_join END, status_seq = -1""",
                (node, pool, json.dumps(labels, sort_keys=True), certificate, time.time(), generation, bundle_key),
            )
            return Registration(pool=pool, certificate=certificate, generation=generation, rejoined=held is not None)

        return await self._database.write(run, Touches.of(nodes=[node]))

    async def reset_node(self, name: str) -> NodeRecord | None:
        """Free a node's name: forget the key that joined it, so the next join with the name is accepted.

        The node's assignments are kept (the node that joins next gets its
        releases back, sealed for its new generation), and so are its
        generation, status and events. A revoked node is reset too. None
        when there is no such node.
        """
        return await self._shut_out(name, "reset")

    async def revoke_node(self, name: str) -> NodeRecord | None:
        """Refuse a node from now on: its messages are ignored, nothing is published to it and its
        name cannot join again until ``reset_node``. Its assignments are kept. None when there is no such node."""
        return await self._shut_out(name, "revoked")

    async def _shut_out(self, name: str, standing: Standing) -> NodeRecord | None:
        def run(c: Connection) -> NodeRecord | None:
            held = c.execute("SELECT certificate FROM nodes WHERE name = ?", (name,)).fetchone()
            if held is None:
                return None
            c.execute("UPDATE nodes SET standing = ?, certificate = '' WHERE name = ?", (standing, name))
            _void_certificate(c, name, held["certificate"])
            return NodeRecord.from_row(c.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone())

        return await self._database.write(run, Touches.of(nodes=[name]))

    # --- the registry ----------------------------------------------------------

    async def list_nodes(self, *, with_certificate: bool = True) -> list[NodeRecord]:
        """Every registered node by name, each ``status`` None (``ReportStore.list_nodes`` has them);
        ``with_certificate=False`` leaves every ``certificate`` "", and is cheaper."""
        columns = NODE_COLUMNS + (", certificate" if with_certificate else "")

        def run(c: Connection) -> list[NodeRecord]:
            return [NodeRecord.from_row(r) for r in c.execute(f"SELECT {columns} FROM nodes ORDER BY name").fetchall()]

        return await self._database.read(run)

    async def get_node(self, name: str) -> NodeRecord | None:
        """One registered node with its certificate, its ``status`` None (``ReportStore.get_node`` has it)."""

        def run(c: Connection) -> NodeRecord | None:
            row = c.execute(f"SELECT {NODE_COLUMNS}, certificate FROM nodes WHERE name = ?", (name,)).fetchone()
            return NodeRecord.from_row(row) if row is not None else None

        return await self._database.read(run)

    async def joined_nodes(self, names: Iterable[str] | None = None) -> dict[str, JoinedNode]:
        """Every node in standing ``joined`` (the nodes assignments are published to), by name; with
        ``names``, only those of them (one read of a few rows rather than of the whole fleet)."""
        wanted = sorted(set(names)) if names is not None else None
        query = f"SELECT name, generation, bundle_key FROM nodes WHERE {JOINED}"

        def run(c: Connection) -> list[Row]:
            if wanted is None or len(wanted) > NAMES_PER_QUERY:
                return c.execute(query).fetchall()
            return c.execute(f"{query} AND name IN ({', '.join('?' * len(wanted))})", wanted).fetchall()

        rows = await self._database.read(run)
        return {r["name"]: JoinedNode(generation=r["generation"], bundle_key=r["bundle_key"]) for r in rows}

    # --- broker credentials (dashboards) ----------------------------------------

    async def add_credential(self, name: str, role: str, certificate: Callable[[], str]) -> CredentialRecord:
        """Record a new credential, issuing its certificate with ``certificate()`` only if the name is free."""

        def run(c: Connection) -> CredentialRecord:
            if c.execute("SELECT 1 FROM credentials WHERE name = ?", (name,)).fetchone() is not None:
                raise AlreadyExists(f"credential {name!r} exists; revoke it first or choose another --name")
            record = CredentialRecord(name=name, role=role, certificate=certificate(), created_at=time.time())
            c.execute("INSERT INTO credentials (name, role, certificate, created_at) VALUES (?, ?, ?, ?)",
                      (record.name, record.role, record.certificate, record.created_at))
            return record

        return await self._database.write(run, NO_ROWS)

    async def list_credentials(self) -> list[CredentialRecord]:
        rows = await self._database.read(lambda c: c.execute("SELECT * FROM credentials ORDER BY name").fetchall())
        return [CredentialRecord(name=r["name"], role=r["role"], certificate=r["certificate"],
                                 created_at=r["created_at"]) for r in rows]

    async def delete_credential(self, name: str) -> bool:
        def run(c: Connection) -> bool:
            return c.execute("DELETE FROM credentials WHERE name = ?", (name,)).rowcount > 0

        return await self._database.write(run, NO_ROWS)

    # --- node certificates -------------------------------------------------------

    async def renew_certificate(self, node: str, *, nonce: str, at: float, forget_before: float,
                                renew: Callable[[str], str]) -> str:
        """Replace the certificate of ``node`` with ``renew(current certificate)``, taking ``nonce`` once.

        Refused (RenewalRefused) for a node that is not registered, is
        revoked or was reset (its name is free: it joins again), and for a
        nonce already taken; ``renew`` raises to refuse otherwise (a wrong
        proof, an expired certificate, a bad request). Nonces are remembered
        with their request's time ``at`` until ``forget_before`` passes it (a
        request that old is refused for its time anyway). The node's
        generation, standing and assignments do not change.
        """

        def run(c: Connection) -> str:
            row = c.execute("SELECT standing, certificate FROM nodes WHERE name = ?", (node,)).fetchone()
            if row is None:
                raise RenewalRefused(f"node {node!r} is not registered; it must join with a token")
            if row["standing"] == "revoked":
                raise RenewalRefused(f"node {node!r} is revoked; an operator can free the name with: "
                                     f"edgectl node reset {node}, and the node join again")
            if row["standing"] != "joined" or not row["certificate"]:
                raise RenewalRefused(f"node {node!r} was reset: its name is free and its certificate void; "
                                     "the node must join again with a token")
            c.execute("DELETE FROM renewal_nonces WHERE at < ?", (forget_before,))
            if c.execute("SELECT 1 FROM renewal_nonces WHERE node = ? AND nonce = ?", (node, nonce)).fetchone():
                raise RenewalRefused("this renewal request was taken before (a replay?); send a new one")
            certificate = renew(row["certificate"])
            c.execute("INSERT INTO renewal_nonces VALUES (?, ?, ?)", (node, nonce, at))
            c.execute("UPDATE nodes SET certificate = ? WHERE name = ?", (certificate, node))
            # In force from here: the broker refuses the replaced one once its list is written. A retry
            # after a lost answer proves with the new key and replaces the certificate never received.
            _void_certificate(c, node, row["certificate"])
            return certificate

        return await self._database.write(run, Touches.of(nodes=[node]))

    async def void_certificates(self) -> list[tuple[int, float]]:
        """The serial numbers of the node certificates the hub replaced or voided that have not expired yet,
        each with the time it was voided."""
        now = time.time()
        rows = await self._database.read(lambda c: c.execute(
            "SELECT serial, voided_at FROM void_certificates WHERE not_after > ? ORDER BY serial", (now,)).fetchall())
        return [(int(r["serial"], 16), r["voided_at"]) for r in rows]


def _void_certificate(c: Connection, node: str, pem: str) -> None:
    """Keep the serial of ``node``'s certificate ``pem`` (none: "") until it expires, forgetting those that have."""
    now = time.time()
    c.execute("DELETE FROM void_certificates WHERE not_after <= ?", (now,))
    if not pem:
        return
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        logger.error("The stored certificate of node %s does not load; it cannot be revoked on the broker", node)
        return
    not_after = certificate.not_valid_after_utc.timestamp()
    if not_after > now:
        c.execute("INSERT INTO void_certificates (serial, node, not_after, voided_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (serial) DO NOTHING", (format(certificate.serial_number, "x"), node, not_after, now))
