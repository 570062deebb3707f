"""ufbert_jax.io: a failed write names its file; one that finds no room is a NoSpaceError."""

import errno
import os

import pytest

from ufbert_jax import io


def no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() and fsync() raise it: no file name


def test_a_full_disk_is_an_error_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    io.write_text(path, "old")
    monkeypatch.setattr(io.os, "fsync", no_space)
    with pytest.raises(io.NoSpaceError, match=rf"{path}: No space left on device \[errno 28\]") as raised:
        io.write_text(path, "new")
    assert raised.value.filename == str(path) and raised.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_an_append_that_finds_no_room_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"

    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        write = staticmethod(no_space)

    monkeypatch.setattr(type(path), "open", lambda self, *a, **k: FullDisk())
    with pytest.raises(io.NoSpaceError, match=rf"{path}: No space left on device"):
        io.append_text(path, "{}\n")
