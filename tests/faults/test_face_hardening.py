"""Issue 20, the faces' data safety and clean errors, driven from the CLI.

* item 9: no face (``export``, ``report``, ``export --format tensorboard``) writes inside a
  store's folder or over its files; the refusal is one line and the store stays intact.
* item 13: a ``--budget-steps`` smaller than one trial is refused, not a run of nothing.
* item 15: one-line errors instead of tracebacks for an impossible port, an unusable cache
  folder with a URL checkpoint root, a store path the file system refuses and an ``--out``
  that cannot be created.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.faults.harness import start
from tests.support.runs import TOY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished toy run's store (read by every test; none may change it)."""
    path = tmp_path_factory.mktemp("faces") / "store"
    proc = start("run", str(TOY), "--store", str(path), "--devices", "cpu", "--workers", "1", "--quiet")
    assert proc.wait(90) == 0, proc.output()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(*argv: str, env: dict[str, str] | None = None) -> str:
    """The CLI with ``argv`` must exit 2 with one ``pbt-actors`` line (no traceback); its output."""
    proc = start(*argv, env=env)
    code = proc.wait(60)
    out = proc.output()
    assert code == 2, (code, out)
    assert "Traceback" not in out, out
    said = [line for line in out.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(said) == 1 and said[0].startswith("pbt-actors"), out  # one line (argparse adds its usage)
    return out


@pytest.mark.parametrize("face", ["csv", "json", "tensorboard", "report"])
@pytest.mark.parametrize("where", ["data.mdb", "lock.mdb", "checkpoints/x", "."])
def test_no_face_writes_inside_the_store(store: Path, face: str, where: str) -> None:
    """Was: ``export --format csv --out STORE/data.mdb`` truncated the LMDB file (SIGBUS, store lost)."""
    before = digest(store / "data.mdb")
    out = str(store / where)
    argv = ["report", "--store", str(store), "--out", out] if face == "report" else \
        ["export", "--store", str(store), "--format", face, "--out", out]
    text = refused(*argv)
    assert f"pbt-actors: refusing --out {out}: it lies inside the store" in text, text
    assert digest(store / "data.mdb") == before
    assert not (store / "checkpoints" / "x").exists()
    status = start("status", "--store", str(store), "--json")
    assert status.wait(60) == 0, status.output()


def test_a_hard_link_to_the_store_file_is_refused(store: Path, tmp_path: Path) -> None:
    link = tmp_path / "looks-harmless.csv"
    os.link(store / "data.mdb", link)
    before = digest(store / "data.mdb")
    text = refused("export", "--store", str(store), "--format", "csv", "--out", str(link))
    assert "it is the store's data.mdb" in text
    assert digest(store / "data.mdb") == before


def test_the_report_still_writes_its_own_default_folder_and_outside(store: Path, tmp_path: Path) -> None:
    proc = start("report", "--store", str(store))
    assert proc.wait(90) == 0, proc.output()
    assert (store / "report" / "index.html").exists()
    proc = start("export", "--store", str(store), "--format", "csv", "--out", str(tmp_path / "rows.csv"))
    assert proc.wait(60) == 0, proc.output()
    assert (tmp_path / "rows.csv").read_text().count("\n") > 1


@pytest.mark.parametrize("argv", [
    ["export", "--format", "csv", "--out", "/proc/nope/rows.csv"],
    ["export", "--format", "json", "--out", "/proc/nope"],
    ["export", "--format", "tensorboard", "--out", "/proc/nope"],
    ["report", "--out", "/proc/nope"],
])
def test_an_out_that_cannot_be_created_is_one_line(store: Path, argv: list[str]) -> None:
    """Was: ``FileNotFoundError`` tracebacks."""
    text = refused(argv[0], "--store", str(store), *argv[1:])
    assert "pbt-actors: cannot write --out /proc/nope" in text, text


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_an_impossible_dashboard_port_is_a_usage_error(store: Path, port: str) -> None:
    """Was: ``OverflowError: bind(): port must be 0-65535`` (and exit 0 for ``run --dashboard``'s child)."""
    text = refused("dashboard", "--store", str(store), "--port", port)
    assert "argument --port:" in text, text


def test_an_impossible_dashboard_port_of_run_is_refused_before_the_run(tmp_path: Path) -> None:
    text = refused("run", str(TOY), "--store", str(tmp_path / "s"), "--dashboard", "--dashboard-port", "70000")
    assert "argument --dashboard-port:" in text
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["run", "status", "export"])
@pytest.mark.parametrize("kind", ["long-name", "long-path", "not-utf8"])
def test_a_store_path_the_file_system_refuses_is_one_line(tmp_path: Path, command: str, kind: str) -> None:
    """Was: ``OSError: [Errno 36] File name too long`` / ``UnicodeEncodeError`` from LMDB."""
    path = {"long-name": str(tmp_path / ("a" * 300)),
            "long-path": str(tmp_path / "/".join(["b" * 200] * 25)),
            "not-utf8": os.fsdecode(os.fsencode(str(tmp_path)) + b"/store-\xff")}[kind]
    argv = ["run", str(TOY), "--store", path] if command == "run" else [command, "--store", path]
    text = refused(*argv)
    assert "argument --store:" in text, text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "worker"])
