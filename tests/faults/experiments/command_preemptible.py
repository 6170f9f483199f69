"""The preemptible toy of ``preemptible.py`` as a command trial: ``command_steps.py``, a plain
script that never imports pbt_actors, trains the same toy (``_common``'s knobs apply), saves
its state as a directory checkpoint and, on SIGTERM, saves after the current step and says
``pbt: checkpoint step=N``."""

from _common import make_experiment

experiment = make_experiment("command-preemptible",
                             command=["{python}", "command_steps.py", "--h0", "{h0}", "--h1", "{h1}"])
