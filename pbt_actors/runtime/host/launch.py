"""Worker processes of one host: ``--devices``/``--workers`` → one ``ChildSpec`` per slot.

A slot is one worker process and the GPUs it sees (docs/design.md §9.4): by default one GPU;
``--gpus-per-trial N`` gives each slot N GPUs (``CUDA_VISIBLE_DEVICES=a,b``: a trial may run
``torchrun --nproc-per-node N``); ``--workers-per-gpu K`` packs K slots on each GPU (small
models that leave a GPU idle). ``assign_slots`` is the pure rule, tested on its own.

Layer 4. ``worker_specs`` gives each slot a ``WorkerProcessConfig`` and an environment
(``CUDA_VISIBLE_DEVICES`` pinned to one of the GPUs granted to this process:
``visible_devices``; OpenMP threads shared out) and a factory that starts the
worker process: forked from the ``Zygote`` when one is given (milliseconds, torch and the
experiment's libraries already imported), else, or when the zygote cannot spawn (one
warning), a fresh interpreter running ``python -m pbt_actors.cli worker-process``. Either
way the factory returns what ``subprocess.Popen`` offers the host supervisor (``pid``,
``poll``, ``wait``, ``terminate``, ``kill``), with stdout and stderr appended to the slot's
log file. Every worker gets the read end of this process's ``Lifeline`` and exits when this
process is gone (``worker_process``'s module doc). ``load_experiment_file`` is re-exported
from ``experiment_file`` for its callers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pbt_actors.common.exit_codes import EXIT_NO_CONTROLLER, EXIT_WRONG_RUN
from pbt_actors.model.errors import ConfigError, ZygoteError
from pbt_actors.runtime.experiment_loader import load_experiment_file, load_module
from pbt_actors.runtime.host.restart_rules import ChildSpec, Restart
from pbt_actors.runtime.host.zygote import ForkedWorker, Zygote
from pbt_actors.runtime.worker.worker_process import LIFELINE_ENV, Lifeline, WorkerProcessConfig

log = logging.getLogger(__name__)

WorkerProcess = ForkedWorker | subprocess.Popen[bytes]


def gpu_count() -> int:
    """GPUs of this host, without touching CUDA (which would keep the zygote from forking
    workers that use it): ``nvidia-smi -L``, else NVML when ``pynvml`` is installed, else 0."""
    if shutil.which("nvidia-smi") is None:
        return _nvml_gpu_count()
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _nvml_gpu_count() -> int:
    """NVML's device count (the driver's management library, not CUDA: safe before a fork)."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]  # nvidia-ml-py: optional
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver: pynvml raises its own NVMLError
        return 0


