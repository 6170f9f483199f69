"""Issue 19, item 7: bad programs as command trials. Each is a clear failed attempt (a
retryable ``Fail`` whose error says what went wrong, with the end of stderr), or a clean stop,
and never a hung worker, a leaked process or unbounded memory.

The programs are real processes (small Python scripts run by this interpreter), run by the
real ``CommandTrial`` through ``trial_runner.execute`` exactly as a worker runs a trial, with
a real ``TrialContext`` over a real checkpoint folder. ``test_command_preemption`` runs one
through whole worker hosts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pbt_actors.model.protocol import Fail, Report
from pbt_actors.runtime.command.output_log import read_output
from pbt_actors.runtime.command.process import TAIL_BYTES
from pbt_actors.runtime.command.trial import CommandTrial
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import execute
from tests.faults.harness import pid_alive

PREAMBLE = """\
import json, os, signal, subprocess, sys, time
from pathlib import Path
OUT = Path(os.environ["PBT_CHECKPOINT_DIR"])
PIDS = Path(os.environ["TEST_PID_DIR"])
(PIDS / str(os.getpid())).touch()
START, END = int(os.environ["PBT_START_STEP"]), int(os.environ["PBT_END_STEP"])
"""
GOOD_END = """\
for step in range(START + 1, END + 1):
    print(f"pbt: step={step} score={step / 10}", flush=True)
(OUT / "state.txt").write_text(str(END))
"""


@pytest.fixture
def pid_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the programs note their pids (and their children's): all must be gone after each
    test, and are killed here if a failing test left any."""
    folder = tmp_path / "pids"
    folder.mkdir()
    os.environ["TEST_PID_DIR"] = str(folder)
    yield folder
    os.environ.pop("TEST_PID_DIR", None)
    for entry in folder.iterdir():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(entry.name), signal.SIGKILL)


def program(tmp_path: Path, body: str, name: str = "prog.py") -> CommandTrial:
    path = tmp_path / name
    path.write_text(PREAMBLE + body)
    return CommandTrial([sys.executable, str(path)], cwd=tmp_path, objective=("score",), grace_s=1.0)


