"""The simulator: determinism, the synthetic objectives' known answers, the fault model driven
through the unchanged ControllerCore, the study claim that a schedule beats every constant
learning rate, and the ``sim`` subcommand."""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
from contextlib import redirect_stdout
from dataclasses import replace

import pytest

from pbt_actors.cli.sim import ALL_WINDOW, add_sim_parser, format_table, main, run_sweep
from pbt_actors.model.records import TrialStatus
from pbt_actors.tools.sim import (
    LearningCurve,
    ParetoCurve,
    SimConfig,
    ToyQuadratic,
    make_objective,
    simulate,
)
from pbt_actors.tools.sim.objectives import nqm_steps
from pbt_actors.tools.verify import verify_store
from tests.support.driver import graph
from tests.support.toy import train_toy

SMALL = SimConfig(workers=3, speed_spread=0.3, duration_cv=0.2)


def small_curve() -> LearningCurve:
    return LearningCurve(max_steps=300, steps_per_trial=30)


# --- determinism --------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_one_seed_gives_an_identical_trial_graph_every_time() -> None:
    config = replace(SMALL, preempt_rate=2.0, lost_notice=0.5, graceful=0.3, join_per_hour=1.0,
                     leave_per_worker_hour=0.5)
    objective = replace(small_curve(), noise=0.2)
    runs = [simulate(objective, policy="initiator", population=4, seed=11, config=config, crossover_prob=0.5)
            for _ in range(2)]
    (first, sim1), (second, sim2) = runs
    assert first.preemptions > 0 and first.workers_seen > 3  # the random paths were exercised
    assert graph(sim1.store) == graph(sim2.store)
    assert first.to_dict() | {"wall_s": 0} == second.to_dict() | {"wall_s": 0}
    _, sim3 = simulate(objective, policy="initiator", population=4, seed=12, config=config, crossover_prob=0.5)
    assert graph(sim3.store) != graph(sim1.store)


# --- objectives ------------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_toy_closed_form_matches_step_by_step_gradient_ascent() -> None:
    toy = ToyQuadratic(alpha=0.02)
    state = toy.train((0.9, 0.9), {"h0": 0.7, "h1": 0.2}, 10, 35)
    expected = train_toy((0.9, 0.9), 0.7, 0.2, 25)
    assert state == pytest.approx(expected, rel=1e-12)
    assert toy.evaluate((0.0, 0.0))["Q"] == pytest.approx(toy.optimum())
    # the paper's fixed members can never pass Q = 0.39
    stuck = toy.train((0.9, 0.9), {"h0": 1.0, "h1": 0.0}, 0, 10_000)
    assert toy.evaluate(stuck)["Q"] <= 0.39 + 1e-9


@pytest.mark.timeout(10)
def test_curve_closed_form_optimum_and_that_a_schedule_beats_every_constant() -> None:
    loss, lr, s = 0.7, 0.05, 0.1
    stepped = loss
    for _ in range(40):
        stepped = (1 - lr) ** 2 * stepped + lr * lr * s
    assert nqm_steps(loss, lr, s, 40) == pytest.approx(stepped, rel=1e-12)
    # the greedy schedule lr* = L / (L + s) reaches the closed-form optimum
    curve = LearningCurve()
    state = curve.initial_state()
    for step in range(curve.max_steps):
        greedy = state[0] / (state[0] + curve.gradient_noise)
        state = curve.train(state, {"lr": greedy}, step, step + 1)
    assert state[0] == pytest.approx(curve.optimum(), rel=1e-9)
    best_lr, best_loss = curve.best_constant()
    grid = [curve.constant_loss(10 ** (-4 + 4 * i / 200)) for i in range(201)]
    assert best_loss <= min(grid) * (1 + 1e-9)
    assert best_loss > 2.5 * curve.optimum()  # every constant setting loses to the schedule by > 2.5x
    assert 1e-3 < best_lr < 1e-2


@pytest.mark.timeout(10)
def test_pareto_reference_front_and_hypervolume() -> None:
    problem = ParetoCurve()
    front = problem.reference_front()
    assert [p["cost"] for p in front] == sorted(p["cost"] for p in front)
    assert [p["loss"] for p in front] == sorted((p["loss"] for p in front), reverse=True)
    reference = problem.reference_hypervolume()
    assert reference is not None and reference > 0
    dominated = [{"loss": p["loss"] * 2, "cost": p["cost"]} for p in front]
    assert problem.hypervolume(front + dominated) == pytest.approx(reference)
    assert problem.hypervolume(dominated) < reference
    assert problem.hypervolume([]) == 0.0
    assert problem.objective().comparison == "pareto"


