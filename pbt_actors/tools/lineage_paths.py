"""Lineages as runs: split the warm-start tree into paths, one per leaf.

Layer 5 (a face). PBT's warm-start graph is a tree (every trial has at most one parent), and
tools that draw one line per "run" (TensorBoard, the dashboard's fitness chart) need each trial
in exactly one line. The rule, decided here once: a trial continues its parent's lineage if it
is the parent's first child (lowest id); every later child opens a new lineage named after
itself, which branches off the parent's line at the parent's last step. So there are as many
lineages as leaves, no point is drawn twice, and a lineage never changes once assigned.

Ids are dense and a child is always created after its parent completed, so feeding trials by
ascending id is enough; ``LineageAssigner`` is incremental (``export --follow``, the
dashboard's refresh) and O(1) per trial.
"""

from __future__ import annotations


class LineageAssigner:
    """Assigns each trial the id of the lineage (a path of the warm-start tree) it belongs to."""

    __slots__ = ("_has_child", "_lineage")

    def __init__(self) -> None:
        self._lineage: dict[int, int] = {}
        self._has_child: set[int] = set()

    def add(self, trial_id: int, parent_id: int | None) -> int:
        """The lineage of ``trial_id`` (call once per trial, by ascending id); idempotent."""
        known = self._lineage.get(trial_id)
        if known is not None:
            return known
        if parent_id is None or parent_id not in self._lineage or parent_id in self._has_child:
            lineage = trial_id
        else:
            lineage = self._lineage[parent_id]
        if parent_id is not None:
            self._has_child.add(parent_id)
        self._lineage[trial_id] = lineage
        return lineage

    def lineage_of(self, trial_id: int) -> int | None:
        """The lineage assigned to ``trial_id``, or None if it was never added."""
        return self._lineage.get(trial_id)

    def __len__(self) -> int:
        return len(self._lineage)
