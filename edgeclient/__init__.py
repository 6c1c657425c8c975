"""edgeclient: the one client of the hub's HTTP API (``edgeclient.hub.HubClient``).

Every URL the hub serves to its clients is written here and nowhere else; ``edgectl``, the edge
deployer and its controller, the agent's join and renewal and the benchmarks call the hub through
it. It imports only ``edgekit`` (a synchronous urllib client, so the agent stays light) and
``edgeprotocol``.
"""
