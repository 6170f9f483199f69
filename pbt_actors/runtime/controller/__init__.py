"""The controller's side of the runtime: its actor and the checkpoint collector."""
