"""Experiment files and worker processes: what the CLI and the embedding API share.

Layer 5. ``load_experiment_file`` imports a user's file (``experiment = Experiment(...)`` and
``def train(ctx)``); ``worker_specs`` turns ``--devices``/``--workers`` into ``ChildSpec``s
whose factory starts one pinned worker process per slot: forked from a ``Zygote`` when one
is given (milliseconds, everything already imported), else a fresh interpreter, which is
also the fallback when the zygote cannot spawn.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.runtime.restart_rules import ChildSpec, Restart

if TYPE_CHECKING:
    from pbt_actors.runtime.zygote import Zygote, ZygoteProcess

log = logging.getLogger(__name__)

EXIT_DONE = 0
EXIT_PREEMPTED = 3
EXIT_SETUP_FAILED = 4
EXPERIMENT_MODULE_PREFIX = "pbt_experiment_"  # sys.modules name of an imported experiment file


def load_module(path: str | os.PathLike[str]) -> ModuleType:
    file = Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f"experiment file {file} does not exist")
    name = EXPERIMENT_MODULE_PREFIX + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if sys.path and sys.path[0] == str(file.parent):
            sys.path.pop(0)
    return module


def load_experiment_file(path: str | os.PathLike[str]) -> tuple[Experiment, Callable[..., Any]]:
    """The file's ``experiment`` and ``train``.

    Raises:
        ConfigError: missing or wrongly typed ``experiment``/``train``.
    """
    module = load_module(path)
    experiment = getattr(module, "experiment", None)
    train = getattr(module, "train", None)
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"{path} must define `experiment = Experiment(...)`")
    if not callable(train):
        raise ConfigError(f"{path} must define `def train(ctx): ...`")
    return experiment, train


def gpu_count() -> int:
    """GPUs visible to this host, without importing torch (nvidia-smi, else 0)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def device_slots(devices: str, workers: int | None) -> list[str | None]:
    """``--devices`` → one entry per worker: a CUDA device index, or None for CPU."""
    if devices == "cpu":
        return [None] * (workers or default_cpu_workers())
    if devices == "all":
        count = gpu_count()
        if count == 0:
            return [None] * (workers or default_cpu_workers())
        slots: list[str | None] = [str(i) for i in range(count)]
    else:
        slots = [d.strip() for d in devices.split(",") if d.strip()]
        if not slots or not all(s.isdigit() for s in slots if s):
            raise ConfigError(f"--devices must be all, cpu or a list like 0,1; got {devices!r}")
    if workers is not None:  # several workers per GPU, round robin
        slots = [slots[i % len(slots)] for i in range(workers)]
    return slots


def default_cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def worker_specs(experiment_file: str, connect: str, checkpoint_root: str, devices: str, workers: int | None,
                 *, prefix: str | None = None, extra_args: list[str] | None = None,
                 log_dir: str | None = None, zygote: Zygote | None = None) -> list[ChildSpec]:
    """One ``ChildSpec`` per slot, each starting ``python -m pbt_actors.cli worker-process``, or
    forking the same command from ``zygote`` (falling back to a fresh process if it fails)."""
    slots = device_slots(devices, workers)
    host = prefix or socket.gethostname()
    cpu_workers = sum(1 for s in slots if s is None)
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    specs = []
    fallback_logged: list[bool] = []  # shared by the slots: say once that the zygote failed
    for index, device in enumerate(slots):
        worker_id = f"{host}-w{index}" + (f"-gpu{device}" if device is not None else "")
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        if device is None:
            env.setdefault("OMP_NUM_THREADS", str(threads))
            env.setdefault("MKL_NUM_THREADS", str(threads))
        argv = [sys.executable, "-m", "pbt_actors.cli", "worker-process", str(experiment_file), "--connect", connect,
                "--worker-id", worker_id, "--checkpoint-root", checkpoint_root, *(extra_args or [])]
        log_path = Path(log_dir) / f"{worker_id}.log" if log_dir else None
        factory: Callable[[], Any] = _factory(argv, env, log_path)
        if zygote is not None:
            factory = _zygote_factory(zygote, argv[3:], env, log_path, factory, fallback_logged)
        specs.append(ChildSpec(worker_id, factory, Restart.TRANSIENT))
    return specs


def _zygote_factory(zygote: Zygote, argv: list[str], env: dict[str, str], log_path: Path | None,
                    fallback: Callable[[], subprocess.Popen[bytes]], fallback_logged: list[bool],
                    ) -> Callable[[], ZygoteProcess | subprocess.Popen[bytes]]:
    from pbt_actors.runtime.zygote import ZygoteError

    def start() -> ZygoteProcess | subprocess.Popen[bytes]:
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return zygote.spawn(argv, env, log_path)
        except ZygoteError as exc:
            if not fallback_logged:
                fallback_logged.append(True)
                log.warning("cannot fork workers from the zygote (%s); starting fresh processes instead", exc)
            return fallback()

    return start


def _factory(argv: list[str], env: dict[str, str], log_path: Path | None) -> Callable[[], subprocess.Popen[bytes]]:
    def start() -> subprocess.Popen[bytes]:
        if log_path is None:
            return subprocess.Popen(argv, env=env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as sink:
            return subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)

    return start
