"""Rolling the hub's CA over while the fleet runs: ``edgehub ca rotate begin|switch|finish``.

The steps (the CA sets of ``edgehub.hub_cas``):

1. **begin**: a new CA (its own Ed25519 key, ten years, named with the day)
   is trusted beside the old one, which still issues. The trust bundle (both)
   goes to ``STATE/hub-ca.crt`` (``edgectl --ca-file``), to the broker's
   ``cafile`` with a revocation list per CA (and the broker is signalled), and
   to the nodes: the signed hub facts (``GET /api/v1/time``) and the join and
   renewal answers carry it, and each joined node gets a notice
   (``edgeprotocol.notices``) to fetch it now.
2. **switch**: the new CA issues: the hub's own certificates and the broker's
   are issued again from it at once (the certificate keeper's check), and
   every node, told by its notice, renews its certificate as soon as it sees
   its certificate's CA is not the one that issues.
3. **finish**: the old CA is retired: the bundle holds the new one alone.
   Refused while any joined node's certificate (as the hub's store holds it)
   is from another CA, naming those nodes, unless forced.

Each step is taken by the running hub (``POST /api/v1/ca/rotation``, operator
token; ``edgehub ca rotate`` on the hub's machine calls it): the hub is then
the one writer of its CA files, reads the fleet from the store it serves from
(SQLite or PostgreSQL alike), and puts each step in force itself at once: its
own certificates, the broker's files and signal, the notices. A rotation
needs the hub running anyway: nodes renew through it.

A step commits ``STATE/ca-set.json`` first; what follows it (the broker's
files, the hub's certificates, the notices) is also done by the hub at every
start and on its timers, so a hub that stops in between finishes it when it
starts again. Nodes that are off learn the step when they come back: they
fetch the signed facts at start and whenever a TLS handshake with the broker
or the hub fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from edgekit.mqtt import PUBLISH_WINDOW
from edgekit.tasks import each_within
from edgeprotocol.messages import now as now_text
from edgeprotocol.notices import CaNotice, notice_topic, seal_notice

from .broker_revocations import BrokerRevocations
from .errors import RotationRefused
from .hub_cas import CaSet, StepRefused, begun, finished, load_ca_set, next_step, switched
from .identity import HubIdentity
from .store.enrollment import EnrollmentStore

logger = logging.getLogger(__name__)

STEPS = ("begin", "switch", "finish")
# Nodes a notice asks to act per second, spread out: at a switch each renews its certificate (a request,
# a signature and a revocation list written), so 10,000 nodes take about 8 minutes, 2 nodes a tenth of a second.
NOTICE_RATE_PER_SECOND = 20.0
# Node names a refusal or a status names at most (the count is always whole).
NAMED_NODES = 20

Publish = Callable[[str, bytes], Awaitable[bool]]
AfterStep = Callable[[CaSet], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class FleetByCa:
    """Which CA issued the certificate the store holds of each joined node (and of each dashboard credential)."""

    by_ca: dict[str, list[str]]  # CA fingerprint -> node names
    other: list[str]  # from no trusted CA (a retired one), or unreadable
    # Dashboard credentials (edgectl credentials create) whose certificate is not from the issuing CA.
    dashboards_behind: list[str] = field(default_factory=list)

    def not_from(self, fingerprint: str) -> list[str]:
        """The nodes whose certificate is not from the CA ``fingerprint``, by name."""
        return sorted([name for fp, names in self.by_ca.items() if fp != fingerprint for name in names] + self.other)


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMED_NODES])
    return shown + (f" and {len(names) - NAMED_NODES} more" if len(names) > NAMED_NODES else "")


class CaRotation:
    """The hub's CA rotation: its status and its steps (see the module). ``after_step`` callbacks run after a
    step is committed and the hub's identity holds the new set (the certificate keeper's check); each may say
    what it did in words."""

    def __init__(self, state_dir: Path, identity: HubIdentity, enrollment: EnrollmentStore,
                 revocations: BrokerRevocations, *,
                 publish: Publish, after_step: Sequence[AfterStep] = (),
                 before_notices: Callable[[], Awaitable[None]] | None = None) -> None:
        self._state_dir = state_dir
        self._identity = identity
        self._enrollment = enrollment
        self._revocations = revocations
        self._publish = publish
        self._after_step = list(after_step)
        self._before_notices = before_notices
        self._lock = asyncio.Lock()
        # The issuer of each node certificate already looked at, by the certificate's digest: a status of a
        # large fleet parses only what changed since the last one.
        self._issuers: dict[str, str] = {}

    # --- the fleet ---

    async def fleet(self) -> FleetByCa:
        """Which trusted CA issued each joined node's certificate, as the store holds it."""
        nodes = [(n.name, n.certificate) for n in await self._enrollment.list_nodes()
                 if n.standing == "joined" and n.certificate]
        dashboards = [(c.name, c.certificate) for c in await self._enrollment.list_credentials()]
        cas = self._identity.cas
        fleet = await asyncio.to_thread(self._classify, cas, nodes)
        held = await asyncio.to_thread(_issuers_of, cas, dashboards)
        behind = sorted(name for name, issuer in held.items() if issuer != cas.issuing.fingerprint)
        return FleetByCa(by_ca=fleet.by_ca, other=fleet.other, dashboards_behind=behind)

    def _classify(self, cas: CaSet, nodes: list[tuple[str, str]]) -> FleetByCa:
        by_ca: dict[str, list[str]] = {ca.fingerprint: [] for ca in cas.trusted}
        other: list[str] = []
        trusted = {ca.fingerprint for ca in cas.trusted}
        seen: dict[str, str] = {}
        for name, pem in nodes:
            digest = hashlib.sha256(pem.encode()).hexdigest()
            issuer = self._issuers.get(digest)
            if issuer is None or issuer not in trusted:
                try:
                    ca = cas.issuer_of(x509.load_pem_x509_certificate(pem.encode()))
                except ValueError:
                    ca = None
                issuer = ca.fingerprint if ca is not None else ""
            seen[digest] = issuer
            by_ca.get(issuer, other).append(name)
        self._issuers = seen  # only the certificates held now: the cache never outgrows the fleet
        return FleetByCa(by_ca=by_ca, other=other)

    # --- status ---

    async def status(self) -> dict[str, Any]:
        """The CAs (trusted and retired), which issues, the phase, and how many joined nodes hold a certificate
        of each: what ``edgehub ca status`` prints and ``GET /api/v1/ca/rotation`` answers."""
        cas = self._identity.cas
        fleet = await self.fleet()
        return ca_status(cas, fleet)

    # --- steps ---

    async def step(self, step: str, *, force: bool = False) -> dict[str, Any]:
        """Take ``step`` (begin, switch, finish) and put it in force; the status after it, with ``did``: what
        was done, line by line. RotationRefused (409) when the step cannot be taken now, saying why."""
        if step not in STEPS:
            raise RotationRefused(f"unknown step {step[:40]!r}: one of {', '.join(STEPS)}")
        async with self._lock:
            cas = self._identity.cas
            did: list[str] = []
            if step == "finish":
                fleet = await self.fleet()
                behind = fleet.not_from(cas.issuing.fingerprint)
                if behind and not force:
                    raise RotationRefused(
                        f"{len(behind)} joined node(s) still hold a certificate of the old CA: {_named(behind)}. "
                        "Each renews its certificate by itself once it is online (it was told to at the switch, "
                        "and checks at start); see 'edgehub ca status'. Retiring the old CA now (--force) shuts "
                        "them out of the broker until they renew: an agent of this version renews by itself "
                        "when it next connects, an older one must join again.")
                if behind:
                    did.append(f"forced: {len(behind)} node(s) still hold a certificate of the retired CA and are "
                               f"refused by the broker until they renew: {_named(behind)}")
            try:
                if step == "begin":
                    new = await asyncio.to_thread(begun, self._state_dir, cas)
                elif step == "switch":
                    new = await asyncio.to_thread(switched, self._state_dir, cas)
                else:
                    new = await asyncio.to_thread(finished, self._state_dir, cas)
            except StepRefused as exc:
                raise RotationRefused(str(exc)) from exc
            except OSError as exc:
                new = await self._after_failed_write(step, cas, exc)
            self._identity.replace_cas(new)
            did.insert(0, _step_words(step, cas, new))
            logger.warning("CA rotation: %s", did[0])
            did += await self._put_in_force(new)
        answer = await self.status()
        answer["did"] = did
        return answer

    async def _after_failed_write(self, step: str, before: CaSet, error: OSError) -> CaSet:
        """A step's files could not all be written (a full disk, a permission): the CA set on disk is the truth.
        If its commit (ca-set.json) was written, the step was taken and is put in force (the bundle is written
        again at the next start); else the hub runs on as before and RotationRefused says why."""
        logger.error("CA rotation: writing the %s step failed: %s", step, error)
        try:
            on_disk = await asyncio.to_thread(load_ca_set, self._state_dir, self._identity.key)
        except (OSError, ValueError) as exc:
            raise RotationRefused(f"the {step} step could not be written ({error}), and the CA files cannot be read "
                                  f"back ({exc}): the hub runs on with the CAs it has; fix the state directory "
                                  "and restart it") from exc
        if on_disk.generation > before.generation:
            return on_disk
        raise RotationRefused(f"the {step} step could not be written ({error}); nothing changed: fix the cause and "
                              "run it again") from error

    async def _put_in_force(self, cas: CaSet) -> list[str]:
        did = []
        if self._revocations.files is not None:
            await self._revocations.refresh(force=True)
            did.append(f"the broker's CAs ({self._revocations.files.ca_file}) and revocation lists written, and the "
                       "broker signalled to read them")
        else:
            did.append("the hub does not know the broker's files (no broker-files.json): give the broker "
                       f"{self._state_dir / 'hub-ca.crt'} as its cafile yourself, or run 'edgehub mosquitto-config' "
                       "again and restart it")
        for callback in self._after_step:
            try:
                what = await callback(cas)
            except Exception:  # logged; the keeper's timer tries again
                logger.exception("CA rotation: putting the step in force failed in %s", callback)
                did.append(f"{getattr(callback, '__name__', callback)} failed (see the hub's log); the hub's "
                           "certificate keeper tries again on its timer")
                continue
            if what:
                did.append(what)
        if cas.phase != "begun":  # from the switch on, the dashboards' own certificates are of the old CA
            dashboards = (await self.fleet()).dashboards_behind
            if dashboards:
                did.append(_dashboards_words(dashboards))
        if self._before_notices is not None:
            await self._before_notices()
        sent, online, nodes = await self.notify_nodes(cas)
        did.append(f"sent {sent} of {nodes} joined node(s) a notice to check their certificate and the hub's CAs "
                   f"now ({online} online; a node that is not checks when it comes back)")
        return did

    async def notify_nodes(self, cas: CaSet) -> tuple[int, int, int]:
        """Publish a signed notice to every joined node; (how many the broker took, how many are online, how many
        nodes). The broker takes a notice for a node that is away too, and drops it (not retained)."""
        nodes = [n for n in await self._enrollment.list_nodes(with_certificate=False)
                 if n.standing == "joined"]
        online = sum(1 for n in nodes if n.presence == "online")
        spread = round(len(nodes) / NOTICE_RATE_PER_SECOND, 1)
        at = now_text()

        async def tell(node: Any) -> bool:
            notice = CaNotice(node=node.name, generation=node.generation, ca_generation=cas.generation,
                              spread_seconds=spread, at=at)
            return await self._publish(notice_topic(node.name), seal_notice(notice, self._identity.key))

        sent = await each_within(nodes, tell, at_once=PUBLISH_WINDOW)
        return sent, online, len(nodes)


