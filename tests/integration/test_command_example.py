"""Issue 19: the examples of ``examples/command/`` end to end.

* The C program (``quadratic_trial.c``, compiled here with the system ``cc``) is run by
  ``pbt-actors run quadratic.toml``: the run completes, ``lineage`` prints the commands,
  ``status --output`` its output, and ``replay`` of the best trial's schedule reproduces
  every metric bit for bit (the program is deterministic and prints ``%.17g``).
* The plain PyTorch script (``digits_train.py``, which never imports pbt_actors) trains,
  saves its directory checkpoint and resumes from it as a child trial.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pbt_actors.model.protocol import Report
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.experiment_loader import load_experiment_file
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import execute
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.dashboard.index import StoreIndex
from pbt_actors.tools.dashboard.views import trial_details
from pbt_actors.tools.lineage import resolve_trial, schedule
from pbt_actors.tools.replay import replay
from tests.support.runs import REPO, cli, output_once_exited

EXAMPLES = REPO / "examples" / "command"


def _cli_ok(*args: str, timeout_s: float = 120) -> str:
    proc = cli(*args)
    out = output_once_exited(proc, timeout_s, f"pbt-actors {args[0]} kept running")
    assert proc.returncode == 0, out
    return out


@pytest.mark.timeout(240)
def test_the_c_program_runs_replays_bit_for_bit_and_shows_its_output(tmp_path: Path) -> None:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (cc) on this machine: the C example cannot be built")
    for name in ("quadratic.toml", "quadratic_trial.c"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    subprocess.run([compiler, "-O2", "-o", str(tmp_path / "quadratic_trial"), str(tmp_path / "quadratic_trial.c")],
                   check=True, timeout=60)
    store = tmp_path / "store"
    _cli_ok("run", str(tmp_path / "quadratic.toml"), "--store", str(store), "--workers", "2")

    with LmdbTrialStore(store, readonly=True) as s:
        trials = list(s.iter_trials())
        best = resolve_trial(s, "best")
        sched = schedule(s, best)
        by_id = {t.id: t for t in trials}
        index = StoreIndex(s)
        index.refresh()
        details = trial_details(index, best, store)  # the dashboard's /api/trial/ID
    assert details is not None and [o["attempt"] for o in details["output"]] == [1]
    assert "pbt: checkpoint step=" in details["output"][0]["output"]
    assert trials and all(t.status is TrialStatus.COMPLETED for t in trials), [t.error for t in trials]
    assert by_id[best].final is not None and by_id[best].final["score"] > -1.5  # near the optimum, -1

    lineage = json.loads(_cli_ok("lineage", "--store", str(store), "best", "--json"))
    assert len(lineage["commands"]) == len(sched.segments)
    first = sched.segments[0]
    assert f"PBT_START_STEP={first.start_step}" in lineage["commands"][0]
    assert f"./quadratic_trial --lr {json.dumps(first.hparams['lr'])}" in lineage["commands"][0]
    shown = _cli_ok("status", "--store", str(store), "--output", str(best))
    assert f"trial {best} attempt 1: ./quadratic_trial --lr" in shown and "pbt: checkpoint step=" in shown

    _, train = load_experiment_file(tmp_path / "quadratic.toml")
    result = replay(sched, train, checkpoint_root=tmp_path / "replay", replay_data=False)
    assert len(result.segments) == len(sched.segments)
    for replayed in result.segments:
        original = by_id[replayed.planned.segment.trial_id]
        assert replayed.measurements == original.measurements  # every step's score, bit for bit
        assert replayed.final == original.final
    assert result.checkpoint is not None


def _digits_ctx(root: Path, start: int, end: int, parent: object = None) -> TrialContext:
    return TrialContext(trial_id=3, attempt=1, generation=0, hparams={"lr": 0.1, "momentum": 0.9,
                                                                      "weight_decay": 1e-4},
                        start_step=start, end_step=end, checkpoint_root=str(root), experiment="digits-command",
                        parent_checkpoint=parent)  # type: ignore[arg-type]


@pytest.mark.slow  # two torch imports in child processes: ~10 s quiet, 90 s on a loaded 2-core machine
@pytest.mark.timeout(300)
def test_the_plain_pytorch_script_trains_and_resumes_from_its_checkpoint_directory(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    tree = ast.parse((EXAMPLES / "digits_train.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert "torch" in imported and "pbt_actors" not in imported
    experiment, train = load_experiment_file(EXAMPLES / "digits.toml")
    assert experiment.command is not None and experiment.command[1] == "digits_train.py"
    first = execute(_digits_ctx(tmp_path, 0, 2), train, "w", objective=("accuracy",))
    assert isinstance(first, Report), first
    assert first.checkpoint is not None and first.checkpoint.step == 2
    child = execute(_digits_ctx(tmp_path, 2, 4, first.checkpoint), train, "w", objective=("accuracy",))
    assert isinstance(child, Report), child
    assert [m.step for m in child.measurements] == [3, 4]
    assert child.final["accuracy"] >= 0.9  # examples/digits.py reaches ~0.95 after 4 epochs at these values


@pytest.mark.timeout(60)
def test_a_bad_toml_experiment_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((EXAMPLES / "quadratic.toml").read_text().replace("population = 6", "population = -1"))
    proc = cli("run", str(bad), "--store", str(tmp_path / "store"))
    out = output_once_exited(proc, 50, "run of a bad TOML file kept running")
    assert proc.returncode == 2, out
    assert str(bad) in out and "population" in out and "Traceback" not in out
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\ncommand = [\n')
    proc = cli("run", str(broken), "--store", str(tmp_path / "store"))
    out = output_once_exited(proc, 50, "run of a broken TOML file kept running")
    assert proc.returncode == 2 and "not a valid TOML file" in out and "Traceback" not in out, out
    assert not (tmp_path / "store").exists()


FLAKY_TOML = """
name = "crashy"
command = ["/bin/sh", "prog.sh", "{mode}"]
objective = "score"
population = 4
steps_per_trial = 1
max_steps = 3
max_attempts = 2
initial = [{ mode = "ok" }, { mode = "crash" }]
seed = 1

