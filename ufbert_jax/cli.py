"""How the command lines end on an error: an anticipated one is one line and exit status 2, an unexpected
one keeps its traceback (exit status 1).

`run(main, program)` is absl's `app.run(main)` for train.py, eval_glue.py, convert.py and
`python -m ufbert_jax.analysis`. Anticipated errors are the ones a user can fix from the message alone:
  * a bad command line: absl's flag errors (an unknown flag, a value of the wrong type, a missing required
    flag) and an unknown --config.FIELD, for which ml_collections suggests the field meant;
  * an error our own code raises to refuse an input or to stop a run, with a message that names what is
    wrong: an exception of ANTICIPATED_TYPES whose raise statement lies in this project (ufbert_jax/,
    kernels/, configs/, the entry points). That covers the project's errors (settings.ConfigError,
    io.FileFormatError, io.NoSpaceError, checksums.ChecksumError, lock.WorkdirBusyError,
    original_format.ConversionError, state_dict.StateDictError, NoRestorableStepError, NonFiniteLossError)
    and the FileNotFoundError, NotADirectoryError, FileExistsError and ValueError of our checks (a missing
    workdir, a path that is a file, an unknown GLUE task, a refused checkpoint).
Everything else is unexpected and keeps its traceback: the same types raised inside a library (a ValueError
from JAX or NumPy is a bug to report, not a user's mistake), AssertionError, and any other type.
KeyboardInterrupt is left to the entry points (train.py saves the step it is at).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from absl import app, flags

#: Exit status of an anticipated error (1, Python's own, stays an unexpected one's).
EXIT_ANTICIPATED = 2
#: Exception types that are anticipated when our own code raises them (see the module docstring).
ANTICIPATED_TYPES = (ValueError, TypeError, LookupError, OSError, RuntimeError, ArithmeticError)

_PACKAGE = Path(__file__).resolve().parent  # ufbert_jax/
_REPO = _PACKAGE.parent  # where configs/, kernels/ and the entry points are in a checkout
_OURS = (_PACKAGE, _REPO / "configs", _REPO / "kernels")
_ENTRY_POINTS = ("train.py", "eval_glue.py", "convert.py")


def _ours(filename: str) -> bool:
    path = Path(filename).resolve()
    return any(path.is_relative_to(folder) for folder in _OURS) or (
        path.parent == _REPO and path.name in _ENTRY_POINTS
    )


def _raised_in(traceback: TracebackType | None) -> str | None:
    """The file of the frame that raised (the innermost one of the traceback)."""
    if traceback is None:
        return None
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback.tb_frame.f_code.co_filename


def anticipated(error: BaseException) -> bool:
    """Whether `error` is one of ours to report in one line (see the module docstring)."""
    if isinstance(error, AssertionError) or not isinstance(error, ANTICIPATED_TYPES):
        return False
    raised_in = _raised_in(error.__traceback__)
    return raised_in is not None and _ours(raised_in)


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (a KeyError's message without the quotes str() adds)."""
    text = error.args[0] if isinstance(error, LookupError) and len(error.args) == 1 else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def _stop(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_ANTICIPATED)


def _flag_error(error: Exception) -> str | None:
    """The message of a bad command line, or None when parsing failed for another reason.

    ml_collections reports an unknown --config.FIELD as a KeyError (wrapped in an AttributeError) whose
    message holds the suggestion; absl reports the rest as flags.Error.
    """
    if isinstance(error, flags.Error):
        return str(error)
    while error is not None:
        if isinstance(error, KeyError | AttributeError) and "ml_collections" in (
            _raised_in(error.__traceback__) or ""
        ):
            cause = error.args[0] if error.args else error
            text = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
            return f"unknown config field {str(text).replace(chr(10), ': ')}"
        error = error.__cause__ or error.__context__
    return None


def _parser(program: str) -> Callable[[list[str]], list[str]]:
    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except Exception as error:
            message = _flag_error(error)
            if message is None:
                raise
            _stop(program, " ".join(f"{message} (see --helpshort)".split()))

    return parse


def run(main: Callable[[list[str]], int | None], program: str) -> None:
    """`absl.app.run(main)`, with an anticipated error (or a bad command line) reported as one line
    "PROGRAM: error: MESSAGE" on stderr and exit status 2; unexpected errors raise as before."""

    @functools.wraps(main)
    def guarded(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except Exception as error:
            if not anticipated(error):
                raise
            _stop(program, one_line(error))

    app.run(guarded, flags_parser=_parser(program))
