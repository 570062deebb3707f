"""Pretraining: schedule, optimizer, sparse-prediction loss, train loop, checkpoints and resume, devices.

The loop tests run on a tiny-fff model with 16-token sequences and random batches (RandomBatches, the data
loader's interface); the end-to-end test on data/sample needs the data pipeline.
"""

from __future__ import annotations

import ast
import errno
import functools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import recipe
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig, preset
from ufbert_jax.model import MaskedLM
from ufbert_jax.train import checkpointing, inputs, lock, loop, metrics, optim, plot, settings
from ufbert_jax.train.steps import mlm_loss

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN, PREDICTIONS = 16, 4


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """A train config for tests: the recipe on tiny-fff, float32, 16-token sequences, logged every step."""
    config = recipe.base_config()
    config.model_overrides = dict(fff_impl="masked", max_len=SEQ_LEN)  # replaces the recipe's bf16
    config.update(
        dict(
            model="tiny-fff",
            seq_len=SEQ_LEN,
            microbatch=8,
            final_batch=16,
            ramp_fraction=0.5,
            steps=4,
            budget_hours=0.0,
            checkpoint_every=2,
            keep_checkpoints=5,
            log_every=1,
            eval_every=0,
            eval_batches=2,
            progress_bar=False,
        )
    )
    config.update(overrides)
    return config


class RandomBatches:
    """Deterministic random MLM batches with the data loader's interface (its state: batches consumed)."""

    def __init__(self, config, model_cfg: ModelConfig, stop_after: int | None = None):
        self.batch, self.vocab, self.index, self.stop_after = (
            config.microbatch,
            model_cfg.vocab_size,
            0,
            stop_after,
        )

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index == self.stop_after:
            raise Interrupted(f"stopped after {self.index} batches")
        rng = np.random.default_rng(self.index)
        self.index += 1
        ids = rng.integers(8, self.vocab, (self.batch, SEQ_LEN), dtype=np.int32)  # [B, S]
        positions = np.argsort(rng.random((self.batch, SEQ_LEN)), axis=1)[:, :PREDICTIONS]  # [B, P]
        # A learnable task: each masked token's label is its left neighbour.
        labels = np.take_along_axis(ids, np.maximum(positions - 1, 0), axis=1)  # [B, P]
        np.put_along_axis(ids, positions, 3, axis=1)
        return {"input_ids": ids, "positions": positions.astype(np.int32), "labels": labels}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = state["index"]


class Interrupted(Exception):
    pass


def run_train(config, workdir, stop_after=None) -> dict:
    model_cfg = loop.model_config(config)
    return loop.train(config, workdir, model_cfg, RandomBatches(config, model_cfg, stop_after))


def saved_state(workdir, step) -> dict:
    """The raw arrays of a checkpoint step, read without any target (as a fresh process would)."""
    import orbax.checkpoint as ocp

    with workdir_lib.manager(workdir) as mngr:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(),
                train=ocp.args.StandardRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
    return {name: restored[name] for name in ("params", "train", "meta")}


# ---- schedule, ramp, optimizer ---------------------------------------------------------------------------


def test_budget_schedule_is_the_triangle():
    p = np.linspace(0, 1, 101)
    got = np.array([optim.budget_schedule(x) for x in p])
    np.testing.assert_allclose(got, np.minimum(0.25 + p, 4 - 4 * p), atol=1e-12)
    assert optim.budget_schedule(0.0) == 0.25
    assert optim.budget_schedule(0.75) == 1.0
    assert optim.budget_schedule(1.0) == 0.0
    assert optim.budget_schedule(1.5) == 0.0 and optim.budget_schedule(-1.0) == 0.25
    assert np.argmax(got) == 75


def test_progress_by_steps_and_by_time():
    by_steps = loop.Budget.of(tiny_config(steps=200))
    assert by_steps.progress(step=150, first_step=100, elapsed=1e9) == 0.25  # converted checkpoint at 100
    by_time = loop.Budget.of(tiny_config(steps=0, budget_hours=2.0))
    assert by_time.progress(step=10**6, first_step=0, elapsed=5400.0) == 0.75
    assert optim.budget_schedule(by_time.progress(0, 0, 5400.0)) == 1.0
    with pytest.raises(ValueError, match="steps >= 1 or budget_hours > 0"):
        loop.Budget.of(tiny_config(steps=0, budget_hours=0.0))


def test_batch_ramp_accumulation_counts():
    # The recipe: microbatch 128, final 8192 (64 microbatches) reached at 60% of the budget.
    counts = [optim.accumulation_steps(p, 128, 8192, 0.6) for p in np.linspace(0, 1, 1001)]
    assert counts[0] == 1 and counts[600] == 64 and counts[-1] == 64
    assert np.all(np.diff(counts) >= 0)
    assert counts[300] == 33  # half way up the ramp: floor(0.5 * 64) + 1
    assert optim.accumulation_steps(0.0, 128, 8192, 0.0) == 64
    with pytest.raises(ValueError, match="multiple"):
        optim.accumulation_steps(0.0, 128, 1000, 0.6)


