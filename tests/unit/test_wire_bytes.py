"""The schema's bytes do not move: records, protocol frames and exports encode exactly as the
hand-written schema before msgspec did, and what that schema wrote reads back.

``tests/fixtures/wire_golden.json`` holds the bytes the pre-msgspec tree produced for the
examples below. Regenerate it only on purpose, from a tree whose bytes are the reference:
``PYTHONPATH=<that tree> python tests/unit/test_wire_bytes.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.model import wire
from pbt_actors.model.experiment import EarlyStop, Experiment, Retention
from pbt_actors.model.fitness import Metric, Objective
from pbt_actors.model.records import (
    AttemptRecord,
    Lease,
    Measurement,
    Origin,
    OriginKind,
    Trial,
    TrialStatus,
)
from pbt_actors.model.space import Categorical, Discrete, Fixed, Float, Int
from pbt_actors.tools.lineage import Lineage, LineageEdge, Schedule, Segment
from pbt_actors.transport.codec import decode, encode
from tests.support.samples import CKPT, RESUME, sample_messages

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "wire_golden.json"


def trials() -> dict[str, Trial]:
    seed = Trial(
        1,
        generation=0,
        hparams={"lr": 0.01, "batch": 32, "opt": "adam", "nesterov": True},
        start_step=0,
        end_step=10,
        origin=Origin(OriginKind.SEED),
    )
    full = Trial(
        id=3,
        generation=2,
        hparams={"lr": 0.1, "momentum": 0.9, "layers": 4, "act": "relu", "bn": False},
        start_step=20,
        end_step=30,
        origin=Origin(OriginKind.TOURNAMENT, initiator=1, opponent=2, winner=2),
        parent_id=2,
        crossover_id=1,
        status=TrialStatus.COMPLETED,
        attempt=3,
        lease=Lease("w1-0a1b2c", 1234.5),
        measurements=(Measurement(22, {"loss": 0.5, "acc": 0.75}), Measurement(30, {"loss": float("nan")})),
        final={"acc": 0.8, "loss": float("-inf")},
        checkpoint=CKPT,
        resume=RESUME,
        completed_attempt=3,
        losses=1,
        deaths=1,
        initiated=True,
        created_at=5.5,
        started_at=10.25,
        ended_at=99.0,
        error="Traceback: boom",
        stop_reason="early stop",
        worker="w1-0a1b2c",
        history=(AttemptRecord(1, "w0", 1.0, 2.5), AttemptRecord(2, "w1", 3.0, 4.0)),
    )
    return {
        "seed": seed,
        "full": full,
        "collected": full.evolve(collected_at=120.5, status=TrialStatus.STOPPED),
        "replacement": Trial(
            9,
            generation=4,
            hparams={},
            start_step=40,
            end_step=50,
            origin=Origin(OriginKind.REPLACEMENT, replaces=7),
            status=TrialStatus.FAILED,
            error="x" * 300,
            created_at=5,
        ),  # an int where a float belongs: read back as 5.0
    }


def experiments() -> dict[str, Experiment]:
    space: dict[str, Any] = {"lr": Float(1e-4, 0.1, log=True), "layers": Int(1, 8), "batch": Discrete([16, 32, 64]),
             "opt": Categorical(["adam", "sgd"]), "wd": Fixed(0.0)}
    return {
        "default": Experiment("toy", {"lr": Float(0.001, 0.1)}, "acc"),
        "full": Experiment(
            "full.run-1", space, Objective([Metric("acc", "max", 2.0), Metric("loss", "min")], "pareto", 3),
            population=6, steps_per_trial=5, max_steps=50, policy="initiator", initial=[{"lr": 0.01}],
            max_trials=100, budget_steps=400, budget_mode=True, opponent_window=3, crossover_prob=0.5,
            explore="on_exploit", explore_final=True, resample_prob=0.1, truncation_quantile=0.25,
            early_stop=EarlyStop(0.25, "acc", 10, 2), max_attempts=2, max_losses=5, max_replacements=0,
            lease_s=30, heartbeat_s=5.0, trial_timeout_s=120, seed=7, metadata={"owner": "me", "tags": [1, 2]},
            retention=Retention(True, 5, True)),
    }


def exports() -> dict[str, str]:
    full = trials()["full"]
    segments = (Segment(0, 10, {"lr": 0.01}, 1, 0, None, {"acc": 0.5}, RESUME, True),
                Segment(10, 20, {"lr": 0.02}, 2, 1, 1, None, None),
                Segment(20, 30, dict(full.hparams), 3, 2, 1, dict(full.final or {}), CKPT))
    sched = Schedule(3, segments, "toy", {"metrics": [{"name": "acc", "mode": "max"}]}, {"note": "x"})
    dag = Lineage(3, (trials()["seed"], full), (LineageEdge(1, 3, "parent"), LineageEdge(1, 3, "crossover")))
    return {"schedule": sched.to_json(), "lineage": json.dumps(dag.to_dict())}


def produce() -> dict[str, str]:
    """Every example's bytes (hex) or text, as this tree writes them."""
    out: dict[str, str] = {}
    for name, trial in trials().items():
        out[f"trial/{name}"] = wire.pack(trial.to_dict()).hex()
    for name, ref in {"checkpoint": CKPT, "origin": Origin(OriginKind.TRUNCATION, 4, 5),
                      "measurement": Measurement(7, {"a": 1}), "lease": Lease("w", 7)}.items():
        out[f"record/{name}"] = wire.pack(ref.to_dict()).hex()
    for name, experiment in experiments().items():
        out[f"experiment/{name}"] = wire.pack(experiment.to_dict()).hex()
    for i, (name, message) in enumerate(sample_messages().items()):
        out[f"message/{name}"] = encode(message, 2**i + i).hex()
    for name, text in exports().items():
        out[f"export/{name}"] = text
    return out


GOLDEN_DATA: dict[str, str] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("key", sorted(GOLDEN_DATA))
def test_bytes_are_unchanged(key: str) -> None:
    assert produce()[key] == GOLDEN_DATA[key]


def test_every_example_is_pinned() -> None:
    assert set(produce()) == set(GOLDEN_DATA)


@pytest.mark.parametrize("name", sorted(trials()))
def test_old_trial_records_read_back(name: str) -> None:
    data = bytes.fromhex(GOLDEN_DATA[f"trial/{name}"])
    trial = Trial.from_dict(wire.unpack(data))
    if name == "replacement":
        assert trial == trials()[name] and isinstance(trial.created_at, float)
    else:  # NaN != NaN: compare the bytes
        assert wire.pack(trial.to_dict()) == data


@pytest.mark.parametrize("name", sorted(sample_messages()))
def test_old_frames_decode_to_the_same_message(name: str) -> None:
    frame = bytes.fromhex(GOLDEN_DATA[f"message/{name}"])
    envelope = decode(frame)
    assert envelope.message == sample_messages()[name]
    assert encode(envelope.message, envelope.request_id) == frame


@pytest.mark.parametrize("name", sorted(experiments()))
def test_old_experiment_definitions_read_back(name: str) -> None:
    stored = wire.unpack(bytes.fromhex(GOLDEN_DATA[f"experiment/{name}"]))
    assert Experiment.from_dict(stored) == experiments()[name]


def test_old_schedule_reads_back() -> None:
    text = GOLDEN_DATA["export/schedule"]
    assert Schedule.from_json(text).to_json() == text


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(produce(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