def _issuers_of(cas: CaSet, held: list[tuple[str, str]]) -> dict[str, str]:
    """The fingerprint of the trusted CA that issued each (name, PEM) ("" for none). Blocking (parsing)."""
    issuers = {}
    for name, pem in held:
        try:
            ca = cas.issuer_of(x509.load_pem_x509_certificate(pem.encode()))
        except ValueError:
            ca = None
        issuers[name] = ca.fingerprint if ca is not None else ""
    return issuers


def _dashboards_words(names: list[str]) -> str:
    return (f"{len(names)} dashboard credential(s) hold a certificate of a CA that does not issue: {_named(names)}. "
            "The broker refuses them once that CA is retired: issue each a new one (edgectl credentials revoke "
            "NAME, then edgectl credentials create --role dashboard --name NAME), whose ca.crt trusts every CA "
            "the hub does")


def _step_words(step: str, old: CaSet, new: CaSet) -> str:
    if step == "begin":
        added = new.trusted[-1]
        return (f"began: the new CA {added.name!r} (SHA-256 {added.fingerprint}) is trusted beside "
                f"{old.issuing.name!r}, which still issues")
    if step == "switch":
        return f"switched: {new.issuing.name!r} (SHA-256 {new.issuing.fingerprint}) issues every certificate now"
    retired = ", ".join(repr(ca.name) for ca in old.trusted if ca.fingerprint != new.issuing.fingerprint)
    return f"finished: {retired} retired; {new.issuing.name!r} is the hub's one CA"


