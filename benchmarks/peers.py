"""Ray Tune's PBT and PB2 on ``benchmarks/quality.py``'s tasks: the peer rows of ``docs/quality.md``.

    pip install .[peers]      # ray[tune], pinned (pyproject's optional extra)
    python benchmarks/quality.py --peers --seeds 8 --results docs/quality.json

Same task, same population, same evaluation, same seeds, equal compute:

* **Task**: the example file's own ``train(ctx)`` runs unchanged inside a Ray Tune function
  trainable, through ``PeerContext`` (the few ``TrialContext`` members the examples use). One
  Ray *iteration* is one of our trials: ``steps_per_trial`` steps, then one evaluation (the
  example's), reported with a checkpoint. PBT's ``perturbation_interval`` is one iteration, so
  both tools may exploit exactly where ours do (at the end of every trial).
* **Population, workers and compute**: ``num_samples = population``, ``max_concurrent_trials``
  = our virtual workers (2), one CPU each; every trial stops at ``max_steps / steps_per_trial``
  iterations, so the run trains ``population x max_steps`` steps (our ``budget_steps``) when no
  exploit changes a lineage's position. Ray's exploit copies the donor's checkpoint *and its
  iteration count*, so a trial that copies a member ahead of it skips steps and one behind it
  repeats steps; the steps actually trained are counted and recorded (``trained_steps``).
* **Seeds and initial population**: the same ``population`` initial configurations as our run
  with the same seed (``Policy.initial`` with the controller's decision generators), given to
  Ray as ``points_to_evaluate``; the scheduler's own randomness is seeded with the seed too
  (``random``/``numpy`` in the driver; Ray's PBT draws from ``random``). Ray's scheduling is
  asynchronous, so its runs are not bit-reproducible; ours are.
* **Evaluation**: the final population is each trial's last reported evaluation (its last
  iteration); "best" is the best single reported evaluation of the run, as ours.

Settings: Ray's documented defaults (``quantile_fraction=0.25``, ``resample_probability=0.25``,
perturbation factors 1.2/0.8, ``synch=False``; PB2 its defaults), plus what the Ray Tune PBT
guide recommends: ``time_attr="training_iteration"`` with a perturbation interval that is a
multiple of the checkpoint interval (here both 1 iteration). PB2 searches continuous bounds on a
linear scale; for a log-scale parameter (the learning rates) it is given ``log10`` of the value,
as a user would, so that its bandit sees the same axis as our mutations do.

This module needs ``ray[tune]``; nothing in the package imports it, and the rest of the benchmark
runs without it.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = ("ray-pbt", "ray-pb2")
PEER_LABELS = {
    "ray-pbt": "Ray Tune PopulationBasedTraining (defaults, quantile 25%, resample 25%)",
    "ray-pb2": "Ray Tune PB2 (GP-UCB explore, defaults)",
}
LOG_PREFIX = "log10_"


@dataclass
class PeerContext:
    """What an example's ``train(ctx)`` reads of a ``TrialContext``, backed by a Ray checkpoint."""

    trial_id: int
    hparams: Mapping[str, Any]
    start_step: int
    end_step: int
    state: Any = None
    device: str = "cpu"
    replay: bool = False
    saved: Any = None
    reports: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def load_checkpoint(self) -> Any:
        return self.state

    def save_checkpoint(self, state: Any, step: int | None = None) -> None:
        self.saved = state

    def report(self, step: int, **metrics: float) -> bool:
        self.reports.append((step, dict(metrics)))
        return True

    @property
    def should_stop(self) -> bool:
        return False


def to_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """Ray's config as the example's hyperparameters (``log10_x`` back to ``x``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key.startswith(LOG_PREFIX):
            out[key[len(LOG_PREFIX):]] = 10.0 ** float(value)
        else:
            out[key] = value
    return out


def make_trainable(task_path: str, steps_per_trial: int, seed: int):  # type: ignore[no-untyped-def]
    """A Ray Tune function trainable running the example's ``train`` one trial per iteration."""

    def trainable(config: dict[str, Any]) -> None:
        import torch
        from ray import tune

        torch.set_num_threads(1)
        from benchmarks.quality import load_example

        _, train = load_example(task_path)
        state, step = None, 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                payload = torch.load(Path(folder) / "state.pt", weights_only=True)
            state, step = payload["state"], int(payload["step"])
        member = int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])
        hparams = to_hparams(config)
        max_steps = int(config["_max_steps"])
        chunk = 0
        while step < max_steps:
            end = min(step + steps_per_trial, max_steps)
            # the example seeds its initial weights and data order from the trial id
            ctx = PeerContext(trial_id=seed * 1_000_000 + member * 10_000 + step * 10 + chunk % 10,
                              hparams=hparams, start_step=step, end_step=end, state=state)
            metrics = train(ctx)
            state, trained, step = ctx.saved, end - step, end
            chunk += 1
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"state": state, "step": step}, Path(folder) / "state.pt")
                tune.report({**{k: float(v) for k, v in metrics.items()}, "trained_steps": trained,
                             "step": step}, checkpoint=tune.Checkpoint.from_directory(folder))

    return trainable


