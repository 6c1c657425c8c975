"""Errors the deployer plugin raises on purpose.

EdgeError                  (edgeprotocol.errors)
  SpecError                a Component spec that cannot be deployed; names the field
    ChartError             the chart is missing, is not a Helm chart, or is a bad archive
      ChartRefused         Helm would refuse to install it: a dependency missing from
                           charts/, or a kubeVersion the engine's Kubernetes does not meet
    RenderError            values break the chart's schema, a template fails, or it
                           renders something that is not a Kubernetes object

Helm's own errors (``helm_python.HelmError``) never leave this package: they
are translated here and chained (``raise ... from exc``) so the cause stays
in the traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeprotocol.errors import EdgeError


class SpecError(EdgeError):
    """A Component spec that cannot be deployed.

    Every problem is one line that starts with the path of the field at fault
    (``spec.edge.nodePool: unknown field (did you mean nodePools?)``).
    Validation collects every problem it finds, so one error may carry
    several; ``problems`` holds them in document order and ``str()`` shows
    them all, one per line. ``source`` names where the spec came from (a file
    path) when that is known.
    """

    def __init__(self, problems: str | Iterable[str], *, source: str | None = None) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        if not self.problems:
            raise ValueError("a SpecError needs at least one problem")
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return prefix + self.problems[0]
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        return f"{prefix}{len(self.problems)} problems:\n{lines}"


class ChartError(SpecError):
    """The chart a spec points at is missing, is not a Helm chart, or is a bad archive.

    ``detail`` is the underlying reason (Helm's message, say) without the
    path, so a caller can restate the problem in its own terms.
    """

    def __init__(self, problems: str | Iterable[str], *, source: str | None = None, detail: str = "") -> None:
        super().__init__(problems, source=source)
        self.detail = detail or self.problems[0]


class ChartRefused(ChartError):
    """A chart Helm loads but refuses to install, for the reason ``detail`` gives in Helm's words.

    ``found in Chart.yaml, but missing in charts/ directory: redis`` or
    ``chart requires kubeVersion: >=1.40.0-0 which is incompatible with Kubernetes v1.36.0``.
    """


class RenderError(SpecError):
    """Helm refused to render a component: a schema violation, a template error, or
    a rendered document that is not a Kubernetes object (no mapping, no apiVersion or kind).

    ``component`` is ``namespace/name``, ``pool`` the render key that failed
    (``""`` for the base values) and ``detail`` Helm's own message.
    """

    def __init__(self, *, component: str, pool: str, detail: str, what: str) -> None:
        self.component = component
        self.pool = pool
        self.detail = detail.strip()
        where = f"component {component}" if component else "render"
        if pool:
            where += f" (poolValues of pool {pool})"
        super().__init__(f"{where}: {what}: {self.detail}")