def ca_status(cas: CaSet, fleet: FleetByCa | None) -> dict[str, Any]:
    """The CA set as data: each CA (trusted first, then retired) with whether it issues and, given the fleet,
    how many joined nodes hold a certificate of it. For ``edgehub ca status``, ``GET /api/v1/ca/rotation`` and
    the hub's description."""
    rows: list[dict[str, Any]] = []
    for ca in cas.trusted:
        certificate = ca.certificate
        rows.append({"sha256": ca.fingerprint, "name": ca.name, "state": "trusted",
                     "issuing": ca.fingerprint == cas.issuing.fingerprint,
                     "not_before": _iso(certificate.not_valid_before_utc),
                     "not_after": _iso(certificate.not_valid_after_utc),
                     "nodes": len(fleet.by_ca.get(ca.fingerprint, [])) if fleet else None})
    for retired in cas.retired:
        rows.append({"sha256": retired.fingerprint, "name": retired.name, "state": "retired", "issuing": False,
                     "retired_at": retired.retired_at, "nodes": None})
    answer: dict[str, Any] = {"phase": cas.phase, "generation": cas.generation, "issuing": cas.issuing.fingerprint,
                              "next": next_step(cas), "cas": rows}
    if fleet is not None:
        behind = fleet.not_from(cas.issuing.fingerprint)
        answer["nodes_to_renew"] = len(behind)
        answer["nodes_to_renew_named"] = behind[:NAMED_NODES]
        answer["nodes_of_no_trusted_ca"] = len(fleet.other)
        answer["dashboards_to_renew"] = fleet.dashboards_behind
    return answer


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


CA_ROTATION = web.AppKey("ca_rotation", CaRotation)
