"""``pbt-actors report``: PNG figures and an ``index.html`` for a finished or running store.

Layer 5 (a face): reads a ``TrialStore``, never writes one. matplotlib draws through the Agg
canvas directly (``matplotlib.figure.Figure``, no pyplot), so a report never touches a
notebook's backend or global figure state, and nothing is fetched from the network: the HTML
is one self-contained file next to its PNGs.

Figures (file names are ``FIGURES``):

``fitness.png``       every trial's objective against training step, each trial's curve joined
                      to its parent's end, coloured by the seed trial it descends from; the
                      best trial's warm-start chain drawn on top in black.
``schedule.png``      the best trial's hyperparameter schedule, one panel per hyperparameter,
                      against step (log axes for log-scale parameters, the search range as the
                      panel's limits).
``lineage_tree.png``  generations left to right; warm-start edges parent → child solid,
                      crossover edges dashed; the warm-start ancestry of the final population
                      solid, extinct branches faint; the best lineage thick.
``progress.png``      best-so-far and median population fitness against wall time.
``utilisation.png``   per worker, busy intervals (from ``Trial.history`` and running leases)
                      against wall time; the gaps are idle time, the share holding a trial is
                      in the label, also after each worker's first trial (hatched), which
                      includes the worker's start-up and the experiment's imports.

The figures' *final population* is the ``population`` most recent trials that did not fail or
stop (for a running store: the current one); ``index.html``'s is the latest completed trial of
each population slot (``control.final_population``, as in ``status``). The *population* at a
wall time, for the median, is the ``population`` most recently completed trials at that time.
"""


from pbt_actors.tools.report.index_page import FIGURES
from pbt_actors.tools.report.report_writer import write_report

__all__ = ["FIGURES", "write_report"]
