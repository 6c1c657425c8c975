"""edgehub: the cloud side of edgecollab.

It keeps the desired state of every edge node in its store, turns component
specs into signed assignments published over MQTT, ingests what nodes report,
and serves an HTTP API (and the ``edgectl`` command) over it all.
"""
