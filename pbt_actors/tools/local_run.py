"""A run on this host: the controller in this process, its workers in child processes under a
host supervisor, forked from a zygote when it can be. What ``pbt-actors run`` drives (the CLI
parses, polls ``status`` to draw its progress and prints); ``controller`` and ``worker`` reuse
the parts (``start_controller``, ``start_zygote``).

The parts start and stop in an order each one's cleanup relies on: the zygote before any
thread of this process, the controller before the workers that connect to it, and on the way
out the workers (a mid-trial one hands back a resume checkpoint) before the controller.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from pbt_actors.model.experiment import Experiment

log = logging.getLogger(__name__)


def with_overrides(experiment: Experiment, *, seed: int | None = None, policy: str | None = None,
                   budget_steps: int | None = None, max_trials: int | None = None) -> Experiment:
    """The experiment with the command line's settings in place of the file's (None: the file's)."""
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if policy:
        changes["policy"] = policy
    if budget_steps is not None:
        changes["budget_steps"] = budget_steps
    if max_trials is not None:
        changes["max_trials"] = max_trials
    return replace(experiment, **changes) if changes else experiment


def start_controller(experiment: Experiment, store_dir: Path, bind: str, **options: Any) -> Any:
    """``Controller.start``, with an address that cannot be bound as a ``ConfigError``."""
    import zmq

    from pbt_actors.model.errors import ConfigError
    from pbt_actors.runtime.controller.controller_actor import Controller

    try:
        return Controller.start(experiment, store_dir, bind, **options)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {bind}: {exc.strerror} (is it an address of this machine, and the port "
                          f"free?)") from None


def file_meta(experiment_file: str, checkpoint_root: str | None = None) -> dict[str, Any]:
    """The store's record of the experiment file (path and sha256), for ``replay``'s default,
    and of the checkpoint root (normalized) when there is one, for ``status`` and ``verify``."""
    from pbt_actors.storage.trial_store import META_CHECKPOINT_ROOT, META_EXPERIMENT_FILE
    from pbt_actors.tools.experiment_source import experiment_file_record

    meta: dict[str, Any] = {META_EXPERIMENT_FILE: experiment_file_record(experiment_file)}
    if checkpoint_root is not None:
        meta[META_CHECKPOINT_ROOT] = checkpoint_root
    return meta


def start_zygote(enabled: bool = True) -> Any:
    """A ``Zygote`` to fork workers from, or None (not ``enabled``, or it refused: one warning).
    Start it before any thread of this process."""
    if not enabled:
        return None
    from pbt_actors.model.errors import ZygoteError
    from pbt_actors.runtime.host.zygote import Zygote

    try:
        return Zygote.start()
    except ZygoteError as exc:
        log.warning("%s; starting each worker as a fresh process", exc)
        return None


def close_zygote(zygote: Any) -> None:
    if zygote is not None:
        zygote.close()


class LocalRun:
    """A started local run: ``status()`` and ``wait()`` while it goes, ``stop()`` once."""

    def __init__(self, controller: Any, supervisor: Any, zygote: Any, worker_count: int) -> None:
        self.controller = controller
        self.supervisor = supervisor
        self.worker_count = worker_count
        self._zygote = zygote

    @classmethod
    def start(cls, experiment_file: str, experiment: Experiment, store_dir: Path, *, bind: str, devices: str,
              workers: int | None, checkpoint_root: str | None = None, zygote: bool = True,
              endpoint_options: dict[str, Any] | None = None, gpus_per_trial: int = 1,
              workers_per_gpu: int = 1) -> LocalRun:
        """Start the zygote, the controller on ``store_dir`` and the supervised workers; whatever
        started is stopped again if a later part fails."""
        from pbt_actors.runtime.checkpoint_payloads import check_checkpoint_root
        from pbt_actors.runtime.controller.checkpoint_collector import checkpoint_deleter
        from pbt_actors.runtime.host.host_state import host_state_path
        from pbt_actors.runtime.host.host_supervisor import HostSupervisor
        from pbt_actors.runtime.host.launch import worker_specs
        from pbt_actors.storage.checkpoint_urls import normalize_root

        root = normalize_root(checkpoint_root or store_dir / "checkpoints")
        forks = start_zygote(zygote)  # before Controller.start: the first thread of this process
        try:
            check_checkpoint_root(root)  # a bucket that is not there stops the run before any trial
            handle = start_controller(experiment, store_dir, bind, meta=file_meta(experiment_file, root),
                                      endpoint_options=endpoint_options,
                                      checkpoint_delete=checkpoint_deleter(root))  # retention deletes here
        except BaseException:
            close_zygote(forks)
            raise
        try:
            specs = worker_specs(experiment_file, handle.endpoint, root, devices, workers,
                                 log_dir=str(store_dir / "logs"), zygote=forks, gpus_per_trial=gpus_per_trial,
                                 workers_per_gpu=workers_per_gpu)
            host = socket.gethostname()
            supervisor = HostSupervisor(specs, controller=handle.endpoint, host=host,
                                        state_path=host_state_path(root, host))
        except BaseException:
            handle.stop()
            close_zygote(forks)
            raise
        return cls(handle, supervisor, forks, len(specs))

    def status(self) -> Any:
        """The controller's ``RunStatus`` (progress, best, busy workers, finished)."""
        return self.controller.status()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s``; True once every worker slot has ended."""
        return bool(self.supervisor.wait(timeout_s))

    def stop(self, *, interrupted: bool) -> list[Any]:
        """Stop workers, controller and zygote; the worker slots' last states (``ChildInfo``).

        Not ``interrupted`` (and the controller not failed: then no ``done`` comes), idle
        workers get a few seconds to hear ``done`` and exit on their own first."""
        supervisor = self.supervisor
        try:
            if not interrupted and self.controller.fatal is None:  # (StoreFull propagates from stop)
                supervisor.wait(10)
            try:
                children: list[Any] = supervisor.status()
            except Exception:  # the supervisor actor died: it logged why
                children = []
            supervisor.stop()  # SIGTERM: a worker mid-trial hands back a resume checkpoint if it can
        finally:
            try:
                self.controller.stop()
            finally:
                close_zygote(self._zygote)
        return children
