"""``toy_lineage`` behind a thread started at import: a process that loaded this file cannot
fork a zygote, so ``pbt-actors run`` must warn and start fresh worker interpreters
(tests/integration/test_zygote.py)."""

import threading

threading.Thread(target=threading.Event().wait, name="started-at-import", daemon=True).start()

from toy_lineage import experiment, train  # noqa: E402

__all__ = ["experiment", "train"]