def test_an_unusable_cache_folder_with_a_url_root_is_one_line(tmp_path: Path, command: str) -> None:
    """Was: a ``FileNotFoundError`` traceback from the checkpoint cache's ``mkdir`` (``run``), a
    warning per worker and a host that went on (``worker``)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    where = ["--store", str(tmp_path / "s")] if command == "run" else ["--connect", "tcp://127.0.0.1:5"]
    text = refused(command, str(TOY), *where, "--checkpoint-root", "s3://bucket/prefix",
                   "--devices", "cpu", "--workers", "1", env={"PBT_ACTORS_CACHE_DIR": str(blocker)})
    assert f"cannot use {blocker}/checkpoints for the checkpoint cache" in text, text
    assert "PBT_ACTORS_CACHE_DIR" in text


def test_a_budget_smaller_than_one_trial_is_refused(tmp_path: Path) -> None:
    """Was: ``--budget-steps 4`` with 5 steps per trial ran nothing and exited 0."""
    text = refused("run", str(TOY), "--store", str(tmp_path / "s"), "--budget-steps", "4", "--devices", "cpu")
    assert "budget_steps 4 is smaller than one trial (steps_per_trial 5)" in text, text
    assert not (tmp_path / "s").exists()


def collected_ids(store_dir: Path) -> list[int]:
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    with LmdbTrialStore(store_dir, readonly=True) as store:
        return [t.id for t in store.iter_trials() if t.collected_at is not None]


def test_gc_at_a_wrong_root_deletes_nothing_records_nothing_and_says_so(tmp_path: Path) -> None:
    """Item 10. Was: "deleted 34 of 37" with nothing there, those trials marked collected (so
    the real files were never deleted) and ``verify`` clean."""
    store = tmp_path / "s"
    run = start("run", str(TOY), "--store", str(store), "--devices", "cpu", "--workers", "1", "--quiet")
    assert run.wait(90) == 0, run.output()
    files = sorted((store / "checkpoints").rglob("*.ckpt"))
    wrong = tmp_path / "not-the-root"
    wrong.mkdir()
    gc = start("gc", "--store", str(store), "--force", "--checkpoint-root", str(wrong))
    assert gc.wait(60) == 1, gc.output()
    out = gc.output()
    assert "deleted 0 of " in out and "not found, nothing deleted: trial " in out, out
    assert f"were not under {wrong}; nothing was recorded for them" in out, out
    assert collected_ids(store) == []
    assert sorted((store / "checkpoints").rglob("*.ckpt")) == files
    verify = start("verify", "--store", str(store), "--checkpoint-root", str(tmp_path / "nowhere"))
    assert verify.wait(60) == 1, verify.output()  # was: "0 checkpoints checked: all invariants hold"
    assert "is missing (expected under" in verify.output(), verify.output()
    right = start("gc", "--store", str(store), "--force")
    assert right.wait(60) == 0, right.output()
    gone = collected_ids(store)
    assert gone and all(not f.exists() for f in files if f.parent.name in {f"trial-{i:06d}" for i in gone})
    clean = start("verify", "--store", str(store))
    assert clean.wait(60) == 0, clean.output()


def test_the_summary_says_how_many_steps_retries_added_to_the_budget(tmp_path: Path) -> None:
    """Item 12. Was: "200 leased, 275 trained" with nothing saying where the 75 came from.
    Retries stay uncharged (the search must not depend on machine faults); the summary counts
    what they re-leased, and ``leased + retried`` bounds the steps trained."""
    import json

    from tests.faults.harness import EXPERIMENTS, env_with

    store, trace = tmp_path / "s", tmp_path / "trace"
    trace.mkdir()
    run = start("run", str(EXPERIMENTS / "flaky.py"), "--store", str(store), "--devices", "cpu", "--workers", "2",
                "--budget-steps", "40", "--json", env=env_with(FLAKY_ONCE="1,2,3", FAULT_TRACE_DIR=trace))
    assert run.wait(90) == 0, run.output()
    budget = json.loads(run.output().strip().splitlines()[-1])["budget"]
    assert budget["leased_steps"] <= 40 and budget["retried_steps"] == 15, budget  # 3 trials x 5 steps again
    trained = sum(len(f.read_text().splitlines()) for f in trace.iterdir())
    assert budget["leased_steps"] < trained <= budget["leased_steps"] + budget["retried_steps"]
    status = start("status", "--store", str(store))
    assert status.wait(60) == 0, status.output()
    assert "retries re-leased 15 more (not charged to the budget)" in status.output(), status.output()


def test_pin_reaches_the_live_controller_before_retention_collects(tmp_path: Path) -> None:
    """Item 11. Was: ``pin`` refused while the run's controller held the store (writer lock),
    so retention collected the checkpoint the user wanted to keep."""
    import json

    from pbt_actors.storage.lmdb_store import LmdbTrialStore
    from tests.support.waiting import wait_until

    experiment = tmp_path / "toy_pin_live.py"
    experiment.write_text(
        f"exec(open({str(TOY)!r}).read())\n"
        "from dataclasses import replace\n"
        "experiment = replace(experiment, name='toy_pin_live', retention=Retention(keep_best=1))\n")
    store = tmp_path / "s"
    run = start("run", str(experiment), "--store", str(store), "--devices", "cpu", "--workers", "2", "--quiet",
                env={"TOY_STEP_SLEEP_S": "0.1", "TOY_MAX_STEPS": "50"})

    def held_completed() -> int | None:
        from pbt_actors.model.errors import StoreError

        if not (store / "data.mdb").exists():
            return None
        try:
            opened = LmdbTrialStore(store, readonly=True)
        except StoreError:  # created, its databases not yet committed
            return None
        with opened as s:
            held = [t.id for t in s.iter_trials() if t.completed_attempt is not None and s.checkpoint(t.id)]
        return held[-1] if held else None

    target = wait_until(held_completed, 60, "a completed trial whose checkpoint is still held")
    pin = start("pin", "--store", str(store), str(target), "--json")
    assert pin.wait(60) == 0, pin.output()
    answer = json.loads(pin.output().strip().splitlines()[-1])
    assert answer["live"] is True and target in answer["pins"]
    assert run.wait(120) == 0, run.output()
    with LmdbTrialStore(store, readonly=True) as s:
        trial = s.find_trial(target)
        assert trial is not None and trial.collected_at is None and s.checkpoint(target) is not None
        collected = sum(1 for t in s.iter_trials() if t.collected_at is not None)
    assert collected > 0  # retention did run around the pin
    assert (store / "checkpoints" / trial.checkpoint.uri).is_file()
    verify = start("verify", "--store", str(store))
    assert verify.wait(60) == 0, verify.output()
    assert not list((store / "pin-requests").iterdir())
