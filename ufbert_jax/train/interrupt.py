"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

A KeyboardInterrupt raised at an arbitrary point of the loop can land while orbax's background thread
writes a checkpoint, and the interpreter then aborts on exit ("Fatal Python error: Aborted"). Instead,
`StopSignals` turns the first SIGINT or SIGTERM into a request that the loop reads between steps: it saves
the step it is at, waits for the write, and raises `TrainingInterrupted`. A second signal quits at once
with os._exit (as a SIGKILL would: the last complete checkpoint stays, the write in flight is discarded).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

log = logging.getLogger("ufbert_jax.train")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int, step: int, saved: int | None, workdir: Path):
        self.signum, self.step, self.saved, self.exit_code = signum, step, saved, 128 + signum
        where = (
            f"checkpoint step {saved} in {workdir}: rerun the same command to resume from it"
            if saved is not None
            else f"no checkpoint in {workdir} yet: a rerun starts from the beginning"
        )
        super().__init__(f"{signal.Signals(signum).name} at step {step}; {where}")


class StopSignals:
    """A context manager: while active, SIGINT and SIGTERM set `signum` instead of raising.

    Only the main thread of a single-process run installs the handlers: signals reach threads other than
    the main one never, and in a multi-host run every process would have to agree on the step to stop at.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signum is not None:
            log.warning("%s again: quitting at once", signal.Signals(signum).name)
            os._exit(128 + signum)
        self.signum = signum
        log.warning(
            "%s: stopping after this step and saving it (send it again to quit at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignals:
        if self.enabled:
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
