"""Sample protocol messages and checkpoint refs shared by the codec and wire-bytes tests:
one of every message type, with optional fields both set and left out."""

from __future__ import annotations

from typing import Any

from pbt_actors.model.records import CheckpointRef, Measurement

try:  # the message types moved beside the model; the golden file was written before that
    from pbt_actors.model import protocol as messages
except ImportError:  # pragma: no cover - only when writing the golden file from an older tree
    from pbt_actors.transport import messages  # type: ignore[attr-defined,no-redef]

CKPT = CheckpointRef("exp/trial-000003/a2-s100.ckpt", 1234, "ab" * 32, 100)
RESUME = CheckpointRef("exp/trial-000003/a1-s40.ckpt", 99, "0f" * 32, 40)


def sample_messages() -> dict[str, Any]:
    """Every message type, by a name that says which variant (the golden file's keys)."""
    m = messages
    return {
        "hello": m.Hello("w1", "host-a", 4242, "cuda:0", "run-1", ("w1", "w2")),
        "hello_min": m.Hello("w2"),
        "request_trial": m.RequestTrial("w1", "run-1"),
        "heartbeat": m.Heartbeat("w1", 3, 1, 50, {"loss": 0.5, "acc": 0.75}, "run-1"),
        "heartbeat_bare": m.Heartbeat("w1", 3, 1, 60),
        "report": m.Report(
            "w1",
            3,
            2,
            {"score": 0.9},
            (Measurement(10, {"loss": 1.0}), Measurement(20, {"loss": 0.5})),
            CKPT,
            True,
            "run-1",
        ),
        "report_inf": m.Report("w1", 4, 1, {"score": float("-inf")}),
        "fail": m.Fail("w1", 3, 1, "CUDA out of memory", False, RESUME, True, "run-1"),
        "worker_lost": m.WorkerLost("w1", "SIGKILL", "run-1"),
        "trial": m.TrialAssignment(
            3,
            1,
            generation=2,
            hparams={"lr": 0.1, "opt": "adam", "batch": 32, "nesterov": True},
            start_step=0,
            end_step=100,
            parent_id=1,
            parent_checkpoint=CKPT,
            heartbeat_s=20.0,
            experiment="toy",
        ),
        "trial_seed": m.TrialAssignment(
            1,
            1,
            generation=0,
            hparams={},
            start_step=0,
            end_step=10,
            parent_id=None,
            parent_checkpoint=None,
            heartbeat_s=1.5,
            experiment="",
        ),
        "wait": m.Wait(1.5),
        "ack": m.Ack(),
        "ack_run": m.Ack("run-1"),
        "stop": m.Stop(3, "early stop: diverged"),
        "done": m.Done(),
        "error": m.Error("malformed", "bad body"),
    }
