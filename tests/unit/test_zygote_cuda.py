"""The zygote and CUDA: a process that touched CUDA must not fork workers from a zygote.

Real zygote, real forks, real CLI run; the only simulated facts are torch's own answers to
"has CUDA been initialised here" (``torch.cuda.is_initialized``) and "is this process a bad
fork" (``torch.cuda._is_in_bad_fork``), which a CPU-only torch cannot produce for real.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from pbt_actors.model.errors import ZygoteError
from pbt_actors.runtime.host.zygote import Zygote, cuda_initialised, cuda_poisoned
from tests.support.runs import cli
from tests.support.waiting import wait_until

EXPERIMENTS = Path(__file__).resolve().parents[1] / "integration" / "experiments"


def single_threaded() -> None:
    wait_until(lambda: threading.active_count() == 1, 10,
               f"single-threaded test process (threads: {[t.name for t in threading.enumerate()]})")


def children_of_this_process() -> set[int]:
    """Live (non-zombie) children, from /proc: a refused zygote must leave none behind."""
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if fields[1] == me and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.mark.timeout(30)
def test_a_process_that_initialised_cuda_refuses_to_fork_a_zygote_and_says_how_to_avoid_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    single_threaded()
    before = children_of_this_process()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert cuda_initialised()
    with pytest.raises(ZygoteError) as refused:
        Zygote.start(preload=[])
    message = str(refused.value)
    assert "initialised CUDA" in message and "--no-zygote" in message and "train(ctx)" in message
    assert "\n" not in message  # one line in the CLI's warning
    assert children_of_this_process() == before  # refused before forking


@pytest.mark.timeout(30)
def test_a_zygote_that_finds_itself_in_a_bad_fork_refuses_and_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.is_available() in the parent poisons fork without initialising CUDA: only the
    forked zygote can see it (``_is_in_bad_fork``), and it must say so and exit, not serve."""
    single_threaded()
    before = children_of_this_process()
    assert not cuda_poisoned()
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)  # inherited by the forked zygote
    with pytest.raises(ZygoteError) as refused:
        Zygote.start(preload=[])
    message = str(refused.value)
    assert "torch.cuda.is_available()" in message and "PYTORCH_NVML_BASED_CUDA_CHECK=1" in message
    assert "--no-zygote" in message and "\n" not in message
    assert children_of_this_process() == before  # the refusing zygote was reaped


@pytest.mark.timeout(30)
def test_a_zygote_whose_preloading_touched_cuda_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zygote itself is clean, but its children would be bad forks (what preloading a
    module that calls torch.cuda.is_available() does): its probe child must find out."""
    single_threaded()
    me = os.getpid()
    before = children_of_this_process()
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: os.getpid() != me and os.getppid() != me)
    with pytest.raises(ZygoteError, match=r"preloading json\.tool touched CUDA") as refused:
        Zygote.start(preload=["json.tool"])
    assert "--no-zygote" in str(refused.value)
    wait_until(lambda: children_of_this_process() == before, 10, "no zygote or probe child left")


@pytest.mark.timeout(30)
def test_a_zygote_without_cuda_starts_and_runs_until_closed() -> None:
    single_threaded()
    zygote = Zygote.start(preload=[])
    try:
        assert zygote.pid in children_of_this_process()
    finally:
        zygote.close()
    assert zygote.pid not in children_of_this_process()


@pytest.mark.timeout(180)
def test_pbt_actors_run_with_cuda_initialised_at_import_falls_back_to_fresh_workers(tmp_path: Path) -> None:
    store_dir = tmp_path / "run"
    proc = cli("run", str(EXPERIMENTS / "cuda_at_import.py"), "--workers", "2", "--devices", "cpu",
               "--store", str(store_dir), "--json")
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    warnings = [line for line in out.splitlines() if "initialised CUDA" in line]
    assert len(warnings) == 1, out  # one line, once
    assert "starting each worker as a fresh process" in warnings[0] and "--no-zygote" in warnings[0], out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["finished"] and summary["best"] is not None
