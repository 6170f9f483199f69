"""The dashboard in real headless Chromium against a live run of the toy example.

``pbt-actors run`` trains ``examples/toy_quadratic.py`` (paced: ``experiments/paced_toy.py``)
with two CPU workers into a fresh store while ``pbt-actors dashboard`` serves it; the page must
show the run, change when trials complete (we wait for the DOM, never a clock), and answer a
click on the lineage tree with that trial's hyperparameters, as the store has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.browser.conftest import click_tree_node, isolated_tree_node, start_dashboard
from tests.support.runs import cli
from tests.support.waiting import wait_until

PACED_TOY = Path(__file__).with_name("experiments") / "paced_toy.py"


def _int_attr(page: Any, selector: str, name: str) -> int:
    value = page.get_attribute(selector, name)
    return int(value) if value not in (None, "") else -1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_page_follows_a_live_run_and_the_tree_answers_a_click(tmp_path: Path, page: Any,
                                                                  artefacts: Path) -> None:
    store_dir = tmp_path / "store"
    run = cli("run", str(PACED_TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--quiet",
              env={"PBT_TEST_STEP_S": "0.08"})
    wait_until(lambda: (store_dir / "data.mdb").exists() or run.poll() is not None, 60, "the run's store")
    assert run.poll() is None, run.stdout.read() if run.stdout else run.returncode
    _, url = start_dashboard(store_dir)

    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.text_content("#experiment") == "paced_toy"
    first_cursor = _int_attr(page, "body", "data-cursor")
    first_trials = page.text_content("#summary-trials")

    # a trial completes: the cursor, and with it the counts and the chart, move without a reload
    page.wait_for_function(f"Number(document.body.dataset.cursor) > {first_cursor}", timeout=60_000)
    assert run.poll() is None or _int_attr(page, "body", "data-cursor") > first_cursor
    page.wait_for_function(f"Number(document.body.dataset.cursor) >= {first_cursor + 4}", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#population tbody tr').length >= 2", timeout=30_000)
    assert page.text_content("#summary-trials") != first_trials or run.poll() is not None
    page.wait_for_function("Number(document.getElementById('tree').dataset.nodes) >= 4", timeout=30_000)
    page.screenshot(path=str(artefacts / "dashboard-live-run.png"), full_page=True)

    # a click on a node of the tree shows that trial's hyperparameters, parent and checkpoint
    target = isolated_tree_node(page)
    click_tree_node(page, target)
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target}'", timeout=20_000)
    shown = {el.get_attribute("data-name"): el.text_content() for el in page.query_selector_all("#details-hparams dd")}
    with LmdbTrialStore(store_dir, readonly=True) as store:
        trial = store.get_trial(target)
    assert set(shown) == set(trial.hparams) == {"h0", "h1"}
    for name, value in trial.hparams.items():
        assert float(shown[name]) == pytest.approx(value, rel=1e-3, abs=1e-9)
    details = page.text_content("#details-body")
    assert ("parent–" in details.replace(" ", "")) == (trial.parent_id is None)
    if trial.parent_id is not None:
        assert f"#{trial.parent_id}" in details
    page.screenshot(path=str(artefacts / "dashboard-live-run-clicked.png"), full_page=True)
    assert page.page_errors == []
