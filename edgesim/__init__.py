"""edgesim: a whole edgecollab fleet on one machine, for the demo and end-to-end tests."""
