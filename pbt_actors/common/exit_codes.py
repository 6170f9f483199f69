"""Every exit code pbt_actors gives a process, in one table.

Layer 0. Cluster managers (SLURM, Kubernetes), host supervisors and tests tell a finished run,
a preemption, a lost controller and a crash apart by these numbers, so each is defined once
here and imported everywhere else. Where a number exists in sysexits(3) or the shell's
128+signal convention we use that one.
"""

from __future__ import annotations

import signal

EXIT_DONE = 0
"""The controller said ``done``: the run is over."""
EXIT_USAGE = 2
"""A usage or configuration error (argparse's own code); one line on stderr says which."""
EXIT_NO_RESULT = 1
"""``run``/``controller``: the run ended without what it was for: it finished with no trial
completed (one line says why: how many failed or stopped, and the last error), or ``run``'s
workers gave up with trials still pending."""
EXIT_PREEMPTED = 3
"""A worker process stopped by SIGTERM: its trial handed back a resume checkpoint if it could."""
EXIT_ORPHANED = 4
"""A worker process whose host supervisor died (its lifeline closed): it leaves on its own."""
EXIT_WRONG_RUN = 5
"""The controller serves another run (``error(wrong_run)``): this worker is stale; the host
supervisor does not restart it (``launch.worker_specs``: a final exit code)."""
EXIT_TRIAL_TIMEOUT = 6
"""A worker process ends itself with this code when its trial timed out and ``train`` did not
return after ``stop`` (a thread stuck in C code cannot be interrupted): the trial's doing."""
EXIT_NO_CONTROLLER = 69
"""No reply from the controller for ``--controller-timeout`` seconds: it is gone for good
(sysexits' EX_UNAVAILABLE). Final for a worker process (a restarted one would find nobody
either), and ``pbt-actors worker`` exits with it too, so a cluster manager can tell it from a
crash and reschedule."""
EXIT_STORE_FULL = 75
"""``run``/``controller``: the store's disk filled up (``StoreFull``). The store keeps its last
committed state; free space and run the same command again to resume (sysexits' EX_TEMPFAIL)."""
EXIT_CHECKPOINT_STORE = 74
"""``run``/``controller``/``worker``: the checkpoint store cannot be written (a full disk, a
bucket deleted or never created, a folder not writable): checked before the first trial and
reported by a worker whose save failed (``CheckpointStoreFault``). No trial was charged for
it; fix the store and run the same command again to resume (sysexits' EX_IOERR)."""
EXIT_SIGINT = 128 + signal.SIGINT
"""Stopped by Ctrl-C (what a shell reports for SIGINT)."""
EXIT_SIGTERM = 128 + signal.SIGTERM
"""``worker``: stopped by SIGTERM (a cluster manager's preemption) before the run was done; the
workers handed their trials back, so a Kubernetes Job or SLURM sees a stopped task, not a
completed one."""
EXIT_SIGPIPE = 128 + signal.SIGPIPE
"""The reader of standard output went away (``pbt-actors export | head``): what a shell reports
for a Unix tool killed by SIGPIPE, with no traceback."""
EXIT_UNKNOWN = -signal.SIGKILL
"""The returncode reported for a worker whose exit the dead zygote could not report."""
