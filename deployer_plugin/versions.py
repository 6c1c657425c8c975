"""Version constraints as Helm reads them (Masterminds/semver), checked with ``semantic_version``.

Two users: a chart's ``kubeVersion`` (:func:`deployer_plugin.charts.check_installable`)
and a chart repository reference's ``version`` (``^1.2``, ``>=1.0 <2``,
``1.2.x``, or an exact ``1.2.3``), which resolves to the highest version of
a repository's index that meets it, as ``helm install --version`` does.

Pure Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import semantic_version

# Helm's version constraints (Masterminds/semver) and npm's ranges, which
# semantic_version.NpmSpec parses, differ only in spelling: Masterminds also
# separates with commas, allows a space after the operator and a leading v,
# spells ~ as ~> too, and has !=. These are rewritten before NpmSpec reads them.
_SPACE_AFTER_OPERATOR = re.compile(r"(>=|<=|!=|=|>|<|~|\^)\s+(?=[0-9vVxX*])")
_LEADING_V = re.compile(r"(^|[\s<>=~^!])[vV](?=\d)")


def _alternatives(constraint: str) -> list[tuple[semantic_version.NpmSpec, list[semantic_version.NpmSpec]]]:
    """Each ``||`` alternative as (what must hold, what is excluded by ``!=``). Raises ValueError."""
    parsed = []
    for alternative in constraint.split("||"):
        text = _LEADING_V.sub(r"\1", _SPACE_AFTER_OPERATOR.sub(r"\1", alternative.replace("~>", "~")))
        tokens = text.replace(",", " ").split()
        excluded = [semantic_version.NpmSpec(token[2:]) for token in tokens if token.startswith("!=")]
        parsed.append((semantic_version.NpmSpec(" ".join(t for t in tokens if not t.startswith("!=")) or "*"),
                       excluded))
    return parsed


def _version(text: str) -> semantic_version.Version:
    return semantic_version.Version.coerce(text.strip().lstrip("vV"))


def satisfies(constraint: str, version: str) -> bool:
    """Whether ``version`` meets the Masterminds/semver ``constraint``.

    Raises:
        ValueError: if the constraint or the version cannot be parsed.
    """
    target = _version(version)
    return any(target in spec and not any(target in x for x in excluded)
               for spec, excluded in _alternatives(constraint))


def constraint_problem(constraint: str) -> str:
    """Why ``constraint`` is not a version or version constraint Helm reads; "" when it is one."""
    try:
        _alternatives(constraint)
    except ValueError as exc:
        return f"{constraint!r} is not a version (1.2.3) or a version constraint (^1.2, >=1.0 <2, 1.2.x): {exc}"
    return ""


def highest_match(constraint: str, versions: Iterable[str]) -> str | None:
    """The version of ``versions`` that meets ``constraint`` and is highest; None if none does.

    A version equal to the constraint as text wins outright (an index may hold
    a version that is not semver); versions that are not semver are skipped.
    """
    versions = list(versions)
    if constraint in versions:
        return constraint
    alternatives = _alternatives(constraint)
    best: tuple[semantic_version.Version, str] | None = None
    for text in versions:
        try:
            candidate = _version(text)
        except ValueError:
            continue
        allowed = any(candidate in spec and not any(candidate in x for x in excluded)
                      for spec, excluded in alternatives)
        if allowed and (best is None or candidate > best[0]):
            best = (candidate, text)
    return best[1] if best else None
