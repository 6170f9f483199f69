"""A plain PyTorch training script that knows nothing of pbt-actors: an MLP on scikit-learn's
bundled 8×8 digits, the same model, data and seeds as ``examples/digits.py``.

It is what a user already has: hyperparameters as flags, ``--resume DIR`` to continue from a
saved state, ``--save-dir DIR`` to save one, and its accuracy printed. To be tuned by
pbt-actors it only prints its metrics in the documented line format (``pbt: step=3
accuracy=0.95 loss=0.2``) and, when it is told to stop (SIGTERM), saves and says the step it
reached (``pbt: checkpoint step=N``). ``digits.toml`` runs it; nothing here imports pbt_actors:

    pbt-actors run examples/command/digits.toml --workers 2
    python examples/command/digits_train.py --lr 0.1 --end-step 8 --save-dir /tmp/d   # by hand

Deterministic given (flags, resumed state): initial weights and each epoch's data order come
from seeds derived from ``--trial-id`` and the epoch, so a replay redoes exactly the same work.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

BATCH_SIZE = 128
HIDDEN = 64
STATE_FILE = "state.pt"
STOP = {"requested": False}


def on_sigterm(signum, frame):
    """Finish the epoch, save, say where we are, exit: the trial resumes there."""
    STOP["requested"] = True


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--start-step", type=int, default=0, help="the epoch the resumed state is at")
    parser.add_argument("--end-step", type=int, default=4, help="train up to this epoch")
    parser.add_argument("--trial-id", type=int, default=0, help="seeds the initial weights and data order")
    parser.add_argument("--resume", default="", help="a directory saved by --save-dir (empty: from scratch)")
    parser.add_argument("--save-dir", default="", help="where to save the final state")
    parser.add_argument("--replay", default="0", help="1: train on train + validation")
    return parser.parse_args()


def load_data(replay):
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.3, random_state=0, stratify=y)
    xt, xv = (torch.tensor(a, dtype=torch.float32) for a in (x_train, x_val))
    yt, yv = (torch.tensor(a, dtype=torch.long) for a in (y_train, y_val))
    if replay:
        xt, yt = torch.cat([xt, xv]), torch.cat([yt, yv])
    return xt, yt, xv, yv


def seed(trial_id, epoch):
    return (trial_id * 1_000_003 + epoch + 1) % (2**63)


@torch.no_grad()
def evaluate(model, x, y):
    logits = model(x)
    return (logits.argmax(dim=1) == y).float().mean().item(), nn.functional.cross_entropy(logits, y).item()


def save(directory, model, optimizer, step):
    Path(directory).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
               Path(directory) / STATE_FILE)


def main():
    args = arguments()
    signal.signal(signal.SIGTERM, on_sigterm)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    xt, yt, xv, yv = load_data(args.replay == "1")
    torch.manual_seed(seed(args.trial_id, -1))
    model = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    step = args.start_step
    if args.resume:
        state = torch.load(Path(args.resume) / STATE_FILE, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    for group in optimizer.param_groups:  # this run's (perhaps perturbed) values, after the resumed state
        group.update(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    for epoch in range(step, args.end_step):
        model.train()
        order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed(args.trial_id, epoch)))
        for begin in range(0, len(xt), BATCH_SIZE):
            batch = order[begin:begin + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        step = epoch + 1
        accuracy, loss = evaluate(model, xv, yv)
        print(f"pbt: step={step} accuracy={accuracy!r} loss={loss!r}", flush=True)
        if STOP["requested"]:
            break
    if args.save_dir:
        save(args.save_dir, model, optimizer, step)
        print(f"pbt: checkpoint step={step}", flush=True)


if __name__ == "__main__":
    main()
