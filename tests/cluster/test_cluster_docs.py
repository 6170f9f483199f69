"""Issue 21: every command docs/clusters.md shows names files that exist and flags that exist:
``pbt-actors`` commands go through the real CLI parser, ``sbatch`` commands name an existing
batch script and experiment and only options ``sbatch --help`` lists (where SLURM is installed),
and the recipes give the controller the workers' checkpoint root (retention needs it)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from pbt_actors.cli.main import build_parser
from tests.support.runs import REPO

DOCS = REPO / "docs" / "clusters.md"
PLACEHOLDERS = {"$PBT_SHARED": "/shared/pbt", "$USER": "me", "$PWD": "/home/me"}


def _commands() -> list[list[str]]:
    """The docs' ``bash`` blocks, one argv per line (comments and ``VAR=value`` prefixes dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S):
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            for name, value in PLACEHOLDERS.items():
                line = line.replace(name, value)
            argv = shlex.split(line)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                argv = argv[1:]
            commands.append(argv)
    return commands


def _sbatch_options(tmp_path: Path) -> set[str] | None:
    """The long options ``sbatch --help`` lists (None without SLURM). It wants a configuration
    to print its help, not a cluster: a two-line one will do."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return None
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=docs\nSlurmctldHost=localhost\nNodeName=n1\nPartitionName=p Nodes=n1\n")
    text = subprocess.run([sbatch, "--help"], capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "SLURM_CONF": str(conf)}).stdout
    options = set(re.findall(r"(--[a-z][a-z-]*)", text))
    assert {"--nodes", "--array", "--gpus-per-node"} <= options, text[-2000:]
    return options


@pytest.mark.timeout(60)
def test_every_command_in_docs_clusters_names_existing_files_and_flags(tmp_path: Path) -> None:
    commands = _commands()
    options = _sbatch_options(tmp_path)
    seen = {"pbt-actors": 0, "sbatch": 0}
    for argv in commands:
        if argv[:1] == ["pbt-actors"]:
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as exc:
                raise AssertionError(f"pbt-actors rejects {argv}") from exc
            seen["pbt-actors"] += 1
        elif argv[:1] == ["sbatch"]:
            files = [a for a in argv[1:] if not a.startswith("-")]
            assert len(files) == 2, argv  # the batch script, the experiment
            script, experiment = files
            assert script.startswith("examples/slurm/") and (REPO / script).is_file(), argv
            assert (REPO / experiment).is_file(), argv
            if options is not None:
                for arg in argv[1:]:
                    if arg.startswith("--"):
                        assert arg.split("=", 1)[0] in options, f"sbatch has no option {arg}: {argv}"
            seen["sbatch"] += 1
    assert seen["pbt-actors"] >= 4 and seen["sbatch"] >= 6, seen


@pytest.mark.timeout(30)
def test_the_recipes_give_the_controller_the_workers_checkpoint_root() -> None:
    """Without it the controller can delete nothing (issue 21, item 2)."""
    for script in ("examples/slurm/pbt.sbatch", "examples/launch_host.sh"):
        joined = (REPO / script).read_text().replace("\\\n", " ")  # continuation lines joined
        commands = [line for line in joined.splitlines() if re.search(r'\bcontroller "\$\w*EXPERIMENT"', line)]
        assert len(commands) == 1, (script, commands)
        assert '--checkpoint-root "$' in commands[0], (script, commands[0])


@pytest.mark.timeout(30)
def test_the_docs_name_only_example_files_that_exist() -> None:
    for path in sorted(set(re.findall(r"`((?:examples|tests)/[\w./-]+)`", DOCS.read_text()))):
        assert (REPO / path).exists(), path
