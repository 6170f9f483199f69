"""What the README promises users can import, they can import; the wheel installs one package.

The README is the contract with users: every ``from pbt_actors... import NAME`` in its code
blocks and every dotted ``pbt_actors.x.y`` it names must resolve. A restructuring that moves
a module without keeping what the README shows fails here.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pbt_actors
from tests.architecture.installed_layout import REPO

README = (REPO / "README.md").read_text()
FROM_IMPORT = re.compile(r"^\s*from (pbt_actors(?:\.\w+)*) import ([\w, ()]+)$", re.M)
DOTTED = re.compile(r"`(pbt_actors(?:\.\w+)+)")


def readme_imports() -> list[tuple[str, str]]:
    pairs = []
    for module, names in FROM_IMPORT.findall(README):
        pairs.extend((module, name.strip()) for name in names.strip("()").split(",") if name.strip())
    return pairs


def test_the_readme_shows_imports_at_all() -> None:
    names = {name for _, name in readme_imports()}
    assert {"Experiment", "Float", "Controller", "WorkerClient"} <= names


@pytest.mark.parametrize(("module", "name"), readme_imports())
def test_every_name_the_readme_imports_exists(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"


@pytest.mark.parametrize("dotted", sorted(set(DOTTED.findall(README))))
def test_every_dotted_name_the_readme_shows_resolves(dotted: str) -> None:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{dotted} does not resolve")


def test_every_public_name_of_the_package_resolves() -> None:
    for name in pbt_actors.__all__:
        assert getattr(pbt_actors, name) is not None, name


def test_the_wheel_installs_no_generic_top_level_package(tmp_path: Path) -> None:
    """``storage`` and ``transport`` go in as ``pbt_actors.storage`` / ``pbt_actors.transport``."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("pbt_actors-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"pbt_actors", next(t for t in top_level if t.endswith(".dist-info"))}
    assert "pbt_actors/storage/lmdb_store.py" in names
    assert "pbt_actors/transport/codec.py" in names
    assert "pbt_actors/control/policies/initiator.py" in names
