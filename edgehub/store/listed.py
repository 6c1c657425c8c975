"""Fleet-wide listings that read only what changed since the last one.

Every read of a component or of the fleet lists every node and every
assignment: at ten thousand nodes, reading and rebuilding 20,000 rows is a
tenth of a second, many times a second while a rollout is watched. Yet
between two listings only the nodes that reported since have changed.

``ByNode`` keeps what a listing read, by node name, and the names written
since. It lives on the store's one database thread (``edgekit.sql.OnOneThread``),
where writes and reads already run one after another: a write marks the
nodes it touched inside its own transaction, and the next listing reads
those rows again and no others. Because marking and reading share that
thread, a listing that starts after a write's transaction sees the write,
whoever awaits what. A write that does not say which nodes it touched
(``ANY_ROWS``) marks the whole table, and the next listing reads it all.
The writes a rollout makes by the thousand (a node's status, its presence)
change the entry they know instead (``revise``), so a fleet that reports
needs no reads at all.

What this assumes: every write to the database goes through this process's
store. That holds for the embedded SQLite file, which one hub owns. Several
hubs may share one PostgreSQL database, so there (``only_writer=False``)
every listing reads every row, as before, and still reuses the records of
unchanged rows; reading only what changed would need a change feed from the
database (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Past this share of the held rows marked, one read of the whole table is cheaper than reading them by name.
FULL_READ_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Touches:
    """Which rows a write may change: the ``nodes`` rows and the assignments of the nodes named
    (None: any, the safe answer for a write that cannot say)."""

    nodes: frozenset[str] | None = None
    assignments_of: frozenset[str] | None = None

    @classmethod
    def of(cls, *, nodes: Iterable[str] = (), assignments_of: Iterable[str] = ()) -> Touches:
        return cls(nodes=frozenset(nodes), assignments_of=frozenset(assignments_of))


# A write that cannot say what it changed; and one that changes neither nodes nor assignments.
ANY_ROWS = Touches()
NO_ROWS = Touches.of()


class ByNode(Generic[T]):
    """What the last listing read of each node (its row, or its assignments), and the nodes written since.
    Only ever used on the database's thread."""

    def __init__(self, *, only_writer: bool) -> None:
        # False: others write the database too, so every listing reads it all.
        self._only_writer = only_writer
        self._held: dict[str, T] = {}
        self._read_all = True
        self._stale: set[str] = set()
        self._order: list[str] | None = None  # held names, sorted; None when they changed

    def touch(self, names: frozenset[str] | None) -> None:
        """A write changed these nodes' rows (None: any)."""
        if names is None:
            self._read_all = True
        else:
            self._stale |= names

    def revise(self, name: str, change: Callable[[T], T]) -> None:
        """A write changed this node's row in a way ``change`` knows (the report it stored): the entry held is
        changed rather than read again. A node not held, or one waiting to be read anyway, is marked."""
        held = self._held.get(name)
        if held is None or self._read_all or name in self._stale or not self._only_writer:
            self._stale.add(name)
        else:
            self._held[name] = change(held)

    def refresh(self, read_all: Callable[[dict[str, T]], dict[str, T]],
                read_some: Callable[[list[str]], dict[str, T]]) -> list[T]:
        """Every node's entry, in name order: ``read_all(previous entries)`` when a write did not say what it
        touched or much changed, else ``read_some(names)`` for the nodes written since (a name it does not
        return is gone)."""
        held = self._held
        if self._read_all or not self._only_writer or len(self._stale) > FULL_READ_SHARE * max(1, len(held)):
            self._held, self._order = read_all(held), None
        elif self._stale:
            names = sorted(self._stale)
            found = read_some(names)
            for name in names:
                if name in found:
                    if name not in held:
                        self._order = None
                    held[name] = found[name]
                elif held.pop(name, None) is not None:
                    self._order = None
        self._read_all, self._stale = False, set()
        if self._order is None:
            self._order = sorted(self._held)
        return [self._held[name] for name in self._order]
