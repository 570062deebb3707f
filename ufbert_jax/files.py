"""Writing files so that a reader (or a restart after a crash) never sees half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder and os.replace.

    A kill at any moment leaves either the old file or the new one, never a truncated mix. The file is
    created with mode 0o666 less the umask, as open() would (tempfile's 0o600 would make shared files
    private).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def copy_atomically(source: str | Path, target: str | Path) -> None:
    """Copies `source` to `target` as `write_atomically` writes."""
    write_atomically(target, Path(source).read_bytes())
