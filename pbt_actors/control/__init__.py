"""The pure controller (layer 3): ControllerCore, the policies and the protocol session. No threads, sockets or clocks of their own."""
