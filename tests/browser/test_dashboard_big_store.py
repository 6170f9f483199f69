"""The dashboard on a big simulated store: opens fast and stays responsive.

A session fixture makes one LMDB store with ``pbt-actors sim`` (20,000 trials by default,
``PBT_DASHBOARD_TRIALS=100000`` for the 100k figure of the issue; about 8 s per 20k here).
The page must be ready (every panel drawn) within ``OPEN_BUDGET_S`` of navigation, then load a
trial that is not on screen on demand, and answer a click on the tree.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.browser.conftest import click_tree_node, isolated_tree_node, start_dashboard
from tests.support.runs import cli

TRIALS = int(os.environ.get("PBT_DASHBOARD_TRIALS", "20000"))
OPEN_BUDGET_S = 2.0
COLD_OPEN_BUDGET_S = 6.0  # the first open also parses plotly.js (~1 s of a busy 2-core VM)


@pytest.fixture(scope="session")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big-store")
    proc = cli("sim", "--objective", "curve", "--population", "50", "--seeds", "1", "--max-trials", str(TRIALS),
               "--max-steps", "10000000", "--store", "lmdb", "--store-dir", str(root), "--quiet")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    (store,) = [p for p in root.iterdir() if (p / "data.mdb").exists()]
    return store


def _open(page: Any, url: str) -> float:
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_big_store_opens_within_budget_and_loads_trials_on_demand(big_store: Path, page: Any,
                                                                      artefacts: Path) -> None:
    _, url = start_dashboard(big_store)
    cold = _open(page, url)
    warm = min(_open(page, url), _open(page, url))
    print(f"{TRIALS} trials: page ready in {cold:.2f}s (cold), {warm:.2f}s (warm)")
    assert cold <= COLD_OPEN_BUDGET_S, cold
    assert warm <= OPEN_BUDGET_S, warm
    assert page.text_content("#summary-trials").replace(",", "") == str(TRIALS)
    nodes = int(page.get_attribute("#tree", "data-nodes"))
    assert 0 < nodes < 5000  # the ancestries that matter, not the whole tree
    assert "aggregated" in page.text_content("#curve-hint")

    # a trial far from the best lineage: loaded on demand with its neighbourhood
    with LmdbTrialStore(big_store, readonly=True) as store:
        far = store.get_trial(TRIALS // 3)
    t0 = time.perf_counter()
    page.fill("#goto-id", str(far.id))
    page.click("#goto button")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{far.id}'", timeout=10_000)
    page.wait_for_function(f"Number(document.getElementById('tree').dataset.nodes) > {nodes}", timeout=10_000)
    assert time.perf_counter() - t0 < OPEN_BUDGET_S
    shown = {el.get_attribute("data-name"): float(el.text_content())
             for el in page.query_selector_all("#details-hparams dd")}
    assert shown.keys() == far.hparams.keys()
    assert all(shown[k] == pytest.approx(v, rel=1e-3) for k, v in far.hparams.items())

    # and a click on the tree still answers
    target = isolated_tree_node(page)
    click_tree_node(page, target)
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target}'", timeout=10_000)
    page.screenshot(path=str(artefacts / f"dashboard-sim-{TRIALS}.png"), full_page=True)
    assert page.page_errors == []
