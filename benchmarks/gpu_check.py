"""GPU check (issue 14, item 4): per-GPU workers on real GPUs, in one prepared script.

    python benchmarks/gpu_check.py --out gpu_check.json [--json]

What it does, each part bounded by a timeout (the whole run stays under ``--budget-s``,
default 450 s, i.e. under 8 minutes on one GPU):

(env)        python, torch, CUDA, the GPUs (name, memory), NVML or nvidia-smi.
(busy)       issue 24: a GPU-bound model (``busy_variant``: an MLP of 6 x 2048 in bfloat16, 150
             batches of 8192 a step, a 300 MB checkpoint with background writes) with one worker
             per GPU; its GPU busy share and idle share against the goals (>= 90% busy, <= 2%
             idle between trials), printed as "busy model" and stored as ``busy_goals``. On a
             CPU the same code at toy size (``cpu_busy_tiny``) checks the path, without figures.
(runs)       ``python -m pbt_actors.cli run examples/gpu_cnn.py --devices all --json`` with one
             worker per GPU; then the same budget through a variant that adds two metrics
             (``on_cuda``, ``train_s``), with one and with two workers per GPU (they share it:
             one's gap is the other's busy time); all while sampling every GPU's utilisation
             every 100 ms (NVML through ``pynvml`` when importable, else ``nvidia-smi -lms 100``).
             From the store (read with the project's reader): trials/s and steps/s over the
             training window (first attempt's start to last attempt's end); each worker's gap
             between trials on the controller's clock (an attempt's end, its report arriving, to
             that worker's next start: 0 when the next trial rode on the report's ack, since one
             batch has one timestamp); the attempt's time outside ``train`` (controller time
             minus ``train_s``: hand-out and report round trip); the GPU's uncovered time (no
             attempt of any of its workers running). From the samples: utilisation while
             training (mean, p50, share > 0), its mean inside trials vs in uncovered gaps, and
             the GPU's idle runs (consecutive zero samples), which include each trial's own
             setup (checkpoint load, model build) and save, where the GPU also waits.
(checkpoint) a trained model and optimizer saved on ``cuda:0`` with ``torch_helpers`` and
             the project's checkpoint writer, loaded with ``weights_only=True`` onto the CPU
             (the worker's load path) and onto ``cuda:0`` (and ``cuda:1`` when present), then
             restored into a model on each device: every tensor compared equal.
(zygote)     experiment-file variants that touch CUDA at import (``torch.cuda.init()``, and
             ``torch.cuda.is_available()`` alone, which poisons fork without initialising),
             run with a tiny budget under a timeout: the run must warn once that it falls back
             to fresh worker processes (or refuse clearly), finish, and its trials must have
             run on CUDA; a hang is reported as such (the process group is killed).

Without a GPU it says "no GPU: skipping GPU parts", runs the CPU-feasible parts (a tiny CPU
run of the same example, the CPU checkpoint round trip, the zygote case with the one fact a
CPU cannot produce simulated: ``torch.cuda.is_initialized()`` answering True) and exits 0.
The exit code is 1 when a part that ran failed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "gpu_cnn.py"
SAMPLE_S = 0.1
FALLBACK_NEEDLE = "starting each worker as a fresh process"


# --- GPU utilisation sampling -----------------------------------------------------------------------------
@dataclass
class Sample:
    at: float  # time.time(), the controller's clock
    gpu: int
    util: float  # percent of the sample period a kernel ran
    memory_mib: float


@dataclass
class UtilSampler:
    """Samples every GPU's utilisation in a background thread until ``stop``."""

    source: str = "none"
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _proc: subprocess.Popen[str] | None = None

    def start(self) -> UtilSampler:
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.source = "nvml"
            self._thread = threading.Thread(target=self._nvml_loop, args=(pynvml, handles), daemon=True)
        except Exception:  # no pynvml, or no driver: nvidia-smi, if any
            if shutil.which("nvidia-smi") is None:
                return self
            self.source = "nvidia-smi"
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={int(SAMPLE_S * 1000)}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._smi_loop, daemon=True)
        self._thread.start()
        return self

    def _nvml_loop(self, pynvml: Any, handles: list[Any]) -> None:
        while not self._stop.is_set():
            now = time.time()
            for index, handle in enumerate(handles):
                with contextlib.suppress(Exception):
                    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                    self.samples.append(Sample(now, index, float(rates.gpu), memory.used / 2**20))
            self._stop.wait(SAMPLE_S)

    def _smi_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            with contextlib.suppress(ValueError, IndexError):
                self.samples.append(Sample(time.time(), int(parts[0]), float(parts[1]), float(parts[2])))

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def window(self, start: float, end: float, gpus: set[int] | None = None) -> list[Sample]:
        return [s for s in list(self.samples) if start <= s.at <= end and (gpus is None or s.gpu in gpus)]