class StopAfter:
    """A link that asks the trial to stop once it has recorded ``count`` reports."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0

    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.seen += 1
        return self.seen < self.count


def context(tmp_path: Path, *, start: int = 0, end: int = 3, attempt: int = 1, link: object = None,
            parent: object = None) -> TrialContext:
    ctx = TrialContext(trial_id=7, attempt=attempt, generation=0, hparams={"lr": 0.1}, start_step=start,
                       end_step=end, checkpoint_root=str(tmp_path / "ckpt"), experiment="cmd",
                       parent_checkpoint=parent)  # type: ignore[arg-type]
    if link is not None:
        ctx.link = link  # type: ignore[assignment]
    return ctx


def all_gone(pid_dir: Path) -> bool:
    return not any(pid_alive(int(p.name)) for p in pid_dir.iterdir())


def failure(outcome: object) -> str:
    assert isinstance(outcome, Fail), outcome
    assert outcome.retryable and not outcome.preempted
    return outcome.error


@pytest.mark.timeout(30)
def test_a_good_program_completes_with_its_checkpoint_and_log(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, GOOD_END + 'print("to stderr", file=sys.stderr)\n')
    ctx = context(tmp_path)
    outcome = execute(ctx, trial, "w", objective=("score",))
    assert isinstance(outcome, Report), outcome
    assert outcome.final == {"score": 0.3} and [m.step for m in outcome.measurements] == [1, 2, 3]
    assert outcome.checkpoint is not None and outcome.checkpoint.step == 3
    log = read_output(ctx.checkpoint_root, "cmd", 7, 1)
    assert log is not None and "pbt: step=3 score=0.3" in log and "to stderr" in log and "exit status 0" in log
    assert all_gone(pid_dir)


@pytest.mark.timeout(30)
def test_command_not_found(tmp_path: Path) -> None:
    trial = CommandTrial(["./no-such-program", "--lr", "{lr}"], cwd=tmp_path)
    error = failure(execute(context(tmp_path), trial, "w"))
    assert "cannot start the command ./no-such-program --lr 0.1" in error and "No such file" in error


@pytest.mark.timeout(30)
def test_non_zero_exit_carries_the_status_and_stderr(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, 'print("pbt: step=1 score=0.5", flush=True)\n'
                              'for i in range(100): print(f"noise {i}", file=sys.stderr)\n'
                              'print("CUDA out of memory", file=sys.stderr)\nsys.exit(3)\n')
    error = failure(execute(context(tmp_path), trial, "w", objective=("score",)))
    assert "exited with exit status 3" in error and "CUDA out of memory" in error
    assert "noise 99" in error and "noise 50" not in error  # the last lines only
    assert all_gone(pid_dir)


@pytest.mark.timeout(30)
def test_a_program_killed_by_a_signal(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV)\n")
    assert "signal SIGSEGV" in failure(execute(context(tmp_path), trial, "w"))


@pytest.mark.timeout(30)
def test_a_program_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              'print("pbt: step=1 score=0.1", flush=True)\ntime.sleep(120)\n')
    began = time.monotonic()
    outcome = execute(context(tmp_path, link=StopAfter(1)), trial, "w", objective=("score",))
    assert outcome is None  # stopped by the controller: nothing to report
    assert time.monotonic() - began < 10  # 1 s grace, not the program's 120 s
    assert all_gone(pid_dir)


@pytest.mark.timeout(30)
def test_a_silent_hung_program_ends_at_the_trial_timeout(tmp_path: Path, pid_dir: Path) -> None:
    """The controller's trial timeout reaches the worker as a ``stop`` (``ctx.stop_event``,
    ``worker_actor``); the program, silent and asleep, is ended with its group at once."""
    trial = program(tmp_path, "time.sleep(120)\n")
    ctx = context(tmp_path)
    timer = threading.Timer(0.5, ctx.stop_event.set)
    timer.start()
    began = time.monotonic()
    assert execute(ctx, trial, "w", objective=("score",)) is None
    assert time.monotonic() - began < 10
    assert all_gone(pid_dir)


@pytest.mark.timeout(60)
def test_a_program_flooding_stdout_keeps_memory_bounded(tmp_path: Path, pid_dir: Path) -> None:
    """~80 MB of output, with lines of up to 1 MB, some without a newline at the end; only
    a tail is kept, and the metric line after the flood still counts."""
    trial = program(tmp_path, 'line = "x" * 999 + "\\n"\nbig = "y" * (1 << 20)\n'
                              "for i in range(40): sys.stdout.write(line * 1000 + big)\n"
                              'sys.stdout.write("\\n")\n' + GOOD_END)
    ctx = context(tmp_path)
    tracemalloc.start()
    try:
        outcome = execute(ctx, trial, "w", objective=("score",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, Report), outcome
    assert outcome.final == {"score": 0.3}
    assert peak < 40 * 1024 * 1024, peak  # the 80 MB went by, a bounded part of it ever held
    log = read_output(ctx.checkpoint_root, "cmd", 7, 1)
    assert log is not None and len(log) < 3 * TAIL_BYTES and "earlier bytes not kept" in log
    assert all_gone(pid_dir)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("line", ["pbt: step=two score=0.5", "pbt: score=0.5", '{"pbt": {"step": 1, "score": "x"}}'])
def test_a_malformed_metric_line_fails_the_attempt_and_stops_the_program(tmp_path: Path, pid_dir: Path,
                                                                        line: str) -> None:
    trial = program(tmp_path, f'print("hello")\nprint({line!r}, flush=True)\ntime.sleep(120)\n')
    began = time.monotonic()
    error = failure(execute(context(tmp_path), trial, "w", objective=("score",)))
    assert "broke the metric line format: stdout line 2" in error and line[:12] in error
    assert time.monotonic() - began < 10 and all_gone(pid_dir)


@pytest.mark.timeout(30)
def test_non_finite_metrics_are_reported_and_lose(tmp_path: Path, pid_dir: Path) -> None:
    """As ``ctx.report``: NaN/inf are values (a diverged trial), not a broken program."""
    trial = program(tmp_path, 'print("pbt: step=3 score=nan loss=inf", flush=True)\n'
                              '(OUT / "state.txt").write_text("x")\n')
    outcome = execute(context(tmp_path), trial, "w", objective=("score",))
    assert isinstance(outcome, Report), outcome
    assert outcome.final["score"] != outcome.final["score"] and outcome.final["loss"] == float("inf")


@pytest.mark.timeout(30)
def test_a_program_that_never_reports_the_objective(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, 'print("pbt: step=3 loss=0.1", flush=True)\n(OUT / "state.txt").write_text("x")\n')
    error = failure(execute(context(tmp_path), trial, "w", objective=("score",)))
    assert "without reporting the objective metric 'score'" in error


@pytest.mark.timeout(30)
def test_a_program_that_writes_no_checkpoint(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, 'print("pbt: step=3 score=0.1", flush=True)\n')
    assert "wrote no checkpoint" in failure(execute(context(tmp_path), trial, "w", objective=("score",)))


@pytest.mark.timeout(30)
def test_a_symlink_out_of_the_checkpoint_directory_is_refused(tmp_path: Path, pid_dir: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not the trial's")
    trial = program(tmp_path, GOOD_END + f'os.symlink({str(secret)!r}, OUT / "leak.txt")\n')
    ctx = context(tmp_path)
    error = failure(execute(ctx, trial, "w", objective=("score",)))
    assert "leak.txt" in error and "cannot be stored" in error
    stored = [p for p in (tmp_path / "ckpt").rglob("*") if p.is_file() and "output-" not in p.name]
    assert not any(p.read_bytes() == b"not the trial's" for p in stored)


@pytest.mark.timeout(60)
def test_a_checkpoint_directory_of_10000_files_is_refused(tmp_path: Path, pid_dir: Path) -> None:
    trial = program(tmp_path, GOOD_END + 'for i in range(10000): (OUT / f"f{i}").write_bytes(b"")\n')
    error = failure(execute(context(tmp_path), trial, "w", objective=("score",)))
    assert "wrote more than 1000 files into its checkpoint directory" in error


@pytest.mark.timeout(30)
def test_a_program_that_forks_children_and_exits_takes_them_along(tmp_path: Path, pid_dir: Path) -> None:
    """The children keep stdout open: without ending the group the trial would wait for them."""
    trial = program(tmp_path, GOOD_END + "for _ in range(3):\n"
                              "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                              "    (PIDS / str(child.pid)).touch()\n")
    began = time.monotonic()
    outcome = execute(context(tmp_path), trial, "w", objective=("score",))
    assert isinstance(outcome, Report), outcome
    assert time.monotonic() - began < 15
    assert len(list(pid_dir.iterdir())) == 4
    assert all_gone(pid_dir)


RESUMABLE = """\
signal.signal(signal.SIGTERM, lambda *a: globals().update(stop=True))
stop = False
parent = os.environ.get("PBT_PARENT_DIR")
state = int(Path(parent, "state.txt").read_text()) if parent else 0
assert state == START, (state, START)
step = START
while step < END and not stop:
    time.sleep(0.05)
    step += 1
    print(f"pbt: step={step} score={step / 10}", flush=True)
