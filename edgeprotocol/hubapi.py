"""A small synchronous client for the hub's HTTP API, used by edgectl and by the agent's join.

Synchronous on purpose: both callers are one-shot commands with no event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from edgeprotocol.errors import EdgeError

# Applying renders charts on the hub; a minute covers large charts.
REQUEST_TIMEOUT_SECONDS = 60.0


class HubError(EdgeError):
    """The hub answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class HubClient:
    def __init__(self, base_url: str, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise HubError(str(message), status=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise HubError(f"cannot reach the hub at {self.base_url}: {exc}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
