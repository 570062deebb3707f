"""Routing analysis: counts equal fff.paths token by token and a float64 walk; the CLI on a tiny workdir."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ufbert_jax import fff
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.analysis import capture, plots, routing, routing_report, text
from ufbert_jax.config import preset
from ufbert_jax.data.tokenizer import load_tokenizer, train_wordpiece
from ufbert_jax.model import MaskedLM

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran on under mat log red blue big small quickly slowly and".split()


def walk_float64(x, w_in, b_in):
    """Visited nodes [T, K, L] and the smallest |logit| of any decision, walking each tree in float64."""
    x, w_in, b_in = (np.asarray(a, np.float64) for a in (x, w_in, b_in))
    trees, nodes, _ = w_in.shape
    depth = (nodes + 1).bit_length() - 2
    visited = np.zeros((x.shape[0], trees, depth + 1), np.int64)
    margin = np.inf
    for t in range(x.shape[0]):
        for k in range(trees):
            n = 0
            for level in range(depth + 1):
                visited[t, k, level] = n
                z = x[t] @ w_in[k, n] + b_in[k, n]
                if level < depth:
                    margin = min(margin, abs(z))
                n = 2 * n + 2 if z > 0 else 2 * n + 1
    return visited, margin


def count_visits(visited, nodes):
    """[T, K, L] node ids -> [K, N] visit counts."""
    return np.stack([np.bincount(visited[:, k].ravel(), minlength=nodes) for k in range(visited.shape[1])])


def test_layer_counts_equal_a_float64_walk(rng):
    # Exactly representable operands (see test_fff_variants.draw_exact): float32 routes as float64 does.
    tokens, trees, depth, hidden = 40, 3, 3, 8
    nodes = 2 ** (depth + 1) - 1
    x = rng.integers(-3, 4, (tokens, hidden)).astype(np.float32)
    w_in = (rng.integers(-4, 5, (trees, nodes, hidden)) / 8).astype(np.float32)
    b_in = ((2 * rng.integers(-8, 8, (trees, nodes)) + 1) / 16).astype(np.float32)
    keep = np.ones(tokens, bool)
    keep[rng.choice(tokens, 7, replace=False)] = False  # padding
    counts = routing.layer_counts(x, w_in, b_in, keep, jax.random.key(0), jnp.float32(0.0))
    visited, _ = walk_float64(x[keep], w_in, b_in)
    np.testing.assert_array_equal(counts["visits"], count_visits(visited, nodes))
    z = np.einsum("th,knh->tkn", x[keep].astype(np.float64), w_in) + b_in  # [T, K, N]
    expected_abs_logit = np.abs(np.take_along_axis(z, visited, -1)).sum(0)  # [K, L]
    np.testing.assert_allclose(counts["abs_logit"], expected_abs_logit, rtol=1e-6)
    np.testing.assert_array_equal(counts["same"], keep.sum())  # no noise: every walk stays
    np.testing.assert_array_equal(counts["flipped"], 0)


def test_perturbation_counts_are_consistent_and_reproducible(rng):
    tokens, trees, depth, hidden = 64, 2, 4, 16
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    w_in = rng.standard_normal((trees, 2 ** (depth + 1) - 1, hidden)).astype(np.float32)
    b_in = np.zeros(w_in.shape[:2], np.float32)
    keep, key, eps = np.ones(tokens, bool), jax.random.key(int(rng.integers(2**31))), jnp.float32(0.5)
    counts = jax.device_get(routing.layer_counts(x, w_in, b_in, keep, key, eps))
    same, flipped = counts["same"], counts["flipped"]  # [K, D]
    assert (same[:, 0] == tokens).all()  # everyone starts at the root
    np.testing.assert_array_equal(same[:, 1:], same[:, :-1] - flipped[:, :-1])  # a changed walk stays changed
    rms = np.sqrt((x**2).mean(-1, keepdims=True))
    noisy = x + eps * rms * np.asarray(jax.random.normal(key, x.shape, jnp.float32))
    clean_paths, noisy_paths = (np.asarray(fff.paths(jnp.asarray(a), w_in, b_in)) for a in (x, noisy))
    changed = (clean_paths != noisy_paths).any(-1)  # [T, K]
    np.testing.assert_array_equal(flipped.sum(-1), changed.sum(0))


def test_summary_numbers():
    depth = 2  # 4 leaves: tokens reach 2 of them, 3 and 1 times
    visits = np.array([[4, 3, 1, 3, 0, 1, 0]])
    counts = routing.LayerCounts(visits, np.array([[4.0, 2.0, 1.0]]), np.array([[4, 3]]), np.array([[1, 0]]))
    s = routing.summary(counts)
    p = np.array([0.75, 0.25])
    assert s["tokens"] == 4 and counts.depth == depth
    np.testing.assert_allclose(s["path_entropy_bits"], -(p * np.log2(p)).sum())
    assert s["leaves_never_visited_fraction"] == 0.5
    assert s["leaf_histogram"] == {"lower": [0, 1, 2], "leaves": [2, 1, 1]}
    np.testing.assert_allclose(s["mean_abs_logit_per_level"], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(s["flip_rate_per_level"], [0.25, 0.0])
    assert s["changed_walks_fraction"] == 0.25


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny saved model (2 layers of 2 trees of depth 2) with a tokenizer trained on a synthetic text."""
    root = tmp_path_factory.mktemp("analysis")
    words = np.random.default_rng(0).choice(WORDS, 400)  # fixed: the test below checks its margins
    lines = [" ".join(words[i : i + 8]) + "." for i in range(0, len(words), 8)]
    (root / "text.txt").write_text("\n\n".join(" ".join(lines[i : i + 5]) for i in range(0, len(lines), 5)))
    workdir = root / "workdir"
    train_wordpiece(lines, 100, workdir_lib.tokenizer_path(workdir))
    cfg = preset("tiny-fff", vocab_size=128, hidden=16, heads=2, max_len=16, fff_depth=2, fff_impl="masked")
    model = MaskedLM(cfg, nnx.Rngs(0))
    for layer in model.encoder.layers:  # decisive routing: logits far from 0 (see the margin check below)
        layer.ffn.w_in[...] = 50 * layer.ffn.w_in[...]
    workdir_lib.save_config(workdir, cfg)
    workdir_lib.save_params(workdir, 7, model)
    return workdir


