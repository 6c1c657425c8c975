"""A small synchronous JSON-over-HTTP client: ``edgectl`` and the agent's join use it.

Synchronous on purpose: both callers are one-shot commands with no event loop.
Every failure is an ``HttpError``: ``status`` is the HTTP status of an answer
that was an error (its JSON ``error`` field is the message), 0 when nothing
answered. When nothing answered at all (connection refused, a timeout, a name
that does not resolve) it is the subclass ``Unreachable``.

With ``token`` every request carries ``Authorization: Bearer <token>``.
Redirects are not followed: urllib would send that header on to wherever a
redirect points, so a redirect is an error naming where it pointed.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

# Applying renders charts on the hub; a minute covers large charts.
REQUEST_TIMEOUT_SECONDS = 60.0


class HttpError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(HttpError):
    """Nothing answered: the server could not be reached, or did not answer in time."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class JsonHttpClient:
    """JSON requests to one base URL; ``name`` says what the server is in error messages.

    ``token``: a bearer token sent with every request (None: no Authorization header).
    """

    def __init__(self, base_url: str, *, timeout: float = REQUEST_TIMEOUT_SECONDS, name: str = "the hub",
                 token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.name = name
        self.token = token

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "?")
                raise HttpError(f"{self.name} at {self.base_url} answered {method} {path} with a redirect "
                                f"({exc.code}) to {where}; not followed", status=exc.code) from exc
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise HttpError(str(message), status=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise Unreachable(f"cannot reach {self.name} at {self.base_url}: {exc}") from exc
        except http.client.HTTPException as exc:
            # Something answered, but not HTTP (another service on the port), or broke off its answer.
            raise HttpError(f"{self.name} at {self.base_url} answered {method} {path} with something that is "
                            f"not a whole HTTP answer ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise HttpError(f"{self.name} at {self.base_url} answered {method} {path} with invalid JSON") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
