"""The workdir's orbax CheckpointManager: each step saved with its checksums, a failed write named once.

Orbax writes a step's items into checkpoints/N.orbax-checkpoint-tmp in a background thread, calls the
post-finalization callback, then renames the folder to checkpoints/N. `Manager`:
  * writes the step's checksums.json (ufbert_jax.checksums) from that callback, so they are part of the
    step before it is complete (a kill before the rename leaves no step at all);
  * turns a write that found no room (disk full, quota, file size limit) into one io.NoSpaceError naming
    the file, the step and the last complete step (which is intact: the failed step was never renamed into
    place), and removes the failed step's temporary folder to give the space back. Orbax reports such a
    failure from several threads, each with a traceback, and again at every later wait; those log records
    are dropped (`_QuietWriteFailures`) and the failure is raised once, at the next save or wait. The
    failed save's other writes then end on orbax's closed event loop, which Python reports as
    "unraisable" exceptions (dozens of "Event loop is closed" tracebacks, more at exit), asyncio's
    "Future exception was never retrieved" and a warning per unfinished write: those are dropped as well
    (`_quiet_unraisable`, the filter, a warnings filter), and everything else is reported as before.
Any other failure is left as orbax raises it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ufbert_jax import checksums, io

# Orbax writes step N into N + TMP_DIR_SUFFIX and renames it to N when complete.
TMP_DIR_SUFFIX = ".orbax-checkpoint-tmp"
# TensorStore's form of an OS error in a failed write: ... Failed writing: "PATH": ... [os_error_code='28']
_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_FAILED_FILE = re.compile(r'Failed (?:writing|to write)[^"]*"([^"]+)"')


def _no_space(error: BaseException) -> tuple[int, str | None] | None:
    """(errno, the file where known) when `error` or one of its causes is a write that found no room."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in io.NO_SPACE_ERRNOS:
            return error.errno, error.filename
        text = str(error)
        code = _OS_ERROR_CODE.search(text)
        if code and int(code[1]) in io.NO_SPACE_ERRNOS:
            found = _FAILED_FILE.search(text)
            return int(code[1]), found[1] if found else None
        error = error.__cause__ or error.__context__
    return None


class _QuietWriteFailures(logging.Filter):
    """Drops the error reports of a write that found no room from orbax (its threads) and asyncio (its
    failed writes' futures, collected at exit): Manager raises the failure once, named."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not ("orbax" in record.pathname or record.name == "asyncio"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        return _no_space(error or RuntimeError(record.getMessage())) is None


_QUIET = _QuietWriteFailures()
# A failed save leaves orbax's other write coroutines unfinished; Python warns about each at exit.
_UNAWAITED_WRITE = r"coroutine 'async_serialize_from_host\.<locals>\.write_fragment' was never awaited"


def _orbax_leftover(unraisable) -> bool:
    """Whether an unraisable exception is a failed save's write ending after orbax closed its event loop:
    a callback on the closed loop, or one of orbax's write coroutines collected unfinished."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    text = str(unraisable.exc_value)
    return text == "Event loop is closed" or "sys.meta_path is None" in text


def _quiet_unraisable() -> None:
    """Installs (once) a sys.unraisablehook that drops `_orbax_leftover`s and passes on everything else."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_orbax_leftovers", False):
        return

    def hook(unraisable) -> None:
        if not _orbax_leftover(unraisable):
            previous(unraisable)

    hook.drops_orbax_leftovers = True
    sys.unraisablehook = hook


class Manager(ocp.CheckpointManager):
    """ocp.CheckpointManager with checksums and named write failures (see the module docstring)."""

    def __init__(self, directory: str | Path, options: ocp.CheckpointManagerOptions):
        self._saving: int | None = None
        self._reported: BaseException | None = None
        for logger in ("absl", "asyncio"):  # orbax logs through absl; adding a filter twice is a no-op
            logging.getLogger(logger).addFilter(_QUIET)
        _quiet_unraisable()
        warnings.filterwarnings("ignore", _UNAWAITED_WRITE, RuntimeWarning)
        callback = ocp.AsyncOptions(post_finalization_callback=self._write_checksums)
        super().__init__(Path(directory), options=dataclasses.replace(options, async_options=callback))

    def _write_checksums(self) -> None:
        if jax.process_index() != 0:
            return
        temporary = Path(self.directory) / f"{self._saving}{TMP_DIR_SUFFIX}"
        checksums.write(temporary if temporary.is_dir() else Path(self.directory) / str(self._saving))

    def save(self, step: int, *args, **kwargs) -> bool:
        self.wait_until_finished()  # the step in flight gets its checksums under its own number
        self._saving = step
        return super().save(step, *args, **kwargs)

    def wait_until_finished(self) -> None:
        try:
            super().wait_until_finished()
        except Exception as error:
            if error is self._reported:  # raised once already; orbax keeps raising it at every wait
                return
            found = _no_space(error)
            if found is None:
                raise
            self._reported = error
            raise self._no_space_error(*found) from None

    def _no_space_error(self, code: int, filename: str | None) -> io.NoSpaceError:
        """The one error of a failed step: the file, the step, the last complete step; frees the space."""
        directory, step = Path(self.directory), self._saving
        if jax.process_index() == 0:
            shutil.rmtree(directory / f"{step}{TMP_DIR_SUFFIX}", ignore_errors=True)
        steps = [int(path.name) for path in directory.iterdir() if path.name.isdigit()]
        last = (
            f"the last complete step, {max(steps)}, is intact in {directory}: free space and rerun to resume"
            if steps
            else f"no complete step in {directory} yet"
        )
        return io.NoSpaceError(
            code,
            f"{os.strerror(code)} while saving checkpoint step {step} (discarded); {last}",
            filename or str(directory / f"{step}{TMP_DIR_SUFFIX}"),
        )
