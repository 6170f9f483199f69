"""The actor shell (layer 4): controller and worker actors, host supervisor, restart rules, trial context, checkpoint files, worker processes."""
