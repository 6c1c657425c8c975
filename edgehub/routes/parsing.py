"""Reading a request: its JSON body, typed fields, names and query numbers, refused as ``BadRequest`` naming
the field at fault."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edgeprotocol.topics import check_name

from ..errors import BadRequest

# A chart archive larger than this is refused before it is decoded.
MAX_REQUEST_BYTES = 16 * 1024 * 1024

_KINDS = {str: "a string", int: "an integer", dict: "an object", (int, float): "a number"}


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's stack.
        raise BadRequest(f"request body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def body_field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], *, required: bool = True,
               default: Any = None) -> Any:
    if key not in body or body[key] is None:
        if required:
            raise BadRequest("is required", field=key)
        return default
    value = body[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"must be {_KINDS.get(kind, kind)}, not {type(value).__name__}", field=key)
    return value


def shown(value: Any) -> str:
    """``repr(value)``, cut short: an error message must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def valid_name(value: str, key: str) -> str:
    try:
        return check_name(value, key)
    except ValueError as exc:
        # check_name's message echoes the whole value: keep only its rule.
        rule = str(exc).partition(" is not a valid name: ")[2] or "see the naming rules"
        raise BadRequest(f"{shown(value)} is not a valid name: {rule}", field=key) from exc


def query_int(request: web.Request, key: str, *, default: int, low: int, high: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    refusal = BadRequest(f"must be an integer from {low} to {high}, not {shown(text)}", field=key)
    try:
        value = int(text)
    except ValueError as exc:
        raise refusal from exc
    if not low <= value <= high:
        raise refusal
    return value
