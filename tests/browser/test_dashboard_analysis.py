"""The dashboard's "why" and analysis views (issue 22, items 1-13) in real headless Chromium.

One real run serves every test of this module: ``pbt-actors run --dashboard`` trains
``experiments/analysis_toy.py`` (ten lineages of thirty 2-step trials, about 350 trials, a
log-scale ``lr``, every eleventh trial's first attempt crashing) and, once it has finished, keeps
serving the finished store until it gets SIGINT (item 11, checked last). The tests click, type
and read the DOM; what the page shows is compared with the store read directly.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT
from tests.browser.conftest import start_dashboard
from tests.support.runs import REPO, cli
from tests.support.waiting import wait_until

ANALYSIS_TOY = Path(__file__).with_name("experiments") / "analysis_toy.py"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # the first test also waits for the run (~10 s)


class ServedRun:
    """The module's run: its process, the dashboard's URL, its output so far, the store's trials."""

    def __init__(self, proc: subprocess.Popen[str], store: Path) -> None:
        self.proc = proc
        self.store = store
        self.lines: list[str] = []
        self.url = ""
        self.trials: dict[int, Trial] = {}
        self.experiment: Experiment | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def load(self) -> None:
        with LmdbTrialStore(self.store, readonly=True) as store:
            self.trials = {t.id: t for t in store.iter_trials()}
            self.experiment = Experiment.from_dict(store.get_meta(META_EXPERIMENT))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRun]:
    store = tmp_path_factory.mktemp("analysis") / "store"
    proc = subprocess.Popen([sys.executable, "-m", "pbt_actors.cli", "run", str(ANALYSIS_TOY), "--workers", "2",
                             "--devices", "cpu", "--store", str(store), "--dashboard", "--dashboard-port", "0",
                             "--quiet"], cwd=str(REPO), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        run = ServedRun(proc, store)
        wait_until(lambda: "keeps serving the finished store" in run.output() or proc.poll() is not None, 240,
                   "the run to finish and its dashboard to keep serving")
        assert proc.poll() is None, run.output()
        run.url = next(line.split()[1] for line in run.lines if line.startswith("dashboard: http://"))
        run.load()
        yield run
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _open(page: Any, url: str, hash_: str = "") -> None:
    page.goto(url + hash_)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)


def _shown(page: Any, view: str, trial: int | None = None) -> None:
    want = view + (f":{trial}" if trial else "")
    try:
        page.wait_for_function(f"document.body.dataset.shown === '{want}'", timeout=15_000)
    except Exception:
        state = page.evaluate("() => [location.hash, document.body.dataset.shown, "
                              "document.getElementById('error').textContent]")
        raise AssertionError(f"the page did not show {want}: {state}, errors {page.page_errors}") from None


def _explored_child(run: ServedRun) -> Trial:
    """A tournament child whose hyperparameters differ from its parent's, with a crossover source."""
    for t in sorted(run.trials.values(), key=lambda t: -t.id):
        parent = run.trials.get(t.parent_id) if t.parent_id else None
        if (t.origin.opponent is not None and parent is not None and t.crossover_id is not None
                and any(parent.hparams[k] != v for k, v in t.hparams.items())):
            return t
    raise AssertionError("no explored crossover child in the run")


