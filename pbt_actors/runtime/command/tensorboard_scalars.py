"""Metrics a command trial's program writes as TensorBoard event files, read with TensorBoard's
own reader (as Katib's collector does).

Layer 4. A program that already logs with a ``SummaryWriter`` needs no metric lines: pointed at
``{tensorboard_dir}`` / ``$PBT_TENSORBOARD_DIR``, every scalar it writes there becomes a report
(its tag is the metric name, its step the step). The folder is read every ``POLL_S`` seconds
while the program runs and once after it ended, each file incrementally. TensorBoard is an
optional extra (``pip install 'pbt-actors[tensorboard]'``): it is imported only once an event
file exists, and without it such files are ignored with one warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 2.0
EVENT_FILE_GLOB = "events.out.tfevents.*"


class TensorboardScalars:
    """The scalars written under ``folder`` since the last ``poll``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._loaders: dict[Path, Any] = {}
        self._missing = False

    def poll(self) -> list[tuple[int, dict[str, float]]]:
        """New ``(step, {tag: value})``, by step; [] when there are none (or no TensorBoard)."""
        files = sorted(self.folder.rglob(EVENT_FILE_GLOB)) if self.folder.is_dir() else []
        if not files or self._missing:
            return []
        try:
            from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
            from tensorboard.util import tensor_util
        except ImportError:
            self._missing = True
            log.warning("the program wrote TensorBoard event files into %s, but tensorboard is not installed "
                        "(pip install 'pbt-actors[tensorboard]'): they are not read", self.folder)
            return []
        by_step: dict[int, dict[str, float]] = {}
        for file in files:
            loader = self._loaders.get(file)
            if loader is None:
                loader = self._loaders[file] = EventFileLoader(str(file))
            try:
                events = list(loader.Load())
            except Exception as exc:  # a damaged or half-written file: what was read counts
                log.warning("TensorBoard event file %s: %s", file, exc)
                continue
            for event in events:
                for value in event.summary.value:
                    number = _scalar(value, tensor_util)
                    if number is not None and value.tag:
                        by_step.setdefault(int(event.step), {})[value.tag] = number
        return sorted(by_step.items())


def _scalar(value: Any, tensor_util: Any) -> float | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":  # tf.summary v2 scalars
        try:
            array = tensor_util.make_ndarray(value.tensor)
        except Exception:
            return None
        if array.size == 1 and array.dtype.kind in "fiu":
            return float(array.reshape(-1)[0])
    return None


__all__ = ["POLL_S", "TensorboardScalars"]
