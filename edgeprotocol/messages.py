"""Message schemas of protocol version 1, with encoding and validation.

Every message is a JSON object with ``"v": 1``. Assignments travel inside a
signed envelope (see :mod:`edgeprotocol.signing`); everything a node sends is
plain JSON. ``docs/protocol.md`` is the prose version of this module.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from . import bundle_crypto
from .errors import DecryptionError, ProtocolError
from .topics import check_name

if TYPE_CHECKING:
    from nacl.public import PrivateKey, PublicKey

VERSION = 1

# An MQTT message larger than this is refused before it is parsed. Rendered
# releases compress well; 4 MiB leaves room for large charts while keeping a
# hostile publisher from filling an agent's memory.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A bundle that inflates past this is refused (a compression bomb).
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
# The largest signed assignment the hub can publish, from the bundle bound: the broker's packet limit
# (edgehub.broker_config) must let it through, since the broker disconnects a client that sends more.
# The worst bundle does not compress at all: gzip then stores it (zlib's bound is about 5 bytes per
# 16 KiB, 0.03%; a tenth of a percent is counted, plus the header and trailer), encryption adds a nonce
# and a tag (28 bytes), base64 makes 4 bytes of every 3, and the rest of the body and the envelope (names,
# chart reference, the wrapped content key, the signature) is well under the 64 KiB counted for it.
_LARGEST_PACKED_BUNDLE = MAX_BUNDLE_BYTES + MAX_BUNDLE_BYTES // 1000 + 64
MAX_ASSIGNMENT_BYTES = 4 * -(-(_LARGEST_PACKED_BUNDLE + 28) // 3) + 64 * 1024

Phase = Literal["Pending", "Applying", "Deployed", "Failed", "Degraded", "Removing", "Removed"]
PHASES: tuple[Phase, ...] = get_args(Phase)
AssignmentKind = Literal["release", "tombstone"]
PresenceState = Literal["online", "offline"]
# A node's own health, as Kubernetes node conditions: RuntimeReady (the
# container runtime can run pods) and StorageReady (its storage is writable),
# which together say whether the node is ready; and ClockSynchronized, reported
# False (with the offset) only when the node's clock is off from the hub's by
# more than a minute: the agent corrects for it, so it is a warning, not a
# reason the node cannot run pods.
ConditionType = Literal["RuntimeReady", "StorageReady", "ClockSynchronized"]
CONDITION_TYPES: tuple[ConditionType, ...] = get_args(ConditionType)
# The conditions that say whether a node can run pods (its "ready").
READINESS_CONDITIONS: tuple[ConditionType, ...] = ("RuntimeReady", "StorageReady")
ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_STATUSES: tuple[str, ...] = get_args(ConditionStatus)
# A condition's message is for people; longer ones are cut so a verbose tool
# error cannot bloat every status report.
MAX_CONDITION_MESSAGE = 1000

# A container's health in the kubelet's words. ``state`` is what it is doing
# now; ``reason`` why it waits (CrashLoopBackOff: restarted again and again,
# waiting out its back-off; ErrImagePull/ImagePullBackOff: its image is not on
# the node and cannot be pulled; CreateContainerConfigError/CreateContainerError:
# the runtime refused to create it) or, while it runs or once it terminated,
# how it last terminated (Error, OOMKilled, Completed).
ContainerState = Literal["running", "waiting", "terminated"]
CONTAINER_STATES: tuple[ContainerState, ...] = get_args(ContainerState)
# Reasons no waiting makes right: the health gate fails a node on them as soon as it hears them.
FAILING_REASONS: tuple[str, ...] = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "OOMKilled",
                                    "CreateContainerConfigError", "CreateContainerError")
# The last lines of a container's log that a status carries, and how many
# pods and containers of one release it details: enough to say why, bounded so
# a chatty container or a large release cannot bloat every report.
MAX_LAST_LOG = 200
MAX_PODS_DETAILED = 50
MAX_CONTAINERS_DETAILED = 16


def now() -> str:
    """The current time as an RFC 3339 UTC string, the protocol's time format."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def manifest_digest(manifests: str) -> str:
    return "sha256:" + hashlib.sha256(manifests.encode()).hexdigest()


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ProtocolError(f"{where}: field {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{where}: field {key!r} has the wrong type {type(value).__name__}")
    return value


def _optional_list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    return _require(data, key, list, where) if key in data else []


def _optional_int(data: dict[str, Any], key: str, where: str, default: int = 0) -> int:
    return _require(data, key, int, where) if data.get(key) is not None else default


