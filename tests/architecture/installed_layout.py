"""The package tree as a wheel installs it, assembled from ``pyproject.toml``.

In the repo, ``storage/`` and ``transport/`` are top-level folders (the design card), while
they install as ``pbt_actors.storage`` and ``pbt_actors.transport`` through setuptools'
``package-dir`` mapping. Tools that walk a package's folder (import-linter's grimp) cannot
follow that mapping, so the architecture tests lint a copy laid out as installed. The copy is
derived from the same two tables setuptools reads, so it cannot drift from the wheel.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def setuptools_config() -> tuple[list[str], dict[str, str]]:
    """The packages list and the package-dir mapping that setuptools builds the wheel from."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(config["packages"]), dict(config.get("package-dir", {}))


def source_folder(package: str, package_dir: dict[str, str]) -> Path:
    """Where a package's modules live in the repo (longest mapped prefix wins, as in setuptools)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return REPO / package_dir[prefix] / Path(*parts[cut:])
    return REPO / Path(*parts)


def assemble(target: Path) -> Path:
    """Copy every listed package's ``.py`` files to ``target`` under its import path."""
    packages, package_dir = setuptools_config()
    for package in packages:
        src = source_folder(package, package_dir)
        dst = target / Path(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for module in src.glob("*.py"):
            shutil.copy2(module, dst / module.name)
    shutil.copy2(REPO / "pyproject.toml", target / "pyproject.toml")
    return target


if __name__ == "__main__":  # python -m tests.architecture.installed_layout DIR (for mypy, linters)
    import sys

    print(assemble(Path(sys.argv[1]).resolve()))