def _shot(page: Any, name: str) -> None:
    folder = Path(os.environ.get("PBT_SHOTS", REPO / "tests" / ".artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


# --- item 1: why this trial exists, in the panel and in `lineage` ----------------------------------
def test_the_details_panel_and_lineage_say_who_played_who_won_and_what_explore_changed(served: ServedRun,
                                                                                    page: Any) -> None:
    child = _explored_child(served)
    parent = served.trials[child.parent_id]
    initiator, opponent = served.trials[child.origin.initiator], served.trials[child.origin.opponent]
    _open(page, served.url, f"#view=trials&q=id={child.id}")
    _shown(page, "trials")
    page.click(f"#trials-table a.trial-link[href$='trial={child.id}']")  # a real click on the row's link
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{child.id}'", timeout=15_000)
    why = page.text_content("#details-why")
    assert f"initiator #{initiator.id} (Q={initiator.final['Q']:.4g})" in why
    assert f"opponent #{opponent.id} (Q={opponent.final['Q']:.4g})" in why
    assert f"#{child.origin.winner} won" in why
    assert f"warm-started from #{parent.id}, crossover with #{child.crossover_id}" in why
    for name, after in child.hparams.items():
        if after != parent.hparams[name]:
            assert f"{name} {parent.hparams[name]:.4g} -> {after:.4g} (" in why
    hows = {el.get_attribute("data-name"): el.get_attribute("data-how") for el in page.query_selector_all(".change")}
    assert hows and set(hows.values()) <= {"perturbed", "resampled", "crossover"}
    _shot(page, "300-details-why")
    out, _ = cli("lineage", "--store", str(served.store), str(child.id)).communicate(timeout=60)
    assert why in out  # the same line in `lineage`
    assert page.page_errors == []


# --- item 2: the selected trial's own curve and schedule -------------------------------------------
def test_the_details_panel_draws_that_trials_own_curve_and_schedule(served: ServedRun, page: Any) -> None:
    best_id = max((t for t in served.trials.values() if t.final), key=lambda t: t.final["Q"]).id
    target = next(t for t in sorted(served.trials.values(), key=lambda t: t.id)
                  if t.id != best_id and t.generation >= 5 and len(t.measurements) >= 2)
    _open(page, served.url, f"#view=overview&trial={target.id}")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target.id}'", timeout=15_000)
    curve = page.evaluate("() => { const d = document.getElementById('details-curve').data[0]; return [d.x, d.y]; }")
    assert curve[0] == [m.step for m in target.measurements]
    assert curve[1] == pytest.approx([m.metrics["Q"] for m in target.measurements])
    assert page.get_attribute("#details-schedule", "data-trial-id") == str(target.id)
    chain = []
    current: Trial | None = target
    while current is not None:
        chain.append(current)
        current = served.trials.get(current.parent_id) if current.parent_id else None
    chain.reverse()
    lr = page.evaluate("() => document.getElementById('details-schedule').data.find((t) => t.name === 'lr').y")
    assert lr == pytest.approx([v for t in chain for v in (t.hparams["lr"], t.hparams["lr"])])
    assert page.get_attribute("#schedule", "data-trial-id") == str(best_id)  # the overview's stays the best's
    assert page.page_errors == []


# --- item 3: per-step curves for every trial ------------------------------------------------------
def test_the_fitness_chart_draws_every_trials_reports_step_by_step(served: ServedRun, page: Any) -> None:
    _open(page, served.url)
    xs = page.evaluate("() => document.getElementById('curve').data[0].x.filter((x) => x !== null)")
    # 2-step trials end on even steps: an odd step can only come from a report within a trial
    odd = [x for x in xs if x % 2 == 1]
    reports = sum(1 for t in served.trials.values() if t.final for m in t.measurements if m.step % 2 == 1)
    assert len(odd) == reports > 100
    _shot(page, "300-overview")
    assert page.page_errors == []


# --- item 4: log axes in the schedule, no title over the tick labels ------------------------------
def test_the_schedule_draws_log_scale_hyperparameters_on_log_axes(served: ServedRun, page: Any) -> None:
    _open(page, served.url)
    axes = page.evaluate("""() => { const gd = document.getElementById('schedule'), fl = gd._fullLayout;
        return gd.data.map((t) => { const ax = fl['yaxis' + t.yaxis.slice(1)];
            return [t.name, ax.type, ax.title && ax.title.text || '']; }); }""")
    assert {name: kind for name, kind, _ in axes} == {"lr": "log", "h0": "linear", "h1": "linear"}
    assert all(title in ("", "Click to enter Y axis title") for _, _, title in axes)  # no axis titles
    labels = page.evaluate("() => document.getElementById('schedule').layout.annotations.map((a) => a.text)")
    assert any("lr" in a and "log" in a for a in labels)
    # each panel's tick labels readable: none drawn over another (a log axis spanning less than a
    # decade labelled its minor ticks 0.6, 0.7, 0.8, 0.9 on top of each other); checked on the
    # trial whose ancestry's lr spans the narrowest range, in its panel's small schedule
    def lr_span(trial: Trial) -> float:
        values = []
        while True:
            values.append(trial.hparams["lr"])
            if trial.parent_id is None:
                return math.log10(max(values) / min(values))
            trial = served.trials[trial.parent_id]

    narrow = min((t for t in served.trials.values() if t.generation >= 8 and lr_span(t) > 0), key=lr_span)
    assert lr_span(narrow) < 1
    page.click("#tabs a[data-view='overview']")
    page.fill("#goto-id", str(narrow.id))
    page.click("#goto button")
    page.wait_for_function(f"(document.getElementById('details-schedule') || {{dataset: {{}}}}).dataset.trialId "
                           f"=== '{narrow.id}'", timeout=15_000)
    overlaps = page.evaluate("""() => ['schedule', 'details-schedule'].flatMap((el) =>
      ['y', 'y2', 'y3'].flatMap((id) => {
        const rects = [...document.querySelectorAll(`#${el} .${id}tick text`)].map((t) => t.getBoundingClientRect())
            .filter((r) => r.height > 0).sort((a, b) => a.top - b.top);
        return rects.slice(1).map((r, i) => rects[i].bottom - r.top).filter((d) => d > 2)
            .map((d) => [el, id, d]); }))""")
    assert overlaps == []
    assert page.page_errors == []


# --- item 5: the trials table ------------------------------------------------------------------------
def test_the_trials_table_sorts_filters_and_links_each_row_to_its_details(served: ServedRun, page: Any) -> None:
    _open(page, served.url)
    page.click("#tabs a[data-view='trials']")
    _shown(page, "trials")
    assert int(page.get_attribute("#trials-table", "data-matched")) == len(served.trials)
    page.click("#trials-table th[data-sort='value']")
    page.wait_for_function("location.hash.includes('sort=value') && !location.hash.includes('desc')")
    page.click("#trials-table th[data-sort='value']")
    page.wait_for_function("document.querySelector('#trials-table th.sorted-desc') !== null")
    first = int(page.get_attribute("#trials-table tbody tr", "data-trial"))
    assert served.trials[first].final["Q"] == max(t.final["Q"] for t in served.trials.values() if t.final)
    page.fill("#trials-filter", "lr<0.01, status=completed")
    page.press("#trials-filter", "Enter")
    expected = sum(1 for t in served.trials.values() if t.hparams["lr"] < 0.01 and t.status is TrialStatus.COMPLETED)
    page.wait_for_function(f"document.getElementById('trials-table').dataset.matched === '{expected}'")
    shown = [float(el.text_content()) for el in page.query_selector_all("#trials-table td[data-col='hp:lr']")]
    assert shown and all(v < 0.01 for v in shown)
    target = int(page.get_attribute("#trials-table tbody tr:nth-child(2)", "data-trial"))
    page.click("#trials-table tbody tr:nth-child(2) a.trial-link")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target}'", timeout=15_000)
    assert page.get_attribute("body", "data-view") == "overview"
    _open(page, served.url, "#view=trials&sort=value&desc=1")
    _shown(page, "trials")
    _shot(page, "300-trials-table")
    assert page.page_errors == []


