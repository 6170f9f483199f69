"""The per-slot marker naming the trial a worker process runs (``runtime.trial_marker``)."""

from __future__ import annotations

from pathlib import Path

from pbt_actors.runtime.worker.trial_marker import clear_marker, marker_path, markers_dir, take_marker, write_marker


def test_a_marker_round_trips_and_is_taken_once(tmp_path: Path) -> None:
    path = marker_path(markers_dir(tmp_path), "host/w0")
    assert path.parent == tmp_path / ".pbt-hosts" / "running" and path.name == "host_w0"
    assert take_marker(path) is None
    write_marker(path, 12, 3)
    assert take_marker(path) == (12, 3, 0)
    write_marker(path, 12, 4, trials_before=7)  # the process had run 7 trials to their end
    assert take_marker(path) == (12, 4, 7)
    path.write_text("5 2\n")  # an older worker's marker
    assert take_marker(path) == (5, 2, 0)
    assert take_marker(path) is None
    write_marker(path, 1, 1)
    clear_marker(path)
    assert take_marker(path) is None


def test_a_damaged_marker_means_no_trial(tmp_path: Path) -> None:
    path = marker_path(tmp_path, "w")
    path.write_text("garbage")
    assert take_marker(path) is None and not path.exists()


def test_an_unwritable_folder_is_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    write_marker(marker_path(blocker, "w"), 1, 1)  # never raises