@pytest.mark.timeout(10)
def test_noisy_variants_only_perturb_what_workers_report() -> None:
    import random

    rng = random.Random(1)
    noisy = make_objective("curve-noisy")
    true = {"loss": 1e-3}
    observed = [noisy.observe(true, rng)["loss"] for _ in range(2000)]
    assert statistics.median(observed) == pytest.approx(1e-3, rel=0.05)
    assert statistics.stdev(math.log(o) for o in observed) == pytest.approx(0.2, rel=0.1)
    assert make_objective("curve").observe(true, rng) == true
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("nope")


# --- the fault model, through the real core --------------------------------------------------------------
@pytest.mark.timeout(30)
def test_preempted_work_is_requeued_by_the_core_and_is_all_the_compute_lost() -> None:
    result, sim = simulate(small_curve(), policy="initiator", population=4, seed=3,
                           config=replace(SMALL, preempt_rate=1.5, lost_notice=0.5))
    assert result.finished and not result.errors
    assert result.trials_lost > 5 and result.leases_expired > 0  # both supervised and silent losses
    trials = list(sim.store.iter_trials())
    assert all(t.status is TrialStatus.COMPLETED for t in trials)
    retried = [t for t in trials if t.completed_attempt and t.completed_attempt > 1]
    assert retried and all(t.history[0][0] == 1 for t in retried)
    assert all(t.losses == t.completed_attempt - 1 for t in retried)  # losses, not failures, to the core
    # nothing else was run twice: the waste is exactly the work in flight at the preemptions
    assert result.wasted_s == pytest.approx(result.lost_s, rel=1e-9, abs=1e-6)
    assert result.lost_s < result.trials_lost * max(3 * sim.config.trial_s, 1)
    assert verify_store(sim.store, None).ok


@pytest.mark.timeout(30)
def test_silent_losses_wait_for_lease_expiry_and_graceful_ones_resume() -> None:
    result, sim = simulate(small_curve(), policy="truncation", population=4, seed=5,
                           config=replace(SMALL, preempt_rate=3.0, lost_notice=0.0, restart_s=10_000.0))
    assert result.finished and result.leases_expired == result.trials_lost > 0
    assert result.workers_seen == 3 + result.trials_lost  # a fresh worker replaced each vanished host
    assert verify_store(sim.store, None).ok
    graceful, gsim = simulate(small_curve(), policy="random", population=4, seed=5,
                              config=replace(SMALL, preempt_rate=3.0, graceful=1.0))
    resumed = [t for t in gsim.store.iter_trials() if t.resume is not None]
    assert graceful.finished and resumed
    assert all(t.resume.step > t.start_step for t in resumed)
    assert all(t.losses >= 1 for t in resumed)  # a graceful preemption is a loss too (Fail.preempted)
    assert graceful.lost_s < 0.2 * result.lost_s  # a saved checkpoint keeps most of the work
    assert verify_store(gsim.store, None).ok


@pytest.mark.timeout(30)
def test_heartbeats_keep_long_trials_leased_and_without_them_leases_expire() -> None:
    config = replace(SMALL, lease_s=100.0, trial_s=600.0, duration_cv=0.0, speed_spread=0.0)
    kept, _ = simulate(small_curve(), policy="random", population=3, seed=1, config=config)
    assert kept.finished and kept.leases_expired == 0 and kept.wasted_s == pytest.approx(0.0, abs=1e-6)
    lapsed, sim = simulate(small_curve(), policy="random", population=3, seed=1,
                           config=replace(config, heartbeats=False))
    # each lease lapses mid-trial; the trial is re-queued and run again while the first attempt
    # still finishes and (as docs/design.md §6.3 allows) completes it; the duplicate work is waste
    assert lapsed.finished and lapsed.leases_expired > 0 and lapsed.wasted_s > 0
    assert verify_store(sim.store, None).ok


@pytest.mark.timeout(30)
def test_workers_join_and_drain_on_a_schedule() -> None:
    config = replace(SMALL, workers=1, schedule=((1000.0, 3), (4000.0, -2)))
    result, sim = simulate(small_curve(), policy="initiator", population=4, seed=2, config=config)
    assert result.finished and result.workers_seen == 4
    ran = {t.worker for t in sim.store.iter_trials()}
    assert ran == {"sim-w0", "sim-w1", "sim-w2", "sim-w3"}
    late = [t for t in sim.store.iter_trials() if t.started_at is not None and t.started_at > 5000.0]
    assert late and {t.worker for t in late} <= {"sim-w0", "sim-w1"}  # w3, w2 drained and left
    assert verify_store(sim.store, None).ok
    # Poisson churn: workers come and go; the run ends when the controller says done, not at the
    # last scheduled departure (mean worker lifetime here: 100 virtual hours)
    churn = replace(SMALL, workers=2, join_per_hour=2.0, leave_per_worker_hour=0.01, max_workers=6)
    result, sim = simulate(small_curve(), policy="truncation", population=4, seed=2, config=churn)
    assert result.finished and 2 < result.workers_seen <= 8
    assert result.virtual_s < 24 * 3600 and sim.now - result.virtual_s < 3600
    assert verify_store(sim.store, None).ok


