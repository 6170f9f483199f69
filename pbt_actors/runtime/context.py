"""``TrialContext``: everything a user's ``train(ctx)`` sees of the framework.

Layer 4. The context is deliberately small: hyperparameters, the step range, a device, the
parent's checkpoint, a place to save one, and ``report``. It does not know about sockets;
progress goes through a ``TrialLink`` (the worker's connection, or nothing in replay).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pbt_actors.model.records import CheckpointRef, Measurement
from pbt_actors.runtime.checkpoints import load_checkpoint, save_checkpoint


class TrialLink(Protocol):
    """Where a running trial's progress goes. ``record`` returns False to ask for a stop."""

    def record(self, step: int, metrics: Mapping[str, float]) -> bool: ...


class NullLink:
    """No controller (replay, tests): never asks to stop."""

    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        return True


def default_device() -> str:
    """``cuda:0`` inside a process pinned with ``CUDA_VISIBLE_DEVICES``, else ``cpu``."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


@dataclass
class TrialContext:
    """Handed to ``train(ctx)``. Train steps ``[start_step, end_step)`` with ``hparams``.

    ``report(step, **metrics)`` records progress and returns False once the controller has
    asked the trial to stop (early stopping, or another attempt already completed it), or
    the worker is being preempted; ``should_stop`` says the same at any time.
    """

    trial_id: int
    attempt: int
    generation: int
    hparams: Mapping[str, Any]
    start_step: int
    end_step: int
    checkpoint_root: str
    parent_checkpoint: CheckpointRef | None = None
    device: str = "cpu"
    replay: bool = False
    experiment: str = ""
    link: TrialLink = field(default_factory=NullLink)
    measurements: list[Measurement] = field(default_factory=list)
    saved: CheckpointRef | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    preempt_event: threading.Event = field(default_factory=threading.Event)

    @property
    def should_stop(self) -> bool:
        return self.stop_event.is_set() or self.preempt_event.is_set()

    @property
    def preempted(self) -> bool:
        """SIGTERM arrived: save a resume checkpoint if you can, then return."""
        return self.preempt_event.is_set()

    def load_checkpoint(self) -> Any:
        """The parent's (or resume) state, verified by sha256 first; None when from scratch.

        Raises:
            CheckpointError: missing, truncated or tampered file (the trial then fails
                without retry on this parent, and the policy chooses another).
        """
        if self.parent_checkpoint is None:
            return None
        return load_checkpoint(self.checkpoint_root, self.parent_checkpoint)

    def save_checkpoint(self, state: Any, step: int | None = None) -> CheckpointRef:
        """Save this trial's state atomically (temp file, fsync, rename) and record its sha256."""
        at = self.end_step if step is None else step
        uri = f"{self.experiment or 'exp'}/trial-{self.trial_id:06d}/a{self.attempt}-s{at}.ckpt"
        self.saved = save_checkpoint(self.checkpoint_root, uri, state, at)
        return self.saved

    def report(self, step: int, **metrics: float) -> bool:
        """Record metrics at ``step``; returns whether to keep going.

        Raises:
            MetricError: a value that is not a number (``"abc"``, None, ``10**400``); inside
                ``train`` that is the attempt's failure, with this message.
        """
        clean = clean_metrics(metrics, f"ctx.report(step={step!r})")
        self.measurements.append(Measurement(int(step), clean))
        if not self.link.record(int(step), clean):
            self.stop_event.set()
        return not self.should_stop

    def final_metrics(self, returned: Any, objective: Sequence[str] = ()) -> dict[str, float]:
        """The trial's final metrics: what ``train`` returned (a metrics dict), completed by the
        last value ``ctx.report`` recorded for each ``objective`` metric it lacks; when ``train``
        returned no dict (None, a list, ...), the metrics of the last report.

        Raises:
            MetricError: a returned value that is not a number, or an ``objective`` metric that
                was neither returned nor reported.
        """
        if isinstance(returned, Mapping):
            final = clean_metrics(returned, "the dict train returned")
            what = f"train returned {_short(returned)}"
        else:
            final = dict(self.measurements[-1].metrics) if self.measurements else {}
            what = f"train returned {_short(returned)} (not a dict of metrics)"
        for name in objective:
            if name not in final:
                last = next((m.metrics[name] for m in reversed(self.measurements) if name in m.metrics), None)
                if last is not None:
                    final[name] = last
        missing = [name for name in objective if name not in final]
        if missing:
            raise MetricError(f"{what} without the objective metric {', '.join(map(repr, missing))}, "
                              f"and it was never reported with ctx.report")
        return final


class MetricError(ValueError):
    """A metric that is not a number, or a trial that ends without its objective metric."""


def metric_value(name: str, value: Any, where: str = "metric") -> float:
    """``value`` as a float metric, or ``MetricError`` saying which metric and what it was.

    Numbers (and numeric scalars such as numpy's or 0-d tensors: anything ``float()`` takes
    that is not text, bytes or None) are accepted; NaN and infinities too (they lose, and the
    early-stop rule treats them as divergence). ``10**400`` overflows a float: refused.
    """
    if value is None or isinstance(value, str | bytes | bytearray):
        raise MetricError(f"{where}: metric {name!r} must be a number, got {_short(value)} "
                          f"({type(value).__name__})")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MetricError(f"{where}: metric {name!r} must be a number, got {_short(value)} "
                          f"({type(value).__name__}): {exc}") from None


def clean_metrics(metrics: Mapping[Any, Any], where: str) -> dict[str, float]:
    """Validated ``{name: float}`` (names must be non-empty strings)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise MetricError(f"{where}: metric names must be non-empty strings, got {_short(key)}")
        out[key] = metric_value(key, value, where)
    return out


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # a user object whose repr raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
