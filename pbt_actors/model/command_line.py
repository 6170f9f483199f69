"""A command trial's argument list and environment, worked out purely from the trial.

Layer 1 (plain data, no IO). ``Experiment(command=[...])`` names a program instead of a
``train(ctx)``; per attempt ``pbt_actors.runtime.command`` starts it with the arguments and
environment built here. Kept pure so that ``lineage`` can print exactly the commands a run (or
its replay) starts, and so the substitution rules are unit-tested without processes.

Placeholders: ``{name}`` in an argument is replaced by the hyperparameter ``name`` or one of
``TRIAL_FIELDS``; ``{{`` and ``}}`` are literal braces; any other ``{...}`` is refused when the
experiment is defined (a typo must not reach a thousand trials). Values are written as JSON
scalars (``0.001``, ``3``, ``true``), strings as they are. ``{parent_dir}`` is the empty string
when the trial trains from scratch (``PBT_PARENT_DIR`` is then absent).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbt_actors.model.errors import ConfigError

TRIAL_FIELDS: tuple[str, ...] = ("trial_id", "attempt", "generation", "start_step", "end_step", "checkpoint_dir",
                                 "parent_dir", "hparams_file", "tensorboard_dir", "python", "replay")
"""The placeholders every command may use besides the hyperparameters' names."""
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class AttemptPaths:
    """The local folders and files of one attempt (made by the runtime)."""

    checkpoint_dir: str
    """Empty when the program starts; what it holds at a clean exit is the trial's checkpoint."""
    parent_dir: str | None
    """The parent's (or the resumed attempt's) checkpoint directory; None from scratch."""
    hparams_file: str
    tensorboard_dir: str


@dataclass(frozen=True)
class AttemptFacts:
    """What a command is told about its trial."""

    trial_id: int
    attempt: int
    generation: int
    start_step: int
    end_step: int
    hparams: Mapping[str, Any]
    replay: bool = False
    experiment: str = ""


def placeholders(argument: str) -> list[str]:
    """The placeholder names in ``argument``.

    Raises:
        ConfigError: a lone ``{`` or ``}`` (write ``{{``/``}}`` for a literal brace).
    """
    names = []
    for match in _PLACEHOLDER.finditer(argument):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise ConfigError(f"command argument {argument!r}: a lone {token!r} "
                              f"(write {token * 2!r} for a literal brace)")
        names.append(match.group(1))
    return names


def check_command(command: Sequence[str], hparam_names: Iterable[str]) -> tuple[str, ...]:
    """``command`` as a tuple, after checking that it is a non-empty list of strings whose
    placeholders all name a hyperparameter or a ``TRIAL_FIELDS`` entry.

    Raises:
        ConfigError: what is wrong, naming the argument.
    """
    if isinstance(command, str) or not isinstance(command, Sequence) or not command:
        raise ConfigError(f"command must be a non-empty list of strings (the program and its arguments), "
                          f"got {command!r:.80}")
    names = set(hparam_names)
    clash = sorted(names & set(TRIAL_FIELDS))
    if clash:
        raise ConfigError(f"command trials name their placeholders after the hyperparameters and "
                          f"{', '.join(TRIAL_FIELDS)}: rename the hyperparameter(s) {', '.join(clash)}")
    known = names | set(TRIAL_FIELDS)
    for argument in command:
        if not isinstance(argument, str):
            raise ConfigError(f"command arguments must be strings, got {argument!r:.80} ({type(argument).__name__})")
        for name in placeholders(argument):
            if name not in known:
                raise ConfigError(f"command argument {argument!r}: unknown placeholder {{{name}}}; known are the "
                                  f"hyperparameters and {', '.join(TRIAL_FIELDS)} "
                                  f"(write {{{{ }}}} for a literal brace)")
    if not command[0]:
        raise ConfigError("command: the program name is empty")
    return tuple(command)


def format_value(value: Any) -> str:
    """A hyperparameter as an argument: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def values(facts: AttemptFacts, paths: AttemptPaths, python: str) -> dict[str, str]:
    """Every placeholder's text for one attempt."""
    out = {name: format_value(value) for name, value in facts.hparams.items()}
    out.update(trial_id=str(facts.trial_id), attempt=str(facts.attempt), generation=str(facts.generation),
               start_step=str(facts.start_step), end_step=str(facts.end_step),
               checkpoint_dir=paths.checkpoint_dir, parent_dir=paths.parent_dir or "",
               hparams_file=paths.hparams_file, tensorboard_dir=paths.tensorboard_dir, python=python,
               replay="1" if facts.replay else "0")
    return out


def expand(command: Sequence[str], texts: Mapping[str, str]) -> list[str]:
    """``command`` with its placeholders replaced by ``texts`` (see the module docstring).

    Raises:
        ConfigError: a placeholder ``texts`` lacks.
    """
    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1)
        if name is None or name not in texts:
            raise ConfigError(f"command placeholder {token} has no value")
        return texts[name]

    return [_PLACEHOLDER.sub(one, argument) for argument in command]


def environment(facts: AttemptFacts, paths: AttemptPaths) -> dict[str, str]:
    """The ``PBT_*`` variables an attempt's program gets (on top of the worker's environment,
    which keeps the slot's ``CUDA_VISIBLE_DEVICES``)."""
    env = {
        "PBT_HPARAMS": json.dumps(dict(facts.hparams), sort_keys=True),
        "PBT_HPARAMS_FILE": paths.hparams_file,
        "PBT_TRIAL_ID": str(facts.trial_id),
        "PBT_ATTEMPT": str(facts.attempt),
        "PBT_GENERATION": str(facts.generation),
        "PBT_START_STEP": str(facts.start_step),
        "PBT_END_STEP": str(facts.end_step),
        "PBT_CHECKPOINT_DIR": paths.checkpoint_dir,
        "PBT_TENSORBOARD_DIR": paths.tensorboard_dir,
        "PBT_REPLAY": "1" if facts.replay else "0",
        "PBT_EXPERIMENT": facts.experiment,
    }
    if paths.parent_dir is not None:
        env["PBT_PARENT_DIR"] = paths.parent_dir
    return env


def shell_words(argv: Sequence[str]) -> str:
    """``argv`` as one line a POSIX shell would split back into it (for ``lineage``)."""
    return shlex.join(argv)


__all__ = ["TRIAL_FIELDS", "AttemptFacts", "AttemptPaths", "check_command", "environment", "expand",
           "format_value", "placeholders", "shell_words", "values"]
