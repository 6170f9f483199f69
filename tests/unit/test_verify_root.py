"""Issue 21, item 6: ``verify`` and ``status`` find the checkpoint root the store recorded, and
``verify`` never calls a store clean whose checkpoints it could not check.

A small simulated run in a real LMDB store (the simulator marks its checkpoints as no files);
the marker is then replaced as a controller would write it, or removed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pbt_actors.cli.status import checkpoint_root_of, cmd_verify
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_CHECKPOINT_ROOT
from pbt_actors.tools.sim.engine import simulate
from pbt_actors.tools.sim.objectives import make_objective

pytestmark = pytest.mark.timeout(60)


def _verify(store: Path, capsys: pytest.CaptureFixture[str], root: str | None = None,
            as_json: bool = False) -> tuple[int, str]:
    code = cmd_verify(argparse.Namespace(store=str(store), checkpoint_root=root, json=as_json))
    return code, capsys.readouterr().out


def _set_root(store: Path, value: object) -> None:
    with LmdbTrialStore(store) as writer, writer.batch():
        writer.put_meta(META_CHECKPOINT_ROOT, value)


def test_verify_checks_the_recorded_root_and_never_calls_unchecked_checkpoints_clean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    with LmdbTrialStore(store, sync=False) as s:
        simulate(make_objective("curve"), population=4, seed=1, store=s, max_trials=24)
    code, out = _verify(store, capsys)  # a simulated run: nothing to check, by design, and said so
    assert code == 0 and "simulated run" in out and "all invariants hold" in out, out

    _set_root(store, None)  # a controller started without --checkpoint-root, no <store>/checkpoints
    code, out = _verify(store, capsys)
    assert code == 1 and "checkpoints NOT checked" in out and "all invariants hold" not in out, out
    code, out = _verify(store, capsys, as_json=True)
    report = json.loads(out)
    assert code == 1 and report["ok"] and not report["clean"] and report["checkpoints_unchecked"] >= 24

    elsewhere = tmp_path / "shared-checkpoints"
    elsewhere.mkdir()
    _set_root(store, str(elsewhere))  # recorded: checked there without being told (files absent here)
    assert checkpoint_root_of(store, None) == (str(elsewhere), True)
    assert checkpoint_root_of(store, "/given") == ("/given", True)
    code, out = _verify(store, capsys, as_json=True)
    report = json.loads(out)
    assert code == 1 and report["checkpoint_root"] == str(elsewhere) and report["checkpoints_checked"] >= 24
    assert any("missing" in p for p in report["problems"]), report["problems"]
