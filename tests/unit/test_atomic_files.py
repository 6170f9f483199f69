"""The one atomic-write helper: all or nothing, durable, no temp file left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pbt_actors.common import atomic_files
from pbt_actors.common.atomic_files import atomic_write, write_atomically

pytestmark = pytest.mark.timeout(10)


class Boom(Exception):
    pass


def test_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomically(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.bin"
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_a_writer_that_raises_midway_leaves_the_old_file_intact_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.ckpt"
    target.write_bytes(b"the old, complete content")
    with pytest.raises(Boom), atomic_write(target) as handle:
        handle.write(b"half of the new")
        handle.flush()
        raise Boom
    assert target.read_bytes() == b"the old, complete content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.ckpt"]


def test_no_file_appears_under_the_final_name_when_the_first_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "fresh.bin"
    with pytest.raises(Boom), atomic_write(target) as handle:
        handle.write(b"x")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_a_failing_rename_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_text("old")

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_the_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_files.os, "fsync", fsync)
    monkeypatch.setattr(atomic_files.os, "replace", replace)
    write_atomically(tmp_path / "x", b"data")
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_text_mode(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "t.txt", "w", encoding="utf-8") as handle:
        handle.write("grüße")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "grüße"
    with pytest.raises(ValueError), atomic_write(tmp_path / "t.txt", "a"):  # type: ignore[arg-type]
        pass
