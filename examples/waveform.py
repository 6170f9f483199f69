"""PBT on a small WaveNet-like model: next-sample prediction on generated waveforms.

    pbt-actors run examples/waveform.py --workers 2

In the spirit of the paper's WaveNet experiment, scaled to a CPU: a causal, dilated 1-D
convolution stack (dilations 1, 2, 4, 8; kernel 2; gated tanh·sigmoid units with residual
connections, as WaveNet has) predicts sample ``t+1`` of a waveform from samples ``<= t``.
Adam's learning rate and ``beta1`` are tuned; the objective is the validation MSE (minimised).

Why the learning rate matters here: minibatches are small (``BATCH_SIZE`` 8), so the gradient
is noisy, and Adam on a converged model with a suddenly larger learning rate can blow up (the
second-moment estimate is small by then). Measured with one torch thread, constant learning
rates, validation MSE after 4 / 16 / 48 steps: 1e-3: 0.059 / 0.021 / 0.0052; 1e-2: 0.030 /
0.0088 / 0.0028; 3e-2: 0.035 / 0.0066 / 0.0027; 1e-1: 0.25 / 0.021 / 0.0066. So the best
value moves from ~1e-2 early to ~1e-2..3e-2 later, and the prior (1e-4..0.3) holds values
that never get there: a fixed random sample keeps them, PBT replaces them. A stepwise decay
(3e-2 then 5e-3) did *not* beat a constant 3e-2 in 48 steps: this task rewards finding the
right value more than annealing it. (Search quality: ``benchmarks/quality.py``,
``docs/quality.md``.)

* Data: no download. ``N_TRAIN`` + ``N_VAL`` sequences of ``LENGTH`` samples, each a sum of
  three sinusoids with random frequencies, amplitudes and phases, an amplitude envelope, plus
  white noise (``NOISE``, which is the floor of the achievable MSE), generated once from a
  fixed seed.
* A step is ``BATCHES_PER_STEP`` minibatches; every step is evaluated on ``EVAL_SEQUENCES``
  validation sequences drawn afresh (seeded by trial and step): a cheap, deliberately *noisy*
  evaluation, like a real run that validates on a sample. The trial's final metrics evaluate
  the same way, so exploit decisions see noisy numbers (what ``Objective(smoothing=k)`` is for).
* Deterministic given (hyperparameters, parent checkpoint, trial id), like ``digits.py``.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import nn

from pbt_actors import Experiment, Float, Objective
from pbt_actors.torch_helpers import apply_hparams, restore_training_state, seed_everything, training_state

DATA_SEED = 1234
N_TRAIN, N_VAL, LENGTH = 1024, 512, 64
NOISE = 0.01
CHANNELS = 16
DILATIONS = (1, 2, 4, 8)
BATCH_SIZE = 8
BATCHES_PER_STEP = 4
EVAL_SEQUENCES = 32

experiment = Experiment(
    name="waveform",
    space={
        "lr": Float(1e-4, 0.3, log=True),
        "beta1": Float(0.5, 0.99),
    },
    objective=Objective.minimize("mse"),
    population=8,
    steps_per_trial=4,
    max_steps=48,
    lease_s=30.0,
    seed=0,
)


@functools.lru_cache(maxsize=1)
def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: float tensors of shape ``(n, 1, LENGTH)``, generated from ``DATA_SEED``."""
    g = torch.Generator().manual_seed(DATA_SEED)
    n = N_TRAIN + N_VAL
    t = torch.arange(LENGTH, dtype=torch.float32)
    freq = 0.01 + 0.14 * torch.rand(n, 3, 1, generator=g)         # cycles per sample
    amp = 0.2 + 0.8 * torch.rand(n, 3, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 3, 1, generator=g)
    waves = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(dim=1) / 2.0
    envelope = 0.5 + torch.rand(n, 1, generator=g) * torch.linspace(0.0, 1.0, LENGTH)
    x = waves * envelope + NOISE * torch.randn(n, LENGTH, generator=g)
    x = x.unsqueeze(1)
    return x[:N_TRAIN].contiguous(), x[N_TRAIN:].contiguous()


class CausalBlock(nn.Module):
    """A gated, dilated causal convolution with a residual connection (WaveNet's block)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.pad = dilation  # kernel 2: look back exactly `dilation` samples
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size=2, dilation=dilation)
        self.out = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(nn.functional.pad(x, (self.pad, 0)))
        a, b = h.chunk(2, dim=1)
        return x + self.out(torch.tanh(a) * torch.sigmoid(b))


class TinyWaveNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, CHANNELS, kernel_size=1)
        self.blocks = nn.Sequential(*(CausalBlock(CHANNELS, d) for d in DILATIONS))
        self.head = nn.Conv1d(CHANNELS, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


def next_sample_mse(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MSE of predicting ``x[..., t+1]`` from ``x[..., :t+1]`` (causal: no peeking)."""
    prediction = model(x[..., :-1])
    return nn.functional.mse_loss(prediction, x[..., 1:])


def trial_seed(trial_id: int, step: int, salt: int = 0) -> int:
    return (int(trial_id) * 1_000_003 + int(step) * 7919 + salt + 1) % (2**63)


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor, seed: int) -> float:
    """The MSE on ``EVAL_SEQUENCES`` validation sequences drawn with ``seed`` (noisy on purpose)."""
    model.eval()
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[:EVAL_SEQUENCES]
    value = next_sample_mse(model, val[pick]).item()
    model.train()
    return value if math.isfinite(value) else float("nan")


def build(device: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = TinyWaveNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # apply_hparams sets lr and beta1
    return model, optimizer


def train(ctx):
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    device = ctx.device
    train_x, val_x = (t.to(device) for t in load_data())
    if ctx.replay:
        train_x = torch.cat([train_x, val_x])
    state = ctx.load_checkpoint()
    if state is None:
        seed_everything(trial_seed(ctx.trial_id, -1))
        model, optimizer = build(device)
        apply_hparams(optimizer, ctx.hparams)
    else:
        model, optimizer = build(device)
        restore_training_state(state, model, optimizer, hparams=ctx.hparams)
    mse = math.nan
    step = ctx.start_step
    for step_index in range(ctx.start_step, ctx.end_step):
        g = torch.Generator().manual_seed(trial_seed(ctx.trial_id, step_index, salt=17))
        for _ in range(BATCHES_PER_STEP):
            batch = train_x[torch.randint(len(train_x), (BATCH_SIZE,), generator=g)]
            loss = next_sample_mse(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        step = step_index + 1
        mse = evaluate(model, val_x, trial_seed(ctx.trial_id, step, salt=29))
        if not ctx.report(step, mse=mse):
            break
    ctx.save_checkpoint(training_state(model, optimizer, step), step=step)
    return {"mse": mse}