@pytest.mark.timeout(30)
def test_budget_mode_emulates_a_large_population_with_few_workers() -> None:
    result, sim = simulate(small_curve(), policy="initiator", population=8, seed=4,
                           config=replace(SMALL, workers=2), budget_mode=True)
    assert result.finished and not result.errors
    sizes = [len(sim.store.generation(g)) for g in range(3)]
    assert sizes == [8, 8, 8]
    assert verify_store(sim.store, None).ok


# --- the study claim ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_initiator_beats_the_best_constant_learning_rate_random_finds_at_equal_compute() -> None:
    """Changing-learning-rate objective, 10 seeds, population 10, equal compute (both capped at
    population × lineage length trials). Stated margin: initiator's mean final loss is at most
    half of random's, and below the loss of the best constant learning rate there is."""
    curve = LearningCurve()
    cap = 10 * curve.max_steps // curve.steps_per_trial
    config = SimConfig(workers=10, speed_spread=0.2)
    pbt, rnd = [], []
    for seed in range(10):
        a, _ = simulate(curve, policy="initiator", population=10, seed=seed, config=config, max_trials=cap)
        b, _ = simulate(curve, policy="random", population=10, seed=seed, config=config, max_trials=cap)
        assert a.steps_trained == b.steps_trained == cap * curve.steps_per_trial  # equal compute
        pbt.append(a.best)
        rnd.append(b.best)
    _, best_constant = curve.best_constant()
    assert min(rnd) >= best_constant * (1 - 1e-9)  # random can at best find the best constant
    assert statistics.fmean(pbt) <= 0.5 * statistics.fmean(rnd), (pbt, rnd)
    assert statistics.fmean(pbt) < best_constant
    assert sum(p < r for p, r in zip(pbt, rnd, strict=True)) >= 9


# --- the subcommand ----------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_sim_subcommand_prints_a_table_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="pbt-actors")
    add_sim_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", "--objective", "toy", "--policy", "initiator,random", "--population", "3",
                              "--seeds", "2", "--max-steps", "40", "--preempt-rate", "0,50%", "--opponent-window",
                              "all", "--quiet"])
    assert args.preempt_rate == [0.0, 0.5] and args.opponent_window == [ALL_WINDOW]
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "initiator" in out and "random" in out and "trials lost" in out and "± " in out
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["--objective", "pareto", "--population", "3", "--seeds", "2", "--max-steps", "100",
                     "--budget-mode", "--workers", "2", "--join-per-hour", "2", "--leave-per-worker-hour", "0.5",
                     "--json", "--quiet"])
    assert code == 0
    data = json.loads(buffer.getvalue())
    (row,) = data["rows"]
    assert row["budget_mode"] and row["workers"] == 2 and row["seeds"] == 2 and len(row["runs"]) == 2
    assert row["hypervolume_mean"] > 0 and row["max_trials"] == 3 * 100 // 50
    with pytest.raises(SystemExit):
        main(["--policy", "random", "--budget-mode", "--quiet"])
    assert main(["--duration-cv", "-1", "--seeds", "1", "--quiet"]) == 2  # a bad setting: a message, no traceback
    assert "spreads must be >= 0" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_the_subcommand_names_match_the_registries_and_registering_it_stays_light() -> None:
    import subprocess
    import sys

    from pbt_actors.cli.sim import OBJECTIVE_NAMES, POLICIES
    from pbt_actors.model.experiment import POLICY_NAMES
    from pbt_actors.tools.sim import sweep
    from pbt_actors.tools.sim.objectives import OBJECTIVES

    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES and POLICY_NAMES == POLICIES
    assert sweep.ALL_WINDOW == ALL_WINDOW
    code = ("import argparse, sys; from pbt_actors.cli.sim import add_sim_parser; "
            "add_sim_parser(argparse.ArgumentParser().add_subparsers()); "
            "print('numpy' in sys.modules, 'pbt_actors.control.core' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.timeout(30)
def test_table_markdown_and_lmdb_store(tmp_path: object) -> None:
    parser = argparse.ArgumentParser()
    add_sim_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", "--objective", "curve", "--population", "3", "--seeds", "1", "--max-steps",
                              "100", "--store", "lmdb", "--store-dir", str(tmp_path), "--quiet"])
    rows = run_sweep(args)
    table = format_table(rows, markdown=True)
    assert table.splitlines()[2].startswith("| objective | policy |")
    assert rows[0].runs[0].finished
    with pytest.raises(SystemExit, match="already holds a store"):
        run_sweep(args)
