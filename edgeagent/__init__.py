"""edgeagent: the edge side of edgecollab.

Installable alone (``pip install edgecollab[agent]``): it imports
``edgeprotocol`` and nothing from ``edgehub`` or ``deployer_plugin``.
"""

__version__ = "0.1.0"
