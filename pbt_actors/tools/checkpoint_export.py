"""Export a trial's checkpoint (by default the best trial's) out of the checkpoint root.

Layer 5 (a face). ``pbt-actors export --format checkpoint --out PATH`` copies the best completed
trial's model where a user wants it: a single-file checkpoint as that file, a directory
checkpoint (``ctx.save_checkpoint_dir``, docs/design.md §8.6) as that folder. Either way the
bytes are verified by size and sha256 against the store's ``CheckpointRef`` before they are
copied, and the copy is checked again, so an export is never a damaged model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pbt_actors.common.atomic_files import write_atomically
from pbt_actors.model.errors import CheckpointError, ConfigError
from pbt_actors.model.records import CheckpointRef, is_directory_checkpoint
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint_dir, read_manifest, read_verified
from pbt_actors.storage.dir_manifest import verify_tree


def export_checkpoint(root: str | os.PathLike[str], ref: CheckpointRef, out: str | os.PathLike[str]) -> Path:
    """Copy the checkpoint ``ref`` under ``root`` (a folder or URL) to ``out``, verified.

    Raises:
        ConfigError: ``out`` exists (a file, or a folder that is not empty): never overwritten.
        CheckpointError: the stored checkpoint is missing, truncated or tampered.
    """
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--out {out} exists: an export never overwrites; give a new path")
    if is_directory_checkpoint(ref):
        files = read_manifest(root, ref)
        folder = load_checkpoint_dir(root, ref)
        if target.exists():
            target.rmdir()
        shutil.copytree(folder, target, copy_function=shutil.copyfile)  # the user's copy: writable
        verify_tree(target, files, str(target))
        return target
    data = read_verified(root, ref)
    write_atomically(target, bytes(data))
    if target.stat().st_size != ref.bytes:  # pragma: no cover - a disk that lies
        raise CheckpointError(f"the copy {target} is {target.stat().st_size} bytes, expected {ref.bytes}")
    return target