def visible_devices(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The GPUs this process may use by ``CUDA_VISIBLE_DEVICES`` (as a cluster manager such as
    SLURM or Kubernetes' device plugin sets it): its entries (indexes, ``GPU-``/``MIG-`` UUIDs),
    [] when it hides every GPU (empty, or starting with ``-1``), None when it is unset (every
    GPU ``nvidia-smi`` lists). Why: ``nvidia-smi`` ignores the variable, so a worker pinned to
    ``CUDA_VISIBLE_DEVICES=0`` would take the node's first GPU, not the first one granted."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(",")]
    visible: list[str] = []
    for entry in entries:
        if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
            break
        visible.append(entry)
    return visible


def _refuse_cpu_fallback_when_given_gpus(environ: Mapping[str, str] | None = None) -> None:
    """``--devices all`` finds no GPU: fine on a CPU host, but not in a container the NVIDIA
    runtime was told to give GPUs (``NVIDIA_VISIBLE_DEVICES`` names devices, as Kubernetes'
    device plugin sets it): training on the CPU there is a silent 100x slowdown on a paid GPU
    (issue 21, item 7e). ``all``/``void``/``none`` (a CUDA base image's default) do not count."""
    value = (os.environ if environ is None else environ).get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if value.lower() in ("", "all", "void", "none"):
        return
    raise ConfigError(f"--devices all: this container was given GPU(s) (NVIDIA_VISIBLE_DEVICES={value!r}) but "
                      "neither nvidia-smi nor NVML finds one; set NVIDIA_DRIVER_CAPABILITIES=compute,utility "
                      "(utility mounts nvidia-smi) and check the node's driver, or pass --devices cpu to mean it")


def assign_slots(gpus: Sequence[str], workers: int | None = None, *, gpus_per_trial: int = 1,
                 workers_per_gpu: int = 1, cpu_workers: int | None = None) -> list[str | None]:
    """The worker slots of a host given its chosen ``gpus`` (none: CPU workers): each slot's
    ``CUDA_VISIBLE_DEVICES`` (``"0"``, ``"0,1"`` for a slot of two GPUs), or None for CPU.
    Pure. ``gpus_per_trial`` N cuts the GPUs into consecutive groups of N (8 GPUs, N=2: 4
    slots ``0,1 2,3 4,5 6,7``); ``workers_per_gpu`` K repeats each GPU K times, neighbours
    together (2 GPUs, K=2: ``0 0 1 1``); ``workers`` W then takes W slots round robin (the
    older way of putting several workers on a GPU).

    Raises:
        ConfigError: N or K below 1; both above 1; N or K without a GPU; more GPUs per trial
            than chosen, or a GPU count that N does not divide; ``--workers`` with K > 1.
    """
    if gpus_per_trial < 1 or workers_per_gpu < 1:
        raise ConfigError(f"--gpus-per-trial and --workers-per-gpu must be at least 1, got {gpus_per_trial} and "
                          f"{workers_per_gpu}")
    if gpus_per_trial > 1 and workers_per_gpu > 1:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial} and --workers-per-gpu {workers_per_gpu} cannot be "
                          "combined: a trial spread over several GPUs does not share them")
    if not gpus:
        if gpus_per_trial > 1 or workers_per_gpu > 1:
            flag = (f"--gpus-per-trial {gpus_per_trial}" if gpus_per_trial > 1
                    else f"--workers-per-gpu {workers_per_gpu}")
            raise ConfigError(f"{flag}: no GPU to give (CPU workers: --devices cpu, or no GPU found); leave it out "
                              "or use --workers")
        return [None] * (workers or cpu_workers or default_cpu_workers())
    if workers is not None and workers_per_gpu > 1:
        raise ConfigError(f"give --workers or --workers-per-gpu, not both (--workers-per-gpu {workers_per_gpu} on "
                          f"{len(gpus)} GPU(s) makes {len(gpus) * workers_per_gpu} workers)")
    if gpus_per_trial > len(gpus) or len(gpus) % gpus_per_trial:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial}: {len(gpus)} GPU(s) chosen ({','.join(gpus)}) cannot "
                          f"be cut into groups of {gpus_per_trial}; choose a multiple with --devices")
    groups = [",".join(gpus[i:i + gpus_per_trial]) for i in range(0, len(gpus), gpus_per_trial)]
    slots: list[str | None] = [group for group in groups for _ in range(workers_per_gpu)]
    if workers is not None:  # several workers per slot, round robin
        slots = [slots[i % len(slots)] for i in range(workers)]
    return slots


def device_slots(devices: str, workers: int | None, gpus_per_trial: int = 1,
                 workers_per_gpu: int = 1) -> list[str | None]:
    """``--devices`` → one entry per worker: what its ``CUDA_VISIBLE_DEVICES`` is set to (GPU
    indexes or UUIDs, comma-separated), or None for CPU (``assign_slots``). With
    ``CUDA_VISIBLE_DEVICES`` set, ``all`` means its entries and an index ``i`` its ``i``-th
    entry (``visible_devices``)."""
    if devices == "cpu":
        return assign_slots([], workers, gpus_per_trial=gpus_per_trial, workers_per_gpu=workers_per_gpu)
    count = gpu_count()
    visible = visible_devices() if count else []  # no GPU at all: whatever the variable says
    granted = [str(i) for i in range(count)] if visible is None else visible
    if devices == "all":
        if not granted:
            _refuse_cpu_fallback_when_given_gpus()
        chosen = list(granted)
    else:
        wanted = [d.strip() for d in devices.split(",") if d.strip()]
        if not wanted or not all(s.isdigit() for s in wanted):
            raise ConfigError(f"--devices must be all, cpu or a list like 0,1; got {devices!r}")
        missing = [s for s in wanted if int(s) >= len(granted)]  # it would quietly train on the CPU
        if missing:
            if visible is None or not count:
                have = f"GPUs 0-{count - 1}" if count else "no GPU (nvidia-smi finds none)"
                raise ConfigError(f"--devices {devices}: this machine has {have}, not GPU {', '.join(missing)}; "
                                  f"use --devices cpu or all")
            shown = f" (0-{len(visible) - 1})" if visible else ""
            raise ConfigError(f"--devices {devices}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} "
                              f"makes {len(visible)} GPU(s) visible{shown}, not GPU {', '.join(missing)}; "
                              f"use --devices cpu or all")
        chosen = [granted[int(s)] for s in wanted]
    return assign_slots(chosen, workers, gpus_per_trial=gpus_per_trial, workers_per_gpu=workers_per_gpu)