def ray_space(space: Any, peer: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(mutations or bounds, key map)``: our search space as PBT mutations / PB2 bounds."""
    from ray import tune

    from pbt_actors.model.space import Float, Int

    spec: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for name, param in space.items():
        if not isinstance(param, Float | Int):
            raise ValueError(f"peer rows support Float/Int parameters only, not {name}={param!r}")
        if peer == "ray-pbt":
            spec[name] = (tune.loguniform(param.low, param.high) if param.log
                          else tune.uniform(param.low, param.high))
            keys[name] = name
        else:
            key = LOG_PREFIX + name if param.log else name
            spec[key] = ([math.log10(param.low), math.log10(param.high)] if param.log
                         else [param.low, param.high])
            keys[name] = key
    return spec, keys


_RAY: dict[str, bool] = {"started": False}


def run_peer(task: Any, peer: str, seed: int, workers: int = 2) -> dict[str, Any]:
    """One run of ``peer`` on ``task`` with ``seed``: the same measurements as ``run_one``."""
    import numpy as np
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from benchmarks.quality import load_example
    from pbt_actors.control.policies import make_policy
    from pbt_actors.model.rng import decision_rng

    base, _ = load_example(task.path)
    random.seed(seed)
    np.random.seed(seed)
    if not _RAY["started"]:
        repo = str(Path(__file__).resolve().parents[1])
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}})
        _RAY["started"] = True
    spec, keys = ray_space(base.space_, peer)
    # our generation 0 for this seed, as Ray configurations
    from pbt_actors.model.experiment import Experiment

    experiment = Experiment(name=task.key, space=base.space_, objective=base.objective_,
                            population=task.population, steps_per_trial=task.steps_per_trial,
                            max_steps=task.max_steps, seed=seed)
    initial = [s.spec.hparams for s in make_policy(experiment).initial(
        lambda i, k: decision_rng(seed, i, k))]
    points = []
    for hp in initial:
        point: dict[str, Any] = {"_max_steps": task.max_steps}
        for name, value in hp.items():
            point[keys[name]] = math.log10(float(value)) if keys[name].startswith(LOG_PREFIX) else value
        points.append(point)
    metric = task.metric
    mode = "max" if base.objective_.metrics[0].goal == "max" else "min"
    if peer == "ray-pbt":
        scheduler: Any = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                                 hyperparam_mutations=spec)
        param_space = {"_max_steps": task.max_steps, **{k: v for k, v in spec.items()}}
    else:
        scheduler = PB2(time_attr="training_iteration", perturbation_interval=1, hyperparam_bounds=spec)
        param_space = {"_max_steps": task.max_steps,
                       **{k: tune.uniform(lo, hi) for k, (lo, hi) in spec.items()}}
    iterations = math.ceil(task.max_steps / task.steps_per_trial)
    with tempfile.TemporaryDirectory(prefix="pbt-peers-") as root:
        tuner = tune.Tuner(
            tune.with_resources(make_trainable(task.path, task.steps_per_trial, seed), {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, scheduler=scheduler, num_samples=task.population,
                max_concurrent_trials=workers, reuse_actors=True,
                search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=seed)),
            run_config=tune.RunConfig(name=f"{task.key}-{peer}-{seed}", storage_path=root, verbose=0,
                                      stop={"training_iteration": iterations}),
        )
        started = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - started
        finals: list[float] = []
        every: list[float] = []
        trained = reports = 0
        for result in grid:
            frame = result.metrics_dataframe
            if frame is None or frame.empty:
                finals.append(math.nan)
                continue
            values = [float(v) for v in frame[metric]]
            finals.append(values[-1])
            every.extend(v for v in values if math.isfinite(v))
            trained += int(frame["trained_steps"].sum())
            reports += len(frame)
    sign = 1.0 if mode == "max" else -1.0
    best = max(every, key=lambda v: sign * v) if every else math.nan
    return {
        "task": task.key, "config": peer, "seed": seed, "wall_s": wall,
        "final_mean": statistics.fmean(v if math.isfinite(v) else (-sign * 1e9) for v in finals),
        "final_values": finals, "best": best, "leased_steps": trained, "trained_steps": trained,
        "trials": reports, "budget": task.budget,
    }


def available() -> bool:
    """Is Ray Tune installed (the ``peers`` extra)?"""
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("PBT_NO_PEERS", "") == ""
