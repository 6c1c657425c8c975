"""``HubClient``: a method per route of the hub's API, answering the hub's JSON as it is.

Answers stay the decoded JSON (``JsonObject`` or ``JsonList``): ``edgectl -o json`` prints them as
the hub sent them, and a hub newer than its clients may add fields they pass on untouched. Errors are
``edgekit.http``'s: ``HttpError`` (its ``status`` the HTTP status, 0 when nothing answered) and
``Unreachable``. Names in paths are percent-encoded, so no name can reach another route.
"""

from __future__ import annotations

import base64
import ssl
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from edgekit.http import REQUEST_TIMEOUT_SECONDS, JsonHttpClient, tls_context
from edgeprotocol.hub_facts import TIME_PATH

JsonObject = dict[str, Any]
JsonList = list[dict[str, Any]]
ListedKind = Literal["nodes", "pools", "components"]
NodeAction = Literal["reset", "revoke"]
RolloutAction = Literal["pause", "resume"]

# GET /api/v1/events answers at most this many events a request.
MAX_EVENTS_PER_REQUEST = 1000


def _part(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _component(namespace: str, name: str) -> str:
    return f"/api/v1/components/{_part(namespace)}/{_part(name)}"


class HubClient:
    """The hub at ``http.base_url``, one method per route. ``http`` carries the token, the TLS trust and
    the timeout (a watch shortens ``http.timeout`` per poll)."""

    def __init__(self, http: JsonHttpClient) -> None:
        self.http = http

    @classmethod
    def at(cls, url: str, *, token: str | None = None, ca_file: Path | None = None,
           ssl_context: ssl.SSLContext | None = None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> HubClient:
        """The hub at ``url``; for https://, trusting the CA ``ca_file`` names (or ``ssl_context``; else the
        system's). A CA file that cannot be read or is not a certificate raises OSError or ValueError."""
        if ca_file is not None:
            ssl_context = tls_context(ca_file=ca_file)
        return cls(JsonHttpClient(url, token=token, ssl_context=ssl_context, timeout=timeout))

    # -- operators: tokens, components, nodes, events, credentials

    def create_token(self, pool: str, *, ttl_seconds: float | None = None, uses: int | None = None) -> JsonObject:
        body: JsonObject = {"pool": pool}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if uses is not None:
            body["uses"] = uses
        answer: JsonObject = self.http.post("/api/v1/tokens", body)
        return answer

    def apply(self, document: Mapping[str, Any], *, client: str | None = None,
              chart_archive: bytes | None = None) -> JsonObject:
        """Apply a Component document; ``chart_archive``: the packaged local chart (None: the hub fetches the
        repository or OCI chart the spec names). ``client`` is what the history says made the revision
        (``apply by CLIENT``; None: ``apply``)."""
        body: JsonObject = {"component": dict(document)}
        if client is not None:
            body["client"] = client
        if chart_archive is not None:
            body["chart_archive"] = base64.b64encode(chart_archive).decode()
        answer: JsonObject = self.http.post("/api/v1/components", body)
        return answer

    def list(self, kind: ListedKind) -> JsonList:
        answer: JsonList = self.http.get(f"/api/v1/{kind}")
        return answer

    def component(self, namespace: str, name: str) -> JsonObject:
        answer: JsonObject = self.http.get(_component(namespace, name))
        return answer

    def delete_component(self, namespace: str, name: str) -> JsonObject:
        answer: JsonObject = self.http.delete(_component(namespace, name))
        return answer

    def history(self, namespace: str, name: str) -> JsonList:
        answer: JsonList = self.http.get(f"{_component(namespace, name)}/history")
        return answer

    def rollback(self, namespace: str, name: str, *, to_revision: int | None = None) -> JsonObject:
        body = {} if to_revision is None else {"to_revision": to_revision}
        answer: JsonObject = self.http.post(f"{_component(namespace, name)}/rollback", body)
        return answer

    def rollout(self, namespace: str, name: str) -> JsonObject:
        answer: JsonObject = self.http.get(f"{_component(namespace, name)}/rollout")
        return answer

    def steer_rollout(self, namespace: str, name: str, action: RolloutAction) -> JsonObject:
        answer: JsonObject = self.http.post(f"{_component(namespace, name)}/rollout/{action}", {})
        return answer

    def node(self, name: str) -> JsonObject:
        answer: JsonObject = self.http.get(f"/api/v1/nodes/{_part(name)}")
        return answer

    def act_on_node(self, name: str, action: NodeAction) -> JsonObject:
        answer: JsonObject = self.http.post(f"/api/v1/nodes/{_part(name)}/{action}", {})
        return answer

    def events(self, *, node: str | None = None, limit: int | None = None, after: int | None = None) -> JsonList:
        query = {key: value for key, value in (("node", node), ("limit", limit), ("after", after))
                 if value is not None}
        answer: JsonList = self.http.get("/api/v1/events?" + urllib.parse.urlencode(query))
        return answer

    def credentials(self) -> JsonList:
        answer: JsonList = self.http.get("/api/v1/credentials")
        return answer

    def create_credential(self, *, role: str, name: str, csr: str) -> JsonObject:
        answer: JsonObject = self.http.post("/api/v1/credentials", {"role": role, "name": name, "csr": csr})
        return answer

    def revoke_credential(self, name: str) -> JsonObject:
        answer: JsonObject = self.http.delete(f"/api/v1/credentials/{_part(name)}")
        return answer

    def certificates(self) -> JsonObject:
        """The hub's certificate inventory and warnings (``edgectl describe hub``)."""
        answer: JsonObject = self.http.get("/api/v1/hub")
        return answer

    def health(self) -> JsonObject:
        answer: JsonObject = self.http.get("/healthz")
        return answer

    # -- nodes: join and renewal

    def signed_time(self, nonce: str) -> Any:
        """The hub's time, CAs and ``nonce``, signed by its key (``edgeprotocol.hub_facts``); checked by the caller
        (it may come over unverified TLS)."""
        return self.http.get(f"{TIME_PATH}?nonce={urllib.parse.quote(nonce, safe='')}")

    def ca(self) -> Any:
        """The hub's CA certificate and bundle; checked by the caller (it may come over unverified TLS)."""
        return self.http.get("/api/v1/ca")

    def join(self, *, token: str, node: str, pool: str | None, labels: Mapping[str, str], csr: str,
             bundle_key: str) -> Any:
        """Join as ``node`` with a join token (without its pin), the node's CSR (PEM) and bundle key (its text);
        ``pool`` None: the token's."""
        return self.http.post("/api/v1/join", {"token": token, "node": node, "pool": pool, "labels": dict(labels),
                                               "csr": csr, "bundle_key": bundle_key})

    def renew_certificate(self, node: str, *, csr: str, timestamp: int, nonce: str, proof: str) -> Any:
        """A new certificate for ``node``'s new key (``csr``), ``proof`` signed by its current key over the
        hub's time ``timestamp`` and ``nonce`` (``edgeprotocol.enrollment.renewal_payload``; base64)."""
        return self.http.post(f"/api/v1/nodes/{_part(node)}/certificate",
                              {"csr": csr, "timestamp": timestamp, "nonce": nonce, "proof": proof})
