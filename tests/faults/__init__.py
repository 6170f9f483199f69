"""The fault suite (issue 4, "survive everything"): real processes, real sockets, real LMDB.

=====  ==========================================  =========================================
item   what                                        where
=====  ==========================================  =========================================
1      graceful preemption (SIGTERM)               ``test_preemption.py``
2      SIGKILL chaos on workers (slow)             ``test_chaos.py``
3      a whole host lost                           ``test_host_lost.py``
4      controller SIGKILL + restart, same store    ``test_controller_restart.py``
5      crash-looping workers, host state file      ``test_crash_loop.py``
6      failing trials                              ``test_failing_trials.py``
7      corrupt / missing checkpoints               ``test_corrupt_checkpoints.py``
8      10,000+ malformed messages during a run     ``test_hostile_input.py`` (fuzzing:
                                                   ``tests/unit/test_codec.py``)
10     LMDB growth, unwritable store, full disk    ``test_storage_faults.py``
11     ``pbt-actors verify``                       ``test_verify.py`` (and every test above)
--     ``benchmarks/chaos.py`` on the toy (slow)   ``test_chaos_benchmark.py``
=====  ==========================================  =========================================

``harness.py`` starts and watches the processes; ``experiments/`` holds the misbehaving
experiment files (preemptible, crash-looping, flaky, corrupting, disk-filling), all the toy
problem underneath (``experiments/_common.py``). Nothing waits by sleeping: tests poll the
store, files or processes against deadlines.
"""