# --- statistics -------------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered), "p50": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1], "n": len(ordered)}


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def idle_runs(samples: list[Sample]) -> list[float]:
    """Durations of the runs of consecutive zero-utilisation samples of one GPU (its idle gaps
    as the sampler sees them: resolution ``SAMPLE_S``, and NVML averages over its own period)."""
    runs: list[float] = []
    first: float | None = None
    for sample in sorted(samples, key=lambda s: s.at):
        if sample.util == 0 and first is None:
            first = sample.at
        elif sample.util > 0 and first is not None:
            runs.append(sample.at - first)
            first = None
    return runs


def gpu_of(worker: str) -> int | None:
    """The GPU of a worker id (``<host>-w<N>-gpu<D>[-<hex>]``, ``launch.worker_specs``), or None."""
    for part in worker.split("-"):
        if part.startswith("gpu") and part[3:].isdigit():
            return int(part[3:])
    return None


# --- the store --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    trial: int
    attempt: int
    worker: str
    start: float
    end: float
    steps: int
    completed: bool


def read_attempts(store_dir: Path) -> tuple[list[Attempt], list[Any]]:
    """Every attempt with its start and end (controller clock), and the trials, from the store."""
    from pbt_actors.model.records import TrialStatus
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    attempts: dict[tuple[int, int], Attempt] = {}
    with LmdbTrialStore(store_dir, readonly=True) as store:
        trials = list(store.iter_trials())
    for trial in trials:
        steps = trial.end_step - trial.start_step
        for record in trial.history:
            attempts[(trial.id, record.attempt)] = Attempt(trial.id, record.attempt, record.worker, record.started_at,
                                                           record.ended_at, steps, False)
        if trial.started_at is not None and trial.ended_at is not None and trial.worker:
            done = trial.status is TrialStatus.COMPLETED
            attempts[(trial.id, trial.attempt)] = Attempt(trial.id, trial.attempt, trial.worker, trial.started_at,
                                                          trial.ended_at, steps, done)
    return sorted(attempts.values(), key=lambda a: a.start), trials


def training_figures(attempts: list[Attempt], sampler: UtilSampler) -> dict[str, Any]:
    """Throughput, per-worker gaps, GPU uncovered time and utilisation over the training window."""
    if not attempts:
        return {"error": "no attempts in the store"}
    begin, finish = min(a.start for a in attempts), max(a.end for a in attempts)
    span = max(finish - begin, 1e-9)
    completed = [a for a in attempts if a.completed]
    by_worker: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_worker.setdefault(attempt.worker, []).append(attempt)
    gaps = [nxt.start - prev.end for runs in by_worker.values() for prev, nxt in itertools.pairwise(runs)]
    out: dict[str, Any] = {
        "window_s": span, "trials": len(completed), "attempts": len(attempts), "workers": len(by_worker),
        "trials_per_s": len(completed) / span, "steps_per_s": sum(a.steps for a in completed) / span,
        "worker_gap_ms": summary([g * 1e3 for g in gaps]),
        "trial_s": summary([a.end - a.start for a in completed]),
    }
    gpus: dict[int, list[Attempt]] = {}
    for attempt in attempts:
        gpu = gpu_of(attempt.worker)
        if gpu is not None:
            gpus.setdefault(gpu, []).append(attempt)
    per_gpu = {}
    for gpu, runs in sorted(gpus.items()):
        covered = union([(a.start, a.end) for a in runs])
        holes = [(a[1], b[0]) for a, b in itertools.pairwise(covered)]
        samples = sampler.window(begin, finish, {gpu})
        inside = [s.util for s in samples if any(a <= s.at <= b for a, b in covered)]
        between = [s.util for s in samples if any(a < s.at < b for a, b in holes)]
        idle = idle_runs(samples)
        per_gpu[str(gpu)] = {
            "idle_runs_ms": summary([d * 1e3 for d in idle]),
            "idle_share_by_samples": (sum(1 for s in samples if s.util == 0) / len(samples)) if samples else None,
            "workers": len({a.worker for a in runs}),
            "uncovered_share": sum(b - a for a, b in holes) / span,
            "uncovered_gap_ms": summary([(b - a) * 1e3 for a, b in holes]),
            "util": summary([s.util for s in samples]),
            "busy_share": (sum(1 for s in samples if s.util > 0) / len(samples)) if samples else None,
            "util_inside_trials_mean": statistics.fmean(inside) if inside else None,
            "util_between_trials_mean": statistics.fmean(between) if between else None,
            "memory_mib_max": max((s.memory_mib for s in samples), default=None),
        }
    out["gpus"] = per_gpu
    return out