[space]
mode = { type = "categorical", choices = ["ok", "crash"] }
"""
FLAKY_PROGRAM = """\
if [ "$1" = crash ]; then echo "boom: cannot train with mode $1" >&2; exit 3; fi
echo "pbt: step=$PBT_END_STEP score=$PBT_END_STEP"
echo state > "$PBT_CHECKPOINT_DIR/state.txt"
"""


@pytest.mark.timeout(120)
def test_a_run_goes_on_past_programs_that_fail(tmp_path: Path) -> None:
    """End to end: the attempts of a program that exits 3 fail with its status and stderr,
    each trial is retried, then FAILED and replaced; nothing else is lost and the run ends."""
    (tmp_path / "crashy.toml").write_text(FLAKY_TOML)
    (tmp_path / "prog.sh").write_text(FLAKY_PROGRAM)
    store = tmp_path / "store"
    _cli_ok("run", str(tmp_path / "crashy.toml"), "--store", str(store), "--workers", "2")
    with LmdbTrialStore(store, readonly=True) as s:
        trials = list(s.iter_trials())
    failed = [t for t in trials if t.status is TrialStatus.FAILED]
    completed = [t for t in trials if t.status is TrialStatus.COMPLETED]
    assert failed and completed and len(failed) + len(completed) == len(trials)
    for trial in failed:
        assert trial.hparams["mode"] == "crash" and trial.attempt == 2
        assert trial.error is not None and "exited with exit status 3" in trial.error
        assert "boom: cannot train with mode crash" in trial.error
    assert all(t.hparams["mode"] == "ok" and t.checkpoint is not None for t in completed)
    assert max(t.end_step for t in completed) == 3
    report = json.loads(_cli_ok("verify", "--store", str(store), "--json"))
    assert report["ok"], report
