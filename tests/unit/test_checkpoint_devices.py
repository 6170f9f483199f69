"""Checkpoints across devices: a parent saved on ``cuda:0`` loads in a child on another device.

This host has no GPU, so a real CUDA checkpoint is made the way torch would write it on one:
a checkpoint saved here has its storages' location tags (``"cpu"`` in ``data.pkl``) rewritten
to ``"cuda:0"``/``"cuda:1"``. A plain ``torch.load(weights_only=True)`` refuses such a file
on this CPU-only torch (the proof it is tagged for CUDA); the project's load path must map it
to the CPU, and ``restore_training_state``/``to_device`` must place it on the worker's device.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pbt_actors.model.records import CheckpointRef  # noqa: E402
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint, save_checkpoint  # noqa: E402
from pbt_actors.torch_helpers import restore_training_state, to_device, training_state  # noqa: E402

CPU_TAG = b"X\x03\x00\x00\x00cpu"  # the BINUNICODE "cpu" of a storage's location in data.pkl


def tagged_for(data: bytes, device: str) -> bytes:
    """A ``torch.save`` archive whose storages say they were on ``device`` (see the module doc)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("/data.pkl"):
                assert CPU_TAG in content
                encoded = device.encode()
                content = content.replace(CPU_TAG, b"X" + len(encoded).to_bytes(4, "little") + encoded)
            target.writestr(info.filename, content)
    return out.getvalue()


def model_and_optimizer(seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def trained_state() -> tuple[Any, Any, dict[str, Any]]:
    model, optimizer = model_and_optimizer(0)
    loss = model(torch.randn(5, 1, 8, 8)).square().mean()
    loss.backward()
    optimizer.step()  # momentum buffers exist: optimizer state to map as well
    return model, optimizer, training_state(model, optimizer, 7, extra={"ema": [torch.ones(2), (torch.zeros(1),)]})


def write_as_if_saved_on(root: Path, device: str) -> tuple[CheckpointRef, dict[str, Any]]:
    """A verified checkpoint file tagged for ``device``, and the state it holds."""
    _, _, state = trained_state()
    ref = save_checkpoint(root, "exp/trial-000001/a0-s7.ckpt", state, 7)
    data = tagged_for((root / ref.uri).read_bytes(), device)
    path = root / f"exp/trial-000001/on-{device.replace(':', '')}.ckpt"
    path.write_bytes(data)
    return CheckpointRef(str(path.relative_to(root)), len(data), hashlib.sha256(data).hexdigest(), 7), state


@pytest.mark.timeout(30)
@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu_with_weights_only(tmp_path: Path, device: str) -> None:
    ref, state = write_as_if_saved_on(tmp_path, device)
    raw = (tmp_path / ref.uri).read_bytes()
    if not torch.cuda.is_available():  # the file really is tagged for CUDA: torch's default refuses it here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(io.BytesIO(raw), weights_only=True)
    loaded = load_checkpoint(tmp_path, ref)
    for key, tensor in state["model"].items():
        assert loaded["model"][key].device.type == "cpu"
        assert torch.equal(loaded["model"][key], tensor), key
    momentum = loaded["optimizer"]["state"][0]["momentum_buffer"]
    assert momentum.device.type == "cpu" and torch.equal(momentum, state["optimizer"]["state"][0]["momentum_buffer"])


@pytest.mark.timeout(30)
def test_a_gpu_checkpoint_restores_into_a_model_on_the_workers_device(tmp_path: Path) -> None:
    ref, _ = write_as_if_saved_on(tmp_path, "cuda:0")
    parent, parent_optimizer, _ = trained_state()
    child, child_optimizer = model_and_optimizer(1)  # different initial weights
    assert not all(torch.equal(a, b) for a, b in zip(child.parameters(), parent.parameters(), strict=True))
    step = restore_training_state(load_checkpoint(tmp_path, ref), child, child_optimizer, hparams={"lr": 0.05})
    assert step == 7
    for mine, theirs in zip(child.parameters(), parent.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert child_optimizer.param_groups[0]["lr"] == 0.05  # the child's value wins
    buffers = [child_optimizer.state[p]["momentum_buffer"] for p in child.parameters()]
    expected = [parent_optimizer.state[p]["momentum_buffer"] for p in parent.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(buffers, expected, strict=True))


@pytest.mark.timeout(30)
def test_to_device_moves_every_tensor_of_a_nested_state_and_keeps_the_rest(tmp_path: Path) -> None:
    ref, _ = write_as_if_saved_on(tmp_path, "cuda:0")
    loaded = load_checkpoint(tmp_path, ref)
    moved = to_device(loaded, "meta")  # a second device that exists on every host
    assert moved["step"] == 7 and moved["format"] == loaded["format"]
    assert all(t.device.type == "meta" for t in moved["model"].values())
    ema = moved["extra"]["ema"]
    assert isinstance(ema, list) and isinstance(ema[1], tuple)
    assert ema[0].device.type == "meta" and ema[1][0].device.type == "meta"
    same = to_device(loaded, "cpu")
    assert all(torch.equal(same["model"][k], loaded["model"][k]) for k in loaded["model"])
