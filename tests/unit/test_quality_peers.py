"""The peer rows of ``benchmarks/quality.py`` (issue 23) without Ray: the adapter that runs an
example's ``train(ctx)`` inside a Ray trainable, the log10 mapping PB2 is given, the verdicts,
and a clear error when the optional extra is missing. The Ray runs themselves need
``pip install .[peers]`` and are the study in ``docs/quality.md``, not a test."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks import peers
from benchmarks.quality import TASKS, goal_lines, load_example, main, peer_verdict

pytestmark = pytest.mark.timeout(60)


def test_the_examples_train_runs_unchanged_through_the_peer_context() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    _, train = load_example(TASKS["digits"].path)
    hparams = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    first = peers.PeerContext(trial_id=1, hparams=hparams, start_step=0, end_step=1)
    metrics = train(first)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and first.saved is not None and first.reports[-1][0] == 1
    # a continuation starts from the saved state (the Ray checkpoint's content) and trains on
    second = peers.PeerContext(trial_id=2, hparams=hparams, start_step=1, end_step=3, state=first.saved)
    later = train(second)
    assert [step for step, _ in second.reports] == [2, 3]
    assert later["accuracy"] >= metrics["accuracy"] - 0.05  # it continued, it did not restart from scratch


def test_pb2_gets_log10_of_a_log_scale_parameter_and_the_trainable_gets_the_value_back() -> None:
    assert peers.to_hparams({"log10_lr": -2.0, "momentum": 0.5, "_max_steps": 24}) == \
        pytest.approx({"lr": 0.01, "momentum": 0.5})


def rows(config: str, finals: list[float], bests: list[float]) -> list[dict]:
    return [{"task": "digits", "config": config, "seed": i, "final_mean": f, "final_values": [f] * 8, "best": b,
             "leased_steps": 192, "trials": 96, "wall_s": 1.0}
            for i, (f, b) in enumerate(zip(finals, bests, strict=True))]


def test_the_peer_verdict_says_level_above_or_below_from_the_intervals() -> None:
    ours = rows("initiator", [0.970, 0.972, 0.974, 0.971], [0.978, 0.979, 0.980, 0.978])
    pbt = rows("ray-pbt", [0.950, 0.952, 0.951, 0.953], [0.977, 0.981, 0.979, 0.978])
    pb2 = rows("ray-pb2", [0.990, 0.991, 0.989, 0.992], [0.99] * 4)
    lines = peer_verdict(ours + pbt + pb2, TASKS["digits"], ["initiator"])
    assert len(lines) == 2
    assert "final-population mean" in lines[0] and "**above, separated**; best" in lines[0]
    assert lines[0].endswith("best 0.9788 [0.9772, 0.9803] vs 0.9788 [0.9760, 0.9815]: "
                             "level (intervals overlap; ours ahead).")
    assert lines[1].count("**below, separated**") == 2
    waveform = [{**r, "task": "waveform"} for r in rows("initiator", [3e-3, 3.1e-3, 3.05e-3], [2e-3, 2.1e-3, 2.05e-3])
                + rows("ray-pbt", [2e-3, 2.1e-3, 2.05e-3], [1e-3, 1.1e-3, 1.05e-3])]
    assert peer_verdict(waveform, TASKS["waveform"], ["initiator"])[0].count("**below, separated**") == 2


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed: the rows would run")
def test_peers_without_ray_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--peers", "--configs", "ray-pbt", "--seeds", "1", "--tasks", "digits"])
    assert exit_info.value.code == 2
    assert "pip install .[peers]" in capsys.readouterr().err


def test_the_goal_is_derived_and_says_by_how_much_it_is_missed() -> None:
    ours = rows("initiator", [0.970, 0.972, 0.974, 0.971], [0.978, 0.979, 0.980, 0.978])
    pbt = rows("ray-pbt", [0.950, 0.952, 0.951, 0.953], [0.977, 0.981, 0.979, 0.978])
    assert goal_lines(ours + pbt, [TASKS["digits"]], "initiator") == [
        "- Goal for `initiator` (reached): at least level with both peers on every comparison; "
        "separated above on digits final-population mean vs `ray-pbt`."]
    pb2 = rows("ray-pb2", [0.990, 0.991, 0.989, 0.992], [0.99] * 4)
    (line,) = goal_lines(ours + pbt + pb2, [TASKS["digits"]], "initiator")
    assert line.startswith("- Goal for `initiator` (NOT reached): **not level** on digits final-population mean "
                           "vs `ray-pb2`: 0.9718 [0.9690, 0.9745] vs 0.9905 [0.9884, 0.9926], below by 0.0187 "
                           "(intervals 0.0140 apart); ")
    assert line.endswith("; separated above on digits final-population mean vs `ray-pbt`.")
