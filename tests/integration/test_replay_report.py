"""Training replay, lineage/export/report CLI and ``status --watch`` on real LMDB stores.

Stores come from ``run_inprocess`` (the real ControllerCore, trials run inline) with the toy
problem, which is deterministic: a replay must reproduce its trials bit for bit. The digits
acceptance test uses ``examples/digits.py`` (torch + scikit-learn) when it is present.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.cli.results import add_lineage_parsers
from pbt_actors.cli.status import watch_status
from pbt_actors.control.core import ControllerCore
from pbt_actors.model.errors import CheckpointError, PbtError, ReplayError
from pbt_actors.model.protocol import Fail, Heartbeat, RequestTrial, TrialAssignment
from pbt_actors.model.records import OriginKind, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.inprocess import run_assignment, run_inprocess
from pbt_actors.tools.lineage import Schedule, lineage, resolve_trial, schedule
from pbt_actors.tools.replay import replay
from pbt_actors.tools.report import FIGURES, write_report

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy_quadratic.py"
DIGITS = REPO / "examples" / "digits.py"


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished toy run (61 trials, crossover on) in an LMDB store; closed after the run so that
    the CLI (read-only) can open it in this process."""
    root = tmp_path_factory.mktemp("toy")
    experiment, train = load_experiment_file(TOY)
    store = LmdbTrialStore(root / "store", sync=False)
    run_inprocess(experiment, train, root / "store" / "checkpoints", store=store, workers=2)
    store.close()
    yield {"root": root, "store": root / "store", "ckpt": root / "store" / "checkpoints", "train": train,
           "experiment": experiment}


