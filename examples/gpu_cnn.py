"""PBT on a small CNN over synthetic images, on the worker's GPU (``ctx.device``).

    pbt-actors run examples/gpu_cnn.py --devices all            # one worker per GPU
    pbt-actors run examples/gpu_cnn.py --devices 0 --workers 2  # two workers sharing GPU 0

The GPU example of the design card's promise (one worker process per GPU slot), and the
workload of ``benchmarks/gpu_check.py``. Adam's learning rate and weight decay and the
dropout rate are tuned; the objective is validation accuracy. Runs on the CPU too (smaller
steps), so it is tested on machines without a GPU.

* Data: synthetic 3×32×32 images in ``CLASSES`` classes: each class is a fixed random
  smooth pattern, each image its class's pattern, randomly scaled and noised. Made
  from a fixed seed on the worker's device the first time a trial needs it (no download, no
  disk, no host-to-device copies per batch), so every worker sees the same data.
* CUDA only inside ``train``: this file touches no CUDA at import, which keeps the worker
  zygote usable (a process that touched CUDA cannot fork children that use it; see
  ``pbt_actors/runtime/host/zygote.py``). ``ctx.device`` is ``cuda:0`` in a worker pinned to a GPU
  (``CUDA_VISIBLE_DEVICES``), else ``cpu``.
* A step is ``BATCHES_PER_STEP`` minibatches (fewer on the CPU); every step is evaluated
  and reported. Checkpoints go through ``torch_helpers`` (``weights_only=True``-safe) and load
  on any device: a parent saved on one GPU warm-starts a child on another GPU or a CPU.
* Deterministic given (hyperparameters, parent checkpoint, trial id) on a given device:
  initial weights and batch order come from seeds derived from the trial id and the step
  (cuDNN's own kernels may still differ in the last bits between runs).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from pbt_actors import Experiment, Float
from pbt_actors.torch_helpers import apply_hparams, restore_training_state, seed_everything, training_state

CLASSES = 10
IMAGE = 32
TRAIN_IMAGES = 8192
VAL_IMAGES = 2048
BATCH_SIZE = 256
BATCHES_PER_STEP = {"cuda": 40, "cpu": 2}
VAL_BATCHES = {"cuda": VAL_IMAGES // BATCH_SIZE, "cpu": 1}
DATA_SEED = 1234
NOISE = 0.8

experiment = Experiment(
    name="gpu_cnn",
    space={
        "lr": Float(1e-4, 3e-2, log=True),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "dropout": Float(0.0, 0.6),
    },
    objective="accuracy",
    population=8,
    steps_per_trial=2,
    max_steps=12,
    opponent_window=2,
    lease_s=60.0,
    seed=0,
)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: enough work per batch to keep a GPU busy in bursts,
    small enough that a trial takes about a second on one."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten())
        self.dropout = nn.Dropout(0.0)
        self.head = nn.Linear(128, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@functools.lru_cache(maxsize=2)
def load_data(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` on ``device``, the same on every worker."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    coarse = torch.randn(CLASSES, 3, 8, 8, generator=generator)
    patterns = nn.functional.interpolate(coarse, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, CLASSES, (count,), generator=generator)
        scale = 0.5 + torch.rand(count, 1, 1, 1, generator=generator)
        images = patterns[labels] * scale
        images = images + NOISE * torch.randn(images.shape, generator=generator)
        return images.to(device), labels.to(device)

    x_train, y_train = make(TRAIN_IMAGES)
    x_val, y_val = make(VAL_IMAGES)
    return x_train, y_train, x_val, y_val


def trial_seed(trial_id: int, step: int) -> int:
    """The seed of a trial's initial weights (``step=-1``) and of each step's batch order."""
    return (int(trial_id) * 1_000_003 + int(step) + 1) % (2**63)


def build(device: str, dropout: float) -> tuple[SmallCNN, torch.optim.Optimizer]:
    model = SmallCNN().to(device)
    model.dropout.p = float(dropout)
    # lr and weight_decay are placeholders: apply_hparams sets the trial's values.
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.0)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: int) -> tuple[float, float]:
    model.eval()
    correct, loss, seen = 0.0, 0.0, 0
    for begin in range(0, min(len(x), batches * BATCH_SIZE), BATCH_SIZE):
        logits = model(x[begin:begin + BATCH_SIZE])
        target = y[begin:begin + BATCH_SIZE]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
        seen += len(target)
    return correct / seen, loss / seen


def train(ctx):
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    device = ctx.device
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once per process
    xt, yt, xv, yv = load_data(device)
    state = ctx.load_checkpoint()
    if state is None:
        seed_everything(trial_seed(ctx.trial_id, -1))
    model, optimizer = build(device, ctx.hparams["dropout"])
    if state is None:
        apply_hparams(optimizer, ctx.hparams)
    else:  # weights and optimizer state (loaded on the CPU) go to `device`; then this trial's values
        restore_training_state(state, model, optimizer, hparams=ctx.hparams)

    accuracy, loss = evaluate(model, xv, yv, VAL_BATCHES[kind])
    step = ctx.start_step
    for step_index in range(ctx.start_step, ctx.end_step):
        model.train()
        order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(trial_seed(ctx.trial_id, step_index)))
        order = order[:BATCHES_PER_STEP[kind] * BATCH_SIZE].to(device)
        for begin in range(0, len(order), BATCH_SIZE):
            batch = order[begin:begin + BATCH_SIZE]
            batch_loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
        step = step_index + 1
        accuracy, loss = evaluate(model, xv, yv, VAL_BATCHES[kind])  # .item(): waits for the GPU
        if not ctx.report(step, accuracy=accuracy, loss=loss):
            break  # stopped by the controller, or preempted: save what we have
    ctx.save_checkpoint(training_state(model, optimizer, step), step=step)
    return {"accuracy": accuracy, "loss": loss}
