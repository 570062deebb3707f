"""The entry points' logging (train.py, eval_glue.py, convert.py, python -m ufbert_jax.analysis): `setup()`.

What it shows: this package's INFO lines (metrics, data preparation, resumes) and everyone else's warnings;
orbax logs every checkpoint step at INFO, and jax logs "Unable to initialize backend 'tpu'" at INFO on a
machine without one, so both stay quiet. Python warnings go through the same handler.

Where: stderr, one line each, "I 12:34:56 message", written with tqdm.write so that a line printed while a
progress bar is on screen lands above the bar instead of being glued onto its line.
"""

from __future__ import annotations

import logging
import sys

from absl import logging as absl_logging
from tqdm import tqdm

FORMAT = "%(levelname).1s %(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


class AboveProgressBars(logging.Handler):
    """Writes each record to stderr with tqdm.write: bars are cleared, the line written, the bars redrawn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup(package_level: int = logging.INFO) -> None:
    """Replaces absl's handler on the root logger with AboveProgressBars; the root at WARNING, the
    ufbert_jax loggers at `package_level`. Call it in an entry point's main (after absl's app.run has
    installed its own handler)."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, absl_logging.ABSLHandler | AboveProgressBars):
            root.removeHandler(handler)
    handler = AboveProgressBars()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ufbert_jax").setLevel(package_level)
    logging.captureWarnings(True)
