"""The metric lines a command trial prints on stdout: parsed here, purely.

Layer 1 (plain data, no IO). A program run as a trial (``Experiment(command=...)``,
``pbt_actors.runtime.command``) talks to the framework through lines on its standard output;
every other line is its own business and is only kept in the attempt's output tail. Two forms,
documented in the README ("Any program as a trial"):

* text: ``pbt: step=120 acc=0.93 loss=0.21`` (``key=value`` pairs after ``pbt:``, separated
  by blanks; ``step`` is required, a non-negative integer; every other value a number, where
  ``nan``, ``inf`` and ``-inf`` are numbers, as with ``ctx.report``: such a trial just loses);
  ``pbt: checkpoint step=100`` says that the checkpoint directory now holds the state at
  step 100 (a program preempted by SIGTERM says it after saving, and the retry resumes there);
* JSON: one object per line with the key ``"pbt"``: ``{"pbt": {"step": 120, "acc": 0.93}}``,
  ``{"pbt": {"checkpoint": 100}}`` (JSON's ``NaN``/``Infinity`` are accepted too).

A line that starts with ``pbt:`` (or is a JSON object with a ``"pbt"`` key) but says
something else is a ``MetricLineError``: the program meant to talk to us and got it wrong,
which must not pass silently (its attempt fails, naming the line).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pbt_actors.model.fields import is_int, is_number

PREFIX = "pbt:"
MAX_LINE_CHARS = 65536
"""A longer line is never a metric line (the reader cuts lines there; ``too_long``)."""
MAX_METRICS_PER_LINE = 256


class MetricLineError(ValueError):
    """A line addressed to pbt-actors that does not follow the format."""


@dataclass(frozen=True)
class MetricLine:
    """``ctx.report(step, **metrics)``."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CheckpointLine:
    """The checkpoint directory holds the state at ``step``."""

    step: int


Parsed = MetricLine | CheckpointLine | None


def parse_line(line: str) -> Parsed:
    """What ``line`` (one line of the program's stdout, with or without its newline) says to
    pbt-actors: a ``MetricLine``, a ``CheckpointLine``, or None for any other output.

    Raises:
        MetricLineError: a ``pbt:`` line or ``{"pbt": ...}`` object that is malformed
            (missing or non-integer step, a value that is not a number, a bad name).
    """
    text = line.strip()
    if text.startswith(PREFIX):
        return _parse_text(text[len(PREFIX):], text)
    if text.startswith("{") and '"pbt"' in text:
        try:
            data = json.loads(text)
        except ValueError:
            return None  # some other JSON-ish output that merely mentions "pbt"
        if isinstance(data, dict) and "pbt" in data:
            return _parse_json(data["pbt"], text)
    return None


def _parse_text(body: str, line: str) -> Parsed:
    tokens = body.split()
    if tokens[:1] == ["checkpoint"]:
        pairs = _pairs(tokens[1:], line)
        if set(pairs) != {"step"}:
            raise MetricLineError(f"{_quote(line)}: a checkpoint line is `pbt: checkpoint step=N`")
        return CheckpointLine(_step(pairs["step"], line))
    pairs = _pairs(tokens, line)
    if "step" not in pairs:
        raise MetricLineError(f"{_quote(line)}: a metric line needs step=N (`pbt: step=120 acc=0.93`)")
    step = _step(pairs.pop("step"), line)
    return MetricLine(step, _metrics({name: _number_text(name, value, line) for name, value in pairs.items()}, line))


def _pairs(tokens: list[str], line: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep or not name or not value:
            raise MetricLineError(f"{_quote(line)}: {_quote(token)} is not name=value")
        if name in pairs:
            raise MetricLineError(f"{_quote(line)}: {name!r} is given twice")
        pairs[name] = value
    return pairs


def _step(value: Any, line: str, *, text: bool = True) -> int:
    if text and isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise MetricLineError(f"{_quote(line)}: step must be an integer, got {_quote(value)}") from None
    if not is_int(value) or value < 0:
        raise MetricLineError(f"{_quote(line)}: step must be a non-negative integer, got {value!r}")
    return value


def _number_text(name: str, value: str, line: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise MetricLineError(f"{_quote(line)}: metric {name!r} must be a number, got {_quote(value)}") from None
    return number


def _metrics(metrics: dict[str, float], line: str) -> dict[str, float]:
    if len(metrics) > MAX_METRICS_PER_LINE:
        raise MetricLineError(f"{_quote(line)}: more than {MAX_METRICS_PER_LINE} metrics on one line")
    for name in metrics:
        if not name.isprintable() or len(name) > 128:
            raise MetricLineError(f"{_quote(line)}: {_quote(name)} is not a metric name")
    return metrics


def _parse_json(body: Any, line: str) -> Parsed:
    if not isinstance(body, dict):
        raise MetricLineError(f"{_quote(line)}: the value of \"pbt\" must be an object")
    if "checkpoint" in body:
        if set(body) != {"checkpoint"}:
            raise MetricLineError(f"{_quote(line)}: a checkpoint object is {{\"pbt\": {{\"checkpoint\": N}}}}")
        return CheckpointLine(_step(body["checkpoint"], line, text=False))
    if "step" not in body:
        raise MetricLineError(f"{_quote(line)}: a metric object needs \"step\"")
    step = _step(body["step"], line, text=False)
    metrics: dict[str, float] = {}
    for name, value in body.items():
        if name == "step":
            continue
        if not is_number(value):
            raise MetricLineError(f"{_quote(line)}: metric {name!r} must be a number, got {value!r:.40}")
        metrics[name] = float(value)
    return MetricLine(step, _metrics(metrics, line))


def format_metric_line(step: int, **metrics: float) -> str:
    """The text form of a ``MetricLine`` (``repr`` of each float: parsing it gives the same
    float back, bit for bit)."""
    parts = [f"step={step}"] + [f"{name}={_float_text(float(value))}" for name, value in metrics.items()]
    return f"{PREFIX} " + " ".join(parts)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return repr(value)


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


__all__ = ["MAX_LINE_CHARS", "PREFIX", "CheckpointLine", "MetricLine", "MetricLineError", "Parsed",
           "format_metric_line", "parse_line"]
