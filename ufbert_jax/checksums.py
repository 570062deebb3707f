"""Content checksums of a checkpoint step: written when the step is saved, verified before it is restored.

A file whose bytes change after the save (a bad disk or copy, a stray write) usually keeps its size and its
format, so orbax restores it without complaint and the damage shows up later as a NaN loss or wrong scores.
So every step folder holds checksums.json: the size and SHA-256 of each file of its items (params/, train/,
meta/). The workdir's manager (ufbert_jax.checkpoint_manager) writes it after orbax has written the items
and before orbax renames the step's temporary folder into place, so every complete step has one. Readers
call `verify` for the items they restore: a file that differs from its record is a ChecksumError naming it
(the trainer then sets the step aside and resumes from the one before; a loader stops). A step saved
before checksums existed has no checksums.json and restores unverified, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ufbert_jax import io

log = logging.getLogger("ufbert_jax")

CHECKSUM_FILE = "checksums.json"
FORMAT = "ufbert-jax/checksums/1"


class ChecksumError(ValueError):
    """A checkpoint file whose content is not what was saved (changed, truncated or missing); names it."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _item_files(step_dir: Path, items: Iterable[str]) -> list[Path]:
    return sorted(path for item in items for path in (step_dir / item).rglob("*") if path.is_file())


def write(step_dir: str | Path) -> None:
    """Writes step_dir/checksums.json: size and SHA-256 of every file in the step's item folders."""
    step_dir = Path(step_dir)
    items = sorted(path.name for path in step_dir.iterdir() if path.is_dir())
    files = {
        str(path.relative_to(step_dir)): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in _item_files(step_dir, items)
    }
    io.write_text(step_dir / CHECKSUM_FILE, json.dumps({"format": FORMAT, "files": files}, indent=1) + "\n")


def verify(step_dir: str | Path, items: Iterable[str]) -> bool:
    """Checks the recorded files of `items` (e.g. ["params"]) in a step folder against checksums.json.

    True when every one matches; False (and a warning) when the step has no checksums.json (saved by an
    earlier version: nothing to check against). A ChecksumError naming the first file that is missing or
    whose size or content differs from the record.
    """
    step_dir = Path(step_dir)
    path = step_dir / CHECKSUM_FILE
    if not path.is_file():
        log.warning(
            "%s has no %s (saved by an earlier version): restored without verifying it", step_dir, path.name
        )
        return False
    record = io.read_json(path)
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT
        or not isinstance(record.get("files"), dict)
    ):
        raise ChecksumError(f"{path}: not a {FORMAT} record")
    prefixes = tuple(f"{item}/" for item in items)
    for name, saved in sorted(record["files"].items()):
        if not name.startswith(prefixes):
            continue
        file = step_dir / name
        if not file.is_file():
            raise ChecksumError(f"{file}: missing (recorded in {path})")
        size = file.stat().st_size
        if size != saved["bytes"]:
            raise ChecksumError(
                f"{file}: {size} bytes, {saved['bytes']} when saved (truncated or overwritten)"
            )
        if _sha256(file) != saved["sha256"]:
            raise ChecksumError(
                f"{file}: its content is not what was saved (its sha256 differs from {path.name}): the file "
                "was changed after the save"
            )
    return True
