"""``pbt-actors migrate --store DIR``: bring a store written by an older pbt-actors to this build's
storage schema (``pbt_actors.storage.migrations``).

A controller does the same when it opens a store; this command is for a store no controller
will open soon but that ``status``, ``report`` or the dashboard should read (a reader refuses an
older store and names this command). It opens the store as its writer, so it waits for no
one: a store whose controller still runs is refused (the writer lock names it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pbt_actors.cli import arguments
from pbt_actors.model.errors import ConfigError


def cmd_migrate(args: argparse.Namespace) -> int:
    from pbt_actors.storage.lmdb_store import LmdbTrialStore
    from pbt_actors.storage.schema import STORE_SCHEMA_VERSION

    path = Path(args.store).resolve()
    if not (path / "data.mdb").exists():
        raise ConfigError(f"no pbt-actors store at {path}")
    store = LmdbTrialStore(path)  # the writer migrates at open
    store.close()
    applied = [{"version": m.version, "description": m.description} for m in store.migrated]
    if args.json:
        print(json.dumps({"store": str(path), "schema_version": STORE_SCHEMA_VERSION, "applied": applied}))
    elif applied:
        for step in applied:
            print(f"migrated {path} to storage schema v{step['version']}: {step['description']}")
    else:
        print(f"{path} is at storage schema v{STORE_SCHEMA_VERSION}: nothing to migrate")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``migrate``."""
    migrate = sub.add_parser("migrate", help="bring a store written by an older pbt-actors up to date")
    migrate.add_argument("--store", required=True, type=arguments.store_path)
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(func=cmd_migrate)
