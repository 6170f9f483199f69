"""Raises ``KeyboardInterrupt`` while being imported, as a Ctrl-C during a slow import would (issue 20, item 16)."""

raise KeyboardInterrupt