def test_counts_equal_per_token_paths_and_a_float64_walk(workdir):
    model = workdir_lib.load_pretrained(workdir)
    tokenizer = load_tokenizer(workdir_lib.tokenizer_path(workdir))
    ids, mask = text.token_rows(tokenizer, workdir.parent / "text.txt", seq_len=16, max_tokens=300)
    assert ids.shape[0] % 3 and mask[-1, -1] == 0  # the last batch and the last row are padded
    totals = routing_report.analyze(model, ids, mask, batch_size=3, progress_bar=False)
    inputs = capture.fff_inputs(model, jnp.asarray(ids), jnp.asarray(mask))  # [R, S, H] per layer
    real = mask.ravel().astype(bool)
    for total, x, layer in zip(totals, inputs, [block.ffn for block in model.encoder.layers], strict=True):
        x = np.asarray(x).reshape(-1, x.shape[-1])[real]  # [T, H]
        w_in, b_in = layer.w_in[...], layer.b_in[...]
        paths = jax.jit(fff.paths)  # called on one token [1, H] at a time
        per_token = np.concatenate([np.asarray(paths(jnp.asarray(row[None]), w_in, b_in)) for row in x])
        nodes = w_in.shape[1]
        np.testing.assert_array_equal(total.visits, count_visits(per_token, nodes))
        visited, margin = walk_float64(x, w_in, b_in)
        assert margin > 1e-4, margin  # no decision is within float32 rounding of a tie
        np.testing.assert_array_equal(total.visits, count_visits(visited, nodes))
        assert total.tokens == 300


def test_cli_writes_routing_json_figures_and_a_table(workdir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ufbert_jax.analysis", f"--workdir={workdir}", f"--out={out}"]
    command += [f"--text={workdir.parent / 'text.txt'}", "--max_tokens=100", "--config.progress_bar=False"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet: no orbax INFO lines, no "Unable to initialize backend 'tpu'"
    assert "step 7: 100 tokens" in result.stdout and "entropy bits" in result.stdout
    routing_json = json.loads((out / "routing.json").read_text())
    assert routing_json["tokens"] == 100 and len(routing_json["layers"]) == 2
    for layer in routing_json["layers"]:
        visits = np.asarray(layer["visits"])  # [K, N] exact integers
        assert visits.shape == (2, 7) and visits.dtype.kind == "i"
        for level in range(3):
            assert (visits[:, 2**level - 1 : 2 ** (level + 1) - 1].sum(-1) == 100).all()
    for name in ("routing_heatmap.png", "entropy.png", "margins.png"):
        assert (out / name).stat().st_size > 5000


def test_bad_inputs_are_named(workdir, tmp_path):
    tokenizer = load_tokenizer(workdir_lib.tokenizer_path(workdir))
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt"):
        text.token_rows(tokenizer, tmp_path / "nothing.txt", 16)
    dense = MaskedLM(preset("tiny-dense", vocab_size=64, hidden=16, heads=2), nnx.Rngs(0))
    with pytest.raises(ValueError, match="no FastFeedForward"):
        capture.tap(dense)


def test_the_table_header_lines_up_with_its_columns_and_the_entropy_plot_labels_every_line(workdir):
    model = workdir_lib.load_pretrained(workdir)
    tokenizer = load_tokenizer(workdir_lib.tokenizer_path(workdir))
    ids, mask = text.token_rows(tokenizer, workdir.parent / "text.txt", seq_len=16, max_tokens=100)
    totals = routing_report.analyze(model, ids, mask, batch_size=4, progress_bar=False)
    meta = {"workdir": "w", "checkpoint_step": 7, "text": "t", "model": {"layers": 2, "fff_trees": 2,
            "fff_depth": 2}, "perturbation": {"relative_scale": 0.01}}  # fmt: skip
    result = routing_report.routing_json(totals, meta)
    header, rule, *rows = routing_report.table(result).splitlines()[1:-1]
    assert set(rule) == {"-", " "} and len(rows) == 2
    # Every column (a run of dashes) holds its header word and each row's value, right-aligned.
    for column in re.finditer(r"-+", rule):
        start, end = column.span()
        for line in (header, *rows):
            assert line[start:end].strip() and line[start:end] == line[start:end].rjust(end - start)
            assert line[end : end + 2].strip() == ""  # two spaces to the next column
    assert header.split("  ")[:2] == ["layer", "entropy bits"]
    (legend,) = plots.entropy_figure(result).legends
    labels = [label.get_text() for label in legend.get_texts()]
    assert len(labels) == 3 and "path entropy (bits)" in labels and any("never visited" in t for t in labels)