# --- running the CLI ----------------------------------------------------------------------------------------
@dataclass
class CliRun:
    returncode: int | None
    hung: bool
    elapsed_s: float
    output: str
    summary: dict[str, Any] | None


def run_cli(experiment: Path, store: Path, args: list[str], timeout_s: float) -> CliRun:
    """``pbt-actors run`` in its own process group; killed (the whole group) past ``timeout_s``."""
    command = [sys.executable, "-m", "pbt_actors.cli", "run", str(experiment), "--store", str(store), "--json", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO),
                                start_new_session=True)
        hung = False
        try:
            proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            hung = True
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its workers too, whatever happened
            proc.wait()
        sink.seek(0)
        output = sink.read()
    parsed = None
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                parsed = json.loads(line)
                break
    return CliRun(None if hung else proc.returncode, hung, time.monotonic() - started, output, parsed)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def variant(folder: Path, name: str, *, budget: dict[str, int] | None = None, at_import: str = "") -> Path:
    """An experiment file: ``gpu_cnn`` with ``budget`` (Experiment fields; None keeps the
    example's), ``at_import`` run first, and two more metrics: ``on_cuda`` (whether the trial's
    tensors really were on CUDA) and ``train_s`` (the wall time of ``train``, to tell the
    worker's time in the trial from the protocol's)."""
    path = folder / f"{name}.py"
    fields = "".join(f", {key}={value!r}" for key, value in (budget or {}).items())
    path.write_text(textwrap.dedent(f'''\
        """gpu_check variant {name!r} of examples/gpu_cnn.py (written by benchmarks/gpu_check.py)."""
        import sys
        import time
        from dataclasses import replace

        import torch

        {at_import or "pass"}

        sys.path.insert(0, {str(EXAMPLE.parent)!r})
        import gpu_cnn  # noqa: E402

        experiment = replace(gpu_cnn.experiment, name={name!r}{fields})


        def train(ctx):
            started = time.perf_counter()
            result = gpu_cnn.train(ctx)
            x = gpu_cnn.load_data(ctx.device)[0]
            return {{**result, "on_cuda": float(x.is_cuda), "train_s": time.perf_counter() - started}}
        '''))
    return path


TINY = {"population": 2, "max_steps": 2, "steps_per_trial": 1, "opponent_window": 1}

BUSY_GOALS = {"busy_share_min": 0.90, "idle_between_trials_max": 0.02}
"""Issue 24's goals on a GPU with one worker per GPU: the GPU busy (utilisation > 0) in at least
90% of the samples over the training window, idle between trials at most 2% of the window."""


