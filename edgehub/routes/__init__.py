"""The hub's HTTP API (JSON), used by ``edgectl``, by agents at join, and by dashboards: one module per resource.

    GET    /api/v1/ca                              the hub CA's certificate and its SHA-256, and every CA trusted (open)
    GET    /api/v1/ca/rotation                     the hub's CAs, which issues, how many nodes hold certificates of each
    POST   /api/v1/ca/rotation                     take a CA rotation step: {"step": "begin"|"switch"|"finish"}
    GET    /api/v1/time?nonce=HEX                  the hub's time and trust bundle, signed over the nonce (open)
    POST   /api/v1/tokens                          create a join token for a pool (it carries the CA's SHA-256)
    POST   /api/v1/join                            exchange a token, a CSR and a bundle key for a node identity (open)
    POST   /api/v1/nodes/{name}/certificate        renew a node's certificate: a CSR for a new key, proven by
                                                   the node's current key (open)
    GET    /api/v1/nodes[/{name}]                  nodes with presence and reported releases
    GET    /api/v1/nodes/{name}/events             the node's most recent events
    GET    /api/v1/events                          events of every node (or ?node=), in the order they arrived
    POST   /api/v1/nodes/{name}/reset              free the node's name for the next join (assignments kept)
    POST   /api/v1/nodes/{name}/revoke             refuse the node until it is reset
    GET    /api/v1/credentials                     broker credentials issued for dashboards
    POST   /api/v1/credentials                     sign a CSR for a read-only dashboard identity
    DELETE /api/v1/credentials/{name}              revoke one (the broker disconnects it)
    GET    /api/v1/pools                           pools with node counts
    GET    /api/v1/components                      components with rollout counts
    POST   /api/v1/components                      apply a component spec with its chart archive (none when
                                                   spec.chart is a chart repository or OCI reference: the hub
                                                   fetches and caches it, see edgehub.chart_sources)
    GET    /api/v1/components/{namespace}/{name}   a component with its per-node status
    DELETE /api/v1/components/{namespace}/{name}   delete a component from every node
    GET    /api/v1/components/{namespace}/{name}/history   its kept revisions, newest first, with their status
    POST   /api/v1/components/{namespace}/{name}/rollback  a new revision from an earlier one ({"to_revision": N})
    GET    /api/v1/components/{namespace}/{name}/rollout   its staged rollout (batches, failed node, deferred)
    POST   /api/v1/components/{namespace}/{name}/rollout/pause   no new batch starts
    POST   /api/v1/components/{namespace}/{name}/rollout/resume  a paused rollout goes on
    GET    /api/v1/hub                             the hub itself: every certificate in the chain (CA, broker, the
                                                   hub's own, each node's) with its end, and the warnings
    GET    /healthz
    GET    /metrics                                Prometheus metrics (operator or viewer token)
    GET    /api/v1/stream                          server-sent events: summaries, then each change
    GET    /  and  /ui/{file}                      the web dashboard's page and files (open; edgehub.dashboard)

Every endpoint but the open ones (join, certificate renewal, the CA, the
hub's time and ``GET /healthz``) needs the operator token as ``Authorization: Bearer
<token>`` (the hub writes it to ``STATE/admin-token``). Every request must
name a Host the hub answers to and come from no foreign web origin; a body
must be ``application/json``; joins, renewals, time requests and token
creations are rate-limited per source address. See :mod:`edgehub.auth` and
:mod:`edgehub.ratelimit`.

Errors are ``{"error": "..."}`` (plus ``"field"`` when one field is at fault)
with the status ``error_answers.STATUS`` gives the exception's type: 400 (malformed request),
401 (no or wrong operator token), 403 (join refused: a bad token, or a name
registered to another key or revoked; renewal refused; or a foreign Origin), 404,
409 (concurrent change), 415 (a body that is not JSON), 421 (a Host the hub does
not answer to), 422 (a spec or chart that does not validate or render) or 429
(over a rate limit, with ``Retry-After``). See :mod:`edgehub.errors` for the
tree. Anything unexpected answers 500 with a generic message; the traceback
goes to the log.

Handlers parse the request (``parsing``), call a service or the store and shape the answer; the decisions
are the services' (``edgehub.enrollment``: join, renewal, reset, revoke; ``edgehub.components``: apply,
delete, rollback; ``edgehub.rollout_driver``; ``edgehub.ca_rotation``). They raise, and
``error_answers.json_errors`` alone turns exceptions into responses.
"""

from __future__ import annotations

from aiohttp import web

from . import ca, components, credentials, enrollment, events, hub, nodes, rollouts, stream, tokens


def add_routes(app: web.Application) -> None:
    stream.end_streams_on_shutdown(app)
    for module in (hub, stream, ca, tokens, enrollment, nodes, events, credentials, components, rollouts):
        app.router.add_routes(module.ROUTES)