# --- items 6 and 7: parallel coordinates (brushing) and importance --------------------------------
def test_parallel_coordinates_plot_each_trials_own_hyperparameters_and_brush(served: ServedRun, page: Any) -> None:
    _open(page, served.url, "#view=analysis")
    _shown(page, "analysis")
    page.wait_for_function("document.getElementById('parallel').dataset.selected !== undefined")
    data = page.evaluate("""() => { const d = document.getElementById('parallel').data[0];
        return {labels: d.dimensions.map((x) => x.label), values: d.dimensions.map((x) => Array.from(x.values))}; }""")
    assert data["labels"][:4] == ["lr (log10)", "h0", "h1", "step"]
    ids = page.evaluate("() => document.getElementById('parallel').dataset.selected")
    completed = sorted((t for t in served.trials.values() if t.final), key=lambda t: t.id)
    assert int(ids) == len(completed)
    for k, t in enumerate(completed):  # each trial's own hyperparameters against its own result
        assert data["values"][0][k] == pytest.approx(math.log10(t.hparams["lr"]))
        assert data["values"][1][k] == pytest.approx(t.hparams["h0"])
        assert data["values"][-1][k] == pytest.approx(t.final["Q"])
    # brush the objective's axis with the mouse: a band in its upper part
    box = page.evaluate("""() => { const axes = document.querySelectorAll('#parallel .axis-brush');
        const r = axes[axes.length - 1].getBoundingClientRect();
        return {x: r.left + r.width / 2, top: r.top, h: r.height}; }""")
    page.mouse.move(box["x"], box["top"] + 0.05 * box["h"])
    page.mouse.down()
    page.mouse.move(box["x"], box["top"] + 0.3 * box["h"], steps=8)
    page.mouse.up()
    page.wait_for_function(f"Number(document.getElementById('parallel').dataset.selected) < {len(completed)}")
    brushed = int(page.get_attribute("#parallel", "data-selected"))
    assert 0 < brushed < len(completed)
    assert "trials in the brushed ranges" in page.text_content("#parallel-selection")
    _shot(page, "300-hyperparameters")
    assert page.page_errors == []


