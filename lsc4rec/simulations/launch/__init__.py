"""Helpers that start runs, apart from the entry points: ``flwr run`` on a private SuperLink, the in-process
grid of tests and debugging, and the run-config plumbing both share."""