def busy_variant(folder: Path, name: str, *, gpu: bool) -> Path:
    """An experiment whose trial keeps the GPU busy (issue 24, item 5): an MLP of 6 layers of
    2048 (25 M parameters; with Adam a 300 MB checkpoint) trained on random batches of 8192 in
    bfloat16 autocast, 150 batches a step, data made on the device (no host copies), so that a
    step is GPU-bound and what is left idle is the switch between trials. On a CPU the same code
    at toy size, to check the path. Population 4 per worker slot: background writes overlap the
    next trial (docs/design.md §15)."""
    width, layers, batch, batches = (2048, 6, 8192, 150) if gpu else (64, 2, 64, 2)
    population, max_steps = (8, 16) if gpu else (2, 2)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(f'''\
        """gpu_check variant {name!r}: a GPU-bound trial (written by benchmarks/gpu_check.py)."""
        import time

        import torch
        from torch import nn

        from pbt_actors import Experiment, Float
        from pbt_actors.torch_helpers import restore_training_state, training_state

        experiment = Experiment(name={name!r}, space={{"lr": Float(1e-4, 1e-2, log=True)}}, objective="score",
                                population={population}, steps_per_trial=2, max_steps={max_steps},
                                opponent_window=2, lease_s=120.0, seed=0)


        def build(device):
            torch.manual_seed(0)
            mods = []
            for _ in range({layers}):
                mods += [nn.Linear({width}, {width}), nn.ReLU()]
            model = nn.Sequential(*mods, nn.Linear({width}, 1)).to(device)
            return model, torch.optim.Adam(model.parameters(), lr=1e-3)


        def train(ctx):
            started = time.perf_counter()
            device = ctx.device
            model, optimizer = build(device)
            state = ctx.load_checkpoint()
            if state is not None:
                restore_training_state(state, model, optimizer, hparams=ctx.hparams)
            gen = torch.Generator(device=device).manual_seed(ctx.trial_id)
            kind = "cuda" if device.startswith("cuda") else "cpu"
            loss = torch.zeros((), device=device)
            for step in range(ctx.start_step, ctx.end_step):
                for _ in range({batches}):
                    x = torch.randn({batch}, {width}, device=device, generator=gen)
                    with torch.autocast(kind, dtype=torch.bfloat16, enabled=kind == "cuda"):
                        loss = model(x).float().pow(2).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if not ctx.report(step + 1, score=-float(loss)):
                    break
            ctx.save_checkpoint(training_state(model, optimizer, ctx.end_step))
            return {{"score": -float(loss), "on_cuda": float(kind == "cuda"),
                     "train_s": time.perf_counter() - started}}
        '''))
    return path


def busy_goals(run: dict[str, Any]) -> dict[str, Any]:
    """Issue 24's goals (``BUSY_GOALS``) for a run of ``busy_variant``: busy share from the
    utilisation samples; idle between trials as the share of samples at 0 utilisation (the GPU's
    own view; the controller's attempt intervals overlap now that a trial completes only once
    durable, after its worker started the next one) and the controller's uncovered share."""
    first: dict[str, Any] = next(iter((run.get("gpus") or {}).values()), {})
    busy, idle = first.get("busy_share"), first.get("idle_share_by_samples")
    return {"busy_share": busy, "idle_share": idle, "uncovered_share": first.get("uncovered_share"),
            "busy_ok": busy is not None and busy >= BUSY_GOALS["busy_share_min"],
            "idle_ok": idle is not None and idle <= BUSY_GOALS["idle_between_trials_max"], **BUSY_GOALS}


def run_part(name: str, experiment: Path, work: Path, args: list[str], timeout_s: float,
             sampler: UtilSampler) -> dict[str, Any]:
    store = work / f"store-{name}"
    run = run_cli(experiment, store, args, timeout_s)
    result: dict[str, Any] = {"args": args, "returncode": run.returncode, "hung": run.hung,
                              "elapsed_s": run.elapsed_s, "finished": bool(run.summary and run.summary.get("finished")),
                              "fell_back": FALLBACK_NEEDLE in run.output}
    if run.summary is not None:
        result["cli_wall_time_s"] = run.summary.get("wall_time_s")
    warnings = [line for line in run.output.splitlines() if "zygote" in line.lower() or FALLBACK_NEEDLE in line]
    result["zygote_warnings"] = [line[:800] for line in warnings[:3]]
    if (store / "data.mdb").exists():
        try:
            attempts, trials = read_attempts(store)
            result.update(training_figures(attempts, sampler))
            on_cuda = [t.final.get("on_cuda") for t in trials if t.final is not None and "on_cuda" in t.final]
            if on_cuda:
                result["trials_on_cuda"] = f"{sum(1 for v in on_cuda if v == 1.0)}/{len(on_cuda)}"
            overheads = [(t.ended_at - t.started_at - t.final["train_s"]) * 1e3 for t in trials
                         if t.final is not None and "train_s" in t.final and t.started_at and t.ended_at]
            result["attempt_minus_train_ms"] = summary(overheads)  # hand-out + report round trip, per trial
        except Exception as exc:  # a store the run left half-written: report, go on
            result["store_error"] = f"{type(exc).__name__}: {exc}"
    if not result["finished"] or run.returncode != 0:
        result["output_tail"] = tail(run.output)
    return result