(OUT / "state.txt").write_text(str(step))
print(f"pbt: checkpoint step={step}", flush=True)
"""


@pytest.mark.timeout(60)
def test_a_preempted_program_saves_and_the_retry_resumes_at_the_step_it_reached(tmp_path: Path,
                                                                                pid_dir: Path) -> None:
    trial = program(tmp_path, RESUMABLE)
    ctx = context(tmp_path, end=40)

    class PreemptAfter(StopAfter):
        def record(self, step: int, metrics: Mapping[str, float]) -> bool:
            self.seen += 1
            if self.seen == 5:
                ctx.preempt_event.set()  # the worker's SIGTERM handler
            return True

    ctx.link = PreemptAfter(0)
    outcome = execute(ctx, trial, "w", objective=("score",))
    assert isinstance(outcome, Fail) and outcome.preempted and outcome.resume is not None, outcome
    reached = outcome.resume.step
    assert 5 <= reached < 40
    retry = context(tmp_path, start=reached, end=40, attempt=2, parent=outcome.resume)
    done = execute(retry, trial, "w", objective=("score",))
    assert isinstance(done, Report), done
    assert [m.step for m in done.measurements] == list(range(reached + 1, 41))
    assert done.final == {"score": 4.0} and done.checkpoint is not None and done.checkpoint.step == 40
    assert all_gone(pid_dir)


@pytest.mark.timeout(90)
def test_scalars_written_as_tensorboard_event_files_are_reports(tmp_path: Path, pid_dir: Path) -> None:
    """A program that logs with TensorBoard (here its own event writer, as a SummaryWriter
    would) and prints no metric line: its scalars are the reports, its objective included."""
    pytest.importorskip("tensorboard")
    trial = program(tmp_path, """\
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
writer = EventFileWriter(os.environ["PBT_TENSORBOARD_DIR"])
for step in range(START + 1, END + 1):
    value = summary_pb2.Summary.Value(tag="score", simple_value=step / 4)
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])))
writer.close()
(OUT / "state.txt").write_text("x")
""")
    outcome = execute(context(tmp_path), trial, "w", objective=("score",))
    assert isinstance(outcome, Report), outcome
    assert [(m.step, m.metrics) for m in outcome.measurements] == [(1, {"score": 0.25}), (2, {"score": 0.5}),
                                                                   (3, {"score": 0.75})]
    assert outcome.final == {"score": 0.75}
