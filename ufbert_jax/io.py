"""Reading and writing the files we share: errors name the file, writes are atomic and readable.

Atomic: a write goes to a temporary file beside the target, which then replaces it (os.replace), so a
reader or a crash never sees half a file. Readable: the temporary file is created with mode 0o666 and
the kernel applies the umask, so a written file gets the mode `open(path, "w")` would give it (0644 under
the usual umask 022), not the 0600 of `tempfile.mkstemp`: shard folders and exported checkpoints are
shared between users.

A failed write names its file: Python's OSError from write() or fsync() carries no file name, so "[Errno
28] No space left on device" alone would not say which disk is full. A write that fails for lack of room
(disk full, quota, file size limit) raises NoSpaceError.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class FileFormatError(ValueError):
    """A file that exists but cannot be read as what it should be; the message names the file."""


#: The errors of a write that found no room: disk full, disk quota exceeded, file size limit (ulimit -f).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class NoSpaceError(OSError):
    """A write failed for lack of room (NO_SPACE_ERRNOS); `filename` is the file being written."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror} [errno {self.errno}]"


def naming(error: OSError, path: str | Path) -> OSError:
    """`error` with `path` as its file name where it has none (NoSpaceError for NO_SPACE_ERRNOS)."""
    no_space = error.errno in NO_SPACE_ERRNOS
    if error.filename is not None and (not no_space or isinstance(error, NoSpaceError)):
        return error
    kind = NoSpaceError if no_space else type(error)
    try:
        return kind(error.errno, error.strerror or str(error), str(error.filename or path))
    except TypeError:  # an OSError subclass with another constructor
        return error


def read_json(path: str | Path) -> Any:
    """The JSON value of `path`; a missing file is a FileNotFoundError, an empty, truncated or non-UTF-8
    one a FileFormatError, each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    data = path.read_bytes()
    if not data.strip():
        raise FileFormatError(f"{path}: empty file, expected JSON")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise FileFormatError(f"{path}: not UTF-8 text, so not JSON ({err})") from None
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{path}: invalid JSON ({err}); truncated?") from None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file object to write `path` with ("w" text or "wb" bytes): on success it replaces `path`
    atomically, on an error it is removed and `path` is left as it was. Parent folders are created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"{mode=}; expected 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: a fresh file of ours; mode 0o666 is then reduced by the umask, as open() does.
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise naming(error, path) from None
    try:
        with open(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a power loss cannot leave an empty file
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise naming(error, path) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically, with the umask's mode."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` atomically, with the umask's mode."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def append_text(path: str | Path, text: str) -> None:
    """Appends `text` (UTF-8) to `path`; an OSError names the file."""
    try:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(text)
    except OSError as error:
        raise naming(error, path) from None
