"""Hardening: clear errors, not tracebacks, hangs or quiet substitutions.

Each case used to misbehave (the issue's words in the test names' docstrings); now each
exits 2 with one ``pbt-actors ...`` line that names the flag or the file. Cases without
process behaviour call ``pbt_actors.cli.main.main`` in this process; the others run the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbt_actors.cli.main import main
from pbt_actors.runtime.host.launch import gpu_count
from tests.faults.harness import EXPERIMENTS, env_with, start
from tests.support.runs import REPO, TOY

BAD_INITIAL = EXPERIMENTS / "bad_initial.py"


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """``main(argv)`` must stop with exit 2 and a message; its stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage error
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("argv", "expected"), [
    (["--seed", str(2**64)], "argument --seed: must be an integer from 0 to 2**64-1"),  # was: a traceback
    (["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**64-1"),
    (["--workers", "0"], "argument --workers: must be at least 1"),  # was: quietly the default
    (["--workers", "-3"], "argument --workers: must be at least 1"),  # was: hangs at "workers busy 0/0"
    (["--bind", "tcp://127.0.0.1:99999"], "the port of 'tcp://127.0.0.1:99999' must be a number from 0 to 65535"),
    (["--bind", "garbage"], "argument --bind: must look like tcp://HOST:PORT"),
    (["--devices", "gpu"], "argument --devices: must be all, cpu or a list of GPU indexes"),
])
def test_bad_run_flags_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
                                        expected: str) -> None:
    err = usage_error(capsys, ["run", str(TOY), "--store", str(tmp_path / "s"), *argv])
    assert expected in err
    assert not (tmp_path / "s").exists()


def test_a_gpu_that_is_not_there_is_refused_not_replaced_by_the_cpu(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    missing = gpu_count() + 90
    err = usage_error(capsys, ["run", str(TOY), "--devices", str(missing), "--store", str(tmp_path / "s")])
    assert f"pbt-actors: --devices {missing}: this machine has " in err and f"not GPU {missing}" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("connect", ["garbage", "tcp://host-without-port", "tcp://127.0.0.1:0"])
def test_worker_connect_garbage_is_a_usage_error_not_a_hang(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                            connect: str) -> None:
    err = usage_error(capsys, ["worker", str(TOY), "--connect", connect, "--checkpoint-root", str(tmp_path)])
    assert "argument --connect:" in err


def test_keys_generate_into_an_impossible_folder_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, ["keys", "generate", "--dir", "/proc/nope", "--name", "x"])
    assert err.startswith("pbt-actors: cannot write keys into /proc/nope:"), err


def test_a_syntax_error_in_the_experiment_file_names_file_line_and_message(capsys: pytest.CaptureFixture[str],
                                                                          tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("from pbt_actors import Experiment\n\nexperiment = Experiment(name='x',\ndef train(ctx):\n")
    err = usage_error(capsys, ["run", str(broken), "--store", str(tmp_path / "s")])
    assert err.startswith(f"pbt-actors: {broken}:3:"), err
    assert "syntax error in the experiment file: '(' was never closed" in err
    assert "experiment = Experiment(name='x'," in err and "pbt_actors/" not in err  # no frames of ours
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["run", "controller"])
def test_a_network_bind_without_curve_is_refused_by_run_as_by_controller(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path, command: str) -> None:
    err = usage_error(capsys, [command, str(TOY), "--store", str(tmp_path / "s"), "--bind", "tcp://0.0.0.0:5555"])
    assert "refusing to bind tcp://0.0.0.0:5555 without encryption" in err and "--insecure" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(120)
def test_an_address_that_cannot_be_bound_is_a_clear_error(tmp_path: Path) -> None:
    proc = start("run", str(TOY), "--store", str(tmp_path / "s"), "--devices", "cpu", "--workers", "1",
                 "--bind", "tcp://8.8.8.8:5555", "--insecure")
    assert proc.wait(90) == 2, proc.output()
    out = proc.output()
    assert "WARNING: tcp://8.8.8.8:5555 is reachable from the network and NOT encrypted" in out  # --insecure
    assert "pbt-actors: cannot bind tcp://8.8.8.8:5555: Cannot assign requested address" in out
    assert "Traceback" not in out


@pytest.mark.timeout(240)
def test_an_invalid_initial_configuration_leaves_the_store_usable_for_the_corrected_file(tmp_path: Path) -> None:
    store = tmp_path / "s"
    argv = ["run", str(BAD_INITIAL), "--store", str(store), "--devices", "cpu", "--workers", "1", "--json"]
    bad = start(*argv, env=env_with(BAD_INITIAL=1))
    assert bad.wait(90) == 2, bad.output()
    assert "pbt-actors: experiment 'bad_initial': initial[0]: " in bad.output(), bad.output()
    assert "h0" in bad.output() and "5.0" in bad.output() and "Traceback" not in bad.output()
    good = start(*argv, env=env_with(BAD_INITIAL=0))  # was: "a different definition"
    assert good.wait(180) == 0, good.output()
    assert json.loads(good.output().strip().splitlines()[-1])["finished"] is True


@pytest.mark.timeout(240)
def test_a_finished_store_names_the_experiment_it_holds(tmp_path: Path) -> None:
    store = tmp_path / "s"
    first = start("run", str(BAD_INITIAL), "--store", str(store), "--devices", "cpu", "--workers", "1", "--quiet")
    assert first.wait(180) == 0, first.output()
    again = start("run", str(REPO / "examples" / "toy_quadratic.py"), "--store", str(store), "--devices", "cpu",
                  "--quiet")
    assert again.wait(120) == 0, again.output()
    assert f"the store {store} holds a finished run of 'bad_initial' (not of 'toy_quadratic'" in again.output()
