"""torch helpers for ``train(ctx)``: apply hyperparameters to an optimizer, and save/restore the
whole training state (model, optimizer, every RNG) in a form ``torch.load(weights_only=True)``
accepts.

Layer 4 helper, imported only by experiment files that use torch (it imports torch at the
top; nothing else in the package imports this module).

The PBT ordering rule
---------------------
A child warm-starts from its winner's checkpoint but trains with *new* (perturbed)
hyperparameters. ``optimizer.load_state_dict`` restores the param groups' saved values too
(``lr``, ``momentum``, ...), so hyperparameters must be applied **after** the optimizer state
is loaded; applied before, the restored state silently overwrites the perturbation and every
child trains with its parent's values (the classic PBT bug, e.g. Ray issue #62173).
``restore_training_state(..., hparams=ctx.hparams)`` does both in the right order::

    model, opt = build()                      # opt built with any placeholder lr
    state = ctx.load_checkpoint()
    if state is None:
        apply_hparams(opt, ctx.hparams)
    else:
        restore_training_state(state, model, opt, hparams=ctx.hparams)
    ...
    ctx.save_checkpoint(training_state(model, opt, ctx.end_step))

An LR scheduler keeps its own ``base_lrs``: create it after applying hyperparameters (or set
its ``base_lrs`` too), and restore its state before, not after, ``apply_hparams``.

What a checkpoint holds (all weights_only-safe)
-----------------------------------------------
``{"format", "step", "model", "optimizer", "rng": {"torch", "cuda", "python", "numpy"},
"extra"}``: tensors, lists, ints, floats, strings, bools and None only. The python and numpy
RNG states are rewritten as plain lists and ints (numpy arrays and numpy scalar types would
make ``weights_only=True`` refuse the file). ``extra`` is the caller's and must obey the same
rule.

Devices
-------
A checkpoint saved on ``cuda:0`` must load in a child on another GPU or on a CPU-only host.
``ctx.load_checkpoint`` therefore always loads onto the CPU (``map_location="cpu"``,
``weights_only=True``; ``runtime/checkpoint_payloads.py``); ``restore_training_state`` then copies
the weights into a model already on ``ctx.device`` (``load_state_dict`` copies into the
existing parameters; the optimizer casts its state to each parameter's device). Tensors a
train function keeps from the state outside those (``extra``) go through ``to_device``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

STATE_FORMAT = "pbt_actors.torch/1"

#: hyperparameter name -> param-group key. ``beta1``/``beta2`` are the components of Adam's
#: ``betas`` tuple; every other target is a param-group key as torch names it.
DEFAULT_MAPPING: dict[str, str] = {
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "beta1": "beta1",
    "beta2": "beta2",
}
_BETA_INDEX = {"beta1": 0, "beta2": 1}


def apply_hparams(optimizer: torch.optim.Optimizer, hparams: Mapping[str, Any],
                  mapping: Mapping[str, str] | None = None) -> dict[str, float]:
    """Set every param group's hyperparameters from ``hparams``; returns what was set.

    Call it **after** ``optimizer.load_state_dict`` (see the module doc: a restored state
    overwrites values applied before it).

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        hparams: the trial's hyperparameters (``ctx.hparams``); names not in the mapping are
            ignored (they are the model's or the data's business).
        mapping: extra or overriding ``{hparam name: group key}`` entries on top of
            ``DEFAULT_MAPPING``, e.g. ``{"learning_rate": "lr"}``; a target ``beta1``/``beta2``
            sets that component of ``betas``.

    Raises:
        KeyError: a hyperparameter named in ``mapping`` (explicitly) targets a key the
            optimizer's groups do not have. Default entries the optimizer lacks (``momentum``
            on Adam, ``beta1`` on SGD) are skipped.
    """
    explicit = dict(mapping or {})
    table = {**DEFAULT_MAPPING, **explicit}
    applied: dict[str, float] = {}
    for name, key in table.items():
        if name not in hparams:
            continue
        value = float(hparams[name])
        group_key = "betas" if key in _BETA_INDEX else key
        if any(group_key not in group for group in optimizer.param_groups):
            if name in explicit:
                raise KeyError(f"hyperparameter {name!r} maps to {group_key!r}, which "
                               f"{type(optimizer).__name__}'s param groups do not have")
            continue
        for group in optimizer.param_groups:
            if key in _BETA_INDEX:
                betas = list(group["betas"])
                betas[_BETA_INDEX[key]] = value
                group["betas"] = (float(betas[0]), float(betas[1]))
            elif isinstance(group[key], torch.Tensor):  # capturable/fused optimizers keep lr as a tensor
                group[key].fill_(value)
            else:
                group[key] = value
        applied[key] = value
    return applied


def _python_rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": int(version), "internal": [int(x) for x in internal],
            "gauss_next": None if gauss_next is None else float(gauss_next)}


def _set_python_rng_state(state: Mapping[str, Any]) -> None:
    gauss = state["gauss_next"]
    random.setstate((int(state["version"]), tuple(int(x) for x in state["internal"]),
                     None if gauss is None else float(gauss)))


def _numpy_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"kind": str(kind), "keys": [int(x) for x in np.asarray(keys).tolist()], "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: Mapping[str, Any]) -> None:
    keys = np.asarray(state["keys"], dtype=np.uint32)
    np.random.set_state((str(state["kind"]), keys, int(state["pos"]), int(state["has_gauss"]),
                         float(state["cached_gaussian"])))


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), python ``random`` and numpy's global RNG states."""
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available():
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": _python_rng_state(),
            "numpy": _numpy_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` captured. CUDA states are restored only when this process
    sees the same number of devices (a checkpoint may move from a GPU to a CPU host)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    _set_python_rng_state(state["python"])
    _set_numpy_rng_state(state["numpy"])


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                   extra: Any = None) -> dict[str, Any]:
    """Everything needed to continue training bit for bit, ready for ``ctx.save_checkpoint``.

    ``extra`` (e.g. a scheduler's ``state_dict()`` or running statistics) must itself be
    weights_only-safe: tensors, lists, dicts, numbers, strings, None.
    """
    return {
        "format": STATE_FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
        "extra": extra,
    }


def restore_training_state(state: Mapping[str, Any], model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer | None, hparams: Mapping[str, Any] | None = None,
                           mapping: Mapping[str, str] | None = None, *, restore_rng: bool = True) -> int:
    """Load model, optimizer and RNG states, **then** apply ``hparams``; returns the saved step.

    Args:
        state: what ``training_state`` produced (e.g. ``ctx.load_checkpoint()``).
        hparams: the child's hyperparameters; applied last so that they win over the values
            stored in the optimizer state (see the module doc).
        restore_rng: False keeps this process's RNG streams (e.g. when the trial seeds its own).

    Raises:
        ValueError: ``state`` is not a training state of this format.
    """
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"not a {STATE_FORMAT} training state (format: {found!r})")
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])
    if optimizer is not None and hparams is not None:
        apply_hparams(optimizer, hparams, mapping)  # after load_state_dict: the new values must win
    return int(state["step"])


def to_device(value: Any, device: str | torch.device) -> Any:
    """``value`` with every tensor in it (through dicts, lists and tuples) moved to ``device``:
    for tensors of a loaded state that no ``load_state_dict`` places (``extra``), since
    ``ctx.load_checkpoint`` returns them on the CPU whatever device saved them."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [to_device(item, device) for item in value]
    if isinstance(value, tuple):
        return tuple(to_device(item, device) for item in value)
    return value


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA) from one integer."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
