"""Items 2 and 8: checkpoint files stay inside their root and are never overwritten.

* A controller's ``experiment`` name with ``../`` (or ``/``) made a worker write checkpoints
  outside its checkpoint root: the worker's decoder now refuses such a ``trial`` (``malformed``)
  and every checkpoint path is resolved inside its root (``inside_root``), reads included.
* A stale worker of an old run wrote the new run's trials over the old run's files of the same
  names: a checkpoint file is put-once (different content under an existing name fails).
Before: the decoder accepted any string, ``save_checkpoint`` joined paths blindly and
``atomic_write`` renamed over whatever was there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pbt_actors.model.errors import CheckpointError, CheckpointWriteError, ProtocolError
from pbt_actors.model.protocol import REPLY_TYPES, TrialAssignment, safe_name
from pbt_actors.model.records import CheckpointRef
from pbt_actors.runtime.checkpoint_payloads import inside_root, load_checkpoint, save_checkpoint
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.transport.codec import decode, encode

pytestmark = pytest.mark.timeout(30)

HOSTILE = ["../escape", "../../etc", "a/../../b", "/abs", "a/b", "..", ".", ".hidden", "x\x00y", "a\\b",
           "x" * 500]


def assignment(experiment: str) -> TrialAssignment:
    return TrialAssignment(
        1,
        1,
        generation=0,
        hparams={"x": 1.0},
        start_step=0,
        end_step=5,
        parent_id=None,
        parent_checkpoint=None,
        heartbeat_s=1.0,
        experiment=experiment,
    )


@pytest.mark.parametrize("name", HOSTILE)
def test_a_worker_refuses_a_trial_whose_experiment_name_is_not_a_safe_file_name(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(assignment(name), 7), accept=REPLY_TYPES)
    assert info.value.code == "malformed" and info.value.request_id == 7


@pytest.mark.parametrize("name", ["toy", "toy_lineage", "exp-1.2", "", "Ünïcode name"])
def test_ordinary_names_pass(name: str) -> None:
    assert safe_name(name) == name
    assert decode(encode(assignment(name), 1), accept=REPLY_TYPES).message == assignment(name)


@pytest.mark.parametrize("uri", ["../outside.ckpt", "a/../../outside.ckpt", "/tmp/abs.ckpt", ""])
def test_checkpoint_paths_cannot_escape_the_root(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(CheckpointError):
        save_checkpoint(root, uri, {"w": 1}, 1)
    with pytest.raises(CheckpointError):
        load_checkpoint(root, CheckpointRef(uri or "x/../..", 1, "0" * 64, 1))
    assert not (tmp_path / "outside.ckpt").exists()


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(CheckpointError):
        inside_root(root, "link/outside.ckpt")


def test_a_context_with_a_hostile_experiment_name_writes_nothing_outside(tmp_path: Path) -> None:
    ctx = TrialContext(trial_id=1, attempt=1, generation=0, hparams={}, start_step=0, end_step=1,
                       checkpoint_root=str(tmp_path / "root"), experiment="../../escape")
    with pytest.raises(CheckpointError):
        ctx.save_checkpoint({"w": 1})
    assert not any(p.name.endswith(".ckpt") for p in tmp_path.rglob("*") if "root" not in p.parts)


def test_a_checkpoint_file_is_never_overwritten_with_other_content(tmp_path: Path) -> None:
    first = save_checkpoint(tmp_path, "exp/trial-000001/a1-s5.ckpt", {"theta": [1, 2]}, 5)
    with pytest.raises(CheckpointWriteError, match="never overwritten"):
        save_checkpoint(tmp_path, "exp/trial-000001/a1-s5.ckpt", {"theta": [3, 4]}, 5)
    assert load_checkpoint(tmp_path, first) == {"theta": [1, 2]}  # the completed trial's file is intact
    again = save_checkpoint(tmp_path, "exp/trial-000001/a1-s5.ckpt", {"theta": [1, 2]}, 5)
    assert again == first  # the same bytes again (a retried save): fine
    assert sorted(p.name for p in (tmp_path / "exp" / "trial-000001").iterdir()) == ["a1-s5.ckpt"]  # no temp left