# --- checkpoints across devices -------------------------------------------------------------------------------
def checkpoint_check(work: Path, devices: list[str]) -> dict[str, Any]:
    """Save on ``devices[0]`` through the project's writer, load (weights_only) and restore on each."""
    import torch

    from pbt_actors.runtime.checkpoint_payloads import load_checkpoint, save_checkpoint
    from pbt_actors.torch_helpers import restore_training_state, training_state

    sys.path.insert(0, str(EXAMPLE.parent))
    import gpu_cnn  # type: ignore[import-not-found]

    source = devices[0]
    torch.manual_seed(0)
    model, optimizer = gpu_cnn.build(source, 0.1)
    x = torch.randn(16, 3, gpu_cnn.IMAGE, gpu_cnn.IMAGE, device=source)
    y = torch.randint(0, gpu_cnn.CLASSES, (16,), device=source)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    saved = training_state(model, optimizer, 3)
    root = work / "checkpoints"
    ref = save_checkpoint(root, "gpu_check/trial-000001/a1-s3.ckpt", saved, 3)
    expected = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    result: dict[str, Any] = {"saved_on": source, "bytes": ref.bytes, "loads": {}}
    started = time.perf_counter()
    loaded = load_checkpoint(root, ref)  # the worker's path: verified, weights_only=True, onto the CPU
    result["load_ms"] = (time.perf_counter() - started) * 1e3
    devices_seen = {t.device.type for t in loaded["model"].values()}
    for target in ["cpu", *devices] if source != "cpu" else ["cpu"]:  # the CPU, and each GPU (cuda:0 too)
        direct = torch.load(root / ref.uri, map_location=target, weights_only=True)
        child, child_optimizer = gpu_cnn.build(target, 0.1)
        restore_training_state(loaded, child, child_optimizer, hparams={"lr": 1e-3})
        same_direct = all(torch.equal(direct["model"][k].cpu(), v) for k, v in expected.items())
        same_restored = all(torch.equal(child.state_dict()[k].cpu(), v) for k, v in expected.items())
        on_target = all(p.device == torch.device(target) for p in child.parameters())
        moments = [child_optimizer.state[p]["exp_avg"] for p in child.parameters()]
        result["loads"][target] = {"equal_direct": same_direct, "equal_restored": same_restored,
                                   "params_on_target": on_target,
                                   "optimizer_state_on_target": all(m.device == torch.device(target) for m in moments)}
    result["load_path_devices"] = sorted(devices_seen)
    result["ok"] = devices_seen == {"cpu"} and all(all(v.values()) for v in result["loads"].values())
    return result


# --- the zygote and CUDA at import ---------------------------------------------------------------------------
ZYGOTE_CASES_GPU = {
    "cuda_init_at_import": "torch.cuda.init()",
    "cuda_tensor_at_import": "_warm = torch.zeros(1, device='cuda')",
    "is_available_at_import": "_have_cuda = torch.cuda.is_available()",
}
ZYGOTE_CASES_CPU = {"simulated_cuda_init_at_import": "torch.cuda.is_initialized = lambda: True  # simulated: no GPU"}


def zygote_case(name: str, at_import: str, work: Path, devices: list[str], timeout_s: float,
                gpu: bool, sampler: UtilSampler) -> dict[str, Any]:
    path = variant(work, name, budget=TINY, at_import=at_import)
    result = run_part(name, path, work, devices, timeout_s, sampler)
    slim = {k: result.get(k) for k in ("returncode", "hung", "elapsed_s", "finished", "fell_back", "trials",
                                       "trials_on_cuda", "output_tail")}
    slim["warning"] = next(iter(result["zygote_warnings"]), None)
    slim["warnings"] = len(result["zygote_warnings"])
    cuda_ok = (not gpu) or str(slim.get("trials_on_cuda") or "").split("/")[0] == str(slim.get("trials"))
    slim["ok"] = bool(not result["hung"] and result["finished"] and result["fell_back"] and cuda_ok)
    return slim


