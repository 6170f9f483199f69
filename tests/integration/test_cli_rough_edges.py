"""Rough edges a new user hit (issue 13, item 5), through the real CLI: a real `run` (controller,
zygote-forked worker processes, ZeroMQ over loopback, LMDB) on a copy of the toy experiment in
a temporary folder, then `status --json`, a second `run` with other flags, and `replay` without
``-e``. Every process is killed (its group) at teardown, even when the test fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT_FILE
from pbt_actors.tools.experiment_source import file_sha256
from tests.support.runs import REPO, cli, kill_all_started

TOY = REPO / "examples" / "toy_quadratic.py"


@pytest.fixture
def killer() -> Iterator[None]:
    yield
    kill_all_started()


def _finish(proc, timeout_s: float = 90) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


def _json_line(out: str) -> dict:  # type: ignore[type-arg]
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


@pytest.mark.timeout(240)
def test_run_records_its_file_and_seed_warns_on_other_flags_and_replay_defaults_to_the_file(
        tmp_path: Path, killer: None) -> None:
    exp = tmp_path / "my_exp.py"
    exp.write_text(TOY.read_text().replace("max_steps=150", "max_steps=15"))
    store = tmp_path / "store"

    code, out = _finish(cli("run", str(exp), "--workers", "1", "--devices", "cpu", "--store", str(store),
                            "--seed", "7", "--json"))
    assert code == 0, out
    summary = _json_line(out)
    assert summary["seed"] == 7
    population = summary["final_population"]
    assert population["size"] == 2 and population["at_max_steps"] == 2 and population["best"] is not None
    assert summary["best"] is not None

    with LmdbTrialStore(store, readonly=True) as s:
        record = s.get_meta(META_EXPERIMENT_FILE)
    assert record == {"path": str(exp.resolve()), "sha256": file_sha256(exp)}

    code, out = _finish(cli("status", "--store", str(store), "--json"))
    assert code == 0, out
    status = _json_line(out)
    assert status["seed"] == 7 and status["final_population"] == population

    code, out = _finish(cli("run", str(exp), "--workers", "1", "--devices", "cpu", "--store", str(store),
                            "--seed", "8"))
    assert code == 0, out
    assert "warning: --seed 8 differ(s) from the finished run" in out and "seed 7" in out
    assert f"--store {store.parent / 'store-2'}" in out
    assert "use --store to start another" not in out
    assert "seed         7" in out and "final pop." in out

    code, out = _finish(cli("replay", "--store", str(store), "best", "--dry-run", "--json"))
    assert code == 0, out
    assert "changed since" not in out

    exp.write_text(exp.read_text() + "\n# edited after the run\n")
    code, out = _finish(cli("replay", "--store", str(store), "best", "--dry-run", "--json"))
    assert code == 0, out
    assert "changed since the run was started from it" in out

    exp.unlink()
    code, out = _finish(cli("replay", "--store", str(store), "best", "--dry-run"))
    assert code == 2, out
    assert "is missing" in out and "--experiment" in out
