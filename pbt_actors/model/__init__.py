"""The data model (layer 1): search space, objectives, experiment, trial records, field readers,
errors, wire format, decision rngs. Imports nothing of ours outside this package."""
