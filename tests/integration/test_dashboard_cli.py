"""``pbt-actors dashboard`` and ``run --dashboard`` as processes, over real HTTP (no browser).

The page's JSON API against a simulated LMDB store; the bind rules; and that the dashboard
reads the store without its writer lock (a controller can still open the store).
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.support.runs import REPO, cli, wait_for_line
from tests.support.waiting import wait_until

pytest.importorskip("starlette", reason="the dashboard extra is not installed (pip install 'pbt-actors[dashboard]')")
pytest.importorskip("uvicorn", reason="the dashboard extra is not installed")

PACED_TOY = REPO / "tests" / "browser" / "experiments" / "paced_toy.py"


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read()
            return reply.status, json.loads(body) if reply.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _dashboard(store: Path, *extra: str) -> tuple[Any, str]:
    proc = cli("dashboard", "--store", str(store), "--port", "0", *extra)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("dashboard: http://"):
            return proc, line.split()[1]
    raise AssertionError(f"no URL printed: {''.join(seen)}")


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    proc = cli("sim", "--objective", "curve", "--population", "6", "--seeds", "1", "--store", "lmdb",
               "--store-dir", str(root), "--quiet")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    (store,) = [p for p in root.iterdir() if (p / "data.mdb").exists()]
    return store


@pytest.mark.timeout(60)
def test_the_api_serves_a_store_read_only(sim_store: Path) -> None:
    _, url = _dashboard(sim_store)
    status, page = _get(url)
    assert status == 200 and b"dashboard.js" in page
    status, plotly = _get(url + "vendor/plotly.min.js")
    assert status == 200 and len(plotly) > 1_000_000  # served locally, from the plotly package
    with LmdbTrialStore(sim_store, readonly=True) as store:
        count = store.count()
        best = max((t for t in store.iter_trials() if t.final), key=lambda t: (-t.final["loss"], -t.id))
    status, summary = _get(url + "api/summary")
    assert status == 200 and summary["trials"] == count and summary["best"]["trial_id"] == best.id
    status, trial = _get(url + f"api/trial/{best.id}")
    assert status == 200 and trial["hparams"] == pytest.approx(dict(best.hparams)) and trial["is_best"]
    assert _get(url + "api/trial/999999")[0] == 404
    status, update = _get(url + "api/updates?cursor=nonsense")
    assert status == 200 and "cursor must be an integer" in update["error"]
    for view in ("population", "curves", "tree", "schedule", "workers", "failures"):
        assert _get(url + f"api/{view}")[0] == 200, view
    # the dashboard holds no writer lock: a controller could open the store right now
    with LmdbTrialStore(sim_store) as writer:
        assert writer.count() == count


@pytest.mark.timeout(60)
def test_a_non_loopback_bind_needs_a_flag_and_warns(sim_store: Path, tmp_path: Path) -> None:
    refused = cli("dashboard", "--store", str(sim_store), "--bind", "0.0.0.0", "--port", "0")
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "--allow-remote" in out
    missing = cli("dashboard", "--store", str(tmp_path / "nothing"), "--port", "0")
    out, _ = missing.communicate(timeout=30)
    assert missing.returncode == 2 and "no pbt-actors store" in out
    proc = cli("dashboard", "--store", str(sim_store), "--bind", "0.0.0.0", "--port", "0", "--allow-remote")
    assert proc.stdout is not None
    warning = proc.stdout.readline()
    assert warning.startswith("WARNING: the dashboard listens on 0.0.0.0")
    url = proc.stdout.readline().split()[1]
    assert _get(url.replace("0.0.0.0", "127.0.0.1") + "api/summary")[0] == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_dashboard_serves_the_run_and_after_it_until_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    store_dir = tmp_path / "store"
    run = cli("run", str(PACED_TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--quiet",
              "--dashboard", "--dashboard-port", str(port), env={"PBT_TEST_STEP_S": "0.02"})
    url = f"http://127.0.0.1:{port}/api/summary"
    wait_until(lambda: _answers(url) or run.poll() is not None, 60, "the run's dashboard")
    assert run.poll() is None, run.communicate()[0]
    assert _get(url)[1]["experiment"] == "paced_toy"
    wait_for_line(run, "keeps serving the finished store", 100)  # the run ended; its dashboard did not
    assert run.poll() is None
    assert _answers(url)
    run.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = run.communicate(timeout=30)
    assert run.returncode == 0, out
    assert not _answers(url)  # Ctrl-C stopped the dashboard too