def test_importance_comes_from_a_fixed_seed_random_forest_over_each_trials_own_result(served: ServedRun,
                                                                                      page: Any) -> None:
    def read() -> dict[str, float]:
        _open(page, served.url, "#view=analysis")
        _shown(page, "analysis")
        page.wait_for_selector("#importance-list li")
        return {el.get_attribute("data-name"): float(el.get_attribute("data-importance"))
                for el in page.query_selector_all("#importance-list li")}
    first = read()
    assert set(first) == {"lr", "h0", "h1", "(step)"}
    assert sum(first.values()) == pytest.approx(1.0, abs=1e-4)
    assert "random forest" in page.text_content("#importance-hint")
    assert read() == first  # deterministic: the same forest on a reload
    assert page.page_errors == []


# --- item 8: compare ---------------------------------------------------------------------------------
def test_two_trials_ticked_in_the_table_compare_side_by_side(served: ServedRun, page: Any) -> None:
    _open(page, served.url, "#view=trials&sort=value&desc=1")
    _shown(page, "trials")
    a = int(page.get_attribute("#trials-table tbody tr:nth-child(1)", "data-trial"))
    b = int(page.get_attribute("#trials-table tbody tr:nth-child(4)", "data-trial"))
    page.click("#trials-table tbody tr:nth-child(1) .compare-box")
    page.wait_for_function(f"location.hash.includes('compare={a}')")
    page.click("#trials-table tbody tr:nth-child(4) .compare-box")
    page.wait_for_function(f"decodeURIComponent(location.hash).includes('compare={a},{b}')")
    page.click("#tabs a[data-view='compare']")
    page.wait_for_function(f"document.getElementById('compare-table').dataset.trials === '{a},{b}'", timeout=15_000)
    names = page.evaluate("() => document.getElementById('compare-curves').data.map((t) => t.name)")
    assert names == [f"#{a}'s ancestry", f"#{b}'s ancestry", f"#{a}", f"#{b}"]
    # behind each trial's own reports, its warm-start chain's results by step (the store's values)
    history = page.evaluate("() => document.getElementById('compare-curves').data.slice(0, 2).map((t) => [t.x, t.y])")
    for trial_id, (xs, ys) in zip((a, b), history, strict=True):
        chain = [trial_id]
        while served.trials[chain[-1]].parent_id is not None:
            chain.append(served.trials[chain[-1]].parent_id)
        chain.reverse()
        assert xs == [served.trials[i].end_step for i in chain]
        assert ys == pytest.approx([served.trials[i].final["Q"] for i in chain])
    for name in ("lr", "h0", "h1"):
        cells = [el.text_content() for el in page.query_selector_all(f"#compare-table tr[data-row='{name}'] td")]
        expected = [served.trials[a].hparams[name], served.trials[b].hparams[name]]
        assert [float(c) for c in cells] == pytest.approx(expected, rel=1e-3)
    assert "common ancestor" in page.text_content("#compare-common")
    _shot(page, "300-compare")
    assert page.page_errors == []


# --- item 9: several objectives: the Pareto front -----------------------------------------------------
def test_a_multi_objective_store_shows_its_pareto_front(tmp_path: Path, page: Any) -> None:
    proc = cli("sim", "--objective", "pareto", "--population", "8", "--seeds", "1", "--max-trials", "240",
               "--store", "lmdb", "--store-dir", str(tmp_path), "--quiet")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    (store_dir,) = [p for p in tmp_path.iterdir() if (p / "data.mdb").exists()]
    with LmdbTrialStore(store_dir, readonly=True) as store:
        experiment = Experiment.from_dict(store.get_meta(META_EXPERIMENT))
        front = store.best_ranked(experiment.objective_, limit=10_000)
    assert experiment.objective_.comparison == "pareto" and len(front) >= 2
    _, url = start_dashboard(store_dir)
    _open(page, url)
    assert "Pareto over" in page.text_content("#summary-objective")
    best = page.text_content("#summary-best")  # no single weighted number: a front trial's own metrics
    assert "loss" in best and "cost" in best, best
    assert "on the Pareto front" in page.text_content("#summary-best-where")
    page.click("#tab-pareto")
    _shown(page, "pareto")
    page.wait_for_function("document.getElementById('pareto').dataset.front !== undefined")
    assert int(page.get_attribute("#pareto", "data-front")) == len(front)
    plotted = page.evaluate("() => document.getElementById('pareto').data[1].customdata")
    assert sorted(plotted) == sorted(front)
    _shot(page, "pareto-front")
    page.click(f"#pareto-list a[href$='trial={front[0]}']")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{front[0]}'", timeout=15_000)
    assert page.page_errors == []


