"""The worker's side of the runtime: the client loop, the trial context and runner, worker processes."""