def default_cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def worker_specs(experiment_file: str, connect: str, checkpoint_root: str, devices: str, workers: int | None,
                 *, prefix: str | None = None, extra_args: list[str] | None = None,
                 log_dir: str | None = None, zygote: Zygote | None = None, gpus_per_trial: int = 1,
                 workers_per_gpu: int = 1) -> list[ChildSpec]:
    """One ``ChildSpec`` per slot (see the module doc). The spec's id is the slot,
    ``<host>-w<N>`` (``-gpu<D>`` with a device, ``-gpu<D>_<E>`` with several), which names its
    log file; each process started
    for it gets a worker id of its own (``ChildSpec.fresh_ids``: the supervisor passes it to the
    factory; called without one, the factory uses the slot id). ``extra_args``: more ``worker-process``
    arguments (the CURVE key files)."""
    slots = device_slots(devices, workers, gpus_per_trial, workers_per_gpu)
    host = prefix or socket.gethostname()
    cpu_workers = sum(1 for s in slots if s is None)
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    specs = []
    warned: list[bool] = []  # shared by the slots: say once that the zygote failed
    for index, device in enumerate(slots):
        worker_id = f"{host}-w{index}" + (f"-gpu{_gpu_name(device, slots)}" if device is not None else "")
        config = WorkerProcessConfig.parse([str(experiment_file), "--connect", connect, "--worker-id", worker_id,
                                            "--checkpoint-root", checkpoint_root, *(extra_args or [])])
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        if device is None:
            env.setdefault("OMP_NUM_THREADS", str(threads))
            env.setdefault("MKL_NUM_THREADS", str(threads))
        log_path = Path(log_dir) / f"{worker_id}.log" if log_dir else None
        specs.append(ChildSpec(worker_id, _factory(config, env, log_path, zygote, warned), Restart.TRANSIENT,
                               final_exit_codes=frozenset({EXIT_WRONG_RUN, EXIT_NO_CONTROLLER}),  # never restarted
                               fresh_ids=True))  # each process its own worker id: <slot>-<6 hex>
    return specs


def _gpu_name(device: str, slots: list[str | None]) -> str:
    """How a worker id names its GPUs: each index, or for a UUID its position among the
    slots' GPUs; several joined by ``_`` (a slot of ``--gpus-per-trial 2``: ``gpu0_1``)."""
    order = list(dict.fromkeys(d for slot in slots if slot is not None for d in slot.split(",")))
    return "_".join(d if d.isdigit() else str(order.index(d)) for d in device.split(","))


def worker_command(config: WorkerProcessConfig) -> list[str]:
    """The command line of a worker process started as a fresh interpreter."""
    return [sys.executable, "-m", "pbt_actors.cli", "worker-process", *config.argv()]


def _factory(config: WorkerProcessConfig, env: dict[str, str], log_path: Path | None, zygote: Zygote | None,
             warned: list[bool]) -> Callable[[], WorkerProcess]:
    def start(worker_id: str | None = None) -> WorkerProcess:
        """Start the slot's worker process as ``worker_id`` (None: the slot's id itself)."""
        process_config = config if worker_id is None else dataclasses.replace(config, worker_id=worker_id)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        lifeline = Lifeline.get().read_fd  # the worker exits when this process is gone (orphans)
        if zygote is not None:
            try:
                return zygote.spawn(process_config, env, log_path, lifeline_fd=lifeline)
            except ZygoteError as exc:
                if not warned:
                    warned.append(True)
                    log.warning("cannot fork workers from the zygote (%s); starting fresh processes instead", exc)
        fresh_env = {**env, LIFELINE_ENV: str(lifeline)}
        if log_path is None:
            return subprocess.Popen(worker_command(process_config), env=fresh_env, pass_fds=(lifeline,))
        with open(log_path, "ab") as sink:
            return subprocess.Popen(worker_command(process_config), env=fresh_env, pass_fds=(lifeline,), stdout=sink,
                                    stderr=subprocess.STDOUT)

    return start


__all__ = ["WorkerProcess", "assign_slots", "default_cpu_workers", "device_slots", "gpu_count", "load_experiment_file",
           "load_module", "visible_devices", "worker_command", "worker_specs"]
