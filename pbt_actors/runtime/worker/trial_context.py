"""``TrialContext``: everything a user's ``train(ctx)`` sees of the framework.

Layer 4. The context is deliberately small: hyperparameters, the step range, a device, the
parent's checkpoint, a place to save one, and ``report``. It does not know about sockets;
progress goes through a ``TrialLink`` (the worker's connection, or nothing in replay).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pbt_actors.model.errors import CheckpointWriteError
from pbt_actors.model.records import CheckpointRef, Measurement, trial_checkpoint_prefix
from pbt_actors.runtime.checkpoint_payloads import (
    load_checkpoint,
    load_checkpoint_dir,
    save_checkpoint,
    save_checkpoint_dir,
)

log = logging.getLogger(__name__)

MAX_MEASUREMENTS = 1000
"""Measurements a trial keeps (``TrialContext.report``). Past it they are thinned evenly, so
that a trial reporting every one of 60,000 steps still ends in a report that fits one frame
(``transport.codec.DEFAULT_MAX_MESSAGE_BYTES``) and a store record of sane size."""


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
    max_measurements: int = MAX_MEASUREMENTS
    reports: int = 0
    """How often ``report`` was called (the measurements kept may be fewer: ``_keep``)."""
    _index: list[int] = field(default_factory=list, repr=False)
    """For each kept measurement, the number of the ``report`` call that made it (0-based)."""
    _latest: dict[str, int] = field(default_factory=dict, repr=False)
    """For each metric name, the number of the last ``report`` call that carried it."""
    store_fault: Exception | None = None
    """Why ``save_checkpoint`` could not write (``CheckpointWriteError``): set even when ``train``
    catches it, so the attempt's end is reported as the store's fault, not the trial's."""
    _stride: int = field(default=1, repr=False)
    _thinned: bool = field(default=False, repr=False)

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
        """Save this trial's state put-once under a key carrying its sha256 (a local file linked
        into place, or an upload that finished) and record it; the report names it only after."""
        at = self.end_step if step is None else step
        uri = f"{trial_checkpoint_prefix(self.experiment, self.trial_id)}a{self.attempt}-s{at}.ckpt"
        try:
            self.saved = save_checkpoint(self.checkpoint_root, uri, state, at, keyed=True)
        except CheckpointWriteError as exc:
            self.store_fault = exc
            raise
        return self.saved

    def load_checkpoint_dir(self) -> Path | None:
        """The parent's (or resume) directory checkpoint as a local folder, every file verified
        by size and sha256 first (fetched once per host for a URL root); None when from scratch.
        Read-only by convention (its files are mode 0444): copy what you change.

        Raises:
            CheckpointError: missing, truncated or tampered file, or a parent that saved a
                single file (``load_checkpoint`` then).
        """
        if self.parent_checkpoint is None:
            return None
        return load_checkpoint_dir(self.checkpoint_root, self.parent_checkpoint)

    def save_checkpoint_dir(self, path: str | os.PathLike[str], step: int | None = None) -> CheckpointRef:
        """Save the local folder ``path`` (what ``save_pretrained`` or Lightning writes) as this
        trial's checkpoint, put-once, and record it (docs/design.md §8.6): its files are copied
        and hashed, then committed, then a manifest naming them by size and sha256.

        Raises:
            CheckpointError: the folder holds a symbolic link out of it, a link to a folder, a
                FIFO or device, or more than ``storage.dir_manifest.MAX_FILES`` files.
            CheckpointWriteError: the store could not take it (the attempt is the store's fault).
        """
        at = self.end_step if step is None else step
        uri = f"{trial_checkpoint_prefix(self.experiment, self.trial_id)}a{self.attempt}-s{at}.manifest"
        try:
            self.saved = save_checkpoint_dir(self.checkpoint_root, uri, path, at)
        except CheckpointWriteError as exc:
            self.store_fault = exc
            raise
        return self.saved

    def report(self, step: int, **metrics: float) -> bool:
        """Record metrics at ``step``; returns whether to keep going.

        Raises:
            MetricError: a value that is not a number (``"abc"``, None, ``10**400``); inside
                ``train`` that is the attempt's failure, with this message.
        """
        clean = clean_metrics(metrics, f"ctx.report(step={step!r})")
        self._keep(Measurement(int(step), clean))
        if not self.link.record(int(step), clean):
            self.stop_event.set()
        return not self.should_stop

    def _keep(self, measurement: Measurement) -> None:
        """Append ``measurement``, keeping at most ``max_measurements`` (+ one per metric name).

        Kept are the reports whose number is a multiple of a stride (1 at first, doubled at
        each thinning: evenly spread, the first one always among them), the latest report,
        and for each metric name the latest report that carried it (``final_metrics`` falls
        back on those, and a metric reported rarely must not vanish). Amortised O(1).
        """
        number = self.reports
        self.reports += 1
        kept, index = self.measurements, self._index
        if len(kept) != len(index):  # the list was replaced from outside: start over from it
            index[:] = range(len(kept))
        if index and index[-1] % self._stride and not self._carries_latest(index[-1], measurement):
            kept.pop()  # the previous "latest" is off the grid and nothing else needs it
            index.pop()
        kept.append(measurement)
        index.append(number)
        for name in measurement.metrics:
            self._latest[name] = number
        if len(kept) > max(2, self.max_measurements):
            self._thin()

    def _carries_latest(self, number: int, replacing: Measurement) -> bool:
        """Whether report ``number`` is the latest carrier of a metric ``replacing`` lacks."""
        return any(last == number and name not in replacing.metrics for name, last in self._latest.items())

    def _thin(self) -> None:
        self._stride *= 2
        needed = set(self._latest.values())
        last = self._index[-1]
        pairs = [(n, m) for n, m in zip(self._index, self.measurements, strict=True)
                 if n % self._stride == 0 or n == last or n in needed]
        self._index[:] = [n for n, _ in pairs]
        self.measurements[:] = [m for _, m in pairs]
        if not self._thinned:
            self._thinned = True
            log.warning("trial %d attempt %d: ctx.report was called more than %d times; keeping at most "
                        "that many measurements, evenly thinned (the first, the latest and each metric's "
                        "latest value are kept)", self.trial_id, self.attempt, self.max_measurements)

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
