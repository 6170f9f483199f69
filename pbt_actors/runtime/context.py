"""``TrialContext``: everything a user's ``train(ctx)`` sees of the framework.

Layer 4. The context is deliberately small: hyperparameters, the step range, a device, the
parent's checkpoint, a place to save one, and ``report``. It does not know about sockets;
progress goes through a ``TrialLink`` (the worker's connection, or nothing in replay).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
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
        """Record metrics at ``step``; returns whether to keep going."""
        clean = {k: float(v) for k, v in metrics.items()}
        self.measurements.append(Measurement(int(step), clean))
        if not self.link.record(int(step), clean):
            self.stop_event.set()
        return not self.should_stop

    def final_metrics(self, returned: Any) -> dict[str, float]:
        """What ``train`` returned (a metrics dict), else the last reported metrics."""
        if isinstance(returned, Mapping):
            return {str(k): float(v) for k, v in returned.items()}
        if self.measurements:
            return dict(self.measurements[-1].metrics)
        return {}
