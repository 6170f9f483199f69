"""A command trial's own overhead per trial, against the same trial as ``train(ctx)``.

    python benchmarks/command_trial.py                  # 20 repeats, 100 MB directories
    python benchmarks/command_trial.py --repeats 5 --mb 20 --json

Both sides run through ``trial_runner.execute`` exactly as a worker runs a trial (a real
``TrialContext`` over a local checkpoint folder), in this process, one after the other in the
same run (README "Any program as a trial" quotes the figures):

* **1-step trial**: report one metric and save a one-file checkpoint. ``train(ctx)``:
  ``ctx.report`` + ``ctx.save_checkpoint_dir``; the command trial: ``/bin/sh`` printing the
  metric line and writing the file (the cheapest program there is: what remains is our cost,
  spawning a process group, reading its lines, storing and logging), and the same with
  ``python -c`` (an interpreter's start, which a Python training script pays anyway).
* **100 MB directory**: a parent trial writes a directory of 4 files of ``--mb``/4 MB (a copy
  of prepared files, on both sides) and saves it; a child fetches it (verified), reads it,
  writes and saves its own. The time is the parent's and the child's trial together.

Timings are medians of ``--repeats``; each repeat uses fresh trial ids (no cache hit).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbt_actors.model.protocol import Report
from pbt_actors.runtime.command.trial import CommandTrial
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import execute


def _ctx(root: Path, trial_id: int, parent: Any = None) -> TrialContext:
    return TrialContext(trial_id=trial_id, attempt=1, generation=0, hparams={"lr": 0.1}, start_step=0 if parent is None
                        else 1, end_step=1 if parent is None else 2, checkpoint_root=str(root), experiment="bench",
                        parent_checkpoint=parent)


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    outcome = run()
    return time.perf_counter() - began, outcome


def _check(outcome: Any) -> Report:
    assert isinstance(outcome, Report), outcome
    return outcome


def one_step(root: Path, repeats: int) -> dict[str, float]:
    """Median seconds of a 1-step trial with a one-file checkpoint, three ways."""
    def python_train(ctx: TrialContext) -> dict[str, float]:
        folder = Path(tempfile.mkdtemp(dir=root))
        (folder / "state.txt").write_text("1")
        ctx.report(1, score=1.0)
        ctx.save_checkpoint_dir(folder)
        shutil.rmtree(folder)
        return {"score": 1.0}

    shell = CommandTrial(["/bin/sh", "-c", 'echo "pbt: step=1 score=1"; echo 1 > "$PBT_CHECKPOINT_DIR/state.txt"'],
                         cwd=root, objective=("score",))
    python = CommandTrial([sys.executable, "-S", "-c",
                           "import os; print('pbt: step=1 score=1'); "
                           "open(os.environ['PBT_CHECKPOINT_DIR'] + '/state.txt', 'w').write('1')"],
                          cwd=root, objective=("score",))
    times: dict[str, list[float]] = {"train(ctx)": [], "command /bin/sh": [], "command python -S": []}
    trial = 1
    for _ in range(repeats):
        for name, train in (("train(ctx)", python_train), ("command /bin/sh", shell), ("command python -S", python)):
            trial += 1
            seconds, outcome = _timed(functools.partial(execute, _ctx(root, trial), train, "b", objective=("score",)))
            _check(outcome)
            times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def big_directory(root: Path, repeats: int, megabytes: int) -> dict[str, float]:
    """Median seconds of a parent trial saving a ``megabytes`` directory, plus a child fetching
    it (and saving its own)."""
    source = root / "source"
    source.mkdir()
    for index in range(4):
        (source / f"shard-{index}.bin").write_bytes(os.urandom(megabytes * (1 << 20) // 4))

    def python_train(ctx: TrialContext) -> dict[str, float]:
        folder = ctx.load_checkpoint_dir()
        if folder is not None:
            for file in folder.iterdir():
                file.read_bytes()
        written = Path(tempfile.mkdtemp(dir=root)) / "out"
        shutil.copytree(source, written)  # what the trainer writes; the command's cp below
        ctx.report(ctx.end_step, score=1.0)
        ctx.save_checkpoint_dir(written)
        shutil.rmtree(written.parent)
        return {"score": 1.0}

    command = CommandTrial(["/bin/sh", "-c", f'cp {source}/* "$PBT_CHECKPOINT_DIR"/; '
                            'if [ -n "$PBT_PARENT_DIR" ]; then cat "$PBT_PARENT_DIR"/* > /dev/null; fi; '
                            'echo "pbt: step=$PBT_END_STEP score=1"'], cwd=root, objective=("score",))
    times: dict[str, list[float]] = {"train(ctx)": [], "command /bin/sh": []}
    trial = 10_000
    for _ in range(repeats):
        for name, parent_train, child_train in (("train(ctx)", python_train, python_train),
                                                ("command /bin/sh", command, command)):
            trial += 2
            put, parent = _timed(functools.partial(execute, _ctx(root, trial), parent_train, "b",
                                                   objective=("score",)))
            ref = _check(parent).checkpoint
            fetch, child = _timed(functools.partial(execute, _ctx(root, trial + 1, ref), child_train, "b",
                                                    objective=("score",)))
            _check(child)
            times[name].append(put + fetch)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mb", type=int, default=100, help="size of the big checkpoint directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbt-bench-cmd-") as folder:
        root = Path(folder)
        results = {"one_step_s": one_step(root, args.repeats),
                   f"dir_{args.mb}mb_put_and_fetch_s": big_directory(root, max(1, args.repeats // 4), args.mb),
                   "repeats": args.repeats}
    if args.json:
        print(json.dumps(results))
        return
    print(f"1-step trial, one-file checkpoint (median of {args.repeats}):")
    for name, seconds in results["one_step_s"].items():
        print(f"  {name:20s} {seconds * 1000:8.1f} ms")
    print(f"{args.mb} MB checkpoint directory: parent trial + child trial (median of {max(1, args.repeats // 4)}):")
    for name, seconds in results[f"dir_{args.mb}mb_put_and_fetch_s"].items():
        print(f"  {name:20s} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
