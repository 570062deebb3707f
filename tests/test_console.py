"""What the entry points print: the closing summary, a finished run rerun, log lines above progress bars,
quiet converter output; and the corpus flag alone on the tiny config (new shards and tokenizer)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import tiny
from ufbert_jax.data import shards
from ufbert_jax.train import console

REPO = Path(__file__).resolve().parents[1]


def test_summary_names_the_numbers_and_the_files(tmp_path):
    records = [
        {"step": 10, "train/loss": 8.1, "elapsed_s": 5.0},
        {"step": 20, "train/loss": 7.0, "elapsed_s": 10.0},
        {"step": 20, "eval/loss": 7.25},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step in (10, 20):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    config = tiny.get_config()  # microbatch 32, seq_len 128: 4096 tokens a step
    lines = console.summary(config, tmp_path).splitlines()
    assert lines == [
        f"{tmp_path}: finished",
        "  trained        20 steps (81,920 tokens) in 10.0s, 8,192 tokens/s",
        "  train loss     7 (mean of steps 11-20)",
        "  held-out loss  7.25 (step 20)",
        f"  checkpoint     {tmp_path / 'checkpoints' / '20'}",
        f"  metrics        {tmp_path / 'metrics.jsonl'}",
        f"  loss curve     {tmp_path / 'loss.png'}",
    ]
    again = console.summary(config, tmp_path, already_finished=True).splitlines()
    assert again[0].startswith(f"{tmp_path}: this run had already finished, nothing left to train")
    assert "--config.steps" in again[0] and again[1:] == lines[1:]
    assert [console.duration(s) for s in (4.25, 125, 3723)] == ["4.2s", "2m05s", "1h02m03s"]


def test_the_corpus_flag_alone_trains_new_shards_and_tokenizer_and_summarises(tmp_path):
    """train.py --config=configs/tiny.py with only --config.data.sources changed (and a small budget), in a
    fresh folder: the shards and the tokenizer of that corpus are derived under runs/shards/, the run prints
    its summary, log lines stand on their own lines beside the progress bar, and a rerun says it had
    finished."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    emma = (REPO / "data" / "sample" / "austen_emma.txt").read_bytes()
    (corpus / "emma.txt").write_bytes(emma[:150_000])
    command = [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={REPO / 'configs' / 'tiny.py'}",
        "--workdir=work",
        f"--config.data.sources={corpus}",
        "--config.model_overrides.vocab_size=512",
        "--config.steps=3",
        "--config.microbatch=8",
        "--config.final_batch=8",
        "--config.log_every=1",
        "--config.eval_every=3",
        "--config.eval_batches=1",
        "--config.checkpoint_every=3",
    ]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "runs" / "shards").iterdir()
    assert folder.name == shards.folder_name([str(corpus)], 512, 128)
    assert shards.read_manifest(folder)["sources"] == [str(corpus)]
    assert shards.tokenizer_sources(folder / "tokenizer.json") == [str(corpus)]  # trained on it
    assert (tmp_path / "work" / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    summary = done.stdout.splitlines()
    assert summary[0] == "work: finished" and "  trained        3 steps (3,072 tokens) in" in summary[1]
    assert re.fullmatch(r"  held-out loss  \d+(\.\d+)? \(step 3\)", summary[3])
    assert summary[4:] == [
        "  checkpoint     work/checkpoints/3",
        "  metrics        work/metrics.jsonl",
        "  loss curve     work/loss.png",
    ]
    # Log lines start a line of their own: nothing of the bar is glued in front of them.
    segments = re.split(r"[\r\n]", done.stderr)
    logged = [s for s in segments if "step=1 " in s]
    assert logged and all(re.match(r"I \d\d:\d\d:\d\d step=1 train/", s) for s in logged), done.stderr
    assert any("3/3" in s for s in segments)  # the progress bar ran
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("work: this run had already finished, nothing left to train")
    assert again.stdout.splitlines()[1:] == summary[1:]
    assert "step/s" not in again.stderr  # no progress bar for nothing


def test_convert_is_quiet(tmp_path, rng):
    from tests.test_original_format import convert_script, original_state_dict, small_arch, write_original

    arch = small_arch("fff-1x3")
    original = write_original(tmp_path / "original", arch, original_state_dict(arch, rng))
    done = convert_script(f"--source={original}", f"--workdir={tmp_path / 'work'}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no orbax INFO lines, no "Unable to initialize backend 'tpu'"
    assert len(done.stdout.splitlines()) == 1


@pytest.mark.parametrize("script", ["train.py", "eval_glue.py"])
def test_show_config_lists_every_field_and_exits_without_a_workdir(script, tmp_path):
    config = ["--config=configs/tiny.py"] if script == "train.py" else []
    done = subprocess.run(
        [sys.executable, script, *config, "--show_config", "--config.seed=7"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(re.fullmatch(r"seed = 7 +# seed of .*", line) for line in lines), done.stdout
    assert all(" = " in line and "  # " in line for line in lines)
    assert "(no description)" not in done.stdout
