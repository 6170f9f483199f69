"""What the faces show of command trials: the commands a schedule runs, and attempts' output.

Layer 5 (a face). ``lineage`` prints the command each segment of a schedule starts (what
``replay`` runs, placeholders filled in; the directories are named, since they exist only
while an attempt runs); ``lineage --output``, ``status --output TRIAL`` and the dashboard's
trial details show the output tail each attempt kept (``runtime.command.output_log``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pbt_actors.model.command_line import AttemptFacts, AttemptPaths, environment, expand, shell_words, values
from pbt_actors.model.records import Trial
from pbt_actors.runtime.checkpoint_payloads import Root
from pbt_actors.runtime.command.output_log import read_output
from pbt_actors.tools.lineage import Schedule

SHOWN_ENVIRONMENT = ("PBT_TRIAL_ID", "PBT_START_STEP", "PBT_END_STEP", "PBT_PARENT_DIR", "PBT_CHECKPOINT_DIR")
"""The variables ``lineage`` writes before each command (the rest: README "Any program as a trial")."""
SHOWN_CHARS = 16 * 1024
"""Of each attempt's log, the faces show the last this many characters."""


def schedule_commands(command: Sequence[str], schedule: Schedule, *, python: str = "python",
                      replay: bool = False) -> list[str]:
    """Each segment's command line as ``replay`` starts it (in the experiment file's folder),
    after the ``SHOWN_ENVIRONMENT`` variables it gets."""
    lines = []
    previous: str | None = None
    for index, seg in enumerate(schedule.segments):
        facts = AttemptFacts(seg.trial_id, 1, seg.generation, seg.start_step, seg.end_step, seg.hparams, replay,
                             schedule.experiment)
        here = f"<checkpoint of steps {seg.start_step}-{seg.end_step}>"
        paths = AttemptPaths(checkpoint_dir=here, parent_dir=previous, hparams_file=f"<hparams of segment {index + 1}>",
                             tensorboard_dir="<tensorboard dir>")
        env = environment(facts, paths)
        shown = [f"{name}={env[name]}" for name in SHOWN_ENVIRONMENT if name in env]
        lines.append(shell_words([*shown, *expand(command, values(facts, paths, python))]))
        previous = here
    return lines


def attempt_outputs(root: Root, experiment: str, trial: Trial, chars: int = SHOWN_CHARS) -> list[dict[str, Any]]:
    """``[{attempt, output}]`` for each attempt of ``trial`` that kept a log (command trials)."""
    out = []
    for attempt in range(1, trial.attempt + 1):
        text = read_output(root, experiment, trial.id, attempt)
        if text is not None:
            out.append({"attempt": attempt, "output": text[-chars:]})
    return out


__all__ = ["SHOWN_CHARS", "SHOWN_ENVIRONMENT", "attempt_outputs", "schedule_commands"]
