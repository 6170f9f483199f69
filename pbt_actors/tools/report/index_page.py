"""The report's ``index.html``: one self-contained page (no network) with the run's facts and the
figures with their captions."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from pathlib import Path

from pbt_actors.control.final_population import final_population
from pbt_actors.model.records import TrialStatus
from pbt_actors.tools.report.figure_style import fmt_value
from pbt_actors.tools.report.report_data import ReportData

FIGURES: tuple[str, ...] = ("fitness", "schedule", "lineage_tree", "progress", "utilisation")
"""The figures, in the page's order (each ``<name>.png``)."""

CAPTIONS = {
    "fitness": "Every trial's fitness against training step. Each curve starts where its parent ended; "
               "colour = the seed trial a trial descends from (with more than nine seeds: the seed lineages that "
               "survive into the final population in colour, extinct ones grey); black = the best trial's lineage; "
               "dashed = still running.",
    "schedule": "The best trial's hyperparameter schedule: the value in force at each training step. "
                "Each step of the staircase is one trial of its warm-start chain.",
    "lineage_tree": "Generations left to right. Solid edges: warm starts (parent → child); dashed: "
                    "crossover sources (they gave hyperparameters, not weights). Trials whose weights live on "
                    "in the final population (ringed) are drawn solid, extinct branches faint; the best "
                    "lineage is thick.",
    "progress": "Best-so-far and median population fitness (the last <i>population</i> completed trials) "
                "against wall time.",
    "utilisation": "Busy and idle time of each worker (from every attempt's lease interval).",
}



def steps_text(data: ReportData) -> str:
    """``50 per trial, lineages end at step 500 (max_steps); 5,175 trained in all``: max_steps
    is how far each lineage goes, not the compute spent (the sum over completed trials)."""
    assert data.experiment is not None
    trained = sum(t.steps for t in data.trials if t.status is TrialStatus.COMPLETED)
    return (f"{data.experiment.steps_per_trial:,} per trial, lineages end at step {data.experiment.max_steps:,} "
            f"(max_steps); {trained:,} trained in all (completed trials)")



def index_html(data: ReportData, paths: Mapping[str, Path]) -> str:
    e = html.escape
    name = data.experiment.name if data.experiment is not None else "(unknown experiment)"
    counts: dict[str, int] = {}
    for t in data.trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    state = "finished" if data.finished else "in progress"
    rows = [("experiment", name), ("state", state), ("trials", f"{len(data.trials)}  (" + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items())) + ")")]
    if data.experiment is not None:
        rows += [("policy", data.experiment.policy), ("population", str(data.experiment.population)),
                 ("steps", steps_text(data))]
        population = final_population(data.trials, data.experiment)
        if population.best is not None:
            mean = ", ".join(f"{k} = {fmt_value(v)}" for k, v in population.mean.items())
            best_metrics = ", ".join(f"{k} = {fmt_value(v)}" for k, v in (population.best.final or {}).items())
            rows += [("final population", f"{len(population.trials)} trials ({population.at_max_steps} at max_steps "
                                          f"{population.max_steps:,}): best trial {population.best.id}: "
                                          f"{best_metrics}; mean {mean or '-'}")]
    if data.best is not None:
        metrics = ", ".join(f"{k} = {fmt_value(v)}" for k, v in (data.best.final or {}).items())
        hparams = ", ".join(f"{k} = {fmt_value(v)}" for k, v in data.best.hparams.items())
        rows += [("best trial (any step)", f"{data.best.id} (generation {data.best.generation}, "
                                           f"step {data.best.end_step}): {metrics}"),
                 ("its last hyperparameters", hparams)]
    with_checkpoint = [t for t in data.trials if t.checkpoint is not None]
    collected = sum(1 for t in with_checkpoint if t.collected_at is not None)
    if collected:  # retention: say so, the figures need no checkpoint
        best_note = ("; the best trial's checkpoint collected: replay it from scratch"
                     if data.best is not None and data.best.collected_at is not None else "")
        rows += [("checkpoints", f"{len(with_checkpoint) - collected} kept, {collected} collected by "
                                 f"retention{best_note}")]
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    sections = "\n".join(
        f'<figure id="{n}"><img src="{e(paths[n].name)}" alt="{e(n)}"><figcaption>{CAPTIONS[n]}</figcaption></figure>'
        for n in FIGURES)
    schedule_link = ('<p>The best trial\'s schedule as JSON (for <code>pbt-actors replay --schedule</code>): '
                     f'<a href="{e(paths["best_schedule"].name)}">best_schedule.json</a></p>'
                     if "best_schedule" in paths else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>pbt-actors report: {e(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.2em 1em 0.2em 0; vertical-align: top; }}
th {{ color: #555; font-weight: 600; }}
figure {{ margin: 0 0 2.5em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}
figcaption {{ color: #444; margin-top: 0.4em; }}
</style></head>
<body>
<h1>pbt-actors report: {e(name)}</h1>
<table>
{table}
</table>
{schedule_link}
{sections}
<p style="color:#777">Generated {e(generated)} from the store ({e(state)}).</p>
</body></html>
"""
