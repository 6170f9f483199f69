"""Schema cost: our record and message encode/decode against raw msgpack of the same plain data.

Why: the store decodes every trial record it reads and the controller decodes every frame it
receives, so the schema layer (validation and conversion around ``msgpack``) is on the hot
path. Each case is timed twice in the same run: through our functions, and as a raw
``msgpack.packb``/``unpackb`` of the plain data those functions produce. The ratio
(ours / raw) is what the schema layer costs; it compares across machines and trees.

* ``trial_record.encode``/``.decode``: a completed trial record as the store writes and reads it
  (``wire.pack(trial.to_dict())`` / ``Trial.from_dict(wire.unpack(...))``);
* ``<type>.encode``/``<type>.decode``: a protocol frame through ``transport.codec``.

``--tree PATH`` measures another checkout (e.g. the tree before a change) with whatever API it
has (the message types lived in ``transport/messages.py`` before ``model/protocol.py``), so
before/after ratios come from one command each:

    python benchmarks/codec_speed.py [--tree /path/to/other/checkout] [--number 20000] [--json]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load(tree: Path) -> dict[str, Any]:
    """Import the schema modules of ``tree`` (first on ``sys.path``)."""
    sys.path.insert(0, str(tree))
    records = importlib.import_module("pbt_actors.model.records")
    wire = importlib.import_module("pbt_actors.model.wire")
    codec = importlib.import_module("pbt_actors.transport.codec")
    try:
        messages = importlib.import_module("pbt_actors.model.protocol")
    except ImportError:
        messages = importlib.import_module("pbt_actors.transport.messages")
    return {"records": records, "wire": wire, "codec": codec, "messages": messages}


def examples(mods: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A completed trial of a long run, and the frames a controller handles most."""
    r, m = mods["records"], mods["messages"]
    ckpt = r.CheckpointRef("exp/trial-000123/a1-s400.ckpt", 1 << 20, "ab" * 32, 400)
    measurements = tuple(r.Measurement(300 + 5 * i, {"loss": 1.0 / (i + 1), "acc": 0.5 + i / 100})
                         for i in range(20))
    hparams = {"lr": 0.01, "momentum": 0.9, "batch": 64, "opt": "adam", "nesterov": True, "wd": 1e-4}
    trial = r.Trial(
        id=123, generation=4, hparams=hparams, start_step=300, end_step=400,
        origin=r.Origin(r.OriginKind.TOURNAMENT, initiator=101, opponent=97, winner=97), parent_id=97,
        status=r.TrialStatus.COMPLETED, attempt=1, measurements=measurements, final={"acc": 0.71, "loss": 0.05},
        checkpoint=ckpt, completed_attempt=1, initiated=True, created_at=1000.5, started_at=1001.0,
        ended_at=1060.25, worker="h1-w0-a1b2c3", history=(r.AttemptRecord(1, "h1-w0-a1b2c3", 1001.0, 1060.25),),
    )
    frames = {
        "request_trial": m.RequestTrial("h1-w0-a1b2c3", "run-7"),
        "heartbeat": m.Heartbeat("h1-w0-a1b2c3", 123, 1, 350, {"loss": 0.2, "acc": 0.6}, "run-7"),
        "report": m.Report("h1-w0-a1b2c3", 123, 1, {"acc": 0.71, "loss": 0.05}, measurements, ckpt, True, "run-7"),
        "trial": m.TrialAssignment(
            124,
            1,
            generation=5,
            hparams=hparams,
            start_step=400,
            end_step=500,
            parent_id=123,
            parent_checkpoint=ckpt,
            heartbeat_s=20.0,
            experiment="toy",
        ),
        "ack": m.Ack(),
    }
    return trial, frames


def best_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def measure(mods: dict[str, Any], number: int, repeat: int) -> list[dict[str, Any]]:
    import msgpack

    wire, codec, records = mods["wire"], mods["codec"], mods["records"]
    trial, frames = examples(mods)
    rows: list[dict[str, Any]] = []

    def row(name: str, ours: Callable[[], Any], raw: Callable[[], Any]) -> None:
        ours_us, raw_us = best_us(ours, number, repeat), best_us(raw, number, repeat)
        rows.append({"case": name, "ours_us": round(ours_us, 3), "raw_msgpack_us": round(raw_us, 3),
                     "ratio": round(ours_us / raw_us, 2)})

    plain = trial.to_dict()
    data = wire.pack(plain)
    assert records.Trial.from_dict(wire.unpack(data)).id == trial.id
    row("trial_record.encode", lambda: wire.pack(trial.to_dict()), lambda: msgpack.packb(plain, use_bin_type=True))
    row("trial_record.decode", lambda: records.Trial.from_dict(wire.unpack(data)),
        lambda: msgpack.unpackb(data, raw=False))
    for name, message in frames.items():
        frame = codec.encode(message, 7)
        envelope = msgpack.unpackb(frame, raw=False)
        assert codec.decode(frame).message == message
        row(f"{name}.encode", functools.partial(codec.encode, message, 7),
            functools.partial(msgpack.packb, envelope, use_bin_type=True))
        row(f"{name}.decode", functools.partial(codec.decode, frame),
            functools.partial(msgpack.unpackb, frame, raw=False))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout to measure (default: this one)")
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per case (the best is kept)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = measure(load(args.tree.resolve()), args.number, args.repeat)
    if args.json:
        print(json.dumps({"tree": str(args.tree), "python": sys.version.split()[0], "rows": rows}, indent=1))
        return 0
    print(f"tree: {args.tree}")
    print(f"{'case':<24}{'ours µs':>10}{'msgpack µs':>12}{'ratio':>8}")
    for r in rows:
        print(f"{r['case']:<24}{r['ours_us']:>10.2f}{r['raw_msgpack_us']:>12.2f}{r['ratio']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