def _count(data: dict[str, Any], key: str, where: str) -> int:
    value = _optional_int(data, key, where)
    if value < 0:
        raise ProtocolError(f"{where}: {key} {value} is below 0")
    return value


def _optional_str(data: dict[str, Any], key: str, where: str) -> str:
    return _require(data, key, str, where) if data.get(key) is not None else ""


def _name(data: dict[str, Any], key: str, where: str) -> str:
    value = _require(data, key, str, where)
    try:
        return check_name(value, f"{where}: {key}")
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


def _check_version(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: a JSON object was expected")
    if data.get("v") != VERSION:
        raise ProtocolError(f"{where}: protocol version {data.get('v')!r} is not {VERSION}")
    return data


def decode_json(payload: bytes | str, where: str) -> dict[str, Any]:
    """Parse a payload into a JSON object of this protocol version, with size limits."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{where}: message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{where}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ProtocolError(f"{where}: JSON nested too deeply") from exc
    return _check_version(data, where)


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def _flat(message: Any) -> dict[str, Any]:
    """A message's fields, one level deep. (``dataclasses.asdict`` deep-copies every value, strings
    included: at a fleet's rollout the hub and every agent encode a status per node.)"""
    kind: type = type(message)
    return {name: getattr(message, name) for name in _field_names(kind)}


def encode_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Bundle:
    """A release's rendered manifests (multi-document YAML) and their digest.

    On the wire a bundle is either plain (``gzip+base64`` with its digest) or
    encrypted to the node it is for (see :mod:`edgeprotocol.bundle_crypto`).
    """

    manifests: str
    digest: str
    # Made on first use and then shared: a render the hub sends to every node
    # of a pool is compressed once, and encrypted once (only the content key's
    # wrap is made per node). Nothing may change them.
    _packed: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _wire: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)
    _encrypted: bundle_crypto.EncryptedContent | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, manifests: str) -> Bundle:
        return cls(manifests=manifests, digest=manifest_digest(manifests))

    def packed(self) -> bytes:
        """The manifests, gzip-compressed (once)."""
        packed = self._packed
        if packed is None:
            packed = gzip.compress(self.manifests.encode(), mtime=0)
            object.__setattr__(self, "_packed", packed)
        return packed

    def to_wire(self, to: PublicKey | None = None) -> dict[str, Any]:
        """The wire form: encrypted to the node whose bundle key is ``to``, else plain (and cached)."""
        if to is not None:
            encrypted = self._encrypted
            if encrypted is None:
                encrypted = bundle_crypto.encrypt(self.packed())
                object.__setattr__(self, "_encrypted", encrypted)
            return encrypted.to_wire(to)
        wire = self._wire
        if wire is None:
            packed = base64.b64encode(self.packed()).decode()
            wire = {"encoding": "gzip+base64", "data": packed, "digest": self.digest}
            object.__setattr__(self, "_wire", wire)
        return wire

    @classmethod
    def from_wire(cls, data: Any, where: str, key: PrivateKey | None = None) -> Bundle:
        """Decode a wire bundle; an encrypted one is opened with the node's bundle ``key``."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: bundle must be an object")
        encoding = data.get("encoding")
        digest: str | None = None
        if encoding == bundle_crypto.ENCODING:
            if key is None:
                raise DecryptionError(f"{where}: bundle is encrypted to a node bundle key, but this node has none "
                                      "(it joined before bundles were encrypted): join it again")
            packed = bundle_crypto.decrypt(data, key, where)
        elif encoding == "gzip+base64":
            digest = _require(data, "digest", str, where)
            try:
                packed = base64.b64decode(_require(data, "data", str, where), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError(f"{where}: bundle data is corrupt ({exc})") from exc
        else:
            raise ProtocolError(f"{where}: bundle encoding {encoding!r} is not gzip+base64 or {bundle_crypto.ENCODING}")
        try:
            inflater = zlib.decompressobj(wbits=31)
            raw = inflater.decompress(packed, MAX_BUNDLE_BYTES + 1)
        except zlib.error as exc:
            raise ProtocolError(f"{where}: bundle data is corrupt ({exc})") from exc
        if len(raw) > MAX_BUNDLE_BYTES:
            raise ProtocolError(f"{where}: bundle inflates past {MAX_BUNDLE_BYTES} bytes")
        try:
            manifests = raw.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{where}: bundle is not UTF-8 text ({exc})") from exc
        if digest is None:
            return cls.of(manifests)  # encrypted: authenticated by its AEAD and the signature, digest made here
        if manifest_digest(manifests) != digest:
            raise ProtocolError(f"{where}: bundle digest does not match its content")
        return cls(manifests=manifests, digest=digest)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What the hub wants one node to run for one release, at one revision.

    A ``tombstone`` assignment tells the node to remove the release; it carries
    a revision higher than the last one installed so ordering rules still hold.
    ``generation`` is the node's join generation the hub sealed it for (it
    grows with every accepted join of the name; 0 for a node that joined
    before generations existed): a node refuses an assignment of another
    generation than its own, so one captured before a re-join cannot be
    replayed after it.
    """

    node: str
    namespace: str
    release: str
    revision: int
    kind: AssignmentKind
    issued_at: str
    pool: str = ""
    chart: dict[str, str] = field(default_factory=dict)
    bundle: Bundle | None = None
    generation: int = 0

    def __post_init__(self) -> None:
        for key in ("node", "namespace", "release"):
            check_name(getattr(self, key), key)
        if self.revision < 1:
            raise ValueError(f"revision must be at least 1, not {self.revision}")
        if self.generation < 0:
            raise ValueError(f"generation must be at least 0, not {self.generation}")
        if self.kind == "release" and self.bundle is None:
            raise ValueError("a release assignment needs a bundle")
        if self.kind == "tombstone" and self.bundle is not None:
            raise ValueError("a tombstone carries no bundle")

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.release)

    def to_body(self, bundle_to: PublicKey | None = None) -> dict[str, Any]:
        """The body to sign; with ``bundle_to`` (the node's bundle key) the bundle is encrypted to it."""
        body: dict[str, Any] = {
            "v": VERSION,
            "type": "assignment",
            "kind": self.kind,
            "node": self.node,
            "namespace": self.namespace,
            "release": self.release,
            "revision": self.revision,
            "generation": self.generation,
            "issued_at": self.issued_at,
            "pool": self.pool,
            "chart": dict(self.chart),
        }
        if self.bundle is not None:
            body["bundle"] = self.bundle.to_wire(bundle_to)
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], *, bundle_key: PrivateKey | None = None) -> Assignment:
        """Decode a (verified) body; an encrypted bundle is opened with the node's ``bundle_key``."""
        where = "assignment"
        _check_version(body, where)
        if body.get("type") != "assignment":
            raise ProtocolError(f"{where}: type {body.get('type')!r} is not 'assignment'")
        kind = _require(body, "kind", str, where)
        if kind not in get_args(AssignmentKind):
            raise ProtocolError(f"{where}: kind {kind!r} is not one of {get_args(AssignmentKind)}")
        revision = _require(body, "revision", int, where)
        if revision < 1:
            raise ProtocolError(f"{where}: revision {revision} is below 1")
        # Absent in what a hub older than join generations signed: generation 0.
        generation = _optional_int(body, "generation", where)
        if generation < 0:
            raise ProtocolError(f"{where}: generation {generation} is below 0")
        chart = body.get("chart", {})
        if not isinstance(chart, dict) or not all(isinstance(v, str) for v in chart.values()):
            raise ProtocolError(f"{where}: chart must be an object of strings")
        bundle = Bundle.from_wire(body["bundle"], where, bundle_key) if "bundle" in body else None
        if (kind == "release") != (bundle is not None):
            raise ProtocolError(f"{where}: a {kind} assignment {'needs' if bundle is None else 'carries no'} bundle")
        return cls(
            node=_name(body, "node", where),
            namespace=_name(body, "namespace", where),
            release=_name(body, "release", where),
            revision=revision,
            kind=kind,
            issued_at=_require(body, "issued_at", str, where),
            pool=_optional_str(body, "pool", where),
            chart=chart,
            bundle=bundle,
            generation=generation,
        )


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    """One container of a pod, as the kubelet would show it (see ``ContainerState``).

    ``reason`` is why it waits (``state`` waiting) or how it terminated
    (``state`` terminated); ``last_reason``, ``exit_code`` and ``finished_at``
    are of its last termination (Error, OOMKilled or Completed; "", None and ""
    before one), as Kubernetes' ``lastState.terminated``. ``restarts`` counts
    restarts since the pod was created (the runtime's and the agent's, liveness
    probes included); ``last_log`` holds the last lines it wrote before it last
    terminated, cut to ``MAX_LAST_LOG``.
    """

    name: str
    ready: bool = False
    restarts: int = 0
    state: ContainerState = "running"
    reason: str = ""
    exit_code: int | None = None
    last_reason: str = ""
    finished_at: str = ""
    last_log: str = ""

    def __post_init__(self) -> None:
        if self.state not in CONTAINER_STATES:
            raise ValueError(f"container state {self.state!r} is not one of {CONTAINER_STATES}")
        if len(self.last_log) > MAX_LAST_LOG:
            object.__setattr__(self, "last_log", "…" + self.last_log[-(MAX_LAST_LOG - 1):])

    def to_dict(self) -> dict[str, Any]:
        return _flat(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ContainerStatus:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: each container status must be an object")
        state = _optional_str(data, "state", where) or "running"
        if state not in CONTAINER_STATES:
            raise ProtocolError(f"{where}: state {state!r} is not one of {CONTAINER_STATES}")
        exit_code = data.get("exit_code")
        if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)):
            raise ProtocolError(f"{where}: field 'exit_code' has the wrong type {type(exit_code).__name__}")
        ready = data.get("ready", False)
        if not isinstance(ready, bool):
            raise ProtocolError(f"{where}: field 'ready' has the wrong type {type(ready).__name__}")
        return cls(name=_require(data, "name", str, where)[:253], ready=ready, restarts=_count(data, "restarts", where),
                   state=state,
                   reason=_optional_str(data, "reason", where)[:64], exit_code=exit_code,
                   last_reason=_optional_str(data, "last_reason", where)[:64],
                   finished_at=_optional_str(data, "finished_at", where)[:64],
                   last_log=_optional_str(data, "last_log", where))


