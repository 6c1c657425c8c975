"""Rendering in a worker process: Helm's output is bounded, and every refusal crosses the process boundary intact."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from deployer_plugin import ChartError, ChartRefused, RenderError, SpecError, parse_component, render_release
from deployer_plugin.render import portable_error, rebuilt_error


def test_helms_output_over_the_bound_is_refused_before_it_is_parsed(doc: dict[str, Any], good_archive: bytes):
    component = parse_component(doc)
    rendered = render_release(component, good_archive, revision=1)
    size = len(rendered.bundles[""].manifests)
    with pytest.raises(RenderError, match=r"the rendered output is over the bound: Helm printed \d+ bytes; "
                                          r"the bound is 1024 bytes \(0 MiB\)"):
        render_release(component, good_archive, revision=1, max_output_bytes=1024)
    # Every render key counts towards the one bound: the base render alone fits, not with shanghai's.
    with pytest.raises(RenderError, match="poolValues of pool shanghai"):
        render_release(component, good_archive, revision=1, max_output_bytes=size + size // 2 + 200)
    assert render_release(component, good_archive, revision=1, max_output_bytes=10 * size).bundles == rendered.bundles


@pytest.mark.parametrize("error", [
    SpecError(["spec.chart: missing", "spec.values: not a mapping"], source="web.yaml"),
    ChartError("chart: not a chart", detail="gzip: invalid header"),
    ChartRefused("chart needs-dependency: found in Chart.yaml, but missing in charts/ directory: cache"),
    RenderError(component="demo/web", pool="shanghai", detail="boom", what="template error"),
])
def test_a_refusal_crosses_a_process_boundary_with_its_class_message_and_fields(error: SpecError):
    again = rebuilt_error(*pickle.loads(pickle.dumps(portable_error(error))))
    assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
    assert again.problems == error.problems
