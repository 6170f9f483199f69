"""Citations of the design point at ``docs/design.md``, a file of this repository, and name
sections it has.

The code used to cite the original design card by section ("DESIGN §5"), a text a reader of
the repository cannot open; ``docs/design.md`` replaced it (its §14 maps the old numbers).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "design.md"
THIS = Path(__file__).resolve()

# Folders that hold no source of ours (or hold it twice: pbt_actors/storage and
# pbt_actors/transport are symlinks, which os.walk does not follow).
SKIPPED_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist",
                          "pbt-runs", ".mypy_cache", ".ruff_cache", ".pytest_cache"})

# Spelled in two parts so that this file does not match itself by accident.
OLD_CITATION = re.compile("DESIGN" + r"(\.md)?\s*§|" + "DESIGN" + r"\.md")
NEW_CITATION = re.compile(r"docs/design\.md`*\s*((?:§\s*\d+(?:\.\d+)?(?:\s*(?:,|and|or)\s*)?)+)")
NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", flags=re.MULTILINE)


def source_files(*suffixes: str) -> Iterator[Path]:
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(suffixes):
                yield Path(folder) / name


def sections() -> list[str]:
    return HEADING.findall(DOC.read_text(encoding="utf-8"))


def test_sections_are_numbered_once_and_in_order() -> None:
    numbers = sections()
    assert numbers, f"no numbered sections in {DOC}"
    assert len(numbers) == len(set(numbers)), "a section number is used twice"
    tops = [int(n) for n in numbers if "." not in n]
    assert tops == list(range(1, len(tops) + 1)), f"top-level sections are not 1..n: {tops}"
    for number in numbers:
        if "." in number:
            top, _ = number.split(".")
            assert top in numbers, f"§{number} has no §{top} above it"


def test_no_code_cites_the_original_design() -> None:
    offenders = []
    for path in source_files(".py", ".md", ".toml"):
        if path.resolve() in (THIS, DOC.resolve()):
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OLD_CITATION.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not offenders, ("cite docs/design.md §N instead of the original design (docs/design.md "
                           "§14 maps the old numbers):\n" + "\n".join(offenders))


def test_every_citation_names_an_existing_section() -> None:
    known = set(sections())
    broken = []
    for path in source_files(".py", ".md", ".toml"):
        if path.resolve() in (THIS, DOC.resolve()):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in NEW_CITATION.finditer(text):
            for number in NUMBER.findall(match.group(1)):
                if number not in known:
                    lineno = text.count("\n", 0, match.start()) + 1
                    broken.append(f"{path.relative_to(REPO)}:{lineno}: §{number}")
    assert not broken, "citations of sections docs/design.md does not have:\n" + "\n".join(broken)


PATH_TOKEN = re.compile(r"`([A-Za-z_][\w./-]*/[\w./-]*)`")
"""A backticked repository path in the document: ``control/core.py``, ``storage/``."""
MODULE_TOKEN = re.compile(r"`(\w+\.py)`")
"""A backticked bare module file name: ``lmdb_txn.py``."""


def test_named_paths_exist() -> None:
    """Every file or folder the document names is in the tree (paths of the package may be given
    relative to ``pbt_actors/``), so a rename cannot leave the design pointing at nothing."""
    missing = []
    for path in PATH_TOKEN.findall(DOC.read_text(encoding="utf-8")):
        if "://" in path or path.startswith(("./", ".")):
            continue  # a URL, or a path of a run (./pbt-runs/...), not of the repository
        if not ((REPO / path).exists() or (REPO / "pbt_actors" / path).exists()):
            missing.append(path)
    names = {path.name for path in source_files(".py")}
    missing += [name for name in MODULE_TOKEN.findall(DOC.read_text(encoding="utf-8")) if name not in names]
    assert not missing, f"{DOC.name} names paths that do not exist: {sorted(set(missing))}"