@dataclass(frozen=True, slots=True)
class PodStatus:
    """One pod of a release and its containers (at most ``MAX_CONTAINERS_DETAILED``)."""

    name: str
    containers: tuple[ContainerStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "containers": [c.to_dict() for c in self.containers]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PodStatus:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: each pod status must be an object")
        containers = _optional_list(data, "containers", where)[:MAX_CONTAINERS_DETAILED]
        return cls(name=_require(data, "name", str, where)[:253],
                   containers=tuple(ContainerStatus.from_dict(c, f"{where}.containers[{i}]")
                                    for i, c in enumerate(containers)))


@dataclass(frozen=True, slots=True)
class ReleaseStatus:
    """What a node reports of one release.

    ``reason`` is the release's health in one word when it is not healthy
    (a container's ``FAILING_REASONS`` word, or another waiting reason), and
    ``restarts`` the sum of its containers' restarts: the health gate restarts
    a node's clock when it grows. ``pods`` details each pod's containers
    (agents before this send none).
    """

    namespace: str
    release: str
    desired_revision: int
    applied_revision: int
    phase: Phase
    message: str = ""
    ready: int = 0
    total: int = 0
    observed_at: str = ""
    reason: str = ""
    restarts: int = 0
    pods: tuple[PodStatus, ...] = ()

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r} is not one of {PHASES}")

    def to_dict(self) -> dict[str, Any]:
        data = _flat(self)
        data["pods"] = [p.to_dict() for p in self.pods]
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ReleaseStatus:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: each release status must be an object")
        phase = _require(data, "phase", str, where)
        if phase not in PHASES:
            raise ProtocolError(f"{where}: phase {phase!r} is not one of {PHASES}")
        pods = _optional_list(data, "pods", where)[:MAX_PODS_DETAILED]
        return cls(
            namespace=_name(data, "namespace", where),
            release=_name(data, "release", where),
            desired_revision=_require(data, "desired_revision", int, where),
            applied_revision=_require(data, "applied_revision", int, where),
            phase=phase,
            message=_optional_str(data, "message", where),
            ready=_optional_int(data, "ready", where),
            total=_optional_int(data, "total", where),
            observed_at=_optional_str(data, "observed_at", where),
            reason=_optional_str(data, "reason", where)[:64],
            restarts=_count(data, "restarts", where),
            pods=tuple(PodStatus.from_dict(p, f"{where}.pods[{i}]") for i, p in enumerate(pods)),
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """One aspect of a node's health: ``status`` "True" means healthy.

    ``reason`` is a CamelCase word for machines (``PodCreateFailed``),
    ``message`` says what failed and what to do, ``since`` is when ``status``
    last changed (RFC 3339).
    """

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""
    since: str = ""

    def __post_init__(self) -> None:
        if self.type not in CONDITION_TYPES:
            raise ValueError(f"condition type {self.type!r} is not one of {CONDITION_TYPES}")
        if self.status not in CONDITION_STATUSES:
            raise ValueError(f"condition status {self.status!r} is not one of {CONDITION_STATUSES}")
        if len(self.message) > MAX_CONDITION_MESSAGE:
            object.__setattr__(self, "message", self.message[: MAX_CONDITION_MESSAGE - 1] + "…")

    @property
    def ok(self) -> bool:
        return self.status == "True"

    def to_dict(self) -> dict[str, str]:
        return _flat(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Condition:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: each condition must be an object")
        kind = _require(data, "type", str, where)
        status = _require(data, "status", str, where)
        try:
            return cls(type=kind, status=status,
                       reason=_require(data, "reason", str, where), message=_optional_str(data, "message", where),
                       since=_optional_str(data, "since", where))
        except ValueError as exc:
            raise ProtocolError(f"{where}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node's full report: every release it holds, with a sequence number.

    ``seq`` grows with every report a node sends, across agent restarts, so the
    hub can drop a report older than one it already has.
    """

    node: str
    seq: int
    observed_at: str
    releases: tuple[ReleaseStatus, ...]
    agent_version: str = ""
    runtime: str = ""
    conditions: tuple[Condition, ...] = ()
    # Events waiting in the agent's persisted outbox (not yet acknowledged by the broker).
    outbox: int = 0

    def encode(self) -> bytes:
        data = _flat(self)
        data["v"] = VERSION
        data["releases"] = [r.to_dict() for r in self.releases]
        data["conditions"] = [c.to_dict() for c in self.conditions]
        return encode_json(data)

    @classmethod
    def decode(cls, payload: bytes | str) -> NodeStatus:
        where = "status"
        data = decode_json(payload, where)
        releases = _require(data, "releases", list, where)
        return cls(
            node=_name(data, "node", where),
            seq=_require(data, "seq", int, where),
            observed_at=_require(data, "observed_at", str, where),
            releases=tuple(ReleaseStatus.from_dict(r, f"{where}.releases[{i}]") for i, r in enumerate(releases)),
            agent_version=_optional_str(data, "agent_version", where),
            runtime=_optional_str(data, "runtime", where),
            # Optional: agents before conditions existed send none.
            conditions=tuple(Condition.from_dict(c, f"{where}.conditions[{i}]")
                             for i, c in enumerate(_optional_list(data, "conditions", where))),
            outbox=_count(data, "outbox", where),
        )


@dataclass(frozen=True, slots=True)
class Presence:
    """``online`` when a node connects; the broker's last will says ``offline``."""

    node: str
    state: PresenceState
    at: str = ""

    def encode(self) -> bytes:
        return encode_json({"v": VERSION, "node": self.node, "state": self.state, "at": self.at})

    @classmethod
    def decode(cls, payload: bytes | str) -> Presence:
        where = "presence"
        data = decode_json(payload, where)
        state = _require(data, "state", str, where)
        if state not in get_args(PresenceState):
            raise ProtocolError(f"{where}: state {state!r} is not online or offline")
        return cls(node=_name(data, "node", where), state=state, at=_optional_str(data, "at", where))


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened on a node, in order (``seq`` grows by one each)."""

    node: str
    seq: int
    at: str
    reason: str
    message: str
    namespace: str = ""
    release: str = ""
    revision: int = 0

    def encode(self) -> bytes:
        data = _flat(self)
        data["v"] = VERSION
        return encode_json(data)

    @classmethod
    def decode(cls, payload: bytes | str) -> Event:
        where = "event"
        data = decode_json(payload, where)
        return cls(
            node=_name(data, "node", where),
            seq=_require(data, "seq", int, where),
            at=_require(data, "at", str, where),
            reason=_require(data, "reason", str, where),
            message=_optional_str(data, "message", where),
            namespace=_optional_str(data, "namespace", where),
            release=_optional_str(data, "release", where),
            revision=_optional_int(data, "revision", where),
        )


@dataclass(frozen=True, slots=True)
class Resync:
    """Sent by a node on connect: the revision it holds of every release.

    The hub answers by re-publishing every assignment that is newer than what
    the node holds or that the node lacks.
    """

    node: str
    held: dict[str, int]  # "namespace/release" -> revision

    def encode(self) -> bytes:
        return encode_json({"v": VERSION, "node": self.node, "held": self.held})

    @classmethod
    def decode(cls, payload: bytes | str) -> Resync:
        where = "resync"
        data = decode_json(payload, where)
        held = _require(data, "held", dict, where)
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in held.items()):
            raise ProtocolError(f"{where}: held must map 'namespace/release' to a revision")
        return cls(node=_name(data, "node", where), held=held)