def test_accumulation_applies_the_mean_every_k_microbatches():
    tx = optim.accumulate_gradients(optax.sgd(1.0))
    params = {"w": jnp.zeros(3)}
    state, host = tx.init(params), optim.Accumulation()
    grads = [{"w": jnp.full(3, float(i + 1))} for i in range(6)]
    applied = []
    for g, k in zip(grads, (1, 2, 2, 2, 3, 3), strict=True):
        updates, state = tx.update(g, state, params, apply_update=host.due(k))
        applied.append(float(updates["w"][0]))
        assert int(state.micro_steps) == host.pending  # the host's count mirrors the state's
    # k=1: applies g1; then (g2, g3) as their mean; g4 waits, and the ramp to 3 applies (g4, g5, g6).
    assert applied == [-1.0, 0.0, -2.5, 0.0, 0.0, -5.0]


def real_params(name="tiny-fff") -> dict:
    return workdir_lib.params_of(MaskedLM(preset(name, fff_impl="masked"), nnx.Rngs(0)))


@pytest.mark.parametrize("name", ["tiny-fff", "tiny-dense"])
def test_no_weight_decay_on_norms_biases_and_position_scale(name):
    config = optim.OptimizerConfig()
    tx = optim.make_optimizer(config)
    params = real_params(name)
    zeros = jax.tree.map(jnp.zeros_like, params)
    # With zero gradients Adam's step is exactly 0, so the update is the weight decay alone.
    updates, _ = jax.jit(functools.partial(tx.update, apply_update=True))(
        zeros, tx.init(params), params, lr_multiplier=0.5
    )
    decayed, kept = set(), set()
    for path, update in jax.tree_util.tree_leaves_with_path(updates):
        leaf = path[-1].key
        (decayed if np.any(np.asarray(update)) else kept).add(leaf)
    expected_decayed = {"kernel", "embedding"} | ({"w_in", "w_out"} if name == "tiny-fff" else set())
    assert decayed == expected_decayed
    assert kept == {"scale", "bias", "position_scale"} | ({"b_in"} if name == "tiny-fff" else set())
    word = params["encoder"]["embedding"]["word"]["embedding"]
    np.testing.assert_allclose(
        updates["encoder"]["embedding"]["word"]["embedding"],
        -config.lr * 0.5 * config.weight_decay * word,
        rtol=1e-6,
    )


@pytest.mark.parametrize("norm", [10.0, 0.1])
def test_gradient_clipped_to_global_norm_half(norm, rng):
    tx = optim.make_optimizer(optim.OptimizerConfig())
    params = real_params()
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    grads = jax.tree.map(lambda g: g * norm / optax.tree.norm(grads), grads)
    _, state = jax.jit(functools.partial(tx.update, apply_update=True))(
        grads, tx.init(params), params, lr_multiplier=1.0
    )
    # Adam's second moment after one step is (1 - b2) g^2 of the gradient it saw, i.e. after clipping.
    nu = optax.tree.get(state, "nu")
    seen = float(jnp.sqrt(sum(jnp.sum(v) for v in jax.tree.leaves(nu)) / (1 - 0.98)))
    np.testing.assert_allclose(seen, min(norm, 0.5), rtol=1e-4)


# ---- loss -------------------------------------------------------------------------------------------------


def test_sparse_prediction_loss_matches_numpy_cross_entropy(rng):
    model = MaskedLM(preset("tiny-fff", fff_impl="masked"), nnx.Rngs(1))
    model.eval()  # no dropout: both passes must see the same network
    ids = rng.integers(0, 512, (3, 12)).astype(np.int32)
    positions = np.stack([rng.choice(12, 5, replace=False) for _ in range(3)]).astype(np.int32)  # [B, P]
    labels = rng.integers(0, 512, (3, 5)).astype(np.int32)
    labels[1, 2] = labels[2, 0] = -1  # ignored
    loss, metrics = mlm_loss(model, {"input_ids": ids, "positions": positions, "labels": labels})

    logits = np.asarray(model(jnp.asarray(ids)), np.float64)  # [B, S, V], every position decoded
    picked = np.take_along_axis(logits, positions[..., None], axis=1)  # [B, P, V]
    log_z = np.log(np.exp(picked - picked.max(-1, keepdims=True)).sum(-1)) + picked.max(-1)
    counted = labels >= 0
    nll = log_z - np.take_along_axis(picked, np.maximum(labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), nll[counted].mean(), rtol=1e-5)
    accuracy = (picked.argmax(-1) == labels)[counted].mean()
    np.testing.assert_allclose(float(metrics["accuracy"]), accuracy, atol=1e-7)
    assert int(metrics["predictions"]) == counted.sum()


