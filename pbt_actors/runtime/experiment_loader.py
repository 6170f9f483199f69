"""Import a user's experiment file: ``experiment = Experiment(...)`` and ``def train(ctx)``,
or ``Experiment(..., command=[...])`` / a TOML experiment file, whose ``train`` is a
``CommandTrial`` (``pbt_actors.runtime.command``: any program as a trial).

Layer 4, at the bottom of the worker-process modules (``worker_process`` → ``zygote`` →
``launch`` import it; it imports none of them). ``launch`` re-exports ``load_experiment_file``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.experiment_toml import experiment_from_toml
from pbt_actors.runtime.command.trial import CommandTrial

EXPERIMENT_MODULE_PREFIX = "pbt_experiment_"  # sys.modules name of an imported experiment file


def load_module(path: str | os.PathLike[str]) -> ModuleType:
    """Import ``path`` once per process as ``pbt_experiment_<hash of its path>``, with its
    folder on ``sys.path`` while its module code runs (so it can import modules beside it).

    Raises:
        ConfigError: the file is missing, has a syntax error or calls ``sys.exit`` at import.
        KeyboardInterrupt: Ctrl-C during the import, saying which file (the CLI: exit 130).
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f"experiment file {file} does not exist")
    name = EXPERIMENT_MODULE_PREFIX + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ConfigError(_syntax_error(file, exc)) from None
    except SystemExit as exc:  # the file's own exit would leave our process without a word
        sys.modules.pop(name, None)
        raise ConfigError(f"the experiment file {file} called sys.exit({exc.code!r}) while being imported") from None
    except KeyboardInterrupt:  # Ctrl-C (or a file raising it): one line and 130 from the CLI, no traceback
        sys.modules.pop(name, None)
        raise KeyboardInterrupt(f"while importing the experiment file {file}") from None
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if sys.path and sys.path[0] == str(file.parent):
            sys.path.pop(0)
    return module


def _syntax_error(file: Path, exc: SyntaxError) -> str:
    """``FILE:LINE:COL: syntax error: MESSAGE`` and the line with a caret: the user's file, not our frames."""
    where = f"{exc.filename or file}:{exc.lineno or '?'}" + (f":{exc.offset}" if exc.offset else "")
    message = f"{where}: syntax error in the experiment file: {exc.msg}"
    if exc.text:
        text = exc.text.rstrip("\n")
        stripped = text.lstrip()
        message += f"\n    {stripped}"
        if exc.offset:
            message += "\n    " + " " * max(0, exc.offset - 1 - (len(text) - len(stripped))) + "^"
    return message


def load_experiment_file(path: str | os.PathLike[str]) -> tuple[Experiment, Callable[..., Any]]:
    """The file's ``experiment`` and ``train``: for a ``.toml`` file, or an experiment with a
    ``command``, a ``CommandTrial`` that runs the command in the file's folder.

    Raises:
        ConfigError: missing or wrongly typed ``experiment``/``train``, both ``train`` and a
            ``command``, or a syntax error (the message names file, line and column).
    """
    if str(path).endswith(".toml"):
        file = Path(path).resolve()
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the experiment file {file}: {exc}") from None
        declared = experiment_from_toml(text, str(file))
        return declared, command_trial(declared, file.parent)
    module = load_module(path)
    experiment = getattr(module, "experiment", None)
    train = getattr(module, "train", None)
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"{path} must define `experiment = Experiment(...)`")
    if experiment.command is not None:
        if train is not None:
            raise ConfigError(f"{path} defines both `train` and `Experiment(command=...)`: keep one")
        return experiment, command_trial(experiment, Path(path).resolve().parent)
    if not callable(train):
        raise ConfigError(f"{path} must define `def train(ctx): ...` (or `Experiment(..., command=[...])`)")
    return experiment, train


def command_trial(experiment: Experiment, folder: Path) -> CommandTrial:
    """The ``train`` of an experiment with a ``command``: run in ``folder``."""
    assert experiment.command is not None
    return CommandTrial(experiment.command, cwd=folder, objective=experiment.objective_.names)


def forget_experiment_modules() -> None:
    """Drop every imported experiment file (and the modules beside it) from ``sys.modules``,
    so that the next ``load_module`` runs their module code again; what they imported
    (torch, scikit-learn, ...) stays imported."""
    folders = set()
    for name, module in list(sys.modules.items()):
        if name.startswith(EXPERIMENT_MODULE_PREFIX):
            file = getattr(module, "__file__", None)
            if file:
                folders.add(os.path.dirname(os.path.abspath(file)))
            del sys.modules[name]
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.dirname(os.path.abspath(file)) in folders:
            del sys.modules[name]


__all__ = ["EXPERIMENT_MODULE_PREFIX", "command_trial", "forget_experiment_modules", "load_experiment_file",
           "load_module"]
