"""The command lines' errors (ufbert_jax.cli): an anticipated error is one line and exit status 2, an
unexpected one keeps its traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ufbert_jax import cli
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.train import settings

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    """A command line of the repo in a fresh interpreter (CPU only)."""
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )


def one_line_error(done: subprocess.CompletedProcess, program: str, *parts: str) -> None:
    """Exit status 2, and stderr's error is one line "PROGRAM: error: ..." holding every part."""
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for part in parts:
        assert part in errors[0], (part, errors[0])


def raised(function) -> BaseException:
    try:
        function()
    except BaseException as error:
        return error
    raise AssertionError("nothing raised")


def test_anticipated_means_one_of_our_checks_refused_an_input():
    assert cli.anticipated(raised(lambda: settings.check(settings_with(steps=-1))))
    assert cli.anticipated(raised(lambda: workdir_lib.load_config("/nonexistent")))  # FileNotFoundError
    assert not cli.anticipated(raised(lambda: json.loads("{")))  # a ValueError raised inside a library
    assert not cli.anticipated(raised(lambda: np.reshape(np.zeros(3), (2,))))
    assert not cli.anticipated(raised(lambda: cli._ours(None)))  # a TypeError inside pathlib
    assert not cli.anticipated(AssertionError("ours, but a bug"))
    assert cli.one_line(KeyError("'x'\nDid you mean 'y'?")) == "'x' Did you mean 'y'?"


def settings_with(**changes):
    from configs import tiny

    config = tiny.get_config()
    config.update(changes)
    return config


def test_train_py_names_an_unknown_field_with_its_suggestion_and_a_workdir_that_is_a_file(tmp_path):
    done = run("train.py", "--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.stepz=5")
    one_line_error(
        done, "train.py", "unknown config field 'stepz'", 'Did you mean "steps" instead of "stepz"?'
    )
    (tmp_path / "file").write_text("")
    done = run("train.py", "--config=configs/tiny.py", f"--workdir={tmp_path / 'file'}", "--config.steps=-1")
    one_line_error(done, "train.py", "invalid train config: steps=-1 must be an integer >= 0")
    done = run("train.py", "--config=configs/tiny.py", f"--workdir={tmp_path / 'file'}")
    one_line_error(done, "train.py", f"{tmp_path / 'file'} is a file, not a workdir")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """An original-format directory and the workdir converted from it."""
    from tests.test_original_format import original_state_dict, small_arch, write_original
    from ufbert_jax import original_format

    root = tmp_path_factory.mktemp("cli")
    arch = small_arch("fff-3x2")
    original = write_original(root / "original", arch, original_state_dict(arch, np.random.default_rng(0)))
    original_format.to_workdir(original, root / "workdir")
    return {"root": root, "original": original, "workdir": root / "workdir"}


def test_eval_glue_refuses_a_missing_workdir_an_unknown_task_and_a_changed_checkpoint(converted, tmp_path):
    from tests.test_train import change_bytes_keeping_the_size, largest_file

    done = run("eval_glue.py", f"--workdir={tmp_path / 'none'}", f"--glue_dir={tmp_path}")
    one_line_error(done, "eval_glue.py", f"{tmp_path / 'none' / 'model.json'} not found")
    done = run(
        "eval_glue.py", f"--workdir={converted['workdir']}", f"--glue_dir={tmp_path}", "--config.tasks=cloa"
    )
    one_line_error(done, "eval_glue.py", "unknown GLUE task 'cloa'")
    workdir = tmp_path / "workdir"
    shutil.copytree(converted["workdir"], workdir)
    changed = largest_file(workdir / "checkpoints" / "0" / "params")
    change_bytes_keeping_the_size(changed)
    done = run("eval_glue.py", f"--workdir={workdir}", f"--glue_dir={tmp_path}", "--config.tasks=rte")
    one_line_error(done, "eval_glue.py", f"{changed}: its content is not what was saved")


def test_convert_and_the_analysis_refuse_in_one_line(converted, tmp_path):
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    done = run("convert.py", f"--source={tmp_path / 'original'}", f"--workdir={tmp_path / 'w'}")
    one_line_error(done, "convert.py", "has no 'arch' dict")
    done = run(
        "-m",
        "ufbert_jax.analysis",
        f"--workdir={converted['original'] / 'config.json'}",
        "--text=x",
        "--out=o",
    )
    one_line_error(done, "python -m ufbert_jax.analysis", "config.json is a file, not a workdir")