# --- item 10: deep links ------------------------------------------------------------------------------
def test_every_view_and_trial_has_a_url_that_survives_a_reload(served: ServedRun, page: Any) -> None:
    target = _explored_child(served)
    _open(page, served.url)
    page.fill("#goto-id", str(target.id))
    page.click("#goto button")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target.id}'", timeout=15_000)
    assert f"trial={target.id}" in page.url
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target.id}'", timeout=15_000)
    page.click("#tabs a[data-view='analysis']")
    _shown(page, "analysis")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    _shown(page, "analysis")
    assert page.is_visible("#parallel") and not page.is_visible("#tree")
    _open(page, served.url, "#view=compare&compare=3,5")
    page.wait_for_function("document.getElementById('compare-table').dataset.trials === '3,5'", timeout=15_000)
    assert page.page_errors == []


# --- item 12: failed attempts and the trial's own log -------------------------------------------------
def test_failed_attempts_are_counted_and_listed_with_tracebacks(served: ServedRun, page: Any) -> None:
    retried = [t for t in served.trials.values() if t.attempt > 1]
    assert retried and all(t.status is TrialStatus.COMPLETED for t in retried)
    _open(page, served.url)
    assert int(page.text_content("#failed-attempts-total")) == sum(t.attempt - 1 for t in retried)
    entries = page.query_selector_all("#failed-attempts .failed-attempt")
    assert {int(e.get_attribute("data-trial")) for e in entries} == {t.id for t in retried}
    assert all("RuntimeError: injected failure of trial" in e.text_content() for e in entries)
    target = min(retried, key=lambda t: t.id)
    page.click(f"#failed-attempts .failed-attempt[data-trial='{target.id}'] a")
    page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{target.id}'", timeout=15_000)
    outcomes = [el.get_attribute("data-outcome") for el in page.query_selector_all("#details-attempts li")]
    assert outcomes == ["failed", "completed"]
    log = page.text_content("#details-log").splitlines()
    assert f"trial {target.id} attempt 1: training steps {target.start_step}-{target.end_step}" in log
    assert f"trial {target.id} attempt 2: training steps {target.start_step}-{target.end_step}" in log
    assert not [line for line in log if "trial " in line and f"trial {target.id} " not in line + " "
                and f"trial {target.id}," not in line]
    _shot(page, "300-failed-attempts")
    assert page.page_errors == []


# --- item 13: the tree: exact clicks, a stable layout, a readable first view --------------------------
def test_tree_clicks_hit_the_marker_under_the_pointer_and_the_layout_is_stable(served: ServedRun,
                                                                               page: Any) -> None:
    _open(page, served.url)
    page.click("#tree-scope")  # every trial, not only the ancestries that matter
    page.wait_for_function("(() => { const d = document.getElementById('tree').dataset; "
                           "return d.shown === d.nodes; })()")
    page.evaluate("() => Plotly.relayout('tree', {'xaxis.autorange': true, 'yaxis.autorange': true})")
    crowded = page.evaluate("""() => {
        const gd = document.getElementById('tree'), t = gd.data.find((d) => d.customdata), fl = gd._fullLayout;
        const px = t.x.map((x, i) => [fl.xaxis.d2p(x), fl.yaxis.d2p(t.y[i])]);
        const out = [];
        for (let i = 0; i < px.length && out.length < 10; i++) {
          // markers (8 px) that overlap a neighbour: plotly's "closest" ties them and may answer the
          // neighbour (it did: a click on #241 opened #244)
          const near = px.filter((p, j) => j !== i && Math.hypot(p[0] - px[i][0], p[1] - px[i][1]) < 6);
          const clear = px.every((p, j) => j === i || Math.hypot(p[0] - px[i][0], p[1] - px[i][1]) >= 2);
          if (near.length && clear) out.push(t.customdata[i]);
        }
        return out; }""")
    assert len(crowded) >= 3, "no overlapping markers to tell apart"
    box = page.evaluate("() => { const r = document.getElementById('tree').getBoundingClientRect(); "
                        "return [r.left, r.top]; }")
    for trial_id in crowded:
        page.evaluate("() => Plotly.relayout('tree', {'xaxis.autorange': true, 'yaxis.autorange': true})")
        point = page.evaluate("""(id) => { const gd = document.getElementById('tree'), fl = gd._fullLayout;
            const t = gd.data.find((d) => d.customdata), i = t.customdata.indexOf(id);
            return [fl._size.l + fl.xaxis.d2p(t.x[i]), fl._size.t + fl.yaxis.d2p(t.y[i])]; }""", trial_id)
        page.mouse.click(box[0] + point[0], box[1] + point[1])
        page.wait_for_function(f"document.getElementById('details').dataset.trialId === '{trial_id}'", timeout=15_000)
    # stable: the lanes of the first 200 trials are the same with and without the later ones, and
    # the drawn lanes stay put while trials arrive (the page's own redraw, with the later trials
    # added back as a live run would add them)
    same = page.evaluate("""async () => {
        const full = layoutTree(), saved = new Map(state.tree);
        for (const id of [...state.tree.keys()]) if (id > 200) state.tree.delete(id);
        const part = layoutTree();
        state.lanes = null;
        await drawTree();
        const before = new Map(state.treeY);
        for (const [id, n] of saved) state.tree.set(id, n);
        await drawTree();
        return [...part.keys()].every((id) => part.get(id) === full.get(id))
            && [...before.keys()].every((id) => before.get(id) === state.treeY.get(id)); }""")
    assert same
    assert page.page_errors == []


