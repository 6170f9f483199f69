"""torch helpers: weights_only-safe training state, bit-identical continuation, hyperparameters
applied after the optimizer state (the PBT ordering bug), RNG restoration."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pbt_actors.runtime.checkpoint_payloads import load_checkpoint, save_checkpoint  # noqa: E402
from pbt_actors.torch_helpers import (  # noqa: E402
    STATE_FORMAT,
    apply_hparams,
    restore_training_state,
    rng_state,
    seed_everything,
    set_rng_state,
    training_state,
)

X = torch.linspace(-1, 1, 64 * 8).reshape(64, 8)
Y = (X.sum(dim=1) > 0).long()


def make(kind: str = "sgd", seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    if kind == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.999), weight_decay=1e-4)
    return model, opt


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    """Uses every RNG a real loop might: torch (data order, dropout), python and numpy (noise)."""
    model.train()
    for _ in range(n):
        batch = torch.randperm(len(X))[:16]
        noise = float(np.random.normal(0, 0.01)) + random.uniform(-0.01, 0.01)
        loss = torch.nn.functional.cross_entropy(model(X[batch] + noise), Y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def roundtrip(tmp_path: Path, state: dict) -> dict:
    ref = save_checkpoint(tmp_path, "exp/trial-000001/a1-s5.ckpt", state, 5)
    assert not (tmp_path / ref.uri).read_bytes().startswith(b"PBTMP1"), "tensors must take the torch path"
    return load_checkpoint(tmp_path, ref)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_state_loads_with_weights_only(tmp_path: Path, kind: str) -> None:
    seed_everything(1)
    model, opt = make(kind)
    train_steps(model, opt, 3)
    state = training_state(model, opt, 3, extra={"note": "hi", "history": [0.5, 0.25], "t": torch.ones(2)})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    direct = torch.load(buffer, weights_only=True)  # raises on numpy arrays/dtypes or other objects
    assert direct["format"] == STATE_FORMAT and direct["step"] == 3
    loaded = roundtrip(tmp_path, state)
    assert loaded["step"] == 3 and loaded["extra"]["note"] == "hi"
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    numpy_state = loaded["rng"]["numpy"]
    assert numpy_state["kind"] == "MT19937" and len(numpy_state["keys"]) == 624
    assert all(type(k) is int for k in numpy_state["keys"])
    assert len(loaded["rng"]["python"]["internal"]) == 625


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_restored_state_continues_bit_identically(tmp_path: Path, kind: str) -> None:
    seed_everything(7)
    model, opt = make(kind)
    train_steps(model, opt, 5)
    loaded = roundtrip(tmp_path, training_state(model, opt, 5))
    train_steps(model, opt, 5)
    expected = params(model)

    seed_everything(12345)  # scramble every RNG and start from other weights
    fresh, fresh_opt = make(kind, seed=99)
    step = restore_training_state(loaded, fresh, fresh_opt)
    assert step == 5
    train_steps(fresh, fresh_opt, 5)
    for a, b in zip(expected, params(fresh), strict=True):
        assert torch.equal(a, b)


@pytest.mark.timeout(60)
def test_without_rng_restore_the_continuation_differs(tmp_path: Path) -> None:
    """The control for the test above: it is the RNG state that makes the continuation equal."""
    seed_everything(7)
    model, opt = make()
    train_steps(model, opt, 5)
    loaded = roundtrip(tmp_path, training_state(model, opt, 5))
    train_steps(model, opt, 5)
    expected = params(model)
    seed_everything(12345)
    fresh, fresh_opt = make(seed=99)
    restore_training_state(loaded, fresh, fresh_opt, restore_rng=False)
    train_steps(fresh, fresh_opt, 5)
    assert not all(torch.equal(a, b) for a, b in zip(expected, params(fresh), strict=True))


@pytest.mark.timeout(60)
def test_hparams_applied_after_restore_win_over_saved_optimizer(tmp_path: Path) -> None:
    model, opt = make("sgd")
    train_steps(model, opt, 2)
    loaded = roundtrip(tmp_path, training_state(model, opt, 2))
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 0.1

    child, child_opt = make("sgd")
    restore_training_state(loaded, child, child_opt, hparams={"lr": 0.003, "momentum": 0.5, "weight_decay": 0.0,
                                                              "batch_size": 32})
    for group in child_opt.param_groups:
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.003, 0.5, 0.0)
    assert "momentum_buffer" in next(iter(child_opt.state.values()))  # the state itself was restored

    # The bug this ordering prevents: applying first, then loading, keeps the parent's lr.
    _, buggy_opt = make("sgd")
    apply_hparams(buggy_opt, {"lr": 0.003})
    buggy_opt.load_state_dict(loaded["optimizer"])
    assert buggy_opt.param_groups[0]["lr"] == 0.1


@pytest.mark.timeout(60)
def test_apply_hparams_adam_betas_and_mapping() -> None:
    _, opt = make("adam")
    applied = apply_hparams(opt, {"learning_rate": 0.02, "beta1": 0.8, "momentum": 0.9},
                            mapping={"learning_rate": "lr"})
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["betas"] == (0.8, 0.999)
    assert "momentum" not in group and "momentum" not in applied  # a default Adam lacks: skipped
    with pytest.raises(KeyError, match="dampening_x"):
        apply_hparams(opt, {"d": 0.1}, mapping={"d": "dampening_x"})


@pytest.mark.timeout(60)
def test_apply_hparams_on_tensor_lr() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    apply_hparams(opt, {"lr": 0.5})
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert float(opt.param_groups[0]["lr"]) == 0.5


@pytest.mark.timeout(60)
def test_rng_states_restored(tmp_path: Path) -> None:
    seed_everything(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and one in numpy's
    loaded = roundtrip(tmp_path, {"rng": rng_state(), "w": torch.zeros(1)})["rng"]

    def draw() -> tuple:
        return (torch.rand(3).tolist(), random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
                np.random.standard_normal())

    first = draw()
    seed_everything(4)
    assert draw() != first
    set_rng_state(loaded)
    assert draw() == first


@pytest.mark.timeout(60)
def test_seed_everything_is_reproducible() -> None:
    sample: Callable[[], tuple] = lambda: (torch.rand(2).tolist(), random.random(), np.random.rand())  # noqa: E731
    seed_everything(11)
    a = sample()
    seed_everything(11)
    assert sample() == a


@pytest.mark.timeout(60)
def test_restore_rejects_other_payloads() -> None:
    model, opt = make()
    with pytest.raises(ValueError, match="training state"):
        restore_training_state({"theta": [1.0]}, model, opt)