# --- environment and output -------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_build": torch.version.cuda, "cpus": os.cpu_count(),
                           "cuda_available": torch.cuda.is_available(), "gpus": []}
    if env["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            env["gpus"].append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    with contextlib.suppress(Exception):
        import pynvml  # type: ignore[import-not-found,unused-ignore]

        pynvml.nvmlInit()
        env["driver"] = pynvml.nvmlSystemGetDriverVersion()
    return env


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(results: dict[str, Any]) -> None:
    env = results["env"]
    print(f"\npython {env['python']}  torch {env['torch']} (CUDA build {env['cuda_build']})  CPUs {env['cpus']}")
    for gpu in env["gpus"]:
        print(f"GPU {gpu['index']}: {gpu['name']} ({gpu['memory_gib']} GiB)")
    if not env["gpus"]:
        print("no GPU: skipping GPU parts")
    print(f"utilisation sampler: {results.get('sampler', 'none')}")
    print("\nruns (gpu_cnn)          trials  trials/s  steps/s  trial s p50  worker gap ms p50/p90  "
          "GPU util mean/p50  busy  in/between trials  uncovered")
    for name, run in results["runs"].items():
        gap = run.get("worker_gap_ms") or {}
        trial = run.get("trial_s") or {}
        gpus = run.get("gpus") or {}
        first: dict[str, Any] = next(iter(gpus.values()), {})
        util = first.get("util") or {}
        print(f"{name:<23} {fmt(run.get('trials')):>6}  {fmt(run.get('trials_per_s')):>8}  "
              f"{fmt(run.get('steps_per_s')):>7}  {fmt(trial.get('p50')):>11}  "
              f"{fmt(gap.get('p50'), 1):>10}/{fmt(gap.get('p90'), 1):<10}  "
              f"{fmt(util.get('mean'), 1):>8}/{fmt(util.get('p50'), 1):<8}  {fmt(first.get('busy_share')):>4}  "
              f"{fmt(first.get('util_inside_trials_mean'), 1):>6}/{fmt(first.get('util_between_trials_mean'), 1):<6}  "
              f"{fmt(first.get('uncovered_share'))}"
              + ("" if run.get("finished") else f"  NOT FINISHED (rc {run.get('returncode')}, hung {run.get('hung')})"))
        idle = first.get("idle_runs_ms") or {}
        outside = run.get("attempt_minus_train_ms") or {}
        print(f"{'':<23} GPU idle runs ms p50/max {fmt(idle.get('p50'), 0)}/{fmt(idle.get('max'), 0)} "
              f"(n {fmt(idle.get('n'))}, idle share {fmt(first.get('idle_share_by_samples'))}); attempt minus "
              f"train ms p50 {fmt(outside.get('p50'), 1)}; on CUDA {fmt(run.get('trials_on_cuda'))}; "
              f"zygote fallback {fmt(run.get('fell_back'))}; GPU mem max {fmt(first.get('memory_mib_max'), 0)} MiB")
    goals = results.get("busy_goals")
    if goals:
        print(f"\nbusy model, 1 worker per GPU (issue 24): GPU busy share {fmt(goals['busy_share'])} "
              f"(goal >= {goals['busy_share_min']}: {'met' if goals['busy_ok'] else 'NOT met'}), idle share "
              f"{fmt(goals['idle_share'])} (goal <= {goals['idle_between_trials_max']}: "
              f"{'met' if goals['idle_ok'] else 'NOT met'}), controller-uncovered share "
              f"{fmt(goals['uncovered_share'])}")
    elif not env["gpus"]:
        print("\nbusy model (issue 24): no GPU, so no busy/idle figures; its CPU run checked the path only")
    ckpt = results.get("checkpoint", {})
    print(f"\ncheckpoint saved on {ckpt.get('saved_on')}: ok={ckpt.get('ok')}  load path onto "
          f"{ckpt.get('load_path_devices')}  {json.dumps(ckpt.get('loads'))}" if "error" not in ckpt
          else f"\ncheckpoint: ERROR {ckpt['error']}")
    print("\nzygote, CUDA at import     ok     finished  fell back  hung   s      trials on CUDA")
    for name, case in results["zygote"].items():
        print(f"{name:<26} {fmt(case.get('ok')):<6} {fmt(case.get('finished')):<9} {fmt(case.get('fell_back')):<10} "
              f"{fmt(case.get('hung')):<6} {fmt(case.get('elapsed_s'), 1):<6} {fmt(case.get('trials_on_cuda'))}")
        if case.get("warning"):
            print(f"    warning: {case['warning']}")
    print(f"\ntotal {results['total_s']:.1f}s; ok={results['ok']}")


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
            yield Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting parts past this (seconds)")
    parser.add_argument("--workdir", default=None, help="keep stores and logs here (default: a temp folder)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def left(cap: float) -> float:
        """The timeout of the next part: its cap, or what is left of the budget (0: skip it)."""
        remaining = args.budget_s - (time.monotonic() - started)
        return min(cap, remaining) if remaining >= 20.0 else 0.0

    def save() -> None:  # after every part: a run killed from outside still leaves its results
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2, default=str))

    env = environment()
    gpu = bool(env["gpus"])
    if not gpu:
        print("no GPU: skipping GPU parts (running the CPU-feasible ones)", flush=True)
    results: dict[str, Any] = {"env": env, "runs": {}, "zygote": {}}
    sampler = UtilSampler().start() if gpu else UtilSampler()
    results["sampler"] = sampler.source
    try:
        with workdir(args.workdir) as work:
            if gpu:
                count = len(env["gpus"])
                timed = variant(work, "gpu_cnn_timed")  # the example's own budget, two more metrics
                busy = busy_variant(work, "gpu_busy", gpu=True)
                plans = [("busy_1_per_gpu", busy, ["--devices", "all"], 150.0),
                         ("1_per_gpu", EXAMPLE, ["--devices", "all"], 120.0),
                         ("1_per_gpu_timed", timed, ["--devices", "all"], 100.0),
                         ("2_per_gpu_timed", timed, ["--devices", "all", "--workers", str(2 * count)], 90.0)]
            else:
                tiny = variant(work, "cpu_tiny", budget=TINY)
                busy = busy_variant(work, "cpu_busy_tiny", gpu=False)
                plans = [("cpu_2_workers", tiny, ["--devices", "cpu", "--workers", "2"], 120.0),
                         ("cpu_busy_tiny", busy, ["--devices", "cpu", "--workers", "1"], 90.0)]
            for name, experiment, cli_args, cap in plans:
                print(f"[run] {name}: {' '.join(cli_args)}", flush=True)
                timeout = left(cap)
                results["runs"][name] = (run_part(name, experiment, work, cli_args, timeout, sampler) if timeout
                                         else {"skipped": "budget spent", "finished": False})
                if "busy" in name and gpu:
                    results["busy_goals"] = busy_goals(results["runs"][name])
                save()
            print("[checkpoint]", flush=True)
            try:
                import torch

                devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if gpu else ["cpu"]
                results["checkpoint"] = checkpoint_check(work, devices)
            except Exception as exc:
                results["checkpoint"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            save()
            cases = ZYGOTE_CASES_GPU if gpu else ZYGOTE_CASES_CPU
            devices_args = ["--devices", "all"] if gpu else ["--devices", "cpu", "--workers", "2"]
            for name, code in cases.items():
                print(f"[zygote] {name}", flush=True)
                timeout = left(90.0)
                results["zygote"][name] = (zygote_case(name, code, work, devices_args, timeout, gpu, sampler)
                                           if timeout else {"skipped": "budget spent", "ok": False})
                save()
    finally:
        sampler.stop()
    results["total_s"] = time.monotonic() - started
    parts_ok = [run.get("finished", False) and not run.get("hung") for run in results["runs"].values()]
    parts_ok += [bool(results["checkpoint"].get("ok"))] + [bool(c.get("ok")) for c in results["zygote"].values()]
    results["ok"] = all(parts_ok)
    print_table(results)
    if args.out:
        save()
        print(f"results written to {args.out}")
    if args.json:
        print(json.dumps(results, default=str))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