# ---- the loop ---------------------------------------------------------------------------------------------


def test_two_step_smoke(tmp_path):
    record = run_train(tiny_config(steps=2, checkpoint_every=1), tmp_path)
    assert record["step"] == 2 and np.isfinite(record["train/loss"]) and record["lr"] > 0
    assert workdir_lib.checkpoint_items(tmp_path, 2) >= {"params", "train", "meta"}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_time_budget_stops_by_the_clock(tmp_path):
    record = run_train(tiny_config(steps=0, budget_hours=1e-9), tmp_path)
    assert record["step"] == 1 and record["progress"] == 1.0


def test_four_steps_equal_two_then_resume_then_two_bitwise(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(tiny_config(), straight)
    with pytest.raises(Interrupted):
        run_train(tiny_config(), resumed, stop_after=3)  # saved at step 2, mid-accumulation (k=2)
    assert workdir_lib.manager(resumed).latest_step() == 2
    run_train(tiny_config(), resumed)  # fresh objects, everything from the workdir
    a, b = saved_state(straight, 4), saved_state(resumed, 4)
    for tree in ("params", "train"):
        leaves_a = jax.tree_util.tree_leaves_with_path(a[tree])
        leaves_b = jax.tree.leaves(b[tree])
        assert len(leaves_a) == len(leaves_b) > 10
        for (path, x), y in zip(leaves_a, leaves_b, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{tree} {path}")
    assert a["meta"]["data_state"] == b["meta"]["data_state"] == [{"index": 4}]
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the record of step 3 before the interruption was replaced


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # lr 1e38 makes the first update enormous but finite; the next forward pass overflows.
    config = tiny_config(checkpoint_every=1, optimizer=dict(tiny_config().optimizer, lr=1e38))
    with pytest.raises(metrics.NonFiniteLossError, match=r"at step 2.*step 1 in"):
        run_train(config, tmp_path)
    assert workdir_lib.manager(tmp_path).latest_step() == 1
    model = MaskedLM(loop.model_config(config), nnx.Rngs(5))
    assert workdir_lib.restore_params(tmp_path, model) == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(workdir_lib.params_of(model)))


def test_continues_from_a_params_only_checkpoint_with_a_fresh_optimizer(tmp_path):
    config = tiny_config(steps=2)
    converted = MaskedLM(loop.model_config(config), nnx.Rngs(7))
    workdir_lib.save_params(tmp_path, 100, converted)
    record = run_train(config, tmp_path)
    assert record["step"] == 102 and record["lr"] == pytest.approx(0.75e-3)  # p = 1/2 of a fresh budget
    meta = saved_state(tmp_path, 102)["meta"]
    assert meta["first_step"] == 100


def test_bad_configs_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'ultrafastbert-x'"):
        loop.model_config(tiny_config(model="ultrafastbert-x"))
    with pytest.raises(ValueError, match=r"seq_len=64 must be in 1\.\.16"):
        loop.train_and_evaluate(tiny_config(seq_len=64), tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("optimizer.lr", -1e-3, "a finite number > 0"),
        ("checkpoint_every", -1, r"an integer >= 0 \(0: save only at the end"),
        ("optimizer.b2", 1.0, r"a finite number in \[0, 1\)"),
    ],
)
def test_settings_are_checked_before_the_workdir_is_written(tmp_path, field, value, allowed):
    """A negative learning rate used to train (exit 0), checkpoint_every=-1 to mean "only at the end"."""

    def with_value(config):
        section, _, name = field.rpartition(".")
        (config[section] if section else config)[name] = value
        return config

    with pytest.raises(settings.ConfigError, match=rf"{re.escape(field)}={value!r} must be {allowed}"):
        run_train(with_value(tiny_config()), tmp_path / "work")
    assert not (tmp_path / "work").exists()
    with pytest.raises(settings.ConfigError, match=re.escape(field)):  # before the corpus is looked at
        loop.train_and_evaluate(with_value(data_config(tmp_path, [tmp_path / "none"])), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_every_setting_has_a_rule_and_all_problems_are_listed_at_once():
    config = tiny_config(microbatch=8, final_batch=12, steps=0, budget_hours=0.0, seed=-1, eval_batches=0)
    config.optimizer.clip_norm = float("nan")
    config.data.worker_count = True  # a bool is not an integer
    found = settings.problems(config)
    text = "; ".join(found)
    for part in (
        "eval_batches=0 must be an integer >= 1",
        "seed=-1 must be an integer in [0, 2147483647)",
        "optimizer.clip_norm=nan must be a finite number > 0",
        "data.worker_count=True must be an integer >= 0",
        "final_batch=12 must be a multiple of microbatch=8",
        "need a budget: steps >= 1 or budget_hours > 0 (got steps=0, budget_hours=0.0)",
    ):
        assert part in text, (part, text)
    assert len(found) == 6
    numeric = {
        key
        for key, value in _flat(recipe.base_config()).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    assert numeric == set(settings.RULES), numeric ^ set(settings.RULES)
    assert settings.problems(tiny_config()) == []


def _flat(config, prefix="") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict | dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_resume_refuses_a_different_model(tmp_path):
    checkpointing.prepare_workdir(tmp_path, preset("tiny-fff"), REPO / "tests" / "test_train.py")
    with pytest.raises(ValueError, match=r"different model.*'hidden': \(64, 32\)"):
        checkpointing.check_resume(tmp_path, tiny_config(), preset("tiny-fff", hidden=32))


MULTI_DEVICE = """
import json, sys
import jax, numpy as np
from tests.test_train import run_train, saved_state, tiny_config
assert jax.device_count() == 8, jax.devices()
out = {}
for n in (1, 8):
    config = tiny_config(steps=2, final_batch=8, num_devices=n, checkpoint_every=2)
    record = run_train(config, sys.argv[1] + f"/{n}")
    state = saved_state(sys.argv[1] + f"/{n}", 2)
    out[n] = dict(record=record, **{tree: jax.tree.leaves(state[tree]) for tree in ("params", "train")})
for key in ("train/loss", "train/grad_norm"):
    np.testing.assert_allclose(out[8]["record"][key], out[1]["record"][key], rtol=1e-5)
for tree in ("params", "train"):
    for x, y in zip(out[8][tree], out[1][tree], strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
print("MATCH")
"""


def test_eight_devices_match_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "MATCH" in result.stdout, result.stderr[-4000:]


KILLABLE = """
import sys
from tests.test_train import run_train, tiny_config
run_train(tiny_config(steps=10**6, checkpoint_every=3, log_every=3), sys.argv[1])
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, rng):
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tmp_path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "checkpoints" / "3").is_dir():
            assert process.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.2)
        time.sleep(rng.uniform(0, 3))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved = workdir_lib.manager(tmp_path).latest_step()
    assert saved % 3 == 0
    resumed_from = saved_state(tmp_path, saved)["meta"]["step"]
    record = run_train(tiny_config(steps=saved + 3, checkpoint_every=3, log_every=3), tmp_path)
    assert resumed_from == saved and record["step"] == saved + 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


# ---- with the data pipeline ------------------------------------------------------------------------------


def data_config(tmp_path, sources, **overrides):
    return tiny_config(
        data=dict(
            sources=[str(s) for s in sources],
            shard_dir=str(tmp_path / "shards"),
            tokenizer=str(tmp_path / "shards" / "tokenizer.json"),
            worker_count=0,
        ),
        model_overrides=dict(fff_impl="masked", vocab_size=1024),
        seq_len=16,
        **overrides,
    )


def test_evaluation_holds_out_the_tail_of_the_shards():
    assert inputs.held_out_rows(tiny_config(eval_every=0), 100) == 0  # no evaluation: train on every row
    config = tiny_config(eval_every=2, eval_batches=3, microbatch=8)
    assert inputs.held_out_rows(config, 48) == 24
    rule = r"3 x 8 = 24 rows, but at most half of the shards' 47 rows \(23\) may be held out"
    with pytest.raises(ValueError, match=rf"{rule}.*set --config.eval_batches=2, --config.eval_every=0"):
        inputs.held_out_rows(config, 47)
    with pytest.raises(ValueError, match=r"\(7\) may be held out.*: set --config.eval_every=0 \(no eval"):
        inputs.held_out_rows(config, 15)  # not even one microbatch fits: no eval_batches to suggest


def test_the_loss_plot_has_a_linear_axis_with_readable_ticks():
    records = [{"step": s, "train/loss": 8.3 - 0.014 * s} for s in range(10, 151, 10)]
    records.append({"step": 150, "eval/loss": 6.4})
    ax = plot.loss_figure(records).axes[0]
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert ax.get_yscale() == "linear" and len(ticks) >= 4  # 8.2 .. 6.2 spans a factor of 1.3
    assert [line.get_label() for line in ax.get_lines()] == ["train", "held-out"]


def test_data_paths_derive_from_the_corpus_unless_given(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "DERIVED_ROOT", tmp_path / "derived")
    work = tmp_path / "work"

    def paths(sources, **data):
        config = tiny_config(data=dict(sources=sources, shard_dir="", tokenizer="", worker_count=0) | data)
        return inputs.data_paths(config, work, vocab_size=1024)

    shard_dir, tokenizer = paths(["data/sample"])
    assert shard_dir.parent == tmp_path / "derived" and shard_dir.name.startswith("sample-1024-")
    assert tokenizer == shard_dir / "tokenizer.json"
    other, other_tokenizer = paths(["/corpus/books"])  # only the sources change: new folder, new tokenizer
    assert other.name.startswith("books-1024-") and other_tokenizer == other / "tokenizer.json"
    config = tiny_config(seq_len=8, data=dict(sources=["data/sample"], shard_dir="", tokenizer=""))
    assert inputs.data_paths(config, work, 1024)[0] != shard_dir  # seq_len too
    assert inputs.data_paths(config, work, 2048)[0] != shard_dir  # and the vocabulary size
    given = tmp_path / "mine"
    assert paths(["data/sample"], shard_dir=str(given)) == (given, given / "tokenizer.json")
    explicit = dict(
        shard_dir=".device/shards", tokenizer=".device/shards/tokenizer.json"
    )  # h200_recipe's form
    assert paths(["data/sample"], **explicit) == (
        Path(".device/shards"),
        Path(".device/shards/tokenizer.json"),
    )
    assert paths(["data/sample"], tokenizer=str(tmp_path / "t.json")) == (shard_dir, tmp_path / "t.json")
    # An existing tokenizer not trained in the derived folder gets a folder of its own ...
    (tmp_path / "t.json").write_text("a tokenizer")
    own, _ = paths(["data/sample"], tokenizer=str(tmp_path / "t.json"))
    assert own != shard_dir and own.name.startswith("sample-1024-")
    # ... and the workdir's copy of the derived folder's tokenizer (a resumed run) goes back to that folder.
    shard_dir.mkdir(parents=True)
    (shard_dir / "tokenizer.json").write_text("trained here")
    work.mkdir()
    (work / "tokenizer.json").write_text("trained here")
    assert paths(["data/sample"]) == (shard_dir, work / "tokenizer.json")


@pytest.mark.parametrize("corpus", ["missing", "empty"])
def test_missing_or_empty_corpus_fails_cleanly(tmp_path, corpus):
    pytest.importorskip("ufbert_jax.data.shards")
    source = tmp_path / "corpus"
    if corpus == "empty":
        source.mkdir()
        (source / "a.txt").write_text("")
    with pytest.raises((FileNotFoundError, ValueError)):
        loop.train_and_evaluate(data_config(tmp_path, [source]), tmp_path / "work")
    assert not (tmp_path / "work" / workdir_lib.MODEL_CONFIG_FILE).exists()
    assert not (tmp_path / "work" / workdir_lib.CHECKPOINT_DIR).exists()


@pytest.mark.slow
def test_end_to_end_on_the_sample_corpus(tmp_path):
    pytest.importorskip("ufbert_jax.data.loader")
    config = data_config(
        tmp_path, [REPO / "data" / "sample"], steps=30, checkpoint_every=15, log_every=5, eval_every=15
    )
    record = loop.train_and_evaluate(config, tmp_path / "work")
    records = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert train_losses[-1] < train_losses[0]
    assert np.isfinite(record["eval/loss"])
    assert workdir_lib.load_pretrained(tmp_path / "work").cfg.vocab_size == 1024


# ---- robustness: the corpus flag, damaged checkpoints, the metrics log, resume checks, Ctrl-C -------------

PARSE_FLAGS = """
import json, sys
from absl import flags
import train
out = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["train.py", "--config=configs/tiny.py", "--workdir=/tmp/unused", *args]
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)  # config_flags reads the --config.FIELD overrides from sys.argv
    flag_values(sys.argv)
    out.append(list(flag_values.config.data.sources))
print(json.dumps(out))
"""


def documented_source_flags() -> list[str]:
    """Every --config.data.sources=... of the commands in the README, docs/pretraining.md and the configs."""
    files = [REPO / "README.md", REPO / "docs" / "pretraining.md", *REPO.glob("configs/*.py")]
    flags = []
    for path in files:
        for line in path.read_text().splitlines():
            command = line.strip().startswith(
                ("python train.py", "--config.")
            )  # a command or its continuation
            if command and "--config.data.sources=" in line:
                words = shlex.split(line.split("#")[0].replace("\\", " "))
                flags += [word for word in words if word.startswith("--config.data.sources=")]
    return flags


def test_the_corpus_is_chosen_from_the_command_line_as_documented():
    documented = documented_source_flags()
    assert len(documented) >= 3  # README, docs/pretraining.md, the two paper configs
    forms = [
        ["--config.data.sources=hf:EleutherAI/pile"],
        ["--config.data.sources=/path/to/corpus"],
        ['--config.data.sources=("/path/a", "hf:wikipedia:20220301.en")'],
        ["--config.data.sources=/path/a", "--config.data.sources=tfds:wiki40b/en"],
    ]
    result = subprocess.run(
        [sys.executable, "-c", PARSE_FLAGS, json.dumps(forms + [[flag] for flag in documented])],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.splitlines()[-1])
    assert parsed[: len(forms)] == [
        ["hf:EleutherAI/pile"],
        ["/path/to/corpus"],
        ["/path/a", "hf:wikipedia:20220301.en"],
        ["/path/a", "tfds:wiki40b/en"],
    ]
    for flag, sources in zip(documented, parsed[len(forms) :], strict=True):
        value = flag.split("=", 1)[1]
        assert sources == (list(ast.literal_eval(value)) if value.startswith("(") else [value]), flag


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    """A workdir trained 4 steps with checkpoints at 2 and 4 (copied, never changed, by the tests)."""
    workdir = tmp_path_factory.mktemp("four_steps")
    run_train(tiny_config(), workdir)
    return workdir


def copy_workdir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def step_dir(workdir: Path, step: int) -> Path:
    return workdir / workdir_lib.CHECKPOINT_DIR / str(step)


def largest_file(folder: Path) -> Path:
    return max((path for path in folder.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)


def delete_a_data_file(workdir):
    largest_file(step_dir(workdir, 4) / "params").unlink()
    return 4, "params"


def truncate_a_data_file(workdir):
    path = largest_file(step_dir(workdir, 4) / "train")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return 4, "train"


def change_bytes_keeping_the_size(path: Path) -> None:
    """Inverts 16 bytes in the middle of `path`: its size and its format stay valid, its content does not."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def change_params_bytes(workdir):
    change_bytes_keeping_the_size(largest_file(step_dir(workdir, 4) / "params"))
    return 4, "params"


def change_train_bytes(workdir):
    change_bytes_keeping_the_size(largest_file(step_dir(workdir, 4) / "train"))
    return 4, "train"


def empty_newer_step(workdir):
    step_dir(workdir, 6).mkdir()
    return 6, "has no meta, params, train"


def partial_step(workdir):
    shutil.rmtree(step_dir(workdir, 4) / "params")
    return 4, "has no params"


def truncated_meta(workdir):
    path = next(
        path for path in (step_dir(workdir, 4) / "meta").iterdir() if path.name != "commit_success.txt"
    )
    path.write_text(path.read_text()[:10])
    return 4, "meta does not read"


def no_optimizer_state(workdir):
    shutil.rmtree(step_dir(workdir, 4) / "train")
    return 4, "has no train"


@pytest.mark.parametrize(
    "damage",
    [
        delete_a_data_file,
        truncate_a_data_file,
        change_params_bytes,
        change_train_bytes,
        empty_newer_step,
        partial_step,
        truncated_meta,
        no_optimizer_state,
    ],
)
def test_a_damaged_latest_step_falls_back_to_the_newest_that_restores(tmp_path, four_steps, damage, caplog):
    workdir = copy_workdir(four_steps, tmp_path / "work")
    damaged, reason = damage(workdir)
    caplog.set_level(logging.INFO, logger="ufbert_jax")
    record = run_train(tiny_config(steps=6), workdir)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and f"step {damaged} skipped" in skipped[0] and reason in skipped[0], skipped
    assert str(step_dir(workdir, damaged)) in skipped[0]  # names the step folder (and the item, above)
    assert not any("converted weights" in r.getMessage() for r in caplog.records)
    resumed_from = 4 if damaged == 6 else 2
    assert f"resuming from checkpoint step {resumed_from}" in caplog.text
    # The run went on from the step that restored, with its optimizer state and data position.
    assert record["step"] == 6
    meta = saved_state(workdir, 6)["meta"]
    assert meta["first_step"] == 0 and meta["data_state"] == [{"index": 6}]
    assert (workdir / checkpointing.DAMAGED_DIR / str(damaged)).is_dir()
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_stops_the_run_with_one_error_naming_the_file_and_keeps_the_last_step(
    tmp_path, four_steps, monkeypatch
):
    """Writing step 6 finds no room (its checksums, the last file of the step): one NoSpaceError names the
    file, the failed step is discarded, step 4 is intact, and a rerun with room resumes from it."""
    from ufbert_jax import io

    workdir = copy_workdir(four_steps, tmp_path / "work")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", no_space)
    with pytest.raises(io.NoSpaceError) as raised:
        run_train(tiny_config(steps=6), workdir)
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(
        step_dir(workdir, 6).with_name("6.orbax-checkpoint-tmp") / "checksums.json"
    )
    assert "while saving checkpoint step 6 (discarded); the last complete step, 4, is intact" in str(
        raised.value
    )
    assert sorted(p.name for p in (workdir / workdir_lib.CHECKPOINT_DIR).iterdir()) == ["2", "4"]
    assert run_train(tiny_config(steps=6), workdir)["step"] == 6


def test_no_restorable_step_is_an_error_listing_each_step(tmp_path, four_steps):
    workdir = copy_workdir(four_steps, tmp_path / "work")
    for step in (2, 4):
        shutil.rmtree(step_dir(workdir, step) / "train")
    before = sorted(str(path.relative_to(workdir)) for path in workdir.rglob("*"))
    with pytest.raises(
        RuntimeError, match=r"no checkpoint step .* restores:\n  step 4: .*has no train.*\n  step 2"
    ):
        run_train(tiny_config(steps=6), workdir)
    assert sorted(str(path.relative_to(workdir)) for path in workdir.rglob("*")) == before


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, four_steps, caplog):
    workdir = copy_workdir(four_steps, tmp_path / "work")
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')  # a kill in the middle of a write
    caplog.set_level(logging.WARNING, logger="ufbert_jax")
    run_train(tiny_config(steps=6), workdir)
    assert "metrics.jsonl: dropping the last line (torn by a kill mid-write)" in caplog.text
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_replaces_metrics_jsonl_atomically(tmp_path, four_steps):
    workdir = copy_workdir(four_steps, tmp_path / "work")
    path = workdir / "metrics.jsonl"
    before = path.read_text()
    shutil.rmtree(step_dir(workdir, 4))  # resume at 2: the records of steps 3 and 4 are dropped
    inode = path.stat().st_ino
    with pytest.raises(Interrupted):
        run_train(tiny_config(steps=6), workdir, stop_after=2)  # stops before its first step
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not a rewrite in place
    assert path.read_text() == "".join(line + "\n" for line in before.splitlines()[:2])
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".")]  # no temporary file left


