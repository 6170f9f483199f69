"""The pure controller (layer 3): ControllerCore, the policies, the protocol session and where
a run stands (progress). No threads, sockets or clocks of their own."""
