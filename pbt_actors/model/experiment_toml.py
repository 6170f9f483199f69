"""A declarative experiment file: TOML, no Python, for a command trial.

Layer 1 (pure: text in, ``Experiment`` out). ``pbt-actors run experiment.toml`` reads it with
the standard library's ``tomllib``; every key is an ``Experiment`` field of the same name,
validated by the same model (``pbt_actors.model.experiment``), and ``command`` is required
(there is no ``train`` to fall back on)::

    name = "digits-command"
    command = ["{python}", "train.py", "--lr", "{lr}", "--resume", "{parent_dir}",
               "--save-dir", "{checkpoint_dir}", "--start-step", "{start_step}", "--end-step", "{end_step}"]
    objective = "acc"                              # maximised; or { name = "loss", goal = "min" }
    population = 8
    steps_per_trial = 100
    max_steps = 600

    [space]
    lr = { type = "float", low = 1e-4, high = 0.3, log = true }
    batch = { type = "discrete", values = [32, 64, 128] }
    optimizer = { type = "categorical", choices = ["sgd", "adam"] }

``command`` may also be one string, split like a shell would (``shlex``).
"""

from __future__ import annotations

import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import EarlyStop, Experiment, Retention
from pbt_actors.model.fitness import Metric, Objective
from pbt_actors.model.space import SearchSpace


def experiment_from_toml(text: str, where: str = "experiment.toml") -> Experiment:
    """The ``Experiment`` the TOML ``text`` declares (see the module docstring).

    Raises:
        ConfigError: not TOML (with line and column), an unknown key, a missing ``command``,
            or any setting the experiment model refuses; the message starts with ``where``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not a valid TOML file: {exc}") from None
    try:
        return _experiment(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _experiment(data: dict[str, Any]) -> Experiment:
    known = {f.name for f in fields(Experiment)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; an experiment file has {', '.join(sorted(known))}")
    for required in ("name", "space", "objective", "command"):
        if required not in data:
            raise ConfigError(f"{required!r} is required")
    settings = dict(data)
    command = settings["command"]
    if isinstance(command, str):
        try:
            settings["command"] = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"command {command!r}: {exc}") from None
    if not isinstance(settings["space"], Mapping):
        raise ConfigError("[space] must be a table of parameters, "
                          "e.g. lr = { type = \"float\", low = 1e-4, high = 0.1 }")
    try:
        settings["space"] = SearchSpace.from_dict(settings["space"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"[space]: a parameter lacks {exc} (float/int: low, high[, log]; discrete: values; "
                          f"categorical: choices; fixed: value)") from None
    settings["objective"] = _objective(settings["objective"])
    for key, build in (("early_stop", EarlyStop), ("retention", Retention)):
        if key in settings:
            table = settings[key]
            if not isinstance(table, Mapping):
                raise ConfigError(f"{key} must be a table")
            try:
                settings[key] = build(**table)
            except TypeError as exc:
                raise ConfigError(f"[{key}]: {exc}") from None
    try:
        return Experiment(**settings)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _objective(value: Any) -> Objective | str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        try:
            if "metrics" in value:
                metrics = [Metric(**m) for m in value["metrics"]]
                return Objective(metrics, value.get("comparison", "weighted"), smoothing=value.get("smoothing", 1))
            return Objective(Metric(**value))
        except TypeError as exc:
            raise ConfigError(f"objective: {exc}") from None
    raise ConfigError(f"objective must be a metric name or a table, got {value!r:.80}")


__all__ = ["experiment_from_toml"]
