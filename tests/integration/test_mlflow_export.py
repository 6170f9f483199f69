"""``pbt-actors export --format mlflow``: against a real MLflow tracking server, read back
through MLflow's own client.

A module fixture starts ``mlflow server`` (SQLite backend, loopback, a free port) in its own
process group and kills the group at teardown. The export must give every trial a run nested
under the search's parent run, with its hyperparameters as params, every measurement and final
result as metric history with its step, the pbt.* tags (parent, generation, origin, worker) and
the best trial tagged; a second export adds nothing; ``--follow``, started before the run's
store exists, sends a live run's trials while the run goes on.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.control.progress import best_completed, run_finished
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT
from tests.support.runs import REPO, cli
from tests.support.sim_stores import sim_store
from tests.support.waiting import wait_until

# before MLflow is imported: its usage telemetry would post to the internet from this process too
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed (extra 'mlflow': pip install "
                                              "'pbt-actors[mlflow]' mlflow, the server included; "
                                              ".ci/install does)")
from mlflow.tracking import MlflowClient  # noqa: E402

PACED_TOY = REPO / "tests" / "browser" / "experiments" / "paced_toy.py"
# MLflow's usage telemetry off (it would post to the internet; the tests reach nothing beyond loopback)
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
SERVER_START_S = 150  # a cold MLflow import is slow on a loaded 2-core VM (35 s seen; ~8 s quiet)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
        return bool(response.status == 200)
    return False


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on loopback with a SQLite backend, killed (its whole process
    group: uvicorn's workers) at teardown, whatever the tests did."""
    try:  # `mlflow server` is the full package's (Flask, SQLAlchemy, Alembic, the UI); the extra's
        importlib.metadata.version("mlflow")  # mlflow-skinny is only the client and has no server
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("MLflow's tracking server needs the full `mlflow` package, not only the extra's "
                    "mlflow-skinny client: pip install 'mlflow>=3,<4' (.ci/install does)")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "NO_PROXY": "127.0.0.1,localhost",
           **NO_TELEMETRY}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: server.poll() is not None or _healthy(url), SERVER_START_S, "the MLflow server")
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited {server.returncode}:\n{(root / 'server.log').read_text()}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        log.close()


def _store(store_dir: Path) -> tuple[dict[int, Trial], Experiment, Trial | None]:
    with LmdbTrialStore(store_dir, readonly=True) as store:
        experiment = Experiment.from_dict(store.get_meta(META_EXPERIMENT))
        return {t.id: t for t in store.iter_trials()}, experiment, best_completed(store, experiment)


def _export(tracking_uri: str, store_dir: Path, *extra: str) -> str:
    proc = cli("export", "--store", str(store_dir), "--format", "mlflow", "--tracking-uri", tracking_uri, *extra,
               env=NO_TELEMETRY)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    return out


def check_runs(tracking_uri: str, experiment_name: str, store_dir: Path) -> None:
    """Every trial of the store is a run with its params, metric history and tags."""
    trials, _, best = _store(store_dir)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment_name)
    assert found is not None
    runs = list(client.search_runs([found.experiment_id], max_results=5000))
    parents = [r for r in runs if "pbt.trial_id" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {int(r.data.tags["pbt.trial_id"]): r for r in runs if "pbt.trial_id" in r.data.tags}
    assert sorted(children) == sorted(trials)  # every trial, once
    for trial_id, run in children.items():
        trial = trials[trial_id]
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"trial-{trial_id}"
        assert tags["pbt.generation"] == str(trial.generation)
        assert tags["pbt.origin"] == trial.origin.kind.value
        assert tags.get("pbt.parent_id") == (None if trial.parent_id is None else str(trial.parent_id))
        assert tags["pbt.worker"] == trial.worker
        assert tags["pbt.attempts"] == str(trial.attempt)
        assert run.info.status == {TrialStatus.COMPLETED: "FINISHED", TrialStatus.FAILED: "FAILED",
                                   TrialStatus.STOPPED: "KILLED"}[trial.status]
        assert run.data.params == {k: str(v) for k, v in trial.hparams.items()}
        expected: dict[str, list[tuple[int, float]]] = {}
        for m in trial.measurements:
            if trial.final is None or m.step != trial.end_step:
                for k, v in m.metrics.items():
                    expected.setdefault(k, []).append((m.step, v))
        for k, v in (trial.final or {}).items():
            expected.setdefault(k, []).append((trial.end_step, v))
        for key, points in expected.items():
            history = sorted((p.step, p.value) for p in client.get_metric_history(run.info.run_id, key))
            assert len(history) == len(points), (trial_id, key, history, points)
            for (step, value), (want_step, want) in zip(history, sorted(points), strict=True):
                assert step == want_step and (value == pytest.approx(want, rel=1e-9)
                                              or (math.isnan(value) and not math.isfinite(want)))
    tagged = [i for i, r in children.items() if r.data.tags.get("pbt.best") == "true"]
    assert best is not None and tagged == [best.id]
    assert parent.data.tags["pbt.best_trial_id"] == str(best.id)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_every_trial_is_a_nested_run_with_params_metric_history_and_tags(tracking_uri: str,
                                                                          tmp_path: Path) -> None:
    # preemptions give retried attempts (pbt.attempts > 1) and several workers
    store_dir = sim_store(tmp_path / "sim", 60, "--workers", "8", "--preempt-rate", "3")
    trials, experiment, _ = _store(store_dir)
    assert any(t.attempt > 1 for t in trials.values())  # the sim really retried some
    out = _export(tracking_uri, store_dir)
    assert f"{len(trials)} trials written" in out and "pbt.best" in out
    check_runs(tracking_uri, experiment.name, store_dir)
    again = _export(tracking_uri, store_dir)  # the same store again: found by its run id, nothing added
    assert f"0 trials written ({len(trials)} exported before)" in again
    check_runs(tracking_uri, experiment.name, store_dir)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_follow_waits_for_the_store_and_sends_trials_while_the_run_goes_on(tracking_uri: str,
                                                                           tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    follow = cli("export", "--store", str(store_dir), "--format", "mlflow", "--tracking-uri", tracking_uri,
                 "--mlflow-experiment", "live", "--follow", "--interval", "0.2", env=NO_TELEMETRY)
    assert follow.stdout is not None
    first = follow.stdout.readline()
    assert "no pbt-actors store" in first and "waiting" in first, first
    cli("run", str(PACED_TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--quiet",
        env={"PBT_TEST_STEP_S": "0.1"})
    client = MlflowClient(tracking_uri)

    def seen_while_running() -> Any:
        experiment = client.get_experiment_by_name("live")
        if experiment is None or not (store_dir / "data.mdb").exists():
            return None
        children = client.search_runs([experiment.experiment_id], "tags.`pbt.trial_id` != ''", max_results=5)
        with LmdbTrialStore(store_dir, readonly=True) as store:
            live = not run_finished(store)
        return live and len(children) > 0

    wait_until(seen_while_running, 120, "a trial in MLflow while the run is still going")
    out, _ = follow.communicate(timeout=200)  # returns once the run has finished
    assert follow.returncode == 0, out
    check_runs(tracking_uri, "live", store_dir)


@pytest.mark.timeout(120)
def test_an_unreachable_tracking_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    store_dir = sim_store(tmp_path / "sim", 20)
    proc = cli("export", "--store", str(store_dir), "--format", "mlflow", "--tracking-uri",
               f"http://127.0.0.1:{_free_port()}", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **NO_TELEMETRY})
    out, _ = proc.communicate(timeout=100)
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "pbt-actors: MLflow at http://127.0.0.1:" in out
    assert "the same command resumes" in out
