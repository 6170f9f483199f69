"""Tools over a store (layer 5): lineage, replay, report, export, verify, the in-process runner and the simulator."""
