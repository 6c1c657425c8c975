"""YAML that people or other servers write is read only without aliases.

An alias (``*name``) stands for its anchor's whole subtree, so nine nested
levels of ten aliases, about 500 bytes, stand for a billion values: PyYAML
builds them shared, in little memory, but the first thing that walks the
result (the spec's validation, ``json.dumps``, ``str()``) walks every one of
them. ``edgectl apply -f`` of such a file spent more than a minute in the
spec's checks of its values, and would then have encoded it all as JSON.

Aliases are refused outright rather than bounded: a Component spec is short
and written by hand (write the values out), and a chart repository's index
and a Chart.yaml are written by Helm, which writes none. :func:`first_alias_line`
reads the parser's events only, building no node and no Python object, and
the caller refuses the text with :data:`ALIASES_REFUSED` naming the line.
Rendered manifests are not read here: a hand-written template may use a few
aliases, and the agent bounds how far they expand
(``edgeagent.runtime.manifests.load_yaml_all``).
"""

from __future__ import annotations

import io

import yaml

__all__ = ["ALIASES_REFUSED", "first_alias_line"]

ALIASES_REFUSED = "YAML aliases are not accepted (an alias bomb can expand a small file to gigabytes)"

# libyaml's parser where PyYAML has it (a chart repository's index may be megabytes).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def first_alias_line(text: str | bytes, *, name: str = "<text>") -> int | None:
    """The line (from 1) of the first YAML alias in ``text``, or None when it has none.

    Time and memory are linear in the text's size, whatever its aliases would
    expand to. Raises yaml.YAMLError (its marks naming ``name``) when the text
    stops being YAML before its first alias.
    """
    # Every alias starts with '*' (in UTF-16 too): text without one needs no parsing.
    stream: io.StringIO | io.BytesIO
    if isinstance(text, str):
        if "*" not in text:
            return None
        stream = io.StringIO(text)
    else:
        if b"*" not in text:
            return None
        stream = io.BytesIO(text)
    stream.name = name  # the parser's marks name it
    loader = _Loader(stream)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                assert mark is not None  # the parser marks every event
                return int(mark.line) + 1
    finally:
        loader.dispose()
    return None