class EvalBatches:
    """eval_batches() for run_train: two random batches; `fail_first` raises at the first call (a crash
    between a checkpoint's save and its evaluation)."""

    def __init__(self, config, fail_first: bool):
        self.config, self.fail, self.calls = config, fail_first, 0

    def __call__(self):
        self.calls += 1
        if self.fail and self.calls == 1:
            raise Interrupted("crashed before the evaluation")
        batches = RandomBatches(self.config, loop.model_config(self.config))
        batches.set_state({"index": 1000})
        return [next(batches) for _ in range(2)]


def test_the_eval_of_a_checkpointed_step_is_recomputed_after_a_crash(tmp_path):
    config = tiny_config(steps=4, eval_every=2)
    model_cfg = loop.model_config(config)
    with pytest.raises(Interrupted):
        loop.train(config, tmp_path, model_cfg, RandomBatches(config, model_cfg), EvalBatches(config, True))
    assert workdir_lib.manager(tmp_path).latest_step() == 2
    evaluate = EvalBatches(config, False)
    record = loop.train(config, tmp_path, model_cfg, RandomBatches(config, model_cfg), evaluate)
    assert evaluate.calls == 2 and np.isfinite(record["eval/loss"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/loss" in r] == [2, 4]


@pytest.mark.parametrize("change", [dict(seed=1), dict(microbatch=16, final_batch=32), dict(seq_len=8)])
def test_resume_refuses_another_run_and_writes_nothing(tmp_path, four_steps, change):
    workdir = copy_workdir(four_steps, tmp_path / "work")
    before = {path: path.stat().st_mtime_ns for path in workdir.rglob("*")}
    names = "|".join(
        f"'{name}': \\({getattr(tiny_config(), name)}, {value}\\)" for name, value in change.items()
    )
    with pytest.raises(ValueError, match=rf"holds a different run \(saved at step 4\).*({names})"):
        run_train(tiny_config(steps=6, **change), workdir)
    assert {path: path.stat().st_mtime_ns for path in workdir.rglob("*")} == before


SECOND_TRAINER = """
import sys
from tests.test_train import run_train, tiny_config
run_train(tiny_config(), sys.argv[1])
"""


class SecondTrainerMidRun(RandomBatches):
    """RandomBatches that, before its third batch, runs a second trainer on the same workdir to the end."""

    def __init__(self, config, model_cfg, workdir):
        super().__init__(config, model_cfg)
        self.workdir, self.second = workdir, None

    def __next__(self):
        if self.index == 2 and self.second is None:
            command = [sys.executable, "-c", SECOND_TRAINER, str(self.workdir)]
            self.second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        return super().__next__()


def test_a_second_trainer_is_refused_at_once_naming_the_first(tmp_path):
    config = tiny_config()
    model_cfg = loop.model_config(config)
    batches = SecondTrainerMidRun(config, model_cfg, tmp_path)
    assert loop.train(config, tmp_path, model_cfg, batches)["step"] == 4
    second = batches.second
    holder = f"is in use by another trainer: pid {os.getpid()} on host {socket.gethostname()}, started "
    assert second.returncode != 0 and holder in second.stderr, second.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


HOLDER = """
import sys, time
from ufbert_jax.train import lock
with lock.hold(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_trainer_never_blocks_the_resume(tmp_path, four_steps):
    workdir = copy_workdir(four_steps, tmp_path / "work")
    command = [sys.executable, "-c", HOLDER, str(workdir)]
    holder = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(lock.WorkdirBusyError, match=rf"pid {holder.pid} on host .*train\.lock"):
            run_train(tiny_config(steps=6), workdir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run_train(tiny_config(steps=6), workdir)["step"] == 6  # the kernel released the lock


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> dict:
    """config.data for a 60 kB corpus (the start of one sample book), its shards prepared once."""
    shards = pytest.importorskip("ufbert_jax.data.shards")
    folder = tmp_path_factory.mktemp("small_corpus")
    (folder / "corpus").mkdir()
    (folder / "corpus" / "a.txt").write_bytes(
        (REPO / "data" / "sample" / "austen_emma.txt").read_bytes()[:60_000]
    )
    data = dict(
        sources=(str(folder / "corpus"),),
        shard_dir=str(folder / "shards"),
        tokenizer=str(folder / "shards" / "tokenizer.json"),
        worker_count=0,
    )
    shards.prepare_shards(
        list(data["sources"]), data["shard_dir"], data["tokenizer"], seq_len=16, vocab_size=1024
    )
    return data


def test_resume_with_model_json_missing_refuses_another_model_and_writes_nothing(tmp_path, small_corpus):
    model = dict(fff_impl="masked", vocab_size=1024)
    config = tiny_config(steps=2, data=small_corpus, model_overrides=model)
    loop.train_and_evaluate(config, tmp_path)
    (tmp_path / workdir_lib.MODEL_CONFIG_FILE).unlink()
    other = tiny_config(steps=2, data=small_corpus, model_overrides=dict(model, hidden=32))
    with pytest.raises(ValueError, match=r"different model.*'hidden': \(64, 32\)"):
        loop.train_and_evaluate(other, tmp_path)
    assert not (tmp_path / workdir_lib.MODEL_CONFIG_FILE).exists()
    loop.train_and_evaluate(tiny_config(steps=4, data=small_corpus, model_overrides=model), tmp_path)
    assert workdir_lib.load_config(tmp_path).hidden == 64


def limit_file_size(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (the process is not signalled)."""

    def limit_in_child():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_in_child


def tiny_train_args(workdir: Path, small_corpus: dict, **fields) -> list[str]:
    """train.py's flags for a tiny run on `small_corpus` (16-token rows, microbatch 8, no evaluation, no
    bar), with config `fields` set on top."""
    fields = dict(seq_len=16, microbatch=8, final_batch=16, eval_every=0, progress_bar=False) | fields
    return [
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        *(f"--config.data.{name}={value}" for name, value in small_corpus.items() if name != "sources"),
        f"--config.data.sources={small_corpus['sources'][0]}",
        "--config.model_overrides.vocab_size=1024",
        *(f"--config.{name}={value}" for name, value in fields.items()),
    ]


def test_a_checkpoint_that_finds_no_room_ends_train_py_with_one_line(tmp_path, small_corpus):
    """Orbax's background writes fail for lack of room (here a file size limit: a full disk fails the same
    way, with ENOSPC): one line names the file and the step, exit status 2, no traceback (it used to be
    hundreds of lines from orbax's threads)."""
    workdir = tmp_path / "work"
    args = tiny_train_args(workdir, small_corpus, steps=4, checkpoint_every=2)
    done = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size(120_000),  # the 1024 x 64 float32 embedding alone is 262 kB
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"{workdir}/checkpoints/2.orbax-checkpoint-tmp/" in errors[0], errors[0]
    assert "File too large while saving checkpoint step 2 (discarded)" in errors[0], errors[0]
    assert len(done.stderr.splitlines()) < 20, done.stderr
    assert not (workdir / "checkpoints" / "2.orbax-checkpoint-tmp").exists()


def test_ctrl_c_saves_the_step_and_exits_130(tmp_path, small_corpus):
    workdir = tmp_path / "work"
    args = tiny_train_args(workdir, small_corpus, steps=1000000, checkpoint_every=1000000, log_every=1)
    process = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "metrics.jsonl").is_file() or not (workdir / "metrics.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert "Fatal Python error" not in stderr and process.returncode == 130, stderr[-3000:]
    stopped = re.search(r"Interrupted: SIGINT at step (\d+); checkpoint step (\d+) in (.*): rerun", stderr)
    assert stopped and stopped[1] == stopped[2] and stopped[3] == str(workdir), stderr[-3000:]
    step = int(stopped[1])
    assert (
        workdir_lib.manager(workdir).latest_step() == step
        and saved_state(workdir, step)["meta"]["step"] == step
    )
