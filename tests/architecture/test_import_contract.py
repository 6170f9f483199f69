"""The layers of docs/design.md §3 hold by contract, not by discipline.

``lint-imports`` (import-linter) checks the contracts in ``pyproject.toml`` on the tree as
installed. Two more tests break a copy of the tree on purpose and expect the contract to catch
it, so a contract that silently stopped checking (a renamed package, an empty graph) fails too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.architecture.installed_layout import REPO, assemble, setuptools_config

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return assemble(tmp_path / "installed")


def test_the_contracts_hold(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")
    assert "Contracts: 8 kept, 0 broken." in result.stdout, result.stdout


def test_a_data_model_module_importing_storage_breaks_the_layers(tree: Path) -> None:
    space = tree / "pbt_actors" / "model" / "space.py"
    space.write_text(space.read_text() + "\nfrom pbt_actors.storage import trial_store  # wrong way\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "pbt_actors.model.space -> pbt_actors.storage.trial_store" in result.stdout, result.stdout


def test_a_worker_module_importing_the_controller_side_breaks_the_runtime_sides(tree: Path) -> None:
    runner = tree / "pbt_actors" / "runtime" / "worker" / "trial_runner.py"
    runner.write_text(runner.read_text() + "\n\ndef _late() -> None:\n"
                      "    from pbt_actors.runtime.controller import controller_actor  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "pbt_actors.runtime.worker is not allowed to import" in result.stdout, result.stdout
    assert "pbt_actors.runtime.worker.trial_runner ->" in result.stdout, result.stdout


def test_a_lazy_import_cycle_between_two_modules_is_caught(tree: Path) -> None:
    errors = tree / "pbt_actors" / "model" / "errors.py"  # space.py imports errors.py
    errors.write_text(errors.read_text() + "\n\ndef _late() -> None:\n    from pbt_actors.model import space  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "No import cycle" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_the_package_list_names_every_package_of_the_tree() -> None:
    """A subpackage missing from ``[tool.setuptools] packages`` would be missing from the wheel."""
    packages, package_dir = setuptools_config()
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "pbt_actors").rglob("__init__.py")}
    for mapped, folder in package_dir.items():
        on_disk |= {".".join((mapped, *p.parent.relative_to(REPO / folder).parts))
                    for p in (REPO / folder).rglob("__init__.py")}
    assert on_disk == set(packages)
