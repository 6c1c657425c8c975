"""edgectl: the command line for the hub's API."""
