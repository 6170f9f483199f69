"""``--devices`` → per-worker ``CUDA_VISIBLE_DEVICES`` (runtime/host/launch.py), honouring the
GPUs a cluster manager granted through ``CUDA_VISIBLE_DEVICES``.

``nvidia-smi`` does not exist here, so its GPU count (``launch.gpu_count``) is the one thing
replaced; everything else is the real code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pbt_actors.model.errors import ConfigError
from pbt_actors.runtime.host import launch
from pbt_actors.runtime.host.launch import device_slots, visible_devices, worker_specs
from tests.support.waiting import wait_until

TOY = Path(__file__).resolve().parents[2] / "examples" / "toy_quadratic.py"


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def have(count: int, visible: str | None = None) -> None:
        monkeypatch.setattr(launch, "gpu_count", lambda: count)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return have


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", []), ("2,3", ["2", "3"]), (" 1 , 0 ", ["1", "0"]), ("0,-1,1", ["0"]), ("-1", []),
    ("GPU-8f2a,MIG-77c1", ["GPU-8f2a", "MIG-77c1"]),
])
def test_visible_devices_reads_the_variable_as_cuda_does(value: str | None, expected: list[str] | None) -> None:
    assert visible_devices({} if value is None else {"CUDA_VISIBLE_DEVICES": value}) == expected


def test_without_the_variable_every_gpu_nvidia_smi_lists_gets_a_worker(gpus: Callable[..., None]) -> None:
    gpus(2)
    assert device_slots("all", None) == ["0", "1"]
    assert device_slots("all", 4) == ["0", "1", "0", "1"]
    assert device_slots("1", None) == ["1"]
    with pytest.raises(ConfigError, match="this machine has GPUs 0-1, not GPU 2"):
        device_slots("0,2", None)


def test_granted_gpus_are_the_ones_the_workers_get(gpus: Callable[..., None]) -> None:
    gpus(8, "2,3")  # e.g. SLURM's binding on an 8-GPU node
    assert device_slots("all", None) == ["2", "3"]
    assert device_slots("all", 3) == ["2", "3", "2"]
    assert device_slots("1", None) == ["3"]  # an index into what was granted, as CUDA numbers them
    with pytest.raises(ConfigError, match=r"CUDA_VISIBLE_DEVICES='2,3' makes 2 GPU\(s\) visible \(0-1\), not GPU 2"):
        device_slots("2", None)


def test_hidden_gpus_mean_cpu_workers_and_no_gpu_at_all_wins_over_the_variable(gpus: Callable[..., None]) -> None:
    gpus(2, "")
    assert device_slots("all", 2) == [None, None]
    with pytest.raises(ConfigError, match="makes 0 GPU"):
        device_slots("0", None)
    gpus(0, "0")  # the variable names a GPU this machine does not have: CPU, not a fake GPU worker
    assert device_slots("all", 1) == [None]
    with pytest.raises(ConfigError, match="no GPU"):
        device_slots("0", None)


def test_worker_ids_name_gpus_by_index_also_when_granted_by_uuid(gpus: Callable[..., None], tmp_path: Path) -> None:
    gpus(2, "GPU-8f2a,GPU-77c1")
    specs = worker_specs(str(TOY), "tcp://127.0.0.1:9", str(tmp_path), "all", 3, prefix="h")
    assert [spec.id for spec in specs] == ["h-w0-gpu0", "h-w1-gpu1", "h-w2-gpu0"]
    gpus(4, "2,3")
    specs = worker_specs(str(TOY), "tcp://127.0.0.1:9", str(tmp_path), "all", None, prefix="h")
    assert [spec.id for spec in specs] == ["h-w0-gpu2", "h-w1-gpu3"]


# --- slots of several GPUs, and several slots per GPU (launch.assign_slots: pure) -------------

@pytest.mark.parametrize(("gpus_", "kwargs", "expected"), [
    ([str(i) for i in range(8)], {"gpus_per_trial": 2}, ["0,1", "2,3", "4,5", "6,7"]),
    ([str(i) for i in range(8)], {"gpus_per_trial": 4}, ["0,1,2,3", "4,5,6,7"]),
    (["0", "1"], {"workers_per_gpu": 2}, ["0", "0", "1", "1"]),
    (["2", "3"], {"workers_per_gpu": 3}, ["2", "2", "2", "3", "3", "3"]),
    (["0", "1", "2", "3"], {"gpus_per_trial": 2, "workers": 3}, ["0,1", "2,3", "0,1"]),
    (["GPU-a", "GPU-b"], {"gpus_per_trial": 2}, ["GPU-a,GPU-b"]),
    (["0", "1"], {}, ["0", "1"]),
    ([], {"workers": 3}, [None, None, None]),
])
def test_slots_of_several_gpus_and_several_slots_per_gpu(gpus_: list[str], kwargs: dict[str, int],
                                                         expected: list[str | None]) -> None:
    assert launch.assign_slots(gpus_, **kwargs) == expected


@pytest.mark.parametrize(("gpus_", "kwargs", "message"), [
    (["0", "1", "2"], {"gpus_per_trial": 2}, r"3 GPU\(s\) chosen \(0,1,2\) cannot be cut into groups of 2"),
    (["0"], {"gpus_per_trial": 2}, "cannot be cut into groups of 2"),
    (["0", "1"], {"gpus_per_trial": 2, "workers_per_gpu": 2}, "cannot be combined"),
    (["0", "1"], {"workers_per_gpu": 2, "workers": 3}, "--workers or --workers-per-gpu, not both"),
    ([], {"gpus_per_trial": 2}, "--gpus-per-trial 2: no GPU to give"),
    ([], {"workers_per_gpu": 2}, "--workers-per-gpu 2: no GPU to give"),
    (["0"], {"workers_per_gpu": 0}, "at least 1"),
])
def test_impossible_slot_layouts_are_refused_clearly(gpus_: list[str], kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        launch.assign_slots(gpus_, **kwargs)


def test_the_flags_apply_to_the_gpus_this_host_was_granted(gpus: Callable[..., None]) -> None:
    gpus(8, "4,5,6,7")
    assert device_slots("all", None, gpus_per_trial=2) == ["4,5", "6,7"]
    assert device_slots("0,1", None, workers_per_gpu=2) == ["4", "4", "5", "5"]
    with pytest.raises(ConfigError, match="no GPU to give"):
        device_slots("cpu", None, gpus_per_trial=2)


@pytest.mark.timeout(60)
def test_each_worker_process_sees_its_slots_gpus(gpus: Callable[..., None], tmp_path: Path) -> None:
    """Real worker processes (fresh interpreters, as without the zygote): what each one's
    environment says, read from /proc, and the worker ids naming their GPUs."""
    gpus(4)
    specs = worker_specs(str(TOY), "tcp://127.0.0.1:9", str(tmp_path), "all", None, prefix="h", gpus_per_trial=2)
    assert [spec.id for spec in specs] == ["h-w0-gpu0_1", "h-w1-gpu2_3"]
    packed = worker_specs(str(TOY), "tcp://127.0.0.1:9", str(tmp_path), "0,1", None, prefix="h", workers_per_gpu=2)
    assert [spec.id for spec in packed] == ["h-w0-gpu0", "h-w1-gpu0", "h-w2-gpu1", "h-w3-gpu1"]
    processes = []
    try:
        for spec in [*specs, *packed]:
            processes.append(spec.factory())

        def visible(process: launch.WorkerProcess) -> str | None:
            environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
            values = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"CUDA_VISIBLE_DEVICES=")]
            return values[0] if values else None

        seen = [wait_until(lambda p=process: visible(p), 20, f"worker process {process.pid}'s environment (exit "
                           f"{process.poll()})") for process in processes]
        assert seen == ["0,1", "2,3", "0", "0", "1", "1"]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_all_refuses_the_cpu_when_the_container_was_given_gpus(gpus: Callable[..., None],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21, 7e: a pod that requested a GPU but sees none (nvidia-smi missing) fails loudly."""
    gpus(0)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-8f2a")
    with pytest.raises(ConfigError, match="NVIDIA_DRIVER_CAPABILITIES=compute,utility"):
        device_slots("all", None)
    assert device_slots("cpu", 2) == [None, None]  # said explicitly: fine
    for value in ("all", "void", "none", ""):  # a CUDA image's default, or nothing granted
        monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", value)
        assert device_slots("all", 2) == [None, None]
