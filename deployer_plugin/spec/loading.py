"""Spec files: reading one YAML (or JSON) document, and packaging its local chart for ``edgectl apply -f``.

Everything here is pure Python except :func:`load_component_file`, which packages a local chart with
the Helm engine and so blocks (see :mod:`deployer_plugin.charts`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ChartError, SpecError
from ..yaml_aliases import ALIASES_REFUSED, first_alias_line
from .model import Component
from .validation import kind_of, parse_component


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML without timestamps (a date stays text, as Helm's values do) and
    with duplicate keys refused (PyYAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            if isinstance(key, str):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_component_document(text: str, *, source: str) -> dict[str, Any]:
    """The single YAML (or JSON) document of a spec file's text.

    Raises:
        SpecError: if the text is not YAML, holds an alias (refused before
            anything is built: see :mod:`deployer_plugin.yaml_aliases`), or
            holds no document or several.
    """
    stream = io.StringIO(text)
    stream.name = source  # so YAML errors name the file, not "<unicode string>"
    try:
        alias_line = first_alias_line(text, name=source)
        if alias_line is not None:
            raise SpecError(ALIASES_REFUSED, source=f"{source} line {alias_line}")
        documents = [d for d in yaml.load_all(stream, Loader=_SpecLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", source=source) from exc
    if not documents:
        raise SpecError("holds no document; expected one Component", source=source)
    if len(documents) > 1:
        raise SpecError(f"holds {len(documents)} documents; put one Component per file", source=source)
    if not isinstance(documents[0], dict):
        raise SpecError(f"a Component must be a mapping, not {kind_of(documents[0])}", source=source)
    return documents[0]


def resolve_chart_path(component: Component, spec_file: str | os.PathLike[str]) -> Path:
    """The chart's absolute path: ``chart_ref`` taken relative to the spec file's directory.

    Raises:
        ValueError: if the component's chart is not a local one.
    """
    if not isinstance(component.chart_ref, str):
        raise ValueError(f"the chart of {component.namespace}/{component.name} is not a local path")
    ref = Path(component.chart_ref)
    base = Path(os.path.abspath(spec_file)).parent
    return Path(os.path.normpath(ref if ref.is_absolute() else base / ref))


def load_component_file(path: str | os.PathLike[str]) -> tuple[Component, bytes | None]:
    """Read a spec file and package its chart; for ``edgectl apply -f``.

    Returns the Component and its local chart packaged as ``.tgz`` bytes,
    ready to send to a hub that does not share this filesystem; None instead
    of bytes when the chart is in a chart repository or an OCI registry (the
    hub fetches it). Blocks on file I/O and the Helm engine.

    Raises:
        SpecError: the file is unreadable, not one YAML document, or not a
            valid Component.
        ChartError: the chart is missing or is not a Helm chart.
    """
    # Imported here: charts needs the Helm engine, the rest of this module does not.
    from ..charts import package_chart

    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the spec file: {exc.strerror or exc}", source=source) from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"the spec file is not UTF-8 text ({exc.reason})", source=source) from exc
    component = parse_component(read_component_document(text, source=source), source=source)
    if component.remote_chart is not None:
        return component, None

    chart_path = resolve_chart_path(component, path)
    what = "chart archive" if chart_path.name.endswith((".tgz", ".tar.gz")) else "chart directory"
    if not chart_path.exists():
        raise ChartError(f"spec.chart: {what} {component.chart_ref} not found (resolved to {chart_path})",
                         source=source)
    try:
        archive = package_chart(chart_path)
    except ChartError as exc:
        raise ChartError(
            f"spec.chart: {component.chart_ref} is not a Helm chart: {exc.detail} (resolved to {chart_path})",
            source=source,
        ) from exc
    return component, archive
