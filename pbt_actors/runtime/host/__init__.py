"""The host's side of the runtime: the supervisor of worker processes, its restart rules, slots and the fork server."""
