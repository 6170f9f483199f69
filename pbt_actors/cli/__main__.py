"""``python -m pbt_actors.cli ...``: the same as the ``pbt-actors`` command (worker processes use it)."""

import os

from pbt_actors.cli.main import console_main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    console_main()
