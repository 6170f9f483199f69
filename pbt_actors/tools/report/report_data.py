"""The snapshot of a store every figure and the index page read: the trials by id, the
experiment, the best trial, the clock, and the lineage questions the figures ask of them."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pbt_actors.control.progress import Counts, best_completed, finished
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore


# --- the data every figure reads ----------------------------------------------------------------
@dataclass
class ReportData:
    """A snapshot of the store: trials by id, the experiment, the best trial, the clock."""

    trials: list[Trial]
    experiment: Experiment | None
    now: float
    finished: bool
    by_id: dict[int, Trial] = field(init=False)
    best: Trial | None = None
    root_memo: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {t.id: t for t in self.trials}

    # objective helpers: plot raw values of a single metric, the weighted scalar of several
    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.experiment is not None:
            return self.experiment.objective_.names
        for t in self.trials:
            if t.final:
                return (sorted(t.final)[0],)
        return ("objective",)

    @property
    def maximise(self) -> bool:
        if self.experiment is None or len(self.metric_names) > 1:
            return True
        return self.experiment.objective_.metrics[0].goal == "max"

    @property
    def metric_label(self) -> str:
        direction = "higher is better" if self.maximise else "lower is better"
        if len(self.metric_names) == 1:
            return f"{self.metric_names[0]} ({direction})"
        return f"weighted objective ({direction})"

    def value(self, metrics: Mapping[str, float] | None) -> float | None:
        """The plotted fitness of a metrics map, or None (missing or non-finite)."""
        if not metrics:
            return None
        if len(self.metric_names) == 1 or self.experiment is None:
            raw = metrics.get(self.metric_names[0])
            if isinstance(raw, int | float) and math.isfinite(raw):
                return float(raw)
            return None
        scalar = self.experiment.objective_.scalar(metrics)
        return scalar if math.isfinite(scalar) else None

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximise else a < b

    @property
    def population(self) -> int:
        return self.experiment.population if self.experiment is not None else max(1, len(self.roots()))

    @property
    def t0(self) -> float:
        return min((t.created_at for t in self.trials), default=self.now)

    def root(self, trial: Trial) -> int:
        """The seed trial a trial descends from by warm starts (memoised: walking every trial's
        chain anew was quadratic, 30 s at 100k trials)."""
        roots = self.root_memo
        known = roots.get(trial.id)
        if known is not None:
            return known
        parent_root = roots.get(trial.parent_id) if trial.parent_id is not None else None
        roots[trial.id] = found = parent_root if parent_root is not None else self._walk_root(trial)
        return found

    def _walk_root(self, trial: Trial) -> int:
        seen: set[int] = set()
        while trial.parent_id is not None and trial.parent_id in self.by_id and trial.id not in seen:
            seen.add(trial.id)
            trial = self.by_id[trial.parent_id]
        return trial.id

    def roots(self) -> list[int]:
        return sorted({self.root(t) for t in sorted(self.trials, key=lambda t: t.id)})  # parents first

    def best_chain(self) -> list[Trial]:
        if self.best is None:
            return []
        chain: list[Trial] = []
        seen: set[int] = set()
        current: Trial | None = self.best
        while current is not None and current.id not in seen:
            seen.add(current.id)
            chain.append(current)
            current = self.by_id.get(current.parent_id) if current.parent_id is not None else None
        return chain[::-1]

    def final_population(self) -> list[Trial]:
        alive = [t for t in self.trials if t.status not in (TrialStatus.FAILED, TrialStatus.STOPPED)]
        return alive[-self.population:]


def collect(store: TrialStore, now: float | None = None) -> ReportData:
    """Read everything a report needs from ``store`` once."""
    raw = store.get_meta(META_EXPERIMENT)
    experiment = Experiment.from_dict(raw) if raw is not None else None
    trials = list(store.iter_trials())
    over = finished(Counts.of(store, trials))  # the run's finished rule, over the records read anyway
    if now is None:
        ends = [t.ended_at for t in trials if t.ended_at is not None]
        now = max(ends, default=time.time()) if over else time.time()
    data = ReportData(trials, experiment, now, over)
    data.best = best_completed(store, experiment) if experiment is not None else None
    return data



LINES_MAX = 2000
"""Above this many trials a figure stops drawing one line per trial (a wall of lines, and
minutes of matplotlib): ``fitness`` shades the density of every trial's points and draws lines
for the final population's warm-start ancestry only; ``lineage_tree`` draws that ancestry only."""


def warm_start_ancestry(data: ReportData, trials: Iterable[Trial]) -> set[int]:
    """Ids of ``trials`` and their warm-start ancestors (whose weights live on in them), read
    from the snapshot: O(size of the ancestry), each ancestor visited once."""
    out: set[int] = set()
    for trial in trials:
        current: Trial | None = trial
        while current is not None and current.id not in out:
            out.add(current.id)
            current = data.by_id.get(current.parent_id) if current.parent_id is not None else None
    return out
