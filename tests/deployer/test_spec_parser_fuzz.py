"""The component spec parser, fed arbitrary documents, either returns a Component or raises SpecError
naming a field: no other exception escapes (property-based, hypothesis)."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer_plugin import SpecError, parse_component

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True), st.text(max_size=16))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=10), inner, max_size=3)),
                      max_leaves=10)
EDGE_KEYS = ["nodePools", "nodeSelector", "poolValues", "matchLabels", "matchExpressions", "key", "operator",
             "values", "rollout"]
edge = st.dictionaries(st.sampled_from(EDGE_KEYS), values, max_size=4)
specs = st.fixed_dictionaries(
    {},
    optional={"chart": st.one_of(st.just("./chart"), values), "values": values, "edge": st.one_of(edge, values),
              "historyLimit": values},
)
documents = st.fixed_dictionaries(
    {},
    optional={"apiVersion": st.one_of(st.just("edgecollab.io/v1alpha1"), values),
              "kind": st.one_of(st.just("Component"), values),
              "metadata": st.one_of(st.fixed_dictionaries({}, optional={"name": st.one_of(st.just("web"), values),
                                                                         "namespace": values}), values),
              "spec": st.one_of(specs, values)},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=st.one_of(documents, values))
def test_any_document_parses_or_raises_spec_error_naming_a_field(document: object):
    before = copy.deepcopy(document)
    try:
        parse_component(document)  # type: ignore[arg-type]  # any document at all, on purpose
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    assert repr(document) == repr(before)  # the parser never changes what it is given (repr: NaN != NaN)