def test_the_trees_first_view_shows_the_best_lineage_and_the_population_readably(served: ServedRun,
                                                                                 page: Any) -> None:
    _open(page, served.url)
    view = page.evaluate("""() => { const fl = document.getElementById('tree')._fullLayout;
        const inside = (id) => { const n = state.tree.get(id), y = state.treeY.get(id);
            return y !== undefined && n.end >= fl.xaxis.range[0] && n.end <= fl.xaxis.range[1]
                && y >= fl.yaxis.range[0] && y <= fl.yaxis.range[1]; };
        return {rows: fl.yaxis.range[1] - fl.yaxis.range[0], population: state.population.every(inside),
                best: inside(state.bestId), shown: Number(document.getElementById('tree').dataset.shown)}; }""")
    assert view["population"] and view["best"]
    assert view["shown"] < len(served.trials)  # the dead ends are left out of the first view
    assert view["rows"] <= 40  # ~10 px a lane in the 420 px panel: readable
    _shot(page, "300-tree-first-view")
    page.click("#tree-scope")
    page.wait_for_function(f"document.getElementById('tree').dataset.shown === '{len(served.trials)}'")
    assert page.page_errors == []


# --- item 16: the population table fits its card on a 1280 px screen ---------------------------------
def test_the_population_table_is_not_clipped_at_1280_px(served: ServedRun, page: Any) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    _open(page, served.url)
    page.wait_for_selector("#population tbody tr")
    fit = page.evaluate("""() => { const table = document.getElementById('population');
        const wrap = table.parentElement, card = wrap.getBoundingClientRect();
        const cells = [...table.querySelectorAll('th, td')].map((c) => c.getBoundingClientRect().right);
        return {overflow: table.scrollWidth - wrap.clientWidth, right: Math.max(...cells) - card.right,
                header: table.querySelector('th:last-child').textContent}; }""")
    assert fit["header"] == "hyperparameters"
    assert fit["overflow"] <= 0, fit  # no horizontal scroll inside the card: nothing cut off at its edge
    assert fit["right"] <= 0, fit
    _shot(page, "300-overview-1280px")
    assert page.page_errors == []


# --- item 11 (last: it stops the module's run) ---------------------------------------------------------
def test_run_dashboard_keeps_serving_the_finished_store_until_ctrl_c(served: ServedRun, page: Any) -> None:
    assert "Ctrl-C to stop it" in served.output()
    _open(page, served.url)
    assert page.text_content("#run-state") == "finished"
    assert page.is_hidden("#error")
    served.proc.send_signal(signal.SIGINT)  # Ctrl-C: the run's process and its dashboard child
    assert served.proc.wait(30) == 0, served.output()
    page.wait_for_function("document.getElementById('run-state').textContent === 'finished (dashboard stopped)'",
                           timeout=15_000)
    assert page.is_hidden("#error")
    assert page.page_errors == []
