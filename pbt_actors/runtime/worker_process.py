"""The body of a worker process: one ``WorkerClient`` running trials until the experiment ends.

Layer 4. ``run(config)`` is all a worker process does, however it started: forked by the
zygote (``zygote.py`` calls ``run`` directly), or a fresh interpreter running the CLI's
hidden command ``python -m pbt_actors.cli worker-process EXP --connect ... --worker-id ...
--checkpoint-root ...``, which hands its arguments to ``main`` unparsed. ``config.argv()``
writes those arguments and ``WorkerProcessConfig.parse`` reads them back, so ``launch``
builds the same typed config for both ways.

The process leaves with ``EXIT_DONE`` (0) when the controller said ``done``, or with
``EXIT_PREEMPTED`` (3) after a SIGTERM (graceful preemption: the running trial hands back a
resume checkpoint if it can); a restart rule treats anything else as a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.runtime.experiment_file import load_experiment_file
from pbt_actors.runtime.worker import WorkerClient

EXIT_DONE = 0
EXIT_PREEMPTED = 3


@dataclass(frozen=True)
class WorkerProcessConfig:
    """What one worker process needs (every path as the process should open it)."""

    experiment: str
    connect: str
    worker_id: str
    checkpoint_root: str
    curve_server_key: str | None = None  # the controller's public key file (CURVE)
    curve_secret: str | None = None  # this host's secret key file (CURVE)

    def argv(self) -> list[str]:
        """The ``worker-process`` arguments that ``parse`` reads back into this config."""
        args = [self.experiment, "--connect", self.connect, "--worker-id", self.worker_id,
                "--checkpoint-root", self.checkpoint_root]
        if self.curve_server_key is not None:
            args += ["--curve-server-key", self.curve_server_key]
        if self.curve_secret is not None:
            args += ["--curve-secret", self.curve_secret]
        return args

    @classmethod
    def parse(cls, argv: Sequence[str]) -> WorkerProcessConfig:
        """Raises ConfigError on arguments ``argv()`` would not write."""
        args = _parser().parse_args([str(a) for a in argv])
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ConfigError(f"worker-process: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pbt-actors worker-process",
                     description="One worker process (started by `pbt-actors run|worker`, not by hand).")
    parser.add_argument("experiment")
    parser.add_argument("--connect", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--checkpoint-root", required=True)
    parser.add_argument("--curve-server-key", default=None)
    parser.add_argument("--curve-secret", default=None)
    return parser


def main(argv: Sequence[str]) -> int:
    """``pbt-actors worker-process ARGS``: parse, then ``run``."""
    return run(WorkerProcessConfig.parse(argv))


def run(config: WorkerProcessConfig) -> int:
    """Import the experiment file, run trials until ``done`` or SIGTERM; the exit code.

    Raises:
        ConfigError: a broken experiment file or half a CURVE key pair.
    """
    _, train = load_experiment_file(config.experiment)
    client = WorkerClient(config.connect, train, config.checkpoint_root, worker_id=config.worker_id,
                          endpoint_options=_endpoint_options(config))
    client.install_sigterm_handler()
    try:
        client.hello()
        client.run()
    finally:
        client.close()
    return EXIT_PREEMPTED if client.preempt.is_set() else EXIT_DONE


def _endpoint_options(config: WorkerProcessConfig) -> dict[str, Any]:
    if config.curve_server_key is None and config.curve_secret is None:
        return {}
    if config.curve_server_key is None or config.curve_secret is None:
        raise ConfigError("CURVE needs both --curve-server-key (the controller's public key) and --curve-secret")
    from pbt_actors.transport.security import load_keypair, load_public_key

    return {"curve_server_key": load_public_key(config.curve_server_key),
            "curve_keypair": load_keypair(config.curve_secret)}


__all__ = ["EXIT_DONE", "EXIT_PREEMPTED", "WorkerProcessConfig", "main", "run"]