@pytest.fixture(scope="module")
def live_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped mid-way: COMPLETED, RUNNING (one with a heartbeat measurement) and PENDING
    trials, and one attempt that failed and was re-queued."""
    root = tmp_path_factory.mktemp("live")
    experiment, train = load_experiment_file(TOY)
    experiment = replace(experiment, name="toy_live", population=6)
    began = time.time() - 30.0  # a run that started half a minute ago, with a step clock
    clock = iter(began + 0.5 * i for i in range(10_000))
    ckpt = str(root / "store" / "checkpoints")
    with LmdbTrialStore(root / "store", sync=False) as store:
        core = ControllerCore(store, experiment, now=next(clock))
        leased = [core.handle(RequestTrial(f"w{i}"), next(clock)) for i in range(6)]
        assert all(isinstance(a, TrialAssignment) for a in leased)
        for i, spec in enumerate(leased[:4]):
            assert isinstance(spec, TrialAssignment)
            core.handle(run_assignment(f"w{i}", spec, train, ckpt), next(clock))
        core.handle(Fail("w4", leased[4].trial_id, 1, "CUDA out of memory", retryable=True),  # type: ignore[union-attr]
                    next(clock))
        running = core.handle(RequestTrial("w0"), next(clock))
        assert isinstance(running, TrialAssignment)
        core.handle(Heartbeat("w0", running.trial_id, running.attempt, running.start_step + 2, {"Q": 0.1}),
                    next(clock))
        core.handle(RequestTrial("w1"), next(clock))
        assert store.count(TrialStatus.RUNNING) >= 2 and store.count(TrialStatus.PENDING) >= 1
    return root / "store"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``pbt-actors ARGV`` in this process: through ``pbt_actors.cli.main.main`` once it registers our
    commands, else through a parser holding just them (same error handling as ``main``)."""
    from pbt_actors.cli import main as cli

    parser = cli.build_parser()
    choices = next(a.choices for a in parser._subparsers._group_actions)  # type: ignore[union-attr]
    capsys.readouterr()
    if argv[0] in choices:
        rc = cli.main(argv)
    else:
        own = argparse.ArgumentParser(prog="pbt-actors")
        add_lineage_parsers(own.add_subparsers(dest="command", required=True))
        args = own.parse_args(argv)
        try:
            rc = args.func(args)
        except PbtError as exc:
            print(f"pbt-actors: {exc}")
            rc = 2
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def check_png(path: Path) -> None:
    """A real PNG of sensible size with something drawn on it."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 3000 and 250 <= height <= 2500, (path.name, width, height)
    assert len(data) > 12_000, (path.name, len(data))
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05, f"{path.name} looks blank"


def check_report(out: Path, paths: dict[str, Path]) -> None:
    html = (out / "index.html").read_text()
    for name in FIGURES:
        assert paths[name] == out / f"{name}.png"
        check_png(paths[name])
        assert f'src="{name}.png"' in html
    assert "http://" not in html and "https://" not in html  # self-contained, nothing fetched


# --- replay: exact on the toy ---------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_replaying_the_best_toy_trial_from_scratch_reproduces_theta_and_q_bit_for_bit(toy_run: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    with LmdbTrialStore(toy_run["store"], readonly=True) as store:
        best = store.get_trial(resolve_trial(store, "best"))
        sched = schedule(store, best.id)
        dag = lineage(store, best.id)
    assert len(sched.segments) == 30 and sched.start_step == 0 and sched.end_step == 150
    assert any(e.kind == "crossover" for e in dag.edges)  # crossover happened and replay ignores its weights
    result = replay(sched, toy_run["train"], checkpoint_root=tmp_path / "replay")
    assert result.final["Q"] == best.final["Q"]  # exact equality, not approx
    assert result.load_state()["theta"] == load_checkpoint(toy_run["ckpt"], best.checkpoint)["theta"]
    for seg_result, seg in zip(result.segments, sched.segments, strict=True):
        assert dict(seg_result.final) == dict(seg.final or {}), seg.trial_id
        assert load_checkpoint(result.checkpoint_root, seg_result.checkpoint) == \
            load_checkpoint(toy_run["ckpt"], seg.checkpoint)
    assert all(not uri.startswith("toy_quadratic/") for uri in
               (s.checkpoint.uri for s in result.segments if s.checkpoint))  # never the search's names


@pytest.mark.timeout(60)
def test_sub_range_replay_from_a_to_b_equals_the_original_segment(toy_run: dict[str, Any], tmp_path: Path) -> None:
    with LmdbTrialStore(toy_run["store"], readonly=True) as store:
        sched = schedule(store, resolve_trial(store, "best"))
    for a, b in ((50, 55), (50, 100), (0, 25), (145, 150)):
        result = replay(sched, toy_run["train"], checkpoint_root=tmp_path / f"r{a}-{b}", from_step=a, to_step=b,
                        source_checkpoint_root=toy_run["ckpt"])
        original = next(s for s in sched.segments if s.end_step == b)
        assert result.from_step == a and result.to_step == b
        assert result.final == original.final
        assert result.load_state() == load_checkpoint(toy_run["ckpt"], original.checkpoint)
        assert [s.planned.segment.trial_id for s in result.segments] == \
            [s.trial_id for s in sched.segments if a <= s.start_step < b]


@pytest.mark.timeout(60)
def test_a_schedule_exported_to_json_replays_identically(toy_run: dict[str, Any], tmp_path: Path) -> None:
    with LmdbTrialStore(toy_run["store"], readonly=True) as store:
        sched = schedule(store, resolve_trial(store, "best"))
    loaded = Schedule.load(sched.save(tmp_path / "schedule.json"))
    assert loaded == sched
    first = replay(sched, toy_run["train"], checkpoint_root=tmp_path / "a")
    second = replay(loaded, toy_run["train"], checkpoint_root=tmp_path / "b")
    assert first.load_state() == second.load_state()


@pytest.mark.timeout(60)
def test_sub_range_replay_needs_an_intact_start_checkpoint(toy_run: dict[str, Any], tmp_path: Path) -> None:
    with LmdbTrialStore(toy_run["store"], readonly=True) as store:
        sched = schedule(store, resolve_trial(store, "best"))
    with pytest.raises(ReplayError, match="checkpoint folder"):
        replay(sched, toy_run["train"], checkpoint_root=tmp_path / "x", from_step=50)
    start = next(s for s in sched.segments if s.end_step == 50)
    assert start.checkpoint is not None
    fake_root = tmp_path / "tampered"
    target = fake_root / start.checkpoint.uri
    target.parent.mkdir(parents=True)
    original = (toy_run["ckpt"] / start.checkpoint.uri).read_bytes()
    target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="sha256"):
        replay(sched, toy_run["train"], checkpoint_root=tmp_path / "y", from_step=50, source_checkpoint_root=fake_root)


@pytest.mark.timeout(30)
def test_replay_reports_a_segment_that_saves_nothing_or_raises(toy_run: dict[str, Any], tmp_path: Path) -> None:
    with LmdbTrialStore(toy_run["store"], readonly=True) as store:
        sched = schedule(store, resolve_trial(store, "best"))
    seen: list[bool] = []

    def forgetful(ctx: Any) -> dict[str, float]:
        seen.append(ctx.replay)
        return {"Q": 0.0}

    with pytest.raises(ReplayError, match="saved no checkpoint"):
        replay(sched, forgetful, checkpoint_root=tmp_path / "a")
    assert seen == [True]
    replay(sched, forgetful, checkpoint_root=tmp_path / "b", from_step=145, source_checkpoint_root=toy_run["ckpt"],
           replay_data=False)  # the last segment may save nothing
    assert seen[-1] is False

    def broken(ctx: Any) -> None:
        raise ValueError("bad batch")

    with pytest.raises(ReplayError, match=r"trial 1 \(steps 0-5\): ValueError: bad batch"):
        replay(sched, broken, checkpoint_root=tmp_path / "c")


# --- CLI -----------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_lineage_cli_prints_the_dag_and_schedule(toy_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(["lineage", "--store", str(toy_run["store"]), "best", "--json"], capsys)
    assert rc == 0, out
    data = json.loads(out)
    assert data["lineage"]["order"][-1] == data["trial_id"] == data["schedule"]["trial_id"]
    assert len(data["schedule"]["segments"]) == 30
    rc, text = run_cli(["lineage", "--store", str(toy_run["store"]), str(data["trial_id"])], capsys)
    assert rc == 0 and "topological order" in text and "schedule (the warm-start chain: 30 segments" in text
    rc, text = run_cli(["lineage", "--store", str(toy_run["root"] / "nowhere"), "best"], capsys)
    assert rc == 2 and "no pbt-actors store" in text
    rc, text = run_cli(["lineage", "--store", str(toy_run["store"]), "999"], capsys)
    assert rc == 2 and "no trial with id 999" in text


@pytest.mark.timeout(60)
def test_replay_cli_reproduces_the_best_trial_and_writes_the_schedule(toy_run: dict[str, Any], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    schedule_file = tmp_path / "best.json"
    rc, out = run_cli(["replay", "--store", str(toy_run["store"]), "best", "--experiment", str(TOY),
                       "--schedule-out", str(schedule_file), "--out", str(tmp_path / "r"), "--json"], capsys)
    assert rc == 0, out
    result = json.loads(out)
    assert result["final"] == result["original_final"]
    assert result["replay_data"] is True  # ctx.replay: said, since the experiment may train on its validation data
    assert Schedule.load(schedule_file).trial_id == result["trial_id"]
    rc, out = run_cli(["replay", "--schedule", str(schedule_file), "--experiment", str(TOY), "--from-step", "100",
                       "--to-step", "120", "--checkpoint-root", str(toy_run["ckpt"]), "--out", str(tmp_path / "s")],
                      capsys)
    assert rc == 0, out
    assert "[4/4]" in out and "final  Q=" in out
    assert "measured on replay data" in out and "--same-data reproduces the search's numbers" in out
    rc, out = run_cli(["replay", "--store", str(toy_run["store"]), "--experiment", str(TOY), "--from-step", "7"],
                      capsys)
    assert rc == 2 and "not a segment boundary" in out


@pytest.mark.timeout(60)
def test_export_cli_writes_one_row_per_trial_and_measurement(toy_run: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    rc, out = run_cli(["export", "--store", str(toy_run["store"]), "--format", "csv", "--out",
                       str(tmp_path / "t.csv")], capsys)
    assert rc == 0, out
    with (tmp_path / "t.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 61 * 6  # 5 measurements and a final row per trial
    assert {"trial_id", "step", "kind", "hparam.h0", "metric.Q"} <= set(rows[0])
    rc, out = run_cli(["export", "--store", str(toy_run["store"]), "--format", "json"], capsys)
    assert rc == 0
    records = json.loads(out)
    assert len(records) == len(rows) and records[5]["kind"] == "final" and records[5]["step"] == 5


@pytest.mark.timeout(90)
def test_report_cli_renders_a_finished_run(toy_run: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(["report", "--store", str(toy_run["store"]), "--out", str(tmp_path / "rep"), "--json"], capsys)
    assert rc == 0, out
    paths = {k: Path(v) for k, v in json.loads(out).items()}
    check_report(tmp_path / "rep", paths)
    assert Schedule.load(paths["best_schedule"]).end_step == 150


@pytest.mark.timeout(90)
def test_report_renders_a_run_still_in_progress(live_store: Path, tmp_path: Path) -> None:
    with LmdbTrialStore(live_store, readonly=True) as store:
        statuses = {t.status for t in store.iter_trials()}
        assert {TrialStatus.PENDING, TrialStatus.RUNNING, TrialStatus.COMPLETED} <= statuses
        paths = write_report(store, tmp_path / "rep")
    check_report(tmp_path / "rep", paths)
    assert "in progress" in (tmp_path / "rep" / "index.html").read_text()


# --- status --watch ----------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.timeout(30)
def test_watch_stops_by_itself_when_the_run_is_finished(toy_run: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # rich draws in place only on a capable terminal
    out = io.StringIO()
    assert watch_status(toy_run["store"], 0.05, True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    snap = json.loads(lines[0])
    assert snap["finished"] and snap["trials"] == 61 and snap["running"] == [] and len(snap["top"]) == 5
    tty = _Tty()
    assert watch_status(toy_run["store"], 0.05, False, out=tty) == 0
    assert "FINISHED" in tty.getvalue() and "\x1b[" in tty.getvalue()  # drawn in place (rich), not appended
    plain = io.StringIO()
    assert watch_status(toy_run["store"], 0.05, False, out=plain) == 0
    assert "FINISHED" in plain.getvalue() and "\x1b" not in plain.getvalue()  # a log file gets plain text


@pytest.mark.timeout(30)
def test_watch_refreshes_a_live_store_with_running_trials(live_store: Path) -> None:
    out = io.StringIO()
    began = time.monotonic()
    assert watch_status(live_store, 0.01, False, out=out, max_updates=3) == 0
    assert time.monotonic() - began < 20
    text = out.getvalue()
    assert text.count("RUNNING (") == 3 and "running" in text
    assert "w0" in text and "Q=0.1" in text  # the heartbeat's measurement
    out = io.StringIO()
    watch_status(live_store, 0.01, True, out=out, max_updates=2)
    snaps = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(snaps) == 2 and not snaps[0]["finished"] and len(snaps[0]["running"]) >= 2


# --- digits: a real network, seeded, on CPU ----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    assert DIGITS.exists(), "examples/digits.py is the README's main job and must exist"
    experiment, train = load_experiment_file(DIGITS)
    # ~15 s on two CPU cores; 50+ trials over 7 generations, so exploitation certainly happens
    population = min(experiment.population, 8)
    experiment = replace(experiment, population=population, initial=tuple(experiment.initial)[:population],
                         max_steps=min(experiment.max_steps, 7 * experiment.steps_per_trial), budget_mode=False,
                         max_trials=None)
    root = tmp_path_factory.mktemp("digits")
    began = time.monotonic()
    with LmdbTrialStore(root / "store", sync=False) as store:
        run_inprocess(experiment, train, root / "store" / "checkpoints", store=store, workers=2, device="cpu")
    return {"store": root / "store", "ckpt": root / "store" / "checkpoints", "train": train,
            "experiment": experiment, "search_s": time.monotonic() - began}


def _accuracy_metric(final: dict[str, float], objective: tuple[str, ...]) -> str:
    named = [k for k in final if "acc" in k.lower()]
    return next((k for k in objective if k in named), named[0] if named else objective[0])


@pytest.mark.timeout(240)
def test_digits_replay_reproduces_the_best_validation_accuracy(digits_run: dict[str, Any], tmp_path: Path) -> None:
    with LmdbTrialStore(digits_run["store"], readonly=True) as store:
        trials = list(store.iter_trials())
        best = store.get_trial(resolve_trial(store, "best"))
        sched = schedule(store, best.id)
    assert all(t.status is TrialStatus.COMPLETED for t in trials)
    exploited = [t for t in trials if t.origin.kind is OriginKind.TOURNAMENT and t.origin.winner != t.origin.initiator]
    assert exploited, "no child copied another member's weights: not a real PBT run"
    assert len(sched.segments) >= 3
    metric = _accuracy_metric(dict(best.final or {}), digits_run["experiment"].objective_.names)
    result = replay(sched, digits_run["train"], checkpoint_root=tmp_path / "replay", replay_data=False)
    original, replayed = best.final[metric], result.final[metric]
    tolerance = 0.5 if original > 1.0 else 0.005  # half a percentage point, for 0-1 or 0-100 scales
    assert abs(replayed - original) <= tolerance, (metric, original, replayed)


@pytest.mark.timeout(240)
def test_digits_replay_on_replay_data_and_report(digits_run: dict[str, Any], tmp_path: Path) -> None:
    with LmdbTrialStore(digits_run["store"], readonly=True) as store:
        sched = schedule(store, resolve_trial(store, "best"))
        paths = write_report(store, tmp_path / "rep")
    check_report(tmp_path / "rep", paths)
    last = sched.segments[-1]
    result = replay(sched, digits_run["train"], checkpoint_root=tmp_path / "tail", from_step=last.start_step,
                    source_checkpoint_root=digits_run["ckpt"], replay_data=True)
    assert result.final and result.checkpoint is not None
