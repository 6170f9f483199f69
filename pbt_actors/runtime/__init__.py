"""The actor shell (layer 4): controller and worker actors, host supervisor, restart rules, trial
context and runner, checkpoint files, worker processes (launch, zygote, experiment files)."""
