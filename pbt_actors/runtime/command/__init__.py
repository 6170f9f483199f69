"""Command trials: any program as a trial (README "Any program as a trial").

``trial.CommandTrial`` is the ``train(ctx)`` of an experiment with a ``command``;
``process.ProgramGroup`` runs the program as a process group; ``output_log`` keeps each
attempt's output next to its trial's checkpoints.
"""
